"""``fixed_point``: a forward solver and a backward mode under one custom_vjp
(or, with ``forward_mode=True``, one custom_jvp whose transpose is the same
backward mode)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jfbjax.backward import IFT, PROBE_SIZE, Backward, _probe_cotangent, as_backward
from jfbjax.solvers import Solver, SolverInfo, Status, as_solver, iterate

PyTree = Any


class FixedPointError(RuntimeError):
    """Raised by :func:`fixed_point` with ``throw=True`` when a solve does not converge,
    and by the backward pass of :class:`~jfbjax.IFT` with ``throw=True`` when its
    adjoint solve does not.

    The message says which solve failed (the forward fixed point or the IFT
    adjoint), names the status (``MAX_ITER`` or ``NONFINITE``), the first
    failed sample of a batch, its iteration count and its relative residual.
    Under ``jit`` it is raised from a host callback, so it reaches the caller
    wrapped in JAX's runtime error (``jax.errors.JaxRuntimeError``).
    """


@dataclasses.dataclass(frozen=True)
class SolveRoutes:
    """The two differentiable solves ``fixed_point`` offers a backward mode;
    :meth:`jfbjax.AbstractBackward.differentiate` calls one. Each returns
    ``(z, aux, info)`` (``aux`` None without ``has_aux``).

    Attributes:
      implicit: ``implicit(mode)``: the solver's ``while_loop`` under a
        ``custom_vjp`` (a ``custom_jvp`` with ``forward_mode=True``) whose
        derivative at ``z*`` comes from ``mode.adjoint``.
      unrolled: ``unrolled()``: the solver's iterations as a differentiable
        ``scan``, differentiated by JAX itself (:class:`~jfbjax.Unrolled`).
    """

    implicit: Callable
    unrolled: Callable


def fixed_point(
    f: Callable[..., PyTree],
    z0: PyTree,
    *args: PyTree,
    solver: str | Solver = "anderson",
    backward: str | Backward = "jfb",
    throw: bool = False,
    backward_callback: Callable[[SolverInfo], None] | None = None,
    has_aux: bool = False,
    probe: jax.Array | None = None,
    forward_mode: bool = False,
) -> tuple[PyTree, SolverInfo] | tuple[PyTree, PyTree, SolverInfo]:
    r"""Solve ``z* = f(z*, *args)`` and differentiate through it.

    The forward pass runs ``solver`` from ``z0`` in a ``lax.while_loop``; the
    reverse pass is given by ``backward``. With ``v = dl/dz*`` the gradient
    with respect to ``args`` is ``u^T (df/dargs)(z*, args)`` where

    * ``JFB()``: ``u = v`` (one VJP of ``f``, no linear solve);
    * ``Neumann(k)``: ``u = sum_{i<=k} ((df/dz)^T)^i v``;
    * ``Phantom(k, lam)``: ``u = lam sum_{i<k} (((1 - lam) I + lam df/dz)^T)^i v``,
      the phantom gradient of ``k`` damped steps from ``z*``;
    * ``IFT(...)``: ``u`` solves ``u = v + (df/dz)^T u`` (the exact implicit
      gradient ``v^T (I - df/dz)^{-1} df/dargs``);
    * ``Unrolled()``: reverse-mode through the iterations themselves.

    ``f`` is linearised once at ``z*`` (``jax.vjp``) and that VJP is reused
    for every adjoint iteration; no Jacobian is formed. The gradient with
    respect to ``z0`` is zero. ``f`` may close over traced values (parameters
    captured inside a jitted or vmapped function): they are hoisted into
    explicit arguments, so gradients reach them exactly as if they had been
    passed in ``args``.

    For a batch, ``jax.vmap`` the call: every sample then has its own
    Anderson history, residual, iteration count and status, and a sample that
    converged stops changing while the others go on.

    Leaves of ``args`` that are not arrays (Python numbers, functions such as
    an activation, strings, any other object: what an Equinox module or a
    hand-made pytree may hold beside its arrays) are constants: they reach
    ``f`` unchanged and get no gradient. Arrays (``jax.Array``, NumPy arrays
    and scalars) are traced and differentiated.

    The backward pass is never silently wrong if you look: with ``probe=``
    (see :func:`~jfbjax.backward_probe`) the gradient of the loss with
    respect to the probe carries the adjoint solve's iterations, residual and
    status out of the backward pass, under ``jit`` and per sample under
    ``vmap``, without a host callback; ``IFT(throw=True)`` raises when the
    adjoint solve fails and ``IFT(fallback=...)`` replaces a failed adjoint by
    another mode's (status ``FALLBACK``).

    Forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) needs
    ``forward_mode=True``: the solve is then a ``custom_jvp`` whose tangent is
    the backward mode's approximation of ``dz* = (I - df/dz)^{-1} (df/dargs)
    dargs`` with ``df/dz`` linearised once at ``z*`` (``jax.linearize``):
    ``dz = b`` for JFB (``b = (df/dargs) dargs``), ``sum_{i<=k} J^i b`` for
    Neumann, the damped sum for Phantom, and for IFT the solution of
    ``(I - J) dz = b`` by the same adjoint solver, as a
    ``lax.custom_linear_solve`` whose transpose solve is the adjoint solve
    ``(I - J^T) u = v``. Reverse mode (``jax.grad``) then works by
    transposition and gives the same gradients as the default ``custom_vjp``
    (tested), so one function serves ``jacfwd`` and ``jacrev``. What the
    custom_jvp path does not have: the ``probe`` and ``backward_callback``
    statistics (a ``ValueError`` says so); ``IFT(throw=True)`` and
    ``IFT(fallback=...)`` work in both. Without ``forward_mode`` a forward-mode
    transformation raises a ``TypeError`` that says to set it. ``Unrolled``
    differentiates through the iterations and supports both modes either way.

    With ``has_aux=True``, ``f(z, *args)`` returns ``(z_next, aux)``: only
    ``z_next`` is iterated, and ``aux`` is evaluated once more at the returned
    ``z*`` (one extra evaluation of ``f``; inside the solver loop the unused
    ``aux`` is dead code). Its gradient is that of ``aux(z*(theta), theta)``:
    ``daux/dargs`` directly, plus ``daux/dz*`` carried back through ``z*`` by
    the chosen backward mode (for JFB: ``u = (daux/dz*)^T abar + v``).

    Args:
      f: ``f(z, *args)`` returning a pytree with the structure, shapes and
        dtypes of ``z``. Iterates may be bfloat16, float32 or float64; norms
        and Anderson's least squares run in at least float32.
      z0: start point (a pytree of floating arrays).
      *args: pytrees; gradients flow to every floating array leaf, leaves that
        are not arrays are passed through as constants.
      solver: :class:`~jfbjax.Picard`, :class:`~jfbjax.Anderson`,
        :class:`~jfbjax.Broyden`, or ``"anderson"`` / ``"picard"`` /
        ``"broyden"`` for their defaults.
      backward: :class:`~jfbjax.JFB`, :class:`~jfbjax.IFT`,
        :class:`~jfbjax.Neumann`, :class:`~jfbjax.Phantom`,
        :class:`~jfbjax.Unrolled`, or ``"jfb"``, ``"ift"``, ``"neumann"``,
        ``"phantom"``, ``"unrolled"`` for their defaults.
      throw: if True, a solve that ends with status ``MAX_ITER`` or
        ``NONFINITE`` raises :class:`FixedPointError` (through a host
        callback, so it also works under ``jit``; the error surfaces when the
        result is computed, wrapped in JAX's runtime error). This covers the
        forward solve; for the adjoint solve use ``IFT(throw=True)``.
      backward_callback: opt-in statistics of the backward solve: called on
        the host with a :class:`SolverInfo` of the adjoint solve every time
        the gradient is computed (per sample under ``vmap``). For JFB and
        Neumann ``iterations`` is the number of adjoint terms and
        ``residual`` measures how far ``u`` is from the exact IFT adjoint;
        for GMRES ``iterations`` is ``-1`` (not reported by JAX's GMRES); an
        IFT that used its fallback reports status ``FALLBACK``. Not called for
        ``Unrolled``.
      has_aux: if True, ``f`` returns a pair ``(z_next, aux)`` with ``aux``
        any pytree (see above).
      probe: ``None``, or a floating array of shape ``(PROBE_SIZE,)`` made by
        :func:`~jfbjax.backward_probe` (its value is not used). The gradient
        of the loss with respect to it is the backward pass's statistics, not
        a derivative; decode it with :func:`~jfbjax.backward_info`. For
        JFB, Neumann and Phantom it also turns on the one extra VJP that
        measures their adjoint residual. ``vmap`` over a batch of probes for
        per-sample numbers; a probe shared by several samples or calls sums
        theirs.
      forward_mode: differentiate by a ``custom_jvp`` (forward and reverse
        mode) instead of a ``custom_vjp`` (reverse mode only); see above.

    Returns:
      ``(z_star, info)``, or ``(z_star, aux, info)`` with ``has_aux=True``
      (``aux`` the second output of ``f(z_star, *args)``), with ``info`` a
      :class:`SolverInfo` (iterations, relative residual
      ``||f(z) - z|| / (||f(z)|| + 1e-8)`` of the returned point, status
      code). With ``best_iterate=True`` on the solver, an unconverged solve
      returns its lowest-residual iterate (:func:`~jfbjax.solvers.iterate`).

    Raises:
      TypeError: at trace time, if ``f(z0, *args)`` (its first output with
        ``has_aux=True``) does not have the structure, shapes and dtypes of
        ``z0``, if ``z0`` is not floating, or if ``has_aux=True`` and ``f``
        does not return a pair.
      ValueError: for unknown solver or backward names, a ``probe`` that
        is not a floating array of shape ``(PROBE_SIZE,)``, or a ``probe`` or
        ``backward_callback`` with ``forward_mode=True``.
    """
    solver = as_solver(solver)
    backward = as_backward(backward)
    _check_start(z0)
    _check_probe(probe)
    if forward_mode and (probe is not None or backward_callback is not None):
        raise ValueError(
            "fixed_point: probe and backward_callback report the custom_vjp's backward pass; "
            "with forward_mode=True there is none (gradients come by transposing the JVP). "
            "Drop them, or use forward_mode=False for reverse mode with statistics."
        )
    z0 = jax.lax.stop_gradient(z0)
    # Non-array leaves of args become constants of f; only the arrays are traced.
    args, f = _split_static(f, args)

    main = (lambda out: out[0]) if has_aux else (lambda out: out)

    def unrolled():  # reverse mode through the iterations themselves
        _check_output(z0, _main_output(jax.eval_shape(f, z0, *args), has_aux))
        z, info = iterate(solver, lambda z: main(f(z, *args)), z0, differentiable=True)
        if probe is not None:
            z = _tap(z, probe, jax.lax.stop_gradient(info.iterations).astype(jnp.float32))
        return z, (f(z, *args)[1] if has_aux else None), info

    def implicit(mode):  # z* under a custom_vjp (or custom_jvp) whose backward is mode's adjoint
        f_flat, hoisted, out_shape = _closure_convert(f, z0, args)
        # from the same trace: f is not traced twice
        _check_output(z0, _main_output(out_shape, has_aux))
        f_main = lambda z, a, h: main(f_flat(z, a, h))
        if forward_mode:
            z, info = _solve_jvp(f_main, solver, mode, z0, args, hoisted)
        else:
            try:
                z, info = _solve(f_main, solver, mode, backward_callback, z0, args, hoisted, probe)
            except TypeError as e:
                if "forward-mode" not in str(e):
                    raise
                raise TypeError(
                    "fixed_point: forward-mode differentiation (jax.jvp, jax.jacfwd, "
                    "jax.linearize, jax.hessian) needs fixed_point(..., forward_mode=True); "
                    "the default is a custom_vjp, which JAX can only reverse-differentiate."
                ) from e
        return z, (f_flat(z, args, hoisted)[1] if has_aux else None), info

    z, aux, info = backward.differentiate(SolveRoutes(implicit=implicit, unrolled=unrolled))
    info = jax.tree.map(jax.lax.stop_gradient, info)
    if throw:
        jax.debug.callback(_raise_on_failure, info.status, info.iterations, info.residual)
    if has_aux:
        return z, aux, info
    return z, info


def _main_output(out: PyTree, has_aux: bool) -> PyTree:
    """The iterated part of ``f``'s output: all of it, or the first of a pair."""
    if not has_aux:
        return out
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise TypeError(
            "fixed_point: with has_aux=True, f(z, *args) must return a pair (z_next, aux), "
            f"got {_describe(out)}"
        )
    return out[0]


def _failure(status, iterations, residual) -> str | None:
    """``"status NAME (sample ...) after k iterations, relative residual r"`` for
    the first failed sample, or None if every solve converged."""
    status, iterations, residual = map(np.asarray, (status, iterations, residual))
    bad = status != int(Status.CONVERGED)
    if not np.any(bad):
        return None
    idx = np.argwhere(bad)
    first = tuple(int(i) for i in idx[0]) if status.ndim else ()
    code = int(status[first]) if status.ndim else int(status)
    where = f" (sample {first}, {idx.shape[0]} of {status.size} failed)" if status.ndim else ""
    its = int(iterations[first])
    its = "an unreported number of (GMRES) iterations" if its < 0 else f"{its} iterations"
    return (
        f"status {Status(code).name}{where} after {its}, "
        f"relative residual {float(residual[first]):.3e}"
    )


def _raise_on_failure(status, iterations, residual) -> None:
    message = _failure(status, iterations, residual)
    if message is not None:
        raise FixedPointError(f"fixed_point did not converge: {message}")


def _raise_on_adjoint_failure(status, iterations, residual, *, backward: IFT) -> None:
    message = _failure(status, iterations, residual)
    if message is not None:
        raise FixedPointError(
            f"fixed_point backward: the IFT adjoint solve u = v + (df/dz)^T u did not converge: "
            f"{message} (tol {backward.adjoint_tol:g}). The gradient would have been wrong; "
            "raise the adjoint's max_iter, use IFT('gmres'), or set IFT(fallback=...)."
        )


def _check_probe(probe) -> None:
    if probe is None:
        return
    shape, dtype = jnp.shape(probe), jnp.result_type(probe)
    if shape != (PROBE_SIZE,) or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"fixed_point: probe must be a floating array of shape ({PROBE_SIZE},) per call, "
            f"as made by jfbjax.backward_probe(); got {jnp.dtype(dtype).name}{list(shape)}. "
            "For a batch, vmap over jfbjax.backward_probe((batch,)) together with the inputs."
        )


def _is_array(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _split_static(f: Callable, args: tuple) -> tuple[tuple, Callable]:
    """``(arrays, g)``: the array leaves of ``args``, and ``g(z, *arrays)`` that
    calls ``f(z, *args)`` with the other leaves put back as constants. Returns
    ``(args, f)`` unchanged when every leaf is an array."""
    leaves, treedef = jax.tree.flatten(args)
    dynamic = [_is_array(x) for x in leaves]
    if all(dynamic):
        return args, f
    arrays = tuple(x for x, d in zip(leaves, dynamic, strict=True) if d)
    static = tuple(x for x, d in zip(leaves, dynamic, strict=True) if not d)

    def g(z, *arrays):
        a_iter, s_iter = iter(arrays), iter(static)
        full = [next(a_iter) if d else next(s_iter) for d in dynamic]
        return f(z, *jax.tree.unflatten(treedef, full))

    return arrays, g


def _describe(tree: PyTree) -> str:
    leaves = jax.tree.leaves(tree)
    shapes = ", ".join(f"{jnp.dtype(x.dtype).name}{list(x.shape)}" for x in leaves)
    return f"structure {jax.tree.structure(tree)} with leaves [{shapes}]"


def _check_start(z0: PyTree) -> None:
    for leaf in jax.tree.leaves(z0):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"fixed_point: every leaf of z0 must be a floating array, got {_describe(z0)}"
            )


def _check_output(z0: PyTree, out: PyTree) -> None:
    """``out`` (shapes of ``f(z0, *args)``) must match ``z0`` in structure, shapes and dtypes."""
    expected = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), z0)
    same_tree = jax.tree.structure(out) == jax.tree.structure(expected)
    if not same_tree or any(
        a.shape != b.shape or a.dtype != b.dtype
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected), strict=True)
    ):
        raise TypeError(
            "fixed_point: f(z, *args) must return the structure, shapes and dtypes of z.\n"
            f"  expected: {_describe(expected)}\n"
            f"  received: {_describe(out)}"
        )


