"""How tight the reference IFT adjoint of cos(JFB, IFT) must be to be a measurement.

Usage::

    python -m benchmarks.alignment                    # the shipped model
    python -m benchmarks.alignment --run DIR          # a trained run folder
    # -> benchmarks/results/alignment_<machine>.{md,json}

``train_and_evaluate`` ends with :func:`jfbjax.training.contraction.gradient_alignment_report`:
the cosine between a trained model's JFB and IFT weight gradients on the first
``--n`` test images (the run's noise draw). The IFT gradient is only a
reference if its adjoint ``(I - J^T) u = v`` is solved, and for a map that
contracts by 0.99 that is hard twice over: GMRES needs many Krylov vectors
per restart, and the Jacobian must be taken at an accurate fixed point,
because ``(I - J)^{-1}`` amplifies the forward residual as much as the
adjoint. This script computes the report for each ``--setting``
(``forward_tol:restart:cycles:method:tol``, forward tol ``run`` meaning the
run's own solver) and tabulates the cosine beside the share of reference
adjoints that reached their tolerance, their worst residual and both
gradient norms. Times are those of the machine as it was: compare them
within one run only.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax.numpy as jnp

from benchmarks.common import exit_status, markdown_table, run_meta, write_result
from jfbjax import pretrained
from jfbjax.backward import GMRES_METHODS
from jfbjax.data.loader import load_data_from_config
from jfbjax.training.contraction import gradient_alignment_report
from jfbjax.training.records import evaluation_images
from jfbjax.training.restore import load_run

__all__ = ["DEFAULT_SETTINGS", "main", "measure"]

#: The report of runs before 2026-12-04 first, then tighter forward solves and
#: larger Krylov spaces; ``1e-5:60:20:incremental:1e-4`` is the report's default now.
DEFAULT_SETTINGS = (
    "run:30:20:batched:1e-6",
    "run:30:20:batched:1e-4",
    "1e-5:30:20:batched:1e-4",
    "1e-5:60:20:batched:1e-4",
    "1e-5:60:20:incremental:1e-4",
    "1e-6:60:20:incremental:1e-4",
)


def _parse_setting(text: str) -> dict:
    parts = text.split(":")
    try:
        fwd, restart, cycles, method, tol = parts
        setting = {
            "forward_tol": None if fwd == "run" else float(fwd),
            "restart": int(restart),
            "cycles": int(cycles),
            "gmres_method": method,
            "tol": float(tol),
        }
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--setting {text!r}: expected forward_tol:restart:cycles:method:tol, "
            "e.g. 1e-5:60:20:incremental:1e-4 (forward_tol 'run': the run's solver)"
        ) from None
    if method not in GMRES_METHODS or min(setting["restart"], setting["cycles"]) < 1:
        raise argparse.ArgumentTypeError(
            f"--setting {text!r}: method must be batched or incremental, restart and cycles >= 1"
        )
    return setting


def measure(run, n: int, settings) -> list[dict]:
    """One row per setting: the alignment report on the run's first ``n`` test images."""
    data = load_data_from_config(run.config)
    _, d_test = evaluation_images(run.config, data, run.blur)
    d, x = jnp.asarray(d_test[:n]), jnp.asarray(data.test[:n])
    rows = []
    for s in settings:
        t0 = time.perf_counter()
        report = gradient_alignment_report(
            run.model,
            d,
            x,
            tol=s["tol"],
            restart=s["restart"],
            cycles=s["cycles"],
            forward_tol=s["forward_tol"],
            gmres_method=s["gmres_method"],
        )
        rows.append({**report, "seconds": time.perf_counter() - t0})
        print(
            f"forward {report['forward_tol']:g}, GMRES({s['restart']}) x {s['cycles']} "
            f"{s['gmres_method']} to {s['tol']:g}: cos {report['cos_jfb_ift']:.4f}, "
            f"{100 * report['ift_adjoint_converged']:.0f}% converged",
            flush=True,
        )
    return rows


def to_markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        f"# cos(JFB, IFT) against the reference adjoint's accuracy ({m['machine']})",
        "",
        f"Command: `{m['command']}`  ",
        f"Device: {m['device']}; jax {m['jax']}; model `{m['model']}`; {m['n']} test "
        f"images (the run's noise draw); wall {m['wall_s']:.0f} s.",
        "",
    ]
    lines += markdown_table(
        [
            "forward tol",
            "GMRES restart x cycles",
            "least squares",
            "adjoint tol",
            "converged",
            "worst residual",
            "cos(JFB, IFT)",
            "‖g_JFB‖",
            "‖g_IFT‖",
            "s",
        ],
        [
            (
                f"{r['forward_tol']:g}",
                f"{r['ift_adjoint_restart']} x {r['ift_adjoint_cycles']}",
                "normal equations" if r["gmres_method"] == "batched" else "Givens",
                f"{r['ift_adjoint_tol']:g}",
                f"{100 * r['ift_adjoint_converged']:.0f}%",
                f"{r['ift_adjoint_residual_max']:.2e}",
                f"{r['cos_jfb_ift']:.4f}",
                f"{r['grad_norm_jfb']:.3e}",
                f"{r['grad_norm_ift']:.3e}",
                f"{r['seconds']:.0f}",
            )
            for r in result["rows"]
        ],
    )
    lines += [
        "",
        "converged: share of the images whose reference adjoint reached the adjoint "
        "tolerance (relative fixed-point residual of u). least squares: how GMRES solves "
        "its small problem per restart (`jax.scipy.sparse.linalg.gmres` solve_method "
        "batched: normal equations; incremental: Givens rotations). nan: the normal "
        "equations broke down in float32.",
        "",
    ]
    return "\n".join(lines)


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", default=None, help="a trained DE-GRAD run folder")
    src.add_argument(
        "--pretrained", default=pretrained.DEFAULT, help="a shipped model (default: %(default)s)"
    )
    p.add_argument("--n", type=int, default=8, help="test images")
    p.add_argument(
        "--setting",
        type=_parse_setting,
        nargs="+",
        default=[_parse_setting(s) for s in DEFAULT_SETTINGS],
        help="forward_tol:restart:cycles:method:tol settings",
    )
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be >= 1")
    start = time.perf_counter()
    trained = load_run(args.run, which="latest") if args.run else pretrained.load(args.pretrained)
    rows = measure(trained, args.n, args.setting)
    result = {"rows": rows}
    result["meta"] = run_meta(
        "benchmarks.alignment", argv, start, model=args.run or args.pretrained, n=args.n
    )
    result["paths"] = write_result(
        args.out, f"alignment_{result['meta']['machine']}", result, to_markdown(result)
    )
    return result


main = exit_status(run)

if __name__ == "__main__":
    sys.exit(main())
