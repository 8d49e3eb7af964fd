r"""The blur operator A, its exact adjoint A^T and the normal operator A^T A.

Images are arrays of layout (..., H, W, C): channels last (as Flax uses), any
number of leading batch dimensions. The same normalised Gaussian kernel ``h``
(``s x s``) blurs every channel independently (depthwise). With
``lo = (s - 1) // 2`` the index of the kernel's centre tap, both boundary
models compute the correlation

.. math:: (A x)_{i,j} = \sum_{k,l=0}^{s-1} h_{k,l}\, x_{i+k-lo,\; j+l-lo}

and differ only in what lies outside the image:

* ``"zero"``: ``x = 0`` outside (zero "same" padding, the paper's operator),
  computed separably along each image axis, as a banded matrix
  (:func:`zero_padded_band`) or as shifted copies (``banded`` of
  :meth:`Blur.apply`); its adjoint is the correlation with the flipped kernel
  under the mirrored padding, i.e. the transposed matrices.
* ``"circular"``: ``x`` is periodic, ``A = F^{-1} diag(K) F`` with ``F`` the
  2-D DFT and ``K`` the transfer function (:meth:`Blur.transfer_function`),
  computed with ``rfft2``/``irfft2``; ``A^T = F^{-1} diag(conj K) F``.

Both agree away from the border, i.e. on rows ``lo <= i < H - (s - 1 - lo)``
(and the same for columns), for odd and even kernel sizes; a 1x1 kernel is
the identity for both.

A kernel with non-negative taps summing to one has ``||A||_2 <= 1`` (Young's
inequality) for both boundaries, which the classical solvers in
:mod:`jfbjax.imaging.baselines` use to choose their step sizes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jfbjax.imaging._checks import check_image, compute_dtype, real_float

BOUNDARIES = ("zero", "circular")


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    r"""A ``size x size`` Gaussian kernel normalised to sum one (float64 NumPy).

    .. math:: h_{k,l} \propto \exp\!\Big(-\frac{(k - c)^2 + (l - c)^2}{2\sigma^2}\Big),
       \qquad c = \frac{size - 1}{2},

    so it is symmetric under flips for odd and even sizes. ``size = 1`` gives
    the identity kernel ``[[1.]]`` for any ``sigma``; a very small ``sigma``
    gives (numerically) a delta at the centre for odd sizes.

    Raises:
      ValueError: if ``size`` is not an integer >= 1 or ``sigma`` is not a
        finite number > 0.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"kernel size must be an integer >= 1, got {size!r}")
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, numbers.Real)
        or not math.isfinite(sigma)
        or not sigma > 0
    ):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    r = np.arange(int(size), dtype=np.float64) - (int(size) - 1) / 2
    g = np.exp(-(r**2) / (2.0 * float(sigma) ** 2))
    g = g / g.sum()  # normalise in 1-D first: no underflow to 0/0 for tiny sigma
    k = np.outer(g, g)
    return k / k.sum()


#: Longest image axis that :class:`Blur` (zero boundary) blurs by a banded matrix product.
BANDED_MAX = 256

#: Longest image axis of :meth:`Blur.normal_inverse` (zero boundary): it keeps a dense
#: ``n x n`` eigenbasis per axis (an ``eigh`` of that size, once per size).
EIGEN_MAX = 1024


@functools.lru_cache(maxsize=64)
def zero_padded_band(n: int, g: tuple[float, ...]) -> np.ndarray:
    r"""The ``(n, n)`` banded Toeplitz matrix ``M`` of the zero-padded 1-D
    correlation with the taps ``g``: ``(M v)_i = \sum_k g_k v_{i+k-lo}`` over
    ``0 <= i+k-lo < n``, with ``lo = (len(g) - 1) // 2`` the centre tap
    (float64 NumPy, read-only, cached per ``(n, g)``)."""
    lo = (len(g) - 1) // 2
    m = np.zeros((n, n))
    for k, gk in enumerate(g):
        m += float(gk) * np.eye(n, k=k - lo)
    m.flags.writeable = False
    return m


