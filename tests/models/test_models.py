"""DnCNN, spectral normalisation, DE-GRAD and FeedForward: shapes, the map's
math, gradients (JFB / IFT / Neumann / unrolled; IFT against finite
differences), contraction, per-sample status, construction from a config.

Most problems use a circular 3x3 blur with sigma 0.5 (the smallest eigenvalue
of A^T A is about 0.11) and a DnCNN whose last layer is set to small random
values, so that T is a contraction (about 0.9 for eta = 1) and plain Picard
iterations converge (its programs compile faster than Anderson's; Anderson
is used where per-sample histories matter).
Everything that runs a model is jitted (eager Flax calls compile every
primitive separately) and test data come from NumPy (JAX's samplers compile
per shape, about a second each on CPU); float64 tests build their model in
float32 first and switch to float64 with ``jax.enable_x64`` afterwards.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import jfbjax
from jfbjax.imaging.baselines import tikhonov_cg
from jfbjax.imaging.blur import Blur
from jfbjax.models import (
    DEGRAD,
    DEProx,
    DnCNN,
    FeedForward,
    SpectralConv,
    build_model,
    freeze_spectral_norm,
    spectral_norm_estimate,
)
from jfbjax.training.contraction import contraction_factors

BLUR = Blur(3, 0.5, "circular")


def _normal(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _images(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(dtype)


def _perturb_last_layer(regulariser, scale=0.02, seed=0):
    """Make R non-zero (its last layer starts at zero) so that every layer gets gradient."""
    last = regulariser.layers[-1]
    kernel, bias = last.kernel[...], last.bias[...]
    last.kernel[...] = jnp.asarray(scale * _normal(seed, kernel.shape), kernel.dtype)
    last.bias[...] = jnp.full(bias.shape, 0.1 * scale, bias.dtype)


def _to_float64(model):
    graphdef, state = nnx.split(model)
    cast = lambda a: a.astype(np.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return nnx.merge(graphdef, jax.tree.map(cast, state))


def small_degrad(blur=BLUR, *, spectral_norm=False, perturb=True, **kw):
    """Depth 3, 8 features; with ``perturb`` a small non-zero R (T contracts, ~0.9)."""
    model = DEGRAD(blur, DnCNN(3, 3, 8, spectral_norm=spectral_norm, rngs=nnx.Rngs(0)), **kw)
    if perturb:
        _perturb_last_layer(model.regulariser)
    return model


def _jit_call(module, method="__call__"):
    """``module.method(*args)`` as a jitted function of the arguments (state closed over)."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda *args: getattr(nnx.merge(graphdef, state), method)(*args))


def _loss_fn(graphdef):
    """MSE of the model's reconstruction as a function of the trainable parameters."""

    def loss(params, rest, d, x):
        x_hat, _ = nnx.merge(graphdef, params, rest)(d)
        return jnp.mean((x_hat - x) ** 2)

    return loss


# ----------------------------------------------------------------------- DnCNN


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_dncnn_shapes_dtypes_no_batchnorm_deterministic(spectral_norm):
    r = DnCNN(3, 4, 8, spectral_norm=spectral_norm, rngs=nnx.Rngs(0))
    kernels = [layer.kernel[...].shape for layer in r.layers]
    assert kernels == [(3, 3, 3, 8), (3, 3, 8, 8), (3, 3, 8, 8), (3, 3, 8, 3)]
    assert not any(isinstance(m, nnx.BatchNorm | nnx.LayerNorm) for _, m in nnx.iter_graph(r))
    assert not nnx.state(r, nnx.BatchStat)  # nothing that a call could update
    x = _images(0, (2, 16, 16, 3))
    # the last layer starts at zero: R = 0 at initialisation
    np.testing.assert_array_equal(_jit_call(r)(x), 0.0)

    _perturb_last_layer(r, 0.1)
    before = jax.tree.map(np.asarray, nnx.state(r))
    apply = _jit_call(r)
    y1, y2 = apply(x), apply(x)
    assert y1.shape == x.shape and y1.dtype == jnp.float32
    assert np.any(np.asarray(y1) != 0)
    np.testing.assert_array_equal(y1, y2)
    single = apply(x[1])
    assert single.shape == x[1].shape
    np.testing.assert_allclose(single, y1[1], rtol=1e-5, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, before, nnx.state(r))  # no state written


