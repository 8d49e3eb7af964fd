"""fixed_point under JAX transformations, per-sample semantics, failures and dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jfbjax

SOLVERS = [
    jfbjax.Picard(tol=1e-6, max_iter=500),
    jfbjax.Anderson(tol=1e-6, max_iter=200),
]
SOLVER_IDS = ["picard", "anderson"]


def layer(z, params, x):
    return jnp.tanh(params["w"] @ z + x * params["s"]) * 0.5 + 0.1 * z


def problem(n=5, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w = jax.random.normal(k1, (n, n))
    params = {"w": w / jnp.linalg.norm(w, 2), "s": jnp.float32(0.7)}
    x = jax.random.normal(k2, (n,))
    return params, x


# --------------------------------------------------------------- transforms


@pytest.mark.parametrize("solver", SOLVERS, ids=SOLVER_IDS)
@pytest.mark.parametrize("backward", ["jfb", "ift", "neumann", "unrolled"])
def test_jit_grad_value_and_grad_agree(solver, backward):
    params, x = problem()

    def loss(params, x):
        z, info = jfbjax.fixed_point(
            layer, jnp.zeros(5), params, x, solver=solver, backward=backward
        )
        return jnp.sum(z**2), info

    (v1, info), g1 = jax.value_and_grad(loss, has_aux=True)(params, x)
    (v2, _), g2 = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, x)
    g3 = jax.jit(jax.grad(lambda p, x: loss(p, x)[0]))(params, x)
    assert int(info.status) == jfbjax.CONVERGED
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    for a, b, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), jax.tree.leaves(g3), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, c, rtol=1e-6, atol=1e-7)
        assert np.all(np.isfinite(a)) and np.any(a != 0)


def test_pytree_state_and_args():
    """A state that is a dict of differently shaped arrays and args that are nested pytrees."""

    def f(state, p, extra):
        a, b = state["a"], state["b"]
        return {
            "a": jnp.tanh(p["m"] @ a + 0.3 * b.sum() + extra[0]),
            "b": 0.5 * jnp.sin(b) + 0.2 * a.mean() + extra[1],
        }

    z0 = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    p = {"m": 0.3 * jnp.eye(3)}
    extra = (jnp.float32(0.1), jnp.ones((2, 2)) * 0.2)
    for solver in SOLVERS:
        z, _info = jfbjax.fixed_point(f, z0, p, extra, solver=solver)
        fz = f(z, p, extra)
        for k in z:
            np.testing.assert_allclose(z[k], fz[k], atol=1e-5)
        grads = jax.grad(
            lambda p, e: sum(
                jnp.sum(leaf)
                for leaf in jax.tree.leaves(jfbjax.fixed_point(f, z0, p, e, backward="ift")[0])
            ),
            argnums=(0, 1),
        )(p, extra)
        assert jax.tree.structure(grads) == jax.tree.structure((p, extra))


def test_no_retrace_on_new_values():
    traces = []
    params, x = problem()

    @jax.jit
    def solve(params, x):
        traces.append(1)
        return jfbjax.fixed_point(layer, jnp.zeros(5), params, x)

    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(solve(p, x)[0])))
    counts = []
    for seed in range(3):
        params, x = problem(seed=seed)
        solve(params, x)
        grad(params, x)
        counts.append(len(traces))
    assert counts[0] >= 1 and counts[1] == counts[2] == counts[0]


def test_inside_lax_scan():
    """A recurrent use: each scan step solves a fixed point seeded by the carry."""
    params, _ = problem()
    xs = jax.random.normal(jax.random.PRNGKey(3), (4, 5))

    def run(params):
        def body(carry, x):
            z, info = jfbjax.fixed_point(layer, carry, params, x + carry, backward="ift")
            return z, info.iterations

        z, iters = jax.lax.scan(body, jnp.zeros(5), xs)
        return jnp.sum(z**2), iters

    (_val, iters), grad = jax.jit(jax.value_and_grad(run, has_aux=True))(params)
    assert iters.shape == (4,) and np.all(iters > 0)
    eps = 1e-3
    d = jax.tree.map(lambda p: jnp.ones_like(p) * eps, params)
    plus = run(jax.tree.map(jnp.add, params, d))[0]
    minus = run(jax.tree.map(jnp.subtract, params, d))[0]
    directional = sum(jnp.sum(g) * eps for g in jax.tree.leaves(grad))
    np.testing.assert_allclose((plus - minus) / 2, directional, rtol=2e-2)


# ------------------------------------------------------------ per sample


@pytest.mark.parametrize("solver", SOLVERS, ids=SOLVER_IDS)
def test_vmap_is_per_sample(solver):
    """Each sample has its own iteration count, residual and status, and equals
    the unbatched solve (a converged sample stops changing)."""
    rates = jnp.array([0.1, 0.5, 0.8, 0.9])
    b = jnp.array([[1.0, -2.0, 0.5]] * 4)

    def f(z, rate, b):
        return rate * z + 0.1 * jnp.sin(z[::-1]) + b

    zs, info = jax.vmap(lambda r, b: jfbjax.fixed_point(f, jnp.zeros(3), r, b, solver=solver))(
        rates, b
    )
    assert info.iterations.shape == (4,)
    # the fast samples stopped (and froze) long before the slow one
    assert int(info.iterations[0]) < int(info.iterations[3])
    for i in range(4):
        z1, info1 = jfbjax.fixed_point(f, jnp.zeros(3), rates[i], b[i], solver=solver)
        # batched and unbatched kernels round differently: allow one step either way,
        # and the two points may differ by what the tolerance allows: each is within
        # tol ||f(z)|| / (1 - L) of z*, L = rate + 0.1 the map's Lipschitz constant
        assert abs(int(info.iterations[i]) - int(info1.iterations)) <= 1
        bound = 2 * solver.tol * float(jnp.linalg.norm(z1)) / (1 - float(rates[i]) - 0.1)
        assert float(jnp.linalg.norm(zs[i] - z1)) <= bound + 1e-6
        assert float(info.residual[i]) <= solver.tol
    assert np.all(np.asarray(info.status) == jfbjax.CONVERGED)


def test_vmap_gradients_equal_per_sample_sum():
    params, _ = problem()
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 5))

    def loss(p, x):
        return jnp.sum(jfbjax.fixed_point(layer, jnp.zeros(5), p, x, backward="ift")[0] ** 2)

    g_batch = jax.grad(lambda p: jnp.sum(jax.vmap(loss, (None, 0))(p, xs)))(params)
    g_loop = jax.tree.map(lambda *g: sum(g), *[jax.grad(loss)(params, x) for x in xs])
    for a, b in zip(jax.tree.leaves(g_batch), jax.tree.leaves(g_loop), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_closure_over_traced_values_matches_explicit_args():
    params, x = problem()

    def explicit(p, x):
        return jnp.sum(jfbjax.fixed_point(layer, jnp.zeros(5), p, x, backward="ift")[0] ** 2)

    def closed(p, x):
        f = lambda z: layer(z, p, x)  # params and x captured by the closure
        return jnp.sum(jfbjax.fixed_point(lambda z: f(z), jnp.zeros(5), backward="ift")[0] ** 2)

    g1 = jax.jit(jax.grad(explicit, argnums=(0, 1)))(params, x)
    g2 = jax.jit(jax.grad(closed, argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # a value captured from an enclosing vmap (not differentiated) also works
    xs = jnp.stack([x, -x])
    g3 = jax.grad(lambda p: jnp.sum(jax.vmap(lambda x: closed(p, x))(xs)))(params)
    g4 = jax.grad(lambda p: jnp.sum(jax.vmap(lambda x: explicit(p, x))(xs)))(params)
    for a, b in zip(jax.tree.leaves(g3), jax.tree.leaves(g4), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("solver", SOLVERS, ids=SOLVER_IDS)
def test_nonfinite_sample_is_isolated(solver):
    b = jnp.array([[0.5, 0.1], [jnp.nan, 0.2], [0.3, jnp.inf], [0.0, 1.0]])

    def f(z, b):
        return 0.5 * jnp.cos(z) + b

    def loss(b):
        z, info = jax.vmap(lambda b: jfbjax.fixed_point(f, jnp.zeros(2), b, solver=solver))(b)
        return jnp.sum(jnp.where(jnp.isfinite(z), z, 0.0) ** 2), (z, info)

    (_, (z, info)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(b)
    np.testing.assert_array_equal(
        info.status, [jfbjax.CONVERGED, jfbjax.NONFINITE, jfbjax.NONFINITE, jfbjax.CONVERGED]
    )
    for i in (0, 3):
        z1, _ = jfbjax.fixed_point(f, jnp.zeros(2), b[i], solver=solver)
        np.testing.assert_allclose(z[i], z1, rtol=1e-6)
        assert np.all(np.isfinite(g[i]))
    assert int(jnp.max(info.iterations)) < solver.max_iter  # terminated early, not at the cap


def test_max_iter_status_and_throw():
    f = lambda z, a: a * jnp.sin(z) + 1.0  # slow: rate ~ 0.99
    solver = jfbjax.Picard(tol=1e-10, max_iter=5)
    _z, info = jfbjax.fixed_point(f, jnp.zeros(3), 0.99, solver=solver)
    assert int(info.status) == jfbjax.MAX_ITER and int(info.iterations) == 5
    assert jfbjax.status_name(info.status) == "MAX_ITER"

    run = jax.jit(lambda a: jfbjax.fixed_point(f, jnp.zeros(3), a, solver=solver, throw=True)[0])
    with pytest.raises(Exception, match="MAX_ITER"):
        jax.block_until_ready(run(0.99))
    # a converging solve with throw=True returns normally
    ok = jax.jit(
        lambda a: jfbjax.fixed_point(f, jnp.zeros(3), a, solver=jfbjax.Picard(), throw=True)[0]
    )
    assert np.all(np.isfinite(jax.block_until_ready(ok(0.1))))
    with pytest.raises(Exception, match="NONFINITE"):
        jax.block_until_ready(
            jfbjax.fixed_point(f, jnp.zeros(3), jnp.nan, solver=solver, throw=True)[0]
        )


def test_tol_zero_runs_exactly_max_iter():
    f = lambda z: 0.5 * z + 1.0
    for solver in (jfbjax.Picard(tol=0, max_iter=37), jfbjax.Anderson(tol=0, max_iter=37)):
        _, info = jfbjax.fixed_point(f, jnp.zeros(4), solver=solver)
        assert int(info.iterations) == 37


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda z, a: (z, z), "structure"),
        (lambda z, a: jnp.zeros(4), r"float32\[4\]"),
        (lambda z, a: z.astype(jnp.float16), "float16"),
    ],
)
def test_wrong_output_fails_at_trace_time(bad, message):
    with pytest.raises(TypeError, match=message) as err:
        jax.jit(lambda z: jfbjax.fixed_point(bad, z, 1.0)[0]).trace(jnp.zeros(3))
    assert "expected" in str(err.value) and "received" in str(err.value)


def test_integer_start_point_rejected():
    with pytest.raises(TypeError, match="floating"):
        jfbjax.fixed_point(lambda z: z, jnp.zeros(3, jnp.int32))


def test_configuration_objects():
    assert hash(jfbjax.Anderson()) == hash(jfbjax.Anderson())
    assert jfbjax.as_solver("anderson") == jfbjax.Anderson(m=5, beta=1.0, ridge=1e-4, tol=1e-4)
    assert jfbjax.as_solver("picard") == jfbjax.Picard(tol=1e-4, max_iter=50)
    assert jfbjax.as_backward("jfb") == jfbjax.JFB()
    assert jfbjax.as_backward("ift") == jfbjax.IFT()
    for make in (
        lambda: jfbjax.Picard(tol=-1.0),
        lambda: jfbjax.Picard(max_iter=0),
        lambda: jfbjax.Picard(damping=0.0),
        lambda: jfbjax.Anderson(m=0),
        lambda: jfbjax.Anderson(beta=1.5),
        lambda: jfbjax.Anderson(ridge=-1.0),
        lambda: jfbjax.Anderson(max_iter=2.5),
        lambda: jfbjax.Neumann(-1),
        lambda: jfbjax.IFT("cg"),
        lambda: jfbjax.as_solver("newton"),
        lambda: jfbjax.as_backward("adjoint"),
    ):
        with pytest.raises(ValueError):
            make()


# ------------------------------------------------------------ solver details


def test_residual_is_the_documented_formula():
    f = lambda z: {"a": 0.9 * z["a"] + 1.0, "b": 0.5 * z["b"]}
    z, info = jfbjax.fixed_point(f, {"a": jnp.zeros(3), "b": jnp.ones(2)}, solver="picard")
    fz = f(z)
    diff = jnp.sqrt(sum(jnp.sum((fz[k] - z[k]) ** 2) for k in z))
    norm = jnp.sqrt(sum(jnp.sum(fz[k] ** 2) for k in z))
    np.testing.assert_allclose(info.residual, diff / (norm + 1e-8), rtol=1e-5)


def test_anderson_beats_picard_on_slow_map(x64):
    n = 40
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float64))
    w = q @ jnp.diag(jnp.linspace(-0.95, 0.95, n)) @ q.T  # spectral radius 0.95
    b = jnp.ones(n)
    f = lambda z: w @ z + b
    zp, ip = jfbjax.fixed_point(f, jnp.zeros(n), solver=jfbjax.Picard(tol=1e-10, max_iter=2000))
    za, ia = jfbjax.fixed_point(
        f, jnp.zeros(n), solver=jfbjax.Anderson(m=5, tol=1e-10, max_iter=2000)
    )
    assert int(ip.status) == int(ia.status) == jfbjax.CONVERGED
    np.testing.assert_allclose(za, zp, atol=1e-8)
    assert int(ia.iterations) * 2 < int(ip.iterations)


def test_anderson_singular_gram_falls_back():
    """A scalar state makes every Gram matrix of >= 2 columns singular; with
    ridge=0 the solve must fall back to a plain step instead of NaN."""
    f = lambda z: 0.5 * z + 1.0
    z, info = jfbjax.fixed_point(
        f, jnp.zeros(()), solver=jfbjax.Anderson(m=5, ridge=0.0, tol=1e-6, max_iter=100)
    )
    assert int(info.status) == jfbjax.CONVERGED
    np.testing.assert_allclose(z, 2.0, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
def test_iterate_dtypes(dtype, x64):
    params, x = problem()
    p = jax.tree.map(lambda a: a.astype(dtype), params)
    x = x.astype(dtype)
    z, info = jfbjax.fixed_point(layer, jnp.zeros(5, dtype), p, x, solver=jfbjax.Anderson(tol=1e-2))
    assert z.dtype == dtype
    assert info.residual.dtype == jnp.promote_types(dtype, jnp.float32)
    assert int(info.status) == jfbjax.CONVERGED
    g = jax.grad(lambda p: jnp.sum(jfbjax.fixed_point(layer, jnp.zeros(5, dtype), p, x)[0]))(p)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(g))


def test_backward_callback_reports_adjoint_solve():
    params, x = problem()
    seen = []

    def loss(p, backward):
        z, _ = jfbjax.fixed_point(
            layer, jnp.zeros(5), p, x, backward=backward, backward_callback=seen.append
        )
        return jnp.sum(z**2)

    jax.block_until_ready(jax.grad(loss)(params, jfbjax.IFT(tol=1e-6)))
    jax.block_until_ready(jax.grad(loss)(params, jfbjax.Neumann(3)))
    jax.effects_barrier()
    assert len(seen) == 2
    ift, neumann = seen
    assert int(ift.status) == jfbjax.CONVERGED and int(ift.iterations) > 0
    assert float(ift.residual) <= 1e-6
    assert int(neumann.iterations) == 3 and float(neumann.residual) > float(ift.residual)
    seen.clear()
    jax.block_until_ready(
        jax.grad(lambda p: jnp.sum(jfbjax.fixed_point(layer, x, p, x)[0]))(params)
    )
    jax.effects_barrier()
    assert seen == []  # off by default


def test_residual_trace():
    n = 20
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (n, n)))
    w = q @ jnp.diag(jnp.linspace(0.0, 0.9, n)) @ q.T
    f = lambda z: w @ z + 1.0
    picard, anderson = (
        jfbjax.Picard(tol=1e-5, max_iter=150),
        jfbjax.Anderson(tol=1e-5, max_iter=150),
    )
    _, res_p = jfbjax.residual_trace(f, jnp.zeros(n), solver=picard)
    _, res_a = jfbjax.residual_trace(f, jnp.zeros(n), solver=anderson)
    assert res_p.shape == res_a.shape == (150,)
    stop_p = int(np.argmax(np.asarray(res_p) <= 1e-5))
    stop_a = int(np.argmax(np.asarray(res_a) <= 1e-5))
    assert 0 < stop_a < stop_p
    # after stopping, the trace repeats the final residual reported by fixed_point
    _, info = jfbjax.fixed_point(f, jnp.zeros(n), solver=picard)
    assert int(info.iterations) == stop_p + 1
    np.testing.assert_allclose(res_p[stop_p:], info.residual, rtol=1e-5)


def test_contraction_estimate_of_linear_map(x64):
    w = jnp.diag(jnp.array([0.2, -0.7, 0.5]))
    est = jfbjax.contraction_estimate(lambda z, w: w @ z, jnp.ones(3), w, iters=50)
    np.testing.assert_allclose(est, 0.7, rtol=1e-6)


def test_spectral_radius_estimate_of_non_normal_and_signed_maps(x64):
    """A non-normal map whose norm is far above its spectral radius (0.9), a
    dominant +-0.8 pair, and a pytree input (two leaves, one block each)."""
    non_normal = jnp.array([[0.5, 10.0, 0.0], [0.0, -0.9, 1.0], [0.0, 0.0, 0.3]])
    linear = lambda z, w: w @ z
    rho = jfbjax.spectral_radius_estimate(linear, jnp.ones(3), non_normal, iters=300)
    np.testing.assert_allclose(rho, 0.9, rtol=1e-6)
    assert jfbjax.contraction_estimate(linear, jnp.ones(3), non_normal, iters=50) > 10
    pair = jnp.diag(jnp.array([0.8, -0.8, 0.1]))
    np.testing.assert_allclose(
        jfbjax.spectral_radius_estimate(linear, jnp.ones(3), pair, iters=50), 0.8, rtol=1e-6
    )
    tree = {"a": jnp.ones(3), "b": jnp.ones(2)}
    f = lambda z: {"a": non_normal @ z["a"], "b": jnp.array([[0.2, 0.0], [0.0, 0.95]]) @ z["b"]}
    np.testing.assert_allclose(jfbjax.spectral_radius_estimate(f, tree, iters=400), 0.95, rtol=1e-6)
