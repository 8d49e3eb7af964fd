"""How much adjoint solve IFT training needs: converged share per solver and budget.

Usage::

    python -m benchmarks.adjoint_budget --run results/cpu/runs/ift/seed0
    # -> benchmarks/results/adjoint_budget_<machine>.{md,json}

``benchmarks.adjoint`` looks at validation images at a tight forward solve.
Training sees something else: random training crops, a forward solve stopped
at the run's tolerance, and a per-sample adjoint with a fixed budget. This
script reproduces that situation for a trained run. For ``--batches``
training batches (the run's data, crops and noise level) it solves the
forward problem with the run's solver at each ``--fwd_tol``, takes the
gradient of the training loss with IFT, and counts the per-sample adjoint
solves that reached the run's adjoint tolerance, for each adjoint setting in
``--adjoint`` (``solver:max_iter``; for GMRES ``max_iter`` counts restart
cycles of 20 Krylov vectors). It also reports the contraction factor
``||dT/dx||_2`` at the fixed points, so the failing samples can be matched
with the map's contraction there. Times are those of the shared machine:
compare them within one run only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jfbjax
from benchmarks.common import exit_status, markdown_table, run_meta, write_result
from jfbjax.data.loader import load_data_from_config
from jfbjax.imaging.noise import degrade
from jfbjax.models.dncnn import freeze_spectral_norm
from jfbjax.training.contraction import AdjointStats, contraction_factors
from jfbjax.training.restore import load_run
from jfbjax.training.steps import mse_loss

__all__ = ["main", "measure"]


def _parse_adjoint(text: str) -> tuple[str, int]:
    solver, _, budget = text.partition(":")
    if solver not in ("anderson", "picard", "gmres") or not budget.isdigit():
        raise argparse.ArgumentTypeError(f"--adjoint {text!r}: expected e.g. anderson:50, gmres:5")
    return solver, int(budget)


def measure(run, batches: int, fwd_tols, adjoints, tol: float) -> list[dict]:
    """One row per (forward tol, adjoint setting): converged solves over all batches."""
    config = run.config
    data = load_data_from_config(config)
    model = run.model
    batch_size = int(config.batch_size)
    key = jax.random.PRNGKey(int(config.seed) + 1000)
    xs = [jnp.asarray(data.train_batch(b, batch_size, int(config.seed))) for b in range(batches)]
    ds = [degrade(jax.random.fold_in(key, b), x, run.blur, run.noise_std) for b, x in enumerate(xs)]
    original = model.solver, model.backward, model.backward_callback
    run_tol = float(config.solver.tol)
    try:
        return _measure(model, original[0], xs, ds, fwd_tols, adjoints, tol, run_tol)
    finally:  # the run's model is left as it was loaded
        model.solver, model.backward, model.backward_callback = original


def _measure(model, run_solver, xs, ds, fwd_tols, adjoints, tol, run_tol) -> list[dict]:
    batches = len(xs)
    rows = []
    for fwd_tol in fwd_tols:
        # The run's solver at its own tolerance or looser; 300 iterations for a tighter one.
        solver = dataclasses.replace(run_solver, tol=float(fwd_tol))
        if fwd_tol < run_tol:
            solver = dataclasses.replace(solver, max_iter=300)
        model.solver = solver
        g, p, r = nnx.split(model, nnx.Param, ...)

        @jax.jit
        def factors_of(p, d, g=g, r=r):
            m = freeze_spectral_norm(nnx.merge(g, p, r))
            return contraction_factors(m.step, m(d)[0], d, 20)

        factors = np.concatenate([np.asarray(factors_of(p, d)) for d in ds])
        for name, budget in adjoints:
            model.backward = jfbjax.IFT(name, tol=tol, max_iter=budget)
            stats = AdjointStats()
            model.backward_callback = stats
            g, p, r = nnx.split(model, nnx.Param, ...)

            @jax.jit
            def grad(p, d, x, g=g, r=r):
                return jax.grad(lambda p: mse_loss(nnx.merge(g, p, r)(d)[0], x))(p)

            jax.block_until_ready(grad(p, ds[0], xs[0]))  # compile (counted, then reset)
            stats.reset()
            t0 = time.perf_counter()
            for x, d in zip(xs, ds, strict=True):
                jax.block_until_ready(grad(p, d, x))
            seconds = (time.perf_counter() - t0) / batches
            rows.append(
                {
                    "fwd_tol": float(fwd_tol),
                    "adjoint": name,
                    "budget": budget,
                    "converged": stats.converged,
                    "total": stats.total,
                    "fraction": stats.fraction,
                    "s_per_batch": seconds,
                    "contraction_mean": float(factors.mean()),
                    "contraction_max": float(factors.max()),
                }
            )
            print(
                f"fwd tol {fwd_tol:g}, {name}:{budget}: {stats.converged}/{stats.total} "
                f"converged, {seconds:.2f} s per batch",
                flush=True,
            )
    return rows


def to_markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        f"# IFT adjoint budget on training batches ({m['machine']})",
        "",
        f"Command: `{m['command']}`  ",
        f"Device: {m['device']}; jax {m['jax']}; run `{m['run']}`; "
        f"{m['batches']} training batches of {m['batch_size']} (the run's crops and noise); "
        f"adjoint tolerance {m['tol']:g}; wall {m['wall_s']:.0f} s.",
        "",
    ]
    lines += markdown_table(
        [
            "forward tol",
            "adjoint (budget)",
            "converged",
            "s / batch (fwd + bwd)",
            "contraction mean / max",
        ],
        [
            (
                f"{r['fwd_tol']:g}",
                f"{r['adjoint']} ({r['budget']}"
                + (" cycles of 20)" if r["adjoint"] == "gmres" else " iterations)"),
                f"{r['converged']}/{r['total']} ({100 * r['fraction']:.0f}%)",
                f"{r['s_per_batch']:.2f}",
                f"{r['contraction_mean']:.4f} / {r['contraction_max']:.4f}",
            )
            for r in result["rows"]
        ],
    )
    lines += [
        "",
        "converged: per-sample adjoint solves that reached the tolerance (status CONVERGED "
        "reported by the backward pass). contraction: ‖dT/dx‖₂ at the forward fixed points "
        "of the same batches (20 power-iteration steps).",
        "",
    ]
    return "\n".join(lines)


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a trained DE-GRAD run folder")
    p.add_argument("--batches", type=int, default=4, help="training batches")
    p.add_argument("--fwd_tol", type=float, nargs="+", default=[1e-3, 1e-5])
    p.add_argument(
        "--adjoint",
        type=_parse_adjoint,
        nargs="+",
        default=[("anderson", 50), ("anderson", 150), ("gmres", 5)],
        help="solver:max_iter settings (anderson, picard, gmres)",
    )
    p.add_argument("--tol", type=float, default=None, help="adjoint tolerance (default: run's)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.batches < 1:
        p.error("--batches must be >= 1")
    start = time.perf_counter()
    run = load_run(args.run, which="latest")
    tol = float(run.config.backward.tol) if args.tol is None else args.tol
    rows = measure(run, args.batches, args.fwd_tol, args.adjoint, tol)
    result = {"rows": rows}
    result["meta"] = run_meta(
        "benchmarks.adjoint_budget",
        argv,
        start,
        run=args.run,
        batches=args.batches,
        batch_size=int(run.config.batch_size),
        tol=tol,
    )
    result["paths"] = write_result(
        args.out, f"adjoint_budget_{result['meta']['machine']}", result, to_markdown(result)
    )
    return result


#: The command line: runs :func:`run` and returns the exit status (0).
main = exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
