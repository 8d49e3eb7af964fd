"""The geometric self-ensemble (jfbjax.models.ensemble)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jfbjax
from jfbjax.imaging.blur import Blur
from jfbjax.models import (
    DEGRAD,
    DIHEDRAL,
    RECTANGLE,
    SUBGROUPS,
    DnCNN,
    SelfEnsemble,
    check_dihedral_symmetric,
    dihedral,
    dihedral_inverse,
    symmetrize,
)


def _images(n=2, size=8, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, 3)), jnp.float32)


def test_the_eight_symmetries_are_distinct_and_inverted():
    x = _images()
    seen = []
    for k in range(DIHEDRAL):
        y = dihedral(x, k)
        np.testing.assert_array_equal(dihedral_inverse(y, k), x)
        assert not any(np.array_equal(y, z) for z in seen), k
        seen.append(np.asarray(y))
    with pytest.raises(ValueError, match="dihedral index"):
        dihedral(x, 8)


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_a_symmetric_blur_commutes_with_every_symmetry(boundary):
    blur = Blur(kernel_size=5, sigma=1.5, boundary=boundary)
    check_dihedral_symmetric(blur)
    x = _images()
    for k in range(DIHEDRAL):
        np.testing.assert_allclose(
            blur.apply(dihedral(x, k)), dihedral(blur.apply(x), k), atol=1e-6
        )


def test_an_even_kernel_is_refused():
    # Centred half a pixel off the grid: a flip shifts the blur by a pixel.
    blur = Blur(kernel_size=4, sigma=1.5)
    x = _images()
    assert not np.allclose(blur.apply(dihedral(x, 2)), dihedral(blur.apply(x), 2), atol=1e-3)
    with pytest.raises(ValueError, match="odd kernel side"):
        check_dihedral_symmetric(blur)
    with pytest.raises(ValueError, match="odd kernel side"):
        SelfEnsemble(_Stub(blur))


class _Stub(nnx.Module):
    """``d -> A^T d + offset`` with 3 iterations reported per image: equivariant when
    the offset is zero."""

    def __init__(self, blur, offset=None):
        self.blur = blur
        self.offset = offset

    def __call__(self, d):
        x = self.blur.adjoint(d)
        if self.offset is not None:
            x = x + self.offset
        n = d.shape[0]
        info = jfbjax.SolverInfo(
            iterations=jnp.full(n, 3, jnp.int32),
            residual=jnp.arange(n, dtype=jnp.float32),
            status=jnp.zeros(n, jnp.int32).at[0].set(jfbjax.MAX_ITER),
        )
        return x, info


def test_an_equivariant_model_is_its_own_ensemble_and_others_are_averaged():
    blur = Blur(kernel_size=3, sigma=1.0)
    d = _images()
    x_plain, _ = _Stub(blur)(d)
    x_ens, info = SelfEnsemble(_Stub(blur))(d)
    np.testing.assert_allclose(x_ens, x_plain, atol=1e-6)
    # 8 solves an image: their iterations add up; the worst status and residual are kept.
    np.testing.assert_array_equal(info.iterations, [24, 24])
    np.testing.assert_array_equal(info.status, [int(jfbjax.MAX_ITER), int(jfbjax.CONVERGED)])
    np.testing.assert_array_equal(info.residual, [0.0, 1.0])
    # A fixed offset is not equivariant: the ensemble averages its 8 back-transforms.
    offset = _images(n=1, seed=1)
    x_off, _ = SelfEnsemble(_Stub(blur, offset))(d)
    expected = x_plain + sum(dihedral_inverse(offset, k) for k in range(DIHEDRAL)) / DIHEDRAL
    np.testing.assert_allclose(x_off, expected, atol=1e-5)


def test_self_ensemble_of_a_degrad_model_under_jit():
    """Shares the model's variables, jits, and refuses non-square images."""
    blur = Blur(kernel_size=3, sigma=1.0)
    model = DEGRAD(blur, DnCNN(3, 2, 4, rngs=nnx.Rngs(0)), solver=jfbjax.Anderson(max_iter=10))
    ensemble = SelfEnsemble(model)
    assert ensemble.model is model
    d = _images(size=8)
    x_ens, info = nnx.jit(lambda e, d: e(d))(ensemble, d)
    manual = sum(dihedral_inverse(model(dihedral(d, k))[0], k) for k in range(DIHEDRAL)) / 8
    np.testing.assert_allclose(x_ens, manual, atol=1e-5)
    assert np.all(np.asarray(info.iterations) >= 8)
    # a rectangle: the 4 symmetries that keep its shape
    d_rect = _images(size=8)[:, :, :6]
    x_rect, info_rect = ensemble(d_rect)
    assert np.all(np.asarray(info_rect.iterations) >= 4)
    manual = sum(dihedral_inverse(model(dihedral(d_rect, k))[0], k) for k in RECTANGLE) / 4
    assert x_rect.shape == d_rect.shape
    np.testing.assert_allclose(x_rect, manual, atol=1e-5)
    assert all(dihedral(d_rect, k).shape == d_rect.shape for k in RECTANGLE)
    with pytest.raises(ValueError, match="batch of images"):
        ensemble(jax.numpy.zeros((8, 6, 3)))


