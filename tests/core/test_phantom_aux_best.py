"""Phantom gradients, best-iterate solves and auxiliary outputs of fixed_point (float64)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import jfbjax
from jfbjax.solvers import relative_residual
from tests.core.problems import (
    affine,
    affine_problem,
    central_differences,
    tanh_layer,
    tanh_problem,
)

TIGHT = jfbjax.Anderson(m=6, tol=1e-13, max_iter=300)
IFT_TIGHT = jfbjax.IFT(tol=1e-13, max_iter=300)


def adjoint_closed_form(w, v, mode):
    """The adjoint vector u of each backward mode for the affine map and cotangent v."""
    n = w.shape[0]
    if mode == "ift":
        return jnp.linalg.solve((jnp.eye(n) - w).T, v)
    if mode == "jfb":
        return v
    kind, k, lam = mode
    if kind == "neumann":
        return sum(jnp.linalg.matrix_power(w.T, i) @ v for i in range(k + 1))
    m = (1 - lam) * jnp.eye(n) + lam * w  # phantom: lam sum_{i<k} (M^T)^i v
    return lam * sum(jnp.linalg.matrix_power(m.T, i) @ v for i in range(k))


def tanh_loss(params, x, target, backward, z0=None):
    z0 = jnp.zeros_like(target) if z0 is None else z0
    z, _ = jfbjax.fixed_point(tanh_layer, z0, params, x, solver=TIGHT, backward=backward)
    return 0.5 * jnp.sum((z - target) ** 2)


def assert_trees_close(a, b, **kw):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **kw)


# ------------------------------------------------------------------ phantom


def test_phantom_one_step_is_exactly_jfb(x64):
    params, x, target = tanh_problem()
    g_jfb = jax.grad(tanh_loss, argnums=(0, 1))(params, x, target, jfbjax.JFB())
    for mode in (jfbjax.Phantom(), jfbjax.Phantom(1, 1.0), "phantom"):
        g = jax.grad(tanh_loss, argnums=(0, 1))(params, x, target, mode)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_jfb), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k, lam", [(1, 1.0), (1, 0.5), (3, 1.0), (4, 0.6), (12, 0.3)])
def test_phantom_affine_closed_form(x64, k, lam):
    w, b, c = affine_problem()

    def loss(w, b, mode):
        z, _ = jfbjax.fixed_point(affine, jnp.zeros(7), w, b, solver=TIGHT, backward=mode)
        return c @ z

    gw, gb = jax.grad(loss, argnums=(0, 1))(w, b, jfbjax.Phantom(k, lam))
    u = adjoint_closed_form(w, c, ("phantom", k, lam))
    z_star = jnp.linalg.solve(jnp.eye(7) - w, b)
    np.testing.assert_allclose(gb, u, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(gw, jnp.outer(u, z_star), rtol=1e-10, atol=1e-11)
    if lam == 1.0:  # Phantom(k, 1) is Neumann(k - 1)
        g_neumann = jax.grad(loss, argnums=1)(w, b, jfbjax.Neumann(k - 1))
        np.testing.assert_allclose(g_neumann, gb, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("k, lam", [(1, 0.5), (3, 1.0), (7, 0.5)])
def test_phantom_equals_backprop_through_damped_steps_from_the_fixed_point(x64, k, lam):
    """On a nonlinear map, Phantom(k, lam) after a tight solve equals reverse mode
    through k damped Picard steps started at a stop-gradient z*: once with the
    library's Unrolled backward, once with a plain Python loop."""
    params, x, target = tanh_problem()
    z_star, info = jfbjax.fixed_point(tanh_layer, jnp.zeros(6), params, x, solver=TIGHT)
    assert float(info.residual) <= 1e-13

    def unrolled(params, x):
        z, _ = jfbjax.fixed_point(
            tanh_layer,
            z_star,  # fixed_point stops the gradient of the start point
            params,
            x,
            solver=jfbjax.Picard(tol=0.0, max_iter=k, damping=lam),
            backward=jfbjax.Unrolled(),
        )
        return 0.5 * jnp.sum((z - target) ** 2)

    def python_loop(params, x):
        z = jax.lax.stop_gradient(z_star)
        for _ in range(k):
            z = (1 - lam) * z + lam * tanh_layer(z, params, x)
        return 0.5 * jnp.sum((z - target) ** 2)

    phantom = jax.grad(tanh_loss, argnums=(0, 1))(params, x, target, jfbjax.Phantom(k, lam))
    assert_trees_close(
        phantom, jax.grad(unrolled, argnums=(0, 1))(params, x), rtol=1e-8, atol=1e-10
    )
    assert_trees_close(
        phantom, jax.grad(python_loop, argnums=(0, 1))(params, x), rtol=1e-8, atol=1e-10
    )


