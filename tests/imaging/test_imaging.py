"""Blur operator and adjoint, degradation, metrics and classical baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from jfbjax.imaging import (
    Blur,
    degrade,
    evaluate,
    gaussian_kernel,
    psnr,
    ssim,
    tikhonov_cg,
    tune_weight,
    tv_deblur,
    tv_objective,
    wiener,
)


@pytest.mark.parametrize("boundary", ["zero", "circular"])
@pytest.mark.parametrize("shape", [(7, 9, 1), (8, 8, 3), (2, 16, 15, 3)])
@pytest.mark.parametrize("kernel_size", [5, 4])
def test_adjoint_is_exact(x64, boundary, shape, kernel_size):
    blur = Blur(kernel_size=kernel_size, sigma=1.3, boundary=boundary)
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, shape, jnp.float64)
    y = jax.random.normal(ky, shape, jnp.float64)
    lhs = jnp.vdot(blur.apply(x), y)
    rhs = jnp.vdot(x, blur.adjoint(y))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    # and equal to the transpose JAX derives from the forward operator
    (at,) = jax.linear_transpose(blur.apply, x)(y)
    np.testing.assert_allclose(blur.adjoint(y), at, atol=1e-12)


def test_kernel_and_identity():
    k = gaussian_kernel(5, 5.0)
    np.testing.assert_allclose(k.sum(), 1.0)
    assert k.shape == (5, 5) and np.allclose(k, k.T) and np.allclose(k, k[::-1, ::-1])
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 7, 3))
    for boundary in ("zero", "circular"):
        np.testing.assert_allclose(Blur(1, 1.0, boundary).apply(x), x, atol=1e-6)


def test_circular_commutes_with_shifts_and_zero_darkens_border():
    x = jax.random.normal(jax.random.PRNGKey(2), (12, 10, 2))
    blur = Blur(5, 2.0, "circular")
    shift = lambda v: jnp.roll(v, (3, -2), axis=(0, 1))
    np.testing.assert_allclose(blur.apply(shift(x)), shift(blur.apply(x)), atol=1e-5)
    ones = jnp.ones((12, 12, 1))
    y = Blur(5, 5.0, "zero").apply(ones)
    np.testing.assert_allclose(y[2:-2, 2:-2], 1.0, atol=1e-6)
    assert float(y[0, 0, 0]) < 0.5 and float(y[0, 6, 0]) < 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="H, W, C"):
        Blur().apply(jnp.ones((4, 4)))
    with pytest.raises(ValueError, match="boundary"):
        Blur(boundary="reflect")
    with pytest.raises(ValueError, match="sigma"):
        Blur(sigma=0.0)
    with pytest.raises(ValueError, match="noise_std"):
        degrade(jax.random.PRNGKey(0), jnp.ones((4, 4, 1)), Blur(), -1.0)
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(jnp.ones((4, 4, 3)), jnp.ones((4, 5, 3)))


def test_degrade_noise_statistics_and_determinism():
    x = jax.random.uniform(jax.random.PRNGKey(3), (128, 128, 3), minval=-1, maxval=1)
    blur = Blur()
    key = jax.random.PRNGKey(4)
    d = degrade(key, x, blur, 0.05)
    np.testing.assert_allclose(jnp.std(d - blur.apply(x)), 0.05, rtol=0.02)
    np.testing.assert_array_equal(d, degrade(key, x, blur, 0.05))
    assert not np.allclose(d, degrade(jax.random.PRNGKey(5), x, blur, 0.05))


def test_psnr_conventions():
    x = jnp.zeros((2, 8, 8, 3))
    y = x + 0.1  # MSE 0.01 on the [-1, 1] scale
    np.testing.assert_allclose(psnr(x, y, "paper"), 20.0, rtol=1e-5)
    np.testing.assert_allclose(psnr(x, y) - psnr(x, y, "paper"), 20 * np.log10(2), rtol=1e-5)
    assert psnr(x, y).shape == (2,)
    np.testing.assert_allclose(ssim(x, x), 1.0, rtol=1e-6)
    scores = evaluate(x, y)
    assert {"psnr_standard", "psnr_paper", "ssim_standard", "ssim_paper", "psnr_paper_std"} <= set(
        scores
    )


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 32, 3)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
    ours = float(ssim(x, y))
    ref = structural_similarity(
        (x + 1) / 2,
        (y + 1) / 2,
        channel_axis=-1,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_wiener_inverts_circular_blur_exactly(x64):
    x = jax.random.normal(jax.random.PRNGKey(6), (16, 16, 3), jnp.float64)
    blur = Blur(3, 0.5, "circular")  # transfer function without zeros
    np.testing.assert_allclose(wiener(blur.apply(x), blur, 0.0), x, atol=1e-9)


def test_tikhonov_matches_dense_solve(x64):
    h, w = 6, 5
    for boundary in ("zero", "circular"):
        blur = Blur(3, 1.0, boundary)
        a = jax.jacfwd(lambda v, blur=blur: blur.apply(v.reshape(h, w, 1)).reshape(-1))(
            jnp.zeros(h * w)
        )
        d = jax.random.normal(jax.random.PRNGKey(7), (h, w, 1), jnp.float64)
        dense = jnp.linalg.solve(a.T @ a + 0.1 * jnp.eye(h * w), a.T @ d.reshape(-1))
        np.testing.assert_allclose(tikhonov_cg(d, blur, 0.1).reshape(-1), dense, atol=1e-8)
        if boundary == "circular":
            np.testing.assert_allclose(wiener(d, blur, 0.1).reshape(-1), dense, atol=1e-9)


def test_tv_zero_weight_is_least_squares_and_tv_helps(x64):
    blur = Blur(3, 0.4, "zero")  # well conditioned: A^T A has eigenvalues in [0.2, 1]
    x = jax.random.normal(jax.random.PRNGKey(8), (8, 8, 1), jnp.float64)
    d = blur.apply(x)
    ls = tikhonov_cg(d, blur, 0.0, iters=500)
    np.testing.assert_allclose(tv_deblur(d, blur, 0.0, iters=1000), ls, atol=1e-6)
    # piecewise-constant image with noise: TV beats the noisy input and lowers its objective
    img = jnp.zeros((24, 24, 1)).at[6:18, 6:18].set(0.8).at[:, :4].set(-0.5)
    blur = Blur(5, 1.5, "zero")
    dn = degrade(jax.random.PRNGKey(9), img, blur, 0.05)
    xtv = tv_deblur(dn, blur, 0.02, iters=500)
    assert float(tv_objective(xtv, dn, blur, 0.02)) < float(tv_objective(dn, dn, blur, 0.02))
    assert float(psnr(img, xtv)) > float(psnr(img, dn)) + 1.0


def test_tune_weight_picks_interior_value():
    img = jax.random.uniform(jax.random.PRNGKey(10), (4, 16, 16, 3), minval=-1, maxval=1)
    img = Blur(3, 1.0, "circular").apply(img)  # smooth-ish images
    blur = Blur(5, 2.0, "circular")
    d = degrade(jax.random.PRNGKey(11), img, blur, 0.05)
    grid = [1e-6, 1e-3, 1e-2, 1e-1, 1.0, 100.0]
    best, table = tune_weight(wiener, d, img, blur, grid)
    assert len(table) == len(grid)
    assert best not in (grid[0], grid[-1])
    assert max(p for _, p in table) == dict(table)[best]
