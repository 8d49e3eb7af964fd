"""Mixed precision: DnCNN with bfloat16 convolutions (float32 accumulation) runs,
stays close to float32, and leaves the DE-GRAD iterate and solver in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jfbjax
from jfbjax.imaging.blur import Blur
from jfbjax.models import DEGRAD, DnCNN


def _pair(spectral_norm):
    """A float32 and a bfloat16 DnCNN with the same (non-trivial) parameters."""
    m32 = DnCNN(3, 4, 8, spectral_norm=spectral_norm, rngs=nnx.Rngs(0))
    last = m32.layers[-1]
    last.kernel[...] = 0.2 * jnp.asarray(np.random.default_rng(1).normal(size=last.kernel.shape))
    m16 = DnCNN(3, 4, 8, spectral_norm=spectral_norm, dtype="bfloat16", rngs=nnx.Rngs(0))
    nnx.update(m16, nnx.state(m32))
    return m32, m16


def _x(shape=(2, 12, 12, 3), seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def _flat(tree):
    return jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(tree)])


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_bfloat16_dncnn_is_close_to_float32(spectral_norm):
    m32, m16 = _pair(spectral_norm)
    x = _x()
    y32, y16 = m32(x), m16(x)
    assert y16.dtype == jnp.float32 and y16.shape == x.shape
    rel = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
    assert 0 < rel < 2e-2  # bfloat16 has an 8-bit mantissa: not identical, but close
    # parameters stay float32, and so do their gradients
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    loss = lambda m: jnp.mean(m(x) ** 2)
    g32, g16 = _flat(nnx.grad(loss)(m32)), _flat(nnx.grad(loss)(m16))
    assert g16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g16)))
    assert float(jnp.vdot(g32, g16) / (jnp.linalg.norm(g32) * jnp.linalg.norm(g16))) > 0.999


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_bfloat16_convolutions_in_the_lowered_program(spectral_norm):
    m32, m16 = _pair(spectral_norm)
    x = _x((1, 8, 8, 3))
    hlo16 = jax.jit(lambda x: m16(x)).lower(x).as_text()
    hlo32 = jax.jit(lambda x: m32(x)).lower(x).as_text()
    assert "bf16" in hlo16 and "bf16" not in hlo32


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_the_first_convolution_stays_float32(spectral_norm):
    # it reads the iterate itself; rounding that would floor the solver's residual
    _, m16 = _pair(spectral_norm)
    first, *rest = m16.layers
    assert (first.dtype if spectral_norm else first.dtype or jnp.float32) == jnp.float32
    assert all(layer.dtype == jnp.bfloat16 for layer in rest)
    x = _x((1, 8, 8, 3))
    hlo = jax.jit(lambda x: first(x)).lower(x).as_text()
    assert "bf16" not in hlo


def test_unbatched_input_and_bad_dtype():
    _, m16 = _pair(True)
    x = _x((8, 8, 3))
    assert m16(x).shape == x.shape and m16(x).dtype == jnp.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        DnCNN(3, 3, 4, dtype="int8", rngs=nnx.Rngs(0))


def test_degrad_with_bfloat16_regulariser_solves_in_float32():
    m32, m16 = _pair(True)
    for m in (m32, m16):  # a small R on a mild blur: a contraction, both solves converge
        m.layers[-1].kernel[...] = 0.25 * m.layers[-1].kernel[...]
    blur = Blur(3, 0.5)
    d = blur.apply(_x((2, 12, 12, 3), seed=3))
    solver = jfbjax.Anderson(tol=1e-4, max_iter=100)
    models = [DEGRAD(blur, m, solver=solver, learn_eta=False) for m in (m32, m16)]
    (x32, info32), (x16, info16) = (jax.jit(lambda d, m=m: m(d))(d) for m in models)
    assert x16.dtype == jnp.float32 and info16.residual.dtype == jnp.float32
    assert bool(jnp.all(info32.status == jfbjax.CONVERGED)), info32
    assert bool(jnp.all(info16.status == jfbjax.CONVERGED)), info16
    rel = float(jnp.linalg.norm(x16 - x32) / jnp.linalg.norm(x32))
    assert rel < 5e-3