def _closure_convert(f: Callable, z0: PyTree, args: tuple) -> tuple[Callable, tuple, PyTree]:
    """Trace ``f`` once and hoist every traced value it closes over.

    ``jax.closure_convert`` hoists only values that are being differentiated;
    a value captured from an enclosing ``vmap`` would leak into the
    custom_vjp. Here every closed-over tracer becomes an explicit argument
    (``f_flat(z, args, hoisted)``); concrete constants stay closed over.
    Also returns the output shapes of that trace.
    """
    closed, out_shape = jax.make_jaxpr(lambda z, a: f(z, *a), return_shape=True)(z0, args)
    is_tracer = [isinstance(c, jax.core.Tracer) for c in closed.consts]
    hoisted = tuple(c for c, t in zip(closed.consts, is_tracer, strict=True) if t)
    kept = [c for c, t in zip(closed.consts, is_tracer, strict=True) if not t]
    out_tree = jax.tree.structure(out_shape)
    jaxpr = closed.jaxpr

    def f_flat(z, a, h):
        h_iter, k_iter = iter(h), iter(kept)
        consts = [next(h_iter) if t else next(k_iter) for t in is_tracer]
        out = jax.core.eval_jaxpr(jaxpr, consts, *jax.tree.leaves((z, a)))
        return jax.tree.unflatten(out_tree, out)

    return f_flat, hoisted, out_shape


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _solve(f_flat, solver, backward, callback, z0, args, hoisted, probe):
    del probe
    return iterate(solver, lambda z: f_flat(z, args, hoisted), z0)


