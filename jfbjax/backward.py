r"""Backward modes: how the cotangent of ``z*`` becomes gradients of the args.

Differentiating ``z* = f(z*, theta)`` gives

.. math::

    \frac{\partial \ell}{\partial \theta}
      = u^T \frac{\partial f}{\partial \theta}(z^*, \theta), \qquad
    u = v + \Big(\frac{\partial f}{\partial z}\Big)^T u,

with ``v = dl/dz*`` the incoming cotangent. The modes differ only in how they
produce the adjoint vector ``u`` from ``v`` and the transposed Jacobian-vector
product ``u -> (df/dz)^T u`` at ``z*``:

* :class:`JFB`: ``u = v`` (Jacobian-free backpropagation: the inverse
  ``(I - df/dz)^{-T}`` replaced by the identity). One VJP of ``f``.
* :class:`Neumann`: ``u = sum_{i <= k} ((df/dz)^T)^i v``; ``k=0`` is JFB and
  ``k -> inf`` is IFT when ``f`` is a contraction.
* :class:`IFT`: solve the adjoint fixed point exactly (Picard, Anderson) or the
  linear system ``(I - (df/dz)^T) u = v`` with GMRES.
* :class:`Unrolled`: no adjoint at all; backpropagation through the solver's
  iterations (a reference, with memory growing with the iteration count).

All modes are frozen, hashable configuration objects. The functions here see
``f`` only through a VJP closure that was linearised once at ``z*``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jfbjax import solvers as _solvers
from jfbjax.solvers import Anderson, Picard, SolverInfo, Status

PyTree = Any
VJP = Callable[[PyTree], PyTree]


def _info(iterations, residual, status) -> SolverInfo:
    return SolverInfo(
        jnp.asarray(iterations, jnp.int32),
        jnp.asarray(residual, jnp.float32),
        jnp.asarray(status, jnp.int32),
    )


def _adjoint_residual(vjp_z: VJP, v: PyTree, u: PyTree) -> jax.Array:
    """``||v + J^T u - u|| / (||v + J^T u|| + eps)``: the fixed-point residual
    of the adjoint equation, the same definition as the forward one."""
    gu = jax.tree.map(jnp.add, v, vjp_z(u))
    return _solvers.relative_residual(u, gu)


@dataclasses.dataclass(frozen=True)
class JFB:
    """Jacobian-free backpropagation (Wu Fung et al., AAAI 2022).

    ``u = v``: the gradient is ``v^T df/dtheta`` at ``z*``, one VJP of ``f``
    and no linear solve. A descent direction for the loss when ``f`` is
    contractive in ``z`` and ``df/dtheta`` is well conditioned.
    """

    def adjoint(self, vjp_z: VJP, v: PyTree, stats: bool = False):
        """Returns ``(u, info)`` with ``u = v``.

        Args:
          vjp_z: ``u -> (df/dz)^T u`` at ``z*`` (unused except for ``stats``).
          v: the cotangent ``dl/dz*``.
          stats: also compute the adjoint residual ``||v + J^T v - v|| /
            (||v + J^T v|| + eps)`` (one extra VJP), else ``info.residual`` is NaN.

        Returns:
          ``(v, info)``, ``info`` a :class:`~jfbjax.SolverInfo` with 0
          iterations and status ``MAX_ITER`` (no adjoint solve ran).
        """
        info = _info(0, _adjoint_residual(vjp_z, v, v) if stats else jnp.nan, Status.MAX_ITER)
        return v, info


@dataclasses.dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series: ``u = sum_{i=0}^{k} ((df/dz)^T)^i v``.

    ``Neumann(0)`` equals :class:`JFB`; the error to IFT decays like
    ``||df/dz||^(k+1)``. Costs ``k`` VJPs of ``f`` in ``z`` plus the final
    pullback to the args.

    Args:
      k: number of terms beyond the identity (>= 0).
    """

    k: int = 5

    def __post_init__(self):
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 0:
            raise ValueError(f"Neumann k must be an integer >= 0, got {self.k!r}")

    def adjoint(self, vjp_z: VJP, v: PyTree, stats: bool = False):
        """Returns ``(u, info)`` with ``u = sum_{i=0}^{k} ((df/dz)^T)^i v``.

        Args:
          vjp_z: ``u -> (df/dz)^T u`` at ``z*``.
          v: the cotangent ``dl/dz*``.
          stats: also compute the residual of ``u`` in the adjoint equation
            (one extra VJP), else ``info.residual`` is NaN.

        Returns:
          ``(u, info)`` with ``info.iterations == k`` and status ``MAX_ITER``.
        """

        def body(_, carry):
            term, total = carry
            term = vjp_z(term)
            return term, jax.tree.map(jnp.add, total, term)

        _, u = jax.lax.fori_loop(0, self.k, body, (v, v))
        residual = _adjoint_residual(vjp_z, v, u) if stats else jnp.nan
        return u, _info(self.k, residual, Status.MAX_ITER)


_IFT_SOLVERS = ("anderson", "picard", "gmres")


