"""Jitted training and evaluation steps.

One training step, all inside one ``jax.jit``:

    d      = A x + sigma * n,          n ~ N(0, I) from fold_in(key, step)
    x_hat  = model(d)                  (fixed-point solve; custom_vjp backward)
    loss   = mean_i ||x_hat_i - x_i||^2 / (H W C)
    g      = d loss / d params          (JFB / IFT / Neumann / unrolled, per config)
    params <- params + optax update(g)

If the loss or the gradient is not finite, the update is skipped (parameters,
optimiser state and step counter are returned unchanged) and the metrics say
so; the loop then stops the run, so non-finite parameters never exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jfbjax
from jfbjax.imaging.noise import degrade
from jfbjax.training.parallel import DataParallel
from jfbjax.training.train_state import TrainState

__all__ = ["CountingJit", "batch_psnr", "make_eval_step", "make_train_step", "mse_loss"]


class CountingJit:
    """``jax.jit(fun, **kwargs)`` that counts how many times ``fun`` is traced.

    ``traces`` should stay at 1 for the whole run: a second trace means a
    shape, dtype, sharding or static argument changed between calls.
    """

    def __init__(self, fun: Callable, **jit_kwargs: Any):
        self.traces = 0
        self.__wrapped__ = fun

        def counted(*args):
            self.traces += 1
            return fun(*args)

        self._jitted = jax.jit(counted, **jit_kwargs)

    def __call__(self, *args):
        return self._jitted(*args)

    def lower(self, *args):
        return self._jitted.lower(*args)


def mse_loss(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """Mean squared error over every pixel of the batch, accumulated in float32."""
    diff = (x_hat - x).astype(jnp.promote_types(x.dtype, jnp.float32))
    return jnp.mean(jnp.square(diff))


def batch_psnr(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """Mean PSNR of a batch, standard convention: ``10 log10(2^2 / MSE_i)`` on [-1, 1] data.

    The data range of [-1, 1] images is 2 (the paper's convention uses a peak
    of 1 and reads 6.02 dB lower). Per image, then averaged.
    """
    diff = (x_hat - x).astype(jnp.promote_types(x.dtype, jnp.float32))
    mse = jnp.mean(jnp.square(diff), axis=tuple(range(1, x.ndim)))
    return jnp.mean(10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-20)))


def _solver_metrics(info: jfbjax.SolverInfo) -> dict[str, jax.Array]:
    return {
        "iterations": jnp.mean(info.iterations.astype(jnp.float32)),
        "max_iterations": jnp.max(info.iterations),
        "converged": jnp.mean((info.status == jfbjax.CONVERGED).astype(jnp.float32)),
    }


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    blur,
    noise_std: float,
    dp: DataParallel,
    schedule: optax.Schedule | None = None,
) -> CountingJit:
    """The jitted ``train_step(state, clean_batch) -> (state, metrics)``.

    ``clean_batch`` is a (B, H, W, C) batch of clean images sharded with
    ``dp.batch``; the noise of the step is drawn from
    ``jax.random.fold_in(state.key, state.step)``. ``state`` is donated.
    Metrics (replicated scalars): ``loss`` (MSE), ``psnr`` (standard
    convention, of the batch), ``iterations`` (mean forward solver
    iterations), ``max_iterations``, ``converged`` (fraction of solves that
    reached the tolerance), ``grad_norm`` (before clipping), ``lr`` (when a
    schedule is given) and ``finite`` (1 when the update was applied).
    """

    def train_step(state: TrainState, clean: jax.Array):
        key = jax.random.fold_in(state.key, state.step)
        d = degrade(key, clean, blur, noise_std)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.rest)
            x_hat, info = model(d)
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return mse_loss(x_hat, clean), (x_hat, info, rest)

        (loss, (x_hat, info, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = TrainState(
            step=state.step + finite.astype(state.step.dtype),
            params=keep(params, state.params),
            rest=keep(rest, state.rest),
            opt_state=keep(opt_state, state.opt_state),
            key=state.key,
        )
        metrics = {
            "loss": loss,
            "psnr": batch_psnr(x_hat, clean),
            "grad_norm": grad_norm,
            "finite": finite.astype(jnp.float32),
            **_solver_metrics(info),
        }
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new_state, metrics

    return CountingJit(
        train_step,
        in_shardings=(dp.replicated, dp.batch),
        out_shardings=(dp.replicated, dp.replicated),
        donate_argnums=(0,),
    )


def make_eval_step(graphdef: nnx.GraphDef, dp: DataParallel) -> CountingJit:
    """The jitted ``eval_step(params, rest, d) -> (x_hat, info)`` on a sharded batch ``d``."""

    def eval_step(params, rest, d: jax.Array):
        model = nnx.merge(graphdef, params, rest)
        return model(d)

    return CountingJit(
        eval_step,
        in_shardings=(dp.replicated, dp.replicated, dp.batch),
        out_shardings=(dp.batch, dp.batch),
    )
