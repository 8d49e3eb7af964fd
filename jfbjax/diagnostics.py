"""Diagnostics for implicit layers: contraction, JFB-vs-IFT alignment, residual traces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jfbjax.solvers import Solver, as_solver, iterate, tree_norm, tree_vdot

PyTree = Any


def contraction_estimate(
    f: Callable[..., PyTree],
    z: PyTree,
    *args: PyTree,
    iters: int = 20,
    key: jax.Array | None = None,
) -> jax.Array:
    r"""Estimate the spectral norm ``||df/dz||_2`` at ``z`` by power iteration.

    With :math:`J = \partial f / \partial z` at ``z``, runs ``iters`` steps of

    .. math:: w \leftarrow J^T J w / \|J^T J w\|

    with one JVP and one VJP per step (no Jacobian is formed) and returns
    :math:`\|J w\|`, a lower bound on :math:`\|J\|_2` (the local Lipschitz
    constant of ``f`` in ``z``) that converges to it as ``iters`` grows. A
    value below 1 says the map contracts locally, the regime in which the
    solvers converge linearly and JFB is a descent direction.

    Args:
      f: the map ``f(z, *args)``, returning a pytree shaped like ``z``.
      z: the point at which ``f`` is linearised (e.g. the fixed point).
      *args: further arguments of ``f`` (held fixed).
      iters: number of power-iteration steps.
      key: PRNG key of the random start vector (default ``PRNGKey(0)``).

    Returns:
      A float scalar (at least float32).
    """
    fz, vjp = jax.vjp(lambda w: f(w, *args), z)
    # J w as the transpose of the (linear) VJP: reverse mode only, so maps built
    # from custom_vjp functions (e.g. jfbjax.models.conv_same) work too.
    jt = jax.linear_transpose(lambda u: vjp(u)[0], fz)
    jvp = lambda w: jt(w)[0]
    del fz
    if key is None:
        key = jax.random.PRNGKey(0)
    leaves, tree = jax.tree.flatten(z)
    keys = jax.random.split(key, len(leaves))
    w = tree.unflatten(
        [
            jax.random.normal(k, x.shape, jnp.promote_types(x.dtype, jnp.float32)).astype(x.dtype)
            for k, x in zip(keys, leaves, strict=True)
        ]
    )

    def normalise(w):
        n = tree_norm(w)
        return jax.tree.map(lambda x: (x / n).astype(x.dtype), w)

    def body(_, w):
        return normalise(vjp(jvp(w))[0])

    w = jax.lax.fori_loop(0, iters, body, normalise(w))
    return tree_norm(jvp(w))


def gradient_alignment(g1: PyTree, g2: PyTree) -> jax.Array:
    r"""Cosine similarity of two gradient pytrees, all leaves joined into one vector:

    .. math:: \cos(g_1, g_2) = \frac{\langle g_1, g_2 \rangle}{\|g_1\| \, \|g_2\|}
              \in [-1, 1].

    Positive means ``g1`` (e.g. the JFB gradient) is a descent direction for
    the loss whose true gradient is ``g2`` (e.g. the IFT gradient).

    Args:
      g1, g2: pytrees of the same structure and shapes.

    Returns:
      A float scalar (at least float32); NaN if either gradient is zero.
    """
    return tree_vdot(g1, g2) / (tree_norm(g1) * tree_norm(g2))


def residual_trace(
    f: Callable[..., PyTree], z0: PyTree, *args: PyTree, solver: str | Solver = "anderson"
) -> tuple[PyTree, jax.Array]:
    r"""Run ``solver`` and return ``(z, residuals)``, the relative residual

    .. math:: r_k = \frac{\|f(z_k) - z_k\|}{\|f(z_k)\| + 10^{-8}}

    after each of its ``max_iter`` steps (entries after the solve stopped
    repeat the final value). For plots of convergence; not for training (it
    always allocates ``max_iter`` steps). Use ``tol=0`` in ``solver`` to
    trace every step without stopping.

    Args:
      f: the map ``f(z, *args)``.
      z0: the start point (gradients do not flow into it).
      *args: further arguments of ``f``.
      solver: a :class:`~jfbjax.Picard`, :class:`~jfbjax.Anderson` or
        :class:`~jfbjax.Broyden`, or its name.

    Returns:
      ``(z, residuals)``: the final iterate (for a solver with
      ``best_iterate=True`` that did not converge, the lowest-residual one) and
      a ``(max_iter,)`` array of the residuals of the iterates.
    """
    solver = as_solver(solver)
    z, _, residuals = iterate(
        solver, lambda z: f(z, *args), jax.lax.stop_gradient(z0), differentiable=True, trace=True
    )
    return z, residuals
