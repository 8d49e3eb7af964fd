"""Test problems shared by the core tests: an affine map and a contractive tanh layer (float64)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np


def affine_problem(n=7, norm=0.8, seed=0):
    """``(W, b, c)``: ``||W||_2 = norm`` (a contraction for norm < 1), offset b, readout c."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    w = jax.random.normal(k1, (n, n), jnp.float64)
    w = norm * w / jnp.linalg.norm(w, 2)
    b = jax.random.normal(k2, (n,), jnp.float64)
    c = jax.random.normal(k3, (n,), jnp.float64)
    return w, b, c


def affine(z, w, b):
    """The affine map ``z <- W z + b`` (fixed point ``(I - W)^{-1} b``)."""
    return w @ z + b


def tanh_layer(z, params, x):
    """A contractive tanh layer with pytree params: z <- tanh(W z + U x + b)."""
    return jnp.tanh(params["w"] @ z + params["u"] @ x + params["b"])


def tanh_problem(n=6, d=3, norm=0.7, seed=1):
    """``(params, x, target)`` for :func:`tanh_layer` with ``||W||_2 = norm``."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    w = jax.random.normal(ks[0], (n, n), jnp.float64)
    params = {
        "w": norm * w / jnp.linalg.norm(w, 2),
        "u": jax.random.normal(ks[1], (n, d), jnp.float64),
        "b": 0.1 * jax.random.normal(ks[2], (n,), jnp.float64),
    }
    x = jax.random.normal(ks[3], (d,), jnp.float64)
    target = jax.random.normal(ks[4], (n,), jnp.float64)
    return params, x, target


def central_differences(fun, params, eps=1e-6):
    """Central finite differences of the scalar ``fun`` at the pytree ``params``."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    at = jax.jit(lambda v: fun(unravel(v)))  # compiled once, not traced per coordinate
    grad = np.zeros(flat.shape)
    for i in range(flat.size):
        e = jnp.zeros_like(flat).at[i].set(eps)
        grad[i] = (at(flat + e) - at(flat - e)) / (2 * eps)
    return unravel(jnp.asarray(grad))
