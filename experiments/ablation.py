"""The ablation behind the default model: each lever alone, then combinations, same budget.

``python -m experiments.ablation --preset cpu`` (or ``python -m
experiments.compare --preset cpu_ablation``) trains DE-GRAD+JFB on the
preset's data, budget and optimiser with one change at a time from a fixed
baseline (the paper's map: DE-GRAD from ``A^T d``, no pretraining, no
contraction penalty), then the combinations, for every seed, and writes
``OUT/table.md`` and ``OUT/table.json`` (default ``results/<preset>_ablation``)
with test PSNR/SSIM, validation PSNR (what settings are chosen on),
contraction of ``T`` at the fixed point (mean and max over the test
images), forward iterations, IFT adjoint convergence during training (IFT
rows), cos(JFB, IFT) gradients, ms/step and training time.

The baseline pins every field that a lever changes, so the table means the
same thing whatever the preset's defaults become. Runs are ordinary run
folders ``OUT/runs/<lever>/seed<k>``, reused when finished and resumed when
interrupted (as in ``experiments.compare``). Adding a lever is one
:class:`Lever` entry in :data:`LEVERS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np

from experiments.compare import LearnedRun, _complete, _machine, _train, _training_time
from experiments.compare_report import COS_NOTE, adjoint_fields, cos_cell, fmt
from experiments.configs import PRESETS, apply_overrides, get_config
from jfbjax.training.records import jsonable

__all__ = [
    "BASELINE",
    "DEFAULT_LEVER",
    "LEVERS",
    "PRESET_BASELINE",
    "Lever",
    "ablation_config",
    "baseline",
    "main",
    "run",
    "run_ablation",
]

#: The ablation's starting point: the paper's DE-GRAD map trained with JFB from
#: ``A^T d`` on the built-in photographs of scenes (every field a lever changes).
BASELINE: tuple[str, ...] = (
    "model.kind=degrad",
    "model.family=degrad",
    "model.start=adjoint",
    "model.pretrain_steps=0",
    "model.pretrain_scale=1.0",
    "model.start_iters=60",
    "model.start_weight=0.01",
    "model.precond=0.0",
    "model.precond_iters=10",
    "model.tikhonov=0.0",
    "model.tv_weight=0.0",
    "model.tv_eps=0.1",
    "model.equivariance=1",
    "model.tv_equivariance=1",
    "model.inject=false",
    "model.precond_tv=false",
    "model.regulariser=dncnn",
    "model.padding=zero",
    "model.eta_init=1.0",
    "optim.loss=mse",
    "self_ensemble=false",
    "solver.tol=1e-3",
    "solver.train_max_iter=0",
    "contraction.jac_weight=0.0",
    "contraction.spectral_weight=0.0",
    "data.builtin_set=scenes",
    "backward.name=jfb",
)

#: Per preset, the model size, budget and optimiser of the baseline, pinned so
#: that the table keeps its meaning when the preset's defaults change.
PRESET_BASELINE: dict[str, tuple[str, ...]] = {
    "cpu": (
        "model.depth=6",
        "model.features=32",
        "model.spectral_norm=true",
        "solver.max_iter=50",
        "steps=250",
        "optim.lr=1e-3",
        "optim.schedule=cosine",
        "optim.warmup=20",
    ),
}


@dataclasses.dataclass(frozen=True)
class Lever:
    """One row of the ablation: ``overrides`` applied on top of :data:`BASELINE`.

    Attributes:
      key: folder name and ``--levers`` name.
      label: the row's title.
      overrides: ``key=value`` config changes (``experiments/configs.py``).
      group: "lever" (one change) or "combination".
    """

    key: str
    label: str
    overrides: tuple[str, ...] = ()
    group: str = "lever"


_DEPROX = ("model.family=deprox", "model.pretrain_steps=500")
_SPECTRAL = ("contraction.spectral_weight=1.0",)
_TV = ("model.tv_weight=1e-3", "model.tv_eps=0.1")
_TV_05 = ("model.tv_weight=1e-3", "model.tv_eps=0.05")
_PC = ("model.precond=0.05",)
#: The eps-0.05 / mu-0.1 map (the cpu default until 2026-12-03), base of the "the same" rows.
_PC1_E05 = (*_TV_05, "model.precond=0.1", "model.start=cg")
#: The eps-0.02 / mu-0.25 map (the cpu default since 2026-12-03), base of the rows after it.
_PC25_E02 = ("model.tv_weight=1e-3", "model.tv_eps=0.02", "model.precond=0.25", "model.start=cg")

#: The smoothed-TV map preconditioned with the TV's lagged diffusivity (precond_tv).
_LAGGED05 = (
    *_PC25_E02[:2], "model.start=cg", "model.tv_equivariance=2", "model.precond=0.05",
    "model.precond_iters=5", "model.precond_tv=true", "model.eta_init=1.8",
)  # fmt: skip

#: The cpu default: the lagged-preconditioner map with its training solves capped at 30.
_DEFAULT = (*_LAGGED05, "solver.train_max_iter=30")

LEVERS: tuple[Lever, ...] = (
    Lever("base", "baseline: DE-GRAD from A^T d (the paper's map)"),
    Lever(
        "legacy_data",
        "earlier built-in training photos (with micrographs)",
        ("data.builtin_set=legacy",),
    ),
    Lever("cg", "start from 60 CG iterations (Tikhonov 0.01)", ("model.start=cg",)),
    Lever(
        "degrad_pre",
        "R pretrained as a denoiser (500 steps, R = 0.05 noise)",
        ("model.pretrain_steps=500", "model.pretrain_scale=0.05"),
    ),
    Lever("deprox_pre", "DE-Prox, D pretrained as a denoiser (500 steps)", _DEPROX),
    Lever("jacreg", "Jacobian penalty 1e-3 ‖J‖_F²/n", ("contraction.jac_weight=1e-3",)),
    Lever("spectral", "spectral penalty 1.0 max(‖J‖₂ - 0.9, 0)²", _SPECTRAL),
    Lever("tik", "Tikhonov term 0.01 x in R", ("model.tikhonov=0.01",)),
    Lever(
        "pc05",
        "preconditioner mu 0.05 (+ Tikhonov 0.01)",
        ("model.precond=0.05", "model.tikhonov=0.01"),
    ),
    Lever(
        "pc02",
        "preconditioner mu 0.02 (+ Tikhonov 0.01)",
        ("model.precond=0.02", "model.tikhonov=0.01"),
    ),
    Lever("lr3e3", "learning rate 3e-3 (peak, cosine)", ("optim.lr=3e-3",)),
    Lever("tv", "smoothed-TV term in R (w 1e-3, eps 0.1), CG start", (*_TV, "model.start=cg")),
    Lever(
        "tv_pc",
        "smoothed-TV term + preconditioner mu 0.05, CG start",
        (*_TV, *_PC, "model.start=cg"),
        group="combination",
    ),
    Lever(
        "tv_pc_e05",
        "smoothed-TV term (eps 0.05) + preconditioner mu 0.05, CG start",
        (*_TV_05, *_PC, "model.start=cg"),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05",
        "smoothed-TV term (eps 0.05) + preconditioner mu 0.1, CG start",
        (*_TV_05, "model.precond=0.1", "model.start=cg"),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05_broyden",
        "the same, Broyden forward solver (memory 20) instead of Anderson",
        (*_PC1_E05, "solver.name=broyden"),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05_tol4",
        "the same, solved to tol 1e-4 (100 iterations at most)",
        (*_PC1_E05, "solver.tol=1e-4", "solver.max_iter=100"),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05_spec",
        "the same, spectral penalty 1.0 max(‖J‖₂ - 0.9, 0)²",
        (*_PC1_E05, *_SPECTRAL, "contraction.target=0.9"),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05_spec10",
        "the same, spectral penalty 1.0 max(‖J‖₂ - 0.9, 0)², 10 power iterations",
        (
            *_PC1_E05,
            *_SPECTRAL,
            "contraction.target=0.9",
            "contraction.power_iters=10",
        ),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05_lr2e3",
        "the same, learning rate 2e-3 (peak, cosine)",
        (*_PC1_E05, "optim.lr=2e-3"),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05_tik5",
        "the same, Tikhonov term 0.005 x in R",
        (*_PC1_E05, "model.tikhonov=0.005"),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05_tik10",
        "the same, Tikhonov term 0.01 x in R",
        (*_PC1_E05, "model.tikhonov=0.01"),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05_s400",
        "the same, 400 training steps instead of 250",
        (*_PC1_E05, "steps=400"),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05_w48",
        "the same, R 48 features wide instead of 32",
        (*_PC1_E05, "model.features=48"),
        group="combination",
    ),
    Lever(
        "tv_pc1_e05_d9",
        "the same, R 9 layers deep instead of 6",
        (*_PC1_E05, "model.depth=9"),
        group="combination",
    ),
    Lever(
        "tv_pc25_e02",
        "smoothed-TV term (eps 0.02) + preconditioner mu 0.25, CG start",
        _PC25_E02,
        group="combination",
    ),
    Lever(
        "tv_pc25_e02_plus",
        "the eps-0.02 / mu-0.25 map, + the 5 legacy micrographs as training photos (13)",
        (*_PC25_E02, "data.builtin_set=scenes_plus"),
        group="combination",
    ),
    Lever(
        "tv_pc25_e02_s300",
        "the eps-0.02 / mu-0.25 map, 300 training steps instead of 250",
        (*_PC25_E02, "steps=300"),
        group="combination",
    ),
    Lever(
        "tv_pc25_e02_b8",
        "the eps-0.02 / mu-0.25 map, batch 8 and 500 steps (the same images, twice the updates)",
        (*_PC25_E02, "batch_size=8", "steps=500", "optim.warmup=40"),
        group="combination",
    ),
    Lever(
        "tv_pc25_e02_nosn",
        "the eps-0.02 / mu-0.25 map, no spectral normalisation of R's convolutions",
        (*_PC25_E02, "model.spectral_norm=false"),
        group="combination",
    ),
    Lever(
        "tv_pc25_e02_psnr",
        "the eps-0.02 / mu-0.25 map, PSNR loss (each image's MSE weighted by its inverse)",
        (*_PC25_E02, "optim.loss=psnr"),
        group="combination",
    ),
    Lever(
        "tv_pc25_e02_exact",
        "the eps-0.02 / mu-0.25 map, exact preconditioner instead of 10 Chebyshev steps",
        (*_PC25_E02, "model.precond_iters=0"),
        group="combination",
    ),
    Lever(
        "tv_pc25_e02_exact_eq2",
        "eps-0.02 / mu-0.25 map, exact preconditioner, R averaged with its half turn",
        (*_PC25_E02, "model.precond_iters=0", "model.equivariance=2"),
        group="combination",
    ),
    Lever(
        "tv_pc25_e02_exact_tveq2",
        "eps-0.02 / mu-0.25 map, exact preconditioner, smoothed TV averaged with its half turn",
        (*_PC25_E02, "model.precond_iters=0", "model.tv_equivariance=2"),
        group="combination",
    ),
    Lever(
        "tv_pc25_e02_exact_tveq4",
        "eps-0.02 / mu-0.25 map, exact preconditioner, smoothed TV averaged over 4 rotations",
        (*_PC25_E02, "model.precond_iters=0", "model.tv_equivariance=4"),
        group="combination",
    ),
    Lever(
        "tv_pc25_e02_exact_tveq2_inject",
        "eps-0.02 / mu-0.25 map, exact preconditioner, half-turn TV, R also reads d",
        (*_PC25_E02, "model.precond_iters=0", "model.tv_equivariance=2", "model.inject=true"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05",
        "smoothed TV eps 0.02 (half-turn average), CG start, preconditioner with the TV's "
        "lagged diffusivity, mu 0.05, 5 Chebyshev steps, eta from 1.8",
        _LAGGED05,
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tik2",
        "the lagged-preconditioner map, Tikhonov term 0.002 x in R (curvature where the "
        "blur and the TV are weak)",
        (*_LAGGED05, "model.tikhonov=0.002"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_spec10",
        "the lagged-preconditioner map, spectral penalty 1.0 max(‖J‖₂ - 0.9, 0)², 10 power "
        "iterations",
        (*_LAGGED05, *_SPECTRAL, "contraction.target=0.9", "contraction.power_iters=10"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_spec10_t95",
        "the lagged-preconditioner map, spectral penalty 1.0 max(‖J‖₂ - 0.95, 0)², 10 "
        "power iterations",
        (*_LAGGED05, *_SPECTRAL, "contraction.target=0.95", "contraction.power_iters=10"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_eq2",
        "the lagged-preconditioner map, R averaged with its half turn",
        (*_LAGGED05, "model.equivariance=2"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_s300",
        "the lagged-preconditioner map, 300 training steps instead of 250",
        (*_LAGGED05, "steps=300"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_charb",
        "the lagged-preconditioner map, Charbonnier loss (smoothed L1, eps 2e-3) instead of "
        "the MSE",
        (*_LAGGED05, "optim.loss=charbonnier"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30",
        "the lagged-preconditioner map, training solves capped at 30 iterations (evaluation at 50)",
        _DEFAULT,
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi20",
        "the lagged-preconditioner map, training solves capped at 20 iterations (evaluation at 50)",
        (*_LAGGED05, "solver.train_max_iter=20"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_lr15",
        "the default (training solves capped at 30), learning rate 1.5e-3 (peak, cosine)",
        (*_DEFAULT, "optim.lr=1.5e-3"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_inject",
        "the default (training solves capped at 30), R also reads d (input injection)",
        (*_DEFAULT, "model.inject=true"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_inject_spec10",
        "the default, R also reads d, spectral penalty 1.0 max(‖J‖₂ - 0.9, 0)², 10 power "
        "iterations (can R sharpen through d rather than through its x-Jacobian?)",
        (
            *_DEFAULT,
            "model.inject=true",
            *_SPECTRAL,
            "contraction.target=0.9",
            "contraction.power_iters=10",
        ),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_spec10_t93_s2",
        "the default, spectral penalty 1.0 max(‖J‖₂ - 0.93, 0)², 10 power iterations on 2 "
        "images of each batch",
        (
            *_DEFAULT,
            *_SPECTRAL,
            "contraction.target=0.93",
            "contraction.power_iters=10",
            "contraction.samples=2",
        ),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_spec10_t93_s2_s500",
        "the same penalty (target 0.93, 2 images per batch), 500 training steps instead of "
        "250 (does the penalised model catch up given twice the budget?)",
        (
            *_DEFAULT,
            *_SPECTRAL,
            "contraction.target=0.93",
            "contraction.power_iters=10",
            "contraction.samples=2",
            "steps=500",
        ),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_s500",
        "the default, 500 training steps instead of 250 (the control for the penalised "
        "500-step row)",
        (*_DEFAULT, "steps=500"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_circular",
        "the default on a periodic (circular) blur instead of the zero boundary: another "
        "problem, so compare with its own TV (is the zero boundary where the map stops "
        "contracting?)",
        (*_DEFAULT, "blur.boundary=circular"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_spec10_t97_s2",
        "the default, a guard penalty 1.0 max(‖J‖₂ - 0.97, 0)², 10 power iterations on 2 "
        "images of each batch",
        (
            *_DEFAULT,
            *_SPECTRAL,
            "contraction.target=0.97",
            "contraction.power_iters=10",
            "contraction.samples=2",
        ),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_spec10_t97_s2_s500",
        "the guard penalty (target 0.97, 2 images per batch), 500 training steps (does it "
        "keep the equilibrium that 500 unpenalised steps lose?)",
        (
            *_DEFAULT,
            *_SPECTRAL,
            "contraction.target=0.97",
            "contraction.power_iters=10",
            "contraction.samples=2",
            "steps=500",
        ),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_ridge",
        "the default with R a convex ridge regulariser (32 5x5 filters, log-cosh: the "
        "gradient of a convex energy, monotone by construction) instead of the DnCNN",
        (*_DEFAULT, "model.regulariser=convex_ridge"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_reflect",
        "the default with R's convolutions reflect-padded instead of zero-padded (the "
        "least-contracted directions gather at the border)",
        (*_DEFAULT, "model.padding=reflect"),
        group="combination",
    ),
    Lever(
        "tv_e02_lagged05_tmi30_lr07",
        "the default (training solves capped at 30), learning rate 7e-4 (peak, cosine)",
        (*_DEFAULT, "optim.lr=7e-4"),
        group="combination",
    ),
)


#: The row whose configuration is the ``cpu`` preset's (a test keeps them equal).
DEFAULT_LEVER = "tv_e02_lagged05_tmi30"


def baseline(preset: str) -> tuple[str, ...]:
    """:data:`BASELINE` and the preset's pinned fields (:data:`PRESET_BASELINE`)."""
    return (*BASELINE, *PRESET_BASELINE.get(preset, ()))


