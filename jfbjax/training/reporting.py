"""The end of a run: its figures, its ``results.json``, and the lines it prints.

PSNR conventions: ``standard`` uses the data range of the [-1, 1] images
(peak-to-peak 2); ``paper`` is ``-10 log10(MSE)`` as in arXiv 2402.02065,
6.02 dB lower. Both are always reported and always labelled.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jfbjax.imaging.metrics import psnr
from jfbjax.training.classical import LABELS
from jfbjax.training.figures import plot_restorations, plot_training_curves
from jfbjax.training.records import jsonable, write_json
from jfbjax.training.rundir import RunDir

__all__ = ["PSNR_CONVENTIONS", "format_metrics", "model_label", "write_figures", "write_results"]

PSNR_CONVENTIONS = {
    "standard": "images mapped to [0, 1]: PSNR = 10 log10(1 / MSE), SSIM with "
    "max_val 1 (jfbjax.imaging.metrics)",
    "paper": "-10 log10(MSE) on the [-1, 1] images (peak 1; arXiv 2402.02065), "
    "6.02 dB below standard; SSIM on [-1, 1] with max_val 2",
}


def model_label(config) -> str:
    """``DE-GRAD+JFB``, ``DE-Prox+IFT``, ... or the model kind for a non-implicit model."""
    if config.model.kind != "degrad":
        return str(config.model.kind)
    family = {"degrad": "DE-GRAD", "deprox": "DE-Prox"}[str(config.model.get("family", "degrad"))]
    return f"{family}+{config.backward.name.upper()}"


def format_metrics(m: dict) -> str:
    """One line of a method's PSNR and SSIM in both conventions, labelled.

    ``m`` holds ``psnr_standard``, ``psnr_paper``, ``ssim_standard`` and
    ``ssim_paper`` (e.g. :func:`~jfbjax.training.score`'s output).
    """
    return (
        f"PSNR {m['psnr_standard']:.2f} dB (standard) / {m['psnr_paper']:.2f} dB (paper), "
        f"SSIM {m['ssim_standard']:.4f} (standard) / {m['ssim_paper']:.4f} (paper)"
    )


def write_figures(
    run_dir: RunDir,
    config,
    records: list[dict],
    *,
    x_test: np.ndarray,
    d_test: np.ndarray,
    x_model: np.ndarray,
    blurred: dict,
    classical: dict[str, dict],
    classical_outputs: dict[str, np.ndarray],
) -> dict[str, str]:
    """``training_curves.png`` (with every baseline's test PSNR as a line) and
    ``restorations.png`` (a few test images by every method); returns their paths."""
    curves = run_dir.path("training_curves.png")
    baselines = {"blurred input d": blurred["psnr_standard"]}
    baselines.update({LABELS[k]: v["psnr_standard"] for k, v in classical.items()})
    plot_training_curves(records, curves, baselines=baselines)
    k = min(int(config.num_figure_images), len(x_test))
    idx = np.unique(np.linspace(0, len(x_test) - 1, k).round().astype(int))
    columns = {"clean": x_test[idx], "blurred d": d_test[idx]}
    columns.update({LABELS[k]: v[idx] for k, v in classical_outputs.items()})
    columns[model_label(config)] = x_model[idx]
    per_image = {
        name: np.asarray(psnr(jnp.asarray(v), jnp.asarray(x_test[idx]), convention="standard"))
        for name, v in columns.items()
        if name != "clean"
    }
    grid = run_dir.path("restorations.png")
    plot_restorations(columns, grid, per_image)
    return {"training_curves": curves, "restorations": grid}


def write_results(run_dir: RunDir, results: dict) -> dict:
    """Adds the conventions and output paths, converts for JSON and writes ``results.json``."""
    results = {
        **results,
        "psnr_conventions": PSNR_CONVENTIONS,
        "outputs": {
            "workdir": run_dir.workdir,
            "metrics": run_dir.metrics,
            "checkpoints": run_dir.checkpoints,
            **results.get("outputs", {}),
        },
    }
    results = jsonable(results)
    write_json(run_dir.results, results)
    return results