@dataclasses.dataclass(frozen=True)
class IFT:
    r"""Implicit-function-theorem gradient: solve ``u = v + (df/dz)^T u``.

    Args:
      solver: ``"anderson"`` (default), ``"picard"``, ``"gmres"``, or a
        :class:`~jfbjax.Picard` / :class:`~jfbjax.Anderson` instance used as
        given (its own ``tol`` and ``max_iter`` then apply). Picard and
        Anderson iterate the adjoint fixed point, which contracts at the same
        rate as the forward map; GMRES (``jax.scipy.sparse.linalg.gmres``)
        solves ``(I - (df/dz)^T) u = v`` and also works when ``f`` is not a
        contraction but ``I - df/dz`` is invertible.
      tol: relative tolerance of the adjoint solve (for ``"gmres"``:
        ``||v - (I - J^T) u|| <= tol ||v||``).
      max_iter: maximum iterations (for ``"gmres"``: restart cycles).
      restart: GMRES Krylov subspace size per cycle.
    """

    solver: str | Picard | Anderson = "anderson"
    tol: float = 1e-5
    max_iter: int = 100
    restart: int = 20

    def __post_init__(self):
        if isinstance(self.solver, str):
            if self.solver.lower() not in _IFT_SOLVERS:
                raise ValueError(
                    f"IFT solver must be one of {_IFT_SOLVERS} or a Picard/Anderson "
                    f"instance, got {self.solver!r}"
                )
            _solvers._check_common(self.tol, self.max_iter)
        elif not isinstance(self.solver, Picard | Anderson):
            raise ValueError(f"IFT solver must be a name or a solver instance, got {self.solver!r}")
        if not isinstance(self.restart, int) or self.restart < 1:
            raise ValueError(f"restart must be an integer >= 1, got {self.restart!r}")

    def _fixed_point_solver(self) -> Picard | Anderson:
        if isinstance(self.solver, Picard | Anderson):
            return self.solver
        if self.solver.lower() == "picard":
            return Picard(tol=self.tol, max_iter=self.max_iter)
        return Anderson(tol=self.tol, max_iter=self.max_iter)

    def adjoint(self, vjp_z: VJP, v: PyTree, stats: bool = False):
        """Solves ``u = v + (df/dz)^T u`` from ``u0 = v`` (the JFB answer).

        Args:
          vjp_z: ``u -> (df/dz)^T u`` at ``z*``.
          v: the cotangent ``dl/dz*``.
          stats: for GMRES, also compute the adjoint residual and a status
            (Picard and Anderson always report theirs).

        Returns:
          ``(u, info)``: ``info`` the adjoint solve's
          :class:`~jfbjax.SolverInfo` (GMRES reports ``iterations = -1``).
        """
        if isinstance(self.solver, str) and self.solver.lower() == "gmres":
            matvec = lambda u: jax.tree.map(jnp.subtract, u, vjp_z(u))
            u, _ = jax.scipy.sparse.linalg.gmres(
                matvec,
                v,
                x0=v,
                tol=self.tol,
                atol=0.0,
                restart=self.restart,
                maxiter=self.max_iter,
                solve_method="batched",
            )
            if not stats:
                return u, _info(-1, jnp.nan, Status.MAX_ITER)
            res = _adjoint_residual(vjp_z, v, u)
            ok = jnp.isfinite(res)
            status = jnp.where(ok, jnp.where(res <= self.tol, 0, 1), 2)
            return u, _info(-1, res, status)
        # u = v + J^T u from u0 = v (the JFB answer).
        return _solvers.iterate(
            self._fixed_point_solver(),
            lambda u: jax.tree.map(jnp.add, v, vjp_z(u)),
            v,
        )


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """Backpropagate through the forward solver's iterations.

    The solve runs as a ``lax.scan`` over ``max_iter`` steps (the state freezes
    once it has converged), so memory grows linearly with ``max_iter``. It is
    the reference the implicit modes are measured against; with a converged
    forward solve its gradient approaches the IFT gradient.
    """


Backward = JFB | Neumann | IFT | Unrolled

_BACKWARD_NAMES: dict[str, Callable[[], Backward]] = {
    "jfb": JFB,
    "ift": IFT,
    "neumann": Neumann,
    "unrolled": Unrolled,
}


def as_backward(backward: str | Backward) -> Backward:
    """Accept a backward object or a shorthand: ``"jfb"`` (= ``JFB()``),
    ``"ift"`` (= ``IFT()``: Anderson adjoint, tol 1e-5, 100 iterations),
    ``"neumann"`` (= ``Neumann(5)``), ``"unrolled"`` (= ``Unrolled()``).

    Returns:
      ``backward`` itself if it is a backward object, else the default
      configuration its (case-insensitive) name selects.

    Raises:
      ValueError: anything else.
    """
    if isinstance(backward, JFB | Neumann | IFT | Unrolled):
        return backward
    if isinstance(backward, str) and backward.lower() in _BACKWARD_NAMES:
        return _BACKWARD_NAMES[backward.lower()]()
    raise ValueError(
        f"backward must be jfbjax.JFB(), IFT(...), Neumann(k), Unrolled() or one of "
        f"{sorted(_BACKWARD_NAMES)}, got {backward!r}"
    )
