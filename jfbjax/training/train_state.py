"""The training state and the optimiser.

The model is a Flax NNX module; training uses NNX's functional split:

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

``graphdef`` (the module's structure and its static configuration: blur,
solver, backward) is fixed for the whole run and closed over by the jitted
steps; ``params`` (the trainable ``nnx.Param`` leaves) and ``rest`` (any other
variables, e.g. spectral-norm power-iteration vectors) travel in a
:class:`TrainState` pytree together with the optimiser state, the step
counter and the base PRNG key. Everything a resumed run needs is in that one
pytree, which is what the checkpoints hold.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = ["TrainState", "create_train_state", "make_optimizer", "make_schedule", "merge_model"]


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree of arrays).

    Attributes:
      step: int32 scalar, number of optimiser updates done so far.
      params: ``nnx.State`` of the model's ``nnx.Param`` variables.
      rest: ``nnx.State`` of the model's other variables (often empty).
      opt_state: the optax state of the optimiser.
      key: raw uint32 PRNG key data (``jax.random.PRNGKey(seed)``). The noise of
        step ``k`` is drawn with ``jax.random.fold_in(key, k)``; the key itself
        never changes, so the noise of a step does not depend on how the run
        got there (resumed or not).
    """

    step: jax.Array
    params: Any
    rest: Any
    opt_state: Any
    key: jax.Array


def make_schedule(optim, steps: int) -> optax.Schedule:
    """The learning-rate schedule of ``optim`` (a config section) over ``steps`` updates.

    ``constant``: ``lr`` after a linear warm-up of ``warmup`` steps from 0.
    ``cosine``: the same warm-up, then ``lr * (1 + cos(pi t / T)) / 2`` over the
    remaining ``T = steps - warmup`` steps (decaying to 0).
    """
    lr, warmup = float(optim.lr), int(optim.warmup)
    if not lr > 0:
        raise ValueError(f"optim.lr must be > 0, got {lr}")
    if warmup < 0 or warmup >= max(steps, 1):
        raise ValueError(f"optim.warmup must lie in [0, steps={steps}), got {warmup}")
    if optim.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(steps, 1)
        )
    raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {optim.schedule!r}")


def make_optimizer(optim, steps: int) -> optax.GradientTransformation:
    """Adam (AdamW when ``weight_decay > 0``) with the schedule and global-norm clipping.

    The update is ``clip_by_global_norm(grad_clip)`` (skipped when
    ``grad_clip <= 0``) followed by Adam with the learning rate of
    :func:`make_schedule`.
    """
    schedule = make_schedule(optim, steps)
    if optim.weight_decay > 0:
        adam = optax.adamw(schedule, weight_decay=float(optim.weight_decay))
    else:
        adam = optax.adam(schedule)
    if optim.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(float(optim.grad_clip)), adam)
    return adam


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation, key: jax.Array
) -> tuple[nnx.GraphDef, TrainState]:
    """Splits ``model`` and initialises the optimiser; returns ``(graphdef, state)``.

    Args:
      model: the NNX module to train; split into its ``nnx.Param`` variables
        (trained) and everything else (``rest``, e.g. spectral-norm vectors).
      tx: the optax optimiser (:func:`make_optimizer`), initialised on the params.
      key: the base noise key, raw uint32 key data (``jax.random.PRNGKey``).

    Returns:
      ``(graphdef, state)``: the static graph definition and a
      :class:`TrainState` at step 0.

    Raises:
      TypeError: ``key`` is not raw uint32 key data (e.g. a typed ``jax.random.key``).
    """
    key = jnp.asarray(key)
    if key.dtype != jnp.uint32 or key.ndim != 1:
        raise TypeError(
            f"key must be raw uint32 key data (jax.random.PRNGKey), got {key.dtype}{key.shape}"
        )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        key=key,
    )
    return graphdef, state


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """The NNX module holding the parameters of ``state`` (for inference or saving).

    ``nnx.merge(graphdef, state.params, state.rest)``: the inverse of the split
    in :func:`create_train_state`. The module shares ``state``'s arrays.
    """
    return nnx.merge(graphdef, state.params, state.rest)
