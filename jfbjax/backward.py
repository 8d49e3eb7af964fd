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
* :class:`Phantom`: the phantom gradient (Geng et al., 2021) of ``k`` damped
  steps ``x <- (1 - lam) x + lam f(x)`` from ``z*``, with ``f`` linearised at
  ``z*``; ``Phantom(1, 1.0)`` is JFB and ``k -> inf`` is IFT.
* :class:`IFT`: solve the adjoint fixed point exactly (Picard, Anderson,
  Broyden) or the linear system ``(I - (df/dz)^T) u = v`` with GMRES; with
  ``throw=True`` a failed adjoint solve raises, with ``fallback=`` it is
  replaced by another mode's adjoint.
* :class:`Unrolled`: no adjoint at all; backpropagation through the solver's
  iterations (a reference, with memory growing with the iteration count).

All modes are frozen, hashable configuration objects. The functions here see
``f`` only through a VJP closure that was linearised once at ``z*``.

How the backward went is reported without a host callback through a
*probe*: a zero array passed to :func:`~jfbjax.fixed_point` (``probe=``) and
differentiated like a parameter. Its "gradient" is not a derivative: the
backward pass writes the adjoint solve's iterations, residual and status
into it (:func:`backward_probe`, :func:`backward_info`, :class:`BackwardInfo`).
"""

from __future__ import annotations

import abc
import dataclasses
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jfbjax import solvers as _solvers
from jfbjax.solvers import AbstractSolver, Anderson, Broyden, Picard, SolverInfo, Status

PyTree = Any
VJP = Callable[[PyTree], PyTree]


class AbstractBackward(abc.ABC):
    """What :func:`~jfbjax.fixed_point` needs from a backward mode; subclass it to add one.

    A backward mode is a frozen, hashable configuration (a
    ``dataclass(frozen=True)``) with one method, :meth:`adjoint`, which maps
    the cotangent ``v = dl/dz*`` to the adjoint vector ``u`` whose pullback
    ``u^T df/dargs`` at ``z*`` is the gradient. It sees ``f`` only through
    ``vjp_z: w -> (df/dz)^T w``, linearised once at ``z*``, and must be linear
    in ``v`` and built from ``vjp_z``, tree arithmetic and ``lax`` loops: with
    ``fixed_point(forward_mode=True)`` the same method runs with ``df/dz`` in
    place of its transpose to produce tangents (a fixed number of steps, a
    ``fori_loop`` with static bounds, transposes; a ``while_loop`` does not,
    which is why :class:`IFT` goes through ``lax.custom_linear_solve`` there).

    Such a mode works everywhere a built-in one does: ``fixed_point``,
    ``IFT(fallback=...)``, the DE-GRAD model, and (once registered with
    :func:`jfbjax.builders.register_backward`) a config's ``backward.name``.
    How ``fixed_point`` makes the solve differentiable is the mode's choice
    too, through :meth:`differentiate`: by default the implicit route (a
    ``custom_vjp`` whose backward pass calls :meth:`adjoint` at ``z*``);
    :class:`Unrolled` picks the other route, reverse mode through the
    solver's iterations, and forms no adjoint.
    """

    def differentiate(self, routes):
        """Runs the solve by one of ``fixed_point``'s two differentiable routes
        and returns its ``(z, aux, info)``: ``routes.implicit(self)`` (the
        default: ``z*`` from a ``custom_vjp`` whose backward is :meth:`adjoint`)
        or ``routes.unrolled()`` (the solver's iterations, differentiated by
        JAX). ``routes`` is a :class:`jfbjax.SolveRoutes`."""
        return routes.implicit(self)

    @abc.abstractmethod
    def adjoint(self, vjp_z: VJP, v: PyTree, stats: bool = False) -> tuple[PyTree, SolverInfo]:
        """``(u, info)``: the adjoint vector and a :class:`~jfbjax.SolverInfo`
        (iterations, residual of ``u`` in ``u = v + (df/dz)^T u`` when
        ``stats`` is True, else NaN allowed, and a status code)."""


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
class JFB(AbstractBackward):
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
class Neumann(AbstractBackward):
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


@dataclasses.dataclass(frozen=True)
class Phantom(AbstractBackward):
    r"""Phantom gradient (Geng et al., NeurIPS 2021): ``k`` damped unrolled steps from ``z*``.

    The phantom gradient backpropagates through ``k`` damped Picard steps
    started at the fixed point, ``x_0 = z*`` (no gradient through ``x_0``),

    .. math:: x_{i+1} = (1 - \lambda) x_i + \lambda f(x_i, \theta), \qquad i < k,

    and uses ``dx_k / dtheta`` in place of ``dz* / dtheta``. With ``f``
    linearised at ``z*``, ``J = df/dz(z*)`` and ``M = (1 - lam) I + lam J``,
    each step gives ``dx_{i+1} = M dx_i + lam df/dtheta`` with ``dx_0 = 0``, so
    ``dx_k = lam sum_{i<k} M^i df/dtheta`` and the adjoint is

    .. math:: u = \lambda \sum_{i=0}^{k-1} (M^T)^i v, \qquad
              M^T w = (1 - \lambda) w + \lambda J^T w,

    computed by the recursion ``w_0 = v``, ``w_{i+1} = M^T w_i``,
    ``u = lam (w_0 + ... + w_{k-1})``: ``k - 1`` VJPs of ``f`` in ``z`` plus the
    final pullback to the args. ``Phantom(1, 1.0)`` is exactly :class:`JFB`
    (``u = v``), ``Phantom(k, 1.0)`` equals ``Neumann(k - 1)``, and for a
    contraction (``||J|| < 1``, so the spectral radius of ``M`` is below 1 for
    every ``lam`` in (0, 1]) ``u -> lam (I - M^T)^{-1} v = (I - J^T)^{-1} v``,
    the IFT adjoint, as ``k -> inf``: the error is
    ``(M^T)^k (I - J^T)^{-1} v``, of norm at most ``(1 - lam (1 - ||J||))^k``
    times that of the IFT adjoint, so a smaller ``lam`` needs more steps (it
    helps when ``f`` is not a contraction but ``M`` is).

    The linearisation at ``z*`` is what makes this cheap (one linearisation
    reused for every step, as in the other modes), and it is also the one
    approximation: the phantom gradient of torchdeq re-evaluates ``f`` at every
    unrolled iterate ``x_i``. The two are equal when ``z*`` is an exact fixed
    point (then every ``x_i`` equals ``z*``); for an inexact ``z*`` they differ
    by terms of the order of the forward residual times the curvature of ``f``.

    Args:
      k: number of unrolled steps (>= 1).
      lam: damping ``lambda`` of the unrolled steps, in (0, 1].
    """

    k: int = 1
    lam: float = 1.0

    def __post_init__(self):
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"Phantom k must be an integer >= 1, got {self.k!r}")
        if (
            not isinstance(self.lam, numbers.Real)
            or isinstance(self.lam, bool)
            or not 0.0 < self.lam <= 1.0
        ):
            raise ValueError(f"Phantom lam must be a number in (0, 1], got {self.lam!r}")

    def adjoint(self, vjp_z: VJP, v: PyTree, stats: bool = False):
        """Returns ``(u, info)`` with ``u = lam sum_{i=0}^{k-1} (M^T)^i v``,
        ``M^T w = (1 - lam) w + lam (df/dz)^T w``.

        Args:
          vjp_z: ``u -> (df/dz)^T u`` at ``z*``.
          v: the cotangent ``dl/dz*``.
          stats: also compute the residual of ``u`` in the adjoint equation
            ``u = v + (df/dz)^T u`` (one extra VJP), else ``info.residual`` is NaN.

        Returns:
          ``(u, info)`` with ``info.iterations == k - 1`` (the VJPs of ``f`` in
          ``z``; 0 for ``Phantom(1)``, like :class:`JFB`) and status ``MAX_ITER``.
        """
        lam = float(self.lam)

        def step(w):  # M^T w
            jw = vjp_z(w)
            if lam == 1.0:
                return jw
            return jax.tree.map(lambda a, b: ((1 - lam) * a + lam * b).astype(a.dtype), w, jw)

        def body(_, carry):
            term, total = carry
            term = step(term)
            return term, jax.tree.map(jnp.add, total, term)

        _, total = jax.lax.fori_loop(0, self.k - 1, body, (v, v))
        u = total if lam == 1.0 else jax.tree.map(lambda x: (lam * x).astype(x.dtype), total)
        residual = _adjoint_residual(vjp_z, v, u) if stats else jnp.nan
        return u, _info(self.k - 1, residual, Status.MAX_ITER)


_IFT_SOLVERS = ("anderson", "picard", "broyden", "gmres")
#: ``solve_method`` values of ``jax.scipy.sparse.linalg.gmres`` that :class:`IFT` accepts.
GMRES_METHODS = ("batched", "incremental")


@dataclasses.dataclass(frozen=True)
class IFT(AbstractBackward):
    r"""Implicit-function-theorem gradient: solve ``u = v + (df/dz)^T u``.

    The adjoint solve can fail (``max_iter`` too small for a map that
    contracts slowly, or a map that does not contract at all), and its
    truncated ``u`` then gives a gradient that is silently wrong. Three ways
    to see or handle that, per sample under ``vmap``:

    * report: the adjoint's :class:`~jfbjax.SolverInfo` reaches the caller
      through ``fixed_point(..., probe=...)`` (no host callback, see
      :func:`backward_probe`) or ``backward_callback``;
    * ``throw=True``: a solve that ends with status ``MAX_ITER`` or
      ``NONFINITE`` raises :class:`~jfbjax.FixedPointError` naming its
      residual and iterations (through a host callback, so also under
      ``jit``, like the forward ``throw``);
    * ``fallback=mode``: where the solve does not converge, ``u`` is the
      adjoint of ``mode`` instead (e.g. ``JFB()`` or ``Neumann(5)``, a
      bounded, well-defined approximation), and the reported status is
      ``FALLBACK`` (iterations and residual stay those of the failed solve).

    Args:
      solver: ``"anderson"`` (default), ``"picard"``, ``"broyden"``,
        ``"gmres"``, or a :class:`~jfbjax.Picard` / :class:`~jfbjax.Anderson`
        / :class:`~jfbjax.Broyden` instance used as given (its own ``tol`` and
        ``max_iter`` then apply). Picard, Anderson and Broyden iterate the
        adjoint fixed point, which contracts at the same rate as the forward
        map; GMRES (``jax.scipy.sparse.linalg.gmres``) solves
        ``(I - (df/dz)^T) u = v`` and also works when ``f`` is not a
        contraction but ``I - df/dz`` is invertible.
      tol: relative tolerance of the adjoint solve (for ``"gmres"``:
        ``||v - (I - J^T) u|| <= tol ||v||``; its reported status compares the
        fixed-point residual of ``u`` with ``tol``).
      max_iter: maximum iterations (for ``"gmres"``: restart cycles).
      restart: GMRES Krylov subspace size per cycle.
      gmres_method: ``solve_method`` of ``jax.scipy.sparse.linalg.gmres``:
        ``"batched"`` (default; the small least-squares problem of each
        cycle by its normal equations, fast, but in float32 they lose
        accuracy and can give NaN for a large ``restart``) or
        ``"incremental"`` (Givens rotations as the basis grows; stable).
      throw: raise when the adjoint solve does not converge (see above).
      fallback: ``None`` (default) or the backward mode whose adjoint replaces
        a failed solve's: :class:`JFB`, :class:`Neumann`, :class:`Phantom` or
        another :class:`IFT` (e.g. GMRES behind Anderson). Exclusive with
        ``throw``.
    """

    solver: str | AbstractSolver = "anderson"
    tol: float = 1e-5
    max_iter: int = 100
    restart: int = 20
    gmres_method: str = "batched"
    throw: bool = False
    fallback: AbstractBackward | None = None

    def __post_init__(self):
        if isinstance(self.solver, str):
            if self.solver.lower() not in _IFT_SOLVERS:
                raise ValueError(
                    f"IFT solver must be one of {_IFT_SOLVERS} or a Picard/Anderson/Broyden "
                    f"instance, got {self.solver!r}"
                )
            _solvers._check_common(self.tol, self.max_iter)
        elif not isinstance(self.solver, AbstractSolver):
            raise ValueError(f"IFT solver must be a name or a solver instance, got {self.solver!r}")
        if self.gmres_method not in GMRES_METHODS:
            raise ValueError(
                f"gmres_method must be one of {GMRES_METHODS}, got {self.gmres_method!r}"
            )
        if not isinstance(self.restart, int) or self.restart < 1:
            raise ValueError(f"restart must be an integer >= 1, got {self.restart!r}")
        _solvers._check_flag("IFT throw", self.throw)
        if self.fallback is not None and (
            not isinstance(self.fallback, AbstractBackward) or isinstance(self.fallback, Unrolled)
        ):
            raise ValueError(
                "IFT fallback must be None or a backward mode with an adjoint: JFB(), "
                f"Neumann(k), Phantom(k, lam), IFT(...) or another jfbjax.AbstractBackward, "
                f"got {self.fallback!r}"
            )
        if self.throw and self.fallback is not None:
            raise ValueError(
                "IFT: throw=True and fallback are exclusive (a failed adjoint solve either "
                "raises or falls back)"
            )

    @property
    def adjoint_tol(self) -> float:
        """The tolerance the adjoint solve is held to: ``tol``, or the given solver's."""
        if isinstance(self.solver, str):
            return self.tol
        return self.solver.tol

    def _fixed_point_solver(self) -> AbstractSolver:
        if isinstance(self.solver, AbstractSolver):
            return self.solver
        if self.solver.lower() == "picard":
            return Picard(tol=self.tol, max_iter=self.max_iter)
        if self.solver.lower() == "broyden":
            return Broyden(tol=self.tol, max_iter=self.max_iter)
        return Anderson(tol=self.tol, max_iter=self.max_iter)

    def adjoint(self, vjp_z: VJP, v: PyTree, stats: bool = False):
        """Solves ``u = v + (df/dz)^T u`` from ``u0 = v`` (the JFB answer).

        With a ``fallback``, a solve that ends with any status but
        ``CONVERGED`` returns the fallback's adjoint of ``v`` instead (chosen
        by ``lax.cond``, per sample under ``vmap``) and status ``FALLBACK``.

        Args:
          vjp_z: ``u -> (df/dz)^T u`` at ``z*``.
          v: the cotangent ``dl/dz*``.
          stats: for GMRES, also compute the adjoint residual and a status
            (Picard, Anderson and Broyden always report theirs; GMRES computes
            them anyway with ``throw`` or a ``fallback``).

        Returns:
          ``(u, info)``: ``info`` the adjoint solve's
          :class:`~jfbjax.SolverInfo` (GMRES reports ``iterations = -1``).
        """
        u, info = self._solve(vjp_z, v, stats or self.throw or self.fallback is not None)
        if self.fallback is None:
            return u, info
        ok = info.status == int(Status.CONVERGED)
        u = jax.lax.cond(ok, lambda: u, lambda: self.fallback.adjoint(vjp_z, v)[0])
        status = jnp.where(ok, info.status, int(Status.FALLBACK)).astype(info.status.dtype)
        return u, info._replace(status=status)

    def _solve(self, vjp_z: VJP, v: PyTree, stats: bool):
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
                solve_method=self.gmres_method,
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
class Unrolled(AbstractBackward):
    """Backpropagate through the forward solver's iterations.

    The solve runs as a ``lax.scan`` over ``max_iter`` steps (the state freezes
    once it has converged), so memory grows linearly with ``max_iter``. It is
    the reference the implicit modes are measured against; with a converged
    forward solve its gradient approaches the IFT gradient. It takes the
    unrolled route of :meth:`AbstractBackward.differentiate` and forms no
    adjoint, so it cannot be an ``IFT`` fallback.
    """

    def differentiate(self, routes):
        """The unrolled route: ``routes.unrolled()``, JAX's reverse mode through the iterations."""
        return routes.unrolled()

    def adjoint(self, vjp_z, v, stats=False):
        """Not defined: raises ``TypeError`` (this mode forms no adjoint at ``z*``)."""
        raise TypeError(
            "Unrolled forms no adjoint at z*: it differentiates through the solver's iterations "
            "(fixed_point takes its unrolled route), so it cannot serve as an adjoint"
        )


