"""A solver and a backward mode defined outside the package, used through
fixed_point (both differentiation modes), IFT, the DE-GRAD model and the config."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jfbjax
from experiments.configs import get_config
from jfbjax import builders
from tests.core.problems import affine, affine_problem


@dataclasses.dataclass(frozen=True)
class HalfStep(jfbjax.AbstractSolver):
    """z <- (z + f(z)) / 2: a user's solver (the same iterates as Picard(damping=0.5))."""

    tol: float = 1e-4
    max_iter: int = 50

    def init(self, z, fz):
        return jnp.zeros((), jnp.int32)  # a state of its own: a counter

    def propose(self, state, z, fz):
        return jax.tree.map(lambda a, b: 0.5 * (a + b), z, fz)

    def record(self, state, z, fz):
        return state + 1


@dataclasses.dataclass(frozen=True)
class TwoTerms(jfbjax.AbstractBackward):
    """u = v + J^T v + (J^T)^2 v: a user's backward mode (equal to Neumann(2))."""

    def adjoint(self, vjp_z, v, stats=False):
        t1 = vjp_z(v)
        u = jax.tree.map(lambda a, b, c: a + b + c, v, t1, vjp_z(t1))
        info = jfbjax.SolverInfo(jnp.int32(2), jnp.float32(jnp.nan), jnp.int32(jfbjax.MAX_ITER))
        return u, info


def test_user_solver_and_backward_through_fixed_point(x64):
    w, b, c = affine_problem()
    mine = HalfStep(tol=1e-12, max_iter=2000)
    z, info = jfbjax.fixed_point(affine, jnp.zeros(7), w, b, solver=mine)
    ref, ref_info = jfbjax.fixed_point(
        affine, jnp.zeros(7), w, b, solver=jfbjax.Picard(tol=1e-12, max_iter=2000, damping=0.5)
    )
    np.testing.assert_array_equal(z, ref)
    assert int(info.iterations) == int(ref_info.iterations) and int(info.status) == 0

    def readout(b, backward, forward_mode=False):
        z, _ = jfbjax.fixed_point(
            affine, jnp.zeros(7), w, b, solver=mine, backward=backward, forward_mode=forward_mode
        )
        return c @ z

    neumann2 = jax.grad(readout)(b, jfbjax.Neumann(2))
    np.testing.assert_allclose(neumann2, c + w.T @ c + w.T @ w.T @ c, rtol=1e-10)
    np.testing.assert_allclose(jax.grad(readout)(b, TwoTerms()), neumann2, rtol=1e-12)
    # forward mode: the same recursion with J for J^T, and grad by transposition
    fwd = jax.jacfwd(readout)(b, TwoTerms(), True)
    np.testing.assert_allclose(fwd, neumann2, rtol=1e-10)
    # the user's solver as IFT's adjoint solver, the user's mode as IFT's fallback
    ift = jax.grad(readout)(b, jfbjax.IFT(HalfStep(tol=1e-12, max_iter=2000)))
    np.testing.assert_allclose(ift, jnp.linalg.solve((jnp.eye(7) - w).T, c), rtol=1e-9)
    weak = jfbjax.IFT(HalfStep(tol=1e-12, max_iter=2), fallback=TwoTerms())
    np.testing.assert_allclose(jax.grad(readout)(b, weak), neumann2, rtol=1e-12)


def test_classes_that_are_not_solvers_or_backward_modes_are_refused():
    with pytest.raises(ValueError, match="AbstractSolver"):
        jfbjax.as_solver(object())
    with pytest.raises(ValueError, match="AbstractBackward"):
        jfbjax.as_backward(object())
    with pytest.raises(ValueError, match="AbstractBackward"):
        jfbjax.IFT(fallback="jfb")
    with pytest.raises(TypeError):  # the abstract methods must be written
        type("Half", (jfbjax.AbstractSolver,), {})()


@dataclasses.dataclass(frozen=True)
class UnrolledOnce(jfbjax.AbstractBackward):
    """A user's mode that takes the unrolled route (as Unrolled does) and never an adjoint."""

    def differentiate(self, routes):
        return routes.unrolled()

    def adjoint(self, vjp_z, v, stats=False):
        raise AssertionError("the unrolled route forms no adjoint")


def test_a_backward_mode_chooses_its_route(x64):
    w, b, _ = affine_problem()

    def grad(backward, solver):
        loss = lambda b: jfbjax.fixed_point(affine, jnp.zeros(7), w, b, solver=solver,
                                            backward=backward)[0].sum()  # fmt: skip
        return jax.grad(loss)(b)

    solver = jfbjax.Picard(tol=0.0, max_iter=3)  # three steps from 0: dz/db = I + W + W^2
    expected = (jnp.eye(7) + w + w @ w).T @ jnp.ones(7)
    np.testing.assert_allclose(grad(UnrolledOnce(), solver), expected, rtol=1e-12)
    np.testing.assert_allclose(grad(jfbjax.Unrolled(), solver), expected, rtol=1e-12)
    # the implicit route (the default) at a converged solve: (I - W)^-T 1
    exact = jnp.linalg.solve((jnp.eye(7) - w).T, jnp.ones(7))
    converged = jfbjax.Anderson(tol=1e-12, max_iter=200)
    np.testing.assert_allclose(grad(jfbjax.IFT(tol=1e-12), converged), exact, rtol=1e-8)
    with pytest.raises(ValueError, match="fallback"):  # an unrolled mode has no adjoint to lend
        jfbjax.IFT(fallback=jfbjax.Unrolled())
    with pytest.raises(TypeError, match="no adjoint"):
        jfbjax.Unrolled().adjoint(lambda u: u, jnp.ones(3))


@pytest.fixture
def registered():
    builders.register_solver("halfstep", lambda cfg: HalfStep(float(cfg.tol), int(cfg.max_iter)))
    builders.register_backward("twoterms", lambda cfg: TwoTerms())
    yield
    del builders.SOLVERS["halfstep"], builders.BACKWARDS["twoterms"]


def test_user_solver_and_backward_through_the_config_and_model(registered):
    config = get_config("smoke")
    config.model.depth, config.model.features = 2, 4
    config.solver.name, config.backward.name = "halfstep", "twoterms"
    blur = builders.blur_from_config(config)
    model = builders.build_model(config, blur, nnx.Rngs(0))
    assert model.solver == HalfStep(config.solver.tol, config.solver.max_iter)
    assert model.backward == TwoTerms()
    d = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3), minval=-1.0, maxval=1.0)

    def loss(model, backward):
        x, _ = model.with_solver(backward=backward)(d)
        return jnp.mean(x**2)

    mine = nnx.grad(loss)(model, TwoTerms())
    ref = nnx.grad(loss)(model, jfbjax.Neumann(2))
    for a, r in zip(jax.tree.leaves(mine), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="halfstep"):  # the error lists the registered names
        builders.solver_from_config(type(config.solver)({"name": "nope"}))