def test_dncnn_rejects_bad_configuration_and_input():
    with pytest.raises(ValueError, match="depth"):
        DnCNN(3, 1, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="features"):
        DnCNN(3, 3, 0, rngs=nnx.Rngs(0))
    r = DnCNN(3, 3, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="images"):
        r(jnp.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="images"):
        r(jnp.zeros((8, 8)))


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_dncnn_reflect_padding_is_a_reflect_padded_valid_convolution(spectral_norm):
    r = DnCNN(3, 3, 4, spectral_norm=spectral_norm, padding="reflect", rngs=nnx.Rngs(0))
    last = r.layers[-1]
    last.kernel[...] = _normal(5, last.kernel[...].shape) / 6.0  # starts at zero otherwise
    last.bias[...] = _normal(6, last.bias[...].shape)
    x = _normal(3, (2, 9, 10, 3))
    h = x
    for i, layer in enumerate(r.layers):
        kernel = layer.normalised_kernel() if spectral_norm else layer.kernel[...]
        padded = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        h = (
            jax.lax.conv_general_dilated(
                padded, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            + layer.bias[...]
        )
        h = jax.nn.relu(h) if i < len(r.layers) - 1 else h
    np.testing.assert_allclose(r(x), h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r(x[1]), r(x)[1], rtol=1e-6, atol=1e-6)  # one (H, W, C) image
    zero = DnCNN(3, 3, 4, spectral_norm=spectral_norm, rngs=nnx.Rngs(0))
    nnx.update(zero, nnx.state(r, nnx.Param))
    edge = np.abs(np.asarray(zero(x) - r(x)))
    assert edge[:, 4, 4].max() < 1e-6 < edge[:, 0].max()  # differs near the border only
    with pytest.raises(ValueError, match="padding must be one of"):
        DnCNN(3, 3, 4, padding="wrap", rngs=nnx.Rngs(0))


# -------------------------------------------------------- spectral normalisation


@pytest.mark.parametrize("shape", [(27, 8), (576, 64)])
def test_spectral_norm_estimate_matches_svd(shape):
    """Random-init conv matrices have close top singular values (64 x 64: s2/s1 ~ 0.99)."""
    c_in = shape[0] // 9
    w = _normal(1, shape) / np.sqrt(9 * c_in)  # LeCun-normal scale, as nnx.Conv's init
    u0 = _normal(2, (shape[1],))
    exact = np.linalg.norm(np.asarray(w, np.float64), 2)
    value_and_grad = jax.jit(jax.value_and_grad(spectral_norm_estimate, (0, 1)), static_argnums=2)
    est, (g, g_u0) = value_and_grad(w, u0, 8)
    np.testing.assert_allclose(est, exact, rtol=1e-3)
    # the derivative is v u^T with the top singular pair: <dsigma/dW, W> = sigma, |dsigma/dW| = 1
    np.testing.assert_allclose(jnp.vdot(g, w), exact, rtol=1e-3)
    np.testing.assert_allclose(jnp.linalg.norm(g), 1.0, rtol=1e-3)
    np.testing.assert_array_equal(g_u0, 0.0)  # the start vector gets no gradient


def test_spectral_conv_is_bounded_and_pure():
    conv = SpectralConv(8, 8, rngs=nnx.Rngs(0))
    conv.kernel[...] = 5.0 * conv.kernel[...]  # far above 1 before normalising
    w = np.asarray(conv.normalised_kernel())
    np.testing.assert_allclose(np.linalg.norm(w.reshape(-1, 8), 2), 1.0, rtol=1e-3)
    # the operator norm of the convolution on images is <= sqrt(3 * 3) ||W||_2 (SpectralConv)
    x = _images(3, (8, 8, 8))
    apply = _jit_call(conv)
    lip = float(jax.jit(lambda x: jfbjax.contraction_estimate(apply, x, iters=50))(x))
    assert 1.0 < lip <= 3.0 * (1 + 1e-3)
    # no state is written by a call; same output twice
    before = jax.tree.map(np.asarray, nnx.state(conv))
    np.testing.assert_array_equal(apply(x), apply(x))
    np.testing.assert_allclose(conv(x), apply(x), rtol=1e-5, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, before, nnx.state(conv))
    # a kernel already below 1 is left unchanged
    small = 0.5 * w / np.linalg.norm(w.reshape(-1, 8), 2)
    conv.kernel[...] = jnp.asarray(small)
    np.testing.assert_allclose(conv.normalised_kernel(), small, rtol=1e-6)


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_dncnn_scale_output_scales_the_network(spectral_norm):
    net = DnCNN(3, 3, 8, spectral_norm=spectral_norm, rngs=nnx.Rngs(0))
    last = net.layers[-1]  # a last layer far above norm 1, and a bias
    last.kernel[...] = 4.0 * jax.random.normal(jax.random.PRNGKey(2), last.kernel.shape)
    last.bias[...] = jnp.asarray([0.1, -0.2, 0.3])
    x = _images(2, (8, 8, 3))
    before = np.asarray(net(x))
    net.scale_output(0.25)
    np.testing.assert_allclose(net(x), 0.25 * before, rtol=1e-4, atol=1e-6)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="output scale"):
            net.scale_output(bad)


