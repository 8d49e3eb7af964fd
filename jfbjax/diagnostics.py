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
    jvp, vjp = _linear_maps(f, z, args)
    w = _random_like(z, key)

    def body(_, w):
        return _normalise(vjp(jvp(w)))

    w = jax.lax.fori_loop(0, iters, body, _normalise(w))
    return tree_norm(jvp(w))


def spectral_radius_estimate(
    f: Callable[..., PyTree],
    z: PyTree,
    *args: PyTree,
    iters: int = 100,
    key: jax.Array | None = None,
) -> jax.Array:
    r"""Estimate the spectral radius ``rho(df/dz)`` at ``z`` by power iteration on ``J``.

    Runs ``iters`` steps of :math:`w \leftarrow J w / \|J w\|` (one JVP each,
    built by transposing the VJP as :func:`contraction_estimate` does) and
    returns :math:`\|J^2 w\|^{1/2}`, which converges to the largest
    :math:`|\lambda|` of :math:`J` when one real eigenvalue, or a pair
    :math:`\pm\lambda`, dominates (the two-step ratio absorbs the sign), at
    the rate :math:`|\lambda_2 / \lambda_1|^{\text{iters}}`: slowly when the
    spectrum is crowded near its edge, and not at all for a dominant complex
    pair. ``rho`` is the local linear convergence rate of the fixed-point
    iteration, and ``rho <= ||J||_2`` (:func:`contraction_estimate`); they
    are equal for a normal ``J``. A map with ``rho < 1`` contracts in some
    norm (a norm adapted to ``J``) even when ``||J||_2 >= 1``.

    Args: as :func:`contraction_estimate`.

    Returns:
      A float scalar (at least float32).
    """
    jvp, _ = _linear_maps(f, z, args)
    w = jax.lax.fori_loop(
        0, iters, lambda _, w: _normalise(jvp(w)), _normalise(_random_like(z, key))
    )
    return jnp.sqrt(tree_norm(jvp(jvp(w))))


def _linear_maps(f, z, args):
    """``(w -> J w, u -> J^T u)`` for ``J = df/dz`` at ``z``, by reverse mode only (the
    JVP is the transpose of the linear VJP), so maps built from custom_vjp functions
    (e.g. jfbjax.models.conv_same) work too."""
    fz, vjp = jax.vjp(lambda w: f(w, *args), z)
    jt = jax.linear_transpose(lambda u: vjp(u)[0], fz)
    return (lambda w: jt(w)[0]), (lambda u: vjp(u)[0])


def _random_like(z: PyTree, key: jax.Array | None) -> PyTree:
    """A standard normal pytree shaped like ``z`` (``key`` default ``PRNGKey(0)``)."""
    if key is None:
        key = jax.random.PRNGKey(0)
    leaves, tree = jax.tree.flatten(z)
    keys = jax.random.split(key, len(leaves))
    return tree.unflatten(
        [
            jax.random.normal(k, x.shape, jnp.promote_types(x.dtype, jnp.float32)).astype(x.dtype)
            for k, x in zip(keys, leaves, strict=True)
        ]
    )


def _normalise(w: PyTree) -> PyTree:
    n = tree_norm(w)
    return jax.tree.map(lambda x: (x / n).astype(x.dtype), w)


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
