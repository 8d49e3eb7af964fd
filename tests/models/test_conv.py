"""conv_same / conv_general_dilated: same values and exact gradients as lax's convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jfbjax.models.conv import conv_general_dilated, conv_same

DN = ("NHWC", "HWIO", "NHWC")


def _lax(x, w, **kw):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN, **kw)


@pytest.mark.parametrize("kernel", [(3, 3), (5, 3), (1, 1)])
def test_values_and_gradients_match_lax_in_float64(x64, kernel):
    kx, kw, kc = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (2, 7, 6, 3), jnp.float64)
    w = jax.random.normal(kw, (*kernel, 3, 4), jnp.float64)
    ct = jax.random.normal(kc, (2, 7, 6, 4), jnp.float64)
    np.testing.assert_allclose(conv_same(x, w), _lax(x, w), rtol=1e-12, atol=1e-12)
    _, ours = jax.vjp(conv_same, x, w)
    _, ref = jax.vjp(_lax, x, w)
    for a, b in zip(ours(ct), ref(ct), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)
    # and against finite differences, through a nonlinearity
    loss = lambda x, w: jnp.sum(jnp.tanh(conv_same(x, w)) * ct)
    gx, gw = jax.grad(loss, argnums=(0, 1))(x, w)
    dx, dw = (jax.random.normal(k, a.shape, jnp.float64) for k, a in zip(
        jax.random.split(kc, 2), (x, w), strict=True))  # fmt: skip
    eps = 1e-6
    fd = (loss(x + eps * dx, w + eps * dw) - loss(x - eps * dx, w - eps * dw)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(gx, dx) + jnp.vdot(gw, dw), fd, rtol=1e-7)


def test_input_gradient_inside_a_loop_and_under_vmap(x64):
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 5, 2), jnp.float64)
    w = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 2, 2), jnp.float64)

    def repeated(conv):
        _, vjp = jax.vjp(lambda z: conv(z, w), x)
        return jax.lax.fori_loop(0, 3, lambda i, t: vjp(t)[0], x)

    np.testing.assert_allclose(jax.jit(lambda: repeated(conv_same))(), repeated(_lax), rtol=1e-12)
    per_sample = jax.vmap(lambda xi: jax.grad(lambda z: jnp.sum(conv_same(z[None], w) ** 2))(xi))
    full = jax.grad(lambda z: jnp.sum(_lax(z, w) ** 2))(x)
    np.testing.assert_allclose(per_sample(x), full, rtol=1e-12)


def test_bfloat16_inputs_with_float32_accumulation():
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 6, 6, 4)).astype(jnp.bfloat16)
    w = (0.2 * jax.random.normal(jax.random.PRNGKey(4), (3, 3, 4, 4))).astype(jnp.bfloat16)
    y = conv_same(x, w, jnp.float32)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, _lax(x, w, preferred_element_type=jnp.float32), rtol=1e-6)
    gx, gw = jax.grad(lambda x, w: jnp.sum(conv_same(x, w, jnp.float32)), argnums=(0, 1))(x, w)
    assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16


def test_dispatch_uses_the_fast_path_only_where_it_applies(monkeypatch):
    calls = []
    import jfbjax.models.conv as conv_module

    real = conv_module.conv_same
    monkeypatch.setattr(conv_module, "conv_same", lambda *a: calls.append(1) or real(*a))
    x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
    conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
    assert len(calls) == 1
    # strided, even kernel, or other layouts: lax's convolution, same result
    y = conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=DN)
    assert y.shape == (1, 3, 3, 2) and len(calls) == 1
    w2 = jnp.ones((2, 2, 2, 2))
    y2 = conv_general_dilated(x, w2, (1, 1), "SAME", dimension_numbers=DN)
    np.testing.assert_allclose(y2, _lax(x, w2))
    assert len(calls) == 1
    # nnx.Conv passes its own keyword arguments (dimension numbers object, out_sharding)
    layer = nnx.Conv(2, 3, (3, 3), padding="SAME", conv_general_dilated=conv_general_dilated,
                     rngs=nnx.Rngs(0))  # fmt: skip
    layer(x)
    assert len(calls) == 2
