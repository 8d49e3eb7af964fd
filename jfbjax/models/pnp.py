r"""Plug-and-play deblurring: proximal gradient with a learned denoiser.

Plug-and-play (PnP) replaces the proximal operator of a regulariser by a
denoiser ``D`` inside a splitting method. Here it is proximal gradient
descent (PnP-PGD) on the data fit ``||A x - d||^2 / 2``:

.. math:: x_{k+1} = D\big(x_k - \tau A^T (A x_k - d)\big),

from ``x_0 = A^T d``, run per image to a fixed point with a
:mod:`jfbjax` solver (no gradients flow through it: PnP is not trained
end to end; only its denoiser is trained, on denoising). When ``D`` is the
proximal map of ``\tau g`` for a convex ``g`` and ``tau <= 1 / ||A||^2``,
the fixed points are the minimisers of ``||A x - d||^2 / 2 + g(x)``; for
``D(x) = x / (1 + \tau\lambda)`` this is the Tikhonov solution
``(A^T A + \lambda I) x = A^T d``, which the tests use.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

import jfbjax
from jfbjax.imaging.blur import Blur

__all__ = ["pnp_pgd"]


def pnp_pgd(
    d: jax.Array,
    blur: Blur,
    denoiser: Callable[[jax.Array], jax.Array],
    step: float,
    solver: jfbjax.Picard | jfbjax.Anderson | str = "picard",
) -> tuple[jax.Array, jfbjax.SolverInfo]:
    r"""Plug-and-play proximal gradient: the fixed point of ``x = D(x - step A^T(A x - d))``.

    Args:
      d: degraded images, shape (N, H, W, C).
      blur: the forward operator ``A``.
      denoiser: ``D``, a function of a batch (N, H, W, C) returning a batch of
        the same shape (e.g. a trained :class:`~jfbjax.models.FeedForward`
        with the identity blur, ``lambda x: model(x)[0]``).
      step: the gradient step ``tau > 0`` (``tau < 2 / ||A||^2`` for the
        gradient step to be non-expansive; ``||A|| <= 1`` for a normalised
        blur). May be traced (one compilation for a grid of steps).
      solver: the fixed-point solver (its ``tol`` and ``max_iter`` apply to
        each image separately); default ``jfbjax.Picard()``.

    Returns:
      ``(x, info)``: the restored images (shape and dtype of ``d``) and a
      :class:`jfbjax.SolverInfo` with fields of shape (N,).

    Raises:
      ValueError: ``d`` is not a batch of images, or ``step`` is not positive
        (when it is a concrete number).
    """
    if jnp.ndim(d) != 4:
        raise ValueError(
            f"pnp_pgd expects a batch of images (N, H, W, C), got shape {jnp.shape(d)}"
        )
    if isinstance(step, int | float) and not step > 0:
        raise ValueError(f"step must be > 0, got {step!r}")
    solver = jfbjax.as_solver(solver)
    step = jnp.asarray(step, d.dtype)

    def T(x, di):
        z = x - step * blur.adjoint(blur.apply(x) - di)
        return denoiser(z[None])[0].astype(x.dtype)

    def solve(x0, di):
        return jfbjax.fixed_point(T, x0, di, solver=solver)

    return jax.vmap(solve)(blur.adjoint(d), d)
