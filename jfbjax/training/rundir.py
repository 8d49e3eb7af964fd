"""A run folder: its paths, the refusal to overwrite a run, resume checks, ``config.json``."""

from __future__ import annotations

import dataclasses
import os

import jax

from jfbjax.training.checkpoints import has_checkpoint
from jfbjax.training.records import config_diff, config_json, read_config_record, write_json

__all__ = ["ResultsExistError", "RunDir", "open_run_dir"]


class ResultsExistError(FileExistsError):
    """The output folder already holds a run and ``resume`` was not asked for.

    Raised by :func:`open_run_dir` (and so ``train_and_evaluate``) when the
    folder contains a ``metrics.jsonl`` or a ``checkpoints/`` folder, so a
    finished or interrupted run is never overwritten: pass ``resume=True``
    (``--resume``) to continue it, or choose a fresh folder.
    """


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The paths of a run folder.

    ``workdir`` is absolute; the properties name the files a run writes in it
    (``load_run`` and ``experiments.compare`` read the same names).
    """

    workdir: str

    @property
    def checkpoints(self) -> str:
        """``checkpoints/`` (Orbax ``latest`` and ``best``)."""
        return os.path.join(self.workdir, "checkpoints")

    @property
    def config(self) -> str:
        """``config.json``, the run's configuration."""
        return os.path.join(self.workdir, "config.json")

    @property
    def metrics(self) -> str:
        """``metrics.jsonl``, the training and evaluation records."""
        return os.path.join(self.workdir, "metrics.jsonl")

    @property
    def tensorboard(self) -> str:
        """``tensorboard/``, TensorBoard event files (``tensorboard --logdir`` on it)."""
        return os.path.join(self.workdir, "tensorboard")

    @property
    def results(self) -> str:
        """``results.json``, written at the end of the run."""
        return os.path.join(self.workdir, "results.json")

    def path(self, name: str) -> str:
        """Another file of the run folder (e.g. a figure)."""
        return os.path.join(self.workdir, name)


def open_run_dir(workdir, config, resume: bool, say=print) -> tuple[RunDir, dict]:
    """Creates or reopens ``workdir`` for ``config``; returns ``(run_dir, config_record)``.

    A fresh run needs a folder without a run in it; ``resume`` needs a
    ``checkpoints/latest``. On resume a config that differs from the recorded
    one is reported through ``say`` (the result will not match an
    uninterrupted run) and the new one recorded. The main process writes
    ``config.json``.

    Raises:
      ResultsExistError: the folder holds a run and ``resume`` is False.
      FileNotFoundError: ``resume`` without a checkpoint.
    """
    run_dir = RunDir(os.path.abspath(os.fspath(workdir)))
    os.makedirs(run_dir.workdir, exist_ok=True)
    has_run = os.path.exists(run_dir.metrics) or os.path.isdir(run_dir.checkpoints)
    if has_run and not resume:
        raise ResultsExistError(
            f"{run_dir.workdir} already holds a run (metrics.jsonl / checkpoints); pass --resume "
            f"to continue it or choose a fresh --out folder"
        )
    if resume and not has_checkpoint(os.path.join(run_dir.checkpoints, "latest")):
        if has_run:
            raise FileNotFoundError(
                f"--resume: the run in {run_dir.workdir} stopped before its first checkpoint, so "
                "there is nothing to resume: delete the folder (or choose another --out) and "
                "start the run without --resume"
            )
        raise FileNotFoundError(
            f"--resume: no checkpoint to resume from in {run_dir.checkpoints}; start the run "
            f"without --resume"
        )
    record = config_json(config)
    if resume and os.path.exists(run_dir.config):
        changed = config_diff(read_config_record(run_dir.config), record)
        if changed:
            say(
                "resume: the configuration differs from the checkpointed run's; the result "
                "will not match an uninterrupted run: " + "; ".join(changed)
            )
    if jax.process_index() == 0:
        write_json(run_dir.config, record)
    return run_dir, record
