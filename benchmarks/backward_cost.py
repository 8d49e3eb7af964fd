"""Cost of one DE-GRAD training step by backward mode: time and peak memory
against the forward iteration count and against the image size.

Usage::

    python -m benchmarks.backward_cost                  # cpu preset (a few minutes, 2 cores)
    python -m benchmarks.backward_cost --quick --out /tmp/bench   # tiny sizes (the tests)
    python -m benchmarks.backward_cost --preset paper   # GPU: 17x64 DnCNN, batch 32, 128x128

writes ``benchmarks/results/backward_cost_<machine>.{md,json,png}`` with
``<machine>`` = ``cpu`` or e.g. ``gpu_h200`` (from ``jax.devices()[0].device_kind``).

What one measurement is: the jitted, compiled training step of
:func:`jfbjax.training.make_train_step` (noise draw, the per-sample
fixed-point solve, the backward mode, gradient clipping and the Adam update;
the state is donated, as in training) on the DE-GRAD map with the preset's
spectrally normalised DnCNN regulariser. The forward solver is Anderson
(m=5) with ``tol=0``, so it runs exactly ``max_iter`` iterations in every
mode and the modes differ only in their backward:

* ``jfb``: JFB, one VJP of T;
* ``ift_anderson`` / ``ift_gmres``: IFT with the preset's adjoint tolerance
  and iteration cap (``config.backward.tol``, ``max_iter``; GMRES: restarts of 20);
* ``neumann5``: the truncated Neumann series with 5 terms;
* ``unrolled``: backpropagation through the forward iterations (a scan).

Beside the step: the forward solve alone (:func:`make_eval_step`) and one VJP
of T with respect to the parameters at the fixed point, once on the whole
batch (the algorithmic minimum of a JFB backward) and once per sample under
``vmap`` (what ``fixed_point``'s backward does inside DE-GRAD's per-sample
``vmap``: per-sample parameter cotangents, summed afterwards), so the ratio
``JFB step / (forward + one VJP)`` can be read off.

Times: :func:`jfbjax.training.profiling.time_call` (median of ``--repeat``
calls after one warm-up call; compilation is excluded and reported apart).
Memory: XLA's memory analysis of the compiled executable
(:func:`jfbjax.training.profiling.compiled_memory`, deterministic), and on a
GPU the device's peak-bytes counter (a running maximum over the process, so
only its growth between rows means anything).

The model is the preset's (``experiments.configs``), warmed by a few JFB
steps (Adam at 1e-3, the preset's solver) so that the regulariser is not the
zero map it starts as, or the trained model of a run folder (``--run``). The
images are crops of the built-in photographs: the content changes nothing in
fixed-iteration costs, but IFT's adjoint iterations depend on the map there.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import jfbjax
from benchmarks.common import exit_status, markdown_table, run_meta, write_result
from benchmarks.harness import MODES, Bench, backward_mode, build, fixed_solver
from experiments.configs import get_config

#: Settings of the presets. ``iters``: forward iteration counts of the
#: iteration sweep (at ``image_size``); ``sizes``: image sizes of the size
#: sweep (at ``size_iters`` iterations, modes ``size_modes``; on the CPU the
#: size sweep leaves out GMRES and Neumann, which the iteration sweep covers).
SWEEP_PRESETS = {
    "cpu": dict(
        config="cpu",
        batch=4,
        image_size=32,
        iters=(10, 25, 50, 100, 200),
        sizes=(16, 32, 64, 96, 128),
        size_iters=10,
        modes=MODES,
        size_modes=("jfb", "ift_anderson", "unrolled"),
        # The default stays within a few minutes on two cores: Unrolled up to 50
        # iterations and 64 px, GMRES (~1000 VJPs a step here) at the ends of the sweep.
        # --full lifts the three caps and times 3 calls instead of 2.
        unrolled_max_iter=50,
        size_unrolled_max=64,
        gmres_iters=(10, 200),
        repeat=2,
        warm_steps=10,
    ),
    "paper": dict(
        config="paper",
        batch=32,
        image_size=128,
        iters=(10, 25, 50, 100, 200),
        sizes=(16, 32, 64, 96, 128),
        size_iters=50,
        # GMRES (up to 50 restarts of 20 VJPs) is left out at paper scale, and Unrolled
        # is capped: it stores ~2.3 GB of activations per iteration at 17x64, 32x128x128.
        modes=("jfb", "ift_anderson", "neumann5", "unrolled"),
        size_modes=("jfb", "ift_anderson", "neumann5", "unrolled"),
        unrolled_max_iter=25,
        repeat=5,
        warm_steps=5,
    ),
}
QUICK = dict(
    unrolled_max_iter=None,
    size_unrolled_max=None,
    gmres_iters=None,
    size_modes=("jfb", "unrolled"),
    depth=3,
    features=8,
    batch=2,
    image_size=16,
    iters=(5, 10, 20),
    sizes=(8, 16),
    size_iters=5,
    repeat=1,
    warm_steps=1,
)


# ---------------------------------------------------------------- Anderson history write


class ScatterAnderson(jfbjax.Anderson):
    """Anderson as before the one-hot write: ``h.at[slot].set(x)`` (a scatter under vmap)."""

    def record(self, state, z, fz):
        from jfbjax.solvers import AndersonState, acc_dtype

        slot = state.count % self.m
        g = jax.tree.map(jnp.subtract, fz, z)
        fs = jax.tree.map(lambda h, x: h.at[slot].set(x), state.fs, fz)
        gs = jax.tree.map(lambda h, x: h.at[slot].set(x), state.gs, g)

        def row_part(h, x):
            a = acc_dtype(x.dtype)
            return h.reshape(self.m, -1).astype(a) @ x.reshape(-1).astype(a)

        parts = jax.tree.leaves(jax.tree.map(row_part, gs, g))
        row = sum(parts[1:], parts[0]).astype(state.gram.dtype)
        gram = state.gram.at[slot, :].set(row).at[:, slot].set(row)
        return AndersonState(fs, gs, gram, state.count + 1)


def anderson_write(quick: bool, repeat: int, cases=((1e-4, 400), (0.0, 20))) -> dict:
    """Anderson forward time, scatter write vs one-hot write, on benchmarks.solvers' conv map.

    Both variants and Picard run interleaved (round robin) so that a loaded
    machine slows them alike; the minimum over rounds is reported too.
    """
    from benchmarks.solvers import conv_problem, jfbjax_solve

    size, batch = (16, 2) if quick else (64, 8)
    f, params, x, z0 = conv_problem(size, batch, jax.random.PRNGKey(0))
    rows = []
    for tol, iters in cases:
        fns = {
            "picard": jfbjax.Picard(tol=tol, max_iter=iters),
            "anderson_scatter": ScatterAnderson(m=5, tol=tol, max_iter=iters),
            "anderson_onehot": jfbjax.Anderson(m=5, tol=tol, max_iter=iters),
        }
        fns = {k: jax.jit(jfbjax_solve(f, s, "jfb")) for k, s in fns.items()}
        hlo = {k: fn.lower(params, x, z0).compile().as_text() for k, fn in fns.items()}
        its, zs = {}, {}
        for k, fn in fns.items():
            zs[k], info = jax.block_until_ready(fn(params, x, z0))
            its[k] = float(jnp.mean(info.iterations))
        times = {k: [] for k in fns}
        for _ in range(max(repeat, 1) * 3):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(params, x, z0))
                times[k].append(time.perf_counter() - t0)
        row = {"problem": f"conv-{size} x{batch}", "tol": tol, "max_iter": iters}
        for k in fns:
            row[f"{k}_ms"] = 1e3 * statistics.median(times[k])
            row[f"{k}_min_ms"] = 1e3 * min(times[k])
            row[f"{k}_iters"] = its[k]
            row[f"{k}_scatters"] = hlo[k].count(" scatter(")
        row["onehot_over_scatter"] = row["anderson_onehot_ms"] / row["anderson_scatter_ms"]
        diff = zs["anderson_onehot"] - zs["anderson_scatter"]
        row["max_abs_diff"] = float(jnp.max(jnp.abs(diff)))
        rows.append(row)
    return {"rows": rows}


# ---------------------------------------------------------------- mixed precision


def mixed_precision(bench: Bench, size: int, iters: int) -> dict:
    """JFB train step, float32 vs bfloat16 convolutions, from the same (warmed) parameters."""
    out = {"image_size": size, "iters": iters, "batch": bench.batch}
    low = copy.copy(bench)
    low.model = build(bench.config, bench.blur, "bfloat16")
    for dtype, b in (("float32", bench), ("bfloat16", low)):
        r = b.train_step("jfb", iters, size)
        out[f"{dtype}_step_ms"] = r["step_ms"]
        out[f"{dtype}_step_peak_bytes"] = r["step_peak_bytes"]
    # closeness of the fixed points and of the JFB gradients, same float32 parameters
    d, clean = bench._d(size)
    params, rest = bench._params()
    solver = fixed_solver(bench.config, iters)
    res = {}
    for dtype, b in (("float32", bench), ("bfloat16", low)):
        gd = b._graphdef(solver, jfbjax.JFB())

        def loss(p, r, d, gd=gd):
            x, _ = nnx.merge(gd, p, r)(d)
            return jnp.mean((x - clean) ** 2), x

        (_, x), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, rest, d)
        res[dtype] = (x, g)
    (x32, g32), (x16, g16) = res["float32"], res["bfloat16"]
    out["rel_diff_fixed_point"] = float(jnp.linalg.norm(x16 - x32) / jnp.linalg.norm(x32))
    out["cos_grad"] = float(jfbjax.gradient_alignment(g16, g32))
    out["bf16_speedup"] = out["float32_step_ms"] / out["bfloat16_step_ms"]
    return out


# ---------------------------------------------------------------- report


def _mb(b):
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def summarise(result: dict) -> dict:
    rows = result["iterations"]
    slopes = {}
    for mode in result["meta"]["modes"]:  # from each mode's fewest to its most iterations
        by = {r["iters"]: r for r in rows if r["mode"] == mode}
        if len(by) >= 2:
            lo, hi = min(by), max(by)
            m0, m1 = by[lo]["step_peak_bytes"], by[hi]["step_peak_bytes"]
            slopes[mode] = {
                "iters": [lo, hi],
                "peak_bytes": [m0, m1],
                "memory_growth": m1 / m0 - 1.0,
                "time_ratio": by[hi]["step_ms"] / by[lo]["step_ms"],
            }
    ratios = []
    for r in rows:
        if r["mode"] == "jfb":
            ratios.append(
                {
                    "iters": r["iters"],
                    "jfb_over_fwd_plus_vjp": r["step_ms"] / (r["fwd_ms"] + r["vjp_ms"]),
                    "jfb_over_fwd_plus_vmapped_vjp": r["step_ms"]
                    / (r["fwd_ms"] + r["vjp_vmap_ms"]),
                    "vmapped_vjp_over_vjp": r["vjp_vmap_ms"] / r["vjp_ms"],
                }
            )
    return {
        "memory_slopes": slopes,
        "jfb_ratios": ratios,
        "over_jfb": _over_jfb(rows, "iters") + _over_jfb(result.get("sizes", []), "image_size"),
    }


def _over_jfb(records, key) -> list[dict]:
    """Each mode's step time over JFB's at the same swept value (same forward work)."""
    out = []
    for v in sorted({r[key] for r in records}):
        rs = {r["mode"]: r for r in records if r[key] == v}
        if "jfb" in rs and len(rs) > 1:
            jfb = rs["jfb"]["step_ms"]
            ratios = {m: r["step_ms"] / jfb for m, r in rs.items() if m != "jfb"}
            out.append({"sweep": key, "value": v, "iters": rs["jfb"]["iters"], **ratios})
    return out


def _sweep_table(records, key, values, modes, shared, first_cols) -> list[str]:
    """One row per swept value: the ``shared`` fields (same for every mode),
    then each mode's step time and compiled peak, "skipped" where not measured."""
    rows = []
    for v in values:
        rs = {r["mode"]: r for r in records if r[key] == v}
        if not rs:
            continue
        any_r = next(iter(rs.values()))
        cells = [str(v)] + [f"{any_r[f]:.3g}" for f in shared]
        cells += [f"{rs[m]['step_ms']:.4g}" if m in rs else "skipped" for m in modes]
        cells += [_mb(rs[m]["step_peak_bytes"]) if m in rs else "skipped" for m in modes]
        rows.append(cells)
    header = [*first_cols, *(f"{m} ms" for m in modes), *(f"{m} MiB" for m in modes)]
    return markdown_table(header, rows)


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    modes, size_modes = meta["modes"], meta["size_modes"]
    lines = [
        f"# Backward cost of one DE-GRAD training step on {meta['machine']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; jax {meta['jax']}; preset `{meta['preset']}`: DnCNN "
        f"{meta['depth']}x{meta['features']} (spectral norm {meta['spectral_norm']}), batch "
        f"{meta['batch']}, Anderson m={meta['anderson_m']} with tol=0 (exactly the stated "
        f"iterations), IFT adjoint tol {meta['ift_tol']} / max_iter {meta['ift_max_iter']}; "
        f"median of {meta['repeat']} calls after one warm-up; wall {meta['wall_s']:.0f} s.",
        "",
        "## Train step time (ms) and compiled peak memory (MiB) against forward iterations "
        f"({meta['image_size']}x{meta['image_size']})",
        "",
    ]
    lines += _sweep_table(
        result["iterations"],
        "iters",
        meta["iters"],
        modes,
        ["fwd_ms", "vjp_ms", "vjp_vmap_ms"],
        ["iters", "fwd ms", "VJP ms", "VJP/sample ms"],
    )
    fwd_mem = {r["iters"]: r["fwd_peak_bytes"] for r in result["iterations"]}
    lines += [
        "",
        "Forward solve alone, compiled peak (MiB): "
        + ", ".join(f"{k} it: {_mb(v)}" for k, v in sorted(fwd_mem.items()))
        + ".",
    ]
    if result.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(result["skipped"]) + "."]
    if result.get("adjoint_iterations") is not None:
        lines += [
            "",
            f"IFT (Anderson) adjoint iterations (mean per sample, at "
            f"{result['adjoint_iterations']['at_iters']} forward iterations): "
            f"{result['adjoint_iterations']['mean']}.",
        ]
    s = result["summary"]
    lines += [
        "",
        "### Memory growth from the fewest to the most iterations",
        "",
        "| mode | peak MiB (lo -> hi iters) | growth | step time ratio |",
        "|---|---|---|---|",
    ]
    for mode, v in s["memory_slopes"].items():
        lines.append(
            f"| {mode} | {_mb(v['peak_bytes'][0])} -> {_mb(v['peak_bytes'][1])} "
            f"({v['iters'][0]} -> {v['iters'][1]}) | {100 * v['memory_growth']:+.1f}% "
            f"| {v['time_ratio']:.2f}x |"
        )
    lines += [
        "",
        "### JFB step against its parts",
        "",
        "| iters | JFB step / (fwd + one VJP) | JFB step / (fwd + per-sample VJP) "
        "| per-sample VJP / batched VJP |",
        "|---|---|---|---|",
    ]
    for r in s["jfb_ratios"]:
        lines.append(
            f"| {r['iters']} | {r['jfb_over_fwd_plus_vjp']:.2f} "
            f"| {r['jfb_over_fwd_plus_vmapped_vjp']:.2f} "
            f"| {r['vmapped_vjp_over_vjp']:.2f} |"
        )
    over = s.get("over_jfb", [])
    if over:
        others = sorted({k for r in over for k in r} - {"sweep", "value", "iters"})
        lines += [
            "",
            "### Step time over JFB's (same image size and forward iterations)",
            "",
        ]
        lines += markdown_table(
            ["size", "iters", *others],
            [
                [
                    r["value"] if r["sweep"] == "image_size" else meta["image_size"],
                    r["iters"],
                    *(f"{r[m]:.2f}x" if m in r else "–" for m in others),
                ]
                for r in over
            ],
        )
    lines += [
        "",
        f"## Train step time (ms) against image size ({meta['size_iters']} forward iterations)",
        "",
    ]
    lines += _sweep_table(
        result["sizes"],
        "image_size",
        meta["sizes"],
        size_modes,
        ["fwd_ms", "vjp_ms"],
        ["size", "fwd ms", "VJP ms"],
    )
    aw = result.get("anderson_write")
    if aw:
        lines += [
            "",
            "## Anderson history write: indexed set (scatter under vmap) vs one-hot select",
            "",
            "benchmarks.solvers' conv map, the three solvers run round robin; median (min) ms.",
            "",
            "| problem | tol / max_iter | Picard | Anderson scatter | Anderson one-hot "
            "| one-hot / scatter | iterations (P / A) | scatters in HLO (before -> after) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in aw["rows"]:
            lines.append(
                f"| {r['problem']} | {r['tol']:g} / {r['max_iter']} "
                f"| {r['picard_ms']:.3g} ({r['picard_min_ms']:.3g}) "
                f"| {r['anderson_scatter_ms']:.3g} ({r['anderson_scatter_min_ms']:.3g}) "
                f"| {r['anderson_onehot_ms']:.3g} ({r['anderson_onehot_min_ms']:.3g}) "
                f"| {r['onehot_over_scatter']:.2f} "
                f"| {r['picard_iters']:.3g} / {r['anderson_onehot_iters']:.3g} "
                f"| {r['anderson_scatter_scatters']} -> {r['anderson_onehot_scatters']} |"
            )
    mp = result.get("mixed_precision")
    if mp:
        lines += [
            "",
            "## Mixed precision (bfloat16 convolutions, float32 accumulation)",
            "",
            f"JFB train step at {mp['image_size']}x{mp['image_size']}, batch {mp['batch']}, "
            f"{mp['iters']} iterations: float32 {mp['float32_step_ms']:.4g} ms "
            f"({_mb(mp['float32_step_peak_bytes'])} MiB), bfloat16 "
            f"{mp['bfloat16_step_ms']:.4g} ms ({_mb(mp['bfloat16_step_peak_bytes'])} MiB): "
            f"speed-up {mp['bf16_speedup']:.2f}x. Same float32 parameters: relative difference "
            f"of the fixed points {mp['rel_diff_fixed_point']:.2e}, cosine of the JFB "
            f"gradients {mp['cos_grad']:.5f}.",
        ]
    lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    modes = result["meta"]["modes"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for k, mode in enumerate(modes):
        style = dict(color=f"C{k}", marker="o", label=mode)  # one colour per mode, all panels
        mine = [r for r in result["iterations"] if r["mode"] == mode]
        rs = sorted(mine, key=lambda r: r["iters"])
        if rs:
            its = [r["iters"] for r in rs]
            axes[0].plot(its, [r["step_ms"] for r in rs], **style)
            axes[1].plot(its, [r["step_peak_bytes"] / 2**20 for r in rs], **style)
        mine = [r for r in result["sizes"] if r["mode"] == mode]
        rs = sorted(mine, key=lambda r: r["image_size"])
        if rs:
            axes[2].plot([r["image_size"] for r in rs], [r["step_ms"] for r in rs], **style)
    rs = sorted({r["iters"]: r for r in result["iterations"]}.values(), key=lambda r: r["iters"])
    axes[0].plot([r["iters"] for r in rs], [r["fwd_ms"] for r in rs], "k--", label="forward only")
    for ax, title, xl, yl in (
        (axes[0], "train step time", "forward iterations", "ms"),
        (axes[1], "compiled peak memory", "forward iterations", "MiB"),
        (
            axes[2],
            f"train step time, {result['meta']['size_iters']} iterations",
            "image size",
            "ms",
        ),
    ):
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    if result["sizes"]:
        axes[2].legend(fontsize=8)
    fig.suptitle(
        f"DE-GRAD backward modes on {result['meta']['machine']} (preset {result['meta']['preset']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(SWEEP_PRESETS), default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument(
        "--full",
        action="store_true",
        help="no caps on Unrolled and GMRES, 3 timed calls (cpu: ~25 min)",
    )
    parser.add_argument("--modes", default=None, help=f"comma list from {MODES}")
    parser.add_argument("--iters", default=None, help="iteration counts, e.g. 10,25,50")
    parser.add_argument("--sizes", default=None, help="image sizes, e.g. 16,32")
    parser.add_argument(
        "--run", default=None, help="a run folder of the same preset: benchmark its trained model"
    )
    parser.add_argument(
        "--size_modes", default=None, help="modes of the size sweep (default: the preset's)"
    )
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument(
        "--batch", type=int, default=None, help="batch size (default: the preset's)"
    )
    parser.add_argument(
        "--unrolled_max_iter",
        type=int,
        default=None,
        help="skip Unrolled above this many iterations (memory/time cap)",
    )
    parser.add_argument("--no_sizes", action="store_true", help="skip the image-size sweep")
    parser.add_argument(
        "--warm_steps",
        type=int,
        default=None,
        help="JFB steps before measuring (default: the preset's)",
    )
    parser.add_argument(
        "--no_adjoint_stats",
        action="store_true",
        help="skip counting IFT's adjoint iterations (one more compile)",
    )
    parser.add_argument(
        "--no_extras",
        action="store_true",
        help="skip the Anderson write and mixed-precision sections",
    )
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    p = dict(SWEEP_PRESETS[args.preset])
    config = get_config(p["config"])
    if args.quick:
        p.update(QUICK)
        config.model.depth, config.model.features = QUICK["depth"], QUICK["features"]
    repeat = args.repeat or p["repeat"]
    if args.iters:
        p["iters"] = tuple(int(v) for v in args.iters.split(","))
    if args.sizes:
        p["sizes"] = tuple(int(v) for v in args.sizes.split(","))
    if args.batch is not None:
        if args.batch < 1:
            parser.error(f"--batch must be >= 1, got {args.batch}")
        p["batch"] = args.batch
    if args.full:
        p.update(
            unrolled_max_iter=None,
            size_unrolled_max=None,
            gmres_iters=None,
            repeat=max(p["repeat"], 3),
        )
        p = {k: v for k, v in p.items() if v is not None}
        repeat = args.repeat or p["repeat"]
    if args.unrolled_max_iter is None:
        args.unrolled_max_iter = p.get("unrolled_max_iter")
    modes = list(p.get("modes", MODES))
    if args.modes:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        backward_mode(m, config)  # validates
    bench = Bench(
        config,
        p["batch"],
        repeat=repeat,
        warm_steps=p["warm_steps"] if args.warm_steps is None else args.warm_steps,
        image_size=p["image_size"],
        run_dir=args.run,
    )
    result = {"iterations": [], "sizes": [], "skipped": []}

    def measure(kind, iters, size, modes):
        base = bench.forward_and_vjp(iters, size)
        for mode in modes:
            if mode == "unrolled" and args.unrolled_max_iter and iters > args.unrolled_max_iter:
                result["skipped"].append(
                    f"unrolled at {iters} iterations ({size}px): above "
                    f"--unrolled_max_iter {args.unrolled_max_iter}"
                )
                continue
            size_cap = p.get("size_unrolled_max") or size
            if mode == "unrolled" and kind == "sizes" and size > size_cap:
                result["skipped"].append(
                    f"unrolled at {size}px: above the preset's size cap (--full lifts it)"
                )
                continue
            gmres_at = p.get("gmres_iters")
            if mode == "ift_gmres" and kind == "iterations" and gmres_at and iters not in gmres_at:
                result["skipped"].append(
                    f"ift_gmres at {iters} iterations: the preset times it at {gmres_at} only "
                    "(--full: all)"
                )
                continue
            print(f"  {kind}: {mode} iters={iters} size={size}", flush=True)
            row = {"mode": mode, "iters": iters, "image_size": size, **base}
            row.update(bench.train_step(mode, iters, size))
            result[kind].append(row)

    for iters in p["iters"]:
        measure("iterations", iters, p["image_size"], modes)
    size_modes = [m for m in modes if m in p["size_modes"]]
    if args.size_modes:
        size_modes = [m.strip() for m in args.size_modes.split(",") if m.strip()]
    if not args.no_sizes:
        for size in p["sizes"]:
            measure("sizes", p["size_iters"], size, size_modes)
    result["adjoint_iterations"] = None
    if "ift_anderson" in modes and not args.no_adjoint_stats:
        at = p["iters"][len(p["iters"]) // 2]
        result["adjoint_iterations"] = {
            "at_iters": at,
            "mean": bench.adjoint_iterations(at, p["image_size"]),
        }
    if not args.no_extras:
        print("  Anderson history write: scatter vs one-hot", flush=True)
        result["anderson_write"] = anderson_write(args.quick, repeat)
        print("  mixed precision", flush=True)
        mp_iters = p["iters"][1] if len(p["iters"]) > 1 else p["iters"][0]
        result["mixed_precision"] = mixed_precision(bench, p["image_size"], mp_iters)
    result["meta"] = run_meta(
        "benchmarks.backward_cost",
        argv,
        start,
        preset=args.preset + (" (quick)" if args.quick else ""),
        depth=int(config.model.depth),
        features=int(config.model.features),
        spectral_norm=bool(config.model.spectral_norm),
        batch=p["batch"],
        image_size=p["image_size"],
        iters=list(p["iters"]),
        sizes=list(p["sizes"]) if not args.no_sizes else [],
        size_iters=p["size_iters"],
        anderson_m=int(config.solver.m),
        ift_tol=float(config.backward.tol),
        ift_max_iter=int(config.backward.max_iter),
        repeat=repeat,
        modes=modes,
        size_modes=size_modes if not args.no_sizes else [],
    )
    machine = result["meta"]["machine"]
    result["summary"] = summarise(result)
    out = Path(args.out)
    stem = f"backward_cost_{machine}" + ("_quick" if args.quick else "")
    if args.preset != "cpu" and machine == "cpu":
        stem += f"_{args.preset}"
    paths = write_result(out, stem, result, to_markdown(result))
    plot(result, out / f"{stem}.png")
    print(f"wrote {out / stem}.md, .json and .png")
    result["paths"] = [*paths, str(out / f"{stem}.png")]
    return result


#: The command line: runs :func:`run` and returns the exit status (0).
main = exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