Backward = AbstractBackward


# --------------------------------------------------------------------------
# The probe: backward statistics through the gradient, without a host callback.

#: Length of the last axis of a probe: iterations, residual, and one count per status code.
PROBE_SIZE = 2 + len(Status)


class BackwardInfo(NamedTuple):
    """What the backward passes that wrote into a probe did (see :func:`backward_info`).

    Every field has the probe's batch shape (its shape without the last
    axis). A probe that one backward pass wrote into (one call of
    :func:`~jfbjax.fixed_point`, one sample) holds that pass's numbers:
    ``solves == 1``, ``iterations`` and ``residual`` those of its adjoint
    solve and exactly one of the four status counts 1. A probe shared by
    several passes (several samples of a ``vmap`` given one probe, several
    calls, several gradient evaluations) holds their sums.

    Attributes:
      solves: number of backward passes that wrote into the probe (0: none
        ran, e.g. the loss does not depend on ``z*``).
      iterations: adjoint iterations, summed: IFT's solver updates (-1 per
        GMRES solve, which does not report them), ``k`` for ``Neumann(k)``,
        ``k - 1`` for ``Phantom(k)``, 0 for JFB, the forward's updates for
        ``Unrolled`` (which backpropagates through them).
      residual: relative residual of the adjoint in ``u = v + (df/dz)^T u``,
        ``||v + J^T u - u|| / (||v + J^T u|| + 1e-8)``, summed (divide by
        ``solves`` for the mean). For ``FALLBACK`` it is the failed IFT
        solve's, for ``Unrolled`` NaN (no adjoint is formed).
      converged: passes with status ``CONVERGED`` (the IFT adjoint reached its tol).
      max_iter: passes with status ``MAX_ITER``: an IFT solve that ran out of
        iterations without a fallback, and by convention every JFB, Neumann,
        Phantom and Unrolled pass (they run no solve to convergence).
      nonfinite: passes with status ``NONFINITE`` (an IFT adjoint that held NaN or inf).
      fallback: passes with status ``FALLBACK`` (the IFT adjoint failed and the
        gradient used the fallback mode's adjoint).
    """

    solves: jax.Array
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    max_iter: jax.Array
    nonfinite: jax.Array
    fallback: jax.Array

    @property
    def status(self) -> jax.Array:
        """The status of the pass for a one-pass probe; for a shared probe the
        most severe present, ``NONFINITE`` > ``MAX_ITER`` > ``FALLBACK`` >
        ``CONVERGED``; -1 where no pass wrote into the probe."""
        return jnp.select(
            [self.nonfinite > 0, self.max_iter > 0, self.fallback > 0, self.converged > 0],
            [int(Status.NONFINITE), int(Status.MAX_ITER), int(Status.FALLBACK), 0],
            -1,
        ).astype(jnp.int32)


