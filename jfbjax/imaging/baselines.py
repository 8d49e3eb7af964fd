"""Classical deblurring baselines: Wiener/Tikhonov and total variation.

All are pure, jittable functions of the degraded images ``d`` (layout
(..., H, W, C)) and a :class:`~jfbjax.imaging.blur.Blur` (static).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jfbjax.imaging.blur import Blur
from jfbjax.imaging.metrics import psnr


def wiener(d: jax.Array, blur: Blur, weight: float) -> jax.Array:
    r"""Wiener / Tikhonov deconvolution in closed form with the FFT:

    .. math:: x = F^{-1}\Big[\frac{\bar K\, F d}{|K|^2 + w}\Big],

    the exact minimiser of ``||A x - d||^2 + w ||x||^2`` for the circular
    operator. For the zero-padded operator it is the usual FFT approximation
    (boundary effects near the edges); :func:`tikhonov_cg` is exact for both.
    """
    h, w = d.shape[-3], d.shape[-2]
    k = blur.transfer_function(h, w)
    df = jnp.fft.rfft2(d.astype(jnp.promote_types(d.dtype, jnp.float32)), axes=(-3, -2))
    filt = jnp.conj(k) / (jnp.abs(k) ** 2 + weight)
    x = jnp.fft.irfft2(df * filt.astype(df.dtype)[..., None], s=(h, w), axes=(-3, -2))
    return x.astype(d.dtype)


def tikhonov_cg(d: jax.Array, blur: Blur, weight: float, iters: int = 100) -> jax.Array:
    """The exact Tikhonov minimiser ``argmin ||A x - d||^2 + w ||x||^2`` for
    either boundary, by conjugate gradients on ``(A^T A + w I) x = A^T d``."""
    op = lambda x: blur.normal(x) + weight * x
    x, _ = jax.scipy.sparse.linalg.cg(op, blur.adjoint(d), tol=1e-10, maxiter=iters)
    return x


def _grad(x):
    """Forward differences with a zero (Neumann) boundary: (..., H, W, C, 2)."""
    gx = jnp.concatenate(
        [x[..., 1:, :, :] - x[..., :-1, :, :], jnp.zeros_like(x[..., :1, :, :])], -3
    )
    gy = jnp.concatenate(
        [x[..., :, 1:, :] - x[..., :, :-1, :], jnp.zeros_like(x[..., :, :1, :])], -2
    )
    return jnp.stack([gx, gy], -1)


def _div(p):
    """The negative adjoint of :func:`_grad`: ``<grad x, p> = -<x, div p>``."""
    px, py = p[..., 0], p[..., 1]
    dx = jnp.concatenate(
        [px[..., :1, :, :], px[..., 1:-1, :, :] - px[..., :-2, :, :], -px[..., -2:-1, :, :]], -3
    )
    dy = jnp.concatenate(
        [py[..., :, :1, :], py[..., :, 1:-1, :] - py[..., :, :-2, :], -py[..., :, -2:-1, :]], -2
    )
    return dx + dy


def tv_objective(x, d, blur: Blur, weight: float):
    """``0.5 ||A x - d||^2 + w TV(x)`` with isotropic TV summed over channels."""
    g = _grad(x)
    tv = jnp.sum(jnp.sqrt(jnp.sum(g**2, -1)))
    return 0.5 * jnp.sum((blur.apply(x) - d) ** 2) + weight * tv


def tv_deblur(d: jax.Array, blur: Blur, weight: float, iters: int = 300) -> jax.Array:
    r"""Isotropic total-variation deblurring by a primal-dual method:

    .. math:: \min_x \tfrac12 \|A x - d\|^2 + w \sum_i \|(\nabla x)_i\|_2 .

    Condat-Vu's variant of Chambolle-Pock, with the smooth data term in the
    primal gradient step:
    ``x+ = x - tau (A^T(A x - d) - div p)``,
    ``p+ = proj_{|p_i| <= w}(p + sigma grad(2 x+ - x))``.
    It converges when ``1/tau - sigma ||grad||^2 >= ||A^T A|| / 2``; with
    ``||A^T A|| <= 1`` (a non-negative kernel summing to 1) and
    ``||grad||^2 <= 8`` the steps ``sigma = 1/4``, ``tau = 1/2.5`` satisfy it.
    Runs ``iters`` iterations in a ``lax.fori_loop`` from ``x0 = A^T d``;
    with ``w = 0`` it is gradient descent on the least-squares term.
    """
    sigma = 0.25
    tau = 1.0 / (0.5 + 8.0 * sigma)
    x0 = blur.adjoint(d)
    p0 = jnp.zeros((*x0.shape, 2), x0.dtype)
    w = jnp.asarray(weight, x0.dtype)

    def body(_, carry):
        x, p = carry
        x_new = x - tau * (blur.adjoint(blur.apply(x) - d) - _div(p))
        p = p + sigma * _grad(2 * x_new - x)
        norm = jnp.sqrt(jnp.sum(p**2, -1, keepdims=True))
        p = p / jnp.maximum(1.0, norm / jnp.maximum(w, 1e-30))
        return x_new, jnp.where(w > 0, p, 0.0)

    x, _ = jax.lax.fori_loop(0, iters, body, (x0, p0))
    return x


def tune_weight(
    method: Callable[[jax.Array, Blur, float], jax.Array],
    d_val: jax.Array,
    x_val: jax.Array,
    blur: Blur,
    grid: Sequence[float],
) -> tuple[float, list[tuple[float, float]]]:
    """Pick the weight in ``grid`` with the highest mean PSNR (standard
    convention) of ``method(d_val, blur, weight)`` against ``x_val``.

    Returns ``(best_weight, [(weight, mean_psnr), ...])``; one jitted
    evaluation compiled once and run per weight.
    """
    if len(grid) == 0:
        raise ValueError("grid must not be empty")
    run = jax.jit(lambda d, x, w: jnp.mean(psnr(x, method(d, blur, w))))
    table = [(float(w), float(run(d_val, x_val, jnp.float32(w)))) for w in grid]
    best = max(table, key=lambda t: t[1])[0]
    return best, table
