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

import jfbjax
from experiments.compare_report import (
    adjoint_fields,
    aggregate,
    plot_psnr_vs_time,
    table_markdown,
)
from experiments.configs import PRESETS, apply_overrides, compare_settings, get_config
from jfbjax.builders import solver_from_config
from jfbjax.data import load_data_from_config
from jfbjax.imaging.baselines import tv_deblur
from jfbjax.imaging.blur import Blur
from jfbjax.imaging.metrics import psnr
from jfbjax.imaging.noise import degrade
from jfbjax.models import pnp_pgd
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
    train_graphdef,
)
from jfbjax.training.checkpoints import has_checkpoint
from jfbjax.training.classical import classical_methods, evaluate_classical, input_baselines
from jfbjax.training.figures import plot_restorations
from jfbjax.training.profiling import compiled_memory, time_call
from jfbjax.training.records import (
    config_json,
    evaluation_images,
    jsonable,
    read_config_record,
    training_diff,
)

__all__ = [
    "Method",
    "RunMismatchError",
    "compare_settings",
    "learned_runs",
    "main",
    "methods",
    "run",
    "run_comparison",
    "select",
]


# ----------------------------------------------------------------------------
# Settings


@dataclasses.dataclass(frozen=True)
class LearnedRun:
    """One training run of the comparison: a method, a seed and its config."""

    method: str  # key of the method (folder name)
    seed: int
    config: ml_collections.ConfigDict
    init_from: str | None = None  # method whose trained R initialises this one

    @property
    def init_scale(self) -> float:
        """The factor the initialising R's output is scaled by first (in the config)."""
        return float(self.config.get("init_scale", 1.0))


@dataclasses.dataclass(frozen=True)
class Method:
    """One method of the comparison: everything the run plan, the table and the
    figures need to know about it.

    Attributes:
      key: row key and run folder name (``OUT/runs/<key>/seed<k>``).
      label: the table's row label.
      short: the column title in ``restorations.png``.
      kind: ``"input"`` (the blurred input, ``A^T d``), ``"classical"``
        (tuned on val by :func:`~jfbjax.training.classical.evaluate_classical`),
        ``"learned"`` (a training run with ``overrides`` on the preset's
        config), ``"denoiser"`` (a training run that only serves another
        method; no row) or ``"pnp"`` (plug-and-play with the denoisers).
      overrides: ``(config key, value)`` pairs applied to the preset's config.
      init_from: the method whose trained R initialises this run.
      needs: methods trained first because this one uses them (not shown
        unless asked for).
      group: a name that selects every method of the group on the command
        line (``--methods neumann``).
      opt_in: run only when asked for by name (``--methods ift_tight``), not
        in the default "all methods" comparison (too slow for its budget).
    """

    key: str
    label: str
    short: str
    kind: str
    overrides: tuple[tuple[str, object], ...] = ()
    init_from: str | None = None
    needs: tuple[str, ...] = ()
    group: str | None = None
    opt_in: bool = False

    @property
    def trained(self) -> bool:
        """Whether the method is a training run of its own."""
        return self.kind in ("learned", "denoiser")