def ablation_config(preset: str, lever: Lever, seed: int, extra: tuple[str, ...] = ()):
    """The training config of ``lever`` at ``seed``: preset + baseline + lever + extra."""
    c = get_config(preset)
    apply_overrides(c, (*baseline(preset), *lever.overrides, *extra))
    c.seed = int(seed)
    return c


def _row(lever: Lever, per_seed: list[dict]) -> dict:
    def mean(key):
        vals = [r[key] for r in per_seed if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    psnrs = [r["psnr_standard"] for r in per_seed]
    keys = [k for k, v in per_seed[0].items() if isinstance(v, int | float) and k != "seed"]
    row = {"key": lever.key, "label": lever.label, "overrides": list(lever.overrides)}
    row.update({k: mean(k) for k in keys})
    row["seeds"] = [r["seed"] for r in per_seed]
    row["psnr_standard_seed_std"] = float(np.std(psnrs, ddof=1)) if len(psnrs) > 1 else None
    for key in ("contraction_max", "val_contraction_max"):  # the worst seed's, not the mean
        row[key] = max((r[key] for r in per_seed if r.get(key) is not None), default=None)
    row["per_seed"] = per_seed
    return row


def _seed_record(results: dict, workdir: str, seed: int) -> dict:
    test = results["test"]["model"]
    return {
        "seed": seed,
        "psnr_standard": test["psnr_standard"],
        "psnr_paper": test["psnr_paper"],
        "ssim_standard": test["ssim_standard"],
        "val_psnr_standard": results["val"]["model"]["psnr_standard"],
        "tv_psnr_standard": results["test"].get("tv", {}).get("psnr_standard"),
        "tv_ssim_standard": results["test"].get("tv", {}).get("ssim_standard"),
        "contraction_mean": test.get("contraction_mean"),
        "contraction_max": test.get("contraction_max"),
        "val_contraction_max": (results.get("contraction") or {}).get("val_max"),
        "mean_iterations": test["mean_iterations"],
        "fraction_converged": test["fraction_converged"],
        **adjoint_fields(results),
        "ms_per_step": results["timing"]["ms_per_step"],
        "train_time_s": _training_time(workdir)[0],
        "total_time_s": results["total_time_s"],
    }


def _table_md(rows: list[dict], header: dict) -> str:
    cols = [
        "lever",
        "test PSNR (dB)",
        "seed spread",
        "test SSIM",
        "val PSNR (dB)",
        "val contraction max",
        "contraction mean / max",
        "fwd iters",
        "converged",
        "IFT adjoint conv.",
        "cos(JFB, IFT)",
        "ms/step",
        "train time (s)",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        spread = r["psnr_standard_seed_std"]
        cells = [
            r["label"] + (" **(the cpu default)**" if r["key"] == DEFAULT_LEVER else ""),
            fmt(r["psnr_standard"]),
            "–" if spread is None else f"±{spread:.2f} (n={len(r['seeds'])})",
            fmt(r["ssim_standard"], ".3f"),
            fmt(r["val_psnr_standard"]),
            fmt(r.get("val_contraction_max"), ".4f"),
            f"{fmt(r['contraction_mean'], '.4f')} / {fmt(r['contraction_max'], '.4f')}",
            fmt(r["mean_iterations"], ".1f"),
            fmt(None if r["fraction_converged"] is None else 100 * r["fraction_converged"], ".0f")
            + "%",
            "–"
            if r.get("ift_adjoint_converged") is None
            else f"{100 * r['ift_adjoint_converged']:.0f}%",
            cos_cell(r),
            fmt(r["ms_per_step"], ".0f"),
            fmt(r["train_time_s"], ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    tv = header.get("tv_psnr_standard")
    intro = [
        f"# Ablation: preset `{header['preset']}`",
        "",
        f"Command: `{header['command']}`  ",
        f"Machine: {header['machine']}; jax {header['jax']}; {header['date']}  ",
        f"Baseline (every row starts from it): `{' '.join(header['baseline'])}`  ",
        f"Test set: {header['data']}. TV (weight tuned on val) on the same test images: "
        f"{fmt(tv)} dB, SSIM {fmt(header.get('tv_ssim_standard'), '.3f')}.",
        "",
        "Test and val PSNR/SSIM: standard convention (images on [0, 1]), mean over the "
        "images, averaged over seeds; seed spread: std over seeds of the mean test PSNR. "
        "contraction: ‖dT/dx‖₂ at each test image's fixed point by 20 power-iteration "
        "steps (mean over images and seeds / max over both); val contraction max: the "
        "same on the validation images (measured by runs from 2026-12-06 on), the one to "
        "choose by. converged: share of test "
        "solves that reached the solver tolerance. IFT adjoint conv.: share of the "
        "training steps' adjoint solves that reached backward.tol (IFT rows only). "
        f"{COS_NOTE} ms/step: mean training "
        "step of the run (the machine was shared, +-30%); train time: seconds in "
        "training steps (pretraining not included: see each run's results.json).",
        "",
    ]
    return "\n".join(intro + lines) + "\n"


def run_ablation(
    preset: str,
    out: str,
    *,
    seeds=(0, 1),
    levers: list[str] | None = None,
    extra: tuple[str, ...] = (),
    progress: bool = False,
    skip_missing: bool = False,
    command: str = "",
) -> dict:
    """Trains what is missing and writes ``out/table.md`` and ``out/table.json``."""
    chosen = [lv for lv in LEVERS if levers is None or lv.key in levers]
    unknown = set(levers or ()) - {lv.key for lv in LEVERS}
    if unknown:
        raise ValueError(f"unknown levers {sorted(unknown)}; known: {[lv.key for lv in LEVERS]}")
    out = os.path.abspath(out)
    rows, header_extra = [], {}
    for lever in chosen:
        per_seed = []
        for seed in seeds:
            workdir = os.path.join(out, "runs", lever.key, f"seed{seed}")
            if skip_missing and not os.path.exists(os.path.join(workdir, "results.json")):
                print(f"skipping {lever.key} (seed {seed}): not trained yet", flush=True)
                continue
            config = ablation_config(preset, lever, seed, extra)
            if skip_missing and not _complete(workdir):
                with open(os.path.join(workdir, "results.json")) as f:
                    results = json.load(f)
            else:
                results = _train(LearnedRun(lever.key, int(seed), config), workdir, out, progress)
            per_seed.append(_seed_record(results, workdir, int(seed)))
            if "tv" in results["test"] and "tv_psnr_standard" not in header_extra:
                header_extra["tv_psnr_standard"] = results["test"]["tv"]["psnr_standard"]
                header_extra["tv_ssim_standard"] = results["test"]["tv"]["ssim_standard"]
                header_extra["data"] = results["data"]["description"]
        if per_seed:
            rows.append(_row(lever, per_seed))
    header = {
        "preset": preset,
        "command": command,
        "machine": _machine(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "baseline": list(baseline(preset)) + list(extra),
        "seeds": list(seeds),
        "data": "?",
        **header_extra,
    }
    table = {"header": header, "rows": rows}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "table.json"), "w") as f:
        json.dump(jsonable(table), f, indent=2)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(_table_md(rows, header))
    print(f"wrote {os.path.join(out, 'table.md')} and table.json", flush=True)
    return table


def run(argv=None) -> dict:
    """The command line's work: trains and tabulates ``argv``'s levers; returns the table.

    Raises ``ValueError`` for an unknown lever or override (``main`` turns
    it into exit status 2), ``SystemExit`` for flags argparse rejects.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(
        prog="python -m experiments.ablation",
        description="Train each lever of the default model alone and in combination; "
        "write OUT/table.md and OUT/table.json.",
    )
    p.add_argument("--preset", choices=PRESETS, default="cpu")
    p.add_argument("--out", default=None, help="output folder (default: results/<preset>_ablation)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument(
        "--levers", nargs="+", default=None, help=f"only these: {[lv.key for lv in LEVERS]}"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every row (after the baseline)")  # fmt: skip
    p.add_argument(
        "--skip_missing", action="store_true", help="train nothing; tabulate what exists"
    )
    p.add_argument("--progress", action="store_true", help="progress bars while training")
    args = p.parse_args(argv)
    out = args.out or os.path.join("results", f"{args.preset}_ablation")
    return run_ablation(
        args.preset,
        out,
        seeds=tuple(args.seeds),
        levers=args.levers,
        extra=tuple(args.set),
        progress=args.progress,
        skip_missing=args.skip_missing,
        command="python -m experiments.ablation " + " ".join(argv),
    )


def main(argv=None) -> int:
    """``python -m experiments.ablation``: exit status 0, or 2 with the error on stderr."""
    try:
        run(argv)
    except ValueError as e:  # also a run folder holding another configuration
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
