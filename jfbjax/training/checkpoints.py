"""Orbax checkpoints of the :class:`~jfbjax.training.train_state.TrainState`.

Two ``orbax.checkpoint.CheckpointManager`` under ``<workdir>/checkpoints``:

* ``latest/``: saved every ``checkpoint_every`` steps and at the end; keeps
  the newest; ``--resume`` restores from it.
* ``best/``: saved after every evaluation with the validation metric; Orbax
  keeps the single best one (``best_mode="max"``).

A checkpoint holds the whole train state (step, parameters, other model
variables, optimiser state and the base PRNG key), so a resumed run continues
bit for bit. Saving is synchronous: the training step donates the state's
buffers, so a background copy could read freed memory. A state with
non-finite parameters is refused, so the last good checkpoint always stays
the last good one.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jfbjax.training.train_state import TrainState

__all__ = ["BEST_METRIC", "Checkpoints", "has_checkpoint"]

#: The metric that ranks checkpoints in ``best/`` (higher is better).
BEST_METRIC = "val/psnr_standard"


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` (e.g. ``<workdir>/checkpoints/latest``) holds a finished checkpoint.

    Orbax writes a checkpoint into a temporary folder and renames it to its step
    number when it is complete, so a run killed before (or during) its first save
    leaves the folder empty (or with a temporary folder only): False.
    """
    directory = os.fspath(directory)
    return os.path.isdir(directory) and any(
        name.isdigit() and os.path.isdir(os.path.join(directory, name))
        for name in os.listdir(directory)
    )


def _all_finite(tree) -> bool:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


class Checkpoints:
    """The ``latest`` and ``best`` checkpoints of one run directory.

    Args:
      directory: the ``checkpoints`` folder of a run (created if missing);
        ``latest/`` and ``best/`` are Orbax managers inside it, each keeping
        one checkpoint.

    Saving raises ``FloatingPointError`` for a state that holds NaN or inf.
    Call :meth:`close` when done (it waits for and releases Orbax's
    resources).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.path.abspath(os.fspath(directory))

        def options(**kw):
            return ocp.CheckpointManagerOptions(
                max_to_keep=1, enable_async_checkpointing=False, create=True, **kw
            )

        self.latest = ocp.CheckpointManager(
            os.path.join(self.directory, "latest"), options=options()
        )
        self.best = ocp.CheckpointManager(
            os.path.join(self.directory, "best"),
            options=options(best_fn=lambda m: float(m[BEST_METRIC]), best_mode="max"),
        )

    @staticmethod
    def _check(state: TrainState) -> int:
        step = int(state.step)
        if not _all_finite((state.params, state.rest, state.opt_state)):
            raise FloatingPointError(
                f"refusing to checkpoint step {step}: the train state holds NaN or inf"
            )
        return step

    def save_latest(self, state: TrainState) -> int:
        """Saves ``state`` as the newest checkpoint (no-op if this step is saved)."""
        step = self._check(state)
        if self.latest.latest_step() != step:
            self.latest.save(step, args=ocp.args.StandardSave(state))
        return step

    def save_best(self, state: TrainState, metrics: dict[str, float]) -> None:
        """Offers ``state`` as the best checkpoint, ranked by ``metrics[BEST_METRIC]``."""
        step = self._check(state)
        value = float(metrics[BEST_METRIC])
        if not jnp.isfinite(value):
            return
        if step in self.best.all_steps():
            return
        self.best.save(step, args=ocp.args.StandardSave(state), metrics={BEST_METRIC: value})

    def latest_step(self) -> int | None:
        """The step of the newest ``latest`` checkpoint, or None if there is none."""
        return self.latest.latest_step()

    def best_step(self) -> int | None:
        """The step of the ``best`` checkpoint (highest ``BEST_METRIC``), or None."""
        return self.best.best_step()

    def restore_latest(self, like: TrainState) -> TrainState | None:
        """The newest checkpoint, laid out like ``like`` (shapes, dtypes, shardings); or None."""
        step = self.latest.latest_step()
        if step is None:
            return None
        return self._restore(self.latest, step, like)

    def resume(self, like: TrainState) -> TrainState:
        """:meth:`restore_latest`, for ``--resume``: raises if there is nothing to resume.

        Raises:
          FileNotFoundError: no ``latest`` checkpoint in the folder.
        """
        restored = self.restore_latest(like)
        if restored is None:
            raise FileNotFoundError(f"--resume: no checkpoint found in {self.directory}/latest")
        return restored

    def restore_best(self, like: TrainState) -> TrainState | None:
        """The best checkpoint (highest ``BEST_METRIC``), laid out like ``like``; or None."""
        step = self.best.best_step()
        if step is None:
            return None
        return self._restore(self.best, step, like)

    @staticmethod
    def _restore(manager, step: int, like: TrainState) -> TrainState:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return TrainState(*restored) if not isinstance(restored, TrainState) else restored

    def close(self) -> None:
        """Closes both Orbax managers; the object must not be used afterwards."""
        self.latest.close()
        self.best.close()
