"""Forward fixed-point solvers: Picard, Anderson and Broyden, run by one driver loop.

A solver is a small frozen (hashable) configuration object. It knows how to
start its own state from the first evaluation ``f(z0)`` and how to propose the
next iterate from that state; the driver (:func:`iterate`) owns everything
else: evaluating ``f``, the convergence test, the iteration count, the status
code and the choice between a ``lax.while_loop`` (constant memory, not
reverse-differentiable) and a ``lax.scan`` (reverse-differentiable, used for
unrolled backpropagation and for residual traces).

All norms are joint 2-norms over every leaf of the state pytree, accumulated
in at least float32 whatever the dtype of the iterates. For per-sample
statistics on a batch, ``jax.vmap`` the solve: every sample then carries its
own Anderson history (or Broyden memory), residual, iteration count and
status, and a sample that has stopped stops changing.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

#: Added to the denominator of the relative residual.
RESIDUAL_EPS = 1e-8


class AbstractSolver(abc.ABC):
    """What :func:`iterate` needs from a forward solver; subclass it to add one.

    A solver is a frozen, hashable configuration (a ``dataclass(frozen=True)``:
    :func:`~jfbjax.fixed_point` passes it as a static argument) with

    * ``tol`` (float >= 0) and ``max_iter`` (int >= 1): the driver stops when
      the relative residual ``||f(z) - z|| / (||f(z)|| + eps)`` is ``<= tol``
      or after ``max_iter`` updates (``tol = 0``: exactly ``max_iter``);
    * ``best_iterate`` (bool, default False): return the lowest-residual
      iterate of a solve that does not converge;

    and three pure methods (arrays in, arrays out; they run inside
    ``lax.while_loop`` / ``lax.scan`` and under ``vmap``):

    * ``init(z0, fz0) -> state``: the state after the first evaluation;
    * ``propose(state, z, fz) -> z_next``: the next iterate;
    * ``record(state, z_next, fz_next) -> state``: the state after the driver
      evaluated ``f`` at the proposed point.

    The driver owns the evaluations of ``f``, the convergence test, the counts
    and the status. Such a solver works everywhere a built-in one does:
    :func:`~jfbjax.fixed_point`, ``IFT(solver=...)``'s adjoint solve, and (once
    registered with :func:`jfbjax.builders.register_solver`) a config's
    ``solver.name``.
    """

    tol: float
    max_iter: int
    best_iterate: bool = False

    @abc.abstractmethod
    def init(self, z: PyTree, fz: PyTree) -> Any:
        """The solver state after the first evaluation ``fz = f(z0)``."""

    @abc.abstractmethod
    def propose(self, state: Any, z: PyTree, fz: PyTree) -> PyTree:
        """The next iterate, from the state and the last evaluation ``fz = f(z)``."""

    @abc.abstractmethod
    def record(self, state: Any, z: PyTree, fz: PyTree) -> Any:
        """The state after the driver evaluated ``fz = f(z)`` at the proposed ``z``."""


class Status(enum.IntEnum):
    """Why a solve stopped. ``SolverInfo.status`` holds these integer codes.

    ``CONVERGED`` (0): the relative residual ``||f(z) - z|| / (||f(z)|| + 1e-8)``
    reached ``tol``; ``MAX_ITER`` (1): ``max_iter`` updates ran without reaching
    it; ``NONFINITE`` (2): an iterate or ``f`` of it held NaN or inf (or was so
    large that its norm overflowed);
    ``FALLBACK`` (3), reported by backward passes only: the adjoint solve of
    an :class:`~jfbjax.IFT` with a ``fallback`` did not converge and the
    gradient used the fallback's adjoint instead (the iterations and residual
    reported with it are those of the failed solve). The codes are plain
    integers inside jitted code; :func:`status_name` turns one into its name.
    """

    CONVERGED = 0  #: relative residual <= tol
    MAX_ITER = 1  #: ran max_iter iterations without reaching tol
    NONFINITE = 2  #: an iterate or f(iterate) contained NaN or inf
    FALLBACK = 3  #: backward only: the IFT adjoint failed, the fallback's adjoint was used


CONVERGED = Status.CONVERGED
MAX_ITER = Status.MAX_ITER
NONFINITE = Status.NONFINITE
FALLBACK = Status.FALLBACK


class SolverInfo(NamedTuple):
    """Statistics of one solve; a pytree of arrays that carries no gradient.

    Attributes:
      iterations: number of solver updates performed (``f`` was evaluated
        ``iterations + 1`` times, the first at ``z0``).
      residual: relative residual of the returned point ``z``,
        ``||f(z) - z|| / (||f(z)|| + 1e-8)``, joint 2-norm over all leaves.
      status: a :class:`Status` code (``CONVERGED``, ``MAX_ITER`` or
        ``NONFINITE``).
    """

    iterations: jax.Array
    residual: jax.Array
    status: jax.Array


def status_name(code: int) -> str:
    """The name of a status code, e.g. ``status_name(1) == "MAX_ITER"``.

    Args:
      code: an integer :class:`Status` code (a Python int or a scalar array).

    Returns:
      ``"CONVERGED"``, ``"MAX_ITER"``, ``"NONFINITE"`` or ``"FALLBACK"``.

    Raises:
      ValueError: ``code`` is not a status code.
    """
    return Status(int(code)).name


# --------------------------------------------------------------------------
# Pytree arithmetic in the accumulation dtype.


def acc_dtype(dtype) -> jnp.dtype:
    """The dtype norms and least squares run in: at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """sum over leaves of <a, b>, accumulated in at least float32."""
    parts = [
        jnp.vdot(x.astype(acc_dtype(x.dtype)), y.astype(acc_dtype(y.dtype))).real
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return sum(parts[1:], parts[0]) if parts else jnp.zeros((), jnp.float32)


def tree_norm(a: PyTree) -> jax.Array:
    """Joint 2-norm of all leaves, in at least float32."""
    return jnp.sqrt(tree_vdot(a, a))


def relative_residual(z: PyTree, fz: PyTree) -> jax.Array:
    r"""``||f(z) - z|| / (||f(z)|| + eps)`` with ``eps = 1e-8``.

    ``inf`` when ``||f(z)||`` overflows but ``||f(z) - z||`` does not (a
    finite but huge ``f(z)`` whose squared norm overflows the accumulation
    dtype): the ratio would be 0, and a diverging solve would read as
    converged. NaN in, NaN out.
    """
    diff = jax.tree.map(jnp.subtract, fz, z)
    num, den = tree_norm(diff), tree_norm(fz)
    return jnp.where(jnp.isinf(den) & jnp.isfinite(num), jnp.inf, num / (den + RESIDUAL_EPS))


# --------------------------------------------------------------------------
# Solver configurations.


def _check_common(tol: float, max_iter: int) -> None:
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (tol >= 0.0 and tol < float("inf")):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_flag(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Picard(AbstractSolver):
    r"""Damped Picard (Krasnosel'skii-Mann) iteration.

    .. math:: z_{k+1} = (1 - \lambda) z_k + \lambda f(z_k)

    Converges linearly at rate ``1 - lambda (1 - L)`` when ``f`` is an
    ``L``-contraction.

    Args:
      tol: stop when the relative residual ``||f(z) - z|| / (||f(z)|| + eps)``
        is ``<= tol``. ``tol=0`` runs exactly ``max_iter`` iterations.
      max_iter: maximum number of updates (>= 1).
      damping: ``lambda`` in (0, 1]; 1 is the plain iteration ``z <- f(z)``.
      best_iterate: if True, a solve that ends without converging returns the
        iterate with the lowest relative residual it evaluated instead of the
        last one (see :func:`iterate`).
    """

    tol: float = 1e-4
    max_iter: int = 50
    damping: float = 1.0
    best_iterate: bool = False

    def __post_init__(self):
        _check_common(self.tol, self.max_iter)
        _check_flag("best_iterate", self.best_iterate)
        if not 0.0 < self.damping <= 1.0:
            raise ValueError(f"damping must be in (0, 1], got {self.damping!r}")

    def init(self, z: PyTree, fz: PyTree) -> tuple:
        """The solver state after the first evaluation ``fz = f(z0)``: empty for Picard."""
        del z, fz
        return ()

    def propose(self, state: tuple, z: PyTree, fz: PyTree) -> PyTree:
        """The next iterate ``(1 - lambda) z + lambda f(z)`` (``f(z)`` for ``lambda = 1``)."""
        del state
        if self.damping == 1.0:
            return fz
        d = self.damping
        return jax.tree.map(lambda a, b: ((1 - d) * a + d * b).astype(a.dtype), z, fz)

    def record(self, state: tuple, z: PyTree, fz: PyTree) -> tuple:
        """The state after the driver evaluated ``fz = f(z)``: unchanged for Picard."""
        del z, fz
        return state


class AndersonState(NamedTuple):
    """History of the last ``m`` evaluations, stored as ring buffers.

    ``fs[i]`` is ``f(z_i)``, ``gs[i]`` is the residual ``f(z_i) - z_i`` and
    ``gram[i, j] = <gs[i], gs[j]>``, kept up to date one row per iteration.
    ``count`` is the number of columns written so far.
    """

    fs: PyTree
    gs: PyTree
    gram: jax.Array
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class Anderson(AbstractSolver):
    r"""Type-II Anderson acceleration with ridge-regularised least squares.

    With ``n = min(k + 1, m)`` stored pairs ``(z_i, f(z_i))`` and residuals
    ``g_i = f(z_i) - z_i`` the next iterate is

    .. math::

        \alpha = \arg\min_{\sum_i \alpha_i = 1}
            \|\textstyle\sum_i \alpha_i g_i\|^2 + \lambda \|\alpha\|^2,\qquad
        z_{k+1} = \beta \sum_i \alpha_i f(z_i) + (1 - \beta) \sum_i \alpha_i z_i.

    The constrained problem has the closed form ``alpha = y / sum(y)`` with
    ``(G G^T + lambda I) y = 1``. The first update (one stored pair) is the
    plain step ``beta f(z0) + (1 - beta) z0``; extrapolation starts at the
    second. The ridge is relative, ``lambda = ridge * mean_i ||g_i||^2``, so
    the method behaves the same whatever the scale of ``z`` (an absolute ridge
    swamps the Gram matrix once the residuals are small and stalls the
    iteration). If the solve is singular or not finite (e.g. ``ridge=0`` with
    repeated residuals) the update falls back to the plain step. The Gram
    matrix and the solve run in at least float32; the Gram matrix is updated
    with one new row per iteration (``m`` inner products, not ``m^2``).

    Args:
      m: history size (>= 1). ``m=1`` is the damped Picard iteration.
      beta: mixing parameter in (0, 1].
      ridge: relative Tikhonov regularisation of the least squares (>= 0).
      tol: stop when the relative residual is ``<= tol``; ``tol=0`` runs
        exactly ``max_iter`` iterations.
      max_iter: maximum number of updates (>= 1).
      best_iterate: if True, a solve that ends without converging returns the
        iterate with the lowest relative residual it evaluated instead of the
        last one (see :func:`iterate`).
    """

    m: int = 5
    beta: float = 1.0
    ridge: float = 1e-4
    tol: float = 1e-4
    max_iter: int = 50
    best_iterate: bool = False

    def __post_init__(self):
        _check_common(self.tol, self.max_iter)
        _check_flag("best_iterate", self.best_iterate)
        _check_count("m", self.m)
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta!r}")
        if not (self.ridge >= 0.0 and self.ridge < float("inf")):
            raise ValueError(f"ridge must be a finite number >= 0, got {self.ridge!r}")

    def init(self, z: PyTree, fz: PyTree) -> AndersonState:
        """A history of ``m`` slots holding ``f(z0)`` and ``g0 = f(z0) - z0`` in slot 0."""
        g = jax.tree.map(jnp.subtract, fz, z)
        dtype = acc_dtype(jnp.result_type(*jax.tree.leaves(z)))
        buf = lambda x: jnp.zeros((self.m, *x.shape), x.dtype).at[0].set(x)
        gram = jnp.zeros((self.m, self.m), dtype).at[0, 0].set(tree_vdot(g, g))
        return AndersonState(jax.tree.map(buf, fz), jax.tree.map(buf, g), gram, jnp.array(1))

    def _weights(self, state: AndersonState) -> jax.Array:
        m = self.m
        n = jnp.minimum(state.count, m)
        valid = jnp.arange(m) < n
        gram = jnp.where(valid[:, None] & valid[None, :], state.gram, 0.0)
        diag = jnp.diagonal(gram)
        lam = self.ridge * jnp.sum(diag) / n
        gram = gram + jnp.diag(jnp.where(valid, lam, 1.0))
        y = jnp.linalg.solve(gram, valid.astype(gram.dtype))
        alpha = y / jnp.sum(y)
        latest = (state.count - 1) % m
        plain = jax.nn.one_hot(latest, m, dtype=alpha.dtype)
        ok = jnp.all(jnp.isfinite(alpha))
        return jnp.where(ok, jnp.where(valid, alpha, 0.0), plain)

    def propose(self, state: AndersonState, z: PyTree, fz: PyTree) -> PyTree:
        r"""The Anderson mix ``sum_i alpha_i (f_i - (1 - beta) g_i)`` of the history.

        ``alpha`` minimises ``||sum_i alpha_i g_i||^2 + lam ||alpha||^2``
        subject to ``sum_i alpha_i = 1`` over the stored residuals ``g_i``,
        with ``lam = ridge * mean_i ||g_i||^2``; non-finite weights fall back
        to the plain step ``f(z)``.
        """
        del z, fz  # the latest pair is already in the history
        alpha = self._weights(state)

        def mix(f_hist, g_hist):
            a = alpha.astype(acc_dtype(f_hist.dtype))
            f_mix = jnp.tensordot(a, f_hist.astype(a.dtype), axes=1)
            if self.beta == 1.0:
                return f_mix.astype(f_hist.dtype)
            g_mix = jnp.tensordot(a, g_hist.astype(a.dtype), axes=1)
            # sum a_i z_i = sum a_i f_i - sum a_i g_i
            return (f_mix - (1.0 - self.beta) * g_mix).astype(f_hist.dtype)

        return jax.tree.map(mix, state.fs, state.gs)

    def record(self, state: AndersonState, z: PyTree, fz: PyTree) -> AndersonState:
        """Stores ``f(z)`` and ``g = f(z) - z`` in the next slot of the history
        (overwriting the oldest once all ``m`` are full) and updates the Gram
        matrix ``<g_i, g_j>``."""
        # The slot is written with a one-hot select, not ``h.at[slot].set(x)``: under
        # ``vmap`` (one solve per sample) the slot is a batched index and an indexed
        # write lowers to a scatter, while the select is elementwise, fuses, and
        # costs the same batched or not (benchmarks/results/backward_cost_cpu.md).
        hot = jnp.arange(self.m) == state.count % self.m
        g = jax.tree.map(jnp.subtract, fz, z)

        def put(h, x):
            return jnp.where(hot.reshape((self.m,) + (1,) * x.ndim), x[None], h)

        fs = jax.tree.map(put, state.fs, fz)
        gs = jax.tree.map(put, state.gs, g)

        def row_part(h, x):
            a = acc_dtype(x.dtype)
            h2 = h.reshape(self.m, -1).astype(a)
            return h2 @ x.reshape(-1).astype(a)

        parts = jax.tree.leaves(jax.tree.map(row_part, gs, g))
        row = sum(parts[1:], parts[0]).astype(state.gram.dtype)
        gram = jnp.where(hot[:, None], row[None, :], state.gram)
        gram = jnp.where(hot[None, :], row[:, None], gram)
        return AndersonState(fs, gs, gram, state.count + 1)


class BroydenState(NamedTuple):
    r"""Low-rank inverse Jacobian and the last iterate of a :class:`Broyden` solve.

    The inverse Jacobian estimate of ``g(z) = f(z) - z`` is
    ``H = -I + sum_i u_i v_i^T`` with the pairs stored in ``us`` and ``vs``
    (leaves of shape ``(memory, *z.shape)``, in at least float32; unwritten
    slots are zero). ``z`` is the current iterate, ``g`` its
    residual ``f(z) - z`` and ``dz = -H g`` the step the next update takes.
    ``count`` is the number of pairs written since the last restart.
    """

    us: PyTree
    vs: PyTree
    z: PyTree
    g: PyTree
    dz: PyTree
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class Broyden(AbstractSolver):
    r"""Limited-memory "good" Broyden method on ``g(z) = f(z) - z = 0``.

    Broyden's method is a quasi-Newton method: it keeps an estimate ``H`` of
    the inverse Jacobian ``(df/dz - I)^{-1}`` of ``g``, steps
    ``z_{k+1} = z_k - H_k g(z_k)`` and corrects ``H`` with the secant pair
    ``s = z_{k+1} - z_k``, ``y = g(z_{k+1}) - g(z_k)`` (Sherman-Morrison form
    of the good Broyden update):

    .. math::

        H_{k+1} = H_k + \frac{(s - H_k y)\, s^T H_k}{s^T H_k y}, \qquad H_0 = -I.

    ``H`` is never formed: it is stored as ``-I + sum_i u_i v_i^T`` with
    ``v = H_k^T s`` and ``u = (s - H_k y) / <v, y>``, at most ``memory`` pairs
    (the DEQ formulation of Bai et al., 2019, as in locuslab's DEQ and torchdeq).
    The first update (``H_0 = -I``) is the plain step ``z <- f(z)``. On an
    affine map in ``n`` dimensions with ``memory >= 2 n`` the method reaches
    the fixed point in at most ``2 n`` updates (Gay, 1979), also where Picard
    contracts slowly. There is no line search: one evaluation of ``f`` per
    update, like :class:`Picard` and :class:`Anderson`.

    Safeguards:

    * denominator guard: a pair with ``|<v, y>| <= guard ||v|| ||y||`` (a
      nearly singular update, e.g. ``y ~ 0``) or with a non-finite entry is
      not stored, and ``H`` stays as it was;
    * restart when the memory is full: once ``memory`` pairs are stored, the
      memory is cleared (``H = -I``) before the next pair is added.
      Overwriting the oldest pair instead (a ring buffer) leaves later pairs
      that were built on the dropped one, and on some maps it stalls the
      method altogether;
    * restart on a non-finite step: if the next step ``-H g`` is not finite,
      the memory is cleared and the step is the plain ``f(z) - z``.

    The pairs and all inner products are kept in at least float32 whatever the
    dtype of the iterates; per iteration the method costs ``3 memory`` inner
    products and as many scaled additions of ``z``-sized arrays, and its state
    holds ``2 memory + 3`` copies of ``z``. Usable wherever
    :class:`Picard` and :class:`Anderson` are: as the forward solver, as the
    adjoint solver of :class:`~jfbjax.IFT` (the adjoint equation is affine)
    and with ``best_iterate``.

    Args:
      memory: number of stored pairs ``(u_i, v_i)`` (>= 1).
      guard: relative denominator guard in [0, 1) (see above).
      tol: stop when the relative residual is ``<= tol``; ``tol=0`` runs
        exactly ``max_iter`` iterations.
      max_iter: maximum number of updates (>= 1).
      best_iterate: if True, a solve that ends without converging returns the
        iterate with the lowest relative residual it evaluated instead of the
        last one (see :func:`iterate`).
    """

    memory: int = 20
    guard: float = 1e-6
    tol: float = 1e-4
    max_iter: int = 50
    best_iterate: bool = False

    def __post_init__(self):
        _check_common(self.tol, self.max_iter)
        _check_flag("best_iterate", self.best_iterate)
        _check_count("memory", self.memory)
        if not (isinstance(self.guard, int | float) and 0.0 <= self.guard < 1.0):
            raise ValueError(f"guard must be a number in [0, 1), got {self.guard!r}")

    def _dots(self, hist: PyTree, x: PyTree) -> jax.Array:
        """``[<hist_i, x>]_i``, shape ``(memory,)``, summed over leaves."""

        def part(h, a):
            return h.reshape(self.memory, -1) @ a.reshape(-1).astype(h.dtype)

        parts = jax.tree.leaves(jax.tree.map(part, hist, x))
        return sum(parts[1:], parts[0])

    def _combine(self, hist: PyTree, coef: jax.Array) -> PyTree:
        """``sum_i coef_i hist_i``, leaf by leaf."""
        return jax.tree.map(lambda h: jnp.tensordot(coef.astype(h.dtype), h, axes=1), hist)

    def _step(self, us: PyTree, vs: PyTree, g: PyTree) -> PyTree:
        """``-H g = g - sum_i u_i <v_i, g>``."""
        return jax.tree.map(jnp.subtract, g, self._combine(us, self._dots(vs, g)))

    def init(self, z: PyTree, fz: PyTree) -> BroydenState:
        """Empty memory (``H_0 = -I``): the first step is ``g0 = f(z0) - z0``."""
        g = jax.tree.map(lambda a, b: b.astype(acc_dtype(a.dtype)) - a, z, fz)
        zeros = lambda x: jnp.zeros((self.memory, *x.shape), x.dtype)
        empty = jax.tree.map(zeros, g)
        return BroydenState(empty, empty, z, g, g, jnp.zeros((), jnp.int32))

    def propose(self, state: BroydenState, z: PyTree, fz: PyTree) -> PyTree:
        """The quasi-Newton step ``z - H g(z)``, computed by :meth:`record`."""
        del fz
        return jax.tree.map(lambda a, d: (a + d).astype(a.dtype), z, state.dz)

    def record(self, state: BroydenState, z: PyTree, fz: PyTree) -> BroydenState:
        r"""Adds the secant pair of the step to ``z`` (when it passes the guard;
        after clearing a full memory) and computes the next step ``-H g(z)``,
        restarting from ``H = -I`` if that step is not finite."""
        full = state.count >= self.memory
        clear = lambda x: jnp.where(full, jnp.zeros_like(x), x)
        state = state._replace(
            us=jax.tree.map(clear, state.us),
            vs=jax.tree.map(clear, state.vs),
            count=jnp.where(full, 0, state.count),
        )
        g = jax.tree.map(lambda a, b: b.astype(acc_dtype(a.dtype)) - a, z, fz)
        s = jax.tree.map(lambda a, b: a.astype(acc_dtype(a.dtype)) - b, z, state.z)
        y = jax.tree.map(jnp.subtract, g, state.g)
        # H y = -y + sum u_i <v_i, y>,  H^T s = -s + sum v_i <u_i, s>
        hy = jax.tree.map(jnp.subtract, self._combine(state.us, self._dots(state.vs, y)), y)
        v = jax.tree.map(jnp.subtract, self._combine(state.vs, self._dots(state.us, s)), s)
        denom = tree_vdot(v, y)
        ok = jnp.abs(denom) > self.guard * tree_norm(v) * tree_norm(y)
        safe = jnp.where(ok, denom, 1.0)
        u = jax.tree.map(lambda a, b: (a - b) / safe.astype(a.dtype), s, hy)
        ok = ok & jnp.isfinite(tree_norm(u)) & jnp.isfinite(tree_norm(v))
        # written with a one-hot select (no scatter under vmap), like Anderson's history
        hot = (jnp.arange(self.memory) == state.count) & ok

        def put(h, x):
            return jnp.where(hot.reshape((self.memory,) + (1,) * x.ndim), x[None], h)

        us = jax.tree.map(put, state.us, u)
        vs = jax.tree.map(put, state.vs, v)
        count = state.count + ok.astype(state.count.dtype)
        dz = self._step(us, vs, g)
        finite = jnp.isfinite(tree_norm(dz))
        keep = lambda x: jnp.where(finite, x, jnp.zeros_like(x))
        us, vs = jax.tree.map(keep, us), jax.tree.map(keep, vs)
        dz = jax.tree.map(lambda d, a: jnp.where(finite, d, a), dz, g)
        count = jnp.where(finite, count, 0)
        return BroydenState(us, vs, z, g, dz, count)


Solver = AbstractSolver

_SOLVER_NAMES = {"anderson": Anderson, "broyden": Broyden, "picard": Picard}


def as_solver(solver: str | Solver) -> Solver:
    """Accept a solver object, or the shorthands ``"anderson"`` (=
    ``Anderson()``: m=5, beta=1, ridge=1e-4, tol=1e-4, max_iter=50),
    ``"picard"`` (= ``Picard()``: tol=1e-4, max_iter=50, damping=1) and
    ``"broyden"`` (= ``Broyden()``: memory=20, guard=1e-6, tol=1e-4,
    max_iter=50); none keeps the best iterate.

    Returns:
      ``solver`` itself if it is an :class:`AbstractSolver` (the built-in
      ones or a user's), else the default configuration its
      (case-insensitive) name selects.

    Raises:
      ValueError: anything else.
    """
    if isinstance(solver, AbstractSolver):
        return solver
    if isinstance(solver, str) and solver.lower() in _SOLVER_NAMES:
        return _SOLVER_NAMES[solver.lower()]()
    raise ValueError(
        f"solver must be jfbjax.Picard(...), jfbjax.Anderson(...), jfbjax.Broyden(...), another "
        f"jfbjax.AbstractSolver, or one of {sorted(_SOLVER_NAMES)}, got {solver!r}"
    )


# --------------------------------------------------------------------------
# The driver.


class _Best(NamedTuple):
    """The iterate with the lowest finite relative residual evaluated so far."""

    z: PyTree
    residual: jax.Array


class _Carry(NamedTuple):
    k: jax.Array
    z: PyTree
    fz: PyTree
    residual: jax.Array
    solver_state: Any
    best: _Best | None  # None unless the solver keeps its best iterate


def _finished(carry: _Carry, tol: float, max_iter: int) -> jax.Array:
    done = (carry.k >= max_iter) | ~jnp.isfinite(carry.residual)
    if tol > 0:
        done = done | (carry.residual <= tol)
    return done


def _status(carry: _Carry, tol: float) -> jax.Array:
    converged = carry.residual <= tol if tol > 0 else jnp.zeros((), bool)
    return jnp.where(
        ~jnp.isfinite(carry.residual),
        int(NONFINITE),
        jnp.where(converged, int(CONVERGED), int(MAX_ITER)),
    ).astype(jnp.int32)


def _keep_better(best: _Best, z: PyTree, residual: jax.Array) -> _Best:
    """``(z, residual)`` if its residual is strictly lower (NaN never is), else ``best``."""
    better = residual < best.residual
    return _Best(
        jax.tree.map(lambda new, old: jnp.where(better, new, old), z, best.z),
        jnp.where(better, residual, best.residual),
    )


def iterate(
    solver: Solver,
    fn: Callable[[PyTree], PyTree],
    z0: PyTree,
    *,
    differentiable: bool = False,
    trace: bool = False,
) -> tuple[PyTree, SolverInfo] | tuple[PyTree, SolverInfo, jax.Array]:
    """Run ``solver`` on ``z = fn(z)`` from ``z0``.

    With ``solver.best_iterate`` the driver also carries the iterate with the
    lowest finite relative residual among all it evaluated (``z0`` included;
    ties keep the earlier one). If the solve then ends without converging
    (status ``MAX_ITER``, which includes every ``tol=0`` solve, or
    ``NONFINITE``) it returns that iterate and ``info.residual`` is its
    residual; ``info.iterations`` and ``info.status`` still describe the solve
    (updates performed, why it stopped). A converged solve returns its last
    iterate as without the option, and so does a solve in which no residual
    was finite. The choice is made per sample under ``vmap``. It costs one
    more copy of ``z`` in the loop state and a select per iteration; with
    ``differentiable=True`` gradients flow through the selected iterate.

    Args:
      solver: a :class:`Picard`, :class:`Anderson` or :class:`Broyden`
        configuration, or any other :class:`AbstractSolver`.
      fn: the map, pytree -> pytree of the same structure, shapes and dtypes.
      z0: the start point.
      differentiable: if False (default) the loop is a ``lax.while_loop`` that
        stops as soon as the solve converges (constant memory, but not
        reverse-differentiable). If True it is a ``lax.scan`` over
        ``max_iter`` steps in which the state freezes once the solve has
        stopped: reverse-mode differentiation then backpropagates through the
        iterations actually taken (memory grows with ``max_iter``).
      trace: with ``differentiable=True`` only, also return the relative
        residual after every step, shape ``(max_iter,)`` (frozen entries
        repeat the final value). These are the residuals of the iterates, not
        of the best one.

    Returns:
      ``(z, info)`` or ``(z, info, residuals)`` with ``trace=True``.
    """
    solver = as_solver(solver)
    tol, max_iter = solver.tol, solver.max_iter
    fz0 = fn(z0)
    r0 = relative_residual(z0, fz0)
    best = None
    if solver.best_iterate:
        best = _Best(z0, jnp.where(jnp.isfinite(r0), r0, jnp.inf))
    init = _Carry(jnp.zeros((), jnp.int32), z0, fz0, r0, solver.init(z0, fz0), best)

    def step(c: _Carry) -> _Carry:
        z = solver.propose(c.solver_state, c.z, c.fz)
        fz = fn(z)
        r = relative_residual(z, fz)
        best = None if c.best is None else _keep_better(c.best, z, r)
        return _Carry(c.k + 1, z, fz, r, solver.record(c.solver_state, z, fz), best)

    if not differentiable:
        if trace:
            raise ValueError("trace=True needs differentiable=True (a scan)")
        final = jax.lax.while_loop(lambda c: ~_finished(c, tol, max_iter), step, init)
        residuals = None
    else:

        def scan_step(c: _Carry, _):
            active = ~_finished(c, tol, max_iter)
            new = step(c)
            c = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, c)
            return c, c.residual

        final, residuals = jax.lax.scan(scan_step, init, None, length=max_iter)

    status = _status(final, tol)
    z, residual = final.z, final.residual
    if final.best is not None:
        use_best = (status != int(CONVERGED)) & jnp.isfinite(final.best.residual)
        z = jax.tree.map(lambda b, last: jnp.where(use_best, b, last), final.best.z, z)
        residual = jnp.where(use_best, final.best.residual, residual)
    info = SolverInfo(
        iterations=final.k,
        residual=jax.lax.stop_gradient(residual),
        status=status,
    )
    if trace:
        return z, info, jax.lax.stop_gradient(residuals)
    return z, info
