"""The degradation d = A x + noise_std * z."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfbjax.imaging import Blur, degrade


def _image(shape=(256, 256, 3)):
    return jax.random.uniform(jax.random.PRNGKey(0), shape, minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("noise_std", [1e-2, 0.1])
def test_noise_has_the_requested_statistics(noise_std):
    x, blur = _image(), Blur()
    d = degrade(jax.random.PRNGKey(1), x, blur, noise_std)
    r = np.asarray(d - blur.apply(x), np.float64)
    # 196608 samples: the sample std is within ~0.2% and the mean within ~0.01 std
    np.testing.assert_allclose(r.std(), noise_std, rtol=0.01)
    assert abs(r.mean()) < 0.01 * noise_std
    # white: neighbouring residuals are uncorrelated, and so are the channels
    r = r / r.std()
    assert abs(np.mean(r[1:] * r[:-1])) < 0.01 and abs(np.mean(r[..., 0] * r[..., 1])) < 0.01


def test_noise_is_a_function_of_the_key():
    x, blur = _image((2, 16, 16, 3)), Blur()
    key = jax.random.PRNGKey(2)
    d = degrade(key, x, blur, 0.05)
    np.testing.assert_array_equal(d, degrade(key, x, blur, 0.05))
    assert not np.allclose(d, degrade(jax.random.PRNGKey(3), x, blur, 0.05), atol=1e-3)
    # the images of a batch get different noise
    same = degrade(key, jnp.stack([x[0], x[0]]), blur, 0.05)
    assert not np.allclose(same[0], same[1], atol=1e-3)
    # typed keys work too
    typed = degrade(jax.random.key(2), x, blur, 0.05)
    assert typed.shape == x.shape and np.isfinite(typed).all()


def test_zero_noise_is_the_blur_alone():
    x, blur = _image((8, 9, 2)), Blur(3, 1.0, "circular")
    np.testing.assert_array_equal(degrade(jax.random.PRNGKey(4), x, blur, 0.0), blur.apply(x))


def test_jit_with_static_blur_and_traced_noise_std(x64):
    x = _image((2, 8, 8, 1)).astype(jnp.float32)
    blur = Blur(3, 1.0)
    f = jax.jit(degrade, static_argnums=2)
    d = f(jax.random.PRNGKey(5), x, blur, 0.02)
    np.testing.assert_allclose(d, degrade(jax.random.PRNGKey(5), x, blur, 0.02), atol=1e-6)
    assert d.dtype == jnp.float32  # no silent promotion with x64 enabled


@pytest.mark.parametrize("noise_std", [-1e-3, float("nan"), float("inf"), np.ones(2)])
def test_bad_noise_std(noise_std):
    with pytest.raises(ValueError, match="noise_std"):
        degrade(jax.random.PRNGKey(0), jnp.ones((4, 4, 1)), Blur(), noise_std)


def test_bad_image_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
        degrade(jax.random.PRNGKey(0), jnp.ones((4, 4)), Blur(), 0.1)
