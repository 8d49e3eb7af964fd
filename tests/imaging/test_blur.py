"""The Gaussian kernel and the blur operator A: adjointness, boundaries, dtypes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jfbjax.imaging import Blur, gaussian_kernel
from jfbjax.imaging.blur import EIGEN_MAX, chebyshev, chebyshev_bound

SHAPES = [(7, 9, 1), (8, 8, 3), (16, 15, 3), (2, 7, 9, 3), (2, 3, 8, 8, 1)]


def _normal(seed, shape, dtype=jnp.float64):
    """Test data from NumPy (compiling JAX's sampler per shape is slow on CPU)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


@pytest.mark.parametrize("size", [1, 2, 4, 5, 7])
def test_kernel_sums_to_one_and_is_symmetric(size):
    k = gaussian_kernel(size, 1.7)
    assert k.shape == (size, size) and k.dtype == np.float64
    np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-15)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1, ::-1])
    assert np.all(k > 0)


def test_kernel_values():
    # separable: the outer product of a normalised 1-D Gaussian with itself
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.8**2))
    np.testing.assert_allclose(gaussian_kernel(3, 0.8), np.outer(g, g) / np.outer(g, g).sum())
    # the paper's 5x5 with std 5 is close to a box filter
    k = gaussian_kernel(5, 5.0)
    assert 0.03 < k.min() < k.max() < 0.05
    np.testing.assert_array_equal(gaussian_kernel(1, 3.0), [[1.0]])
    # a tiny sigma gives a delta for an odd size (no 0/0 from underflow)
    np.testing.assert_array_equal(gaussian_kernel(5, 1e-3), np.eye(5)[2:3].T @ np.eye(5)[2:3])


@pytest.mark.parametrize(
    ("size", "sigma", "match"),
    [
        (0, 1.0, "kernel size"),
        (-3, 1.0, "kernel size"),
        (2.5, 1.0, "kernel size"),
        (True, 1.0, "kernel size"),
        (5, 0.0, "sigma"),
        (5, -1.0, "sigma"),
        (5, float("nan"), "sigma"),
        (5, float("inf"), "sigma"),
        (5, "1", "sigma"),
    ],
)
def test_kernel_and_blur_reject_bad_parameters(size, sigma, match):
    with pytest.raises(ValueError, match=match):
        gaussian_kernel(size, sigma)
    with pytest.raises(ValueError, match=match):
        Blur(kernel_size=size, sigma=sigma)


def test_blur_rejects_unknown_boundary():
    with pytest.raises(ValueError, match="boundary must be one of"):
        Blur(boundary="reflect")