def methods(settings: ml_collections.ConfigDict) -> tuple[Method, ...]:
    """Every method of the comparison, in table order (dependencies first).

    Adding a method to the comparison is adding its entry here.
    """
    k = int(settings.unrolled_k)
    denoisers = tuple(
        Method(
            f"denoiser_{sigma:g}", f"DnCNN denoiser (noise {sigma:g})", f"denoiser {sigma:g}",
            "denoiser",
            # A denoiser is the feed-forward model for the identity blur.
            (("model.kind", "feedforward"), ("blur.kernel_size", 1), ("noise_std", float(sigma))),
        )
        for sigma in settings.denoiser_noise
    )  # fmt: skip
    neumann = tuple(
        Method(f"neumann{int(n)}", f"DE-GRAD + Neumann({int(n)})", f"Neumann({int(n)})", "learned",
               (("backward.name", "neumann"), ("backward.k", int(n))), group="neumann")
        for n in settings.neumann_k
    )  # fmt: skip
    return (
        Method("blurred", "blurred input d", "blurred d", "input"),
        Method("adjoint", "start point A^T d", "A^T d", "input"),
        Method("wiener", "Wiener (FFT)", "Wiener", "classical"),
        Method("tikhonov", "Tikhonov (CG)", "Tikhonov", "classical"),
        Method("tv", "TV (primal-dual)", "TV", "classical"),
        *denoisers,
        Method("pnp", "PnP-PGD (DnCNN denoiser)", "PnP", "pnp",
               needs=tuple(m.key for m in denoisers)),
        Method("feedforward", "feed-forward DnCNN", "feed-forward", "learned",
               (("model.kind", "feedforward"),)),
        Method("unrolled", f"DE-GRAD unrolled (K={k})", "unrolled", "learned",
               (("backward.name", "unrolled"), ("solver.tol", 0.0), ("solver.max_iter", k))),
        Method("ift", "DE-GRAD + IFT", "IFT", "learned", (("backward.name", "ift"),)),
        # The adjoint budget that converges on >= 95% of training solves
        # (benchmarks/results/adjoint_budget_cpu.md): forward to 1e-5, adjoint
        # Anderson up to 150 iterations. 11.5x a JFB step (results/cpu_ift_tight),
        # so it runs only when asked for. Its training solves are not capped
        # (solver.train_max_iter=0): the reference IFT differentiates at a fixed point.
        Method("ift_tight", "DE-GRAD + IFT (fwd tol 1e-5, adjoint max 150)", "IFT tight",
               "learned", (("backward.name", "ift"), ("solver.tol", 1e-5),
                           ("solver.max_iter", 300), ("solver.train_max_iter", 0),
                           ("backward.max_iter", 150)), opt_in=True),
        *neumann,
        Method("jfb", "DE-GRAD + JFB", "JFB", "learned", (("backward.name", "jfb"),)),
        Method("jfb_pretrained", "DE-GRAD + JFB (pretrained R)", "JFB (pretr.)", "learned",
               (("backward.name", "jfb"),), init_from="feedforward", needs=("feedforward",)),
    )  # fmt: skip


def select(all_methods: tuple[Method, ...], wanted) -> tuple[list[Method], list[Method]]:
    """``(shown, run)``: the methods asked for (keys or groups; None: all but the
    denoiser rows and the opt-in methods) and those to run for them (plus what
    they need), in table order.

    Raises:
      ValueError: an unknown method name.
    """
    by_key = {m.key: m for m in all_methods}
    names = {m.key for m in all_methods} | {m.group for m in all_methods if m.group}
    if wanted is None:
        shown = [m for m in all_methods if m.kind != "denoiser" and not m.opt_in]
    else:
        unknown = sorted(set(wanted) - names)
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(names)}")
        shown = [m for m in all_methods if m.key in wanted or (m.group and m.group in wanted)]
    keys = {m.key for m in shown}
    todo = [m for m in shown]
    while todo:  # what they need, transitively
        for need in todo.pop().needs:
            if need not in keys:
                keys.add(need)
                todo.append(by_key[need])
    return shown, [m for m in all_methods if m.key in keys]


def learned_runs(base: ml_collections.ConfigDict, settings, wanted=None) -> list[LearnedRun]:
    """The training runs of the comparison (of the ``wanted`` methods and what they
    need), seed by seed in table order, so dependencies come first (the
    feed-forward run before the pretrained JFB run, denoisers before PnP)."""
    _, needed = select(methods(settings), wanted)
    runs = []
    for seed in settings.seeds:
        for m in needed:
            if not m.trained:
                continue
            c = base.copy_and_resolve_references()
            c.seed = int(seed)
            c.eval_every = int(settings.eval_every)
            apply_overrides(c, [f"{key}={value!r}" for key, value in m.overrides])
            if m.init_from:
                if c.model.regulariser != "dncnn":
                    raise ValueError(
                        f"{m.key} starts R from the feed-forward DnCNN of {m.init_from!r}, so "
                        f"it needs model.regulariser=dncnn (got {c.model.regulariser!r}); "
                        f"leave {m.key} out of --methods"
                    )
                # recorded with the run, so a run with another scale is not reused
                c.init_scale = _init_scale(settings, c.model)
            runs.append(LearnedRun(m.key, int(seed), c, m.init_from))
    return runs