@functools.lru_cache(maxsize=64)
def normal_eigh(n: int, g: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    r"""Eigendecomposition ``S = U diag(lam) U^T`` of ``S = M^T M``, with ``M`` the
    ``(n, n)`` zero-padded 1-D correlation with the taps ``g`` (:func:`zero_padded_band`).

    The zero-boundary ``A`` is ``M`` along each image axis (``A x = M_H x M_W^T``
    per channel), so ``A^T A x = S_H x S_W`` and every function of ``A^T A`` is
    diagonal in the basis ``U_H (.) U_W^T``: ``(A^T A + mu I)^{-1}`` divides the
    coefficient ``(i, j)`` by ``lam_H[i] lam_W[j] + mu``
    (:meth:`Blur.normal_inverse`). Returns ``(lam, U)`` (float64 NumPy,
    read-only, cached per ``(n, g)``), ``lam`` clipped at 0 (``S`` is positive
    semi-definite; rounding can make a zero eigenvalue slightly negative).
    """
    m = zero_padded_band(n, g)
    lam, u = np.linalg.eigh(m.T @ m)
    lam = np.maximum(lam, 0.0)
    lam.flags.writeable = False
    u.flags.writeable = False
    return lam, u


def chebyshev(matvec, b: jax.Array, lo: float, hi: float, iters: int, precond=None) -> jax.Array:
    r"""``iters`` Chebyshev iterations on ``M y = b`` from ``y = 0`` (Saad, *Iterative
    methods for sparse linear systems*, Alg. 12.1), optionally preconditioned by ``B``.

    ``matvec`` applies the symmetric positive-definite ``M``; ``precond`` (None: the
    identity) applies a symmetric positive-definite ``B`` such that the spectrum of
    ``B M`` lies in ``[lo, hi]``, ``0 < lo < hi``. The result is ``q(B M) B b`` for a
    fixed polynomial ``q`` of degree ``iters - 1``: its coefficients do not depend on
    ``b`` (unlike conjugate gradients'), so it is a linear operator of ``b``,
    symmetric (``q(BM) B = B q(MB)``), and on the interval ``|1 - t q(t)| <= 2 r^iters``
    with ``r = (sqrt(k) - 1) / (sqrt(k) + 1)``, ``k = hi / lo``: positive definite
    once that bound is below 1. Cost: ``iters`` products with ``M`` and with ``B``.
    """
    apply_b = (lambda v: v) if precond is None else precond
    theta, delta = (hi + lo) / 2, (hi - lo) / 2
    sigma = theta / delta
    rho = 1.0 / sigma
    y = jnp.zeros_like(b)
    r = b
    step = apply_b(b) / theta
    for _ in range(int(iters)):
        y = y + step
        r = r - matvec(step)
        rho_next = 1.0 / (2.0 * sigma - rho)
        step = rho_next * rho * step + (2.0 * rho_next / delta) * apply_b(r)
        rho = rho_next
    return y


def chebyshev_bound(lo: float, hi: float, iters: int) -> float:
    """``2 r^iters``: the bound on ``|1 - t q(t)|`` over ``[lo, hi]`` of :func:`chebyshev`."""
    k = hi / lo
    return 2.0 * ((np.sqrt(k) - 1.0) / (np.sqrt(k) + 1.0)) ** int(iters)


@dataclasses.dataclass(frozen=True)
class Blur:
    """Depthwise Gaussian blur ``A``; frozen and hashable, hence static under ``jit``.

    Attributes:
      kernel_size: side ``s`` of the square kernel (paper: 5). Odd and even
        sizes are supported.
      sigma: standard deviation of the Gaussian in pixels (paper: 5, which
        makes a 5x5 kernel close to a box filter).
      boundary: ``"zero"`` (zero "same" padding, the paper's) or
        ``"circular"`` (periodic, diagonalised by the FFT).

    ``apply``, ``adjoint`` and ``normal`` are pure and jittable; they accept
    (..., H, W, C) arrays and return the same shape in the input's floating
    dtype (integer inputs become float32; float16/bfloat16 are computed in
    float32 and cast back). Example::

        blur = Blur(kernel_size=5, sigma=5.0)
        d = jax.jit(blur.apply)(x)               # or jax.jit(f, static_argnums=...)
        x0 = blur.adjoint(d)
    """

    kernel_size: int = 5
    sigma: float = 5.0
    boundary: str = "zero"

    def __post_init__(self):
        gaussian_kernel(self.kernel_size, self.sigma)  # validates both
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {self.boundary!r}")

    @property
    def kernel(self) -> np.ndarray:
        """The ``(s, s)`` kernel ``h`` (float64 NumPy, sums to one)."""
        return gaussian_kernel(self.kernel_size, self.sigma)

    @property
    def norm_bound(self) -> float:
        """An upper bound on the spectral norm ``||A||_2``: ``sum |h| = 1``."""
        return float(np.abs(self.kernel).sum())

    # ----------------------------------------------------------- zero padding
    @property
    def kernel_1d(self) -> np.ndarray:
        """The 1-D factor ``g`` of the separable kernel, ``h = g g^T`` (float64 NumPy)."""
        s = self.kernel_size
        r = np.arange(s, dtype=np.float64) - (s - 1) / 2
        g = np.exp(-(r**2) / (2.0 * float(self.sigma) ** 2))
        return g / g.sum()

    def _conv(self, x: jax.Array, adjoint: bool, banded: bool | None = None) -> jax.Array:
        r"""Zero-padded correlation with ``h`` (or, for ``A^T``, with the flipped
        ``h`` and mirrored padding), computed separably.

        The Gaussian kernel is the outer product ``h = g g^T``, so ``A`` is one
        1-D correlation with ``g`` along each image axis, and each is a banded
        Toeplitz matrix ``M`` (:func:`zero_padded_band`) acting on that axis:
        ``A x = M_H x M_W^T`` per channel and ``A^T y = M_H^T y M_W``, exact
        adjoints by construction. Or, with ``banded`` False (and by default for
        axes longer than ``BANDED_MAX`` pixels), a sum of ``s`` shifted, weighted
        copies along the axis, whose cost grows with ``s`` instead of the axis
        length. Both are exact up to float rounding.

        Why two forms: XLA's depthwise convolution (``feature_group_count = C``)
        is two orders of magnitude slower on CPU than the shifted copies (14 ms
        against 0.1 ms on 24x32x32x3). The shifted copies are the faster form
        for one blur at a time, e.g. once per loop iteration, but XLA fuses
        them badly into their consumers when many are chained in one
        computation, as in the preconditioner's 10 ``A^T A`` per step of T,
        where the matrices are 4.2-4.6x faster at 32-128 pixels
        (``benchmarks/results/blur_ops_cpu.md``).
        """
        s = self.kernel_size
        lo, hi = (s - 1) // 2, s // 2
        dtype = compute_dtype(x.dtype)
        y = x.astype(dtype)
        for axis in (-3, -2):
            n = y.shape[axis]
            if (n <= BANDED_MAX) if banded is None else banded:
                m = zero_padded_band(n, tuple(float(v) for v in self.kernel_1d))
                m = jnp.asarray(m.T if adjoint else m, dtype)
                y = jnp.moveaxis(
                    jnp.tensordot(m, y, axes=([1], [y.ndim + axis]),
                                  precision=jax.lax.Precision.HIGHEST),
                    0, axis,
                )  # fmt: skip
                continue
            g, pad = (self.kernel_1d[::-1], (hi, lo)) if adjoint else (self.kernel_1d, (lo, hi))
            widths = [(0, 0)] * y.ndim
            widths[axis] = pad
            yp = jnp.pad(y, widths)
            taps = [float(g[k]) * jax.lax.slice_in_dim(yp, k, k + n, axis=axis) for k in range(s)]
            y = functools.reduce(jnp.add, taps)
        return y.astype(x.dtype)

    # --------------------------------------------------------------- circular
    def transfer_function(self, h: int, w: int) -> np.ndarray:
        r"""The transfer function ``K`` of the circular operator on ``h x w`` images.

        ``K = rfft2(g)`` (shape ``(h, w // 2 + 1)``, complex128 NumPy) where
        ``g`` is the flipped kernel centred at pixel (0, 0),
        ``g[(lo - k) mod h, (lo - l) mod w] += h_{k,l}`` (taps wrap around
        when the kernel is larger than the image), so that

        .. math:: A x = \mathrm{irfft2}(K \cdot \mathrm{rfft2}(x)), \qquad
                  A^T y = \mathrm{irfft2}(\bar K \cdot \mathrm{rfft2}(y)).

        A 1x1 kernel gives ``K = 1``. For the zero-padded operator ``K`` is the
        usual FFT approximation (exact away from the border).
        """
        if isinstance(h, bool) or isinstance(w, bool) or min(int(h), int(w)) < 1:
            raise ValueError(f"image size must be positive integers, got {h!r} x {w!r}")
        s, lo = self.kernel_size, (self.kernel_size - 1) // 2
        g = np.zeros((int(h), int(w)))
        rows = (lo - np.arange(s)) % int(h)
        cols = (lo - np.arange(s)) % int(w)
        np.add.at(g, (rows[:, None], cols[None, :]), self.kernel)
        return np.fft.rfft2(g)

    def _fft(self, x: jax.Array, adjoint: bool) -> jax.Array:
        h, w = x.shape[-3], x.shape[-2]
        k = self.transfer_function(h, w)
        if adjoint:
            k = np.conj(k)
        dtype = compute_dtype(x.dtype)
        xf = jnp.fft.rfft2(x.astype(dtype), axes=(-3, -2))
        y = jnp.fft.irfft2(xf * jnp.asarray(k[..., None], xf.dtype), s=(h, w), axes=(-3, -2))
        return y.astype(x.dtype)

    # ------------------------------------------------------------ public API
    def apply(self, x: jax.Array, banded: bool | None = None) -> jax.Array:
        """``A x`` for ``x`` of layout (..., H, W, C).

        ``banded`` (zero boundary only): True blurs each axis by its banded
        matrix, False by shifted copies, None (default) chooses matrices for
        axes of up to ``BANDED_MAX`` pixels. Matrices are faster where many
        blurs are chained in one computation (the preconditioner, the model's
        step), shifted copies for one blur per loop iteration (the TV and CG
        baselines); ``benchmarks/blur_ops.py`` measures both. The results agree
        to float rounding.
        """
        x = real_float(x)
        check_image(x, "the input of Blur.apply")
        if self.boundary == "circular":
            return self._fft(x, adjoint=False)
        return self._conv(x, adjoint=False, banded=banded)

    def adjoint(self, y: jax.Array, banded: bool | None = None) -> jax.Array:
        """``A^T y``, the exact adjoint: ``<A x, y> = <x, A^T y>`` for all x, y
        (``banded``: as in :meth:`apply`)."""
        y = real_float(y)
        check_image(y, "the input of Blur.adjoint")
        if self.boundary == "circular":
            return self._fft(y, adjoint=True)
        return self._conv(y, adjoint=True, banded=banded)

    def normal(self, x: jax.Array, banded: bool | None = None) -> jax.Array:
        """``A^T A x`` (symmetric positive semi-definite, eigenvalues in [0, 1];
        ``banded``: as in :meth:`apply`)."""
        return self.adjoint(self.apply(x, banded), banded)

    def normal_inverse_approx(self, x: jax.Array, mu: float, iters: int = 10) -> jax.Array:
        r"""``P x``: a symmetric positive-definite polynomial approximation of (A^T A + mu I)^-1.

        ``P = p(A^T A + mu I)`` with ``p`` the degree-``iters - 1`` polynomial of
        ``iters`` Chebyshev iterations (Saad, *Iterative methods for sparse linear
        systems*, Alg. 12.1) on ``(A^T A + mu I) y = x`` from ``y = 0`` for the
        eigenvalue interval ``[mu, 1 + mu]`` (``||A|| <= 1``). Unlike conjugate
        gradients its coefficients do not depend on ``x``, so ``P`` is a fixed
        linear operator; being a polynomial in a symmetric matrix it is
        symmetric and commutes with ``A^T A``, and on the interval
        ``|1 - t p(t)| <= 2 q^iters`` with ``q = (sqrt(k) - 1) / (sqrt(k) + 1)``,
        ``k = (1 + mu) / mu``, so ``P`` is positive definite once that bound is
        below 1. It is exact for either boundary (it only applies ``A`` and
        ``A^T``); cost: ``iters`` applications of ``A^T A``. ``mu > 0``.
        """
        x = real_float(x)
        check_image(x, "the input of Blur.normal_inverse_approx")
        if not float(mu) > 0:
            raise ValueError(f"mu must be > 0, got {mu!r}")
        if isinstance(iters, bool) or int(iters) < 1:
            raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
        mu = float(mu)
        return chebyshev(lambda v: self.normal(v) + mu * v, x, mu, 1.0 + mu, int(iters))

    def normal_inverse(self, x: jax.Array, mu: float) -> jax.Array:
        r"""``(A^T A + mu I)^{-1} x``, exactly (to float rounding), for ``mu > 0``.

        Zero boundary: ``A^T A`` acts on each channel as ``x -> S_H x S_W`` with
        ``S = M^T M`` for the 1-D zero-padded blur matrix ``M`` of each axis, so in
        the eigenbases of ``S_H`` and ``S_W`` (:func:`normal_eigh`) it is the
        entrywise product with ``lam_H[i] lam_W[j]``, and

        .. math:: (A^T A + \mu I)^{-1} x = U_H \Big[\frac{(U_H^T x U_W)_{ij}}
                  {\lambda_{H,i} \lambda_{W,j} + \mu}\Big] U_W^T.

        Circular boundary: ``irfft2(rfft2(x) / (|K|^2 + mu))`` with ``K`` the
        transfer function. Cost: four products with ``n x n`` matrices (two FFTs
        for circular), about one ``A^T A``; :meth:`normal_inverse_approx`'s
        Chebyshev polynomial costs ``iters`` of them, and agrees with this to
        ``2 q^iters`` (its docstring), 1.3e-4 for ``mu = 0.25`` and 10 iterations.
        Symmetric positive definite, commutes with ``A^T A``; images up to
        ``EIGEN_MAX`` pixels a side for the zero boundary.
        """
        x = real_float(x)
        check_image(x, "the input of Blur.normal_inverse")
        if not (math.isfinite(float(mu)) and float(mu) > 0):
            raise ValueError(f"mu must be a finite number > 0, got {mu!r}")
        dtype = compute_dtype(x.dtype)
        h, w = x.shape[-3], x.shape[-2]
        if self.boundary == "circular":
            k2 = np.abs(self.transfer_function(h, w)) ** 2
            xf = jnp.fft.rfft2(x.astype(dtype), axes=(-3, -2))
            scale = jnp.asarray((1.0 / (k2 + float(mu)))[..., None], dtype)
            y = jnp.fft.irfft2(xf * scale, s=(h, w), axes=(-3, -2))
            return y.astype(x.dtype)
        if max(h, w) > EIGEN_MAX:
            raise ValueError(
                f"Blur.normal_inverse (zero boundary) handles sides up to {EIGEN_MAX} pixels, "
                f"got {h} x {w}; use normal_inverse_approx"
            )
        g = tuple(float(v) for v in self.kernel_1d)
        (lam_h, u_h), (lam_w, u_w) = normal_eigh(h, g), normal_eigh(w, g)
        hi = jax.lax.Precision.HIGHEST
        u_h, u_w = jnp.asarray(u_h, dtype), jnp.asarray(u_w, dtype)
        y = x.astype(dtype)
        # coefficients in the eigenbasis: U_H^T x U_W (axis -3 by U_H, axis -2 by U_W)
        y = jnp.einsum("ih,...hwc->...iwc", u_h.T, y, precision=hi)
        y = jnp.einsum("...iwc,wj->...ijc", y, u_w, precision=hi)
        y = y * jnp.asarray((1.0 / (np.outer(lam_h, lam_w) + float(mu)))[..., None], dtype)
        y = jnp.einsum("hi,...ijc->...hjc", u_h, y, precision=hi)
        y = jnp.einsum("...hjc,wj->...hwc", y, u_w, precision=hi)
        return y.astype(x.dtype)

    __call__ = apply
