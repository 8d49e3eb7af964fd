r"""PSNR and SSIM (computed by dm-pix) in two named conventions.

Images are on the [-1, 1] scale with layout (..., H, W, C); the metrics are
computed per image (over H, W, C), so a batch (N, H, W, C) gives N values.

``"standard"`` (the usual one)
    Images mapped to [0, 1] by ``(x + 1) / 2``;
    ``PSNR = 10 log10(1 / MSE_[0,1])`` (``dm_pix.psnr``, data range 1) and
    ``dm_pix.ssim(..., max_val=1)``.

``"paper"`` (arXiv 2402.02065's code)
    ``PSNR = -10 log10(MSE_[-1,1])`` on the [-1, 1] data with peak 1. Since
    ``MSE_[-1,1] = 4 MSE_[0,1]`` it is exactly ``20 log10 2 = 6.0206`` dB
    below the standard value for the same reconstruction. The paper does not
    state its SSIM convention; our reading is SSIM on the [-1, 1] data with
    ``max_val=2`` (the data range, as scikit-image would infer it). SSIM's
    luminance term is not shift invariant, so the two SSIMs differ slightly.

SSIM uses dm-pix's defaults: an 11x11 Gaussian window of standard deviation
1.5, ``k1 = 0.01``, ``k2 = 0.03``, population (co)variances, averaged over
channels; this equals ``skimage.metrics.structural_similarity`` with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False`` up to its
border handling. Images must be at least 11x11 for SSIM.

Name the convention wherever a number is printed.
"""

from __future__ import annotations

import functools

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from jfbjax.imaging._checks import check_image, compute_dtype, real_float

CONVENTIONS = ("standard", "paper")
SSIM_WINDOW = 11

#: ``psnr(x, y, "standard") - psnr(x, y, "paper")`` for any pair of images.
PAPER_PSNR_OFFSET_DB = 20.0 * float(np.log10(2.0))


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _prepare(x, y) -> tuple[jax.Array, jax.Array, tuple[int, ...]]:
    """Validate, cast to a common float dtype (>= float32) and flatten to (N, H, W, C)."""
    x, y = real_float(x), real_float(y)
    if x.shape != y.shape:
        raise ValueError(f"images must have equal shapes, got {x.shape} and {y.shape}")
    check_image(x, "images")
    dtype = compute_dtype(jnp.promote_types(x.dtype, y.dtype))
    lead = x.shape[:-3]
    flat = (-1, *x.shape[-3:])
    return x.astype(dtype).reshape(flat), y.astype(dtype).reshape(flat), lead


@functools.partial(jax.jit, static_argnames="convention")
def psnr(x: jax.Array, y: jax.Array, convention: str = "standard") -> jax.Array:
    r"""PSNR in dB of each image of ``y`` against ``x`` (symmetric) under ``convention``.

    .. math:: \mathrm{PSNR}_{standard} = 10 \log_{10} \frac{1}{\mathrm{MSE}_{[0,1]}},
              \qquad
              \mathrm{PSNR}_{paper} = -10 \log_{10} \mathrm{MSE}_{[-1,1]}
              = \mathrm{PSNR}_{standard} - 6.02,

    with the MSE over the H, W, C axes of each image (see the module docstring).

    Args:
      x, y: images (..., H, W, C) on the [-1, 1] scale, of equal shapes.
      convention: ``"standard"`` or ``"paper"``.

    Returns:
      An array of the leading (batch) shape: ``(N,)`` for (N, H, W, C) input,
      a scalar for one (H, W, C) image. Identical images give ``inf``.

    Raises:
      ValueError: an unknown convention or mismatched shapes.
    """
    _check_convention(convention)
    a, b, lead = _prepare(x, y)
    if convention == "standard":
        out = dm_pix.psnr((a + 1) / 2, (b + 1) / 2)
    else:
        out = -10.0 * jnp.log10(dm_pix.mse(a, b))
    return out.astype(a.dtype).reshape(lead)


@functools.partial(jax.jit, static_argnames="convention")
def ssim(x: jax.Array, y: jax.Array, convention: str = "standard") -> jax.Array:
    """SSIM of each image (mean over pixels and channels) under ``convention``.

    ``"standard"``: SSIM of the images mapped to [0, 1] with ``max_val=1``;
    ``"paper"``: on the [-1, 1] data with ``max_val=2``. An 11x11 Gaussian
    window of standard deviation 1.5 (dm-pix's defaults; see the module
    docstring).

    Args:
      x, y: images (..., H, W, C) on the [-1, 1] scale, of equal shapes.
      convention: ``"standard"`` or ``"paper"``.

    Returns an array of the leading (batch) shape; identical images give 1.

    Raises:
      ValueError: for mismatched shapes or images smaller than 11x11.
    """
    _check_convention(convention)
    a, b, lead = _prepare(x, y)
    if min(a.shape[-3:-1]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (its Gaussian "
            f"window), got {a.shape[-3]}x{a.shape[-2]}"
        )
    if convention == "standard":
        out = dm_pix.ssim((a + 1) / 2, (b + 1) / 2, max_val=1.0)
    else:
        out = dm_pix.ssim(a, b, max_val=2.0)
    # dm-pix mixes in a NumPy float64 constant, which promotes under x64.
    return out.astype(a.dtype).reshape(lead)


def evaluate(x_true: jax.Array, x_hat: jax.Array) -> dict[str, float]:
    """PSNR and SSIM of ``x_hat`` against ``x_true`` in both conventions.

    Returns a dict of Python floats: the mean over images under the keys
    ``psnr_standard``, ``psnr_paper``, ``ssim_standard``, ``ssim_paper``, the
    standard deviation over images (population, ``ddof=0``) under the same
    keys suffixed ``_std``. A single (H, W, C) image counts as one image
    (std 0). If any PSNR is ``inf`` (a perfect reconstruction) the mean is
    ``inf`` and the std NaN.
    """
    out: dict[str, float] = {}
    for name, fn in (("psnr", psnr), ("ssim", ssim)):
        for conv in CONVENTIONS:
            v = np.asarray(fn(x_true, x_hat, convention=conv), np.float64).reshape(-1)
            out[f"{name}_{conv}"] = float(np.mean(v))
            out[f"{name}_{conv}_std"] = float(np.std(v))
    return out