@pytest.mark.parametrize("lam", [1.0, 0.6])
def test_phantom_approaches_ift_as_k_grows(x64, lam):
    params, x, target = tanh_problem()
    ift = jax.grad(tanh_loss)(params, x, target, IFT_TIGHT)
    errors = []
    for k in (1, 4, 16, 120):
        g = jax.grad(tanh_loss)(params, x, target, jfbjax.Phantom(k, lam))
        diff = jax.tree.map(jnp.subtract, g, ift)
        errors.append(float(jnp.linalg.norm(jax.flatten_util.ravel_pytree(diff)[0])))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-9 * errors[0]


def test_phantom_under_jit_vmap_and_its_callback(x64):
    params, _, _ = tanh_problem()
    xs = jax.random.normal(jax.random.PRNGKey(7), (3, 3), jnp.float64)
    mode = jfbjax.Phantom(4, 0.5)
    seen = []

    def loss(p, x, callback=None):
        z, _ = jfbjax.fixed_point(
            tanh_layer, jnp.zeros(6), p, x, solver=TIGHT, backward=mode, backward_callback=callback
        )
        return jnp.sum(z**2)

    g_batch = jax.jit(jax.grad(lambda p: jnp.sum(jax.vmap(lambda x: loss(p, x, seen.append))(xs))))(
        params
    )
    g_loop = jax.tree.map(lambda *g: sum(g), *[jax.grad(loss)(params, x) for x in xs])
    assert_trees_close(g_batch, g_loop, rtol=1e-10, atol=1e-12)
    jax.effects_barrier()
    assert seen, "the backward callback did not run"
    stats = jax.tree.map(np.asarray, seen[-1])
    assert np.all(stats.iterations == 3)  # k - 1 VJPs in z
    assert np.all(stats.status == jfbjax.MAX_ITER)
    assert np.all(np.isfinite(stats.residual)) and np.all(stats.residual > 0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: jfbjax.Phantom(0), "k must be an integer >= 1"),
        (lambda: jfbjax.Phantom(2.0), "k must be an integer >= 1"),
        (lambda: jfbjax.Phantom(True), "k must be an integer >= 1"),
        (lambda: jfbjax.Phantom(1, 0.0), r"lam must be a number in \(0, 1\]"),
        (lambda: jfbjax.Phantom(1, 1.5), r"lam must be a number in \(0, 1\]"),
        (lambda: jfbjax.Phantom(1, float("nan")), r"lam must be a number in \(0, 1\]"),
        (lambda: jfbjax.Phantom(1, "0.5"), r"lam must be a number in \(0, 1\]"),
    ],
)
def test_phantom_rejects_bad_settings(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_phantom_configuration():
    assert jfbjax.as_backward("phantom") == jfbjax.Phantom(1, 1.0)
    assert jfbjax.as_backward("Phantom") == jfbjax.Phantom()
    assert hash(jfbjax.Phantom(3, 0.5)) == hash(jfbjax.Phantom(3, 0.5))
    mode = jfbjax.Phantom(2)
    assert jfbjax.as_backward(mode) is mode
    with pytest.raises(ValueError, match="phantom"):
        jfbjax.as_backward("phantoms")


# ------------------------------------------------------------ best iterate


def rotation(z, theta, center, rho):
    """``center + rho R(theta) (z - center)``: Picard circles the fixed point when rho = 1."""
    r = jnp.array([[jnp.cos(theta), -jnp.sin(theta)], [jnp.sin(theta), jnp.cos(theta)]])
    return center + rho * r @ (z - center)


def best_of_trace(f, z0, args, solver):
    """min(r_0, r_1, ..., r_K) from residual_trace (which starts after the first step)."""
    _, trace = jfbjax.residual_trace(f, z0, *args, solver=solver)
    r0 = relative_residual(z0, f(z0, *args))
    return float(jnp.minimum(r0, jnp.min(trace))), float(trace[-1])


def test_best_iterate_picard_on_a_rotation_is_per_sample(x64):
    thetas = jnp.array([2.0, 2.5, 1.0, 1.0])
    centers = jnp.array([[3.0, 0.5], [3.0, 0.5], [-1.0, 2.0], [-1.0, 2.0]])
    rhos = jnp.array([1.0, 1.0, 1.0, 0.3])  # the last sample contracts and converges
    plain = jfbjax.Picard(tol=1e-8, max_iter=25)
    best = jfbjax.Picard(tol=1e-8, max_iter=25, best_iterate=True)
    z0 = jnp.zeros(2)

    def solve(solver):
        return jax.jit(
            jax.vmap(lambda t, c, r: jfbjax.fixed_point(rotation, z0, t, c, r, solver=solver))
        )(thetas, centers, rhos)

    z_best, info_best = solve(best)
    z_last, info_last = solve(plain)
    np.testing.assert_array_equal(info_best.iterations, info_last.iterations)
    np.testing.assert_array_equal(info_best.status, info_last.status)
    np.testing.assert_array_equal(info_best.status, [1, 1, 1, 0])
    for i in range(3):
        args = (thetas[i], centers[i], rhos[i])
        lowest, last = best_of_trace(rotation, z0, args, plain)
        assert lowest < 0.95 * last  # the last iterate is not the best one here
        np.testing.assert_allclose(info_best.residual[i], lowest, rtol=1e-12)
        np.testing.assert_allclose(info_last.residual[i], last, rtol=1e-12)
        # info.residual is the residual of the point returned
        own = relative_residual(z_best[i], rotation(z_best[i], *args))
        np.testing.assert_allclose(own, info_best.residual[i], rtol=1e-12)
        # and the batched solve equals the unbatched one
        z1, info1 = jfbjax.fixed_point(rotation, z0, *args, solver=best)
        np.testing.assert_allclose(z_best[i], z1, rtol=1e-12)
        np.testing.assert_allclose(info_best.residual[i], info1.residual, rtol=1e-12)
    # the converged sample is returned as without the option
    np.testing.assert_array_equal(z_best[3], z_last[3])
    np.testing.assert_array_equal(info_best.residual[3], info_last.residual[3])


def test_best_iterate_anderson_that_does_not_converge(x64):
    n = 8
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float64))
    b = jax.random.normal(jax.random.PRNGKey(1), (n,), jnp.float64)
    f = lambda z, s: s * jnp.sin(q @ z) + b  # expansive: Anderson wanders
    plain = jfbjax.Anderson(m=5, tol=1e-10, max_iter=30)
    best = jfbjax.Anderson(m=5, tol=1e-10, max_iter=30, best_iterate=True)
    z, info = jfbjax.fixed_point(f, jnp.zeros(n), 3.0, solver=best)
    _, info_last = jfbjax.fixed_point(f, jnp.zeros(n), 3.0, solver=plain)
    lowest, last = best_of_trace(f, jnp.zeros(n), (3.0,), plain)
    assert int(info.status) == jfbjax.MAX_ITER and int(info.iterations) == 30
    assert lowest < 0.5 * last
    np.testing.assert_allclose(info.residual, lowest, rtol=1e-12)
    np.testing.assert_allclose(info_last.residual, last, rtol=1e-12)
    np.testing.assert_allclose(relative_residual(z, f(z, 3.0)), lowest, rtol=1e-12)


