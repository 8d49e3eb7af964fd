r"""A deep-equilibrium classifier on two interleaved spirals, trained with JFB and with IFT.

The hidden state is the fixed point of one contractive tanh layer,

.. math:: z^* = \tanh(W z^* + U x + b), \qquad \|W\|_2 \le 0.9,

and a linear read-out ``V z* + c`` gives the two class logits. ``tanh`` is
1-Lipschitz, so the layer is a 0.9-contraction in ``z`` and the fixed point
exists, is unique and Anderson finds it in a few iterations. The same model
is trained twice with Adam, once with the Jacobian-free gradient
(``jfbjax.JFB()``: one VJP of the layer at ``z*``) and once with the exact
implicit gradient (``jfbjax.IFT()``: one adjoint solve more per step).

    python examples/deq_classifier.py            # 300 steps each, ~1 min on a CPU
    python examples/deq_classifier.py --steps 100
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jfbjax

SOLVER = jfbjax.Anderson(m=5, tol=1e-4, max_iter=50)
CONTRACTION = 0.9  # bound on ||W||_2, hence the layer's Lipschitz constant in z


def two_spirals(n: int, seed: int, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on two interleaved spirals (1.5 turns each) in [-1, 1]^2, labels 0/1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    t = np.sqrt(rng.uniform(0.02, 1.0, n)) * 3.0 * np.pi  # angle, denser near the centre
    r = t / (3.0 * np.pi)
    x = np.stack([r * np.cos(t + np.pi * y), r * np.sin(t + np.pi * y)], axis=1)
    x += noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), y.astype(np.int32)


def init_params(key: jax.Array, hidden: int = 64, input_scale: float = 4.0) -> dict:
    """Gaussian weights: ``W`` and ``V`` scaled by ``1/sqrt(hidden)``, ``U`` by ``input_scale``."""
    kw, ku, kv = jax.random.split(key, 3)
    return {
        "W": jax.random.normal(kw, (hidden, hidden)) / np.sqrt(hidden),
        "U": input_scale * jax.random.normal(ku, (hidden, 2)),
        "b": jnp.zeros(hidden),
        "V": jax.random.normal(kv, (2, hidden)) / np.sqrt(hidden),
        "c": jnp.zeros(2),
    }


# ---- the implicit model: the core logic --------------------------------------------------------


def layer(z, W, params, x):
    """The map whose fixed point is the hidden state: ``tanh(W z + U x + b)``."""
    return jnp.tanh(W @ z + params["U"] @ x + params["b"])


def logits_and_info(params, x, backward):
    """Class logits of a batch ``x`` (N, 2) and the per-sample solver statistics."""
    W = CONTRACTION * params["W"] / jnp.maximum(1.0, jnp.linalg.norm(params["W"], 2))
    z0 = jnp.zeros(params["b"].shape)
    solve = lambda xi: jfbjax.fixed_point(
        layer, z0, W, params, xi, solver=SOLVER, backward=backward
    )
    z, info = jax.vmap(solve)(x)  # one solve per sample
    return z @ params["V"].T + params["c"], info


def loss_fn(params, x, y, backward):
    """Mean cross-entropy, with the solver statistics as auxiliary output."""
    logits, info = logits_and_info(params, x, backward)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), info


# ---- training and comparison -------------------------------------------------------------------


def accuracy(params, x, y) -> float:
    logits, _ = jax.jit(logits_and_info, static_argnums=2)(params, x, jfbjax.JFB())
    return float(jnp.mean(jnp.argmax(logits, axis=-1) == y))


def train(params, x, y, backward, steps: int, lr: float) -> dict:
    """``steps`` full-batch Adam updates; returns the trained params and timings."""
    tx = optax.adam(lr)

    @jax.jit
    def update(params, opt_state):
        (loss, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, backward)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, info.iterations.mean()

    opt_state = tx.init(params)
    params, opt_state, loss, iters = jax.block_until_ready(update(params, opt_state))  # compile
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        params, opt_state, loss, iters = update(params, opt_state)
    jax.block_until_ready(params)
    seconds = (time.perf_counter() - t0) / max(steps - 1, 1)
    return {
        "params": params,
        "loss": float(loss),
        "iterations": float(iters),
        "s_per_step": seconds,
    }


def main(
    steps: int = 300, n_train: int = 512, hidden: int = 64, lr: float = 1e-2, seed: int = 0
) -> dict:
    """Trains the classifier with JFB and with IFT from the same start and prints the results.

    Returns ``{"cosine", "cosine_layer", "loss0", "accuracy0", "jfb", "ift"}``:
    the cosine between the JFB and IFT gradients at the start (all parameters;
    the implicit layer's only), the loss and test accuracy at the start, and
    per mode ``{"params", "loss", "iterations", "s_per_step", "train_accuracy",
    "test_accuracy"}``.
    """
    x, y = two_spirals(n_train, seed)
    x_test, y_test = two_spirals(1024, seed + 1)
    params0 = init_params(jax.random.PRNGKey(seed), hidden)

    grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, x, y, b)[0]), static_argnums=1)
    g_jfb, g_ift = grad(params0, jfbjax.JFB()), grad(params0, jfbjax.IFT())
    layer_only = lambda g: {k: g[k] for k in ("W", "U", "b")}
    cosine = float(jfbjax.gradient_alignment(g_jfb, g_ift))
    cosine_layer = float(jfbjax.gradient_alignment(layer_only(g_jfb), layer_only(g_ift)))
    print(f"two spirals: {n_train} training points, 1024 test points; DEQ with {hidden} units")
    print(
        f"cosine(JFB, IFT) of the gradient at the start: {cosine:.3f} over all parameters, "
        f"{cosine_layer:.3f} over the implicit layer (W, U, b)"
    )

    loss0 = float(jax.jit(loss_fn, static_argnums=3)(params0, x, y, jfbjax.JFB())[0])
    acc0 = accuracy(params0, x_test, y_test)
    print(f"at the start: test accuracy {acc0:.3f}, loss {loss0:.4f}")

    results = {"cosine": cosine, "cosine_layer": cosine_layer, "loss0": loss0, "accuracy0": acc0}
    for name, backward in (("jfb", jfbjax.JFB()), ("ift", jfbjax.IFT())):
        r = train(params0, x, y, backward, steps, lr)
        r["train_accuracy"] = accuracy(r["params"], x, y)
        r["test_accuracy"] = accuracy(r["params"], x_test, y_test)
        print(
            f"{name.upper():3s}: train accuracy {r['train_accuracy']:.3f}, test accuracy "
            f"{r['test_accuracy']:.3f}, final loss {r['loss']:.4f}, "
            f"{1e3 * r['s_per_step']:.1f} ms/step, {r['iterations']:.1f} forward iterations"
        )
        results[name] = r
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(steps=args.steps, hidden=args.hidden, seed=args.seed)
