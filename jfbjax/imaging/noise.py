r"""The degradation ``d = A x + e`` with white Gaussian noise ``e ~ N(0, noise_std^2 I)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jfbjax.imaging._checks import check_nonnegative, compute_dtype
from jfbjax.imaging.blur import Blur


def degrade(key: jax.Array, x: jax.Array, blur: Blur, noise_std: float) -> jax.Array:
    r"""Blur and add noise: ``d = A x + noise_std * z`` with ``z ~ N(0, I)`` drawn from ``key``.

    Args:
      key: a PRNG key (raw ``PRNGKey`` or typed ``jax.random.key``). The noise
        is a deterministic function of it: draw a fresh key for every batch,
        e.g. ``jax.random.fold_in(key, step)``.
      x: clean images of layout (..., H, W, C) on the [-1, 1] scale.
      blur: the operator ``A`` (static under ``jit``).
      noise_std: standard deviation on the [-1, 1] scale (paper: 1e-2); may
        be traced. A concrete value must be finite and >= 0.

    Returns:
      ``d`` with the shape and floating dtype of ``A x``; the noise is drawn in
      at least float32 and cast to that dtype.
    """
    check_nonnegative(noise_std, "noise_std")
    ax = blur.apply(x)
    z = jax.random.normal(key, ax.shape, compute_dtype(ax.dtype))
    return (ax + jnp.asarray(noise_std, z.dtype) * z).astype(ax.dtype)
