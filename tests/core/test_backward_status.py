"""The backward is never silently wrong: probe, IFT(throw=True), IFT(fallback=...) (float64).

The map is affine, ``f(z) = W z + b`` with ``W`` symmetric and its eigenvalues
in [0.5, 0.99] (``||W|| = 0.99``), so the adjoint ``u = c + W^T u`` of the
loss ``c . z*`` has a closed form for every mode and a Picard adjoint solve
with a tiny ``max_iter`` fails.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jfbjax

N = 7
FORWARD = jfbjax.Anderson(m=N, tol=1e-13, max_iter=200)  # exact on an affine map in N dims
FAILING = jfbjax.IFT("picard", tol=1e-10, max_iter=5)
GOOD = jfbjax.IFT(jfbjax.Anderson(m=N, tol=1e-12, max_iter=300))


def problem(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    q, _ = jnp.linalg.qr(jax.random.normal(k1, (N, N), jnp.float64))
    eigs = jnp.linspace(0.5, 0.99, N)
    w = (q * eigs) @ q.T
    b = jax.random.normal(k2, (N,), jnp.float64)
    c = jax.random.normal(k3, (N,), jnp.float64)
    return w, b, c, q


def affine(z, w, b):
    return w @ z + b


def closed_form(w, v, mode):
    """The adjoint vector u of a backward mode for the affine map and cotangent v."""
    eye = jnp.eye(w.shape[0])
    if isinstance(mode, jfbjax.IFT):
        return jnp.linalg.solve((eye - w).T, v)
    if isinstance(mode, jfbjax.JFB):
        return v
    if isinstance(mode, jfbjax.Neumann):
        return sum(jnp.linalg.matrix_power(w.T, i) @ v for i in range(mode.k + 1))
    m = (1 - mode.lam) * eye + mode.lam * w
    return mode.lam * sum(jnp.linalg.matrix_power(m.T, i) @ v for i in range(mode.k))


def adjoint_residual(w, v, u):
    gu = v + w.T @ u
    return float(jnp.linalg.norm(gu - u) / (jnp.linalg.norm(gu) + 1e-8))


def loss(w, b, c, probe, backward):
    z, _ = jfbjax.fixed_point(
        affine, jnp.zeros(N), w, b, solver=FORWARD, backward=backward, probe=probe
    )
    return c @ z


grad_with_probe = jax.jit(jax.grad(loss, argnums=(0, 1, 3)), static_argnums=4)


def grads(w, b, c, backward):
    """(dl/dw, dl/db, BackwardInfo) under jit."""
    gw, gb, gp = grad_with_probe(w, b, c, jfbjax.backward_probe(dtype=jnp.float64), backward)
    return gw, gb, jfbjax.backward_info(gp)


def assert_gradient_is(gw, gb, w, b, u):
    z_star = jnp.linalg.solve(jnp.eye(N) - w, b)
    np.testing.assert_allclose(gb, u, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gw, jnp.outer(u, z_star), rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------ probe

MODES = {
    "ift_failing": (FAILING, jfbjax.MAX_ITER, 5),
    "ift_good": (GOOD, jfbjax.CONVERGED, None),
    "ift_broyden": (jfbjax.IFT(jfbjax.Broyden(tol=1e-12, max_iter=100)), jfbjax.CONVERGED, None),
    "ift_gmres": (jfbjax.IFT("gmres", tol=1e-12, restart=N, max_iter=3), jfbjax.CONVERGED, -1),
    "ift_gmres_givens": (
        jfbjax.IFT("gmres", tol=1e-12, restart=N, max_iter=3, gmres_method="incremental"),
        jfbjax.CONVERGED,
        -1,
    ),
    "jfb": (jfbjax.JFB(), jfbjax.MAX_ITER, 0),
    "neumann": (jfbjax.Neumann(3), jfbjax.MAX_ITER, 3),
    "phantom": (jfbjax.Phantom(3, 0.5), jfbjax.MAX_ITER, 2),
}


@pytest.mark.parametrize("name", list(MODES))
def test_probe_reports_the_adjoint_without_a_callback(x64, name):
    backward, status, iterations = MODES[name]
    w, b, c, _ = problem()
    gw, gb, binfo = grads(w, b, c, backward)
    assert int(binfo.solves) == 1
    assert int(binfo.status) == status
    counts = {
        jfbjax.CONVERGED: binfo.converged,
        jfbjax.MAX_ITER: binfo.max_iter,
        jfbjax.NONFINITE: binfo.nonfinite,
        jfbjax.FALLBACK: binfo.fallback,
    }
    assert {k: int(v) for k, v in counts.items()} == {k: int(k == status) for k in counts}
    if iterations is not None:
        assert int(binfo.iterations) == iterations
    else:
        assert 0 < int(binfo.iterations) < backward.solver.max_iter
    # the probe changes nothing else: same gradient as without it
    plain = jax.grad(loss, argnums=(0, 1))(w, b, c, None, backward)
    np.testing.assert_allclose(gw, plain[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gb, plain[1], rtol=1e-12, atol=1e-14)
    if name == "ift_failing":  # the truncated adjoint is far from the tolerance...
        assert float(binfo.residual) > 1e-3
        with pytest.raises(AssertionError):  # ...and its gradient is wrong
            assert_gradient_is(gw, gb, w, b, closed_form(w, c, GOOD))
    elif status == jfbjax.CONVERGED:
        assert float(binfo.residual) <= 1e-12
        assert_gradient_is(gw, gb, w, b, closed_form(w, c, GOOD))
    else:  # JFB, Neumann, Phantom: the residual of their own adjoint
        u = closed_form(w, c, backward)
        assert_gradient_is(gw, gb, w, b, u)
        np.testing.assert_allclose(float(binfo.residual), adjoint_residual(w, c, u), rtol=1e-5)


def test_probe_with_unrolled_reports_the_forward_iterations(x64):
    w, b, c, _ = problem()
    _, gb, binfo = grads(w, b, c, jfbjax.Unrolled())
    _, info = jfbjax.fixed_point(affine, jnp.zeros(N), w, b, solver=FORWARD)
    assert int(binfo.solves) == 1 and int(binfo.max_iter) == 1
    assert int(binfo.iterations) == int(info.iterations)
    assert np.isnan(float(binfo.residual))  # no adjoint is formed
    # backprop through Anderson's (regularised) iterations: close to IFT, not exact
    np.testing.assert_allclose(gb, closed_form(w, c, GOOD), rtol=1e-6)


def test_probe_counts_nothing_when_the_loss_ignores_z(x64):
    w, b, _, _ = problem()

    def ignores_z(b, probe):
        jfbjax.fixed_point(affine, jnp.zeros(N), w, b, backward=GOOD, probe=probe)
        return jnp.sum(b)

    binfo = jfbjax.backward_info(jax.grad(ignores_z, argnums=1)(b, jfbjax.backward_probe()))
    assert int(binfo.solves) == 0 and int(binfo.status) == -1


def per_sample_problem():
    """Two samples whose cotangents differ: sample 0's is the eigenvector of W with
    eigenvalue 0.5 (a Picard adjoint converges in ~35 steps), sample 1's is generic
    (the 0.99 mode needs thousands)."""
    w, b, c, q = problem()
    cs = jnp.stack([q[:, 0], c])
    bs = jnp.stack([b, -b])
    return w, bs, cs


def batched_loss(bs, probes, w, cs, backward, callback=None):
    def one(b, c, probe):
        z, _ = jfbjax.fixed_point(
            affine,
            jnp.zeros(N),
            w,
            b,
            solver=FORWARD,
            backward=backward,
            probe=probe,
            backward_callback=callback,
        )
        return c @ z

    in_axes = (0, 0, None if probes.ndim == 1 else 0)
    return jnp.sum(jax.vmap(one, in_axes=in_axes)(bs, cs, probes))


def test_probe_and_fallback_are_per_sample_under_vmap(x64):
    w, bs, cs = per_sample_problem()
    fallback = jfbjax.Neumann(5)
    backward = jfbjax.IFT("picard", tol=1e-10, max_iter=60, fallback=fallback)
    seen = []
    grad = jax.jit(jax.grad(batched_loss, argnums=(0, 1)), static_argnums=(4, 5))
    probes = jfbjax.backward_probe((2,), jnp.float64)
    gb, gp = grad(bs, probes, w, cs, backward, seen.append)
    binfo = jfbjax.backward_info(gp)
    assert binfo.status.shape == (2,)
    assert binfo.status.tolist() == [jfbjax.CONVERGED, jfbjax.FALLBACK]
    assert binfo.solves.tolist() == [1, 1]
    assert 0 < int(binfo.iterations[0]) < 60 and int(binfo.iterations[1]) == 60
    assert float(binfo.residual[0]) <= 1e-10 < float(binfo.residual[1])
    # sample 0 has the IFT gradient, sample 1 the fallback's
    np.testing.assert_allclose(gb[0], closed_form(w, cs[0], GOOD), rtol=1e-8)
    np.testing.assert_allclose(gb[1], closed_form(w, cs[1], fallback), rtol=1e-9)
    # the callback sees the same statuses
    jax.effects_barrier()
    assert seen
    statuses = np.concatenate([np.ravel(np.asarray(i.status)) for i in seen])
    assert sorted(statuses.tolist()) == [jfbjax.CONVERGED, jfbjax.FALLBACK]

    # one probe shared by the batch sums the two passes
    _, shared = grad(bs, jfbjax.backward_probe(dtype=jnp.float64), w, cs, backward, None)
    total = jfbjax.backward_info(shared)
    assert int(total.solves) == 2 and int(total.converged) == 1 and int(total.fallback) == 1
    assert int(total.iterations) == int(jnp.sum(binfo.iterations))
    np.testing.assert_allclose(float(total.residual), float(jnp.sum(binfo.residual)), rtol=1e-6)
    assert int(total.status) == jfbjax.FALLBACK


# ------------------------------------------------------------------ throw


def test_throw_raises_naming_the_adjoint_residual_and_iterations(x64):
    w, b, c, _ = problem()
    backward = jfbjax.IFT("picard", tol=1e-10, max_iter=5, throw=True)
    run = jax.jit(jax.grad(loss, argnums=1), static_argnums=4)
    with pytest.raises(Exception, match=r"IFT adjoint.*MAX_ITER.*after 5 iterations.*residual"):
        jax.block_until_ready(run(w, b, c, None, backward))
    # per sample: the message names a failed sample of the batch
    wv, bs, cs = per_sample_problem()
    thrower = jfbjax.IFT("picard", tol=1e-10, max_iter=60, throw=True)
    batched = jax.jit(jax.grad(batched_loss), static_argnums=(4, 5))
    with pytest.raises(Exception, match=r"IFT adjoint.*MAX_ITER.*after 60 iterations"):
        jax.block_until_ready(batched(bs, jfbjax.backward_probe((2,)), wv, cs, thrower))


def test_throw_with_a_good_budget_returns_the_ift_gradient(x64):
    w, b, c, _ = problem()
    good = jfbjax.IFT(GOOD.solver, throw=True)
    gw, gb = jax.block_until_ready(
        jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=4)(w, b, c, None, good)
    )
    assert_gradient_is(gw, gb, w, b, closed_form(w, c, GOOD))
    # gmres, which reports no iteration count, is checked by its residual
    gmres = jfbjax.IFT("gmres", tol=1e-12, restart=N, max_iter=3, throw=True)
    _, gb = jax.block_until_ready(jax.grad(loss, argnums=(0, 1))(w, b, c, None, gmres))
    np.testing.assert_allclose(gb, closed_form(w, c, GOOD), rtol=1e-9)
    bad_gmres = jfbjax.IFT("gmres", tol=1e-12, restart=2, max_iter=1, throw=True)
    with pytest.raises(Exception, match=r"MAX_ITER after an unreported number of \(GMRES\)"):
        jax.block_until_ready(jax.grad(loss, argnums=1)(w, b, c, None, bad_gmres))


# ------------------------------------------------------------------ fallback

FALLBACKS = {
    "jfb": jfbjax.JFB(),
    "neumann": jfbjax.Neumann(5),
    "phantom": jfbjax.Phantom(3, 0.5),
    "gmres": jfbjax.IFT("gmres", tol=1e-12, restart=N, max_iter=3),
}


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_fallback_gradient_is_the_fallback_closed_form(x64, name):
    fallback = FALLBACKS[name]
    w, b, c, _ = problem()
    backward = jfbjax.IFT("picard", tol=1e-10, max_iter=5, fallback=fallback)
    gw, gb, binfo = grads(w, b, c, backward)
    assert int(binfo.status) == jfbjax.FALLBACK and int(binfo.fallback) == 1
    assert int(binfo.iterations) == 5 and float(binfo.residual) > 1e-3  # the failed solve's
    assert_gradient_is(gw, gb, w, b, closed_form(w, c, fallback))
    # with a good budget the fallback is not used: the plain IFT gradient
    good = jfbjax.IFT(GOOD.solver, fallback=fallback)
    gw, gb, binfo = grads(w, b, c, good)
    assert int(binfo.status) == jfbjax.CONVERGED and int(binfo.fallback) == 0
    plain_w, plain_b, _ = grads(w, b, c, GOOD)
    np.testing.assert_array_equal(gw, plain_w)
    np.testing.assert_array_equal(gb, plain_b)
    assert_gradient_is(gw, gb, w, b, closed_form(w, c, GOOD))


def test_fallback_replaces_a_nonfinite_adjoint(x64):
    """A map that does not contract (eigenvalues up to 1.5, none 1): Anderson still
    finds the forward fixed point of the affine map, the Picard adjoint diverges
    until its norm overflows (status NONFINITE), and the GMRES fallback returns the
    exact IFT gradient."""
    w, b, c, q = problem()
    w = (q * jnp.array([0.5, 0.6, 0.7, 0.8, 1.2, 1.4, 1.5])) @ q.T
    diverging = jfbjax.IFT("picard", tol=1e-10, max_iter=3000)
    _, gb, binfo = grads(w, b, c, diverging)
    assert int(binfo.status) == jfbjax.NONFINITE and float(jnp.max(jnp.abs(gb))) > 1e100
    rescued = jfbjax.IFT("picard", tol=1e-10, max_iter=3000, fallback=FALLBACKS["gmres"])
    gw, gb, binfo = grads(w, b, c, rescued)
    assert int(binfo.status) == jfbjax.FALLBACK
    assert_gradient_is(gw, gb, w, b, closed_form(w, c, GOOD))


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: jfbjax.IFT(throw=1), "IFT throw must be True or False"),
        (lambda: jfbjax.IFT(fallback="jfb"), "IFT fallback must be None or a backward mode"),
        (lambda: jfbjax.IFT(fallback=jfbjax.Unrolled()), "IFT fallback must be None"),
        (lambda: jfbjax.IFT(throw=True, fallback=jfbjax.JFB()), "exclusive"),
        (lambda: jfbjax.IFT("gmres", gmres_method="qr"), "gmres_method must be"),
        (lambda: jfbjax.backward_probe(dtype=jnp.int32), "dtype must be floating"),
        (lambda: jfbjax.backward_info(jnp.zeros(3)), r"shape \(\.\.\., 6\)"),
    ],
)
def test_bad_settings_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("probe", [jnp.zeros(5), jnp.zeros((2, 6)), jnp.zeros(6, jnp.int32)])
def test_a_wrong_probe_is_rejected(probe):
    with pytest.raises(ValueError, match=r"probe must be a floating array of shape \(6,\)"):
        jfbjax.fixed_point(lambda z: 0.5 * z, jnp.zeros(2), probe=probe)


def test_configuration_and_names():
    assert jfbjax.PROBE_SIZE == 6 and jfbjax.backward_probe((3, 2)).shape == (3, 2, 6)
    assert jfbjax.status_name(3) == "FALLBACK" and jfbjax.FALLBACK == 3
    a = jfbjax.IFT("picard", max_iter=5, fallback=jfbjax.Neumann(5))
    b = jfbjax.IFT("picard", max_iter=5, fallback=jfbjax.Neumann(5))
    assert a == b and hash(a) == hash(b)  # static arguments of jit
    assert a != jfbjax.IFT("picard", max_iter=5, fallback=jfbjax.Neumann(4))
    assert jfbjax.IFT(tol=1e-7).adjoint_tol == 1e-7
    assert jfbjax.IFT(jfbjax.Picard(tol=1e-3)).adjoint_tol == 1e-3
    # a chain: GMRES behind Anderson, JFB behind GMRES
    chain = jfbjax.IFT(fallback=jfbjax.IFT("gmres", fallback=jfbjax.JFB()))
    assert isinstance(chain.fallback.fallback, jfbjax.JFB)


def test_a_diverging_solve_is_never_reported_converged(x64):
    """Once ||f(z)||^2 overflows, the relative residual is inf (status NONFINITE), not
    finite / inf = 0 (which read as CONVERGED before)."""
    f = lambda z: 1.5 * z + 1.0
    _, info = jfbjax.fixed_point(f, jnp.zeros(3), solver=jfbjax.Picard(tol=1e-10, max_iter=3000))
    assert int(info.status) == jfbjax.NONFINITE and int(info.iterations) < 3000
    z = jnp.full(3, 7e153)  # ||f(z)||^2 overflows, ||f(z) - z||^2 does not: inf, not 0
    assert float(jfbjax.solvers.relative_residual(z, 1.5 * z + 1.0)) == np.inf
    z = jnp.full(3, 1e200)  # both overflow: inf / inf, not finite either
    assert not np.isfinite(float(jfbjax.solvers.relative_residual(z, 1.5 * z)))
