"""The degradation d = A x + e, e ~ N(0, noise_std^2 I)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jfbjax.imaging.blur import Blur


def degrade(key: jax.Array, x: jax.Array, blur: Blur, noise_std: float) -> jax.Array:
    """Blur ``x`` (layout (..., H, W, C), [-1, 1] scale) and add white Gaussian
    noise of standard deviation ``noise_std`` drawn from ``key``.

    Draw a fresh key per batch (e.g. ``jax.random.fold_in(key, step)``).
    """
    if isinstance(noise_std, int | float) and not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    ax = blur.apply(x)
    noise = jax.random.normal(key, ax.shape, jnp.promote_types(ax.dtype, jnp.float32))
    return (ax + noise_std * noise).astype(ax.dtype)