def _solve_fwd(f_flat, solver, backward, callback, z0, args, hoisted, probe):
    z, info = iterate(solver, lambda z: f_flat(z, args, hoisted), z0)
    return (z, info), (z, args, hoisted, probe)


def _solve_bwd(f_flat, solver, backward, callback, residuals, cotangents):
    z, args, hoisted, probe = residuals
    v, _ = cotangents  # SolverInfo carries no gradient
    _, vjp = jax.vjp(f_flat, z, args, hoisted)  # linearise f once at z*
    stats = callback is not None or probe is not None
    u, adjoint_info = backward.adjoint(lambda w: vjp(w)[0], v, stats=stats)
    if callback is not None:
        jax.debug.callback(callback, adjoint_info)
    if isinstance(backward, IFT) and backward.throw:
        raise_it = functools.partial(_raise_on_adjoint_failure, backward=backward)
        jax.debug.callback(
            raise_it, adjoint_info.status, adjoint_info.iterations, adjoint_info.residual
        )
    _, args_bar, hoisted_bar = vjp(u)
    probe_bar = None if probe is None else _probe_cotangent(adjoint_info, probe)
    return jax.tree.map(jnp.zeros_like, z), args_bar, hoisted_bar, probe_bar


_solve.defvjp(_solve_fwd, _solve_bwd)