def backward_probe(shape: tuple[int, ...] = (), dtype=jnp.float32) -> jax.Array:
    """A probe for :func:`~jfbjax.fixed_point`: zeros of shape ``(*shape, PROBE_SIZE)``.

    Pass it as ``fixed_point(..., probe=p)`` and differentiate the loss with
    respect to it as well (it must be an argument of the function given to
    ``jax.grad``); :func:`backward_info` turns the gradient into a
    :class:`BackwardInfo`. The backward pass writes its statistics into that
    gradient instead of a derivative (the value of the probe is never used,
    so the loss and the other gradients do not change), which needs no host
    callback and works under ``jit``, ``vmap``, ``lax.scan`` and on any
    device. For per-sample statistics make one probe per sample,
    ``backward_probe((batch,))``, and ``vmap`` over it with the inputs; a
    probe shared by several samples or calls gets their sums::

        def loss(params, probe):
            z, info = jfbjax.fixed_point(f, z0, params, x, backward=IFT(), probe=probe)
            return jnp.sum(z**2)

        grads, probe_grad = jax.grad(loss, argnums=(0, 1))(params, backward_probe())
        binfo = backward_info(probe_grad)  # binfo.status, binfo.iterations, ...

    Args:
      shape: batch shape: one probe per entry.
      dtype: a floating dtype (float32 counts exactly up to 2**24).

    Returns:
      A zero array of shape ``(*shape, PROBE_SIZE)``.
    """
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"backward_probe dtype must be floating, got {dtype!r}")
    return jnp.zeros((*tuple(shape), PROBE_SIZE), dtype)


