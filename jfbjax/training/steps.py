"""Jitted training and evaluation steps.

One training step, all inside one ``jax.jit``:

    d      = A x + sigma * n,          n ~ N(0, I) from fold_in(key, step)
    x_hat  = model(d)                  (fixed-point solve; custom_vjp backward)
    loss   = mean_i ||x_hat_i - x_i||^2 / (H W C)     (loss="mse"; "psnr": each
             image weighted by 1 / its own MSE, see psnr_weighted_mse;
             "charbonnier": a smoothed L1, see charbonnier_loss)
             (+ contraction penalties of T at x_hat, when configured)
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
from jax.sharding import PartitionSpec as P

import jfbjax
from jfbjax.imaging.noise import degrade
from jfbjax.models.dncnn import freeze_spectral_norm
from jfbjax.training.contraction import ContractionPenalty
from jfbjax.training.parallel import DataParallel
from jfbjax.training.train_state import TrainState

__all__ = [
    "LOSSES",
    "CountingJit",
    "batch_psnr",
    "charbonnier_loss",
    "make_eval_step",
    "make_train_step",
    "mse_loss",
    "psnr_weighted_mse",
]


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
        """``jax.jit(fun).lower(*args)`` (for XLA's cost and memory analysis); not counted."""
        return self._jitted.lower(*args)


def mse_loss(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    r"""Mean squared error over every pixel of the batch, accumulated in float32.

    .. math:: \mathrm{MSE} = \frac{1}{N H W C} \sum_{n,h,w,c} (\hat x - x)_{nhwc}^2

    on the [-1, 1] scale (the training loss; the paper's per-image sum of
    squares is the same up to the constant ``H W C``). Returns a scalar in
    at least float32.
    """
    diff = (x_hat - x).astype(jnp.promote_types(x.dtype, jnp.float32))
    return jnp.mean(jnp.square(diff))


def _per_image_mse(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """MSE of each image of the batch (shape (N,)), accumulated in at least float32."""
    diff = (x_hat - x).astype(jnp.promote_types(x.dtype, jnp.float32))
    return jnp.mean(jnp.square(diff), axis=tuple(range(1, x.ndim)))


def psnr_weighted_mse(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    r"""The MSE with each image weighted by the inverse of its own MSE: a loss whose
    gradient is that of the batch's mean PSNR, at the MSE's scale.

    With ``m_i`` the MSE of image ``i`` and ``m = mean_i m_i``,

    .. math:: L = \frac{1}{N} \sum_i \frac{\bar m}{\mathrm{sg}(m_i)}\, m_i,
              \qquad \nabla L = \frac{\bar m}{N} \sum_i \frac{\nabla m_i}{m_i}
              = -\frac{\ln 10}{10}\, \bar m\; \nabla\, \mathrm{mean}_i\, \mathrm{PSNR}_i,

    where ``sg`` stops gradients and ``m_bar`` is held constant too. The value
    equals the MSE (``L = m_bar``), and its gradient equals the MSE's when every
    image has the same error; so the learning rate, Adam's epsilon and the
    gradient clipping keep their meaning, while the direction is the one that
    raises the mean per-image PSNR, the metric every table reports. Plain MSE
    weights images by their error: textured crops, whose error is large,
    dominate it, and smooth crops, where a small absolute error is a large
    PSNR difference, barely count. With data parallelism ``m_bar`` is each
    device's own batch mean. Returns a scalar in at least float32.
    """
    per_image = _per_image_mse(x_hat, x)
    fixed = jax.lax.stop_gradient(per_image)
    weights = jnp.mean(fixed) / jnp.maximum(fixed, jnp.finfo(fixed.dtype).tiny)
    return jnp.mean(jax.lax.stop_gradient(weights) * per_image)


#: ``eps`` of :func:`charbonnier_loss` on the [-1, 1] scale (half a grey level in 8 bits).
CHARBONNIER_EPS = 2e-3


def charbonnier_loss(x_hat: jax.Array, x: jax.Array, eps: float = CHARBONNIER_EPS) -> jax.Array:
    r"""The Charbonnier loss, a smoothed L1: the mean over every pixel of

    .. math:: \rho(r) = \sqrt{r^2 + \epsilon^2} - \epsilon, \qquad r = \hat x - x,

    accumulated in at least float32. It is ``r^2 / (2 eps)`` for ``|r| << eps``
    and ``|r| - eps`` for ``|r| >> eps``: every pixel's gradient is bounded by 1,
    so a few large errors (edges, textures) weigh as much as their size, not its
    square, and the many small errors of smooth regions weigh more than under
    the MSE. Restoration networks trained with it (or with L1) often score a
    higher PSNR than the same network trained on the MSE it is measured by
    (Lim et al. 2017; Lai et al. 2017). The offset ``- eps`` makes it 0 at a
    perfect fit and changes no gradient.
    """
    diff = (x_hat - x).astype(jnp.promote_types(x.dtype, jnp.float32))
    return jnp.mean(jnp.sqrt(jnp.square(diff) + eps**2) - eps)


_OBJECTIVES = {"mse": mse_loss, "psnr": psnr_weighted_mse, "charbonnier": charbonnier_loss}

#: Training losses of ``config.optim.loss`` (:func:`make_train_step`).
LOSSES = tuple(_OBJECTIVES)


def batch_psnr(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """Mean PSNR of a batch in the standard convention, ``10 log10(2^2 / MSE_i)``.

    With MSE on the [-1, 1] data this equals ``10 log10(1 / MSE)`` on the
    images mapped to [0, 1], as :func:`jfbjax.imaging.metrics.psnr` with
    ``convention="standard"`` (the paper's convention reads 6.02 dB lower).
    Per image, then averaged.
    """
    mse = _per_image_mse(x_hat, x)
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
    penalty: ContractionPenalty | None = None,
    loss: str = "mse",
) -> CountingJit:
    """The jitted ``train_step(state, clean_batch) -> (state, metrics)``.

    ``clean_batch`` is a (B, H, W, C) batch of clean images sharded with
    ``dp.batch``; the noise of the step is drawn from
    ``jax.random.fold_in(state.key, state.step)`` on the global batch, so it
    does not depend on the number of devices. ``state`` is donated.

    Data parallelism: each device runs the model and its backward pass on its
    own rows (``jax.shard_map``), the gradients are averaged with
    ``lax.pmean``, and every device applies the same optimiser update.
    (Letting XLA partition the vmapped, custom-VJP solve itself is not safe:
    with jax 0.10 / XLA CPU the per-sample weight gradient of a convolution
    under a batch-sharded ``vmap`` of a ``custom_vjp`` comes out wrong;
    see ``tests/training/test_data_parallel.py``.)

    Metrics (replicated scalars): ``loss`` (MSE), ``psnr`` (standard
    convention, of the batch), ``iterations`` (mean forward solver
    iterations), ``max_iterations``, ``converged`` (fraction of solves that
    reached the tolerance), ``grad_norm`` (before clipping), ``lr`` (when a
    schedule is given) and ``finite`` (1 when the update was applied).

    ``loss``: what is minimised, "mse" (:func:`mse_loss`), "psnr"
    (:func:`psnr_weighted_mse`: each image weighted by the inverse of its
    MSE, the gradient of the mean PSNR) or "charbonnier"
    (:func:`charbonnier_loss`, a smoothed L1); the ``loss`` metric is the MSE
    whichever is minimised.

    With a ``penalty`` (:class:`~jfbjax.training.contraction.ContractionPenalty`,
    for implicit models with a ``step(x, d)`` map) the minimised loss is the
    MSE plus the penalty of ``T`` at the solver's output; ``loss`` stays the
    MSE and ``penalty`` (and ``jacobian_fro2`` / ``spectral``, the estimates)
    join the metrics.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    objective = _OBJECTIVES[loss]
    axis = DataParallel.AXIS

    def local_grads(params, rest, clean, d, key):
        """Loss, gradients and statistics of this device's rows, averaged over devices."""

        def loss_fn(params):
            model = nnx.merge(graphdef, params, rest)
            x_hat, info = model(d)
            _, _, new_rest = nnx.split(model, nnx.Param, ...)
            mse = mse_loss(x_hat, clean)
            extra = {}
            total = mse if objective is mse_loss else objective(x_hat, clean)
            if penalty is not None:
                key_dev = jax.random.fold_in(key, jax.lax.axis_index(axis))
                pen, extra = penalty(freeze_spectral_norm(model).step, x_hat, d, key_dev)
                extra = {**extra, "penalty": pen}
                total = total + pen
            return total, (mse, x_hat, info, new_rest, extra)

        (_, (loss, x_hat, info, new_rest, extra)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(params)
        stats = _solver_metrics(info)
        metrics = {
            **extra,
            "loss": loss,
            "psnr": batch_psnr(x_hat, clean),
            "iterations": stats["iterations"],
            "converged": stats["converged"],
        }
        # Equal shares per device: the mean of the local means is the global mean.
        grads, metrics = jax.lax.pmean((grads, metrics), axis)
        metrics["max_iterations"] = jax.lax.pmax(stats["max_iterations"], axis)
        return grads, new_rest, metrics

    sharded_grads = jax.shard_map(
        local_grads,
        mesh=dp.mesh,
        in_specs=(P(), P(), P(axis), P(axis), P()),
        out_specs=P(),
        check_vma=False,
    )

    def train_step(state: TrainState, clean: jax.Array):
        key = jax.random.fold_in(state.key, state.step)
        d = degrade(key, clean, blur, noise_std)
        penalty_key = jax.random.fold_in(key, 1)
        grads, rest, metrics = sharded_grads(state.params, state.rest, clean, d, penalty_key)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = TrainState(
            step=state.step + finite.astype(state.step.dtype),
            params=keep(params, state.params),
            rest=keep(rest, state.rest),
            opt_state=keep(opt_state, state.opt_state),
            key=state.key,
        )
        metrics = {**metrics, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32)}
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
    """The jitted ``eval_step(params, rest, d) -> (x_hat, info)`` on a sharded batch ``d``.

    Each device solves for its own rows (``jax.shard_map``); outputs stay sharded.

    Args:
      graphdef: the model's graph definition (from :func:`create_train_state`).
      dp: the device layout; ``d``'s batch size must be a multiple of its
        device count.

    Returns:
      A :class:`CountingJit` computing ``model(d)`` for the model rebuilt from
      ``(graphdef, params, rest)``: the restored batch and its per-sample
      :class:`jfbjax.SolverInfo`.
    """
    axis = DataParallel.AXIS

    def local(params, rest, d):
        model = nnx.merge(graphdef, params, rest)
        return model(d)

    eval_step = jax.shard_map(
        local, mesh=dp.mesh, in_specs=(P(), P(), P(axis)), out_specs=P(axis), check_vma=False
    )
    return CountingJit(
        eval_step,
        in_shardings=(dp.replicated, dp.replicated, dp.batch),
        out_shardings=(dp.batch, dp.batch),
    )