@pytest.mark.parametrize("size", [2, 4, 8])
def test_symmetrize_makes_any_map_equivariant_to_its_subgroup(size):
    w = jnp.asarray(np.random.default_rng(3).normal(size=(8, 8, 3)), jnp.float32)

    def fn(x):  # not equivariant to anything: a fixed pattern and a one-sided difference
        return x * w + jnp.roll(x, 1, axis=-3)

    x = _images()
    f_h = symmetrize(fn, x, size)
    for k in SUBGROUPS[size]:
        np.testing.assert_allclose(symmetrize(fn, dihedral(x, k), size), dihedral(f_h, k),
                                   atol=1e-5)  # fmt: skip
    outside = [k for k in range(DIHEDRAL) if k not in SUBGROUPS[size]]
    for k in outside:  # and not, in general, to the rest
        assert not np.allclose(symmetrize(fn, dihedral(x, k), size), dihedral(f_h, k), atol=1e-3)
    np.testing.assert_array_equal(symmetrize(fn, x, 1), fn(x))


def test_symmetrize_moves_the_other_images_with_x():
    """``symmetrize(fn, x, size, y)`` is equivariant in ``x`` and ``y`` moved together
    (and not when only ``x`` moves); ``size`` 1 is ``fn(x, y)``."""
    w = jnp.asarray(np.random.default_rng(4).normal(size=(8, 8, 1)), jnp.float32)

    def fn(x, y):  # a one-sided difference of y, weighted by a fixed pattern times x
        return w * x * (y - jnp.roll(y, 1, axis=-2))

    x, y = _images(seed=1), _images(seed=2)
    f_h = symmetrize(fn, x, 4, y)
    for k in SUBGROUPS[4]:
        moved = symmetrize(fn, dihedral(x, k), 4, dihedral(y, k))
        np.testing.assert_allclose(moved, dihedral(f_h, k), atol=1e-5)
    assert not np.allclose(symmetrize(fn, dihedral(x, 1), 4, y), dihedral(f_h, 1), atol=1e-3)
    np.testing.assert_array_equal(symmetrize(fn, x, 1, y), fn(x, y))
    with pytest.raises(ValueError, match="8 x 8"):
        symmetrize(fn, x, 2, y[..., :4, :, :])


def test_symmetrize_refuses_bad_sizes_and_non_square_rotations():
    x = jnp.zeros((1, 6, 4, 3))
    assert symmetrize(lambda v: v + 1, x, 2).shape == x.shape  # a half turn keeps H x W
    with pytest.raises(ValueError, match="square images"):
        symmetrize(lambda v: v, x, 4)
    with pytest.raises(ValueError, match="subgroup size"):
        symmetrize(lambda v: v, x, 3)


def test_an_equivariant_degrad_map_commutes_with_its_subgroup():
    """equivariance=2 averages R and the smoothed TV (whose forward differences are
    not equivariant) with their half turns: T and its fixed point commute with it."""
    blur = Blur(kernel_size=5, sigma=5.0)
    kwargs = dict(tv_weight=1e-3, tv_eps=0.05, precond=0.25, precond_iters=0)
    x, d = _images(seed=4), blur.apply(_images(seed=5))
    plain = DEGRAD(blur, DnCNN(3, 3, 8, rngs=nnx.Rngs(0)), **kwargs)
    solver = jfbjax.Anderson(tol=1e-6, max_iter=300)
    sym = DEGRAD(blur, DnCNN(3, 3, 8, rngs=nnx.Rngs(0)), equivariance=2, solver=solver, **kwargs)
    half = lambda v: dihedral(v, 2)
    assert not np.allclose(plain.step(half(x), half(d)), half(plain.step(x, d)), atol=1e-4)
    np.testing.assert_allclose(sym.step(half(x), half(d)), half(sym.step(x, d)), atol=1e-5)
    x_sym, info = sym(d)
    np.testing.assert_array_equal(info.status, jfbjax.CONVERGED)
    # both solves stop at relative residual 1e-6 of an untrained map that contracts
    # slowly, so they agree to a few 1e-4 (the steps themselves to 1e-5, above)
    np.testing.assert_allclose(sym(half(d))[0], half(x_sym), atol=2e-3)
    with pytest.raises(ValueError, match="equivariance"):
        DEGRAD(blur, DnCNN(3, 3, 8, rngs=nnx.Rngs(0)), equivariance=3)


def test_an_injected_measurement_moves_with_the_iterate_under_the_average():
    """With inject, symmetrize transforms x and d together: the averaged step is
    exactly equivariant, the plain one is not."""
    blur = Blur(kernel_size=5, sigma=5.0)
    x, d = _images(seed=6), blur.apply(_images(seed=7))
    half = lambda v: dihedral(v, 2)
    for size, equivariant in ((1, False), (2, True)):
        model = DEGRAD(blur, DnCNN(3, 3, 8, in_channels=6, rngs=nnx.Rngs(0)), inject=True,
                       equivariance=size)  # fmt: skip
        last = model.regulariser.layers[-1]
        last.kernel[...] = 0.05 * jax.random.normal(jax.random.PRNGKey(1), last.kernel.shape)
        gap = np.max(np.abs(model.step(half(x), half(d)) - half(model.step(x, d))))
        assert (gap < 1e-5) == equivariant, (size, gap)


def test_tv_equivariance_symmetrises_the_smoothed_tv_term_alone():
    blur = Blur(kernel_size=5, sigma=5.0)
    x = _images(seed=8)
    half = lambda v: dihedral(v, 2)

    def tv_part(model, v):
        return model.regularise(v) - model.regulariser(v)

    for size, equivariant in ((1, False), (2, True)):
        model = DEGRAD(blur, DnCNN(3, 2, 4, rngs=nnx.Rngs(0)), tv_weight=1e-2, tv_eps=0.05,
                       tv_equivariance=size)  # fmt: skip
        gap = np.max(np.abs(tv_part(model, half(x)) - half(tv_part(model, x))))
        assert (gap < 1e-5) == equivariant, (size, gap)
    with pytest.raises(ValueError, match="tv_equivariance"):
        DEGRAD(blur, DnCNN(3, 2, 4, rngs=nnx.Rngs(0)), tv_equivariance=0)