def test_freeze_spectral_norm_same_function_and_gradient():
    r = DnCNN(3, 3, 8, spectral_norm=True, rngs=nnx.Rngs(0))
    for layer in r.layers:
        layer.kernel[...] = jnp.asarray(4.0 * _normal(5, layer.kernel.shape))
    x = _images(4, (2, 8, 8, 3))
    before = jax.tree.map(np.asarray, nnx.state(r))
    frozen = freeze_spectral_norm(r)
    assert all(not layer.normalise for layer in frozen.layers)
    assert all(layer.normalise for layer in r.layers)  # the original is untouched
    jax.tree.map(np.testing.assert_array_equal, before, nnx.state(r))
    for layer in frozen.layers:
        k = np.asarray(layer.kernel[...])
        assert np.linalg.norm(k.reshape(-1, k.shape[-1]), 2) <= 1 + 1e-3

    graphdef, params, rest = nnx.split(r, nnx.Param, ...)

    def both(p):
        module = nnx.merge(graphdef, p, rest)
        return jnp.sum(module(x) ** 2), jnp.sum(freeze_spectral_norm(module)(x) ** 2)

    values, grads = jax.jit(lambda p: (both(p), jax.jacrev(both)(p)))(params)
    np.testing.assert_allclose(*values, rtol=1e-5)
    g_direct, g_through = grads
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    jax.tree.map(close, g_direct, g_through)


def test_spectral_norm_keeps_degrad_contractive_whatever_the_weights():
    """Kernels scaled far up: T contracts (small eta, well-conditioned blur) only when
    the convolutions are spectrally normalised."""
    x = _images(7, (8, 8, 3))
    d = BLUR.apply(x)
    lips = {}
    for spectral_norm in (False, True):
        model = small_degrad(spectral_norm=spectral_norm, eta_init=0.1)
        for i, layer in enumerate(model.regulariser.layers):
            layer.kernel[...] = jnp.asarray(10.0 * _normal(i, layer.kernel.shape))
        step = _jit_call(model, "step")
        estimate = jax.jit(lambda x, d, f=step: jfbjax.contraction_estimate(f, x, d, iters=30))
        lips[spectral_norm] = float(estimate(x, d))
    assert lips[True] < 1.0 < lips[False]


# --------------------------------------------------------------------- DE-GRAD


@pytest.mark.parametrize("eta_init", [0.05, 1.0, 3.0])
def test_eta_positive_and_initialised(eta_init):
    m = small_degrad(eta_init=eta_init)
    np.testing.assert_allclose(m.eta, eta_init, rtol=1e-6)
    m.raw_eta[...] = jnp.asarray(-30.0)
    assert float(m.eta) > 0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eta_init"):
            small_degrad(eta_init=bad)


def test_fixed_eta_is_not_a_param():
    m = small_degrad(eta_init=0.3, learn_eta=False)
    assert "raw_eta" not in nnx.state(m, nnx.Param)
    np.testing.assert_allclose(m.eta, 0.3, rtol=1e-6)


def test_step_is_the_degrad_map():
    blur = Blur(3, 1.0, "zero")
    m = small_degrad(blur, eta_init=0.7)
    x, d = _images(0, (2, 8, 8, 3)), _images(1, (2, 8, 8, 3))
    step = _jit_call(m, "step")
    expected = x - 0.7 * (blur.adjoint(blur.apply(x) - d) + _jit_call(m.regulariser)(x))
    np.testing.assert_allclose(step(x, d), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step(x[0], d[0]), expected[0], rtol=1e-5, atol=1e-6)
    assert step(x, d).dtype == x.dtype
    with pytest.deprecated_call(match="DEGRAD.step"):  # the old spelling still works
        np.testing.assert_array_equal(m.map(x, d), m.step(x, d))
    np.testing.assert_array_equal(m.start(d), blur.adjoint(d))
    m.clamp = True
    clamped = _jit_call(m, "step")(x, d)
    np.testing.assert_allclose(clamped, jnp.clip(expected, -1, 1), rtol=1e-5, atol=1e-6)


def test_deprox_step_is_a_denoised_gradient_step():
    blur = Blur(3, 1.0, "zero")
    m = DEProx(blur, DnCNN(3, 3, 8, rngs=nnx.Rngs(0)), eta_init=0.6)
    _perturb_last_layer(m.regulariser, scale=0.2)
    x, d = _images(0, (2, 8, 8, 3)), _images(1, (2, 8, 8, 3))
    z = x - 0.6 * blur.adjoint(blur.apply(x) - d)
    expected = z - _jit_call(m.regulariser)(z)
    step = _jit_call(m, "step")
    np.testing.assert_allclose(step(x, d), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step(x[0], d[0]), expected[0], rtol=1e-5, atol=1e-6)
    m.clamp = True
    np.testing.assert_allclose(
        _jit_call(m, "step")(x, d), jnp.clip(expected, -1, 1), rtol=1e-5, atol=1e-6
    )
    # With R = 0 DE-Prox is gradient descent on the data fit: same fixed point as DE-GRAD's.
    zero = DEProx(BLUR, DnCNN(3, 3, 8, rngs=nnx.Rngs(0)), solver=jfbjax.Picard(1e-12, 1000))
    with jax.enable_x64(True):
        _check_normal_equations(_to_float64(zero))


