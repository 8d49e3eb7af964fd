"""Input validation shared by the imaging modules (private).

Checks run on static information only (shapes, dtypes, Python numbers), so
they cost nothing under ``jit``; values that are traced are let through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_image(x: jax.Array, what: str = "image") -> None:
    """Raise ``ValueError`` unless ``x`` has layout (..., H, W, C) with H, W, C >= 1."""
    shape = jnp.shape(x)
    if len(shape) < 3:
        raise ValueError(
            f"{what} must have layout (..., H, W, C) with at least 3 dimensions "
            f"(channels last), got shape {tuple(shape)}"
        )
    if min(shape[-3:]) < 1:
        raise ValueError(f"{what} must have H, W, C >= 1, got shape {tuple(shape)}")


def real_float(x) -> jax.Array:
    """``x`` as a JAX array of a real floating dtype.

    Floating inputs keep their dtype; integer and boolean inputs become
    float32 (never silently float64); complex inputs are rejected.
    """
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"expected real images, got dtype {x.dtype}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype arithmetic runs in: at least float32 (float16/bfloat16 promote)."""
    return jnp.promote_types(dtype, jnp.float32)


def check_nonnegative(value, name: str) -> None:
    """Raise ``ValueError`` if a concrete ``value`` is negative or not finite.

    Traced values (inside ``jit``/``vmap``) cannot be inspected and pass.
    """
    try:
        v = np.asarray(value)
    except jax.errors.TracerArrayConversionError:
        return
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
