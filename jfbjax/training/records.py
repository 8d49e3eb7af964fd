"""What a run records and how: JSON conversion, config records, the metrics log, run keys.

Shared by the training loop, ``experiments.compare``, ``experiments.ablation``
and the benchmarks, so that every one of them writes and reads run folders
the same way.
"""

from __future__ import annotations

import json
import math
import os
import platform

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jfbjax.imaging.blur import Blur
from jfbjax.imaging.noise import degrade
from jfbjax.training.parallel import DataParallel

__all__ = [
    "ADDED_FIELDS",
    "RENAMED_FIELDS",
    "REPORT_FIELDS",
    "MetricsLog",
    "config_diff",
    "config_json",
    "data_record",
    "device_info",
    "evaluation_images",
    "jsonable",
    "read_config_record",
    "read_tensorboard",
    "run_keys",
    "training_diff",
    "upgrade_config_record",
    "write_json",
]


def jsonable(x):
    """``x`` with numpy / jax scalars and arrays turned into Python numbers and lists.

    Dicts (keys become strings), lists and tuples are converted recursively;
    non-finite floats become None (JSON has no NaN or inf).
    """
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


def write_json(path: str, obj, indent: int = 2) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically: to a temporary file in the same
    folder, then renamed over ``path``. A reader (another process of a multi-host
    run, a resumed run) sees the old file or the new one, never a partial one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(tmp, path)


def config_json(config: ml_collections.ConfigDict) -> dict:
    """The configuration as the plain JSON dict written to a run's ``config.json``.

    ml_collections' best-effort JSON, then :func:`jsonable`; two runs have
    the same configuration when these dicts are equal (:func:`config_diff`).
    """
    return jsonable(json.loads(config.to_json_best_effort()))


#: Config fields renamed since runs were first recorded: old dotted key -> new one.
#: :func:`upgrade_config_record` reads old ``config.json`` files with them, and
#: ``experiments.configs.apply_overrides`` accepts the old spelling.
RENAMED_FIELDS: dict[str, str] = {"wiener.weights": "tikhonov.weights"}


#: Config fields added since runs were first recorded, with the value that gives
#: the behaviour of a run recorded before the field existed: dotted key -> value.
#: :func:`upgrade_config_record` fills them into old ``config.json`` files.
ADDED_FIELDS: dict[str, object] = {
    "optim.loss": "mse",
    "model.equivariance": 1,
    "model.tv_equivariance": 1,
    "model.inject": False,
    "model.precond_tv": False,
    "solver.train_max_iter": 0,
    "model.regulariser": "dncnn",
    "model.ridge_features": 32,
    "model.ridge_kernel": 5,
    "model.padding": "zero",
}


def upgrade_config_record(record: dict) -> dict:
    """A ``config.json`` record spelt as now (a new dict): the :data:`RENAMED_FIELDS`
    under their new names, and the :data:`ADDED_FIELDS` it lacks at their old-behaviour values.

    A run folder written before a rename or an addition compares equal to the
    same configuration written after it (:func:`config_diff`), and restores.
    A section left empty by the move is dropped; ``record`` is unchanged.
    """
    out = json.loads(json.dumps(record))
    for key, value in ADDED_FIELDS.items():
        *path, leaf = key.split(".")
        parent = out
        for part in path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.setdefault(leaf, value)
    for old, new in RENAMED_FIELDS.items():
        *old_path, old_leaf = old.split(".")
        parent = out
        for part in old_path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        if not parent and old_path:
            _pop_path(out, old_path)
        *new_path, new_leaf = new.split(".")
        target = out
        for part in new_path:
            target = target.setdefault(part, {})
        target.setdefault(new_leaf, value)
    return out


def _pop_path(record: dict, path: list[str]) -> None:
    parent = record
    for part in path[:-1]:
        parent = parent[part]
    parent.pop(path[-1])


