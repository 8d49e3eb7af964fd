"""Gradients of every backward mode against closed forms and finite differences (float64)."""

import jax
import jax.extend
import jax.flatten_util
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

TIGHT_SOLVERS = {
    "picard": jfbjax.Picard(tol=1e-13, max_iter=2000),
    "anderson": jfbjax.Anderson(m=6, tol=1e-13, max_iter=300),
}


@pytest.mark.parametrize("solver", list(TIGHT_SOLVERS))
def test_affine_fixed_point_closed_form(x64, solver):
    w, b, _ = affine_problem()
    z, info = jfbjax.fixed_point(affine, jnp.zeros(7), w, b, solver=TIGHT_SOLVERS[solver])
    exact = jnp.linalg.solve(jnp.eye(7) - w, b)
    np.testing.assert_allclose(z, exact, rtol=0, atol=1e-11)
    assert int(info.status) == jfbjax.CONVERGED
    assert float(info.residual) <= 1e-13


def affine_adjoint(w, c, mode):
    """Closed-form adjoint vector u for loss c . z*."""
    n = w.shape[0]
    if mode == "ift":
        return jnp.linalg.solve((jnp.eye(n) - w).T, c)
    k = mode  # Neumann(k); k = 0 is JFB
    return sum(jnp.linalg.matrix_power(w.T, i) @ c for i in range(k + 1))


BACKWARDS = {
    "jfb": (jfbjax.JFB(), 0),
    "neumann0": (jfbjax.Neumann(0), 0),
    "neumann1": (jfbjax.Neumann(1), 1),
    "neumann4": (jfbjax.Neumann(4), 4),
    "ift_anderson": (jfbjax.IFT("anderson", tol=1e-13, max_iter=300), "ift"),
    "ift_picard": (jfbjax.IFT("picard", tol=1e-13, max_iter=2000), "ift"),
    "ift_gmres": (jfbjax.IFT("gmres", tol=1e-13, max_iter=50), "ift"),
    "unrolled": (jfbjax.Unrolled(), "ift"),
}


@pytest.mark.parametrize("solver", list(TIGHT_SOLVERS))
@pytest.mark.parametrize("backward", list(BACKWARDS))
def test_affine_gradients_closed_form(x64, solver, backward):
    mode, closed = BACKWARDS[backward]
    w, b, c = affine_problem()
    z0 = jnp.zeros(7)

    def loss(w, b, z0):
        z, _ = jfbjax.fixed_point(affine, z0, w, b, solver=TIGHT_SOLVERS[solver], backward=mode)
        return c @ z

    gw, gb, gz0 = jax.grad(loss, argnums=(0, 1, 2))(w, b, z0)
    z_star = jnp.linalg.solve(jnp.eye(7) - w, b)
    u = affine_adjoint(w, c, closed)
    np.testing.assert_allclose(gb, u, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gw, jnp.outer(u, z_star), rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(gz0, jnp.zeros(7))


def test_neumann_approaches_ift(x64):
    w, b, c = affine_problem(norm=0.6)
    ift = affine_adjoint(w, c, "ift")
    z0 = jnp.zeros(7)
    errors = []
    for k in (0, 2, 8, 30):
        g = jax.grad(
            lambda b, k=k: c @ jfbjax.fixed_point(affine, z0, w, b, backward=jfbjax.Neumann(k))[0]
        )(b)
        errors.append(float(jnp.linalg.norm(g - ift)))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-6 * errors[0]


# ---------------------------------------------------------------- nonlinear


def tanh_loss(params, x, target, backward, solver=TIGHT_SOLVERS["anderson"]):
    z, _ = jfbjax.fixed_point(
        tanh_layer, jnp.zeros_like(target), params, x, solver=solver, backward=backward
    )
    return 0.5 * jnp.sum((z - target) ** 2)


@pytest.mark.parametrize("backward", ["ift_anderson", "ift_picard", "ift_gmres", "unrolled"])
def test_nonlinear_exact_gradients_match_finite_differences(x64, backward):
    params, x, target = tanh_problem()
    mode = BACKWARDS[backward][0]
    loss = jax.jit(lambda p: tanh_loss(p, x, target, mode))
    grad = jax.grad(loss)(params)
    fd = central_differences(loss, params)
    for key in params:
        np.testing.assert_allclose(grad[key], fd[key], rtol=1e-6, atol=1e-8, err_msg=key)
    # and with respect to the input x (an arg that is not a parameter)
    gx = jax.grad(lambda x: tanh_loss(params, x, target, mode))(x)
    fdx = central_differences(lambda x: tanh_loss(params, x, target, mode), x)
    np.testing.assert_allclose(gx, fdx, rtol=1e-6, atol=1e-8)


def test_unrolled_equals_ift_when_converged(x64):
    params, x, target = tanh_problem()
    for solver in TIGHT_SOLVERS.values():
        g_ift = jax.grad(tanh_loss)(params, x, target, jfbjax.IFT(tol=1e-13, max_iter=300), solver)
        g_unr = jax.grad(tanh_loss)(params, x, target, jfbjax.Unrolled(), solver)
        for key in params:
            np.testing.assert_allclose(g_unr[key], g_ift[key], rtol=1e-8, atol=1e-10)


def test_jfb_is_a_descent_direction(x64):
    params, x, target = tanh_problem(norm=0.5)
    g_ift = jax.grad(tanh_loss)(params, x, target, jfbjax.IFT(tol=1e-13, max_iter=300))
    g_jfb = jax.grad(tanh_loss)(params, x, target, jfbjax.JFB())
    cos = float(jfbjax.gradient_alignment(g_jfb, g_ift))
    assert 0.0 < cos < 1.0  # a descent direction, not the exact gradient
    # a small step along -g_jfb decreases the loss
    step = jax.tree.map(lambda p, g: p - 1e-3 * g, params, g_jfb)
    assert tanh_loss(step, x, target, "jfb") < tanh_loss(params, x, target, "jfb")


def test_backward_linearises_once_and_forms_no_jacobian():
    """The adjoint loop body holds only the linearised map: no tanh is
    re-evaluated per iteration and no (n, n) array appears anywhere."""
    n = 13
    a = jnp.linspace(0.1, 0.5, n)
    b = jnp.linspace(-1.0, 1.0, n)

    def f(z, a, b):
        return jnp.tanh(a * z + b) + 0.3 * jnp.roll(z, 1)

    def loss(a, b):
        z, _ = jfbjax.fixed_point(f, jnp.zeros(n), a, b, backward=jfbjax.IFT())
        return jnp.sum(z**2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(a, b).jaxpr

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from walk(sub)

    whiles = [e for e in walk(jaxpr) if e.primitive.name == "while"]
    assert len(whiles) >= 2  # forward solve and adjoint solve
    # find the adjoint loop: the one whose body has no tanh
    bodies = [e.params["body_jaxpr"].jaxpr for e in whiles]
    tanh_counts = [sum(e.primitive.name == "tanh" for e in walk(b)) for b in bodies]
    assert 0 in tanh_counts, "every while loop re-evaluates f: the backward re-linearises"
    for eqn in walk(jaxpr):
        for var in eqn.outvars:
            assert getattr(var.aval, "shape", ()) != (n, n), f"a Jacobian was formed by {eqn}"