def backward_info(probe_grad: jax.Array) -> BackwardInfo:
    """Decode the gradient of the loss with respect to a probe (see :func:`backward_probe`).

    Args:
      probe_grad: an array of shape ``(..., PROBE_SIZE)``, the gradient of a
        probe passed to :func:`~jfbjax.fixed_point` as ``probe=``.

    Returns:
      A :class:`BackwardInfo` whose fields have shape ``probe_grad.shape[:-1]``
      (integer counts, a float32 residual sum).

    Raises:
      ValueError: the last axis is not of length ``PROBE_SIZE``.
    """
    g = jnp.asarray(probe_grad)
    if g.ndim < 1 or g.shape[-1] != PROBE_SIZE:
        raise ValueError(
            f"backward_info expects the gradient of a probe, shape (..., {PROBE_SIZE}), "
            f"got shape {g.shape}"
        )
    count = lambda x: jnp.round(x).astype(jnp.int32)
    counts = count(g[..., 2:])
    return BackwardInfo(
        solves=jnp.sum(counts, axis=-1, dtype=jnp.int32),
        iterations=count(g[..., 0]),
        residual=g[..., 1].astype(jnp.float32),
        converged=counts[..., int(Status.CONVERGED)],
        max_iter=counts[..., int(Status.MAX_ITER)],
        nonfinite=counts[..., int(Status.NONFINITE)],
        fallback=counts[..., int(Status.FALLBACK)],
    )


