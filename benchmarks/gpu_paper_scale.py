"""Paper-scale training throughput on a GPU: JFB and IFT, float32 and bfloat16.

Usage (one command on the GPU machine, a few minutes on an H200)::

    python -m benchmarks.gpu_paper_scale
    # -> benchmarks/results/gpu_<kind>.{md,json}, e.g. gpu_h200.md

    python -m benchmarks.gpu_paper_scale --quick --out /tmp/bench   # tiny, any device (tests)

The setting is the ``paper`` preset: 128x128 RGB, Gaussian blur 5x5 std 5,
noise 1e-2, DE-GRAD with a 17x64 spectrally normalised DnCNN, batch 32, Adam,
Anderson (m=5, tol 1e-3, 50 iterations), IFT with an Anderson adjoint (tol
1e-4, 50 iterations). For each backward mode (JFB, IFT) and convolution
dtype (float32, bfloat16 with float32 accumulation) it reports

* ms per training step as trained (the preset's tolerance; the mean forward
  iterations are printed) and with exactly 50 forward iterations (``tol=0``);
* images per second and the projected time of the paper's schedule, 8000
  images x 100 epochs = 25,000 steps of 32;
* achieved TFLOP/s: the step's floating-point work over its time, the work
  counted as ``(iterations + 1) x flops(T) + flops(VJP of T)`` (+ the
  adjoint iterations' VJPs for IFT), each term from XLA's cost analysis of
  that piece compiled on its own (a whole step cannot be counted that way:
  the cost analysis counts a while loop's body once). An analytic count of
  the DnCNN convolutions is printed beside it as a check;
* the measured matmul peak of the device (8192^3 products, float32 at JAX's
  default precision and bfloat16), and the step's share of it;
* compiled peak memory and the device's peak-bytes counter.

Refuses to run at full size on a CPU (use ``--quick`` there, or ``--force``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import jfbjax
from benchmarks.common import exit_status, run_meta, write_result
from benchmarks.harness import Bench, backward_mode, build, fixed_solver
from experiments.configs import get_config
from jfbjax.builders import solver_from_config
from jfbjax.models import freeze_spectral_norm
from jfbjax.training.profiling import time_call

EPOCH_IMAGES, EPOCHS = 8000, 100


def _flops(lowered) -> dict:
    """FLOPs of a lowered function: before XLA's optimisations and after compilation."""

    def pick(ca):
        if isinstance(ca, list | tuple):
            ca = ca[0] if ca else {}
        return float((ca or {}).get("flops", 0.0))

    out = {"lowered": pick(lowered.cost_analysis())}
    try:
        out["compiled"] = pick(lowered.compile().cost_analysis())
    except Exception:  # some backends give no analysis of the executable
        out["compiled"] = 0.0
    # Library calls (cuDNN convolutions) may be invisible to the compiled analysis:
    # use the pre-optimisation count unless the executable's is comparable.
    comp, low = out["compiled"], out["lowered"]
    out["used"] = comp if comp >= 0.5 * low else low
    return out


def matmul_peak(n: int, repeat: int) -> dict:
    out = {"n": n}
    for dtype in ("float32", "bfloat16"):
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
        f = jax.jit(lambda a, b: a @ b)
        t = time_call(f, a, a, repeats=repeat)
        out[f"{dtype}_tflops"] = 2 * n**3 / t["min_s"] / 1e12
    return out


def conv_flops(config, batch: int, size: int) -> float:
    """Analytic FLOPs of one DnCNN application: 2 x 9 x c_in x c_out per pixel per layer."""
    m = config.model
    c, f, depth = 3, int(m.features), int(m.depth)
    chans = [c] + [f] * (depth - 1) + [c]
    return float(sum(2 * 9 * a * b for a, b in itertools.pairwise(chans))) * (batch * size * size)


