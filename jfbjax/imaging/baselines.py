r"""Classical deblurring baselines: Wiener/Tikhonov and total variation.

Each method is a pure, jittable function ``method(d, blur, weight)`` of the
degraded images ``d`` (layout (..., H, W, C)), the operator
:class:`~jfbjax.imaging.blur.Blur` (static) and a regularisation weight
``w >= 0`` (which may be traced, so that one compiled function serves a
whole grid of weights, see :func:`tune_weight`). Images are independent: the
result for one image never depends on another in the batch.

* ``wiener``: ``||A x - d||^2 + w ||x||^2`` in closed form with the FFT;
* ``tikhonov_cg``: the same objective by conjugate gradients;
* ``tv_deblur``: ``1/2 ||A x - d||^2 + w TV(x)`` by a primal-dual method.

``wiener`` is exact for the circular operator and the usual FFT
approximation for the zero-padded one; ``tikhonov_cg`` is exact (to its
tolerance) for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jfbjax.imaging._checks import check_image, check_nonnegative, compute_dtype, real_float
from jfbjax.imaging.blur import Blur
from jfbjax.imaging.metrics import psnr

__all__ = [
    "smoothed_tv",
    "smoothed_tv_gradient",
    "tikhonov_cg",
    "tune_weight",
    "tv_deblur",
    "tv_lagged_diffusivity",
    "tv_objective",
    "wiener",
]

# ||grad||_2^2 <= 8 for forward differences in two directions (4 per direction).
_GRAD_NORM_SQ = 8.0


def _input(d, name: str = "d") -> jax.Array:
    d = real_float(d)
    check_image(d, name)
    return d


def _check_iters(iters) -> None:
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")


def wiener(d: jax.Array, blur: Blur, weight: float) -> jax.Array:
    r"""Wiener/Tikhonov deconvolution in closed form with the FFT.

    .. math:: x = F^{-1}\Big[\frac{\bar K \cdot F d}{|K|^2 + w}\Big],

    with ``K = blur.transfer_function(H, W)``. This is the exact minimiser of
    ``||A x - d||^2 + w ||x||^2`` for the circular operator
    (``A = F^{-1} diag(K) F``). For the zero-padded operator it is the usual
    FFT approximation: it treats the image as periodic, which is exact away
    from the border and leaves ringing near it (:func:`tikhonov_cg` is exact
    for both boundaries).

    With ``w = 0`` it is the inverse filter ``F^{-1}[F d / K]``: exact for a
    noise-free circular blur whose ``K`` has no zeros, and unbounded (inf/NaN)
    where ``K`` vanishes. Returns the dtype of ``d`` (computed in at least
    float32).
    """
    d = _input(d)
    check_nonnegative(weight, "weight")
    h, w = d.shape[-3], d.shape[-2]
    k = blur.transfer_function(h, w)
    dtype = compute_dtype(d.dtype)
    df = jnp.fft.rfft2(d.astype(dtype), axes=(-3, -2))
    k = jnp.asarray(k, df.dtype)
    filt = jnp.conj(k) / (jnp.abs(k) ** 2 + jnp.asarray(weight, dtype))
    x = jnp.fft.irfft2(df * filt[..., None], s=(h, w), axes=(-3, -2))
    return x.astype(d.dtype)


def tikhonov_cg(
    d: jax.Array, blur: Blur, weight: float, iters: int = 100, tol: float = 1e-6
) -> jax.Array:
    r"""The Tikhonov minimiser for either boundary by conjugate gradients.

    .. math:: x = \arg\min_x \|A x - d\|^2 + w \|x\|^2
              \iff (A^T A + w I)\, x = A^T d,

    solved per image with ``jax.scipy.sparse.linalg.cg`` from ``x = 0``, for at
    most ``iters`` iterations or until ``||r|| <= tol ||A^T d||``. The
    operator is symmetric positive definite for ``w > 0``; with ``w = 0`` CG
    converges to the least-squares solution of minimum norm. Since the
    eigenvalues of ``A^T A + w I`` lie in ``[w, 1 + w]``, CG needs about
    ``sqrt((1 + w) / w)`` iterations per factor ``e`` of error reduction.
    """
    d = _input(d)
    check_nonnegative(weight, "weight")
    _check_iters(iters)
    check_nonnegative(tol, "tol")
    dtype = compute_dtype(d.dtype)
    lead, img = d.shape[:-3], d.shape[-3:]
    w = jnp.asarray(weight, dtype)

    def solve(di):
        # One A^T A per CG iteration: shifted copies beat matrices (Blur.apply).
        op = lambda x: blur.normal(x, banded=False) + w * x
        x, _ = jax.scipy.sparse.linalg.cg(op, blur.adjoint(di), tol=tol, maxiter=iters)
        return x

    x = jax.vmap(solve)(d.astype(dtype).reshape((-1, *img)))
    return x.reshape((*lead, *img)).astype(d.dtype)


def _grad(x: jax.Array) -> jax.Array:
    """Forward differences, zero on the last row/column (Neumann boundary).

    (..., H, W, C) -> (..., H, W, C, 2) with ``[..., 0]`` the vertical and
    ``[..., 1]`` the horizontal difference.
    """
    gv = jnp.diff(x, axis=-3, append=x[..., -1:, :, :])
    gh = jnp.diff(x, axis=-2, append=x[..., :, -1:, :])
    return jnp.stack([gv, gh], axis=-1)


def _div(p: jax.Array) -> jax.Array:
    """Discrete divergence, the negative adjoint of :func:`_grad`: ``<grad x, p> = -<x, div p>``.

    ``(div p)_i = q_i - q_{i-1}`` per direction, with ``q`` the component whose
    last row (column) is set to zero and ``q_{-1} = 0``.
    """
    qv = p[..., 0].at[..., -1, :, :].set(0)
    qh = p[..., 1].at[..., :, -1, :].set(0)
    return qv - jnp.roll(qv, 1, axis=-3) + qh - jnp.roll(qh, 1, axis=-2)


def smoothed_tv(x: jax.Array, eps: float) -> jax.Array:
    r"""The smoothed (Charbonnier) total variation of each image, shape ``x.shape[:-3]``:

    .. math:: TV_\varepsilon(x) = \sum_{i, c} \sqrt{(D_v x)_{ic}^2 + (D_h x)_{ic}^2 + \epsilon^2},

    with the forward differences of :func:`tv_objective` (per pixel ``i`` and
    channel ``c``). Convex and smooth for ``eps > 0``; it tends to the
    isotropic TV as ``eps -> 0``.
    """
    check_nonnegative(eps, "eps")
    return jnp.sum(jnp.sqrt(jnp.sum(_grad(x) ** 2, axis=-1) + eps**2), axis=(-3, -2, -1))


def smoothed_tv_gradient(x: jax.Array, eps: float) -> jax.Array:
    r"""The gradient of :func:`smoothed_tv` with respect to ``x``,

    .. math:: \nabla TV_\varepsilon(x) = -\operatorname{div}\Big(
              \frac{\nabla x}{\sqrt{|\nabla x|^2 + \varepsilon^2}}\Big),

    in closed form (one gradient and one divergence). Its Jacobian, the
    Hessian of a convex function, is symmetric positive semi-definite with
    norm at most ``8 / eps`` (``||grad||^2 <= 8``). (..., H, W, C) in, same
    shape and dtype out; ``eps > 0``.
    """
    if not float(eps) > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    g = _grad(x)
    return -_div(g / jnp.sqrt(jnp.sum(g**2, axis=-1, keepdims=True) + eps**2))


def tv_lagged_diffusivity(x: jax.Array, v: jax.Array, eps: float) -> jax.Array:
    r"""The lagged-diffusivity operator of the smoothed TV at ``x``, applied to ``v``,

    .. math:: L_x v = -\operatorname{div}\Big(
              \frac{\nabla v}{\sqrt{|\nabla x|^2 + \varepsilon^2}}\Big),

    i.e. :func:`smoothed_tv_gradient` with its weights frozen at ``x``
    (``grad TV_eps(x) = L_x x``; Vogel and Oman's fixed-point iteration for TV).
    Symmetric positive semi-definite, norm at most ``8 / eps``, and it dominates
    the Hessian of ``TV_eps`` at ``x`` (the Hessian removes from each pixel's weight
    the part along ``grad x``). ``x``, ``v``: (..., H, W, C); same shape out.
    """
    if not float(eps) > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    weight = 1.0 / jnp.sqrt(jnp.sum(_grad(x) ** 2, axis=-1, keepdims=True) + eps**2)
    return -_div(weight * _grad(v))


def tv_objective(x: jax.Array, d: jax.Array, blur: Blur, weight: float) -> jax.Array:
    r"""``1/2 ||A x - d||^2 + w TV(x)`` summed over all images.

    ``TV(x) = sum_{pixels, channels} sqrt((D_v x)^2 + (D_h x)^2)``: isotropic
    total variation with forward differences, applied to each channel
    separately.
    """
    x, d = _input(x, "x"), _input(d)
    g = _grad(x)
    tv = jnp.sum(jnp.sqrt(jnp.sum(g**2, axis=-1)))
    return 0.5 * jnp.sum((blur.apply(x) - d) ** 2) + weight * tv


def tv_deblur(
    d: jax.Array,
    blur: Blur,
    weight: float,
    iters: int = 300,
    tol: float = 0.0,
    return_iterations: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Isotropic total-variation deblurring by a primal-dual method.

    .. math:: \min_x\ \tfrac12 \|A x - d\|^2 + w \sum_{i} \|(\nabla x)_i\|_2

    (per pixel and channel, see :func:`tv_objective`), written as
    ``min_x max_p f(x) + <grad x, p> - indicator(|p_i| <= w)`` and solved with
    the Chambolle-Pock iteration in Condat and Vu's form, which takes the
    smooth data term ``f`` through its gradient:

    .. math::
        x^+ &= x - \tau\,\big(A^T (A x - d) - \operatorname{div} p\big), \\
        p^+ &= \Pi_{\{|p_i| \le w\}}\big(p + \sigma \nabla (2 x^+ - x)\big).

    It converges when ``1/tau - sigma ||grad||^2 > L / 2`` with ``L = ||A||^2``
    the Lipschitz constant of ``grad f`` (Condat 2013, Thm. 3.1). The step
    sizes come from the bounds ``||A|| <= sum |h| = 1`` and ``||grad||^2 <= 8``:
    ``sigma = 1 / sqrt(8)``, ``tau = 0.99 / (L/2 + sigma * 8)``. Starts from
    ``x = d``, ``p = 0`` and runs in a ``lax.while_loop`` until every image's
    relative change ``||x^+ - x|| / ||x^+||`` is ``<= tol`` or ``iters``
    iterations are done (``tol = 0``: exactly ``iters``). With ``w = 0`` it is
    gradient descent on the least-squares term (``p`` stays zero).

    Returns:
      ``x`` in the dtype of ``d`` (computed in at least float32), or
      ``(x, iterations)`` with ``return_iterations=True``.
    """
    d = _input(d)
    check_nonnegative(weight, "weight")
    _check_iters(iters)
    check_nonnegative(tol, "tol")
    dtype = compute_dtype(d.dtype)
    lip = blur.norm_bound**2
    sigma = 1.0 / math.sqrt(_GRAD_NORM_SQ)
    tau = 0.99 / (lip / 2 + sigma * _GRAD_NORM_SQ)
    dd = d.astype(dtype)
    w = jnp.asarray(weight, dtype)
    # Dividing by max(1, |p| / w) projects onto the ball of radius w; for w = 0 the
    # ball is {0}, which the tiny floor and the final where() make exact.
    w_safe = jnp.maximum(w, jnp.finfo(dtype).tiny)

    image_axes = (-3, -2, -1)

    def body(carry):
        k, x, p, _ = carry
        # one A and one A^T per iteration: shifted copies beat matrices (Blur.apply)
        x_new = x - tau * (blur.adjoint(blur.apply(x, False) - dd, False) - _div(p))
        p = p + sigma * _grad(2 * x_new - x)
        norm = jnp.sqrt(jnp.sum(p**2, axis=-1, keepdims=True))
        p = p / jnp.maximum(1.0, norm / w_safe)
        change = jnp.sqrt(jnp.sum((x_new - x) ** 2, axis=image_axes)) / (
            jnp.sqrt(jnp.sum(x_new**2, axis=image_axes)) + jnp.finfo(dtype).tiny
        )
        return k + 1, x_new, jnp.where(w > 0, p, jnp.zeros_like(p)), jnp.max(change)

    def cond(carry):
        k, _, _, change = carry
        return (k < iters) & (change > tol)

    p0 = jnp.zeros((*dd.shape, 2), dtype)
    init = (jnp.zeros((), jnp.int32), dd, p0, jnp.asarray(jnp.inf, dtype))
    k, x, _, _ = jax.lax.while_loop(cond, body, init)
    x = x.astype(d.dtype)
    return (x, k) if return_iterations else x


def tune_weight(
    method: Callable[[jax.Array, Blur, float], jax.Array],
    d_val: jax.Array,
    x_val: jax.Array,
    blur: Blur,
    grid: Sequence[float],
) -> tuple[float, list[tuple[float, float]]]:
    """Grid search for the weight whose reconstructions have the best mean PSNR.

    Runs ``method(d_val, blur, weight)`` for every weight of ``grid`` and
    scores it against ``x_val`` by the mean PSNR (standard convention; the
    choice is the same in the paper's, which differs by a constant). The
    evaluation is jitted once with the weight as a traced argument and then
    run per weight. Use ``functools.partial`` to fix other arguments of
    ``method`` (e.g. ``iters``).

    Returns:
      ``(best_weight, table)`` with ``table = [(weight, mean_psnr), ...]`` in
      grid order. A NaN score (a diverged reconstruction) never wins; ties
      go to the first weight in the grid.

    Raises:
      ValueError: for an empty grid, a negative or non-finite weight,
        mismatched shapes, or when every weight gives a NaN score.
    """
    grid = [float(w) for w in grid]
    if not grid:
        raise ValueError("grid must hold at least one weight")
    for w in grid:
        check_nonnegative(w, "every weight in grid")
    d_val, x_val = _input(d_val, "d_val"), _input(x_val, "x_val")
    if d_val.shape != x_val.shape:
        raise ValueError(f"d_val {d_val.shape} and x_val {x_val.shape} must have equal shapes")
    dtype = compute_dtype(d_val.dtype)
    score = jax.jit(lambda d, x, w: jnp.mean(psnr(x, method(d, blur, w))))
    table = [(w, float(score(d_val, x_val, jnp.asarray(w, dtype)))) for w in grid]
    scores = np.array([s for _, s in table])
    if np.all(np.isnan(scores)):
        raise ValueError(f"every weight in the grid gave a NaN PSNR: {table}")
    best = int(np.argmax(np.where(np.isnan(scores), -np.inf, scores)))
    return grid[best], table
