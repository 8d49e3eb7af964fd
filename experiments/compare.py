r"""Every deblurring method on the same data, operator, noise and budget: one table.

    python -m experiments.compare                  # --preset cpu, built-in photos
    python -m experiments.compare --preset smoke   # seconds; what the tests run
    python -m experiments.compare --preset paper --data_dir DIR   # CelebA, a GPU

Methods (same blur and noise, from the preset's config):

* classical, weights tuned on the validation images: the blurred input ``d``
  and the start point ``A^T d``; Wiener (FFT) and Tikhonov (exact CG);
  total variation (primal-dual, run to a relative-change tolerance);
* plug-and-play proximal gradient with DnCNN denoisers trained here on the
  same training images (one per noise level; level and step tuned on val);
* a feed-forward DnCNN deblurrer ``A^T d - R(A^T d)`` with R's architecture;
* DE-GRAD trained with unrolling (K iterations, backprop through all),
  IFT (Anderson adjoint), Neumann(k) for a few k, and JFB from scratch and
  from the feed-forward run's R (the paper's pretraining).

Every learned method gets the same optimiser, number of steps and seeds
(``--seeds``, default 0 1); each run is an ordinary
:func:`~jfbjax.training.train_and_evaluate` folder under ``OUT/runs/<method>/
seed<k>`` and is reused (or resumed from its checkpoint) when the command is
run again, so an interrupted comparison loses at most one partial run.
All methods are then scored on one fixed noise draw of the test images (that
of the preset's seed), timed on this machine and written to ``OUT/table.md``,
``OUT/table.json`` and two figures (``restorations.png``: one test image
restored by every method; ``psnr_vs_time.png``: test PSNR against training
time for the learned methods).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from matplotlib.figure import Figure

import jfbjax
from experiments.configs import PRESETS, apply_overrides, get_config
from jfbjax.data import load_data_from_config
from jfbjax.imaging.baselines import tv_deblur
from jfbjax.imaging.metrics import psnr
from jfbjax.imaging.noise import degrade
from jfbjax.models import pnp_pgd, solver_from_config
from jfbjax.training import (
    DataParallel,
    Run,
    blur_from_config,
    create_train_state,
    load_run,
    make_eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
    predict,
    score,
    train_and_evaluate,
)
from jfbjax.training.classical import classical_methods, evaluate_classical
from jfbjax.training.figures import plot_restorations
from jfbjax.training.profiling import compiled_memory, time_call
from jfbjax.training.records import config_diff, config_json, evaluation_images, jsonable

__all__ = ["compare_settings", "learned_runs", "main", "run_comparison"]


# ----------------------------------------------------------------------------
# Settings


def compare_settings(preset: str) -> ml_collections.ConfigDict:
    """What the comparison adds to a preset's training config.

    ``seeds``: seeds of every learned method. ``unrolled_k``: iterations of
    the unrolled DE-GRAD (tol 0: exactly K, in training and at test time).
    ``neumann_k``: the Neumann orders trained. ``denoiser_noise``: noise
    levels (on [-1, 1]) of the PnP denoisers. ``pnp_steps``: PnP gradient
    steps tried on val. ``pnp_max_iter``: iteration cap of the PnP solve
    (the preset's solver otherwise). ``tv_weights`` / ``tv_iters`` /
    ``tv_tol``: TV weight grid, iteration cap and relative-change tolerance.
    ``eval_every``: evaluations during training (PSNR-vs-time curves).
    ``timing_repeats``: timed calls per measurement (median reported).
    """
    s = ml_collections.ConfigDict()
    s.seeds = (0, 1)
    s.unrolled_k = 10
    s.neumann_k = (2, 5)
    s.denoiser_noise = (0.02, 0.05, 0.1)
    s.pnp_steps = (0.5, 1.0, 1.5, 1.9)
    s.pnp_max_iter = 100
    s.tv_weights = tuple(10.0**e for e in (-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0))
    s.tv_iters = 3000
    s.tv_tol = 1e-5
    s.eval_every = 50
    s.timing_repeats = 5
    if preset == "smoke":
        s.seeds = (0, 1)
        s.unrolled_k = 4
        s.neumann_k = (2,)
        s.denoiser_noise = (0.05,)
        s.pnp_steps = (1.0, 1.9)
        s.pnp_max_iter = 15
        s.tv_weights = (1e-3, 1e-2)
        s.tv_iters = 200
        s.eval_every = 10
        s.timing_repeats = 2
    elif preset == "paper":
        s.eval_every = 2500
    return s


@dataclasses.dataclass(frozen=True)
class LearnedRun:
    """One training run of the comparison: a method, a seed and its config."""

    method: str  # key of the method (folder name)
    seed: int
    config: ml_collections.ConfigDict
    init_from: str | None = None  # method whose trained R initialises this one


METHOD_LABELS = {
    "blurred": "blurred input d",
    "adjoint": "start point A^T d",
    "wiener": "Wiener (FFT)",
    "tikhonov": "Tikhonov (CG)",
    "tv": "TV (primal-dual)",
    "pnp": "PnP-PGD (DnCNN denoiser)",
    "feedforward": "feed-forward DnCNN",
    "unrolled": "DE-GRAD unrolled (K={k})",
    "ift": "DE-GRAD + IFT",
    "neumann{k}": "DE-GRAD + Neumann({k})",
    "jfb": "DE-GRAD + JFB",
    "jfb_pretrained": "DE-GRAD + JFB (pretrained R)",
}


def _label(method: str, settings) -> str:
    if method.startswith("neumann"):
        return METHOD_LABELS["neumann{k}"].format(k=method[len("neumann") :])
    if method.startswith("denoiser"):
        return f"DnCNN denoiser (noise {method.split('_', 1)[1]})"
    return METHOD_LABELS[method].format(k=settings.unrolled_k)


def learned_runs(base: ml_collections.ConfigDict, settings) -> list[LearnedRun]:
    """The training runs of the comparison, in an order that respects dependencies
    (the feed-forward run before the pretrained JFB run, denoisers before PnP)."""
    runs = []
    for seed in settings.seeds:

        def variant(method, init_from=None, seed=seed, **changes):
            c = base.copy_and_resolve_references()
            c.seed = int(seed)
            c.eval_every = int(settings.eval_every)
            apply_overrides(c, [f"{k}={v!r}" for k, v in changes.items()])
            runs.append(LearnedRun(method, int(seed), c, init_from))

        for sigma in settings.denoiser_noise:
            # A denoiser is the feed-forward model for the identity blur.
            variant(
                f"denoiser_{sigma:g}", **{"model.kind": "feedforward", "blur.kernel_size": 1,
                                          "noise_std": float(sigma)}
            )  # fmt: skip
        variant("feedforward", **{"model.kind": "feedforward"})
        variant(
            "unrolled",
            **{"backward.name": "unrolled", "solver.tol": 0.0,
               "solver.max_iter": int(settings.unrolled_k)},
        )  # fmt: skip
        variant("ift", **{"backward.name": "ift"})
        for k in settings.neumann_k:
            variant(f"neumann{int(k)}", **{"backward.name": "neumann", "backward.k": int(k)})
        variant("jfb", **{"backward.name": "jfb"})
        variant("jfb_pretrained", init_from="feedforward", **{"backward.name": "jfb"})
    return runs


# ----------------------------------------------------------------------------
# Training (reused or resumed when the folder holds the same run)


def _complete(workdir: str) -> bool:
    """A finished run that can be measured: its results and its final checkpoint.

    The results, metrics and config of ``results/<preset>/runs`` are committed
    to the repository without checkpoints, so a fresh clone holds records
    that cannot be reused."""
    return os.path.exists(os.path.join(workdir, "results.json")) and os.path.isdir(
        os.path.join(workdir, "checkpoints", "latest")
    )


def _train(run: LearnedRun, workdir: str, out: str, progress: bool) -> dict:
    """Trains ``run`` into ``workdir`` unless it is there already; returns its results."""
    results_path = os.path.join(workdir, "results.json")
    config_path = os.path.join(workdir, "config.json")
    wanted = config_json(run.config.copy_and_resolve_references())
    resume = False
    if os.path.exists(config_path):
        with open(config_path) as f:
            have = json.load(f)
        if config_diff(have, wanted):
            raise SystemExit(
                f"error: {workdir} holds a run with a different configuration; "
                f"rerun with --fresh to retrain everything in {out}, or choose another --out"
            )
        if _complete(workdir):
            with open(results_path) as f:
                return json.load(f)
        if os.path.isdir(os.path.join(workdir, "checkpoints", "latest")):
            resume = True
        else:  # no checkpoint: killed before its first one, or a committed record (fresh clone)
            if os.path.exists(results_path):
                _say(f"{workdir}: finished run without a checkpoint; training it again")
            shutil.rmtree(workdir)
    init_hook = None
    if run.init_from is not None:
        source = os.path.join(out, "runs", run.init_from, f"seed{run.seed}")

        def init_hook(model):
            pretrained = load_run(source, which="latest").model
            nnx.update(model.regulariser, nnx.state(pretrained.regulariser))

    _say(f"--- training {run.method} (seed {run.seed}) in {workdir}" + (" [resume]" * resume))
    results = train_and_evaluate(
        run.config, workdir, resume=resume, progress=progress, init_hook=init_hook
    )
    return results


# ----------------------------------------------------------------------------
# Measurements of a trained model


def _measure_learned(run: Run, x_train: np.ndarray, eval_batch: int, repeats: int) -> dict:
    """Train-step time, forward time (backward = the difference), compiled peak
    memory of the train step, and inference time per image, for the trained
    parameters of ``run`` on a training batch.

    Every timed train step starts from the same state (a fresh copy: the step
    donates it), and the forward is timed on the very images the step
    degrades (same noise key), so both solve the same problem with the same
    iterations and their difference is the backward pass plus the update.
    """
    config = run.config
    dp = DataParallel.create()
    steps = int(config.steps)
    tx = make_optimizer(config.optim, steps)
    graphdef, state = create_train_state(run.model, tx, jax.random.PRNGKey(int(config.seed)))
    train_step = make_train_step(
        graphdef, tx, run.blur, run.noise_std, dp, make_schedule(config.optim, steps)
    )
    clean = dp.shard_batch(x_train)
    compiled = train_step.lower(state, clean).compile()
    memory = compiled_memory(compiled)
    copies = [jax.tree.map(jnp.copy, state) for _ in range(repeats + 1)]  # + the warm-up

    def one_step():
        _, metrics = compiled(copies.pop(), clean)  # each copy is donated
        return metrics

    step_t = time_call(one_step, repeats=repeats)
    eval_step = make_eval_step(graphdef, dp)
    key = jax.random.fold_in(state.key, state.step)  # the noise the train step draws
    d = dp.shard_batch(np.asarray(degrade(key, jnp.asarray(x_train), run.blur, run.noise_std)))
    params, rest = state.params, state.rest
    fwd_t = time_call(eval_step, params, rest, d, repeats=repeats)
    n = len(x_train)
    d_eval = dp.shard_batch(np.resize(np.asarray(d), (eval_batch, *d.shape[1:])))
    infer_t = time_call(eval_step, params, rest, d_eval, repeats=repeats)
    return {
        "train_ms_per_step": 1e3 * step_t["median_s"],
        "forward_ms_per_step": 1e3 * fwd_t["median_s"],
        "backward_ms_per_step": 1e3 * (step_t["median_s"] - fwd_t["median_s"]),
        "peak_memory_bytes": memory["peak_bytes"],
        "temp_memory_bytes": memory["temp_bytes"],
        "infer_ms_per_image": 1e3 * infer_t["median_s"] / eval_batch,
        "timing_batch": n,
    }


def _implicit_record(results: dict) -> dict:
    """Contraction of T at the test fixed points, the IFT adjoint's convergence during
    training and cos(JFB, IFT) of the trained model, from a run's results.json (all
    measured by ``train_and_evaluate`` on the final parameters and these test images)."""
    contraction = results.get("contraction") or {}
    alignment = results.get("gradient_alignment") or {}
    return {
        "contraction_mean": contraction.get("test_mean"),
        "contraction_max": contraction.get("test_max"),
        "ift_adjoint_converged": results.get("ift_adjoint_converged_during_training"),
        "cos_jfb_ift": alignment.get("cos_jfb_ift"),
    }


#: An IFT row whose training adjoints reached their tolerance less often than this
#: is labelled as a truncated adjoint in the table.
TRUNCATED_ADJOINT = 0.5


def _training_time(workdir: str) -> tuple[float | None, list[tuple[float, float]]]:
    """Total training seconds and the (train seconds, test PSNR) curve of a run."""
    curve = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "train_time_s" in r and "test/psnr_standard" in r:
                curve.append((float(r["train_time_s"]), float(r["test/psnr_standard"])))
    return (curve[-1][0] if curve else None), curve


# ----------------------------------------------------------------------------
# Aggregation and output


METRIC_KEYS = ("psnr_standard", "psnr_paper", "ssim_standard", "ssim_paper")


def _aggregate(per_seed: list[dict]) -> dict:
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


def _fmt(x, spec=".2f", none="–"):
    return none if x is None else format(x, spec)


def _table_md(rows: list[dict], header: dict) -> str:
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
            _fmt(r.get("num_params"), ",.0f"),
            _fmt(r.get("train_ms_per_step"), ".0f"),
            _fmt(r.get("backward_ms_per_step"), ".0f"),
            _fmt(None if peak is None else peak / 2**20, ".1f"),
            _fmt(r.get("mean_iterations"), ".1f"),
            "–"
            if r.get("contraction_mean") is None
            else f"{r['contraction_mean']:.4f} / {r['contraction_max']:.4f}",
            "–"
            if r.get("ift_adjoint_converged") is None
            else f"{100 * r['ift_adjoint_converged']:.0f}%",
            _fmt(r.get("cos_jfb_ift"), ".3f"),
            _fmt(r.get("training_time_s"), ".0f"),
            _fmt(r.get("infer_ms_per_image"), ".2f"),
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
        "adjoint solves that reached backward.tol (IFT rows). cos(JFB, IFT): cosine of "
        "the trained model's JFB and IFT weight gradients on 8 test images, the IFT "
        "adjoint by GMRES to 1e-6.",
        "",
    ]
    return "\n".join(intro + lines) + "\n"


def _plot_psnr_vs_time(curves: dict[str, list], baselines: dict[str, float], path: str) -> None:
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


def _say(message: str) -> None:
    print(message, flush=True)


def _machine() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"CPU {platform.machine()}, {os.cpu_count()} cores ({platform.platform(terse=True)})"
    return f"{dev.device_kind} ({jax.device_count()} device(s))"


# ----------------------------------------------------------------------------
# The comparison


def run_comparison(
    base: ml_collections.ConfigDict,
    settings: ml_collections.ConfigDict,
    out: str,
    *,
    methods: list[str] | None = None,
    progress: bool = True,
    command: str = "",
    skip_missing: bool = False,
) -> dict:
    """Trains what is missing, scores every method and writes the table and figures.

    Args:
      base: the preset's training config (with overrides applied).
      settings: :func:`compare_settings` (with overrides applied).
      out: output folder (``runs/`` inside holds the training runs).
      methods: restrict to these method keys (default: all).
      progress: progress bars while training.
      command: the command line, recorded in the table.
      skip_missing: train nothing; tabulate the runs that are complete (rows
        then list the seeds they average over).

    Returns: the content of ``table.json``.
    """
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    blur = blur_from_config(base)
    noise_std = float(base.noise_std)
    base_seed = int(base.seed)
    data = load_data_from_config(base)
    _say(f"data: {data.description}")
    # The images train_and_evaluate scores with, so seed-`base_seed` runs see these very ones.
    x_val, x_test = data.val, data.test
    d_val, d_test = evaluation_images(base, data, blur)
    x_timing = data.train_batch(0, int(base.batch_size), base_seed)
    repeats = int(settings.timing_repeats)
    eval_bs = int(base.eval_batch_size)
    wanted = set(methods) if methods else None

    def want(method: str) -> bool:
        key = "neumann" if method.startswith("neumann") else method
        return wanted is None or method in wanted or key in wanted

    rows: dict[str, dict] = {}
    outputs: dict[str, np.ndarray] = {}  # seed-`base_seed` restorations of the test images

    def add_row(method: str, per_seed: list[dict], extra: dict | None = None):
        row = _aggregate(per_seed)
        row.update(method=method, label=_label(method, settings), **(extra or {}))
        conv = row.get("ift_adjoint_converged")
        if conv is not None and conv < TRUNCATED_ADJOINT:
            row["label"] += f" (truncated adjoint: {100 * conv:.0f}% of solves converged)"
        row["per_seed"] = per_seed
        rows[method] = row

    # ---- classical methods ----------------------------------------------------
    def time_per_image(fn, *args):
        return 1e3 * time_call(fn, *args, repeats=repeats)["median_s"] / len(d_test)

    dj = jnp.asarray(d_test)
    x_adj = np.asarray(blur.adjoint(dj))
    for method, x_hat, fn in (
        ("blurred", d_test, None),
        ("adjoint", x_adj, jax.jit(blur.adjoint)),
    ):
        if want(method):
            timing = {"infer_ms_per_image": time_per_image(fn, dj)} if fn else {}
            add_row(method, [{"seed": base_seed, **score(x_test, x_hat)}], timing)
            outputs[method] = x_hat
    # The training loop's classical baselines, with the comparison's TV settings.
    classical_cfg = base.copy_and_resolve_references()
    classical_cfg.tv.weights = tuple(settings.tv_weights)
    classical_cfg.tv.iters, classical_cfg.tv.tol = int(settings.tv_iters), float(settings.tv_tol)
    for method, (fn, grid) in classical_methods(classical_cfg).items():
        if not want(method):
            continue
        t0 = time.perf_counter()
        metrics, restored = evaluate_classical(
            classical_cfg, blur, d_val, x_val, d_test, x_test, {method: (fn, grid)}
        )
        tuning_s = time.perf_counter() - t0
        weight, x_hat = metrics[method]["weight"], restored[method]
        jitted = jax.jit(lambda d, w, fn=fn: fn(d, blur, w))
        w = jnp.asarray(weight, jnp.float32)
        extra = {
            "weight": weight,
            "tuning": metrics[method]["tuning"],
            "tuning_s": tuning_s,
            "infer_ms_per_image": time_per_image(jitted, dj, w),
        }
        if method == "tv":
            _, iters = jax.jit(
                lambda d, w: tv_deblur(
                    d, blur, w, int(settings.tv_iters), float(settings.tv_tol), True
                )
            )(dj, w)
            extra["mean_iterations"] = float(iters)
        if weight in (grid[0], grid[-1]):
            _say(f"warning: {method}'s best weight {weight:g} is at the edge of its grid")
        add_row(method, [{"seed": base_seed, **score(x_test, x_hat)}], extra)
        outputs[method] = x_hat
        _say(f"{_label(method, settings)}: weight {weight:.3g}, {_line(rows[method])}")

    # ---- learned methods ------------------------------------------------------
    runs = [r for r in learned_runs(base, settings) if want(r.method) or _needed(r, wanted)]
    per_method: dict[str, list[dict]] = {}
    curves: dict[str, list] = {}
    denoisers: dict[int, list[tuple[float, str]]] = {}
    dp = DataParallel.create()
    for run in runs:
        workdir = os.path.join(out, "runs", run.method, f"seed{run.seed}")
        if skip_missing and not _complete(workdir):
            _say(f"skipping {run.method} (seed {run.seed}): not trained yet")
            continue
        results = _train(run, workdir, out, progress)
        if run.method.startswith("denoiser"):
            sigma = float(run.config.noise_std)
            denoisers.setdefault(run.seed, []).append((sigma, workdir))
            continue
        if not want(run.method):
            continue
        trained = load_run(workdir, which="latest")
        graphdef, params, rest = nnx.split(trained.model, nnx.Param, ...)
        eval_step = make_eval_step(graphdef, dp)
        x_hat, iterations, status = predict(eval_step, params, rest, d_test, eval_bs, dp)
        train_s, curve = _training_time(workdir)
        record = {
            "seed": run.seed,
            **score(x_test, x_hat),
            "mean_iterations": float(np.mean(iterations)),
            "fraction_converged": float(np.mean(status == int(jfbjax.CONVERGED))),
            "num_params": int(results["model"]["num_params"]),
            "loop_ms_per_step": results["timing"]["ms_per_step"],
            "training_time_s": train_s,
            **_implicit_record(results),
            **_measure_learned(trained, x_timing, eval_bs, repeats),
        }
        per_method.setdefault(run.method, []).append(record)
        if run.seed == base_seed:
            outputs[run.method] = x_hat
            curves[_label(run.method, settings)] = curve
        _say(f"{_label(run.method, settings)} (seed {run.seed}): {_line(record)}")

    # ---- plug-and-play with the trained denoisers ----------------------------
    if want("pnp") and denoisers:
        per_seed = []
        for seed, found in sorted(denoisers.items()):
            record, x_hat = _pnp(found, base, settings, blur, d_val, x_val, d_test, x_test, repeats)
            record["seed"] = seed
            record["training_time_s"] = sum(
                _training_time(w)[0] or 0.0 for _, w in found
            )  # all of its denoisers
            per_seed.append(record)
            if seed == base_seed:
                outputs["pnp"] = x_hat
            _say(f"PnP (seed {seed}): {_line(record)}")
        per_method["pnp"] = per_seed

    order = [m for m in _ORDER if m in per_method or m in rows]
    order += sorted(m for m in per_method if m not in order)
    for method in order:
        if method in per_method:
            add_row(method, per_method[method])
    ordered = [rows[m] for m in order if m in rows]

    # ---- outputs ----------------------------------------------------------------
    header = {
        "preset": base.get("preset", "?"),
        "command": command,
        "machine": _machine(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "data": data.description,
        "blur": f"{blur.kernel_size}x{blur.kernel_size} Gaussian std {blur.sigma:g}, "
        f"{blur.boundary} boundary",
        "noise_std": noise_std,
        "n_test": len(x_test),
        "steps": int(base.steps),
        "batch_size": int(base.batch_size),
        "seeds": list(settings.seeds),
        "solver": f"{base.solver.name} (tol {base.solver.tol:g}, max {base.solver.max_iter})",
    }
    table = {"header": header, "settings": settings.to_dict(), "rows": ordered}
    with open(os.path.join(out, "table.json"), "w") as f:
        json.dump(jsonable(table), f, indent=2)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(_table_md(ordered, header))
    _plot_psnr_vs_time(
        curves,
        {
            rows[m]["label"]: rows[m]["psnr_standard"]
            for m in ("tikhonov", "tv", "pnp")
            if m in rows
        },
        os.path.join(out, "psnr_vs_time.png"),
    )
    i = 0  # one test image, restored by every method
    columns = {"clean": x_test[i : i + 1]}
    columns.update({_short(m): outputs[m][i : i + 1] for m in order if m in outputs})
    per_image = {
        name: np.asarray(psnr(jnp.asarray(v), jnp.asarray(x_test[i : i + 1])))
        for name, v in columns.items()
        if name != "clean"
    }
    plot_restorations(columns, os.path.join(out, "restorations.png"), per_image)
    _say(f"wrote {os.path.join(out, 'table.md')}, table.json, restorations.png, psnr_vs_time.png")
    return table


_ORDER = (
    "blurred",
    "adjoint",
    "wiener",
    "tikhonov",
    "tv",
    "pnp",
    "feedforward",
    "unrolled",
    "ift",
    "neumann2",
    "neumann3",
    "neumann5",
    "neumann10",
    "jfb",
    "jfb_pretrained",
)


_SHORT = {
    "blurred": "blurred d",
    "adjoint": "A^T d",
    "wiener": "Wiener",
    "tikhonov": "Tikhonov",
    "tv": "TV",
    "pnp": "PnP",
    "feedforward": "feed-forward",
    "unrolled": "unrolled",
    "ift": "IFT",
    "jfb": "JFB",
    "jfb_pretrained": "JFB (pretr.)",
}


def _short(method: str) -> str:
    """Column title of ``method`` in the restorations figure."""
    if method.startswith("neumann"):
        return f"Neumann({method[len('neumann') :]})"
    return _SHORT.get(method, method)


def _needed(run: LearnedRun, wanted: set[str] | None) -> bool:
    """Runs that a wanted method depends on (denoisers for PnP, the feed-forward
    run for the pretrained JFB run)."""
    if wanted is None:
        return True
    if run.method.startswith("denoiser"):
        return "pnp" in wanted
    return run.method == "feedforward" and "jfb_pretrained" in wanted


def _line(m: dict) -> str:
    return (
        f"PSNR {m['psnr_standard']:.2f} dB (standard) / {m['psnr_paper']:.2f} (paper), "
        f"SSIM {m['ssim_standard']:.3f}"
    )


def _denoiser_fn(workdir: str):
    """``(graphdef, state)`` of a trained denoiser (FeedForward, identity blur)."""
    model = load_run(workdir, which="latest").model
    return nnx.split(model)


def _pnp_restorer(graphdef, solver, blur):
    @jax.jit
    def restore(state, d, step):
        model = nnx.merge(graphdef, state)
        return pnp_pgd(d, blur, lambda z: model(z)[0], step, solver)

    return restore


def _pnp_solver(base, settings):
    cfg = base.solver.copy_and_resolve_references()
    cfg.max_iter = int(settings.pnp_max_iter)
    return solver_from_config(cfg)


def _pnp(
    found, base, settings, blur, d_val, x_val, d_test, x_test, repeats
) -> tuple[dict, np.ndarray]:
    """Tunes (denoiser level, step) on val, restores the test images with the best
    setting and times that restoration (milliseconds per image, compiled)."""
    solver = _pnp_solver(base, settings)
    best = None
    tuning = []
    for sigma, workdir in sorted(found):
        graphdef, state = _denoiser_fn(workdir)
        restore = _pnp_restorer(graphdef, solver, blur)
        for step in settings.pnp_steps:
            x, _ = restore(state, jnp.asarray(d_val), jnp.float32(step))
            value = float(np.mean(psnr(jnp.asarray(x_val), x)))
            tuning.append({"denoiser_noise": sigma, "step": float(step), "val_psnr": value})
            if np.isfinite(value) and (best is None or value > best[0]):
                best = (value, sigma, float(step), restore, state)
    if best is None:
        raise RuntimeError(f"every PnP setting diverged on the validation images: {tuning}")
    _, sigma, step, restore, state = best
    args = (state, jnp.asarray(d_test), jnp.float32(step))
    x, info = restore(*args)
    x = np.asarray(x)
    record = {
        **score(x_test, x),
        "denoiser_noise": sigma,
        "step": step,
        "mean_iterations": float(np.mean(info.iterations)),
        "fraction_converged": float(np.mean(np.asarray(info.status) == int(jfbjax.CONVERGED))),
        "num_params": int(sum(v.size for v in jax.tree.leaves(nnx.state(state, nnx.Param)))),
        "infer_ms_per_image": 1e3
        * time_call(restore, *args, repeats=repeats)["median_s"]
        / len(d_test),
        "tuning": tuning,
    }
    return record, x


# ----------------------------------------------------------------------------
# Command line


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.compare",
        description="Train and evaluate every deblurring method on the same data; "
        "write OUT/table.md, OUT/table.json and figures. --preset <p>_ablation runs "
        "the ablation of preset <p> instead (python -m experiments.ablation).",
    )
    p.add_argument("--preset", choices=PRESETS, default="cpu")
    p.add_argument("--data", choices=("auto", "builtin", "tfds", "folder"), default=None)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--out", default=None, help="output folder (default: results/<preset>)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of learned methods")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps of every method")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="only these: blurred adjoint wiener tikhonov tv pnp feedforward unrolled ift "
        "neumann jfb jfb_pretrained (default: all)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override (experiments/configs.py)")  # fmt: skip
    p.add_argument("--compare_set", action="append", default=[], metavar="KEY=VALUE",
                   help="comparison setting override (compare_settings)")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="delete OUT/runs and retrain everything")
    p.add_argument(
        "--skip_missing",
        action="store_true",
        help="train nothing: tabulate the runs already complete in OUT/runs",
    )
    p.add_argument("--no_progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    preset = next((v for k, v in itertools.pairwise(argv) if k == "--preset"), None)
    if preset is not None and preset.endswith("_ablation"):
        # `--preset cpu_ablation`: the ablation of the cpu preset (experiments.ablation).
        from experiments import ablation

        rest = [x for x in argv if x not in ("--preset", preset)]
        return ablation.main(["--preset", preset[: -len("_ablation")], *rest])
    args = _parse(argv)
    base = get_config(args.preset)
    if args.data is not None:
        base.data.source = args.data
    if args.data_dir is not None:
        base.data.data_dir = args.data_dir
    if args.steps is not None:
        base.steps = args.steps
    settings = compare_settings(args.preset)
    try:
        apply_overrides(base, args.set)
        apply_overrides(settings, args.compare_set)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.seeds is not None:
        settings.seeds = tuple(args.seeds)
    out = args.out or os.path.join("results", args.preset)
    if args.fresh and os.path.isdir(os.path.join(out, "runs")):
        shutil.rmtree(os.path.join(out, "runs"))
    command = "python -m experiments.compare " + " ".join(argv)
    return run_comparison(
        base,
        settings,
        out,
        methods=args.methods,
        progress=not args.no_progress,
        command=command.strip(),
        skip_missing=args.skip_missing,
    )


if __name__ == "__main__":
    main()
