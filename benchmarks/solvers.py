"""Forward and backward cost of jfbjax's solvers, side by side with jaxopt and optimistix.

Usage::

    python -m benchmarks.solvers          # writes benchmarks/results/solvers_<machine>.{md,json}
    python -m benchmarks.solvers --quick --out /tmp/bench   # tiny sizes (used by the tests)

Problems (per-sample maps, a vmapped batch):

* ``dense``: ``z <- tanh(W z + U x + b)`` with ``||W||_2 = 0.9``, width
  256 to 4096, batch 64.
* ``conv``: ``z <- tanh(s * conv3x3(z, K) + conv3x3(x, V))`` on 64x64x8
  images with ``s ||K|| <= 0.9`` (kernel Frobenius norm bound), batch 8.
* ``degrad``: the DE-GRAD map ``T(x; d)`` of the shipped model trained with the
  ``cpu`` preset (``jfbjax.pretrained.load()``, spectral normalisation applied
  once) on 32x32 RGB crops blurred and noised as in training, batch 8, from
  ``x0 = A^T d``. Its adjoint contracts slowly, so the backward modes get at
  most 50 iterations there and jaxopt's implicit differentiation (uncapped
  normal-equation CG: minutes per step, ``benchmarks/peers.py``) is not run.

Every solver stops at the same relative residual
``||f(z) - z|| / ||f(z)|| <= tol``. jaxopt's solvers test the absolute
residual ``||f(z) - z||``; they get ``tol * median ||f(z*)||`` so that both
stop at the same accuracy, and the table prints the relative residual each
one reached. jaxopt's Anderson uses ``ridge=1e-5`` absolute (its default);
jfbjax's ridge is relative (see ``jfbjax.Anderson``). jaxopt's ``Broyden``
(a root finder, run on ``f(z) - z`` with a unit step as jfbjax's, not its
default backtracking line search, which doubled the iterations on the dense
map, and its default memory of ``maxiter`` updates: with 20, jfbjax's, it
diverged there) tests ``||f(z) - z||`` too. optimistix's
``fixed_point`` with ``FixedPointIteration`` tests the difference of two
iterates elementwise against ``atol + rtol |z|``; with ``rtol = 0``, the two
norm and ``atol`` the same absolute tolerance it stops at the same point as
the others. optimistix has no Anderson or Broyden fixed-point solver; its
gradient (``ImplicitAdjoint``) needs forward mode, which the backward table
does not include (``benchmarks/peers.py`` reports it).

Times are medians of ``--repeat`` runs of the jitted, compiled function on
the same machine in the same process; backward time is the time of
``value_and_grad`` minus the forward time. Ratios measured side by side are
the point; absolute CPU times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jfbjax
from benchmarks.common import device_description, exit_status, machine_name, write_result
from jfbjax.training.profiling import time_call


def timed(fn, *args, repeat: int) -> float:
    """Median wall time in milliseconds of a compiled call (one warm-up call first)."""
    return 1e3 * time_call(fn, *args, repeats=repeat)["median_s"]


# ---------------------------------------------------------------- problems


def dense_problem(width: int, batch: int, key, slow: bool = False):
    kw, ku, kx, kb = jax.random.split(key, 4)
    w = jax.random.normal(kw, (width, width)) / np.sqrt(width)
    if slow:  # symmetric, eigenvalues spread over [0, 0.97]: Picard needs ~300 steps
        q, _ = jnp.linalg.qr(w)
        w = q @ jnp.diag(jnp.linspace(0.0, 0.97, width)) @ q.T
    else:
        w = 0.9 * w / jnp.linalg.norm(w, 2)
    params = {  # small inputs keep tanh near its linear range: contraction close to 0.9
        "w": w,
        "u": 0.05 * jax.random.normal(ku, (width, 16)) / 4.0,
        "b": 0.01 * jax.random.normal(kb, (width,)),
    }
    x = jax.random.normal(kx, (batch, 16))

    def f(z, p, x):
        return jnp.tanh(p["w"] @ z + p["u"] @ x + p["b"])

    return f, params, x, jnp.zeros((batch, width))


def _conv(x, k):
    return jax.lax.conv_general_dilated(
        x[None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )[0]


def conv_problem(size: int, batch: int, key, channels: int = 8):
    kk, kv, kx = jax.random.split(key, 3)
    k = jax.random.normal(kk, (3, 3, channels, channels))
    probe = jnp.ones((size, size, channels))
    k = k / jfbjax.contraction_estimate(lambda z, k: _conv(z, k), probe, k, iters=50)
    params = {  # spectral norm of the linear part 0.9, small inputs: a slow contraction
        "k": 0.9 * k,
        "v": 0.02 * jax.random.normal(kv, (3, 3, 3, channels)),
    }
    x = jax.random.normal(kx, (batch, size, size, 3))

    def f(z, p, x):
        return jnp.tanh(_conv(z, p["k"]) + _conv(x, p["v"]))

    return f, params, x, jnp.zeros((batch, size, size, channels))


def degrad_problem(size: int, batch: int, seed: int = 0):
    """The DE-GRAD map of the shipped ``cpu`` model on blurred, noisy crops:
    ``f(z, params, d) = T(z; d)`` with the DnCNN's parameters as ``params``."""
    from flax import nnx

    from benchmarks.harness import images
    from jfbjax import pretrained
    from jfbjax.imaging.noise import degrade
    from jfbjax.models import freeze_spectral_norm

    run = pretrained.load()
    graphdef, params, rest = nnx.split(freeze_spectral_norm(run.model), nnx.Param, ...)
    clean = jnp.asarray(images(batch, size, seed=7))
    d = degrade(jax.random.PRNGKey(seed), clean, run.blur, run.noise_std)

    def f(z, p, d):
        return nnx.merge(graphdef, p, rest).step(z, d)

    return f, params, d, run.blur.adjoint(d)


