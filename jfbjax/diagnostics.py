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

    Runs ``iters`` steps of ``w <- J^T J w / ||J^T J w||`` with one JVP and
    one VJP per step (no Jacobian is formed) and returns
    ``sqrt(w^T J^T J w)``, a lower bound on the Lipschitz constant of ``f``
    in ``z`` near ``z`` that converges to ``||J||_2``. A value below 1 says the
    map contracts locally, the regime in which the solvers converge linearly
    and JFB is a descent direction.
    """
    fz, vjp = jax.vjp(lambda w: f(w, *args), z)
    del fz
    jvp = lambda w: jax.jvp(lambda y: f(y, *args), (z,), (w,))[1]
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
    """Cosine similarity ``<g1, g2> / (||g1|| ||g2||)`` of two gradient pytrees.

    Positive means ``g1`` (e.g. the JFB gradient) is a descent direction for
    the loss whose true gradient is ``g2`` (e.g. the IFT gradient).
    """
    return tree_vdot(g1, g2) / (tree_norm(g1) * tree_norm(g2))


def residual_trace(
    f: Callable[..., PyTree], z0: PyTree, *args: PyTree, solver: str | Solver = "anderson"
) -> tuple[PyTree, jax.Array]:
    """Run ``solver`` and return ``(z, residuals)``, the relative residual
    ``||f(z_k) - z_k|| / (||f(z_k)|| + 1e-8)`` after each of its ``max_iter``
    steps (entries after the solve stopped repeat the final value). For plots
    of convergence; not for training (it always allocates ``max_iter`` steps).
    """
    solver = as_solver(solver)
    z, _, residuals = iterate(
        solver, lambda z: f(z, *args), jax.lax.stop_gradient(z0), differentiable=True, trace=True
    )
    return z, residuals
