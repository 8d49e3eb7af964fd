"""DnCNN and DE-GRAD: shapes, the map's math, gradients, contraction, per-sample status."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import jfbjax
from jfbjax.imaging import Blur, wiener
from jfbjax.models import DEGRAD, DnCNN, FeedForward, SpectralConv, build_model


def small_degrad(blur=None, **kw):
    blur = Blur(3, 1.0, "circular") if blur is None else blur
    return DEGRAD(blur, DnCNN(3, 3, 8, rngs=nnx.Rngs(0)), **kw)


def test_dncnn_shapes_no_batchnorm_deterministic():
    r = DnCNN(3, 4, 8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    assert r(x).shape == x.shape and r(x[0]).shape == x[0].shape
    assert not any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_graph(r))
    np.testing.assert_array_equal(r(x), r(x))
    np.testing.assert_array_equal(r(x), 0.0)  # last layer starts at zero
    with pytest.raises(ValueError, match="depth"):
        DnCNN(3, 1, 8, rngs=nnx.Rngs(0))


def test_eta_positive_and_initialised():
    m = small_degrad(eta_init=0.7)
    np.testing.assert_allclose(m.eta, 0.7, rtol=1e-6)
    m.raw_eta[...] = jnp.asarray(-30.0)
    assert float(m.eta) > 0
    with pytest.raises(ValueError, match="eta_init"):
        small_degrad(eta_init=0.0)


def test_zero_regulariser_solves_normal_equations(x64):
    """With R = 0 the fixed point satisfies A^T A x = A^T d (Wiener with weight 0)."""
    blur = Blur(3, 0.6, "circular")
    model = small_degrad(blur, solver=jfbjax.Anderson(tol=1e-12, max_iter=500))
    graphdef, params = nnx.split(model)
    model = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.float64), params))
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, 8, 8, 3), jnp.float64, -1, 1)
    d = blur.apply(x)
    x_star, info = model(d)
    assert int(info.status[0]) == jfbjax.CONVERGED
    np.testing.assert_allclose(x_star, wiener(d, blur, 0.0), atol=1e-8)
    np.testing.assert_allclose(x_star, x, atol=1e-7)


def _loss(model, d, x):
    return jnp.mean((model(d)[0] - x) ** 2)


@pytest.mark.parametrize("backward", ["jfb", "ift", "unrolled"])
def test_gradients_finite_and_nonzero(backward):
    model = small_degrad(backward=backward, solver=jfbjax.Anderson(tol=1e-4, max_iter=60))
    # make R non-trivial so that every layer receives gradient
    last = model.regulariser.layers[-1]
    last.kernel[...] = 0.05 * jax.random.normal(jax.random.PRNGKey(2), last.kernel[...].shape)
    x = jax.random.uniform(jax.random.PRNGKey(3), (2, 8, 8, 3), minval=-1, maxval=1)
    d = model.blur.apply(x)
    grads = nnx.grad(_loss)(model, d, x)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), path


def test_ift_gradient_matches_finite_differences(x64):
    blur = Blur(3, 0.5, "circular")  # well conditioned: T contracts for a small R
    model = DEGRAD(
        blur,
        DnCNN(3, 2, 4, rngs=nnx.Rngs(1)),
        eta_init=0.5,
        solver=jfbjax.Anderson(tol=1e-12, max_iter=400),
        backward=jfbjax.IFT(tol=1e-12, max_iter=400),
    )
    last = model.regulariser.layers[-1]
    last.kernel[...] = 0.01 * jax.random.normal(
        jax.random.PRNGKey(4), last.kernel.shape, jnp.float32
    )
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.uniform(jax.random.PRNGKey(5), (1, 6, 6, 3), jnp.float64, -1, 1)
    d = blur.apply(x) + 0.01 * jax.random.normal(jax.random.PRNGKey(6), x.shape, jnp.float64)
    _, info = nnx.merge(graphdef, params)(d)
    assert int(info.status[0]) == jfbjax.CONVERGED
    loss = lambda p: _loss(nnx.merge(graphdef, p), d, x)
    grad = jax.grad(loss)(params)
    eps = 1e-5
    for seed in (0, 1):
        key = jax.random.PRNGKey(10 + seed)
        direction = jax.tree.map(lambda a, k=key: jax.random.normal(k, a.shape, a.dtype), params)
        plus = loss(jax.tree.map(lambda p, v: p + eps * v, params, direction))
        minus = loss(jax.tree.map(lambda p, v: p - eps * v, params, direction))
        fd = (plus - minus) / (2 * eps)
        analytic = sum(
            jnp.vdot(g, v)
            for g, v in zip(jax.tree.leaves(grad), jax.tree.leaves(direction), strict=True)
        )
        np.testing.assert_allclose(analytic, fd, rtol=1e-5)


def test_spectral_norm_bounds_each_conv_and_map_contracts():
    conv = SpectralConv(3, 8, iters=30, rngs=nnx.Rngs(0))
    conv.conv.kernel[...] = 5.0 * conv.conv.kernel[...]  # far above 1 before normalising
    w = conv.conv.kernel[...].reshape(-1, 8) / jnp.maximum(1.0, conv.sigma())
    assert float(jnp.linalg.norm(w, 2)) <= 1.0 + 1e-3
    model = DEGRAD(
        Blur(3, 1.0, "circular"),
        DnCNN(3, 3, 8, spectral_norm=True, rngs=nnx.Rngs(0)),
        eta_init=0.2,
    )
    x = jax.random.uniform(jax.random.PRNGKey(7), (8, 8, 3), minval=-1, maxval=1)
    d = model.blur.apply(x)
    lip = jfbjax.contraction_estimate(lambda z, d: model.map(z, d), x, d, iters=30)
    assert float(lip) < 1.0


def test_per_sample_status_with_nan():
    model = small_degrad(solver=jfbjax.Anderson(tol=1e-3, max_iter=40))
    d = jax.random.uniform(jax.random.PRNGKey(8), (3, 8, 8, 3), minval=-1, maxval=1)
    d = d.at[1, 0, 0, 0].set(jnp.nan)
    x, info = model(d)
    assert info.status.shape == (3,)
    np.testing.assert_array_equal(info.status, [0, jfbjax.NONFINITE, 0])
    assert np.all(np.isfinite(x[0])) and np.all(np.isfinite(x[2]))


def test_build_model_from_config():
    c = ml_collections.ConfigDict(
        {
            "model": {
                "kind": "degrad",
                "depth": 3,
                "features": 8,
                "spectral_norm": False,
                "eta_init": 1.0,
                "clamp": True,
            },
            "solver": {
                "name": "picard",
                "m": 5,
                "beta": 0.5,
                "ridge": 1e-4,
                "tol": 1e-3,
                "max_iter": 7,
            },
            "backward": {
                "name": "neumann",
                "k": 2,
                "tol": 1e-4,
                "max_iter": 10,
                "adjoint_solver": "anderson",
            },
        }
    )
    m = build_model(c, Blur(), nnx.Rngs(0))
    assert isinstance(m, DEGRAD) and m.clamp
    assert m.solver == jfbjax.Picard(tol=1e-3, max_iter=7, damping=0.5)
    assert m.backward == jfbjax.Neumann(2)
    d = jnp.ones((2, 8, 8, 3))
    assert m(d)[0].shape == d.shape
    c.model.kind = "feedforward"
    ff = build_model(c, Blur(), nnx.Rngs(0))
    assert isinstance(ff, FeedForward)
    x, info = ff(d)
    assert x.shape == d.shape and info.iterations.shape == (2,)
    c.model.kind = "unet"
    with pytest.raises(ValueError, match="kind"):
        build_model(c, Blur(), nnx.Rngs(0))
