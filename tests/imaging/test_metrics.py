"""PSNR and SSIM in the standard and the paper's conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jfbjax.imaging import PAPER_PSNR_OFFSET_DB, evaluate, psnr, ssim

SKIMAGE_LIKE_DM_PIX = dict(
    channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
)


def _pair(shape=(3, 24, 20, 3), seed=0, dtype=np.float64):
    """A smooth image in [-1, 1] and a noisy, clipped version of it."""
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.uniform(-1, 1, shape), [0] * (len(shape) - 3) + [1, 1, 0])
    x = np.clip(2 * x, -1, 1)
    y = np.clip(x + 0.15 * rng.normal(size=shape), -1, 1)
    return x.astype(dtype), y.astype(dtype)


def test_paper_psnr_is_6_02_db_below_standard():
    assert PAPER_PSNR_OFFSET_DB == pytest.approx(6.0206, abs=1e-4)
    x, y = _pair(dtype=np.float32)
    diff = psnr(x, y, "standard") - psnr(x, y, "paper")
    np.testing.assert_allclose(diff, PAPER_PSNR_OFFSET_DB, atol=1e-4)


def test_known_mse_gives_known_psnr(x64):
    x = jnp.zeros((2, 8, 8, 3))
    y = x.at[0].add(0.1).at[1].add(0.01)  # MSE on [-1, 1]: 1e-2 and 1e-4
    np.testing.assert_allclose(psnr(x, y, "paper"), [20.0, 40.0], rtol=1e-12)
    np.testing.assert_allclose(psnr(x, y), [26.0206, 46.0206], atol=1e-4)
    # the standard value is scikit-image's PSNR on [0, 1] images with data range 1
    xs, ys = np.asarray((x + 1) / 2), np.asarray((y + 1) / 2)
    ref = [peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(xs, ys, strict=True)]
    np.testing.assert_allclose(psnr(x, y), ref, rtol=1e-12)
    # symmetric in its arguments
    np.testing.assert_allclose(psnr(y, x, "paper"), psnr(x, y, "paper"))


def test_identical_images():
    x, _ = _pair(dtype=np.float32)
    for convention in ("standard", "paper"):
        assert np.all(np.isposinf(psnr(x, x, convention)))
        np.testing.assert_allclose(ssim(x, x, convention), 1.0, rtol=1e-6)


def test_per_image_shapes():
    x, y = _pair((2, 3, 12, 11, 1), dtype=np.float32)
    for fn in (psnr, ssim):
        assert fn(x, y).shape == (2, 3)
        assert fn(x[0], y[0]).shape == (3,)
        assert fn(x[0, 0], y[0, 0]).shape == ()
        np.testing.assert_allclose(fn(x, y)[1, 2], fn(x[1, 2], y[1, 2]), rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_scikit_image(x64, channels):
    x, y = _pair((2, 24, 20, channels))
    for i in range(2):
        standard = structural_similarity(
            (x[i] + 1) / 2, (y[i] + 1) / 2, data_range=1.0, **SKIMAGE_LIKE_DM_PIX
        )
        paper = structural_similarity(x[i], y[i], data_range=2.0, **SKIMAGE_LIKE_DM_PIX)
        np.testing.assert_allclose(ssim(x, y, "standard")[i], standard, rtol=1e-9)
        np.testing.assert_allclose(ssim(x, y, "paper")[i], paper, rtol=1e-9)
        assert 0.2 < paper < standard < 1.0  # the conventions differ (luminance term)
    # float32 agrees too, to float32 accuracy
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    np.testing.assert_allclose(ssim(x32, y32), ssim(x, y), atol=1e-5)


def test_evaluate():
    x, y = _pair(dtype=np.float32)
    scores = evaluate(x, y)
    expected = {
        f"{m}_{c}{s}" for m in ("psnr", "ssim") for c in ("standard", "paper") for s in ("", "_std")
    }
    assert set(scores) == expected
    assert all(isinstance(v, float) for v in scores.values())
    for metric, fn in (("psnr", psnr), ("ssim", ssim)):
        for convention in ("standard", "paper"):
            values = np.asarray(fn(x, y, convention))
            assert scores[f"{metric}_{convention}"] == pytest.approx(values.mean(), rel=1e-6)
            assert scores[f"{metric}_{convention}_std"] == pytest.approx(values.std(), rel=1e-4)
    assert scores["psnr_standard"] - scores["psnr_paper"] == pytest.approx(6.0206, abs=1e-3)
    assert scores["psnr_standard_std"] > 0
    single = evaluate(x[0], y[0])
    assert single["psnr_paper_std"] == 0.0
    assert single["psnr_paper"] == pytest.approx(float(psnr(x[0], y[0], "paper")))


def test_metrics_inside_jit_and_dtypes(x64):
    x, y = _pair(dtype=np.float32)
    f = jax.jit(lambda a, b: (psnr(a, b, "paper"), ssim(a, b)))
    p, s = f(x, y)
    np.testing.assert_allclose(p, psnr(x, y, "paper"), rtol=1e-6)
    assert p.dtype == s.dtype == jnp.float32  # float32 stays float32 with x64 enabled
    assert psnr(x.astype(np.float64), y.astype(np.float64)).dtype == jnp.float64
    assert psnr(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)).dtype == jnp.float32


def test_bad_inputs():
    a = jnp.zeros((2, 12, 12, 3))
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(a, a[:, :, :11])
    with pytest.raises(ValueError, match="equal shapes"):
        evaluate(a, a[:1])
    with pytest.raises(ValueError, match="convention must be one of"):
        psnr(a, a, "db")
    with pytest.raises(ValueError, match="convention must be one of"):
        ssim(a, a, convention="Paper")
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
        psnr(a[0, 0], a[0, 0])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(jnp.zeros((2, 10, 16, 1)), jnp.zeros((2, 10, 16, 1)))
