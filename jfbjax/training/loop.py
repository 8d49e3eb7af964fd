"""``train_and_evaluate``: the deblurring experiment from data to results.json.

Outputs in ``workdir``:

* ``config.json``: the configuration of the run;
* ``metrics.jsonl``: one JSON object per line: training windows (``train/*``,
  averaged over the last ``log_every`` steps) and evaluations (``val/*``,
  ``test/*``), each with its ``step`` (number of updates done);
* ``checkpoints/latest``, ``checkpoints/best``: Orbax checkpoints;
* ``results.json``: the configuration, PSNR/SSIM in both conventions of the
  blurred input, of ``A^T d`` (the solver's start point), of a Wiener filter
  tuned on the validation images and of the trained model, the model's solver
  statistics, timings and the devices;
* ``training_curves.png`` and ``restorations.png``.

PSNR conventions: ``standard`` uses the data range of the [-1, 1] images
(peak-to-peak 2); ``paper`` is ``-10 log10(MSE)`` as in arXiv 2402.02065,
6.02 dB lower. Both are always reported and always labelled.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jfbjax.backward import IFT
from jfbjax.data import load_data_from_config
from jfbjax.imaging.baselines import tikhonov_cg, tune_weight, tv_deblur, wiener
from jfbjax.imaging.blur import Blur
from jfbjax.imaging.metrics import psnr
from jfbjax.imaging.noise import degrade
from jfbjax.models import DEGRAD, build_model, freeze_spectral_norm
from jfbjax.training.checkpoints import BEST_METRIC, Checkpoints
from jfbjax.training.contraction import (
    AdjointStats,
    contraction_factors,
    gradient_alignment_report,
    penalty_from_config,
)
from jfbjax.training.evaluation import score, score_model
from jfbjax.training.figures import plot_restorations, plot_training_curves
from jfbjax.training.parallel import DataParallel
from jfbjax.training.pretrain import pretrain_denoiser
from jfbjax.training.restore import blur_from_config
from jfbjax.training.steps import make_eval_step, make_train_step
from jfbjax.training.train_state import create_train_state, make_optimizer, make_schedule

__all__ = ["NonFiniteLossError", "ResultsExistError", "train_and_evaluate"]

BatchHook = Callable[[int, np.ndarray], np.ndarray]


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the run was stopped.

    Attributes: ``step`` (0-based index of the failed update), ``loss``,
    ``grad_norm``, ``checkpoint_step`` (the last good checkpoint, or None) and
    ``checkpoint_dir``.
    """

    def __init__(self, step, loss, grad_norm, checkpoint_step, checkpoint_dir):
        self.step, self.loss, self.grad_norm = step, loss, grad_norm
        self.checkpoint_step, self.checkpoint_dir = checkpoint_step, checkpoint_dir
        if checkpoint_step is None:
            where = "no checkpoint had been saved yet"
        else:
            where = (
                f"the last good checkpoint (after {checkpoint_step} updates) is intact in "
                f"{checkpoint_dir}; rerun with --resume to continue from it once the cause is fixed"
            )
        super().__init__(
            f"non-finite training loss at step {step} (loss {loss}, gradient norm {grad_norm}): "
            f"the update was not applied and training stopped; {where}. Typical causes: a "
            f"learning rate too high for this model (optim.lr), no gradient clipping "
            f"(optim.grad_clip), a step size eta that makes the fixed-point map expansive "
            f"(model.eta_init, solver.max_iter), or NaN in the data."
        )


class ResultsExistError(FileExistsError):
    """The output folder already holds a run and ``resume`` was not asked for.

    Raised by :func:`train_and_evaluate` when ``workdir`` contains a
    ``metrics.jsonl`` or a ``checkpoints/`` folder, so a finished or
    interrupted run is never overwritten: pass ``resume=True`` (``--resume``)
    to continue it, or choose a fresh folder.
    """


# --------------------------------------------------------------------------
# Small helpers.


