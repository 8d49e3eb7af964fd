"""Imaging for deblurring ``d = A x + e``: the blur operator and its adjoint, the
degradation, PSNR/SSIM in two named conventions, and classical baselines.

Images are float arrays of layout (..., H, W, C) on the [-1, 1] scale.
"""

from jfbjax.imaging.baselines import (
    smoothed_tv,
    smoothed_tv_gradient,
    tikhonov_cg,
    tune_weight,
    tv_deblur,
    tv_objective,
    wiener,
)
from jfbjax.imaging.blur import BOUNDARIES, Blur, gaussian_kernel
from jfbjax.imaging.metrics import CONVENTIONS, PAPER_PSNR_OFFSET_DB, evaluate, psnr, ssim
from jfbjax.imaging.noise import degrade

__all__ = [
    "BOUNDARIES",
    "CONVENTIONS",
    "PAPER_PSNR_OFFSET_DB",
    "Blur",
    "degrade",
    "evaluate",
    "gaussian_kernel",
    "psnr",
    "smoothed_tv",
    "smoothed_tv_gradient",
    "ssim",
    "tikhonov_cg",
    "tune_weight",
    "tv_deblur",
    "tv_objective",
    "wiener",
]
