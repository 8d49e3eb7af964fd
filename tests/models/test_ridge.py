"""ConvexRidge: the gradient of its convex energy, a symmetric PSD Jacobian, its config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import get_config
from jfbjax.builders import build_model
from jfbjax.imaging.blur import Blur
from jfbjax.models import DEGRAD, ConvexRidge


def _ridge(dtype=jnp.float64):
    r = ConvexRidge(3, 5, 3, init_scale=0.5, rngs=nnx.Rngs(0))
    # random biases and weights, so no filter sits at tanh's linear point
    r.bias[...] = jax.random.normal(jax.random.PRNGKey(7), (5,), dtype)
    r.raw_weight[...] = jax.random.normal(jax.random.PRNGKey(8), (5,), dtype)
    return r


def test_ridge_is_the_gradient_of_its_convex_energy_with_a_psd_jacobian(x64):
    r = _ridge()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 6, 3), jnp.float64)
    np.testing.assert_allclose(r(x), jax.grad(r.energy)(x), rtol=1e-10, atol=1e-12)
    # one image as (H, W, C) gives the batch's row
    np.testing.assert_allclose(r(x[1]), r(x)[1], rtol=1e-12, atol=1e-14)
    # dR/dx is the energy's Hessian W^T diag(s (1 - tanh^2)) W: symmetric, PSD
    jac = jax.jacrev(lambda v: r(v.reshape(x[0].shape)).reshape(-1))(x[0].reshape(-1))
    jac = np.asarray(jac)
    np.testing.assert_allclose(jac, jac.T, atol=1e-12)  # W^T is the adjoint of W
    eig = np.linalg.eigvalsh(jac)
    assert eig.min() >= -1e-12 and eig.max() > 1e-3  # monotone, and not zero
    bound = (
        float(jnp.max(r.weights))
        * np.linalg.norm(
            jax.jacrev(lambda v: r._filter(v.reshape(x[0].shape)).reshape(-1))(x[0].reshape(-1)), 2
        )
        ** 2
    )
    assert eig.max() <= bound * (1 + 1e-9)  # ||dR/dx|| <= max s ||W||^2
    # monotone: <R(x) - R(y), x - y> >= 0 for points far apart too
    y = 3.0 * jax.random.normal(jax.random.PRNGKey(2), x.shape, jnp.float64)
    assert float(jnp.vdot(r(x) - r(y), x - y)) > 0


def test_ridge_in_degrad_through_the_config():
    config = get_config("smoke")
    config.model.regulariser = "convex_ridge"
    config.model.ridge_features, config.model.ridge_kernel = 6, 3
    model = build_model(config, Blur(), nnx.Rngs(0))
    assert isinstance(model, DEGRAD) and isinstance(model.regulariser, ConvexRidge)
    assert model.regulariser.kernel[...].shape == (3, 3, 3, 6)
    d = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3), minval=-1, maxval=1)
    x, info = model(d)
    assert x.shape == d.shape and bool(jnp.all(jnp.isfinite(x)))
    assert info.iterations.shape == (2,)
    for bad, match in (
        ({"regulariser": "nope"}, "model.regulariser must be one of"),
        ({"regulariser": "convex_ridge", "inject": True}, "model.inject=false"),
    ):
        c = get_config("smoke")
        for k, v in bad.items():
            c.model[k] = v
        with pytest.raises(ValueError, match=match):
            build_model(c, Blur(), nnx.Rngs(0))


def test_ridge_rejects_bad_arguments_and_input():
    for kwargs, match in (
        ({"features": 0}, "features must be an integer >= 1"),
        ({"kernel": 4}, "kernel must be an odd integer"),
        ({"init_scale": 0.0}, "init_scale must be > 0"),
    ):
        with pytest.raises(ValueError, match=match):
            ConvexRidge(rngs=nnx.Rngs(0), **kwargs)
    with pytest.raises(ValueError, match=r"expects \(N, H, W, 3\)"):
        ConvexRidge(rngs=nnx.Rngs(0))(jnp.zeros((4, 4, 1)))