def test_cg_start_is_tikhonov_cg_and_keeps_the_fixed_point():
    blur = BLUR
    solver = jfbjax.Anderson(tol=1e-5, max_iter=200)
    a = small_degrad(blur, solver=solver)
    b = small_degrad(blur, solver=solver, start="cg", start_iters=5, start_weight=0.1)
    d = _images(2, (2, 8, 8, 3))
    np.testing.assert_allclose(
        _jit_call(b, "start")(d), tikhonov_cg(d, blur, 0.1, iters=5, tol=0.0), atol=1e-6
    )
    xa, ia = _jit_call(a)(d)
    np.testing.assert_array_equal(ia.status, jfbjax.CONVERGED)
    xb, ib = _jit_call(b)(d)
    np.testing.assert_array_equal(ib.status, jfbjax.CONVERGED)
    np.testing.assert_allclose(xa, xb, atol=1e-3)  # both within tol 1e-5 of x* (contraction 0.9)
    with pytest.raises(ValueError, match="start"):
        small_degrad(blur, start="zeros")
    with pytest.raises(ValueError, match="CG start"):
        small_degrad(blur, start="cg", start_iters=0)


def test_preconditioner_and_tikhonov_term_keep_the_fixed_point_and_contract():
    """precond changes the map, not its fixed points; tikhonov adds lam x to R."""
    blur = Blur(5, 5.0, "zero")
    solver = jfbjax.Anderson(tol=1e-7, max_iter=500)
    plain = small_degrad(blur, solver=solver, tikhonov=0.05, perturb=False)
    pc = small_degrad(blur, solver=solver, tikhonov=0.05, precond=0.1, precond_iters=8)
    _perturb_last_layer(plain.regulariser, scale=0.002)  # measured: 0.955 plain, 0.61 pc
    _perturb_last_layer(pc.regulariser, scale=0.002)
    d = _images(3, (2, 8, 8, 3))
    x, d64 = d.astype(np.float64), d.astype(np.float64)
    with jax.enable_x64(True):
        plain, pc = _to_float64(plain), _to_float64(pc)
        xa, ia = _jit_call(plain)(d64)
        xb, ib = _jit_call(pc)(d64)
        np.testing.assert_array_equal(ia.status, jfbjax.CONVERGED)
        np.testing.assert_array_equal(ib.status, jfbjax.CONVERGED)
        np.testing.assert_allclose(xa, xb, atol=1e-5)
        assert int(np.max(ib.iterations)) < int(np.max(ia.iterations))
        # the Tikhonov term is in the map: T(x) = x - eta (A^T(Ax - d) + lam x + R(x))
        r = _jit_call(plain.regulariser)(x)
        expected = x - (blur.adjoint(blur.apply(x) - d64) + 0.05 * x + r)
        np.testing.assert_allclose(_jit_call(plain, "step")(x, d64), expected, atol=1e-12)
        # the preconditioned map contracts more at the fixed point
        from jfbjax.training.contraction import contraction_factors

        c_plain = contraction_factors(plain.step, xa, d64, iters=40)
        c_pc = contraction_factors(pc.step, xb, d64, iters=40)
        assert np.all(c_plain > 0.9) and np.all(c_pc < 0.7)
    # the smoothed-TV term is in the map too
    from jfbjax.imaging.baselines import smoothed_tv_gradient

    tv = small_degrad(blur, tv_weight=0.01, tv_eps=0.2)
    x, d = _images(4, (2, 8, 8, 3)), _images(5, (2, 8, 8, 3))
    r = _jit_call(tv.regulariser)(x)
    expected = x - (blur.adjoint(blur.apply(x) - d) + 0.01 * smoothed_tv_gradient(x, 0.2) + r)
    np.testing.assert_allclose(_jit_call(tv, "step")(x, d), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="tv_eps"):
        small_degrad(blur, tv_weight=0.01, tv_eps=0.0)
    with pytest.raises(ValueError, match="precond"):
        small_degrad(blur, precond=-1.0)
    with pytest.raises(ValueError, match="precond_iters"):
        small_degrad(blur, precond=0.1, precond_iters=-1)
    # precond_iters=0: the exact (A^T A + mu I)^-1; the step is the Chebyshev one's
    # to the polynomial's accuracy (2 q^10 = 1.3e-4 for mu 0.25)
    exact = small_degrad(blur, tikhonov=0.05, precond=0.25, precond_iters=0)
    cheb = small_degrad(blur, tikhonov=0.05, precond=0.25, precond_iters=10)
    x, d = _images(6, (2, 8, 8, 3)), _images(7, (2, 8, 8, 3))
    direction = x - _jit_call(exact, "step")(x, d)
    np.testing.assert_allclose(
        _jit_call(exact, "step")(x, d), x - exact.eta * blur.normal_inverse(
            blur.adjoint(blur.apply(x) - d) + 0.05 * x + _jit_call(exact.regulariser)(x), 0.25
        ), rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    gap = np.linalg.norm(_jit_call(cheb, "step")(x, d) - (x - direction))
    assert gap <= 2e-4 * np.linalg.norm(direction)
    with pytest.raises(ValueError, match="DEProx"):
        DEProx(blur, DnCNN(3, 3, 8, rngs=nnx.Rngs(0)), precond=0.1)


def test_zero_regulariser_solves_normal_equations():
    """With R = 0 (the DnCNN's initial state) the fixed point solves A^T A x = A^T d."""
    model = small_degrad(perturb=False, solver=jfbjax.Picard(tol=1e-12, max_iter=1000))
    with jax.enable_x64(True):
        _check_normal_equations(_to_float64(model))


def _check_normal_equations(model):
    shape = (2, 6, 6, 3)
    x = _images(1, shape, np.float64)
    d = BLUR.apply(x)
    x_star, info = _jit_call(model)(d)
    np.testing.assert_array_equal(info.status, jfbjax.CONVERGED)
    # dense normal equations for the whole batch: the columns of A are A e_i
    n = x.size
    a = np.asarray(BLUR.apply(jnp.eye(n, dtype=np.float64).reshape(n, *shape))).reshape(n, n).T
    x_dense = np.linalg.solve(a.T @ a, a.T @ np.asarray(d).ravel()).reshape(shape)
    np.testing.assert_allclose(x_star, x_dense, atol=1e-9)
    np.testing.assert_allclose(x_star, x, atol=1e-9)


def test_call_validates_input():
    m = small_degrad()
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        m(jnp.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="channels"):
        m(jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(TypeError, match="floating"):
        m(jnp.zeros((1, 8, 8, 3), jnp.int32))


def test_per_sample_status_with_nan():
    model = small_degrad(solver=jfbjax.Anderson(tol=1e-4, max_iter=60))
    solve = _jit_call(model)
    d = _images(8, (3, 8, 8, 3))
    x_clean, info_clean = solve(d)
    np.testing.assert_array_equal(info_clean.status, jfbjax.CONVERGED)
    d[1, 0, 0, 0] = np.nan
    x, info = solve(d)
    for field in info:
        assert field.shape == (3,)
    np.testing.assert_array_equal(info.status, [0, jfbjax.NONFINITE, 0])
    # the other samples are untouched by the NaN in their neighbour
    np.testing.assert_array_equal(x[::2], x_clean[::2])
    np.testing.assert_array_equal(info.iterations[::2], info_clean.iterations[::2])


@pytest.mark.parametrize(
    ("backward", "spectral_norm"),
    [("jfb", False), ("ift", False), ("neumann", False), ("unrolled", False)],
)
def test_gradients_finite_and_nonzero(backward, spectral_norm):
    solver = jfbjax.Picard(tol=1e-4, max_iter=100)  # (smaller programs than Anderson's)
    model = small_degrad(spectral_norm=spectral_norm, backward=backward, solver=solver)
    x = _images(3, (2, 8, 8, 3))
    d = BLUR.apply(x)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss, grads = jax.jit(jax.value_and_grad(_loss_fn(graphdef)))(params, rest, d, x)
    assert np.isfinite(loss)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert len(leaves) == 2 * 3 + 1  # kernels and biases of 3 convs, raw_eta
    for path, g in leaves:
        assert np.all(np.isfinite(g)), path
        # (raw_eta's gradient is non-zero only through the solver's residual: the
        # fixed point does not depend on eta; test_fixed_point_does_not_depend_on_eta)
        assert np.any(g != 0), path


def test_jfb_gradient_is_the_vjp_of_T_at_the_fixed_point():
    """JFB: dl/dtheta = dl/dx* . dT/dtheta(x*) with x* held fixed, spectral norm included."""
    solver = jfbjax.Picard(tol=1e-5, max_iter=300)
    model = small_degrad(spectral_norm=True, backward="jfb", solver=solver)
    x = _images(3, (2, 8, 8, 3))
    d = BLUR.apply(x)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        x_star, info = nnx.merge(graphdef, params, rest)(d)
        return jnp.mean((x_star - x) ** 2), (x_star, info)

    def jfb_and_surrogate(params):
        grads, (x_star, info) = jax.grad(loss, has_aux=True)(params)
        v = 2.0 * (x_star - x) / x.size  # d MSE / d x*
        surrogate = lambda p: jnp.vdot(v, nnx.merge(graphdef, p, rest).step(x_star, d))
        return grads, jax.grad(surrogate)(params), info

    before = jax.tree.map(np.asarray, nnx.state(model))
    grads, expected, info = jax.jit(jfb_and_surrogate)(params)
    model(d)
    jax.tree.map(np.testing.assert_array_equal, before, nnx.state(model))  # nothing written
    np.testing.assert_array_equal(info.status, jfbjax.CONVERGED)
    # raw_eta is left out: its gradient is of the order of the solver's residual
    # (dT/deta = (T(x*) - x*) / eta), whatever the exact point it is taken at.
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0), path
    grads.pop("raw_eta"), expected.pop("raw_eta")
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max())
    jax.tree.map(close, grads, expected)


