"""The limited-memory Broyden solver: fixed points, speed, safeguards, gradients (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jfbjax
from jfbjax.solvers import Broyden, BroydenState, iterate, relative_residual
from tests.core.problems import affine, affine_problem

TIGHT = {
    "picard": jfbjax.Picard(tol=1e-12, max_iter=3000),
    "anderson": jfbjax.Anderson(m=6, tol=1e-12, max_iter=500),
    "broyden": jfbjax.Broyden(memory=20, tol=1e-12, max_iter=500),
}


def symmetric(n, eigs, seed=0):
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(seed), (n, n)))
    return (q * eigs) @ q.T


def tanh_layer(z, w, b):
    return jnp.tanh(w @ z + b)


@pytest.mark.parametrize("fn", ["affine", "tanh"])
def test_same_fixed_point_as_picard_and_anderson(x64, fn):
    w, b, _ = affine_problem(norm=0.9)
    f = {"affine": affine, "tanh": tanh_layer}[fn]
    z0 = jnp.zeros(7)
    solutions = {}
    for name, solver in TIGHT.items():
        z, info = jfbjax.fixed_point(f, z0, w, b, solver=solver)
        assert int(info.status) == jfbjax.CONVERGED, name
        assert float(relative_residual(z, f(z, w, b))) <= 1e-12
        solutions[name] = z
    for name in ("picard", "anderson"):
        np.testing.assert_allclose(solutions["broyden"], solutions[name], rtol=1e-10, atol=1e-11)
    if fn == "affine":
        exact = jnp.linalg.solve(jnp.eye(7) - w, b)
        np.testing.assert_allclose(solutions["broyden"], exact, rtol=1e-10, atol=1e-11)


def test_fewer_iterations_than_picard_on_a_slowly_contracting_map(x64):
    n = 30
    w = symmetric(n, jnp.linspace(-0.5, 0.99, n))  # Picard contracts at 0.99 per step
    b = jax.random.normal(jax.random.PRNGKey(1), (n,), jnp.float64)
    counts = {}
    for name, f in (("affine", affine), ("tanh", tanh_layer)):
        for solver in (
            jfbjax.Picard(tol=1e-10, max_iter=5000),
            jfbjax.Broyden(memory=60, tol=1e-10, max_iter=500),
            jfbjax.Broyden(memory=10, tol=1e-10, max_iter=500),
        ):
            _, info = jfbjax.fixed_point(f, jnp.zeros(n), w, b, solver=solver)
            assert int(info.status) == jfbjax.CONVERGED
            counts[name, type(solver).__name__, getattr(solver, "memory", 0)] = int(info.iterations)
    picard = counts["affine", "Picard", 0]
    assert picard > 1000
    # with memory >= 2n good Broyden is exact on an affine map after at most 2n updates (Gay)
    assert counts["affine", "Broyden", 60] <= 2 * n
    assert counts["affine", "Broyden", 10] < picard / 10  # restarts cost, but far less
    assert counts["tanh", "Broyden", 60] < counts["tanh", "Picard", 0] / 2
    assert counts["tanh", "Broyden", 10] < counts["tanh", "Picard", 0]


def test_per_sample_stopping_under_vmap():
    n = 6
    w = jnp.asarray(symmetric(n, jnp.linspace(0.1, 0.9, n)), jnp.float32)
    bs = (
        jax.random.normal(jax.random.PRNGKey(2), (5, n))
        * jnp.array([0.0, 0.1, 1, 10, 100])[:, None]
    )
    solver = jfbjax.Broyden(memory=4, tol=1e-6, max_iter=100)
    solve = lambda b: jfbjax.fixed_point(tanh_layer, jnp.zeros(n), w, b, solver=solver)
    z, info = jax.jit(jax.vmap(solve))(bs)
    assert np.all(np.asarray(info.status) == jfbjax.CONVERGED)
    assert int(info.iterations[0]) == 0  # b = 0: z0 = 0 is the fixed point
    assert len(set(np.asarray(info.iterations).tolist())) > 1  # each sample its own count
    for i in range(5):
        zi, infoi = solve(bs[i])
        assert int(infoi.iterations) == int(info.iterations[i])
        np.testing.assert_allclose(z[i], zi, rtol=1e-5, atol=1e-6)


BACKWARDS = {
    "jfb": jfbjax.JFB(),
    "neumann": jfbjax.Neumann(4),
    "phantom": jfbjax.Phantom(3, 0.5),
    "ift_anderson": jfbjax.IFT(tol=1e-13, max_iter=300),
    "ift_broyden": jfbjax.IFT(jfbjax.Broyden(tol=1e-13, max_iter=300)),
    "ift_broyden_name": jfbjax.IFT("broyden", tol=1e-13, max_iter=300),
    "ift_gmres": jfbjax.IFT("gmres", tol=1e-13, restart=7, max_iter=5),
    "unrolled": jfbjax.Unrolled(),
}


def adjoint_closed_form(w, v, mode):
    n = w.shape[0]
    if isinstance(mode, jfbjax.IFT | jfbjax.Unrolled):
        return jnp.linalg.solve((jnp.eye(n) - w).T, v)
    if isinstance(mode, jfbjax.JFB):
        return v
    if isinstance(mode, jfbjax.Neumann):
        return sum(jnp.linalg.matrix_power(w.T, i) @ v for i in range(mode.k + 1))
    m = (1 - mode.lam) * jnp.eye(n) + mode.lam * w
    return mode.lam * sum(jnp.linalg.matrix_power(m.T, i) @ v for i in range(mode.k))


@pytest.mark.parametrize("name", list(BACKWARDS))
def test_every_backward_after_a_broyden_forward_matches_its_closed_form(x64, name):
    backward = BACKWARDS[name]
    w, b, c = affine_problem()
    solver = jfbjax.Broyden(memory=20, tol=1e-13, max_iter=200)

    def loss(w, b):
        z, _ = jfbjax.fixed_point(affine, jnp.zeros(7), w, b, solver=solver, backward=backward)
        return c @ z

    gw, gb = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, b)
    u = adjoint_closed_form(w, c, backward)
    z_star = jnp.linalg.solve(jnp.eye(7) - w, b)
    # Unrolled differentiates Broyden's iterations, which converge to the IFT gradient
    rtol = 1e-6 if name == "unrolled" else 1e-9
    np.testing.assert_allclose(gb, u, rtol=rtol, atol=1e-10)
    np.testing.assert_allclose(gw, jnp.outer(u, z_star), rtol=rtol, atol=1e-10)


def test_nonlinear_ift_gradient_after_broyden_matches_finite_differences(x64):
    w, b, c = affine_problem(norm=0.9)
    solver = jfbjax.Broyden(tol=1e-13, max_iter=200)
    backward = jfbjax.IFT("broyden", tol=1e-13, max_iter=200)

    def loss(b):
        z, _ = jfbjax.fixed_point(tanh_layer, jnp.zeros(7), w, b, solver=solver, backward=backward)
        return c @ z

    g = jax.grad(loss)(b)
    eps = 1e-6
    fd = jnp.array(
        [(loss(b + eps * e) - loss(b - eps * e)) / (2 * eps) for e in jnp.eye(7, dtype=b.dtype)]
    )
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_best_iterate(x64):
    """An expanding rotation (no contraction). With memory 1 Broyden does not
    converge in 4 updates and best_iterate returns the lowest-residual iterate (not
    the last), reporting its residual; with memory 3 it converges (an affine map in
    2 dimensions: at most 4 updates) and the last iterate is returned as without."""
    rot = jnp.array([[0.0, -1.0], [1.0, 0.0]]) * 1.02
    f = lambda z: rot @ z + jnp.array([1.0, 0.0])
    for memory in (1, 3):
        plain = jfbjax.Broyden(memory=memory, tol=1e-14, max_iter=4)
        best = jfbjax.Broyden(memory=memory, tol=1e-14, max_iter=4, best_iterate=True)
        z_last, info_last = jfbjax.fixed_point(f, jnp.zeros(2), solver=plain)
        z_best, info_best = jfbjax.fixed_point(f, jnp.zeros(2), solver=best)
        _, trace = jfbjax.residual_trace(f, jnp.zeros(2), solver=plain)
        r0 = float(relative_residual(jnp.zeros(2), f(jnp.zeros(2))))
        lowest = min([r0, *np.asarray(trace).tolist()])
        assert int(info_best.iterations) == int(info_last.iterations)
        assert int(info_last.status) == (jfbjax.MAX_ITER if memory == 1 else jfbjax.CONVERGED)
        if memory == 3:
            np.testing.assert_array_equal(z_best, z_last)
        else:
            np.testing.assert_allclose(float(info_best.residual), lowest, rtol=1e-12)
            assert lowest < float(info_last.residual)
            np.testing.assert_allclose(
                float(relative_residual(z_best, f(z_best))), lowest, rtol=1e-10
            )


# ------------------------------------------------------------------ safeguards


def test_denominator_guard_skips_a_singular_update(x64):
    """f(z) = z + 1 has no fixed point and g = f(z) - z is constant: every secant
    pair has y = 0. The guard stores none, the steps stay plain and finite."""
    f = lambda z: z + 1.0
    solver = jfbjax.Broyden(memory=3, tol=1e-8, max_iter=10)
    z, info = jfbjax.fixed_point(f, jnp.zeros(4), solver=solver)
    assert int(info.status) == jfbjax.MAX_ITER
    np.testing.assert_allclose(z, jnp.full(4, 10.0))  # ten plain steps z <- f(z)
    state = solver.init(jnp.zeros(4), f(jnp.zeros(4)))
    for _ in range(3):
        z1 = solver.propose(state, state.z, None)
        state = solver.record(state, z1, f(z1))
        assert int(state.count) == 0
        assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(state.us))


def test_restart_when_the_memory_is_full(x64):
    w, b, _ = affine_problem(norm=0.9)
    f = lambda z: affine(z, w, b)
    solver = jfbjax.Broyden(memory=2, tol=0.0, max_iter=10)
    z = jnp.zeros(7)
    state = solver.init(z, f(z))
    counts, second_slot = [], []
    for _ in range(6):
        z = solver.propose(state, z, None)
        state = solver.record(state, z, f(z))
        counts.append(int(state.count))
        second_slot.append(float(jnp.max(jnp.abs(state.vs[1]))))
    assert counts == [1, 2, 1, 2, 1, 2]  # cleared before the third pair
    # a cleared memory really is empty: slot 1 holds zeros until it is written again
    assert [x > 0 for x in second_slot] == [False, True, False, True, False, True]
    r0 = float(relative_residual(jnp.zeros(7), f(jnp.zeros(7))))
    assert float(relative_residual(z, f(z))) < r0 / 10  # and the restarted method progresses


def test_restart_on_a_nonfinite_step():
    """A memory whose step -H g overflows float32 is cleared; the step is plain."""
    solver = jfbjax.Broyden(memory=2, tol=1e-6, max_iter=5)
    z = jnp.ones(3)
    huge = jnp.full((2, 3), 1e30, jnp.float32)
    state = BroydenState(huge, huge, z, jnp.full(3, 0.5), jnp.full(3, 0.5), jnp.int32(1))
    z1 = solver.propose(state, z, None)
    fz1 = 0.5 * z1
    new = solver.record(state, z1, fz1)
    assert int(new.count) == 0
    np.testing.assert_array_equal(new.dz, fz1 - z1)  # the plain step g = f(z) - z
    for leaf in jax.tree.leaves((new.us, new.vs)):
        np.testing.assert_array_equal(leaf, jnp.zeros_like(leaf))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_low_precision_iterates_keep_their_dtype(dtype):
    n = 5
    w = jnp.asarray(symmetric(n, jnp.linspace(0.1, 0.8, n)), dtype)
    b = jnp.linspace(-1.0, 1.0, n).astype(dtype)
    solver = jfbjax.Broyden(tol=1e-2 if dtype == jnp.bfloat16 else 1e-5, max_iter=50)
    z, info = jfbjax.fixed_point(tanh_layer, jnp.zeros(n, dtype), w, b, solver=solver)
    assert z.dtype == dtype
    assert int(info.status) == jfbjax.CONVERGED
    state = solver.init(z, tanh_layer(z, w, b))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((state.us, state.g)))
    g = jax.grad(lambda b: jnp.sum(jfbjax.fixed_point(tanh_layer, z, w, b, solver=solver)[0]))(b)
    assert g.dtype == dtype and bool(jnp.all(jnp.isfinite(g)))


def test_pytree_state():
    def f(state, a):
        x, y = state["x"], state["y"]
        return {"x": jnp.tanh(0.5 * y.sum() + 0.2 * x + a), "y": 0.4 * jnp.cos(x[:2])}

    z0 = {"x": jnp.zeros(3), "y": jnp.zeros(2)}
    z, info = jfbjax.fixed_point(f, z0, jnp.float32(0.3), solver=jfbjax.Broyden(tol=1e-6))
    assert int(info.status) == jfbjax.CONVERGED
    fz = f(z, 0.3)
    for k in z:
        np.testing.assert_allclose(fz[k], z[k], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"memory": 0}, "memory must be an integer >= 1"),
        ({"memory": 2.0}, "memory must be an integer >= 1"),
        ({"guard": 1.0}, r"guard must be a number in \[0, 1\)"),
        ({"guard": -1e-3}, r"guard must be a number in \[0, 1\)"),
        ({"tol": -1.0}, "tol must be"),
        ({"max_iter": 0}, "max_iter must be"),
        ({"best_iterate": 1}, "best_iterate must be True or False"),
    ],
)
def test_configuration_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Broyden(**kwargs)


def test_names_and_hashing():
    assert jfbjax.as_solver("broyden") == Broyden()
    assert jfbjax.as_solver("Broyden") == Broyden()
    assert hash(Broyden(memory=4)) == hash(Broyden(memory=4))
    assert jfbjax.IFT("broyden")._fixed_point_solver() == Broyden(tol=1e-5, max_iter=100)
    with pytest.raises(ValueError, match="Broyden"):
        jfbjax.as_solver("newton")
    # it is the solver iterate() runs, like Picard and Anderson
    z, _ = iterate(Broyden(tol=1e-8), lambda z: 0.5 * z + 1.0, jnp.zeros(2))
    np.testing.assert_allclose(z, jnp.full(2, 2.0), rtol=1e-6)
