"""PSNR and SSIM (dm-pix) in two named conventions.

Images are on the [-1, 1] scale with layout (N, H, W, C) (or (H, W, C)).

* ``"standard"``: images mapped to [0, 1]; ``PSNR = 10 log10(1 / MSE)`` (data
  range 1) and SSIM with ``max_val=1``. This is the usual convention.
* ``"paper"``: the convention of arXiv 2402.02065's code,
  ``PSNR = -10 log10(MSE)`` on the [-1, 1] data with peak 1, which is exactly
  ``20 log10 2 = 6.02`` dB below the standard value for the same
  reconstruction. The paper does not state its SSIM convention; we read it as
  SSIM on the [-1, 1] data with ``max_val=2`` (scikit-image's default data
  range for such images).
"""

from __future__ import annotations

import dm_pix
import jax.numpy as jnp

CONVENTIONS = ("standard", "paper")


def _prepare(x, y):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"images must have equal shapes, got {x.shape} and {y.shape}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected (H, W, C) or (N, H, W, C) images, got shape {x.shape}")
    return x.astype(jnp.float32), y.astype(jnp.float32)


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def psnr(x, y, convention: str = "standard"):
    """PSNR in dB per image (shape (N,) for a batch) under ``convention``."""
    _check(convention)
    x, y = _prepare(x, y)
    if convention == "standard":
        return dm_pix.psnr((x + 1) / 2, (y + 1) / 2)
    return -10.0 * jnp.log10(dm_pix.mse(x, y))


def ssim(x, y, convention: str = "standard"):
    """SSIM per image (Gaussian window 11, sigma 1.5) under ``convention``."""
    _check(convention)
    x, y = _prepare(x, y)
    if convention == "standard":
        return dm_pix.ssim((x + 1) / 2, (y + 1) / 2, max_val=1.0)
    return dm_pix.ssim(x, y, max_val=2.0)


def evaluate(x_true, x_hat) -> dict[str, float]:
    """Mean and standard deviation over the images of PSNR and SSIM in both
    conventions: keys ``psnr_standard``, ``psnr_paper``, ``ssim_standard``,
    ``ssim_paper`` and the same with ``_std``."""
    out = {}
    for name, fn in (("psnr", psnr), ("ssim", ssim)):
        for conv in CONVENTIONS:
            v = jnp.atleast_1d(fn(x_true, x_hat, conv))
            out[f"{name}_{conv}"] = float(jnp.mean(v))
            out[f"{name}_{conv}_std"] = float(jnp.std(v))
    return out