def jsonable(x):
    """Converts numpy / jax scalars and arrays, tuples and non-finite floats for JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray | jax.Array):
        return jsonable(np.asarray(x).tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def config_json(config: ml_collections.ConfigDict) -> dict:
    """The configuration as the plain JSON dict written to a run's ``config.json``."""
    return jsonable(json.loads(config.to_json_best_effort()))


def run_keys(config) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(train_key, val_key, test_key)`` of a run: the training noise key and the
    keys of the fixed validation and test noise draws, all from ``config.seed``."""
    train_key, val_key, test_key = jax.random.split(jax.random.PRNGKey(int(config.seed)), 3)
    return train_key, val_key, test_key


def evaluation_images(config, data, blur: Blur) -> tuple[np.ndarray, np.ndarray]:
    """``(d_val, d_test)``: the run's validation and test images degraded by ``blur``
    with the noise of ``config.noise_std`` drawn from :func:`run_keys`, so every
    method scored with the same config sees exactly these images."""
    _, val_key, test_key = run_keys(config)
    noise_std = float(config.noise_std)
    d_val = np.asarray(degrade(val_key, jnp.asarray(data.val), blur, noise_std))
    d_test = np.asarray(degrade(test_key, jnp.asarray(data.test), blur, noise_std))
    return d_val, d_test


def config_diff(a, b, prefix="") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def _validate(config: ml_collections.ConfigDict) -> None:
    for name in ("steps", "batch_size", "eval_batch_size", "log_every", "eval_every"):
        if int(config[name]) < 1:
            raise ValueError(f"config.{name} must be >= 1, got {config[name]}")
    if int(config.checkpoint_every) < 1:
        raise ValueError(f"config.checkpoint_every must be >= 1, got {config.checkpoint_every}")
    if not float(config.noise_std) >= 0:
        raise ValueError(f"config.noise_std must be >= 0, got {config.noise_std}")
    if int(config.seed) < 0:
        raise ValueError(f"config.seed must be >= 0, got {config.seed}")


def device_info(dp: DataParallel) -> dict:
    devices = list(dp.mesh.devices.flat)
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "process_count": jax.process_count(),
        "jax_version": jax.__version__,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
    }


class _MetricsLog:
    """Appends JSON records to ``metrics.jsonl`` (one per line, flushed each time).

    Only the main process (``jax.process_index() == 0``) writes.
    """

    def __init__(self, path: str, keep_until: int | None):
        self.path = path
        self.active = jax.process_index() == 0
        if not self.active:
            return
        if keep_until is None:
            open(path, "w").close()
        else:  # resuming: drop records past the checkpoint, they will be redone
            kept = [r for r in self.read() if r["step"] <= keep_until]
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, record: dict) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(jsonable(record)) + "\n")

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]


_CLASSICAL_LABELS = {"wiener": "Wiener (FFT)", "tikhonov": "Tikhonov (CG)", "tv": "TV"}


def _model_label(config) -> str:
    if config.model.kind != "degrad":
        return str(config.model.kind)
    family = {"degrad": "DE-GRAD", "deprox": "DE-Prox"}[str(config.model.get("family", "degrad"))]
    return f"{family}+{config.backward.name.upper()}"


def _say(message: str) -> None:
    tqdm.write(message)


def _fmt(m: dict) -> str:
    return (
        f"PSNR {m['psnr_standard']:.2f} dB (standard) / {m['psnr_paper']:.2f} dB (paper), "
        f"SSIM {m['ssim_standard']:.4f} (standard) / {m['ssim_paper']:.4f} (paper)"
    )


# --------------------------------------------------------------------------
# The experiment.


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    batch_hook: BatchHook | None = None,
    progress: bool = True,
    devices: list | None = None,
    init_hook: Callable[[nnx.Module], None] | None = None,
) -> dict:
    """Trains the configured model on the configured data and evaluates it.

    Args:
      config: a config from ``experiments.configs.get_config`` (see its fields).
      workdir: output folder (created). Without ``resume`` it must not hold a
        previous run.
      resume: continue from ``workdir/checkpoints/latest``: same parameters,
        optimiser state, step, data order (``train_batch(step, ...)``) and
        noise (``fold_in(key, step)``), so the result equals an uninterrupted
        run.
      batch_hook: ``hook(step, batch) -> batch`` applied to every clean
        training batch before it is sharded (for tests and data debugging).
      progress: show a tqdm progress bar.
      devices: devices to train on (default: all of ``jax.devices()``).
      init_hook: ``hook(model)`` called on the freshly built model before the
        optimiser state is created, to change its initial parameters in place
        (e.g. copy a pretrained regulariser); ignored when resuming, where the
        checkpoint provides the parameters.

    Returns:
      The results dict that is also written to ``workdir/results.json``.

    Raises:
      NonFiniteLossError: a training step produced a non-finite loss or
        gradient (the last good checkpoint is kept).
      ResultsExistError: ``workdir`` holds a run and ``resume`` is False.
      FileNotFoundError: ``resume`` with no checkpoint in ``workdir``, or data
        asked for explicitly that cannot be found.
      ValueError: an invalid configuration (e.g. a batch size that the devices
        do not divide).
    """
    t_begin = time.perf_counter()
    config = config.copy_and_resolve_references()
    _validate(config)
    dp = DataParallel.create(devices)
    dp.check_batch_size(int(config.batch_size), "batch_size")
    dp.check_batch_size(int(config.eval_batch_size), "eval_batch_size")

    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    config_path = os.path.join(workdir, "config.json")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    has_run = os.path.exists(metrics_path) or os.path.isdir(ckpt_dir)
    if has_run and not resume:
        raise ResultsExistError(
            f"{workdir} already holds a run (metrics.jsonl / checkpoints); pass --resume to "
            f"continue it or choose a fresh --out folder"
        )
    if resume and not os.path.isdir(os.path.join(ckpt_dir, "latest")):
        raise FileNotFoundError(
            f"--resume: no checkpoint to resume from in {ckpt_dir}; start the run without --resume"
        )
    config_record = config_json(config)
    if resume and os.path.exists(config_path):
        with open(config_path) as f:
            changed = config_diff(json.load(f), config_record)
        if changed:
            _say(
                "resume: the configuration differs from the checkpointed run's; the result "
                "will not match an uninterrupted run: " + "; ".join(changed)
            )
    main_process = jax.process_index() == 0  # the one that writes logs, figures, results
    if main_process:
        with open(config_path, "w") as f:
            json.dump(config_record, f, indent=2)

    # ---- data, degradation with a fixed evaluation noise draw -----------------
    data = load_data_from_config(config)
    _say(f"data: {data.description}")
    if data.skipped:
        _say(f"data: {data.skipped} unreadable image files were skipped")
    blur = blur_from_config(config)
    noise_std = float(config.noise_std)
    train_key = run_keys(config)[0]
    x_val, x_test = data.val, data.test
    d_val, d_test = evaluation_images(config, data, blur)

    # ---- baselines on the same degraded test images ---------------------------
    t0 = time.perf_counter()
    blurred = score(x_test, d_test)
    x_adjoint = np.asarray(blur.adjoint(jnp.asarray(d_test)))
    adjoint = score(x_test, x_adjoint)
    grid = tuple(float(w) for w in config.wiener.weights)
    methods = [("wiener", wiener, grid), ("tikhonov", tikhonov_cg, grid)]
    tv_cfg = config.get("tv")
    if tv_cfg is not None and len(tv_cfg.weights):
        tv = functools.partial(tv_deblur, iters=int(tv_cfg.iters), tol=float(tv_cfg.tol))
        methods.append(("tv", tv, tuple(float(w) for w in tv_cfg.weights)))
    classical = {}
    outputs = {}
    for name, method, grid in methods:
        weight, table = tune_weight(method, jnp.asarray(d_val), jnp.asarray(x_val), blur, grid)
        outputs[name] = np.asarray(method(jnp.asarray(d_test), blur, float(weight)))
        classical[name] = {**score(x_test, outputs[name]), "weight": float(weight)}
        classical[name]["tuning"] = jsonable(table)
    wiener_metrics = classical["wiener"]
    _say(f"test, blurred input d:  {_fmt(blurred)}")
    _say(f"test, A^T d:            {_fmt(adjoint)}")
    for name, label in _CLASSICAL_LABELS.items():
        if name not in classical:
            continue
        m = classical[name]
        _say(f"test, {label}, weight {m['weight']:.3g} tuned on val: {_fmt(m)}")
    baseline_s = time.perf_counter() - t0

    # ---- model, optimiser, state ----------------------------------------------
    steps = int(config.steps)
    model = build_model(config, blur, nnx.Rngs(int(config.seed)))
    if init_hook is not None:
        init_hook(model)
    pretrain = None
    if int(config.model.get("pretrain_steps", 0)) > 0 and not resume:
        t0 = time.perf_counter()
        pretrain = pretrain_denoiser(
            model.regulariser,
            data.train_batch,
            steps=int(config.model.pretrain_steps),
            sigma=float(config.model.pretrain_sigma),
            scale=float(config.model.pretrain_scale),
            lr=float(config.model.pretrain_lr),
            batch_size=int(config.batch_size),
            seed=int(config.seed),
        )
        pretrain["time_s"] = time.perf_counter() - t0
        _say(
            f"pretraining: R as a denoiser (sigma {pretrain['sigma']:g}), {pretrain['steps']} "
            f"steps in {pretrain['time_s']:.0f} s, PSNR gain {pretrain['psnr_gain']:.2f} dB"
        )
    implicit = isinstance(model, DEGRAD)
    penalty = penalty_from_config(config) if implicit else None
    adjoint_stats = None
    if implicit and isinstance(model.backward, IFT):
        adjoint_stats = AdjointStats()
        model.backward_callback = adjoint_stats
    schedule = make_schedule(config.optim, steps)
    tx = make_optimizer(config.optim, steps)
    graphdef, state = create_train_state(model, tx, train_key)
    del model
    num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    state = dp.replicate(state)
    ckpts = Checkpoints(ckpt_dir)
    start = 0
    if resume:
        restored = ckpts.restore_latest(state)
        if restored is None:
            raise FileNotFoundError(f"--resume: no checkpoint found in {ckpt_dir}/latest")
        state, start = restored, int(restored.step)
        _say(f"resume: continuing from the checkpoint after {start} updates")
    _say(
        f"model: {config.model.kind}, DnCNN {config.model.depth}x{config.model.features}, "
        f"{num_params:,} parameters; solver {config.solver.name}, backward "
        f"{config.backward.name}; devices: {dp.describe()}"
    )
    log = _MetricsLog(metrics_path, keep_until=start if resume else None)
    # Training seconds before this process: on resume, the newest kept record's
    # total (records after the checkpoint were dropped), so the clock continues.
    time_before = max(
        (r for r in log.read() if "train_time_s" in r),
        key=lambda r: r["step"],
        default={"train_time_s": 0.0},
    )["train_time_s"]
    train_step = make_train_step(graphdef, tx, blur, noise_std, dp, schedule, penalty)
    eval_step = make_eval_step(graphdef, dp)
    eval_bs = int(config.eval_batch_size)
    contraction_iters = int(config.get("contraction", {}).get("eval_iters", 20))

    @jax.jit
    def contraction_fn(params, rest, x, d):
        step = freeze_spectral_norm(nnx.merge(graphdef, params, rest)).step
        return contraction_factors(step, x, d, contraction_iters)

    def evaluate_now(state) -> tuple[dict, dict, np.ndarray]:
        val, _ = score_model(eval_step, state.params, state.rest, d_val, x_val, eval_bs, dp)
        test, x_hat = score_model(eval_step, state.params, state.rest, d_test, x_test, eval_bs, dp)
        if implicit:
            params, rest = jax.device_get((state.params, state.rest))
            factors = np.concatenate(
                [
                    np.asarray(
                        contraction_fn(
                            params, rest, x_hat[i : i + eval_bs], d_test[i : i + eval_bs]
                        )
                    )
                    for i in range(0, len(d_test), eval_bs)
                ]
            )
            test["contraction_mean"] = float(np.mean(factors))
            test["contraction_max"] = float(np.max(factors))
        return val, test, x_hat

    def train_time() -> float:
        # Seconds spent in training steps so far, over every process that worked on
        # this run (compilation included, evaluations not).
        return time_before + (compile_s or 0.0) + float(np.sum(step_times))

    def record_eval(step: int, val: dict, test: dict) -> dict:
        record = {"step": step, "train_time_s": train_time()}
        record.update({f"val/{k}": v for k, v in val.items()})
        record.update({f"test/{k}": v for k, v in test.items()})
        log.write(record)
        return record

    # ---- training --------------------------------------------------------------
    step_times: list[float] = []
    compile_s = None
    eval_s = 0.0
    window: list[dict] = []
    bar = tqdm(
        total=steps,
        initial=start,
        desc="train",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    try:
        for step in range(start, steps):
            batch = data.train_batch(step, int(config.batch_size), int(config.seed))
            if batch_hook is not None:
                batch = batch_hook(step, batch)
            t0 = time.perf_counter()
            state, metrics = train_step(state, dp.shard_batch(batch))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            dt = time.perf_counter() - t0
            if compile_s is None:
                compile_s = dt
            else:
                step_times.append(dt)
            if metrics["finite"] < 1:
                raise NonFiniteLossError(
                    step, metrics["loss"], metrics["grad_norm"], ckpts.latest_step(), ckpt_dir
                )
            window.append(metrics)
            bar.update(1)
            bar.set_postfix_str(
                f"loss {metrics['loss']:.2e}  PSNR {metrics['psnr']:.2f} dB (standard)  "
                f"iters {metrics['iterations']:.1f}",
                refresh=False,
            )
            done = step + 1
            if done % int(config.log_every) == 0 or done == steps:
                record = {"step": done}
                for k in window[0]:
                    agg = np.max if k == "max_iterations" else np.mean
                    record[f"train/{k}"] = float(agg([m[k] for m in window]))
                record["train/ms_per_step"] = 1e3 * float(np.mean(step_times[-len(window) :]))
                if adjoint_stats is not None and adjoint_stats.total:
                    record["train/adjoint_converged"] = adjoint_stats.fraction
                record["train_time_s"] = train_time()
                log.write(record)
                window = []
            if done % int(config.checkpoint_every) == 0 and done < steps:
                ckpts.save_latest(state)
            if done % int(config.eval_every) == 0 and done < steps:
                t0 = time.perf_counter()
                val, test, _ = evaluate_now(state)
                record_eval(done, val, test)
                ckpts.save_best(state, {BEST_METRIC: val["psnr_standard"]})
                eval_s += time.perf_counter() - t0
                _say(
                    f"step {done}: val PSNR {val['psnr_standard']:.2f} dB (standard); "
                    f"test {_fmt(test)}; mean iterations {test['mean_iterations']:.1f}, "
                    f"converged {100 * test['fraction_converged']:.0f}%"
                    + (
                        f", contraction mean {test['contraction_mean']:.4f} max "
                        f"{test['contraction_max']:.4f}"
                        if implicit
                        else ""
                    )
                )
        bar.close()

        # ---- final evaluation and outputs -------------------------------------
        ckpts.save_latest(state)
        val, test, x_model = evaluate_now(state)
        record_eval(steps, val, test)
        ckpts.save_best(state, {BEST_METRIC: val["psnr_standard"]})
        best_step = ckpts.best_step()
    finally:
        bar.close()
        ckpts.close()

    alignment = None
    if implicit and main_process:
        n = min(8, len(d_test))
        trained = nnx.merge(graphdef, *jax.device_get((state.params, state.rest)))
        alignment = gradient_alignment_report(
            trained, jnp.asarray(d_test[:n]), jnp.asarray(x_test[:n])
        )
        _say(
            f"test: cos(JFB gradient, IFT gradient) {alignment['cos_jfb_ift']:.4f} on {n} images "
            f"(GMRES adjoint to {alignment['ift_adjoint_tol']:g}: "
            f"{100 * alignment['ift_adjoint_converged']:.0f}% converged)"
        )
    if implicit:
        _say(
            f"test: contraction ||dT/dx|| at the fixed point: mean {test['contraction_mean']:.4f}, "
            f"max {test['contraction_max']:.4f}"
        )
    if adjoint_stats is not None:
        _say(
            f"train: IFT adjoint solves that reached tol {float(config.backward.tol):g}: "
            f"{100 * (adjoint_stats.fraction or 0):.1f}% of {adjoint_stats.total}"
        )

    if train_step.traces > 1:
        _say(f"warning: the training step was traced {train_step.traces} times (expected 1)")

    total_s = time.perf_counter() - t_begin
    if not main_process:
        return {"test": {"model": test}, "total_time_s": total_s}

    # Figures.
    records = log.read()
    curves_path = os.path.join(workdir, "training_curves.png")
    plot_training_curves(
        records,
        curves_path,
        baselines={
            "blurred input d": blurred["psnr_standard"],
            **{_CLASSICAL_LABELS[k]: v["psnr_standard"] for k, v in classical.items()},
        },
    )
    k = min(int(config.num_figure_images), len(x_test))
    idx = np.unique(np.linspace(0, len(x_test) - 1, k).round().astype(int))
    columns = {
        "clean": x_test[idx],
        "blurred d": d_test[idx],
        **{_CLASSICAL_LABELS[k]: v[idx] for k, v in outputs.items()},
        _model_label(config): x_model[idx],
    }
    per_image = {
        name: np.asarray(psnr(jnp.asarray(v), jnp.asarray(x_test[idx]), convention="standard"))
        for name, v in columns.items()
        if name != "clean"
    }
    grid_path = os.path.join(workdir, "restorations.png")
    plot_restorations(columns, grid_path, per_image)

    total_s = time.perf_counter() - t_begin
    ms_per_step = 1e3 * float(np.mean(step_times)) if step_times else None
    results = {
        "config": config_record,
        "psnr_conventions": {
            "standard": "images mapped to [0, 1]: PSNR = 10 log10(1 / MSE), SSIM with "
            "max_val 1 (jfbjax.imaging.metrics)",
            "paper": "-10 log10(MSE) on the [-1, 1] images (peak 1; arXiv 2402.02065), "
            "6.02 dB below standard; SSIM on [-1, 1] with max_val 2",
        },
        "data": {
            "name": data.name,
            "description": data.description,
            "image_size": data.image_size,
            "n_val": len(x_val),
            "n_test": len(x_test),
            "skipped": data.skipped,
        },
        "test": {
            "blurred": blurred,
            "adjoint": adjoint,
            "wiener": wiener_metrics,
            "tikhonov": classical["tikhonov"],
            **({"tv": classical["tv"]} if "tv" in classical else {}),
            "model": test,
        },
        "val": {"model": val},
        "model": {
            "name": _model_label(config),
            "num_params": num_params,
            "best_step": best_step,
            "pretraining": pretrain,
        },
        "contraction": {
            "test_mean": test.get("contraction_mean"),
            "test_max": test.get("contraction_max"),
            "power_iters": contraction_iters,
        }
        if implicit
        else None,
        "ift_adjoint_converged_during_training": adjoint_stats.fraction if adjoint_stats else None,
        "ift_adjoint_solves_during_training": adjoint_stats.total if adjoint_stats else None,
        "gradient_alignment": alignment,
        "mean_forward_iterations": test["mean_iterations"],
        "fraction_converged": test["fraction_converged"],
        "timing": {
            "steps_run": steps - start,
            "ms_per_step": ms_per_step,
            "first_step_s": compile_s,
            "eval_s": eval_s,
            "baselines_s": baseline_s,
            "total_s": total_s,
            "train_step_traces": train_step.traces,
        },
        "ms_per_step": ms_per_step,
        "total_time_s": total_s,
        "resumed_from_step": start if resume else None,
        "device": device_info(dp),
        "outputs": {
            "workdir": workdir,
            "metrics": metrics_path,
            "checkpoints": ckpt_dir,
            "training_curves": curves_path,
            "restorations": grid_path,
        },
    }
    results = jsonable(results)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results
