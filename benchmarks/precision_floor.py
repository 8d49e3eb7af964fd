"""How far low-precision convolutions move T, and what that does to the solve.

Usage::

    python -m benchmarks.precision_floor --run results/cpu_bf16/runs/jfb/seed0
    # -> benchmarks/results/precision_floor_<machine>.{md,json}

For a trained DE-GRAD run whose DnCNN computes in bfloat16 (or float16), the
same parameters are evaluated with four compute-dtype assignments: the run's
(every convolution low), the first convolution in float32 (R's input
``x`` is then not rounded), the first and last in float32, and every layer
in float32. For each one, on ``--n`` validation images:

* the noise floor ``||T_v(x*) - T_32(x*)|| / ||T_32(x*)||`` at the float32
  fixed point ``x*`` (solved to tol 1e-5): the smallest relative residual a
  solve with that variant can be expected to see;
* the mean Anderson iterations and the fraction converged at the run's own
  solver settings (tolerance and iteration cap).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.common import exit_status, markdown_table, run_meta, write_result
from jfbjax.data.loader import load_data_from_config
from jfbjax.models import freeze_spectral_norm
from jfbjax.solvers import Anderson, iterate
from jfbjax.training.records import evaluation_images
from jfbjax.training.restore import load_run

#: Layers computed in float32 in each variant; the others use the run's low dtype.
VARIANTS = {
    "all low precision": (),
    "first conv float32": (0,),
    "first + last conv float32": (0, -1),
    "all float32": None,
}


def _variant(model, layers):
    m = nnx.clone(model)
    convs = m.regulariser.layers
    high = set(range(len(convs))) if layers is None else {i % len(convs) for i in layers}
    for i, conv in enumerate(convs):
        conv.dtype = jnp.dtype("float32") if i in high else m.regulariser.dtype
    return m


def measure(run_dir: str, n: int) -> dict:
    run = load_run(run_dir)
    reg = run.model.regulariser
    if getattr(reg, "dtype", jnp.float32) == jnp.float32:
        raise ValueError(f"{run_dir}: its DnCNN computes in float32; nothing to compare")
    data = load_data_from_config(run.config)
    d_val, _ = evaluation_images(run.config, data, run.blur)
    if not 1 <= n <= len(d_val):
        raise ValueError(f"--n must be in 1..{len(d_val)}, got {n}")
    d = jnp.asarray(d_val[:n])
    base = freeze_spectral_norm(run.model)
    models = {name: _variant(base, layers) for name, layers in VARIANTS.items()}
    ref = models["all float32"]
    solver = Anderson(tol=float(run.config.solver.tol), max_iter=int(run.config.solver.max_iter))

    def solve(m, di, s):
        return iterate(s, lambda x: m.step(x, di), m.start(di))

    x_star, _ = jax.vmap(lambda di: solve(ref, di, Anderson(tol=1e-5, max_iter=300)))(d)
    t_ref = jax.vmap(ref.step)(x_star, d)
    rows = []
    for name, m in models.items():
        t_v = jax.vmap(m.step)(x_star, d)
        floor = jnp.linalg.norm((t_v - t_ref).reshape(n, -1), axis=1) / jnp.linalg.norm(
            t_ref.reshape(n, -1), axis=1
        )
        _, info = jax.vmap(lambda di, m=m: solve(m, di, solver))(d)
        rows.append(
            {
                "variant": name,
                "noise_floor": float(floor.mean()),
                "iterations": float(info.iterations.mean()),
                "converged": float((info.status == 0).mean()),
            }
        )
        print(f"  {name}: {rows[-1]}", flush=True)
    return {
        "rows": rows,
        "dtype": jnp.dtype(reg.dtype).name,
        "tol": solver.tol,
        "max_iter": solver.max_iter,
    }


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a trained DE-GRAD run with model.dtype != float32")
    p.add_argument("--n", type=int, default=8, help="validation images")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    start = time.perf_counter()
    result = measure(args.run, args.n)
    meta = run_meta("benchmarks.precision_floor", argv, start, run=args.run, n=args.n)
    machine = meta["machine"]
    result["meta"] = meta
    lines = [
        f"# Low-precision convolutions in T: noise floor and solve ({machine})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; jax {meta['jax']}; run `{args.run}` (convolutions in "
        f"{result['dtype']}); {args.n} validation images; Anderson tol {result['tol']:g}, "
        f"max {result['max_iter']}; wall {meta['wall_s']:.0f} s.",
        "",
        *markdown_table(
            ["compute dtypes", "noise floor at x*", "mean iterations", "converged"],
            [
                [
                    r["variant"],
                    f"{r['noise_floor']:.2e}",
                    f"{r['iterations']:.1f}",
                    f"{100 * r['converged']:.0f}%",
                ]
                for r in result["rows"]
            ],
        ),
    ]
    write_result(args.out, f"precision_floor_{machine}", result, "\n".join(lines) + "\n")
    return result


#: The command line: runs :func:`run` and returns the exit status (0).
main = exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