@pytest.mark.parametrize("boundary", ["zero", "circular"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel_size", [5, 4])
def test_adjoint_is_exact(x64, boundary, shape, kernel_size):
    blur = Blur(kernel_size=kernel_size, sigma=1.3, boundary=boundary)
    x, y = _normal(0, shape), _normal(1, shape)
    ax, aty = blur.apply(x), blur.adjoint(y)
    assert ax.shape == aty.shape == shape and ax.dtype == aty.dtype == jnp.float64
    np.testing.assert_allclose(jnp.vdot(ax, y), jnp.vdot(x, aty), rtol=1e-12)
    # ... and it is the transpose JAX derives from the forward operator
    (transposed,) = jax.linear_transpose(blur.apply, x)(y)
    np.testing.assert_allclose(aty, transposed, atol=1e-12)


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_adjoint_when_the_kernel_is_larger_than_the_image(x64, boundary):
    blur = Blur(kernel_size=6, sigma=2.0, boundary=boundary)
    x, y = _normal(2, (3, 4, 2)), _normal(3, (3, 4, 2))
    np.testing.assert_allclose(jnp.vdot(blur.apply(x), y), jnp.vdot(x, blur.adjoint(y)), rtol=1e-12)
    # the operator is linear and its dense matrix is what the adjoint transposes
    a = jax.jacfwd(lambda v: blur.apply(v.reshape(3, 4, 2)).reshape(-1))(jnp.zeros(24))
    at = jax.jacfwd(lambda v: blur.adjoint(v.reshape(3, 4, 2)).reshape(-1))(jnp.zeros(24))
    np.testing.assert_allclose(at, a.T, atol=1e-14)


@pytest.mark.parametrize("kernel_size", [5, 4, 9])
def test_zero_boundary_banded_and_shifted_copies_equal_the_direct_correlation(
    x64, kernel_size, monkeypatch
):
    """Axes up to BANDED_MAX pixels are blurred by banded matrices, longer ones by
    shifted copies: both equal the 2-D correlation with h under zero padding."""
    from jfbjax.imaging import blur as blur_module

    blur = Blur(kernel_size=kernel_size, sigma=1.7)
    x, y = _normal(5, (2, 7, 10, 3)), _normal(6, (2, 7, 10, 3))
    h, lo = blur.kernel, (kernel_size - 1) // 2
    xp = np.pad(
        np.asarray(x), ((0, 0), (lo, kernel_size - 1 - lo), (lo, kernel_size - 1 - lo), (0, 0))
    )
    direct = sum(h[k, m] * xp[:, k : k + 7, m : m + 10] for k in range(kernel_size)
                 for m in range(kernel_size))  # fmt: skip
    banded = (blur.apply(x), blur.adjoint(y))
    assert "dot_general" in str(jax.make_jaxpr(blur.apply)(x))
    monkeypatch.setattr(blur_module, "BANDED_MAX", 0)  # every axis by shifted copies
    shifted = (blur.apply(x), blur.adjoint(y))
    assert "dot_general" not in str(jax.make_jaxpr(blur.apply)(x))
    np.testing.assert_allclose(banded[0], direct, atol=1e-13)
    np.testing.assert_allclose(shifted[0], direct, atol=1e-13)
    np.testing.assert_allclose(banded[1], shifted[1], atol=1e-13)
    np.testing.assert_allclose(jnp.vdot(banded[0], y), jnp.vdot(x, banded[1]), rtol=1e-12)
    # the keyword picks the form whatever BANDED_MAX says
    asked = (blur.apply(x, banded=True), blur.adjoint(y, banded=True))
    assert "dot_general" in str(jax.make_jaxpr(lambda v: blur.apply(v, banded=True))(x))
    np.testing.assert_allclose(asked[0], direct, atol=1e-13)
    np.testing.assert_allclose(asked[1], banded[1], atol=1e-13)
    monkeypatch.undo()
    assert "dot_general" not in str(jax.make_jaxpr(lambda v: blur.normal(v, banded=False))(x))


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_delta_kernels_are_the_identity(boundary):
    x = _normal(4, (2, 6, 7, 3), jnp.float32)
    for blur in (Blur(1, 1.0, boundary), Blur(5, 1e-3, boundary)):
        np.testing.assert_allclose(blur.apply(x), x, atol=1e-6)
        np.testing.assert_allclose(blur.adjoint(x), x, atol=1e-6)


def test_normal_operator_is_a_psd_contraction(x64):
    for boundary in ("zero", "circular"):
        blur = Blur(5, 1.0, boundary)
        x = _normal(5, (9, 8, 2))
        nx = blur.normal(x)
        np.testing.assert_allclose(nx, blur.adjoint(blur.apply(x)))
        assert 0 <= float(jnp.vdot(x, nx)) <= float(jnp.vdot(x, x))
        assert float(jnp.linalg.norm(blur.apply(x))) <= blur.norm_bound * float(jnp.linalg.norm(x))
    assert Blur().norm_bound == pytest.approx(1.0)


@pytest.mark.parametrize("kernel_size", [5, 4])
def test_circular_blur_commutes_with_circular_shifts(kernel_size):
    x = _normal(6, (2, 12, 10, 2), jnp.float32)
    blur = Blur(kernel_size, 2.0, "circular")
    shift = lambda v: jnp.roll(v, (3, -2), axis=(-3, -2))
    np.testing.assert_allclose(blur.apply(shift(x)), shift(blur.apply(x)), atol=1e-5)
    np.testing.assert_allclose(blur.adjoint(shift(x)), shift(blur.adjoint(x)), atol=1e-5)


def test_zero_padded_blur_of_a_constant_image():
    ones = jnp.ones((12, 13, 2))
    y = Blur(5, 5.0, "zero").apply(ones)
    np.testing.assert_allclose(y[2:-2, 2:-2], 1.0, rtol=1e-6)  # interior: unchanged
    border = np.ones((12, 13), bool)
    border[2:-2, 2:-2] = False
    assert np.all(np.asarray(y[..., 0])[border] < 1.0 - 1e-3)  # border: darker
    k = gaussian_kernel(5, 5.0)
    np.testing.assert_allclose(y[0, 0], k[2:, 2:].sum(), rtol=1e-6)  # corner: 3x3 of the taps
    np.testing.assert_allclose(y[0, 6], k[2:, :].sum(), rtol=1e-6)  # edge: 3 of 5 rows
    # the circular blur of a constant is the constant everywhere
    np.testing.assert_allclose(Blur(5, 5.0, "circular").apply(ones), 1.0, rtol=1e-6)


@pytest.mark.parametrize("kernel_size", [5, 4, 3])
def test_boundaries_agree_away_from_the_border(kernel_size):
    x = _normal(7, (11, 10, 2), jnp.float32)
    lo, hi = (kernel_size - 1) // 2, kernel_size // 2
    zero, circ = Blur(kernel_size, 1.5, "zero"), Blur(kernel_size, 1.5, "circular")
    inner = (slice(lo, 11 - hi), slice(lo, 10 - hi))
    np.testing.assert_allclose(zero.apply(x)[inner], circ.apply(x)[inner], atol=1e-5)
    inner_t = (slice(hi, 11 - lo), slice(hi, 10 - lo))
    np.testing.assert_allclose(zero.adjoint(x)[inner_t], circ.adjoint(x)[inner_t], atol=1e-5)
    assert not np.allclose(zero.apply(x), circ.apply(x), atol=1e-3)  # the borders differ


def test_transfer_function(x64):
    blur = Blur(5, 1.2, "circular")
    k = blur.transfer_function(8, 9)
    assert k.shape == (8, 5) and np.iscomplexobj(k)
    np.testing.assert_allclose(k[0, 0], 1.0)  # DC gain: the taps sum to one
    assert np.all(np.abs(k) <= 1.0 + 1e-12)
    np.testing.assert_allclose(Blur(1, 1.0, "circular").transfer_function(4, 6), 1.0)
    x = _normal(8, (8, 9, 1))
    direct = np.fft.irfft2(k * np.fft.rfft2(np.asarray(x[..., 0])), s=(8, 9))
    np.testing.assert_allclose(blur.apply(x)[..., 0], direct, atol=1e-12)
    # the Gaussian is symmetric, so its transfer function is real (zero phase) for odd sizes
    np.testing.assert_allclose(k.imag, 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="image size"):
        blur.transfer_function(0, 4)


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_dtypes_are_preserved(x64, boundary):
    blur = Blur(5, 2.0, boundary)
    x = _normal(9, (6, 7, 3), jnp.float32)
    # float32 stays float32 even with x64 enabled (no silent promotion)
    assert blur.apply(x).dtype == blur.adjoint(x).dtype == jnp.float32
    xb = x.astype(jnp.bfloat16)
    yb = blur.apply(xb)
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(yb.astype(jnp.float32), blur.apply(x), atol=2e-2)
    assert blur.apply(jnp.ones((5, 5, 1), jnp.int32)).dtype == jnp.float32
    assert blur.apply(np.ones((5, 5, 1))).dtype == jnp.float64


def test_blur_is_hashable_and_static_under_jit():
    assert hash(Blur()) == hash(Blur(5, 5.0, "zero")) and Blur() == Blur(5, 5.0, "zero")
    assert Blur() != Blur(boundary="circular")
    x = _normal(10, (2, 8, 8, 3), jnp.float32)

    @jax.jit
    def closed(v):
        return Blur(3, 1.0).normal(v)

    static = jax.jit(lambda blur, v: blur.apply(v), static_argnums=0)
    np.testing.assert_allclose(closed(x), Blur(3, 1.0).normal(x), atol=1e-6)
    for boundary in ("zero", "circular"):
        blur = Blur(3, 1.0, boundary)
        np.testing.assert_allclose(static(blur, x), blur.apply(x), atol=1e-6)
    # vmap over a batch equals the batched call
    np.testing.assert_allclose(jax.vmap(Blur(3, 1.0).apply)(x), Blur(3, 1.0).apply(x), atol=1e-6)


@pytest.mark.parametrize("method", ["apply", "adjoint", "normal"])
def test_bad_shapes_and_dtypes(method):
    fn = getattr(Blur(), method)
    for bad in (jnp.ones((4, 4)), jnp.ones(4), jnp.float32(1.0)):
        with pytest.raises(ValueError, match=r"layout \(\.\.\., H, W, C\)"):
            fn(bad)
    with pytest.raises(ValueError, match="H, W, C >= 1"):
        fn(jnp.ones((4, 0, 3)))
    with pytest.raises(ValueError, match="real images"):
        fn(jnp.ones((4, 4, 1), jnp.complex64))


def _dense(op, shape):
    n = int(np.prod(shape))
    return np.asarray(op(jnp.eye(n, dtype=jnp.float64).reshape(n, *shape))).reshape(n, n).T


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_chebyshev_preconditioner_is_spd_commutes_and_meets_its_bound(x64, boundary):
    blur, shape = Blur(5, 5.0, boundary), (6, 6, 2)
    h = _dense(blur.normal, shape)
    for mu, iters in [(0.05, 10), (0.02, 6)]:
        p = _dense(lambda x, mu=mu, iters=iters: blur.normal_inverse_approx(x, mu, iters), shape)
        np.testing.assert_allclose(p, p.T, atol=1e-12)  # symmetric
        np.testing.assert_allclose(p @ h, h @ p, atol=1e-10)  # a polynomial in A^T A
        assert np.linalg.eigvalsh(p).min() > 0
        # Chebyshev's bound on the residual polynomial over [mu, 1 + mu].
        k = (1 + mu) / mu
        q = (np.sqrt(k) - 1) / (np.sqrt(k) + 1)
        residual = np.eye(len(h)) - p @ (h + mu * np.eye(len(h)))
        assert np.linalg.norm(residual, 2) <= 2 * q**iters + 1e-12
    with pytest.raises(ValueError, match="mu"):
        blur.normal_inverse_approx(jnp.ones(shape), 0.0)
    with pytest.raises(ValueError, match="iters"):
        blur.normal_inverse_approx(jnp.ones(shape), 0.1, 0)


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_exact_normal_inverse(x64, boundary):
    blur, shape = Blur(5, 5.0, boundary), (7, 6, 2)  # H != W: each axis its own basis
    h = _dense(blur.normal, shape)
    for mu in (0.25, 0.02):
        p = _dense(lambda x, mu=mu: blur.normal_inverse(x, mu), shape)
        np.testing.assert_allclose(p @ (h + mu * np.eye(len(h))), np.eye(len(h)), atol=1e-10)
        np.testing.assert_allclose(p, p.T, atol=1e-12)
        # the Chebyshev polynomial approximates it within its bound
        k = (1 + mu) / mu
        q = (np.sqrt(k) - 1) / (np.sqrt(k) + 1)
        cheb = _dense(lambda x, mu=mu: blur.normal_inverse_approx(x, mu, 10), shape)
        gap = np.linalg.norm((cheb - p) @ (h + mu * np.eye(len(h))), 2)
        assert gap <= 2 * q**10 + 1e-12
    x = jnp.ones((3, *shape))  # leading batch axes and float32 are kept
    assert blur.normal_inverse(x.astype(jnp.float32), 0.1).dtype == jnp.float32
    assert blur.normal_inverse(x, 0.1).shape == (3, *shape)
    with pytest.raises(ValueError, match="mu"):
        blur.normal_inverse(jnp.ones(shape), 0.0)
    with pytest.raises(ValueError, match="mu"):
        blur.normal_inverse(jnp.ones(shape), float("nan"))


def test_exact_normal_inverse_refuses_images_past_the_matrix_size():
    with pytest.raises(ValueError, match="normal_inverse_approx"):
        Blur(5, 5.0, "zero").normal_inverse(jnp.ones((EIGEN_MAX + 1, 4, 1)), 0.1)


def test_preconditioned_chebyshev_is_a_fixed_spd_operator_within_its_bound(x64):
    # M = A^T A + mu I + S (S a random PSD matrix), B = (A^T A + mu I)^-1: the
    # spectrum of B M lies in [1, 1 + ||S|| / mu].
    blur, shape, mu = Blur(5, 5.0), (5, 4, 2), 0.1
    n = int(np.prod(shape))
    g = np.random.default_rng(0).standard_normal((n, n)) / np.sqrt(n)
    s = g @ g.T
    s_apply = lambda v: jnp.einsum("ij,...j->...i", s, v.reshape(*v.shape[:-3], n)).reshape(v.shape)
    matvec = lambda v: blur.normal(v) + mu * v + s_apply(v)
    inverse = lambda v: blur.normal_inverse(v, mu)
    lo, hi = 1.0, 1.0 + np.linalg.eigvalsh(s).max() / mu
    m = _dense(matvec, shape)
    for iters in (3, 8):
        p = _dense(lambda b, k=iters: chebyshev(matvec, b, lo, hi, k, precond=inverse), shape)
        np.testing.assert_allclose(p, p.T, atol=1e-10)  # symmetric
        assert np.linalg.eigvalsh(p).min() > 0
        # |1 - t q(t)| on the spectrum of B M, measured in the M-norm
        half = np.linalg.cholesky(m)
        residual = half.T @ (np.eye(n) - p @ m) @ np.linalg.inv(half.T)
        assert np.linalg.norm(residual, 2) <= chebyshev_bound(lo, hi, iters) + 1e-10
        # linear in b (no dependence of its coefficients on the right-hand side)
        b = jnp.asarray(np.random.default_rng(iters).standard_normal(shape))
        np.testing.assert_allclose(
            chebyshev(matvec, 3 * b, lo, hi, iters, precond=inverse),
            3 * chebyshev(matvec, b, lo, hi, iters, precond=inverse),
            rtol=1e-12,
        )
    # without a preconditioner it is normal_inverse_approx
    b = jnp.asarray(np.random.default_rng(5).standard_normal(shape))
    np.testing.assert_allclose(
        chebyshev(lambda v: blur.normal(v) + mu * v, b, mu, 1 + mu, 6),
        blur.normal_inverse_approx(b, mu, 6),
        rtol=1e-12,
    )
