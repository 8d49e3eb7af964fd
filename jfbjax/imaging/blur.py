"""The blur operator A and its exact adjoint A^T.

Images are arrays of layout (..., H, W, C) (channels last, any leading batch
dimensions). The same normalised Gaussian kernel blurs every channel
(depthwise). Two boundary models:

* ``"zero"``: zero "same" padding, ``(A x)[i] = sum_k h[k] x[i + k - c]`` with
  ``x = 0`` outside the image (the paper's operator);
* ``"circular"``: periodic boundary, ``A = F^-1 diag(K) F`` with ``K`` the FFT
  of the kernel centred at the origin (diagonalised by the FFT, so Wiener
  deconvolution is exact for it).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

BOUNDARIES = ("zero", "circular")


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """A ``size x size`` Gaussian kernel ``exp(-(i^2 + j^2) / (2 sigma^2))``
    on a grid centred at ``(size - 1) / 2``, normalised to sum 1 (float64)."""
    if not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"kernel size must be an integer >= 1, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r**2) / (2.0 * float(sigma) ** 2))
    k = np.outer(g, g)
    return k / k.sum()


def _check_image(x, what: str = "image") -> None:
    if jnp.ndim(x) < 3:
        raise ValueError(
            f"{what} must have layout (..., H, W, C) with at least 3 dimensions, "
            f"got shape {jnp.shape(x)}"
        )


@dataclasses.dataclass(frozen=True)
class Blur:
    """Depthwise Gaussian blur; frozen and hashable, so it can be a static jit argument.

    Args:
      kernel_size: side of the square kernel (paper: 5).
      sigma: standard deviation of the Gaussian in pixels (paper: 5, nearly a box).
      boundary: ``"zero"`` (zero "same" padding, the paper's) or ``"circular"``.
    """

    kernel_size: int = 5
    sigma: float = 5.0
    boundary: str = "zero"

    def __post_init__(self):
        gaussian_kernel(self.kernel_size, self.sigma)  # validates
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {self.boundary!r}")

    @property
    def kernel(self) -> np.ndarray:
        return gaussian_kernel(self.kernel_size, self.sigma)

    # ----------------------------------------------------------- zero padding
    def _conv(self, x: jax.Array, flip: bool) -> jax.Array:
        k = self.kernel[::-1, ::-1] if flip else self.kernel
        size = self.kernel_size
        # "same" padding: before = (size - 1) // 2, after = size // 2; the
        # adjoint (correlation with the flipped kernel) mirrors it.
        lo, hi = (size - 1) // 2, size // 2
        pad = ((hi, lo), (hi, lo)) if flip else ((lo, hi), (lo, hi))
        lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
        xb = x.reshape((-1, h, w, c))
        kernel = jnp.asarray(np.repeat(k[:, :, None, None], c, axis=3), dtype=x.dtype)
        y = jax.lax.conv_general_dilated(
            xb,
            kernel,
            window_strides=(1, 1),
            padding=pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
            precision=jax.lax.Precision.HIGHEST,
        )
        return y.reshape((*lead, h, w, c))

    # --------------------------------------------------------------- circular
    def transfer_function(self, h: int, w: int) -> jax.Array:
        """The 2-D real FFT ``K`` of the kernel centred at pixel (0, 0) for an
        ``h x w`` image, shape ``(h, w // 2 + 1)``: ``A x = irfft2(K rfft2(x))``
        for the circular operator."""
        size = self.kernel_size
        if size > h or size > w:
            raise ValueError(f"kernel {size}x{size} larger than the image {h}x{w}")
        full = np.zeros((h, w))
        full[:size, :size] = self.kernel
        full = np.roll(full, (-((size - 1) // 2), -((size - 1) // 2)), axis=(0, 1))
        return jnp.asarray(np.fft.rfft2(full))

    def _fft_apply(self, x: jax.Array, adjoint: bool) -> jax.Array:
        h, w = x.shape[-3], x.shape[-2]
        k = self.transfer_function(h, w)
        if adjoint:
            k = jnp.conj(k)
        xf = jnp.fft.rfft2(x, axes=(-3, -2))
        real = jnp.promote_types(x.dtype, jnp.float32)
        y = jnp.fft.irfft2(xf * k.astype(xf.dtype)[..., None], s=(h, w), axes=(-3, -2))
        return y.astype(x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else real)

    # ------------------------------------------------------------ public API
    def apply(self, x: jax.Array) -> jax.Array:
        """``A x`` for ``x`` of layout (..., H, W, C)."""
        x = jnp.asarray(x)
        _check_image(x)
        if self.boundary == "circular":
            return self._fft_apply(x, adjoint=False)
        return self._conv(x, flip=False)

    def adjoint(self, y: jax.Array) -> jax.Array:
        """``A^T y``: the exact adjoint, ``<A x, y> = <x, A^T y>``."""
        y = jnp.asarray(y)
        _check_image(y)
        if self.boundary == "circular":
            return self._fft_apply(y, adjoint=True)
        return self._conv(y, flip=True)

    def normal(self, x: jax.Array) -> jax.Array:
        """``A^T A x``."""
        return self.adjoint(self.apply(x))

    __call__ = apply