def piece_flops(bench: Bench, size: int) -> dict:
    """FLOPs of one T on the batch, one VJP of T in the parameters (JFB's backward) and
    one VJP of T in x (an adjoint iteration of IFT)."""
    graphdef = bench._graphdef(fixed_solver(bench.config, 1), jfbjax.JFB())
    params, rest = bench._params()
    d, _ = bench._d(size)
    x = bench.blur.adjoint(d)

    def t_of(params, x, d):
        return freeze_spectral_norm(nnx.merge(graphdef, params, rest)).step(x, d)

    def vjp_params(params, x, d):
        y, pull = jax.vjp(lambda p: t_of(p, x, d), params)
        return pull(y)[0]

    def vjp_x(params, x, d):
        y, pull = jax.vjp(lambda x: t_of(params, x, d), x)
        return pull(y)[0]

    return {
        "T": _flops(jax.jit(t_of).lower(params, x, d)),
        "vjp_params": _flops(jax.jit(vjp_params).lower(params, x, d)),
        "vjp_x": _flops(jax.jit(vjp_x).lower(params, x, d)),
    }


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, any device")
    parser.add_argument("--force", action="store_true", help="run at full size on a CPU")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--modes", default="jfb,ift_anderson")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--warm_steps", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    on_cpu = jax.devices()[0].platform == "cpu"
    if on_cpu and not (args.quick or args.force):
        print(
            "benchmarks.gpu_paper_scale is a GPU benchmark: on a CPU run it with --quick "
            "(tiny sizes) or --force",
            file=sys.stderr,
        )
        raise SystemExit(2)
    start = time.perf_counter()
    config = get_config("paper")
    batch, size, iters = int(config.batch_size), int(config.data.image_size), 50
    repeat, warm, n_mm = 5, 5, 8192
    if args.quick:
        config.model.depth, config.model.features = 3, 8
        batch, size, iters, repeat, warm, n_mm = 2, 16, 5, 1, 1, 256
    repeat = args.repeat or repeat
    warm = warm if args.warm_steps is None else args.warm_steps
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]

    print("matmul peak", flush=True)
    peak = matmul_peak(n_mm, repeat)
    base = Bench(config, batch, repeat=repeat, warm_steps=warm, image_size=size)
    trained_solver = solver_from_config(config.solver)
    analytic = conv_flops(config, batch, size)
    rows, adjoint_its = [], {}
    for dtype in dtypes:
        bench = copy.copy(base)  # same (float32) parameters, convolutions in `dtype`
        bench.model = build(config, base.blur, dtype)
        print(f"flops of the pieces ({dtype})", flush=True)
        flops = piece_flops(bench, size)
        for mode in modes:
            for label, solver in (
                ("as trained", trained_solver),
                (f"{iters} iterations", fixed_solver(config, iters)),
            ):
                print(f"  {dtype} {mode} {label}", flush=True)
                r = bench.train_step(mode, iters, size, solver=solver)
                n_fwd = r["mean_iterations"]
                work = (n_fwd + 1) * flops["T"]["used"] + flops["vjp_params"]["used"]
                adjoint = None
                if mode.startswith("ift"):  # counted once per dtype, at the preset's solver
                    if dtype not in adjoint_its:
                        adjoint_its[dtype] = bench.adjoint_iterations(
                            iters, size, solver=trained_solver
                        )
                    adjoint = adjoint_its[dtype]
                    work += (adjoint or 0.0) * flops["vjp_x"]["used"]
                step_s = r["step_ms"] / 1e3
                achieved = work / step_s / 1e12
                rows.append(
                    {
                        "dtype": dtype,
                        "mode": mode,
                        "solver": label,
                        "step_ms": r["step_ms"],
                        "step_min_ms": r["step_min_ms"],
                        "images_per_s": batch / step_s,
                        "projected_hours": EPOCH_IMAGES * EPOCHS / batch * step_s / 3600,
                        "forward_iterations": n_fwd,
                        "adjoint_iterations": adjoint,
                        "step_tflop": work / 1e12,
                        "achieved_tflops": achieved,
                        "fraction_of_matmul_peak": achieved / peak[f"{dtype}_tflops"],
                        "step_peak_bytes": r["step_peak_bytes"],
                        "device_peak_bytes": r["device_peak_bytes"],
                        "compile_s": r["compile_s"],
                        "finite": r["finite"],
                    }
                )
        rows[-1]["flops_pieces"] = flops
    meta = run_meta(
        "benchmarks.gpu_paper_scale",
        argv,
        start,
        batch=batch,
        image_size=size,
        depth=int(config.model.depth),
        features=int(config.model.features),
        solver=str(trained_solver),
        ift=str(backward_mode("ift_anderson", config)),
        fixed_iters=iters,
        repeat=repeat,
        warm_steps=warm,
        quick=args.quick,
    )
    machine = meta["machine"]
    result = {
        "meta": meta,
        "matmul_peak": peak,
        "analytic_dncnn_flops": analytic,
        "rows": rows,
    }
    stem = machine if not on_cpu else "gpu_paper_scale_cpu"
    stem += "_quick" if args.quick else ""
    result["paths"] = write_result(args.out, stem, result, to_markdown(result))
    print(f"wrote {Path(args.out) / stem}.md and .json")
    return result