@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_best_iterate_leaves_converged_solves_unchanged(x64, solver):
    params, x, _ = tanh_problem()
    make = jfbjax.Picard if solver == "picard" else jfbjax.Anderson
    plain, best = make(tol=1e-10, max_iter=500), make(tol=1e-10, max_iter=500, best_iterate=True)
    z1, i1 = jfbjax.fixed_point(tanh_layer, jnp.zeros(6), params, x, solver=plain)
    z2, i2 = jfbjax.fixed_point(tanh_layer, jnp.zeros(6), params, x, solver=best)
    assert int(i1.status) == jfbjax.CONVERGED
    # The same iterates: equal to rounding (two separately compiled programs may fuse
    # differently, e.g. at XLA's optimisation level 0, and differ in the last ulp).
    np.testing.assert_allclose(z1, z2, rtol=1e-14, atol=1e-15)
    assert int(i1.iterations) == int(i2.iterations) and int(i1.status) == int(i2.status)
    np.testing.assert_allclose(i1.residual, i2.residual, rtol=1e-5)  # a residual near 1e-10


def test_best_iterate_keeps_the_last_finite_iterate_before_a_blow_up(x64):
    """exp diverges: residuals 1, 0.63, 0.82, ~1, then inf/inf. The best finite
    iterate (z_1 = 1) is returned; the status still says NONFINITE. A sample that
    is not finite from the start returns its iterate as without the option."""
    f = lambda z, b: jnp.exp(z) + b
    best = jfbjax.Picard(tol=1e-8, max_iter=50, best_iterate=True)
    z, info = jax.vmap(lambda b: jfbjax.fixed_point(f, jnp.zeros(1), b, solver=best))(
        jnp.array([0.0, jnp.nan])
    )
    np.testing.assert_array_equal(info.status, [jfbjax.NONFINITE, jfbjax.NONFINITE])
    np.testing.assert_allclose(z[0], [1.0], rtol=1e-15)
    np.testing.assert_allclose(info.residual[0], (np.e - 1) / (np.e + 1e-8), rtol=1e-12)
    assert np.isnan(info.residual[1])
    _, info_plain = jfbjax.fixed_point(f, jnp.zeros(1), jnp.nan, solver=best)
    assert np.isnan(info_plain.residual)