def test_ift_gradient_matches_finite_differences():
    model = DEGRAD(
        BLUR,
        DnCNN(3, 2, 8, rngs=nnx.Rngs(1)),
        solver=jfbjax.Picard(tol=1e-12, max_iter=1000),
        backward=jfbjax.IFT("picard", tol=1e-12, max_iter=1000),
    )
    _perturb_last_layer(model.regulariser, 0.01, seed=4)
    with jax.enable_x64(True):
        _check_ift_against_finite_differences(_to_float64(model))


def _check_ift_against_finite_differences(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = _images(5, (1, 8, 8, 3), np.float64)
    d = BLUR.apply(x) + 0.01 * _normal(6, x.shape, np.float64)

    def loss_and_status(p):
        x_hat, info = nnx.merge(graphdef, p, rest)(d)
        return jnp.mean((x_hat - x) ** 2), info.status

    (_, status), grad = jax.jit(jax.value_and_grad(loss_and_status, has_aux=True))(params)
    np.testing.assert_array_equal(status, jfbjax.CONVERGED)
    loss = jax.jit(lambda p: loss_and_status(p)[0])
    # A small step: the loss is only piecewise smooth (ReLU) and here a hidden
    # pre-activation at x* is ~2e-6 from its kink, which eps = 1e-6 already crosses
    # (the central difference is then off by 0.4%). Float64 and tol 1e-12 make
    # the rounding error at eps = 1e-7 negligible.
    eps = 1e-7
    for seed in (0, 1):
        leaves, treedef = jax.tree.flatten(params)
        direction = treedef.unflatten(
            [_normal(100 * seed + i, a.shape, np.float64) for i, a in enumerate(leaves)]
        )
        plus = loss(jax.tree.map(lambda p, v: p + eps * v, params, direction))
        minus = loss(jax.tree.map(lambda p, v: p - eps * v, params, direction))
        fd = (plus - minus) / (2 * eps)
        analytic = sum(
            jnp.vdot(g, v)
            for g, v in zip(jax.tree.leaves(grad), jax.tree.leaves(direction), strict=True)
        )
        np.testing.assert_allclose(analytic, fd, rtol=1e-5)


def test_fixed_point_does_not_depend_on_eta():
    """x* = T(x*) iff A^T(A x* - d) + R(x*) = 0: the same x* for every eta, and an
    exact implicit gradient of zero with respect to eta."""
    solver = jfbjax.Picard(tol=1e-12, max_iter=1000)
    model = small_degrad(solver=solver, backward=jfbjax.IFT("picard", tol=1e-12, max_iter=1000))
    with jax.enable_x64(True):
        _check_eta_independence(_to_float64(model))


def _check_eta_independence(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = _images(2, (1, 8, 8, 3), np.float64)
    d = BLUR.apply(x)

    def solve_and_grad(params):
        x_star, info = nnx.merge(graphdef, params, rest)(d)
        return x_star, info.status, jax.grad(_loss_fn(graphdef))(params, rest, d, x)

    solve_and_grad = jax.jit(solve_and_grad)
    x_star = {}
    for eta in (0.3, 0.9):
        p = nnx.State(dict(params))
        p["raw_eta"] = nnx.Param(jnp.log(jnp.expm1(jnp.float64(eta))))
        x_star[eta], status, grad = solve_and_grad(p)
        np.testing.assert_array_equal(status, jfbjax.CONVERGED)
        scale = float(jnp.linalg.norm(grad["regulariser"]["layers"][0]["kernel"][...]))
        assert abs(float(grad["raw_eta"][...])) < 1e-8 * scale
    np.testing.assert_allclose(x_star[0.3], x_star[0.9], atol=1e-9)


def test_with_solver_shares_variables():
    m = small_degrad(solver="picard", backward="jfb")
    other = m.with_solver(jfbjax.Anderson(tol=1e-6), "ift")
    assert other.solver == jfbjax.Anderson(tol=1e-6) and other.backward == jfbjax.IFT()
    assert m.solver == jfbjax.Picard() and m.backward == jfbjax.JFB()
    m.raw_eta[...] = jnp.asarray(2.0)
    np.testing.assert_allclose(other.eta, m.eta)
    assert other.with_solver().solver == other.solver


def test_feedforward():
    blur = Blur(3, 1.0, "zero")
    reg = DnCNN(3, 3, 8, rngs=nnx.Rngs(0))
    _perturb_last_layer(reg, 0.1)
    ff = FeedForward(blur, reg)
    d = _images(2, (2, 8, 8, 3))
    x, info = _jit_call(ff)(d)
    x0 = blur.adjoint(d)
    np.testing.assert_allclose(x, x0 - _jit_call(reg)(x0), rtol=1e-5, atol=1e-6)
    assert x.shape == d.shape and x.dtype == d.dtype
    for field in info:
        assert field.shape == (2,)
    np.testing.assert_array_equal(info.status, jfbjax.CONVERGED)
    np.testing.assert_array_equal(info.iterations, 0)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        ff(d[0])


def test_inject_stacks_the_measurement_beside_the_iterate():
    """inject=True: R reads (x, d) stacked along the channels; the step is DE-GRAD's
    with that R, and the solve converges as before."""
    model = DEGRAD(BLUR, DnCNN(3, 3, 8, in_channels=6, rngs=nnx.Rngs(0)), inject=True,
                   solver=jfbjax.Picard(tol=1e-6, max_iter=500))  # fmt: skip
    _perturb_last_layer(model.regulariser, 0.05)
    x, d = _images(0, (2, 8, 8, 3)), BLUR.apply(_images(1, (2, 8, 8, 3)))
    other_d = BLUR.apply(_images(2, (2, 8, 8, 3)))
    r = _jit_call(model, "regularise")(x, d)
    np.testing.assert_allclose(r, model.regulariser(jnp.concatenate([x, d], -1)), atol=1e-6)
    assert np.max(np.abs(r - _jit_call(model, "regularise")(x, other_d))) > 1e-3
    expected = x - model.eta * (BLUR.adjoint(BLUR.apply(x) - d) + r)
    np.testing.assert_allclose(_jit_call(model, "step")(x, d), expected, atol=1e-5)
    x_star, info = _jit_call(model)(d)
    np.testing.assert_array_equal(info.status, jfbjax.CONVERGED)
    np.testing.assert_allclose(_jit_call(model, "step")(x_star, d), x_star, atol=1e-4)
    with pytest.raises(ValueError, match="measurement d"):
        model.regularise(x)
    with pytest.raises(ValueError, match=r"in_channels = 2 x channels, got 3 and 3"):
        DEGRAD(BLUR, DnCNN(3, 3, 8, rngs=nnx.Rngs(0)), inject=True)
    with pytest.raises(ValueError, match=r"in_channels = 1 x channels, got 6 and 3"):
        DEGRAD(BLUR, DnCNN(3, 3, 8, in_channels=6, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"\(N, H, W, 6\)"):
        model.regulariser(x)


def test_lagged_tv_preconditioner_keeps_the_fixed_points_and_contracts_more():
    """precond_tv: P(x) ~ (A^T A + mu I + w L_x)^-1 changes the map, not its fixed
    points (the plain map's step leaves x* in place), and contracts faster there than
    the exactly preconditioned map with mu 0.25 (the smoothed TV is the stiff part);
    with the TV averaged over the half turn, so is P(x): T commutes with it."""
    blur = Blur(5, 5.0)
    tv = dict(tv_weight=1e-3, tv_eps=0.02, tv_equivariance=2)
    solver = jfbjax.Anderson(tol=1e-10, max_iter=500)
    reg = lambda: DnCNN(3, 3, 8, rngs=nnx.Rngs(0))
    lagged = DEGRAD(blur, reg(), precond=0.05, precond_iters=5, precond_tv=True, eta_init=1.8,
                    solver=solver, **tv)  # fmt: skip
    exact = DEGRAD(blur, reg(), precond=0.25, precond_iters=0, **tv)
    plain = DEGRAD(blur, reg(), **tv)
    for m in (lagged, exact, plain):
        # a small R: P(x) magnifies R's Jacobian by up to eta / mu where the TV is
        # soft, and the images below are all edges
        _perturb_last_layer(m.regulariser, 0.001)
    x = _images(3, (2, 12, 12, 3), np.float64)
    with jax.enable_x64(True):
        lagged, exact, plain = map(_to_float64, (lagged, exact, plain))
        d = blur.apply(x)
        x_star, info = _jit_call(lagged)(d)
        np.testing.assert_array_equal(info.status, jfbjax.CONVERGED)
        np.testing.assert_allclose(_jit_call(plain, "step")(x_star, d), x_star, atol=1e-8)
        factor = {}
        for name, m in (("lagged", lagged), ("exact", exact)):
            f = jax.jit(lambda x, d, m=m: contraction_factors(m.step, x, d, 60))(x_star, d)
            factor[name] = float(np.max(f))
        assert factor["lagged"] < factor["exact"] - 0.005 and factor["exact"] < 1, factor
        half = lambda v: v[:, ::-1, ::-1]  # the half turn: with R = 0, T commutes with it
        unperturbed = DEGRAD(blur, reg(), precond=0.05, precond_iters=5, precond_tv=True, **tv)
        step = _jit_call(_to_float64(unperturbed), "step")
        np.testing.assert_allclose(step(half(x), half(d)), half(step(x, d)), atol=1e-12)
    with pytest.raises(ValueError, match="precond_tv needs"):
        DEGRAD(blur, reg(), precond=0.05, precond_iters=5, precond_tv=True)
    with pytest.raises(ValueError, match="positive definite"):
        DEGRAD(blur, reg(), precond=0.01, precond_iters=2, precond_tv=True, **tv)


# ---------------------------------------------------------------------- config


def _config(kind="degrad"):
    return ml_collections.ConfigDict(
        {
            "model": {
                "kind": kind,
                "depth": 3,
                "features": 8,
                "spectral_norm": False,
                "eta_init": 0.8,
                "clamp": True,
            },
            "solver": {
                "name": "picard",
                "m": 5,
                "beta": 0.5,
                "ridge": 1e-4,
                "tol": 1e-3,
                "max_iter": 7,
            },
            "backward": {
                "name": "neumann",
                "k": 2,
                "tol": 1e-4,
                "max_iter": 10,
                "adjoint_solver": "picard",
            },
        }
    )


def test_build_model_from_config():
    c = _config()
    m = build_model(c, Blur(), nnx.Rngs(0))
    assert isinstance(m, DEGRAD) and m.clamp
    np.testing.assert_allclose(m.eta, 0.8, rtol=1e-6)
    assert [layer.kernel.shape[-1] for layer in m.regulariser.layers] == [8, 8, 3]
    assert m.solver == jfbjax.Picard(tol=1e-3, max_iter=7, damping=0.5)
    assert m.backward == jfbjax.Neumann(2)
    d = jnp.ones((2, 8, 8, 3))
    x, info = _jit_call(m)(d)
    assert x.shape == d.shape and info.status.shape == (2,)

    c.solver.name, c.backward.name = "anderson", "ift"
    m = build_model(c, Blur(), nnx.Rngs(0))
    assert m.solver == jfbjax.Anderson(m=5, beta=0.5, ridge=1e-4, tol=1e-3, max_iter=7)
    assert m.backward == jfbjax.IFT("picard", tol=1e-4, max_iter=10)
    c.backward.name = "jfb"
    assert build_model(c, Blur(), nnx.Rngs(0)).backward == jfbjax.JFB()
    c.backward.name = "unrolled"
    assert build_model(c, Blur(), nnx.Rngs(0)).backward == jfbjax.Unrolled()
    c.model.spectral_norm, c.model.learn_eta = True, False
    m = build_model(c, Blur(), nnx.Rngs(0))
    assert all(isinstance(layer, SpectralConv) for layer in m.regulariser.layers)
    assert "raw_eta" not in nnx.state(m, nnx.Param)

    c.model.family, c.model.start, c.model.start_iters = "deprox", "cg", 3
    m = build_model(c, Blur(), nnx.Rngs(0))
    assert isinstance(m, DEProx) and m.start_kind == "cg" and m.start_iters == 3

    c.model.family, c.model.inject = "degrad", True
    m = build_model(c, Blur(), nnx.Rngs(0))
    assert m.inject and m.regulariser.layers[0].kernel.shape[-2:] == (6, 8)
    c.model.kind = "feedforward"
    with pytest.raises(ValueError, match=r"model\.inject"):
        build_model(c, Blur(), nnx.Rngs(0))
    c.model.inject = False
    ff = build_model(c, Blur(), nnx.Rngs(0))
    assert isinstance(ff, FeedForward)
    x, info = _jit_call(ff)(d)
    assert x.shape == d.shape and info.iterations.shape == (2,)


@pytest.mark.parametrize(
    ("section", "field", "value", "match"),
    [
        ("model", "kind", "unet", "model.kind"),
        ("model", "family", "monotone", "model.family"),
        ("solver", "name", "newton", "solver.name"),
        ("backward", "name", "cg", "backward.name"),
    ],
)
def test_build_model_rejects_unknown_names(section, field, value, match):
    c = _config()
    c[section][field] = value
    with pytest.raises(ValueError, match=match):
        build_model(c, Blur(), nnx.Rngs(0))