def to_markdown(result: dict) -> str:
    meta, peak = result["meta"], result["matmul_peak"]

    def gb(b):
        return "n/a" if b is None else f"{b / 2**30:.2f}"

    lines = [
        f"# Paper-scale training throughput on {meta['machine']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; jax {meta['jax']}. DE-GRAD, DnCNN {meta['depth']}x"
        f"{meta['features']} (spectral norm), batch {meta['batch']}, {meta['image_size']}x"
        f"{meta['image_size']} RGB; solver {meta['solver']}; {meta['ift']}; median of "
        f"{meta['repeat']} steps after {meta['warm_steps']} warm-up training steps; wall "
        f"{meta['wall_s']:.0f} s.",
        "",
        f"Matmul peak ({peak['n']}^3): float32 (default precision) "
        f"{peak['float32_tflops']:.3g} TFLOP/s, bfloat16 {peak['bfloat16_tflops']:.3g} TFLOP/s. "
        f"Analytic DnCNN convolution work per application of T: "
        f"{result['analytic_dncnn_flops'] / 1e9:.3g} GFLOP.",
        "",
        "| dtype | backward | forward | ms/step | images/s | 8000 x 100 epochs (h) "
        "| fwd it | adjoint it | TFLOP/step | TFLOP/s | share of matmul peak | peak GiB "
        "| device peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        adj = "" if r["adjoint_iterations"] is None else f"{r['adjoint_iterations']:.3g}"
        lines.append(
            f"| {r['dtype']} | {r['mode']} | {r['solver']} | {r['step_ms']:.4g} "
            f"| {r['images_per_s']:.4g} | {r['projected_hours']:.3g} "
            f"| {r['forward_iterations']:.3g} | {adj} | {r['step_tflop']:.3g} "
            f"| {r['achieved_tflops']:.3g} | {100 * r['fraction_of_matmul_peak']:.1f}% "
            f"| {gb(r['step_peak_bytes'])} | {gb(r['device_peak_bytes'])} |"
        )
    pieces = [r["flops_pieces"] for r in result["rows"] if "flops_pieces" in r]
    if pieces:
        p = pieces[0]
        lines += [
            "",
            "FLOPs of the pieces (XLA cost analysis, lowered / compiled / used): "
            + "; ".join(
                f"{k} {v['lowered'] / 1e9:.3g} / {v['compiled'] / 1e9:.3g} / "
                f"{v['used'] / 1e9:.3g} GFLOP"
                for k, v in p.items()
            )
            + ".",
        ]
    lines.append("")
    return "\n".join(lines)


#: The command line: runs :func:`run` and returns the exit status (0).
main = exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