def test_best_iterate_gradients(x64):
    """Unrolled backpropagates through the selected iterate; JFB is linearised at it."""
    theta, center = 2.0, jnp.array([3.0, 0.5])
    z0 = jnp.zeros(2)
    plain = jfbjax.Picard(tol=1e-8, max_iter=25)
    _, trace = jfbjax.residual_trace(rotation, z0, theta, center, 1.0, solver=plain)
    j = int(jnp.argmin(trace)) + 1  # trace[i] is the residual of z_{i+1}
    assert j < 25

    def loss(center, solver, backward):
        z, _ = jfbjax.fixed_point(
            rotation, z0, theta, center, 1.0, solver=solver, backward=backward
        )
        return jnp.sum(jnp.sin(z))

    best = jfbjax.Picard(tol=1e-8, max_iter=25, best_iterate=True)
    g_best = jax.grad(loss)(center, best, jfbjax.Unrolled())
    g_ref = jax.grad(loss)(center, jfbjax.Picard(tol=0.0, max_iter=j), jfbjax.Unrolled())
    np.testing.assert_allclose(g_best, g_ref, rtol=1e-12, atol=1e-14)

    z_best, _ = jfbjax.fixed_point(rotation, z0, theta, center, 1.0, solver=best)
    _, vjp = jax.vjp(lambda c: rotation(z_best, theta, c, 1.0), center)
    g_jfb = jax.grad(loss)(center, best, jfbjax.JFB())
    np.testing.assert_allclose(g_jfb, vjp(jnp.cos(z_best))[0], rtol=1e-12)


def test_best_iterate_flag_is_validated():
    for make in (jfbjax.Picard, jfbjax.Anderson):
        assert make() == make(best_iterate=False)
        with pytest.raises(ValueError, match="best_iterate must be True or False"):
            make(best_iterate=1)


# ---------------------------------------------------------------- aux


def affine_with_aux(z, w, b, theta, c):
    """z <- W z + b, with aux = {"s": c.z + sum(theta) + b.b, "n": an integer}."""
    aux = {"s": c @ z + jnp.sum(theta) + b @ b, "n": jnp.int32(3)}
    return w @ z + b, aux


AUX_MODES = {
    "jfb": (jfbjax.JFB(), "jfb"),
    "ift": (IFT_TIGHT, "ift"),
    "ift_gmres": (jfbjax.IFT("gmres", tol=1e-13, max_iter=50), "ift"),
    "neumann": (jfbjax.Neumann(3), ("neumann", 3, 1.0)),
    "phantom": (jfbjax.Phantom(3, 0.5), ("phantom", 3, 0.5)),
    "unrolled": (jfbjax.Unrolled(), "ift"),
}


