"""pnp_pgd: closed-form fixed points, per-image solves, traced steps, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jfbjax
from jfbjax.imaging import Blur
from jfbjax.imaging.baselines import tikhonov_cg
from jfbjax.models import pnp_pgd


def _images(seed, shape=(3, 10, 9, 2)):
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_shrinkage_denoiser_gives_the_tikhonov_solution(x64, boundary):
    # D(x) = x / (1 + step * lam) is the prox of step * lam/2 ||x||^2, so the fixed
    # point minimises ||Ax - d||^2 / 2 + lam/2 ||x||^2: (A^T A + lam I) x = A^T d.
    blur, lam, step = Blur(5, 1.5, boundary), 0.05, 1.0
    d = _images(0)
    x, info = pnp_pgd(
        d, blur, lambda z: z / (1 + step * lam), step, jfbjax.Picard(tol=1e-12, max_iter=5000)
    )
    ref = tikhonov_cg(d, blur, lam, iters=500, tol=1e-14)
    np.testing.assert_allclose(x, ref, atol=1e-9)
    assert np.all(np.asarray(info.status) == int(jfbjax.CONVERGED))
    assert info.iterations.shape == (3,)


def test_identity_denoiser_is_landweber_and_images_are_independent(x64):
    blur = Blur(3, 0.5, "circular")  # well conditioned: the least-squares solution is A^-1 d
    x_true = _images(1)
    d = blur.apply(x_true)
    solver = jfbjax.Anderson(tol=1e-12, max_iter=500)
    x, _ = pnp_pgd(d, blur, lambda z: z, 1.0, solver)
    np.testing.assert_allclose(x, x_true, atol=1e-8)
    # a NaN in one image stops that image only
    x_bad, info = pnp_pgd(d.at[1].set(jnp.nan), blur, lambda z: z, 1.0, solver)
    np.testing.assert_allclose(x_bad[0], x[0], atol=1e-10)
    status = np.asarray(info.status)
    assert status[1] == int(jfbjax.NONFINITE) and status[0] == status[2] == int(jfbjax.CONVERGED)


def test_traced_step_compiles_once():
    blur = Blur(5, 2.0)
    d = _images(2)
    traces = []

    @jax.jit
    def run(step):
        traces.append(1)
        return pnp_pgd(d, blur, lambda z: 0.9 * z, step, jfbjax.Picard(tol=1e-4, max_iter=50))[0]

    a, b = run(0.5), run(1.5)
    assert len(traces) == 1 and a.dtype == jnp.float32
    assert not np.allclose(a, b)


def test_bad_input_is_rejected():
    blur = Blur(3, 1.0)
    with pytest.raises(ValueError, match="batch of images"):
        pnp_pgd(jnp.zeros((8, 8, 3)), blur, lambda z: z, 1.0)
    with pytest.raises(ValueError, match="step"):
        pnp_pgd(jnp.zeros((1, 8, 8, 3)), blur, lambda z: z, 0.0)
