"""Classical baselines on tiny problems with known answers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfbjax.imaging import (
    Blur,
    degrade,
    psnr,
    tikhonov_cg,
    tune_weight,
    tv_deblur,
    tv_objective,
    wiener,
)
from jfbjax.imaging.baselines import _div, _grad


def _normal(seed, shape, dtype=jnp.float64):
    """Test data from NumPy (compiling JAX's sampler per shape is slow on CPU)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _dense(blur, shape):
    """The matrix of A on images of ``shape`` (H, W, C), by differentiation."""
    n = int(np.prod(shape))
    return jax.jacfwd(lambda v: blur.apply(v.reshape(shape)).reshape(-1))(jnp.zeros(n))


def _dense_tikhonov(blur, d, weight):
    a = _dense(blur, d.shape)
    rhs = a.T @ d.reshape(-1)
    return jnp.linalg.solve(a.T @ a + weight * jnp.eye(a.shape[1]), rhs).reshape(d.shape)


def _piecewise_constant():
    img = jnp.full((24, 24, 1), -0.6).at[5:17, 6:18].set(0.7).at[14:22, 2:9].set(0.1)
    return img


# ------------------------------------------------------------------ Wiener


def test_wiener_without_weight_inverts_a_circular_blur_exactly(x64):
    blur = Blur(3, 0.5, "circular")
    assert np.abs(blur.transfer_function(16, 15)).min() > 0.3  # no zeros: invertible
    x = _normal(0, (2, 16, 15, 3))
    np.testing.assert_allclose(wiener(blur.apply(x), blur, 0.0), x, atol=1e-12)


@pytest.mark.parametrize("kernel_size", [3, 4])
def test_wiener_is_the_exact_tikhonov_minimiser_for_the_circular_blur(x64, kernel_size):
    blur = Blur(kernel_size, 1.0, "circular")
    d = _normal(1, (2, 6, 5, 2))
    x = wiener(d, blur, 0.1)
    for i in range(2):
        np.testing.assert_allclose(x[i], _dense_tikhonov(blur, d[i], 0.1), atol=1e-12)


def test_wiener_for_the_zero_padded_blur_is_an_approximation(x64):
    blur = Blur(3, 1.0, "zero")
    d = blur.apply(_normal(2, (12, 12, 1)))
    exact = _dense_tikhonov(blur, d, 0.05)
    approx = wiener(d, blur, 0.05)
    err = jnp.abs(approx - exact)
    assert float(err.max()) > 1e-3  # the boundary is modelled differently ...
    assert float(err[4:-4, 4:-4].max()) < 0.5 * float(err.max())  # ... worst near the border


# ------------------------------------------------------------------ Tikhonov by CG


@pytest.mark.parametrize("boundary", ["zero", "circular"])
@pytest.mark.parametrize("kernel_size", [3, 4])
def test_tikhonov_cg_matches_a_dense_solve(x64, boundary, kernel_size):
    blur = Blur(kernel_size, 1.0, boundary)
    d = _normal(3, (2, 6, 5, 2))
    x = tikhonov_cg(d, blur, 0.1, iters=200, tol=1e-13)
    assert x.shape == d.shape and x.dtype == d.dtype
    for i in range(2):
        np.testing.assert_allclose(x[i], _dense_tikhonov(blur, d[i], 0.1), atol=1e-10)
    # each image is solved on its own: the same answer alone as in the batch
    np.testing.assert_allclose(tikhonov_cg(d[1], blur, 0.1, iters=200, tol=1e-13), x[1])


def test_tikhonov_cg_under_jit_with_a_traced_weight():
    blur = Blur(5, 2.0, "zero")
    d = blur.apply(_normal(4, (2, 8, 8, 1), jnp.float32))
    f = jax.jit(functools.partial(tikhonov_cg, blur=blur, iters=50))
    x = f(d, weight=jnp.float32(1e-2))
    assert x.dtype == jnp.float32
    # float32: XLA fuses the jitted iterations differently, so allow rounding drift
    np.testing.assert_allclose(x, tikhonov_cg(d, blur, 1e-2, iters=50), atol=5e-5)
    # the residual of the normal equations is small
    res = blur.normal(x) + 1e-2 * x - blur.adjoint(d)
    assert float(jnp.linalg.norm(res)) < 1e-3 * float(jnp.linalg.norm(blur.adjoint(d)))


# ------------------------------------------------------------------ total variation


def test_gradient_and_divergence_are_negative_adjoints(x64):
    pairing = jax.jit(lambda x, p: (jnp.vdot(_grad(x), p), -jnp.vdot(x, _div(p))))
    for shape in [(7, 9, 1), (2, 8, 8, 3), (1, 5, 2)]:
        lhs, rhs = pairing(_normal(5, shape), _normal(6, (*shape, 2)))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    ramp = jnp.arange(4.0)[:, None, None] * jnp.ones((4, 3, 1))
    np.testing.assert_array_equal(_grad(ramp)[..., 0, 0], [[1.0] * 3] * 3 + [[0.0] * 3])
    np.testing.assert_array_equal(_grad(ramp)[..., 1], 0.0)


def test_tv_objective_value():
    x = jnp.zeros((4, 4, 1)).at[:, 2:].set(1.0)  # one vertical edge of height 4
    blur = Blur(1, 1.0)
    assert float(tv_objective(x, x, blur, 0.5)) == pytest.approx(0.5 * 4)
    assert float(tv_objective(x, x + 0.5, blur, 0.0)) == pytest.approx(0.5 * 16 * 0.25)


def test_tv_without_weight_is_least_squares(x64):
    blur = Blur(3, 0.4, "zero")  # well conditioned: |K| >= 0.7
    x = _normal(7, (2, 8, 8, 1))
    d = blur.apply(x) + 0.1 * _normal(8, x.shape)
    ls = tikhonov_cg(d, blur, 0.0, iters=200, tol=1e-14)
    np.testing.assert_allclose(tv_deblur(d, blur, 0.0, iters=400), ls, atol=1e-10)


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_tv_with_a_huge_weight_gives_the_best_constant(x64, boundary):
    blur = Blur(3, 1.0, boundary)
    d = _normal(9, (8, 7, 1))
    # TV(c) = 0 for a constant c, which then minimises ||c A 1 - d||^2
    a1 = blur.apply(jnp.ones_like(d))
    c = jnp.vdot(a1, d) / jnp.vdot(a1, a1)
    np.testing.assert_allclose(tv_deblur(d, blur, 100.0, iters=1000), c, atol=1e-8)


def test_tv_recovers_a_piecewise_constant_image():
    img, blur = _piecewise_constant(), Blur(5, 1.5, "zero")
    d = degrade(jax.random.PRNGKey(10), img, blur, 0.05)
    x = jax.jit(tv_deblur, static_argnums=(1, 3))(d, blur, 0.02, 300)
    assert x.dtype == d.dtype == jnp.float32
    assert float(tv_objective(x, d, blur, 0.02)) < 0.5 * float(tv_objective(d, d, blur, 0.02))
    assert float(psnr(img, x)) > float(psnr(img, d)) + 3.0
    # and better than Tikhonov, which cannot keep the edges
    best_tik = max(float(psnr(img, tikhonov_cg(d, blur, w))) for w in (1e-3, 1e-2, 1e-1))
    assert float(psnr(img, x)) > best_tik + 1.0


def test_tv_objective_decreases_with_the_iterations():
    img, blur = _piecewise_constant(), Blur(5, 1.5, "circular")
    d = degrade(jax.random.PRNGKey(11), img, blur, 0.05)
    values = [float(tv_objective(tv_deblur(d, blur, 0.02, n), d, blur, 0.02)) for n in (0, 20, 200)]
    assert values[0] > values[1] > values[2]
    np.testing.assert_array_equal(tv_deblur(d, blur, 0.02, 0), d)  # starts from d


def test_tv_stops_at_the_tolerance_and_agrees_with_a_long_run(x64):
    img, blur = _piecewise_constant(), Blur(5, 1.5, "zero")
    d = degrade(jax.random.PRNGKey(12), img, blur, 0.05).astype(jnp.float64)
    long = tv_deblur(d, blur, 0.02, iters=10000)
    x, k = jax.jit(tv_deblur, static_argnums=(1, 3, 5))(d, blur, 0.02, 10000, 1e-8, True)
    assert 0 < int(k) < 10000
    # The rule is on the step size; the distance to the limit is larger by about
    # 1 / (1 - rate) (measured 3e-5 at tol 1e-8 here), so ask for 1e-4.
    np.testing.assert_allclose(x, long, atol=1e-4)
    _, k_loose = tv_deblur(d, blur, 0.02, iters=10000, tol=1e-3, return_iterations=True)
    assert int(k_loose) < int(k)
    # tol = 0 runs exactly ``iters`` iterations
    _, k_all = tv_deblur(d, blur, 0.02, iters=37, return_iterations=True)
    assert int(k_all) == 37


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("method", [wiener, tikhonov_cg, tv_deblur])
def test_baselines_reject_bad_inputs(method):
    d = jnp.zeros((8, 8, 1))
    with pytest.raises(ValueError, match="weight"):
        method(d, Blur(), -1.0)
    with pytest.raises(ValueError, match="weight"):
        method(d, Blur(), float("nan"))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
        method(d[..., 0], Blur(), 0.1)


def test_iteration_counts_are_validated():
    for method in (tikhonov_cg, tv_deblur):
        with pytest.raises(ValueError, match="iters"):
            method(jnp.zeros((8, 8, 1)), Blur(), 0.1, iters=-1)
        with pytest.raises(ValueError, match="iters"):
            method(jnp.zeros((8, 8, 1)), Blur(), 0.1, iters=2.5)


# ------------------------------------------------------------------ tuning


def _validation_set():
    clean = jnp.asarray(np.random.default_rng(12).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    clean = Blur(3, 1.0, "circular").apply(clean)  # smooth-ish images
    blur = Blur(5, 2.0, "circular")
    return degrade(jax.random.PRNGKey(13), clean, blur, 0.05), clean, blur


@pytest.mark.parametrize(
    "method", [wiener, functools.partial(tikhonov_cg, iters=30)], ids=["wiener", "tikhonov"]
)
def test_tune_weight_picks_an_interior_value(method):
    d, clean, blur = _validation_set()
    grid = [1e-6, 1e-3, 1e-2, 1e-1, 1.0, 100.0]
    best, table = tune_weight(method, d, clean, blur, grid)
    assert [w for w, _ in table] == grid
    assert best not in (grid[0], grid[-1])
    scores = dict(table)
    assert scores[best] == max(scores.values())
    assert scores[best] > float(jnp.mean(psnr(clean, d))) + 1.0  # it beats the blurred input
    expected = float(jnp.mean(psnr(clean, method(d, blur, best))))
    assert scores[best] == pytest.approx(expected, abs=1e-3)


def test_tune_weight_compiles_once_and_skips_nan():
    d, clean, blur = _validation_set()
    traces = []

    def method(d, blur, w):
        traces.append(1)
        return jnp.where(w < 0.5, jnp.nan, 1.0) * wiener(d, blur, w)

    best, table = tune_weight(method, d, clean, blur, [0.1, 0.6, 0.7])
    assert len(traces) == 1
    assert np.isnan(table[0][1]) and best in (0.6, 0.7)
    with pytest.raises(ValueError, match="NaN"):
        tune_weight(method, d, clean, blur, [0.1, 0.2])


def test_tune_weight_rejects_bad_input():
    d, clean, blur = _validation_set()
    with pytest.raises(ValueError, match="at least one weight"):
        tune_weight(wiener, d, clean, blur, [])
    with pytest.raises(ValueError, match="weight"):
        tune_weight(wiener, d, clean, blur, [0.1, -1.0])
    with pytest.raises(ValueError, match="equal shapes"):
        tune_weight(wiener, d, clean[:2], blur, [0.1])


def test_smoothed_tv_gradient_is_the_gradient_with_a_psd_bounded_hessian(x64):
    from jfbjax.imaging.baselines import smoothed_tv, smoothed_tv_gradient

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 4, 2)))
    for eps in (0.05, 0.5):
        auto = jax.grad(lambda x, eps=eps: jnp.sum(smoothed_tv(x, eps)))(x)
        np.testing.assert_allclose(smoothed_tv_gradient(x, eps), auto, rtol=1e-10, atol=1e-12)
        n = x[0].size
        hess = jax.jacfwd(lambda v, eps=eps: smoothed_tv_gradient(v.reshape(x[0].shape), eps))(
            x[0].reshape(-1)
        ).reshape(n, n)
        np.testing.assert_allclose(hess, hess.T, atol=1e-10)
        eig = np.linalg.eigvalsh(np.asarray(hess))
        assert eig.min() > -1e-10 and eig.max() <= 8 / eps + 1e-9
    # As eps -> 0 it approaches the TV of tv_objective's data-free part.
    from jfbjax.imaging.baselines import tv_objective
    from jfbjax.imaging.blur import Blur

    blur = Blur(1, 1.0)
    tv = tv_objective(x, blur.apply(x), blur, 1.0)
    np.testing.assert_allclose(jnp.sum(smoothed_tv(x, 1e-9)), tv, rtol=1e-6)
    with pytest.raises(ValueError, match="eps"):
        smoothed_tv_gradient(x, 0.0)


