"""Arguments that hold more than arrays: an Equinox-style module and a Flax NNX state.

An Equinox module is a pytree whose leaves are its fields, arrays and
non-arrays alike (an activation function, an int). fixed_point passes such
leaves through to ``f`` as constants and differentiates only the arrays.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jfbjax


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Layer:
    """``z <- act(W z + x)`` applied ``steps`` times: every field is a pytree leaf."""

    w: jax.Array
    act: Callable
    steps: int
    name: str

    def __call__(self, z, x):
        for _ in range(self.steps):  # a Python int: must not be traced
            z = self.act(self.w @ z + x)
        return z


def apply(z, layer, x):
    return layer(z, x)


def problem(n=5, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    w = jax.random.normal(k1, (n, n))
    w = 0.6 * w / jnp.linalg.norm(w, 2)
    return w, jax.random.normal(k2, (n,)), jax.random.normal(k3, (n,))


TIGHT = jfbjax.Anderson(m=5, tol=1e-13, max_iter=300)
MODES = {
    "jfb": jfbjax.JFB(),
    "neumann": jfbjax.Neumann(3),
    "phantom": jfbjax.Phantom(2, 0.5),
    "ift": jfbjax.IFT(tol=1e-13, max_iter=300),
    "unrolled": jfbjax.Unrolled(),
}


def test_leaves_are_what_an_equinox_module_has():
    w, _, _ = problem()
    leaves = jax.tree.leaves(Layer(w, jnp.tanh, 2, "layer"))
    assert len(leaves) == 4 and callable(leaves[1]) and leaves[2] == 2 and leaves[3] == "layer"


def test_affine_gradient_closed_form_through_a_module_with_an_int_and_a_function(x64):
    """act = identity, steps = 2: f(z) = W (W z + x) + x, so df/dz = W^2 and the
    gradients of every mode have closed forms."""
    w, x, c = problem()
    n = w.shape[0]
    identity = lambda a: a

    def loss(w, x, mode):
        layer = Layer(w, identity, 2, "affine")
        z, _ = jfbjax.fixed_point(apply, jnp.zeros(n), layer, x, solver=TIGHT, backward=mode)
        return c @ z

    a = w @ w
    z_star = jnp.linalg.solve(jnp.eye(n) - a, w @ x + x)
    for name, mode in MODES.items():
        gx = jax.jit(jax.grad(loss, argnums=1), static_argnums=2)(w, x, mode)
        if name in ("ift", "unrolled"):
            u = jnp.linalg.solve((jnp.eye(n) - a).T, c)
        elif name == "jfb":
            u = c
        elif name == "neumann":
            u = sum(jnp.linalg.matrix_power(a.T, i) @ c for i in range(4))
        else:
            m = 0.5 * jnp.eye(n) + 0.5 * a
            u = 0.5 * (c + m.T @ c)
        # z* = A z* + (W + I) x:  dl/dx = (W + I)^T u
        rtol = 1e-6 if name == "unrolled" else 1e-9
        np.testing.assert_allclose(gx, (w + jnp.eye(n)).T @ u, rtol=rtol, atol=1e-10, err_msg=name)
    # and the forward solution
    z, info = jfbjax.fixed_point(apply, jnp.zeros(n), Layer(w, identity, 2, "a"), x, solver=TIGHT)
    assert int(info.status) == jfbjax.CONVERGED
    np.testing.assert_allclose(z, z_star, rtol=1e-10)


@pytest.mark.parametrize("name", list(MODES))
def test_gradient_with_respect_to_the_module_arrays(x64, name):
    """The gradient of the module's array leaves, an Equinox-style filtered grad:
    split the module into its arrays and the rest, differentiate the arrays."""
    w, x, c = problem()
    module = Layer(w, jnp.tanh, 2, "tanh")
    leaves, treedef = jax.tree.flatten(module)
    is_array = [isinstance(leaf, jax.Array) for leaf in leaves]

    def loss(arrays, x):
        it = iter(arrays)
        full = [next(it) if a else leaf for leaf, a in zip(leaves, is_array, strict=True)]
        z, _ = jfbjax.fixed_point(
            apply,
            jnp.zeros(5),
            jax.tree.unflatten(treedef, full),
            x,
            solver=TIGHT,
            backward=MODES[name],
        )
        return c @ z

    arrays = [leaf for leaf, a in zip(leaves, is_array, strict=True) if a]
    (gw,) = jax.grad(loss)(arrays, x)
    assert gw.shape == w.shape and bool(jnp.all(jnp.isfinite(gw)))

    def explicit(z, w, x):  # the same map with the array passed on its own
        return Layer(w, jnp.tanh, 2, "tanh")(z, x)

    ref = jax.grad(
        lambda w: (
            c
            @ jfbjax.fixed_point(explicit, jnp.zeros(5), w, x, solver=TIGHT, backward=MODES[name])[
                0
            ]
        )
    )(w)
    np.testing.assert_allclose(gw, ref, rtol=1e-12, atol=1e-14)
    if name in ("ift", "unrolled"):  # and the exact ones match finite differences
        eps = 1e-6
        e = jnp.zeros_like(w).at[1, 2].set(eps)
        fd = (loss([w + e], x) - loss([w - e], x)) / (2 * eps)
        np.testing.assert_allclose(gw[1, 2], fd, rtol=1e-6)


def test_module_under_vmap_and_jit():
    w, _, _ = problem()
    xs = jax.random.normal(jax.random.PRNGKey(3), (4, 5))
    layer = Layer(w, jax.nn.gelu, 1, "gelu")

    @jax.jit
    def solve(w, xs):
        one = lambda x: jfbjax.fixed_point(apply, jnp.zeros(5), Layer(w, jax.nn.gelu, 1, "g"), x)
        return jax.vmap(one)(xs)

    z, info = solve(w, xs)
    assert z.shape == (4, 5) and np.all(np.asarray(info.status) == jfbjax.CONVERGED)
    for i in range(4):
        zi, _ = jfbjax.fixed_point(apply, jnp.zeros(5), layer, xs[i])
        np.testing.assert_allclose(z[i], zi, rtol=1e-5, atol=1e-6)
    g = jax.jit(jax.grad(lambda w: jnp.sum(solve(w, xs)[0] ** 2)))(w)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.linalg.norm(g)) > 0


def test_python_numbers_and_integer_arrays_in_args():
    """Python scalars are constants; integer arrays are traced but get no gradient."""
    w, x, _ = problem()

    def f(z, scale, shift, count):
        return jnp.tanh(scale * (w @ z) + x + shift + 0.0 * count.astype(z.dtype))

    _, info = jfbjax.fixed_point(f, jnp.zeros(5), 0.9, 0.1, jnp.arange(5))
    assert int(info.status) == jfbjax.CONVERGED
    g = jax.grad(lambda s: jnp.sum(jfbjax.fixed_point(f, jnp.zeros(5), s, 0.1, jnp.arange(5))[0]))(
        0.9
    )
    assert np.isfinite(float(g)) and float(g) != 0.0


@pytest.mark.parametrize("name", ["jfb", "ift", "unrolled"])
def test_flax_nnx_split_state(x64, name):
    """A tiny nnx.Linear as (graphdef, state) args: gradients reach the state's
    Params and equal those of the same map written with explicit arrays."""
    linear = nnx.Linear(4, 4, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    graphdef, state = nnx.split(linear)
    x = jnp.linspace(-1.0, 1.0, 4)

    def f(z, graphdef, state, x):
        return jnp.tanh(0.5 * nnx.merge(graphdef, state)(z) + x)

    def loss(state):
        z, _ = jfbjax.fixed_point(f, jnp.zeros(4), graphdef, state, x, backward=MODES[name])
        return jnp.sum(z**2)

    g = jax.jit(jax.grad(loss))(state)
    assert jax.tree.structure(g) == jax.tree.structure(state)

    kernel, bias = state["kernel"][...], state["bias"][...]

    def explicit(z, kernel, bias, x):
        return jnp.tanh(0.5 * (z @ kernel + bias) + x)

    ref = jax.grad(
        lambda k, b: jnp.sum(
            jfbjax.fixed_point(explicit, jnp.zeros(4), k, b, x, backward=MODES[name])[0] ** 2
        ),
        argnums=(0, 1),
    )(kernel, bias)
    np.testing.assert_allclose(g["kernel"][...], ref[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g["bias"][...], ref[1], rtol=1e-10, atol=1e-12)
