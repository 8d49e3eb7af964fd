"""Why IFT's adjoint solve stops at its iteration cap on DE-GRAD: contraction.

Usage::

    python -m benchmarks.adjoint --run results/cpu_paper_map/runs/ift/seed0   # a trained run folder
    python -m benchmarks.adjoint --run DIR --x64                     # the same in float64
    # -> benchmarks/results/adjoint_<machine>.{md,json}

For ``--n`` validation images of the run (its own blur, noise draw and
trained parameters) it

* solves the forward fixed point ``x* = T(x*)`` far past the training
  tolerance (Anderson, ``--fwd_tol``, ``--fwd_iters``) and reports the
  residual reached;
* estimates ``||dT/dx||_2`` at ``x*`` (power iteration,
  :func:`jfbjax.contraction_estimate`), and the same for the data step alone,
  ``x -> x - eta A^T (A x - d)``, which has no learned part: ``1 - eta
  lambda_min(A^T A)`` bounds how strongly any regulariser must contract;
* runs the adjoint equation of IFT, ``u = v + J^T u`` with ``v`` the gradient
  of the training loss, with Picard, Anderson (the default IFT adjoint) and
  GMRES, ``tol=0`` for a fixed count, and reports the relative residual
  after 10 and 50 iterations, its minimum, and the first iteration at which
  it is below ``--tol`` (the training preset's adjoint tolerance).

A norm ``q`` close to 1 means Picard needs about ``log(tol) / log(q)``
iterations; at ``q = 0.995`` and ``tol = 1e-4`` that is ~1800.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jfbjax
from benchmarks.common import exit_status, markdown_table, run_meta, write_result
from jfbjax.data.loader import load_data_from_config
from jfbjax.models import freeze_spectral_norm
from jfbjax.solvers import Anderson, Picard, iterate
from jfbjax.training.records import evaluation_images
from jfbjax.training.restore import Run, load_run


def _first_below(trace: np.ndarray, tol: float) -> int | None:
    hit = np.flatnonzero(trace <= tol)
    return int(hit[0]) + 1 if hit.size else None


def measure(run: Run, n: int, tol: float, fwd_tol: float, fwd_iters: int, iters: int) -> dict:
    """The per-image measurements (see the module docstring) for a loaded run."""
    config = run.config
    data = load_data_from_config(config)
    d_val, _ = evaluation_images(config, data, run.blur)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    if n > len(d_val):
        raise ValueError(f"--n {n}: the run has only {len(d_val)} validation images")
    graphdef, state = nnx.split(freeze_spectral_norm(run.model))
    state = jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state
    )
    model = nnx.merge(graphdef, state)
    eta = float(model.eta)
    blur = model.blur

    @jax.jit
    def one(d, clean):
        def T(x):
            return model.step(x, d)

        x_star, info = iterate(Anderson(tol=fwd_tol, max_iter=fwd_iters), T, model.start(d))
        norm_T = jfbjax.contraction_estimate(lambda x: T(x), x_star, iters=iters)
        data_step = lambda x: x - eta * blur.adjoint(blur.apply(x) - d)
        norm_data = jfbjax.contraction_estimate(data_step, x_star, iters=iters)
        v = 2.0 * (x_star - clean) / x_star.size  # gradient of the mean squared error
        _, pull = jax.vjp(T, x_star)
        vjp = lambda u: pull(u)[0]
        adj = lambda u: v + vjp(u)
        traces = {}
        for name, solver in (
            ("picard", Picard(tol=0.0, max_iter=iters)),
            ("anderson", Anderson(tol=0.0, max_iter=iters)),
        ):
            traces[name] = iterate(solver, adj, v, differentiable=True, trace=True)[2]
        _, gm = jfbjax.IFT("gmres", tol=tol, max_iter=max(1, iters // 20)).adjoint(
            vjp, v, stats=True
        )
        return info, norm_T, norm_data, traces, gm.residual

    rows = []
    for i in range(n):
        d = jnp.asarray(d_val[i], dtype)
        clean = jnp.asarray(data.val[i], dtype)
        info, norm_T, norm_data, traces, gm_res = jax.device_get(one(d, clean))
        row = {
            "image": i,
            "fwd_iterations": int(info.iterations),
            "fwd_residual": float(info.residual),
            "norm_dT": float(norm_T),
            "norm_data_step": float(norm_data),
            "picard_iters_to_tol_estimate": math.log(tol) / math.log(float(norm_T))
            if 0 < float(norm_T) < 1
            else None,
            "gmres_residual": float(gm_res),
        }
        for name, tr in traces.items():
            tr = np.asarray(tr)
            row[f"{name}_res10"] = float(tr[min(9, len(tr) - 1)])
            row[f"{name}_res50"] = float(tr[min(49, len(tr) - 1)])
            row[f"{name}_min"] = float(tr.min())
            row[f"{name}_first_below_tol"] = _first_below(tr, tol)
        rows.append(row)
        print(f"  image {i}: ||dT/dx|| {row['norm_dT']:.4f}", flush=True)
    return {"rows": rows, "eta": eta, "dtype": jnp.dtype(dtype).name}


def to_markdown(result: dict) -> str:
    meta = result["meta"]

    def f(v):
        return "never" if v is None else (f"{v:.2e}" if isinstance(v, float) else str(v))

    header = [
        "image",
        "fwd it",
        "fwd residual",
        "‖dT/dx‖",
        "‖data step‖",
        "Picard it to tol (est.)",
        "Picard res @10 / @50 / min",
        "Anderson res @10 / @50 / min",
        "Anderson first ≤ tol",
        f"GMRES residual ({meta['gmres_matvecs']} matvecs)",
    ]
    rows = []
    for r in result["rows"]:
        est = r["picard_iters_to_tol_estimate"]
        rows.append(
            [
                r["image"],
                r["fwd_iterations"],
                f(r["fwd_residual"]),
                f"{r['norm_dT']:.4f}",
                f"{r['norm_data_step']:.4f}",
                "–" if est is None else f"{est:.0f}",
                " / ".join(f(r[f"picard_{k}"]) for k in ("res10", "res50", "min")),
                " / ".join(f(r[f"anderson_{k}"]) for k in ("res10", "res50", "min")),
                f(r["anderson_first_below_tol"]),
                f(r["gmres_residual"]),
            ]
        )
    lines = [
        f"# IFT's adjoint on the trained DE-GRAD map ({meta['machine']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; jax {meta['jax']}; {meta['dtype']}; run `{meta['run']}` "
        f"(eta {meta['eta']:.4g}); forward Anderson to tol {meta['fwd_tol']:g} (max "
        f"{meta['fwd_iters']}); adjoint `u = v + J^T u` from `u = v`, {meta['iters']} "
        f"iterations, tol {meta['tol']:g}; wall {meta['wall_s']:.0f} s.",
        "",
        *markdown_table(header, rows),
        "",
        "‖dT/dx‖: power-iteration estimate of the spectral norm at the fixed point; "
        "‖data step‖: the same for `x - eta A^T (A x - d)` alone. Picard it to tol (est.): "
        "log(tol) / log(‖dT/dx‖).",
    ]
    return "\n".join(lines) + "\n"


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a trained DE-GRAD run folder")
    p.add_argument("--n", type=int, default=4, help="validation images")
    p.add_argument("--tol", type=float, default=None, help="adjoint tolerance (default: run's)")
    p.add_argument("--fwd_tol", type=float, default=1e-6)
    p.add_argument("--fwd_iters", type=int, default=300)
    p.add_argument("--iters", type=int, default=200, help="adjoint iterations (and power steps)")
    p.add_argument("--x64", action="store_true", help="everything in float64")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.n < 1 or args.iters < 1 or args.fwd_iters < 1:
        p.error("--n, --iters and --fwd_iters must be >= 1")
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    run = load_run(args.run)
    tol = float(run.config.backward.tol) if args.tol is None else args.tol
    result = measure(run, args.n, tol, args.fwd_tol, args.fwd_iters, args.iters)
    result["meta"] = run_meta(
        "benchmarks.adjoint",
        argv,
        start,
        dtype=result.pop("dtype"),
        eta=result.pop("eta"),
        run=args.run,
        tol=tol,
        fwd_tol=args.fwd_tol,
        fwd_iters=args.fwd_iters,
        iters=args.iters,
        gmres_matvecs=20 * max(1, args.iters // 20),
    )
    stem = f"adjoint_{result['meta']['machine']}" + ("_x64" if args.x64 else "")
    result["paths"] = write_result(args.out, stem, result, to_markdown(result))
    return result


#: The command line: runs :func:`run` and returns the exit status (0).
main = exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