@pytest.mark.parametrize("mode", list(AUX_MODES))
def test_aux_gradients_closed_form(x64, mode):
    backward, closed = AUX_MODES[mode]
    w, b, c = affine_problem()
    d = jax.random.normal(jax.random.PRNGKey(5), (7,), jnp.float64)
    theta = jnp.array([0.3, -1.2, 2.0])

    def loss(w, b, theta):
        z, aux, info = jfbjax.fixed_point(
            affine_with_aux,
            jnp.zeros(7),
            w,
            b,
            theta,
            c,
            solver=TIGHT,
            backward=backward,
            has_aux=True,
        )
        return d @ z + aux["s"], (z, aux, info)

    (value, (z, aux, info)), (gw, gb, gt) = jax.value_and_grad(
        loss, argnums=(0, 1, 2), has_aux=True
    )(w, b, theta)
    z_star = jnp.linalg.solve(jnp.eye(7) - w, b)
    assert int(info.status) == jfbjax.CONVERGED
    np.testing.assert_allclose(z, z_star, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(aux["s"], c @ z_star + jnp.sum(theta) + b @ b, rtol=1e-11)
    assert aux["n"] == 3 and aux["n"].dtype == jnp.int32
    np.testing.assert_allclose(value, d @ z_star + aux["s"], rtol=1e-11)
    # the cotangent of z* is d (from the loss) + c (from aux through z*)
    u = adjoint_closed_form(w, d + c, closed)
    np.testing.assert_allclose(gb, u + 2 * b, rtol=1e-9, atol=1e-10)  # through z* + direct
    np.testing.assert_allclose(gw, jnp.outer(u, z_star), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gt, jnp.ones(3), rtol=1e-12)  # direct only


def test_aux_ift_gradient_matches_finite_differences_on_a_nonlinear_map(x64):
    params, x, target = tanh_problem()

    def f(z, params, x):
        return tanh_layer(z, params, x), jnp.sum(jnp.sin(z) * params["b"]) + jnp.sum(x**2)

    def loss(params, x):
        z, aux, _ = jfbjax.fixed_point(
            f, jnp.zeros(6), params, x, solver=TIGHT, backward=IFT_TIGHT, has_aux=True
        )
        return 0.5 * jnp.sum((z - target) ** 2) + aux

    loss = jax.jit(loss)
    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
    assert_trees_close(
        g_params, central_differences(lambda p: loss(p, x), params), rtol=1e-6, atol=1e-8
    )
    np.testing.assert_allclose(
        g_x, central_differences(lambda x: loss(params, x), x), rtol=1e-6, atol=1e-8
    )


def test_aux_under_vmap_and_closures(x64):
    """aux is per sample under vmap, equals f's second output at z*, and reaches
    parameters that f only closes over."""
    params, _, _ = tanh_problem()
    xs = jax.random.normal(jax.random.PRNGKey(3), (4, 3), jnp.float64)

    def explicit(p, x):
        f = lambda z, p, x: (tanh_layer(z, p, x), {"mean": jnp.mean(z), "x": x * p["b"][0]})
        return jfbjax.fixed_point(f, jnp.zeros(6), p, x, backward="ift", has_aux=True)

    def closed(p, x):
        f = lambda z: (tanh_layer(z, p, x), {"mean": jnp.mean(z), "x": x * p["b"][0]})
        return jfbjax.fixed_point(f, jnp.zeros(6), backward="ift", has_aux=True)

    z, aux, info = jax.jit(jax.vmap(explicit, (None, 0)))(params, xs)
    assert aux["mean"].shape == (4,) and aux["x"].shape == (4, 3)
    np.testing.assert_allclose(aux["mean"], jnp.mean(z, axis=1), rtol=1e-12)
    np.testing.assert_allclose(aux["x"], xs * params["b"][0], rtol=1e-12)
    assert info.iterations.shape == (4,)

    def total(solve):
        def loss(p):
            z, aux, _ = jax.vmap(solve, (None, 0))(p, xs)
            return jnp.sum(z**2) + jnp.sum(aux["mean"]) + jnp.sum(aux["x"])

        return jax.jit(jax.grad(loss))(params)

    assert_trees_close(total(explicit), total(closed), rtol=1e-10, atol=1e-12)


def test_aux_with_best_iterate_is_evaluated_at_the_returned_point(x64):
    f = lambda z, t, c: (rotation(z, t, c, 1.0), z)  # aux: the point f was evaluated at
    best = jfbjax.Picard(tol=1e-8, max_iter=25, best_iterate=True)
    z, aux, info = jfbjax.fixed_point(
        f, jnp.zeros(2), 2.0, jnp.array([3.0, 0.5]), solver=best, has_aux=True
    )
    np.testing.assert_array_equal(aux, z)
    assert int(info.status) == jfbjax.MAX_ITER


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda z, a: a * z, "must return a pair"),
        (lambda z, a: (a * z, z, z), "must return a pair"),
        (lambda z, a: (jnp.zeros(4), z), r"float32\[4\]"),
    ],
)
@pytest.mark.parametrize("backward", ["jfb", "unrolled"])
def test_aux_wrong_output_fails_at_trace_time(bad, message, backward):
    with pytest.raises(TypeError, match=message):
        jax.jit(
            lambda z: jfbjax.fixed_point(bad, z, 0.5, backward=backward, has_aux=True)[0]
        ).trace(jnp.zeros(3))
