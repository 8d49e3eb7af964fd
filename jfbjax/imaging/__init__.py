"""Imaging: the blur operator, the degradation, metrics and classical baselines."""

from jfbjax.imaging.baselines import tikhonov_cg, tune_weight, tv_deblur, tv_objective, wiener
from jfbjax.imaging.blur import Blur, gaussian_kernel
from jfbjax.imaging.metrics import evaluate, psnr, ssim
from jfbjax.imaging.noise import degrade

__all__ = [
    "Blur",
    "degrade",
    "evaluate",
    "gaussian_kernel",
    "psnr",
    "ssim",
    "tikhonov_cg",
    "tune_weight",
    "tv_deblur",
    "tv_objective",
    "wiener",
]
