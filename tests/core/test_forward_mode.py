"""fixed_point(forward_mode=True): jvp/jacfwd against closed forms, the same
reverse-mode gradients as the custom_vjp, and the errors of the two paths (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jfbjax
from tests.core.problems import (
    affine,
    affine_problem,
    central_differences,
    tanh_layer,
    tanh_problem,
)

SOLVER = jfbjax.Anderson(m=6, tol=1e-13, max_iter=300)

BACKWARDS = {
    "jfb": jfbjax.JFB(),
    "neumann3": jfbjax.Neumann(3),
    "phantom": jfbjax.Phantom(4, 0.5),
    "ift_anderson": jfbjax.IFT("anderson", tol=1e-13, max_iter=300),
    "ift_gmres": jfbjax.IFT("gmres", tol=1e-13, max_iter=50),
    "unrolled": jfbjax.Unrolled(),
}


def _dz_db_closed_form(w, backward):
    """``dz*/db`` of the affine map z <- W z + b as each backward mode approximates it."""
    n = w.shape[0]
    if isinstance(backward, jfbjax.JFB):
        return jnp.eye(n)
    if isinstance(backward, jfbjax.Neumann):
        return sum(jnp.linalg.matrix_power(w, i) for i in range(backward.k + 1))
    if isinstance(backward, jfbjax.Phantom):
        m = (1 - backward.lam) * jnp.eye(n) + backward.lam * w
        return backward.lam * sum(jnp.linalg.matrix_power(m, i) for i in range(backward.k))
    return jnp.linalg.inv(jnp.eye(n) - w)  # IFT, and Unrolled at a converged solve


@pytest.mark.parametrize("backward", list(BACKWARDS))
def test_affine_jacfwd_closed_form_and_equals_jacrev(x64, backward):
    mode = BACKWARDS[backward]
    w, b, _ = affine_problem()

    def solve(w, b, forward_mode):
        return jfbjax.fixed_point(
            affine, jnp.zeros(7), w, b, solver=SOLVER, backward=mode, forward_mode=forward_mode
        )[0]

    expected = _dz_db_closed_form(w, mode)
    fwd = jax.jacfwd(solve, argnums=(0, 1))(w, b, True)
    np.testing.assert_allclose(fwd[1], expected, rtol=1e-9, atol=1e-10)
    # the custom_vjp's jacrev, and jacrev through the custom_jvp (by transposition)
    for rev in (jax.jacrev(solve, argnums=(0, 1))(w, b, False),
                jax.jacrev(solve, argnums=(0, 1))(w, b, True)):  # fmt: skip
        for a, r in zip(fwd, rev, strict=True):
            np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backward", ["ift_anderson", "ift_gmres"])
def test_nonlinear_jvp_matches_finite_differences(x64, backward):
    params, x, target = tanh_problem()

    def loss(params, x):
        z, _ = jfbjax.fixed_point(
            tanh_layer, jnp.zeros(6), params, x, solver=SOLVER,
            backward=BACKWARDS[backward], forward_mode=True,
        )  # fmt: skip
        return jnp.sum((z - target) ** 2)

    direction = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape),
                             params)  # fmt: skip
    _, jvp = jax.jvp(lambda p: loss(p, x), (params,), (direction,))
    fd = central_differences(lambda p: loss(p, x), params)
    pairs = zip(jax.tree.leaves(fd), jax.tree.leaves(direction), strict=True)
    expected = sum(jnp.vdot(g, d) for g, d in pairs)
    np.testing.assert_allclose(jvp, expected, rtol=1e-6)
    # and grad through the custom_jvp equals the finite differences leaf by leaf
    grads = jax.grad(loss)(params, x)
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(fd), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-8)


def test_forward_mode_per_sample_under_vmap_with_aux_and_jit(x64):
    w, _, c = affine_problem()
    bs = jnp.stack([jnp.ones(7), -2.0 * jnp.ones(7), jnp.arange(7.0)])

    def f(z, w, b):
        return affine(z, w, b), c @ z  # aux: a readout at z*

    @jax.jit
    def readout(b):
        _, aux, _ = jfbjax.fixed_point(
            f,
            jnp.zeros(7),
            w,
            b,
            solver=SOLVER,
            backward=BACKWARDS["ift_anderson"],
            has_aux=True,
            forward_mode=True,
        )
        return aux

    jac = jax.vmap(jax.jacfwd(readout))(bs)
    expected = jnp.linalg.solve((jnp.eye(7) - w).T, c)  # d(c . z*)/db, the same for every b
    np.testing.assert_allclose(jac, jnp.broadcast_to(expected, (3, 7)), rtol=1e-8)


def test_forward_mode_throw_and_fallback_of_the_adjoint(x64):
    w, b, _ = affine_problem(norm=0.99)
    weak = jfbjax.IFT("picard", tol=1e-12, max_iter=3)

    def solve(b, backward):
        return jfbjax.fixed_point(
            affine, jnp.zeros(7), w, b, solver=SOLVER, backward=backward, forward_mode=True
        )[0]

    # the tangent solve fails: the fallback (JFB: dz = db) is used, or throw raises
    fallback = jax.jacfwd(solve)(b, jfbjax.IFT("picard", tol=1e-12, max_iter=3,
                                                fallback=jfbjax.JFB()))  # fmt: skip
    np.testing.assert_allclose(fallback, jnp.eye(7))
    assert not np.allclose(jax.jacfwd(solve)(b, weak), jnp.eye(7))
    with pytest.raises(Exception, match="IFT adjoint solve"):
        jax.block_until_ready(jax.jacfwd(solve)(b, jfbjax.IFT("picard", 1e-12, 3, throw=True)))


def test_forward_mode_errors():
    f = lambda z, a: 0.5 * jnp.tanh(z) + a
    a = jnp.ones(3)
    default = lambda a: jfbjax.fixed_point(f, jnp.zeros(3), a)[0]
    with pytest.raises(TypeError, match="forward_mode=True"):
        jax.jvp(default, (a,), (a,))
    with pytest.raises(TypeError, match="forward_mode=True"):
        jax.jacfwd(default)(a)
    with pytest.raises(ValueError, match="forward_mode=True there is none"):
        jfbjax.fixed_point(f, jnp.zeros(3), a, forward_mode=True, probe=jfbjax.backward_probe())
    with pytest.raises(ValueError, match="forward_mode=True there is none"):
        jfbjax.fixed_point(f, jnp.zeros(3), a, forward_mode=True, backward_callback=print)
    # the default still reverse-differentiates; unrolled needs no flag for jvp
    assert jax.grad(lambda a: default(a).sum())(a).shape == (3,)
    unrolled = lambda a: jfbjax.fixed_point(f, jnp.zeros(3), a, backward="unrolled")[0]
    assert jax.jvp(unrolled, (a,), (a,))[1].shape == (3,)