# ---------------------------------------------------------------- solvers


def jfbjax_solve(f, solver, backward):
    def solve(params, x, z0):
        one = lambda x, z0: jfbjax.fixed_point(f, z0, params, x, solver=solver, backward=backward)
        return jax.vmap(one)(x, z0)

    return solve


def jaxopt_solve(f, kind: str, tol: float, max_iter: int):
    """jaxopt's ``kind`` solver ("anderson", "fpi" or "broyden": a root finder on
    ``f(z) - z``, unit step), vmapped over the batch; returns ``(z, iterations)``."""
    import jaxopt

    def solve(params, x, z0):
        def one(x, z0):
            if kind == "anderson":
                s = jaxopt.AndersonAcceleration(f, history_size=5, tol=tol, maxiter=max_iter)
            elif kind == "broyden":
                root = lambda z, params, x: f(z, params, x) - z
                s = jaxopt.Broyden(root, tol=tol, maxiter=max_iter, stepsize=1.0)
            else:
                s = jaxopt.FixedPointIteration(f, tol=tol, maxiter=max_iter)
            out = s.run(z0, params, x)
            return out.params, out.state.iter_num

        return jax.vmap(one)(x, z0)

    return solve


def optimistix_solve(f, tol: float, max_iter: int):
    import optimistix as optx

    def solve(params, x, z0):
        def one(x, z0):
            sol = optx.fixed_point(
                lambda z, a: f(z, a[0], a[1]),
                optx.FixedPointIteration(rtol=0.0, atol=tol, norm=optx.two_norm),
                z0,
                args=(params, x),
                max_steps=max_iter,
                throw=False,
            )
            return sol.value, sol.stats["num_steps"]

        return jax.vmap(one)(x, z0)

    return solve


def relative_residuals(f, params, x, z):
    """Per-sample relative residual of ``z`` (:func:`jfbjax.solvers.relative_residual`)."""
    fz = jax.vmap(lambda z, x: f(z, params, x))(z, x)
    return jax.vmap(jfbjax.solvers.relative_residual)(z, fz)


