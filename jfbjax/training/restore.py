"""Rebuild a trained model from a run folder written by :func:`train_and_evaluate`.

A run folder holds ``config.json`` (the full configuration) and
``checkpoints/{latest,best}`` (Orbax). :func:`load_run` rebuilds the model
that the configuration describes and fills it with the checkpointed
parameters, so inference needs nothing but the folder::

    run = load_run("runs/cpu-...")           # best checkpoint by validation PSNR
    x_hat, info = jax.jit(run.model)(d)     # or nnx.jit
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
from flax import nnx

from jfbjax.builders import blur_from_config, build_model
from jfbjax.imaging.blur import Blur
from jfbjax.models import DEGRAD, FeedForward
from jfbjax.training.checkpoints import Checkpoints
from jfbjax.training.records import read_config_record
from jfbjax.training.train_state import create_train_state, make_optimizer, merge_model

__all__ = ["Run", "blur_from_config", "load_run"]


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained model and what it was trained with.

    Attributes:
      model: the NNX module (:class:`DEGRAD` or :class:`FeedForward`) with the
        restored parameters.
      config: the run's configuration.
      blur: the forward operator of the run.
      noise_std: the noise level of the run (on the [-1, 1] scale).
      step: the number of optimiser updates of the restored checkpoint.
      which: "best" or "latest".
      workdir: the run folder.
    """

    model: DEGRAD | FeedForward
    config: ml_collections.ConfigDict
    blur: Blur
    noise_std: float
    step: int
    which: str
    workdir: str


def load_run(workdir: str | os.PathLike, which: str = "best") -> Run:
    """Rebuilds the model of the run in ``workdir`` with its checkpointed parameters.

    Args:
      workdir: a folder written by ``python -m experiments.deblur_celeba`` (or
        :func:`~jfbjax.training.train_and_evaluate`).
      which: ``"best"`` (highest validation PSNR; falls back to ``"latest"`` if
        no evaluation was checkpointed) or ``"latest"``.

    Returns:
      A :class:`Run`: the model with the checkpoint's parameters, the run's
      configuration, blur operator and noise level, the checkpoint's step and
      which checkpoint was used (``"latest"`` when ``"best"`` was asked for
      but none exists).

    Raises:
      FileNotFoundError: no ``config.json`` or no checkpoint in ``workdir``.
      ValueError: an unknown ``which``, or a corrupt ``config.json``.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    workdir = os.path.abspath(os.fspath(workdir))
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"{workdir} is not a run folder: no config.json (train one with "
            f"`python -m experiments.deblur_celeba --out {workdir}`)"
        )
    try:
        config = ml_collections.ConfigDict(read_config_record(config_path))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{config_path} is not a valid configuration: {e}") from None
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{workdir} holds no checkpoints/ folder")

    blur = blur_from_config(config)
    model = build_model(config, blur, nnx.Rngs(0))
    steps = int(config.steps)
    tx = make_optimizer(config.optim, steps)
    graphdef, like = create_train_state(model, tx, jax.random.PRNGKey(0))
    ckpts = Checkpoints(ckpt_dir)
    try:
        state, used = None, which
        if which == "best":
            state = ckpts.restore_best(like)
        if state is None:
            state, used = ckpts.restore_latest(like), "latest"
    finally:
        ckpts.close()
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir} (the run stopped before saving)")
    return Run(
        model=merge_model(graphdef, state),
        config=config,
        blur=blur,
        noise_std=float(config.noise_std),
        step=int(state.step),
        which=used,
        workdir=workdir,
    )
