"""The comparison's outputs: aggregation over seeds, ``table.md`` and the PSNR-vs-time figure.

:mod:`experiments.compare` measures; this module only turns its rows into
text and figures (and :mod:`experiments.ablation` uses the same helpers).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["METRIC_KEYS", "aggregate", "fmt", "plot_psnr_vs_time", "table_markdown"]


METRIC_KEYS = ("psnr_standard", "psnr_paper", "ssim_standard", "ssim_paper")


def aggregate(per_seed: list[dict]) -> dict:
    """Means over seeds of every numeric field; ``*_seed_std`` / ``*_seed_range``
    of the PSNR means over seeds."""
    out = {"seeds": [r["seed"] for r in per_seed]}
    keys = [k for k, v in per_seed[0].items() if isinstance(v, int | float) and k != "seed"]
    for k in keys:
        vals = [r[k] for r in per_seed if r.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    for k in ("psnr_standard", "psnr_paper"):
        vals = np.array([r[k] for r in per_seed])
        out[f"{k}_seed_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        out[f"{k}_seed_range"] = float(np.ptp(vals)) if len(vals) > 1 else None
    return out


def fmt(x, spec=".2f", none="–"):
    return none if x is None else format(x, spec)


def adjoint_fields(results: dict) -> dict:
    """The IFT-adjoint and cos(JFB, IFT) fields of a table row, from a run's
    results.json: training adjoints' converged share, the cosine and its
    reference adjoints' converged share (None where the run has no such record)."""
    alignment = results.get("gradient_alignment") or {}
    return {
        "ift_adjoint_converged": results.get("ift_adjoint_converged_during_training"),
        "cos_jfb_ift": alignment.get("cos_jfb_ift"),
        "cos_reference_converged": alignment.get("ift_adjoint_converged"),
    }


def cos_cell(row: dict) -> str:
    """cos(JFB, IFT) with, in brackets, the share of its reference IFT adjoints that
    converged (absent from records written before that share was kept)."""
    cos, conv = row.get("cos_jfb_ift"), row.get("cos_reference_converged")
    if cos is None:
        return "–"
    return f"{cos:.3f}" + ("" if conv is None else f" ({100 * conv:.0f}%)")


#: How the cos(JFB, IFT) columns of both tables are measured (their header text).
COS_NOTE = (
    "cos(JFB, IFT): cosine of the trained model's JFB and IFT weight gradients on 8 "
    "test images; in brackets the share of the reference IFT adjoints that reached "
    "their tolerance (runs from 2026-12-04 on: forward solve redone to 1e-5, adjoint by "
    "GMRES(60) to 1e-4; earlier runs: GMRES(30) to 1e-6 at the solver's 1e-3 fixed "
    "point, which seldom got there, so their cosines are not measurements)."
)


def table_markdown(rows: list[dict], header: dict) -> str:
    cols = [
        "method",
        "PSNR std (dB)",
        "PSNR paper (dB)",
        "SSIM std",
        "SSIM paper",
        "seed spread (dB)",
        "params",
        "train ms/step",
        "bwd ms/step",
        "peak MB",
        "test iters",
        "contraction mean / max",
        "IFT adjoint conv.",
        "cos(JFB, IFT)",
        "train time (s)",
        "infer ms/img",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        spread = r.get("psnr_standard_seed_std")
        seeds = r.get("seeds") or []
        spread_s = "–" if spread is None else f"±{spread:.2f} (n={len(seeds)})"
        peak = r.get("peak_memory_bytes")
        cells = [
            r["label"],
            f"{r['psnr_standard']:.2f} ± {r['psnr_standard_std']:.2f}",
            f"{r['psnr_paper']:.2f} ± {r['psnr_paper_std']:.2f}",
            f"{r['ssim_standard']:.3f} ± {r['ssim_standard_std']:.3f}",
            f"{r['ssim_paper']:.3f} ± {r['ssim_paper_std']:.3f}",
            spread_s,
            fmt(r.get("num_params"), ",.0f"),
            fmt(r.get("train_ms_per_step"), ".0f"),
            fmt(r.get("backward_ms_per_step"), ".0f"),
            fmt(None if peak is None else peak / 2**20, ".1f"),
            fmt(r.get("mean_iterations"), ".1f"),
            "–"
            if r.get("contraction_mean") is None
            else f"{r['contraction_mean']:.4f} / {r['contraction_max']:.4f}",
            "–"
            if r.get("ift_adjoint_converged") is None
            else f"{100 * r['ift_adjoint_converged']:.0f}%",
            cos_cell(r),
            fmt(r.get("training_time_s"), ".0f"),
            fmt(r.get("infer_ms_per_image"), ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    intro = [
        f"# Deblurring comparison: preset `{header['preset']}`",
        "",
        f"Command: `{header['command']}`  ",
        f"Machine: {header['machine']}; jax {header['jax']}; {header['date']}  ",
        f"Data: {header['data']}; blur {header['blur']}; noise std {header['noise_std']} on "
        f"[-1, 1]; every method scored on the same {header['n_test']} degraded test images.  ",
        f"Learned methods: {header['steps']} optimiser steps of batch {header['batch_size']}, "
        f"seeds {header['seeds']}; DE-GRAD solves with {header['solver']}.",
        "",
        "PSNR/SSIM: mean ± std over the test images (averaged over seeds); seed spread = "
        "std over seeds of the mean PSNR (standard). 'standard': images on [0, 1]; 'paper': "
        "-10 log10 MSE on [-1, 1] (arXiv 2402.02065), 6.02 dB lower. train ms/step: "
        "median of a compiled train step on one training batch (trained parameters); "
        "bwd ms/step: that minus the forward solve on the same batch; peak MB: XLA's "
        "memory analysis of the compiled train step; train time: seconds spent in "
        "training steps (compilation included); infer ms/img: compiled forward on an "
        "evaluation batch, per image. contraction: ‖dT/dx‖₂ at the test fixed points "
        "(20 power-iteration steps; mean over images, averaged over seeds / max over "
        "images, averaged over seeds). IFT adjoint conv.: share of the training steps' "
        "adjoint solves that reached backward.tol (IFT rows). " + COS_NOTE,
        "",
    ]
    return "\n".join(intro + lines) + "\n"


def plot_psnr_vs_time(curves: dict[str, list], baselines: dict[str, float], path: str) -> None:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, curve in curves.items():
        if curve:
            t, p = zip(*curve, strict=True)
            ax.plot(t, p, marker="o", ms=3, label=label)
    for i, (label, value) in enumerate(baselines.items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{(i + len(curves)) % 10}", label=label)
    ax.set_xlabel("training time (s, this machine)")
    ax.set_ylabel("test PSNR (dB, standard)")
    ax.set_title("test PSNR against training time (seed 0)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