def run_case(name, f, params, x, z0, tol, max_iter, repeat, peers, backward_max_iter=None,
             jaxopt_backward=True, modes=None):  # fmt: skip
    """One problem: forward solvers (jfbjax and the ``peers`` installed), then the
    backward modes after jfbjax's Anderson forward (adjoints capped at
    ``backward_max_iter``, default ``max_iter``; ``modes``: a subset of the
    backward modes' keys, default all; empty: the forward table only)."""
    row = {"problem": name}
    with_jaxopt = "jaxopt" in peers
    bwd_iter = max_iter if backward_max_iter is None else backward_max_iter
    picard = jfbjax.Picard(tol=tol, max_iter=max_iter)
    anderson = jfbjax.Anderson(m=5, tol=tol, max_iter=max_iter)
    loss = lambda z: jnp.mean(z**2)

    if peers:  # the peers' absolute tolerance from a tight reference fixed point
        z_ref, _ = jax.jit(
            jfbjax_solve(f, jfbjax.Anderson(tol=tol / 10, max_iter=4 * max_iter), "jfb")
        )(params, x, z0)
        fz_norm = float(jnp.median(jnp.sqrt(jnp.sum(z_ref.reshape(len(x), -1) ** 2, 1))))
        abs_tol = tol * fz_norm

    forwards = {
        "picard": jfbjax_solve(f, picard, "jfb"),
        "anderson": jfbjax_solve(f, anderson, "jfb"),
        "broyden": jfbjax_solve(f, jfbjax.Broyden(tol=tol, max_iter=max_iter), "jfb"),
    }
    if with_jaxopt:
        forwards["jaxopt_fpi"] = jaxopt_solve(f, "fpi", abs_tol, max_iter)
        forwards["jaxopt_anderson"] = jaxopt_solve(f, "anderson", abs_tol, max_iter)
        forwards["jaxopt_broyden"] = jaxopt_solve(f, "broyden", abs_tol, max_iter)
    if "optimistix" in peers:
        forwards["optimistix_fpi"] = optimistix_solve(f, abs_tol, max_iter)
    residuals = jax.jit(lambda z: relative_residuals(f, params, x, z))
    compiled = {}
    for key, solve in forwards.items():
        fn = compiled[key] = jax.jit(lambda p, x, z0, solve=solve: solve(p, x, z0))
        z, aux = fn(params, x, z0)
        iters = aux.iterations if isinstance(aux, jfbjax.SolverInfo) else aux
        row[f"fwd_ms_{key}"] = timed(fn, params, x, z0, repeat=repeat)
        row[f"iters_{key}"] = float(jnp.mean(iters))
        row[f"relres_{key}"] = float(jnp.max(residuals(z)))
    if modes is not None and not modes:  # forward only
        return row

    # backward modes on the Anderson forward
    backwards = {
        "jfb": jfbjax.JFB(),
        "ift": jfbjax.IFT("anderson", tol=tol, max_iter=bwd_iter),
        "ift_gmres": jfbjax.IFT("gmres", tol=tol, max_iter=bwd_iter),
        "neumann5": jfbjax.Neumann(5),
        "unrolled": jfbjax.Unrolled(),
    }
    # Unrolled scans a fixed number of steps: give it exactly the steps the forward needed
    z_star, info = compiled["anderson"](params, x, z0)
    unroll_steps = int(jnp.max(info.iterations)) + 1
    row["unrolled_steps"] = unroll_steps
    grads = {}
    if modes is not None:
        backwards = {k: v for k, v in backwards.items() if k in modes or k == "ift"}
    for key, mode in backwards.items():
        solver = anderson
        if key == "unrolled":
            solver = jfbjax.Anderson(m=5, tol=tol, max_iter=unroll_steps)
        solve = jfbjax_solve(f, solver, mode)
        vg = jax.jit(jax.value_and_grad(lambda p, x, z0, solve=solve: loss(solve(p, x, z0)[0])))
        total = timed(vg, params, x, z0, repeat=repeat)
        row[f"step_ms_{key}"] = total
        row[f"bwd_ms_{key}"] = total - row["fwd_ms_anderson"]
        grads[key] = vg(params, x, z0)[1]
    if with_jaxopt and jaxopt_backward:
        solve = jaxopt_solve(f, "anderson", abs_tol, max_iter)
        vg = jax.jit(jax.value_and_grad(lambda p, x, z0: loss(solve(p, x, z0)[0])))
        total = timed(vg, params, x, z0, repeat=repeat)
        row["step_ms_jaxopt_anderson"] = total
        row["bwd_ms_jaxopt_anderson"] = total - row["fwd_ms_jaxopt_anderson"]
        grads["jaxopt"] = vg(params, x, z0)[1]
    for key in grads:
        row[f"cos_to_ift_{key}"] = float(jfbjax.gradient_alignment(grads[key], grads["ift"]))

    # the algorithmic minimum of a JFB backward: linearise f at z* and pull back once
    ct = jax.grad(loss)(z_star)

    @jax.jit
    def one_vjp(params, x, z_star, ct):
        fb = lambda p: jax.vmap(lambda z, x: f(z, p, x))(z_star, x)
        return jax.vjp(fb, params)[1](ct)

    row["vjp_ms"] = timed(one_vjp, params, x, z_star, ct, repeat=repeat)
    row["jfb_bwd_over_vjp"] = row["bwd_ms_jfb"] / row["vjp_ms"]
    row["jfb_step_over_min"] = row["step_ms_jfb"] / (row["fwd_ms_anderson"] + row["vjp_ms"])
    if with_jaxopt:
        row["anderson_fwd_ratio_vs_jaxopt"] = row["fwd_ms_anderson"] / row["fwd_ms_jaxopt_anderson"]
        row["broyden_fwd_ratio_vs_jaxopt"] = row["fwd_ms_broyden"] / row["fwd_ms_jaxopt_broyden"]
        if jaxopt_backward:
            row["ift_bwd_ratio_vs_jaxopt"] = row["bwd_ms_ift"] / row["bwd_ms_jaxopt_anderson"]
    if "optimistix" in peers:
        row["picard_fwd_ratio_vs_optimistix"] = row["fwd_ms_picard"] / row["fwd_ms_optimistix_fpi"]
    return row