def _init_scale(settings, model: ml_collections.ConfigDict) -> float:
    """``settings.init_scale`` when set (> 0); otherwise ``mu / eta_init`` of the run's
    own model (at most 1; 1 without a preconditioner), see :func:`compare_settings`."""
    if float(settings.init_scale) > 0:
        return float(settings.init_scale)
    mu = float(model.precond)
    return min(1.0, mu / float(model.eta_init)) if mu > 0 else 1.0


class RunMismatchError(ValueError):
    """A run folder holds a run with another configuration than the one asked for."""


# ----------------------------------------------------------------------------
# Training (reused or resumed when the folder holds the same run)


def _complete(workdir: str) -> bool:
    """A finished run that can be measured: its results and its final checkpoint.

    The results, metrics and config of ``results/<preset>/runs`` are committed
    to the repository without checkpoints, so a fresh clone holds records
    that cannot be reused."""
    return os.path.exists(os.path.join(workdir, "results.json")) and has_checkpoint(
        os.path.join(workdir, "checkpoints", "latest")
    )


def _train(run: LearnedRun, workdir: str, out: str, progress: bool) -> dict:
    """Trains ``run`` into ``workdir`` unless it is there already; returns its results."""
    results_path = os.path.join(workdir, "results.json")
    config_path = os.path.join(workdir, "config.json")
    wanted = config_json(run.config.copy_and_resolve_references())
    resume = False
    if os.path.exists(config_path):
        if diff := training_diff(read_config_record(config_path), wanted):
            raise RunMismatchError(
                f"{workdir} holds a run with a different configuration ({'; '.join(diff)}); "
                f"rerun with --fresh to retrain everything in {out}, or choose another --out"
            )
        if _complete(workdir):
            with open(results_path) as f:
                return json.load(f)
        if has_checkpoint(os.path.join(workdir, "checkpoints", "latest")):
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
            if run.init_scale != 1.0:
                model.regulariser.scale_output(run.init_scale)

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
    # the step as trained (solver.train_max_iter); inference below solves as evaluated
    train_gd = train_graphdef(config, run.model)
    train_step = make_train_step(
        train_gd, tx, run.blur, run.noise_std, dp, make_schedule(config.optim, steps)
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
    train_forward = eval_step if train_gd == graphdef else make_eval_step(train_gd, dp)
    key = jax.random.fold_in(state.key, state.step)  # the noise the train step draws
    d = dp.shard_batch(np.asarray(degrade(key, jnp.asarray(x_train), run.blur, run.noise_std)))
    params, rest = state.params, state.rest
    fwd_t = time_call(train_forward, params, rest, d, repeats=repeats)
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
    return {
        "contraction_mean": contraction.get("test_mean"),
        "contraction_max": contraction.get("test_max"),
        **adjoint_fields(results),
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


def _say(message: str) -> None:
    print(message, flush=True)


def _machine() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"CPU {platform.machine()}, {os.cpu_count()} cores ({platform.platform(terse=True)})"
    return f"{dev.device_kind} ({jax.device_count()} device(s))"


# ----------------------------------------------------------------------------
# The comparison


@dataclasses.dataclass(frozen=True)
class _Images:
    """What every method of one comparison is scored and timed on.

    ``val`` and ``test`` are ``(degraded, clean)`` pairs, the very images
    ``train_and_evaluate`` scores a seed-``base_seed`` run with; ``x_timing``
    is the training batch train steps are timed on.
    """

    blur: Blur
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    x_timing: np.ndarray
    repeats: int
    eval_batch: int
    base_seed: int

    def ms_per_test_image(self, fn, *args) -> float:
        """Median milliseconds of the compiled ``fn(*args)``, per test image."""
        return 1e3 * time_call(fn, *args, repeats=self.repeats)["median_s"] / len(self.test[0])


def _classical_rows(
    base, settings, images: _Images, want
) -> list[tuple[str, dict, dict, np.ndarray]]:
    """``(method, record, extra, test restoration)`` of the input and classical methods
    asked for: the training loop's baselines, with the comparison's TV settings."""
    blur, (d_test, x_test) = images.blur, images.test
    dj = jnp.asarray(d_test)
    out = []
    infer = {"adjoint": jax.jit(blur.adjoint)}  # the blurred input takes no time
    for method, x_hat in input_baselines(blur, d_test).items():
        if want(method):
            extra = {}
            if method in infer:
                extra["infer_ms_per_image"] = images.ms_per_test_image(infer[method], dj)
            out.append((method, {"seed": images.base_seed, **score(x_test, x_hat)}, extra, x_hat))
    config = base.copy_and_resolve_references()
    config.tv.weights = tuple(settings.tv_weights)
    config.tv.iters, config.tv.tol = int(settings.tv_iters), float(settings.tv_tol)
    for method, (fn, grid) in classical_methods(config).items():
        if not want(method):
            continue
        t0 = time.perf_counter()
        metrics, restored = evaluate_classical(
            config, blur, *images.val, *images.test, {method: (fn, grid)}
        )
        tuning_s = time.perf_counter() - t0
        weight = metrics[method]["weight"]
        w = jnp.asarray(weight, jnp.float32)
        extra = {
            "weight": weight,
            "tuning": metrics[method]["tuning"],
            "tuning_s": tuning_s,
            "infer_ms_per_image": images.ms_per_test_image(
                jax.jit(lambda d, w, fn=fn: fn(d, blur, w)), dj, w
            ),
        }
        if method == "tv":
            _, iters = jax.jit(
                lambda d, w: tv_deblur(d, blur, w, config.tv.iters, config.tv.tol, True)
            )(dj, w)
            extra["mean_iterations"] = float(iters)
        if weight in (grid[0], grid[-1]):
            _say(f"warning: {method}'s best weight {weight:g} is at the edge of its grid")
        x_hat = restored[method]
        out.append((method, {"seed": images.base_seed, **score(x_test, x_hat)}, extra, x_hat))
    return out


@dataclasses.dataclass
class _Learned:
    """The trained methods' measurements: per-seed records, seed-``base_seed`` test
    restorations and PSNR-vs-time curves, and the denoisers PnP will use."""

    per_method: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    curves: dict[str, list] = dataclasses.field(default_factory=dict)
    denoisers: dict[int, list[tuple[float, str]]] = dataclasses.field(default_factory=dict)


def _learned_rows(runs, out, images: _Images, by_key, want, progress, skip_missing) -> _Learned:
    """Trains (or reuses) every run and measures the ones shown."""
    learned = _Learned()
    d_test, x_test = images.test
    dp = DataParallel.create()
    for run in runs:
        workdir = os.path.join(out, "runs", run.method, f"seed{run.seed}")
        if skip_missing and not _complete(workdir):
            _say(f"skipping {run.method} (seed {run.seed}): not trained yet")
            continue
        results = _train(run, workdir, out, progress)
        if by_key[run.method].kind == "denoiser":
            sigma = float(run.config.noise_std)
            learned.denoisers.setdefault(run.seed, []).append((sigma, workdir))
            continue
        if not want(run.method):
            continue
        trained = load_run(workdir, which="latest")
        graphdef, params, rest = nnx.split(trained.model, nnx.Param, ...)
        eval_step = make_eval_step(graphdef, dp)
        x_hat, iterations, status = predict(eval_step, params, rest, d_test, images.eval_batch, dp)
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
            **_measure_learned(trained, images.x_timing, images.eval_batch, images.repeats),
        }
        learned.per_method.setdefault(run.method, []).append(record)
        if run.seed == images.base_seed:
            learned.outputs[run.method] = x_hat
            learned.curves[by_key[run.method].label] = curve
        _say(f"{by_key[run.method].label} (seed {run.seed}): {_line(record)}")
    return learned


def _pnp_rows(denoisers, base, settings, images: _Images) -> tuple[list[dict], np.ndarray | None]:
    """PnP with each seed's trained denoisers: per-seed records and the seed-``base_seed``
    test restoration."""
    per_seed, x_base = [], None
    for seed, found in sorted(denoisers.items()):
        record, x_hat = _pnp(found, base, settings, images.blur, *images.val, *images.test,
                             images.repeats)  # fmt: skip
        record["seed"] = seed
        record["training_time_s"] = sum(_training_time(w)[0] or 0.0 for _, w in found)
        per_seed.append(record)
        if seed == images.base_seed:
            x_base = x_hat
        _say(f"PnP (seed {seed}): {_line(record)}")
    return per_seed, x_base


def _header(base, settings, blur: Blur, data, n_test: int, command: str) -> dict:
    return {
        "preset": base.get("preset", "?"),
        "command": command,
        "machine": _machine(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "data": data.description,
        "blur": f"{blur.kernel_size}x{blur.kernel_size} Gaussian std {blur.sigma:g}, "
        f"{blur.boundary} boundary",
        "noise_std": float(base.noise_std),
        "n_test": n_test,
        "steps": int(base.steps),
        "batch_size": int(base.batch_size),
        "seeds": list(settings.seeds),
        "solver": f"{base.solver.name} (tol {base.solver.tol:g}, max {base.solver.max_iter})",
    }


def _write_outputs(out: str, table: dict, curves: dict, columns: dict, x_clean) -> None:
    """``table.json``, ``table.md``, ``psnr_vs_time.png`` and ``restorations.png``
    (``columns``: short name -> one restored test image, ``x_clean`` its clean image)."""
    rows = {r["method"]: r for r in table["rows"]}
    with open(os.path.join(out, "table.json"), "w") as f:
        json.dump(jsonable(table), f, indent=2)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table_markdown(table["rows"], table["header"]))
    references = {rows[m]["label"]: rows[m]["psnr_standard"] for m in ("tikhonov", "tv", "pnp")
                  if m in rows}  # fmt: skip
    plot_psnr_vs_time(curves, references, os.path.join(out, "psnr_vs_time.png"))
    per_image = {
        name: np.asarray(psnr(jnp.asarray(v), jnp.asarray(x_clean))) for name, v in columns.items()
    }
    plot_restorations({"clean": x_clean, **columns}, os.path.join(out, "restorations.png"),
                      per_image)  # fmt: skip
    _say(f"wrote {os.path.join(out, 'table.md')}, table.json, restorations.png, psnr_vs_time.png")


def run_comparison(
    base: ml_collections.ConfigDict,
    settings: ml_collections.ConfigDict,
    out: str,
    *,
    wanted: list[str] | None = None,
    progress: bool = True,
    command: str = "",
    skip_missing: bool = False,
) -> dict:
    """Trains what is missing, scores every method and writes the table and figures.

    Args:
      base: the preset's training config (with overrides applied).
      settings: :func:`compare_settings` (with overrides applied).
      out: output folder (``runs/`` inside holds the training runs).
      wanted: restrict to these method keys or groups (:func:`methods`;
        default: all).
      progress: progress bars while training.
      command: the command line, recorded in the table.
      skip_missing: train nothing; tabulate the runs that are complete (rows
        then list the seeds they average over).

    Returns: the content of ``table.json``.
    """
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    blur = blur_from_config(base)
    data = load_data_from_config(base)
    _say(f"data: {data.description}")
    d_val, d_test = evaluation_images(base, data, blur)
    images = _Images(
        blur=blur,
        val=(d_val, data.val),
        test=(d_test, data.test),
        x_timing=data.train_batch(0, int(base.batch_size), int(base.seed)),
        repeats=int(settings.timing_repeats),
        eval_batch=int(base.eval_batch_size),
        base_seed=int(base.seed),
    )
    registry = methods(settings)
    shown, _ = select(registry, set(wanted) if wanted else None)
    by_key = {m.key: m for m in registry}
    shown_keys = {m.key for m in shown}

    def want(method: str) -> bool:
        return method in shown_keys

    per_method, extras, outputs = {}, {}, {}
    for method, record, extra, x_hat in _classical_rows(base, settings, images, want):
        per_method[method], extras[method], outputs[method] = [record], extra, x_hat
        weight = f"weight {extra['weight']:.3g}, " if "weight" in extra else ""
        _say(f"{by_key[method].label}: {weight}{_line(record)}")
    runs = learned_runs(base, settings, set(wanted) if wanted else None)
    learned = _learned_rows(runs, out, images, by_key, want, progress, skip_missing)
    per_method.update(learned.per_method)
    outputs.update(learned.outputs)
    if want("pnp") and learned.denoisers:
        per_method["pnp"], x_pnp = _pnp_rows(learned.denoisers, base, settings, images)
        if x_pnp is not None:
            outputs["pnp"] = x_pnp

    order = [m.key for m in shown if m.key in per_method]
    table = {
        "header": _header(base, settings, blur, data, len(data.test), command),
        "settings": settings.to_dict(),
        "rows": [_row(by_key[m], per_method[m], extras.get(m)) for m in order],
    }
    i = 0  # one test image, restored by every method
    columns = {by_key[m].short: outputs[m][i : i + 1] for m in order if m in outputs}
    _write_outputs(out, table, learned.curves, columns, data.test[i : i + 1])
    return table


def _row(method: Method, per_seed: list[dict], extra: dict | None = None) -> dict:
    """One table row: the seeds' mean (``aggregate``), labelled; an IFT row whose
    adjoints mostly failed says so in its label."""
    row = aggregate(per_seed)
    row.update(method=method.key, label=method.label, **(extra or {}))
    conv = row.get("ift_adjoint_converged")
    if conv is not None and conv < TRUNCATED_ADJOINT:
        row["label"] += f" (truncated adjoint: {100 * conv:.0f}% of solves converged)"
    row["per_seed"] = per_seed
    return row


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
        help="only these (keys or groups): blurred adjoint wiener tikhonov tv pnp feedforward "
        "unrolled ift ift_tight neumann jfb jfb_pretrained (default: all but the opt-in ift_tight)",
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


def run(argv=None) -> dict:
    """The command line's work: trains what ``argv`` asks for and returns the table.

    Raises ``ValueError`` (bad overrides or methods; :class:`RunMismatchError`:
    a run folder holding another configuration), which ``main`` turns into
    exit status 2, and ``SystemExit`` for flags argparse rejects.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    preset = next((v for k, v in itertools.pairwise(argv) if k == "--preset"), None)
    if preset is not None and preset.endswith("_ablation"):
        # `--preset cpu_ablation`: the ablation of the cpu preset (experiments.ablation).
        from experiments import ablation

        rest = [x for x in argv if x not in ("--preset", preset)]
        return ablation.run(["--preset", preset[: -len("_ablation")], *rest])
    args = _parse(argv)
    base = get_config(args.preset)
    if args.data is not None:
        base.data.source = args.data
    if args.data_dir is not None:
        base.data.data_dir = args.data_dir
    if args.steps is not None:
        base.steps = args.steps
    settings = compare_settings(args.preset)
    apply_overrides(base, args.set)
    apply_overrides(settings, args.compare_set)
    if args.seeds is not None:
        settings.seeds = tuple(args.seeds)
    if args.methods:
        select(methods(settings), set(args.methods))  # unknown keys fail before anything is done
    out = args.out or os.path.join("results", args.preset)
    if args.fresh and os.path.isdir(os.path.join(out, "runs")):
        shutil.rmtree(os.path.join(out, "runs"))
    command = "python -m experiments.compare " + " ".join(argv)
    return run_comparison(
        base,
        settings,
        out,
        wanted=args.methods,
        progress=not args.no_progress,
        command=command.strip(),
        skip_missing=args.skip_missing,
    )


def main(argv=None) -> int:
    """``python -m experiments.compare``: exit status 0, or 2 with the error on stderr."""
    try:
        run(argv)
    except ValueError as e:  # RunMismatchError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