def test_lagged_diffusivity_freezes_the_tv_weights_and_dominates_the_hessian(x64):
    from jfbjax.imaging.baselines import smoothed_tv_gradient, tv_lagged_diffusivity

    x = jnp.asarray(np.random.default_rng(1).standard_normal((5, 4, 2)))
    n = x.size
    for eps in (0.05, 0.5):
        np.testing.assert_allclose(
            tv_lagged_diffusivity(x, x, eps), smoothed_tv_gradient(x, eps), rtol=1e-12, atol=1e-12
        )
        lagged = jax.jacfwd(lambda v, eps=eps: tv_lagged_diffusivity(x, v.reshape(x.shape), eps))(
            x.reshape(-1)
        ).reshape(n, n)
        hess = jax.jacfwd(lambda v, eps=eps: smoothed_tv_gradient(v.reshape(x.shape), eps))(
            x.reshape(-1)
        ).reshape(n, n)
        np.testing.assert_allclose(lagged, lagged.T, atol=1e-12)
        eig = np.linalg.eigvalsh(np.asarray(lagged))
        assert eig.min() > -1e-10 and eig.max() <= 8 / eps + 1e-9
        assert np.linalg.eigvalsh(np.asarray(lagged - hess)).min() > -1e-10  # L_x >= Hessian
    with pytest.raises(ValueError, match="eps"):
        tv_lagged_diffusivity(x, x, 0.0)
