r"""Denoiser pretraining of a regulariser ``R`` before the equilibrium is trained (Gilton et al.).

``R`` is trained feed-forward (no fixed-point solve: a step costs one pass
of the DnCNN and its backward) to predict ``scale`` times the noise of a
noisy clean crop,

.. math:: \min_\theta \ \mathbb{E}\,\big\|R_\theta(x + \sigma n) - s\,\sigma n\big\|^2,
          \qquad n \sim N(0, I),

so that ``D = I - R / s`` is a residual denoiser at noise level ``sigma``.
With ``s = 1`` this is DE-Prox's ``D = I - R`` exactly; in DE-GRAD,
``R = s (I - D)`` is the regulariser gradient of regularisation by
denoising (Romano, Elad, Milanfar 2017), whose weight ``s`` the
equilibrium training then adjusts. The noise of step ``k`` comes from
``fold_in(key, k)`` and the crops from ``data.train_batch(k, ...)``, so the
pretraining is deterministic.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = ["pretrain_denoiser", "pretrain_from_config"]


def pretrain_denoiser(
    regulariser: nnx.Module,
    train_batch,
    *,
    steps: int,
    sigma: float,
    scale: float = 1.0,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
) -> dict:
    """Trains ``regulariser`` in place as a noise predictor; returns a summary.

    Args:
      regulariser: the DnCNN ``R`` (changed in place).
      train_batch: ``train_batch(step, batch_size, seed) -> (B, H, W, C)`` clean
        crops on [-1, 1] (a :class:`~jfbjax.data.DeblurData`'s ``train_batch``).
      steps: Adam steps (cosine decay from ``lr``).
      sigma: noise standard deviation on the [-1, 1] scale (> 0).
      scale: the target is ``scale`` times the noise.
      lr: peak learning rate.
      batch_size, seed: of the crops (the seed also draws the noise).

    Returns:
      ``{"steps", "sigma", "scale", "first_loss", "final_loss", "psnr_gain"}``:
      the losses (mean squared error of the noise prediction) of the first and
      last ten steps, and the denoiser's mean PSNR gain over the noisy input
      on the last batch (dB).
    """
    if int(steps) < 1:
        raise ValueError(f"pretraining needs steps >= 1, got {steps}")
    if not float(sigma) > 0 or not float(scale) > 0:
        raise ValueError(f"pretraining needs sigma > 0 and scale > 0, got {sigma} and {scale}")
    steps, sigma, scale = int(steps), float(sigma), float(scale)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(lr, steps))
    )
    graphdef, params, rest = nnx.split(regulariser, nnx.Param, ...)
    opt_state = tx.init(params)
    key = jax.random.PRNGKey(seed)

    @jax.jit
    def step_fn(params, opt_state, clean, k):
        noise = sigma * jax.random.normal(jax.random.fold_in(key, k), clean.shape, clean.dtype)

        def loss_fn(params):
            r = nnx.merge(graphdef, params, rest)(clean + noise)
            return jnp.mean(jnp.square(r - scale * noise)), r

        (loss, r), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        denoised = clean + noise - r / scale
        gain = 10 * jnp.log10(
            jnp.mean(jnp.square(noise)) / jnp.maximum(jnp.mean(jnp.square(denoised - clean)), 1e-20)
        )
        return optax.apply_updates(params, updates), opt_state, loss, gain

    losses, gain = [], jnp.nan
    for k in range(steps):
        clean = jnp.asarray(train_batch(k, int(batch_size), int(seed) + 1_000_003))
        params, opt_state, loss, gain = step_fn(params, opt_state, clean, k)
        losses.append(loss)
    nnx.update(regulariser, params)
    losses = [float(x) for x in jax.device_get(losses)]
    tail = min(10, steps)
    return {
        "steps": steps,
        "sigma": sigma,
        "scale": scale,
        "first_loss": sum(losses[:tail]) / tail,
        "final_loss": sum(losses[-tail:]) / tail,
        "psnr_gain": float(gain),
    }


def pretrain_from_config(config, model, data, say=print) -> dict | None:
    """Pretrains ``model.regulariser`` as ``config.model`` asks (``pretrain_steps`` > 0).

    Uses ``pretrain_sigma``, ``pretrain_scale``, ``pretrain_lr`` and the run's
    ``batch_size`` and ``seed`` on ``data.train_batch``. Returns the summary of
    :func:`pretrain_denoiser` with its ``time_s``, or None when no pretraining
    is configured.
    """
    m = config.model
    if int(m.get("pretrain_steps", 0)) <= 0:
        return None
    t0 = time.perf_counter()
    summary = pretrain_denoiser(
        model.regulariser,
        data.train_batch,
        steps=int(m.pretrain_steps),
        sigma=float(m.pretrain_sigma),
        scale=float(m.pretrain_scale),
        lr=float(m.pretrain_lr),
        batch_size=int(config.batch_size),
        seed=int(config.seed),
    )
    summary["time_s"] = time.perf_counter() - t0
    say(
        f"pretraining: R as a denoiser (sigma {summary['sigma']:g}), {summary['steps']} "
        f"steps in {summary['time_s']:.0f} s, PSNR gain {summary['psnr_gain']:.2f} dB"
    )
    return summary
