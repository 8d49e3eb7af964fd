"""Figures of a run, drawn on standalone matplotlib ``Figure`` objects: no display
needed and no change to the pyplot backend of the importing program (notebooks keep
their inline figures)."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_restorations", "plot_training_curves"]


def _to_display(x: np.ndarray) -> np.ndarray:
    """[-1, 1] images to [0, 1] for imshow (non-finite pixels shown black)."""
    x = np.nan_to_num(np.asarray(x, np.float32), nan=-1.0, posinf=1.0, neginf=-1.0)
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def plot_training_curves(
    records: list[dict], path: str | os.PathLike, baselines: dict[str, float] | None = None
) -> None:
    """Three panels against the step: training loss, test PSNR, forward solver iterations.

    ``records`` are the ``metrics.jsonl`` rows: ``train/*`` keys for training
    windows and ``test/*`` keys for evaluations. ``baselines`` maps a label
    (e.g. ``"Wiener"``) to a test PSNR (standard convention) drawn as a
    horizontal line.
    """
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "test/psnr_standard" in r]
    fig = Figure(figsize=(14, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)

    ax = axes[0]
    if train:
        ax.semilogy([r["step"] for r in train], [r["train/loss"] for r in train])
    ax.set(xlabel="step", ylabel="MSE (training batches)", title="training loss")
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[1]
    if evals:
        ax.plot(
            [r["step"] for r in evals],
            [r["test/psnr_standard"] for r in evals],
            "o-",
            label="DE-GRAD (test)",
        )
    if train:
        ax.plot(
            [r["step"] for r in train],
            [r["train/psnr"] for r in train],
            alpha=0.4,
            label="DE-GRAD (training batches)",
        )
    for i, (label, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, ls="--", color=f"C{i + 2}", label=label)
    ax.set(xlabel="step", ylabel="PSNR [dB], standard convention", title="PSNR")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[2]
    if train:
        steps = [r["step"] for r in train]
        ax.plot(steps, [r["train/iterations"] for r in train], label="mean (training)")
        ax.plot(steps, [r["train/max_iterations"] for r in train], alpha=0.5, label="max")
    if evals:
        ax.plot(
            [r["step"] for r in evals],
            [r["test/mean_iterations"] for r in evals],
            "o",
            label="mean (test)",
        )
    ax.set(xlabel="step", ylabel="iterations", title="forward solver iterations")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)

    fig.savefig(path, dpi=120)


def plot_restorations(
    columns: dict[str, np.ndarray],
    path: str | os.PathLike,
    psnrs: dict[str, np.ndarray] | None = None,
) -> None:
    """A grid: one row per image, one column per entry of ``columns`` ((N, H, W, 3) in [-1, 1]).

    ``psnrs`` (same keys, per-image PSNR in the standard convention) are
    written under the images.
    """
    names = list(columns)
    n = len(next(iter(columns.values())))
    fig = Figure(figsize=(2.3 * len(names), 2.4 * n), layout="constrained")
    axes = fig.subplots(n, len(names), squeeze=False)
    for j, name in enumerate(names):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(_to_display(columns[name][i]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=10)
            if psnrs and name in psnrs:
                ax.set_xlabel(f"{float(psnrs[name][i]):.2f} dB", fontsize=9)
    fig.suptitle("test images (PSNR, standard convention)", fontsize=10)
    fig.savefig(path, dpi=120)