def read_config_record(path: str) -> dict:
    """A run's ``config.json`` at ``path`` as a dict, with renamed fields spelt as now.

    Every reader of a stored configuration (resume checks, the comparison's
    reuse check, :func:`~jfbjax.training.restore.load_run`) goes through
    :func:`upgrade_config_record` this way, so an old run folder still reads.
    Raises ``FileNotFoundError`` and ``json.JSONDecodeError`` as ``json.load`` does.
    """
    with open(path) as f:
        return upgrade_config_record(json.load(f))


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The differences between two nested dicts (e.g. two ``config.json`` records).

    Returns one ``"dotted.key: a_value -> b_value"`` string per leaf that
    differs or exists on one side only, sorted by key; empty when equal.
    """
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


#: Config fields that only set how a model is reported (the final cos(JFB, IFT)
#: measurement, the self-ensemble's scores, when the model is scored during
#: training), not what is trained: :func:`training_diff` ignores them, so a run
#: recorded before one was added or changed is still reused. (``eval_every`` also
#: picks the candidates of the "best" checkpoint; results.json reports the final
#: state, whatever it is.)
REPORT_FIELDS: tuple[str, ...] = (
    "eval_every",
    "contraction.align_images",
    "contraction.align_cycles",
    "contraction.align_restart",
    "contraction.align_tol",
    "contraction.align_forward_tol",
    "self_ensemble",
)


def training_diff(a: dict, b: dict) -> list[str]:
    """:func:`config_diff` without the :data:`REPORT_FIELDS`: the differences that
    change what a run trains (a reused run keeps the report it was recorded with)."""
    return [d for d in config_diff(a, b) if d.split(":")[0] not in REPORT_FIELDS]


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


def data_record(data) -> dict:
    """What ``results.json`` says about a run's data (a :class:`~jfbjax.data.DeblurData`)."""
    return {
        "name": data.name,
        "description": data.description,
        "image_size": data.image_size,
        "n_val": len(data.val),
        "n_test": len(data.test),
        "skipped": data.skipped,
    }


def device_info(dp: DataParallel) -> dict:
    """What a run ran on, for ``results.json``.

    Returns ``platform``, ``device_kind``, ``num_devices`` (of ``dp``'s mesh),
    ``process_count``, ``jax_version``, ``host`` and ``cpu_count``.
    """
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


class MetricsLog:
    """Appends JSON records to ``metrics.jsonl`` (one per line, flushed each time),
    and mirrors them to TensorBoard event files when asked.

    Only the main process (``jax.process_index() == 0``) writes. With
    ``keep_until`` (a resume) the records past that step are dropped, since the
    resumed run writes them again; otherwise the file starts empty.

    ``tensorboard``: a folder for TensorBoard event files, written with
    ``tensorboardX`` when it is installed (``pip install tensorboardX``) and
    skipped otherwise (:attr:`tensorboard_active` says which). Every numeric
    field of a record becomes a scalar of the same name (``train/loss``,
    ``val/psnr_standard``, ``test/contraction_max``, ...) at the record's
    ``step``, and :meth:`write_images` adds image panels. A resumed run
    purges the events past ``keep_until``, as for ``metrics.jsonl``.
    """

    def __init__(self, path: str, keep_until: int | None, tensorboard: str | None = None):
        self.path = path
        self.active = jax.process_index() == 0
        self._tb = None
        if not self.active:
            return
        if tensorboard is not None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                pass
            else:
                purge = None if keep_until is None else int(keep_until) + 1
                self._tb = SummaryWriter(tensorboard, purge_step=purge, flush_secs=10)
        if keep_until is None:
            open(path, "w").close()
        else:
            kept = [r for r in self.read() if r["step"] <= keep_until]
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, record: dict) -> None:
        """Appends ``record`` (made :func:`jsonable`) as one line; other processes do nothing."""
        if not self.active:
            return
        record = jsonable(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and np.isfinite(value):
                    self._tb.add_scalar(key, float(value), step)

    @property
    def tensorboard_active(self) -> bool:
        """Whether TensorBoard event files are being written."""
        return self._tb is not None

    def write_images(self, tag: str, images: np.ndarray, step: int) -> None:
        """Adds ``images`` ((N, H, W, C) on [-1, 1]) as the TensorBoard panel ``tag``."""
        if self._tb is not None:
            x = np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)
            self._tb.add_images(tag, x, int(step), dataformats="NHWC")

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer (metrics.jsonl is always flushed)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def read(self) -> list[dict]:
        """Every record of the file, in order (an empty list when it does not exist)."""
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def train_time_before(self) -> float:
        """Training seconds recorded so far: the newest kept record's running total
        (0 for a fresh log), so that a resumed run's clock continues."""
        newest = max(
            (r for r in self.read() if "train_time_s" in r),
            key=lambda r: r["step"],
            default={"train_time_s": 0.0},
        )
        return float(newest["train_time_s"])


def read_tensorboard(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the TensorBoard event files in ``logdir``: ``{tag: [(step, value)]}``
    in file order; image summaries are listed under their tag with value ``nan``.

    Reads the TFRecord framing of the event files directly (length, CRC, the
    ``Event`` protocol buffer of ``tensorboardX``, CRC), so neither TensorFlow
    nor TensorBoard is needed to check what a run wrote.

    Raises:
      ImportError: tensorboardX is not installed.
      FileNotFoundError: ``logdir`` holds no event file.
    """
    import struct

    from tensorboardX.proto import event_pb2

    files = (
        sorted(f for f in os.listdir(logdir) if "tfevents" in f) if os.path.isdir(logdir) else []
    )
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file in {logdir}")
    out: dict[str, list[tuple[int, float]]] = {}
    for name in files:
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                v = value.simple_value if value.HasField("simple_value") else float("nan")
                out.setdefault(value.tag, []).append((int(event.step), v))
    return out