def _probe_cotangent(info: SolverInfo, probe: jax.Array) -> jax.Array:
    """The "gradient" a backward pass writes into ``probe``: its ``info``,
    encoded as ``[iterations, residual, one_hot(status)]`` in the probe's dtype."""
    hot = jax.nn.one_hot(info.status, len(Status), dtype=jnp.float32)
    row = jnp.concatenate(
        [jnp.stack([info.iterations.astype(jnp.float32), info.residual.astype(jnp.float32)]), hot]
    )
    return jax.lax.stop_gradient(row).astype(probe.dtype)


_BACKWARD_NAMES: dict[str, Callable[[], Backward]] = {
    "jfb": JFB,
    "ift": IFT,
    "neumann": Neumann,
    "phantom": Phantom,
    "unrolled": Unrolled,
}


def as_backward(backward: str | Backward) -> Backward:
    """Accept a backward object or a shorthand: ``"jfb"`` (= ``JFB()``),
    ``"ift"`` (= ``IFT()``: Anderson adjoint, tol 1e-5, 100 iterations),
    ``"neumann"`` (= ``Neumann(5)``), ``"phantom"`` (= ``Phantom(1, 1.0)``, the
    same gradient as JFB), ``"unrolled"`` (= ``Unrolled()``).

    Returns:
      ``backward`` itself if it is a backward object (an
      :class:`AbstractBackward`, built-in, :class:`Unrolled` or a user's), else the default
      configuration its (case-insensitive) name selects.

    Raises:
      ValueError: anything else.
    """
    if isinstance(backward, AbstractBackward):
        return backward
    if isinstance(backward, str) and backward.lower() in _BACKWARD_NAMES:
        return _BACKWARD_NAMES[backward.lower()]()
    raise ValueError(
        "backward must be jfbjax.JFB(), IFT(...), Neumann(k), Phantom(k, lam), Unrolled(), "
        f"another jfbjax.AbstractBackward, or one of {sorted(_BACKWARD_NAMES)}, got {backward!r}"
    )