def to_markdown(rows, meta) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = [
        f"# Solver benchmark on {meta['machine']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; jax {meta['jax']}; tol {meta['tol']} (relative residual), "
        f"max_iter {meta['max_iter']}, median of {meta['repeat']} runs.",
        "",
        "## Forward: iterations (mean per sample) and time to tolerance",
        "",
        "| problem | Picard it | Picard ms | Anderson it | Anderson ms | Broyden it | Broyden ms "
        "| jaxopt FPI it | jaxopt FPI ms | jaxopt AA it | jaxopt AA ms | jaxopt Broyden it "
        "| jaxopt Broyden ms | optimistix FPI it | optimistix FPI ms | AA ms / jaxopt AA ms "
        "| Broyden ms / jaxopt Broyden ms | Picard ms / optimistix FPI ms |",
        "|" + "---|" * 18,
    ]
    for r in rows:
        cells = [r["problem"]] + [
            fmt(r.get(k, float("nan")))
            for k in (
                "iters_picard",
                "fwd_ms_picard",
                "iters_anderson",
                "fwd_ms_anderson",
                "iters_broyden",
                "fwd_ms_broyden",
                "iters_jaxopt_fpi",
                "fwd_ms_jaxopt_fpi",
                "iters_jaxopt_anderson",
                "fwd_ms_jaxopt_anderson",
                "iters_jaxopt_broyden",
                "fwd_ms_jaxopt_broyden",
                "iters_optimistix_fpi",
                "fwd_ms_optimistix_fpi",
                "anderson_fwd_ratio_vs_jaxopt",
                "broyden_fwd_ratio_vs_jaxopt",
                "picard_fwd_ratio_vs_optimistix",
            )
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Relative residual reached (max over the batch): "
        + "; ".join(
            f"{r['problem']}: "
            + ", ".join(f"{k[7:]} {r[k]:.1e}" for k in r if k.startswith("relres_"))
            for r in rows
        ),
        "",
        "## Backward (ms, after the Anderson forward) and gradient alignment with IFT",
        "",
        "| problem | one VJP of f | JFB | JFB / VJP | JFB step / (fwd + VJP) | IFT (Anderson) "
        "| IFT (GMRES) | Neumann(5) | Unrolled | unrolled steps | jaxopt implicit | IFT / jaxopt "
        "| cos(JFB, IFT) | cos(Neumann5, IFT) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def diff(r, k):  # a time difference below the timing noise has no size to show
        v = r.get(k, float("nan"))
        return "< noise" if v < 0 else fmt(v)

    for r in rows:
        cells = [r["problem"]] + [
            diff(r, k)
            for k in (
                "vjp_ms",
                "bwd_ms_jfb",
                "jfb_bwd_over_vjp",
                "jfb_step_over_min",
                "bwd_ms_ift",
                "bwd_ms_ift_gmres",
                "bwd_ms_neumann5",
                "bwd_ms_unrolled",
                "unrolled_steps",
                "bwd_ms_jaxopt_anderson",
                "ift_bwd_ratio_vs_jaxopt",
                "cos_to_ift_jfb",
                "cos_to_ift_neumann5",
            )
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "A backward time is a training step's time minus the forward's, each a median;",
        "`< noise` marks a difference below zero, where the forward's run-to-run",
        "spread (per-sample iteration counts under `vmap`) is larger than the backward.",
        "",
    ]
    return "\n".join(lines)


def run(argv=None) -> dict:
    """Runs the benchmark of ``argv`` (the flags above); returns ``{"meta", "rows"}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--max_iter", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no_peers",
        "--no_jaxopt",
        action="store_true",
        dest="no_peers",
        help="skip jaxopt and optimistix (--no_jaxopt: the old spelling)",
    )
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    peers = set()
    for peer in () if args.no_peers else ("jaxopt", "optimistix"):
        try:
            importlib.import_module(peer)
            peers.add(peer)
        except ImportError:
            print(f"{peer} not installed (pip install -e '.[peers]'): skipping it")

    key = jax.random.PRNGKey(0)
    if args.quick:
        cases = [
            ("dense-32 x8", dense_problem(32, 8, key)),
            ("conv-16 x2", conv_problem(16, 2, key)),
            ("degrad-16 x2", degrad_problem(16, 2)),
        ]
        repeat = 2
    else:
        cases = [(f"dense-{w} x64", dense_problem(w, 64, key)) for w in (256, 1024, 4096)] + [
            ("dense-1024-slow x64", dense_problem(1024, 64, key, slow=True)),
            ("conv-64 x8", conv_problem(64, 8, key)),
            ("degrad-32 x8", degrad_problem(32, 8)),
        ]
        repeat = args.repeat
    rows = []
    for name, (f, params, x, z0) in cases:
        print(f"running {name} ...", flush=True)
        degrad = name.startswith("degrad")
        rows.append(
            run_case(name, f, params, x, z0, args.tol, args.max_iter, repeat, peers,
                     backward_max_iter=(5 if args.quick else 50) if degrad else None,
                     jaxopt_backward=not degrad,
                     modes=() if degrad and args.quick else None)
        )  # fmt: skip
    machine = machine_name()
    meta = {
        "machine": machine,
        "device": device_description(),
        "jax": jax.__version__,
        "tol": args.tol,
        "max_iter": args.max_iter,
        "repeat": repeat,
        "command": "python -m benchmarks.solvers" + (" --quick" if args.quick else ""),
    }
    stem = f"solvers_{machine}" + ("_quick" if args.quick else "")
    result = {"meta": meta, "rows": rows}
    write_result(args.out, stem, result, to_markdown(rows, meta))
    print(f"wrote {Path(args.out) / stem}.md and .json")
    return result


#: The command line: runs :func:`run` and returns the exit status (0).
main = exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