@jax.custom_vjp
def _tap(z, probe, iterations):
    """The identity on ``z`` whose backward writes the statistics of an
    ``Unrolled`` backward (``iterations`` unrolled updates) into ``probe``."""
    del probe, iterations
    return z


def _tap_fwd(z, probe, iterations):
    return z, (probe, iterations)


def _tap_bwd(residuals, v):
    probe, iterations = residuals
    info = SolverInfo(iterations, jnp.full((), jnp.nan, jnp.float32), jnp.int32(Status.MAX_ITER))
    return v, _probe_cotangent(info, probe), jnp.zeros_like(iterations)


_tap.defvjp(_tap_fwd, _tap_bwd)


# --------------------------------------------------------------------------
# forward_mode=True: the same solve under a custom_jvp.


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _solve_jvp(f_flat, solver, backward, z0, args, hoisted):
    return iterate(solver, lambda z: f_flat(z, args, hoisted), z0)


@_solve_jvp.defjvp
def _solve_jvp_rule(f_flat, solver, backward, primals, tangents):
    z0, args, hoisted = primals
    _, args_dot, hoisted_dot = tangents  # no tangent reaches z* from z0
    z, info = iterate(solver, lambda w: f_flat(w, args, hoisted), z0)
    # b = (df/dargs) dargs at z*; J = df/dz at z*, linearised once.
    _, b = jax.jvp(lambda a, h: f_flat(z, a, h), (args, hoisted), (args_dot, hoisted_dot))
    _, jz = jax.linearize(lambda w: f_flat(w, args, hoisted), z)
    z_dot = _tangent(backward, jz, b)
    return (z, info), (z_dot, jax.tree.map(_zero_tangent, info))


def _tangent(backward: Backward, jz: Callable, b: PyTree) -> PyTree:
    """The backward mode's ``dz`` for ``dz = b + J dz``: its adjoint recursion
    run with ``J`` in place of ``J^T`` (JFB, Neumann, Phantom: polynomials in
    ``J``, transposed by JAX), or for IFT a ``custom_linear_solve`` whose
    solve and transpose solve are the adjoint solver on ``I - J`` and ``I - J^T``."""
    if not isinstance(backward, IFT):
        return backward.adjoint(jz, b)[0]

    def solve(matvec, rhs):  # matvec: w -> (I - M) w, M = J or J^T
        u, info = backward.adjoint(
            lambda w: jax.tree.map(jnp.subtract, w, matvec(w)), rhs, stats=backward.throw
        )
        if backward.throw:
            raise_it = functools.partial(_raise_on_adjoint_failure, backward=backward)
            jax.debug.callback(raise_it, info.status, info.iterations, info.residual)
        return u

    matvec = lambda w: jax.tree.map(jnp.subtract, w, jz(w))
    return jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve=solve)


def _zero_tangent(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)
