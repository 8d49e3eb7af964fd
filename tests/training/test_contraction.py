"""Contraction penalties, factors, adjoint statistics and denoiser pretraining."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jfbjax
from jfbjax.diagnostics import gradient_alignment
from jfbjax.imaging.blur import Blur
from jfbjax.models import DEGRAD, DnCNN
from jfbjax.solvers import tree_norm
from jfbjax.training.contraction import (
    AdjointStats,
    ContractionPenalty,
    contraction_factors,
    gradient_alignment_report,
    penalty_from_config,
)
from jfbjax.training.pretrain import pretrain_denoiser
from jfbjax.training.steps import mse_loss


def _linear_step(w):
    """T(x; d) = W x (each image flattened), a map with a known Jacobian W."""

    def step(x, d):
        flat = x.reshape(-1, w.shape[0]) if x.ndim == 4 else x.reshape(1, -1)
        return (flat @ w.T).reshape(x.shape) + 0 * d

    return step


def _matrix(key, n, scale=1.0):
    return scale * jax.random.normal(key, (n, n)) / np.sqrt(n)


def test_contraction_factors_are_the_spectral_norms(x64):
    n = 12  # images of shape (2, 2, 3)
    ws = [_matrix(jax.random.PRNGKey(i), n) for i in range(2)]
    x = jnp.ones((1, 2, 2, 3))
    for w in ws:
        got = contraction_factors(_linear_step(w), x, x, iters=200)
        np.testing.assert_allclose(got, [np.linalg.norm(np.asarray(w), 2)], rtol=1e-6)


def test_spectral_penalty_value_and_gradient_match_closed_forms(x64):
    n = 12
    w = _matrix(jax.random.PRNGKey(3), n, 1.5)
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 2, 2, 3))
    pen = ContractionPenalty(spectral_weight=2.0, target=0.5, power_iters=300, samples=2)
    u_, s_, vt_ = np.linalg.svd(np.asarray(w))
    sigma = s_[0]
    assert sigma > 0.5
    value, metrics = pen(_linear_step(w), x, x, jax.random.PRNGKey(0))
    np.testing.assert_allclose(value, 2.0 * (sigma - 0.5) ** 2, rtol=1e-8)
    np.testing.assert_allclose(metrics["spectral"], sigma, rtol=1e-8)
    # d sigma / d W = u1 v1^T: the penalty's gradient is 2 * 2 (sigma - 0.5) u1 v1^T.
    grad = jax.grad(lambda w: pen(_linear_step(w), x, x, jax.random.PRNGKey(0))[0])(w)
    expected = 4.0 * (sigma - 0.5) * np.outer(u_[:, 0], vt_[0])
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-10)
    # Below the target the penalty and its gradient vanish.
    low = ContractionPenalty(spectral_weight=2.0, target=sigma + 0.1, power_iters=50)
    assert float(low(_linear_step(w), x, x, jax.random.PRNGKey(0))[0]) == 0.0


def test_jacobian_penalty_is_hutchinson_with_exact_gradient(x64):
    n = 12
    w = _matrix(jax.random.PRNGKey(5), n)
    x = jnp.zeros((3, 2, 2, 3))
    pen = ContractionPenalty(jac_weight=0.5, samples=3)
    key = jax.random.PRNGKey(7)
    value, metrics = pen(_linear_step(w), x, x, key)
    # The same Gaussian probe, by hand: ||W^T eps||^2 / (number of entries).
    eps = jax.random.normal(jax.random.split(key)[0], x.shape, x.dtype).reshape(3, n)
    expected = np.sum((np.asarray(eps) @ np.asarray(w)) ** 2) / x.size
    np.testing.assert_allclose(metrics["jacobian_fro2"], expected, rtol=1e-10)
    np.testing.assert_allclose(value, 0.5 * expected, rtol=1e-10)
    # Its gradient in W: d/dW sum ||W^T e||^2 = 2 sum e e^T W.
    grad = jax.grad(lambda w: pen(_linear_step(w), x, x, key)[0])(w)
    e = np.asarray(eps)
    np.testing.assert_allclose(grad, 0.5 * 2 * (e.T @ e) @ np.asarray(w) / x.size, rtol=1e-8)
    # Averaged over probes it estimates ||W||_F^2 / n.
    vals = [
        float(pen(_linear_step(w), x, x, jax.random.PRNGKey(k))[1]["jacobian_fro2"])
        for k in range(300)
    ]
    np.testing.assert_allclose(np.mean(vals), np.sum(np.asarray(w) ** 2) / n, rtol=0.05)


def test_penalty_settings_are_checked():
    with pytest.raises(ValueError, match="jac_weight"):
        ContractionPenalty(jac_weight=-1.0)
    with pytest.raises(ValueError, match="power_iters"):
        ContractionPenalty(power_iters=0)
    from experiments.configs import get_config

    config = get_config("smoke")
    assert penalty_from_config(config) is None  # both weights 0: no penalty
    config.contraction.spectral_weight = 1.0
    assert penalty_from_config(config).spectral_weight == 1.0


def test_adjoint_stats_count_converged_ift_solves():
    a = jnp.asarray(0.5)
    f = lambda z, a: a * z + 1.0
    stats = AdjointStats()
    assert stats.fraction is None

    def loss(a, max_iter):
        z, _ = jfbjax.fixed_point(
            f,
            jnp.zeros(3),
            a,
            backward=jfbjax.IFT("picard", tol=1e-8, max_iter=max_iter),
            backward_callback=stats,
        )
        return jnp.sum(z)

    jax.block_until_ready(jax.grad(loss)(a, 200))
    assert stats.total == 1 and stats.fraction == 1.0
    jax.block_until_ready(jax.grad(loss)(a, 2))  # too few iterations to converge
    assert stats.total == 2 and stats.fraction == 0.5
    stats.reset()
    assert stats.total == 0


def test_pretrain_denoiser_learns_to_denoise():
    from jfbjax.data import load_data

    data = load_data("builtin", 16, n_val=2, n_test=2)
    r = DnCNN(3, 3, 8, rngs=nnx.Rngs(0))
    before = jax.tree.map(jnp.copy, nnx.state(r, nnx.Param))
    summary = pretrain_denoiser(r, data.train_batch, steps=60, sigma=0.1, lr=3e-3, batch_size=8)
    after = nnx.state(r, nnx.Param)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )
    assert summary["final_loss"] < summary["first_loss"]
    assert summary["psnr_gain"] > 0  # D = I - R removes some of the noise
    with pytest.raises(ValueError, match="sigma"):
        pretrain_denoiser(r, data.train_batch, steps=1, sigma=0.0)


def test_training_reports_ift_adjoint_convergence_and_penalties(tiny_run):
    """An IFT run records the share of its training adjoints that converged; a
    penalised run logs its penalty; DE-Prox with pretraining trains end to end, its
    training solves capped by solver.train_max_iter and its evaluation's not."""
    _, ift = tiny_run("backward.name=ift", "backward.max_iter=3", steps=2)
    assert ift["ift_adjoint_solves_during_training"] == 2 * 4  # 2 steps of batch 4
    # 3 adjoint iterations cannot reach tol 1e-4 on this map (contraction ~0.998)
    assert ift["ift_adjoint_converged_during_training"] == 0.0
    workdir, pen = tiny_run(
        "contraction.spectral_weight=1.0",
        "contraction.jac_weight=1e-3",
        "model.family=deprox",
        "model.pretrain_steps=3",
        "model.start=cg",
        "model.start_iters=5",
        "solver.train_max_iter=2",
        steps=2,
    )
    assert pen["model"]["name"] == "DE-Prox+JFB" and pen["model"]["pretraining"]["steps"] == 3
    import json

    with open(workdir / "metrics.jsonl") as f:
        train = [json.loads(line) for line in f if "train/loss" in line]
    assert train and all(
        r["train/penalty"] >= 0 and r["train/spectral"] > 0 and r["train/jacobian_fro2"] > 0
        for r in train
    )
    assert max(r["train/max_iterations"] for r in train) == 2
    assert pen["mean_forward_iterations"] > 2  # the test solves run to solver.max_iter (15)


def test_gradient_alignment_report_matches_dense_jfb_and_ift_gradients(x64):
    """The report's cosine and gradient norms against the IFT gradient formed with
    the dense Jacobian of T at the fixed point, (I - J^T)^{-1} by a direct solve."""
    model = DEGRAD(
        Blur(3, 1.0, "zero"),
        DnCNN(3, 3, 8, rngs=nnx.Rngs(0)),
        tikhonov=0.1,
        solver=jfbjax.Anderson(tol=1e-3, max_iter=50),
    )
    last = model.regulariser.layers[-1]
    noise = 0.01 * jax.random.normal(jax.random.PRNGKey(1), last.kernel.shape)
    last.kernel[...] = noise.astype(last.kernel.dtype)
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.float64), state))
    d = jax.random.uniform(jax.random.PRNGKey(2), (2, 6, 6, 3), jnp.float64, -1, 1)
    x = jax.random.uniform(jax.random.PRNGKey(3), (2, 6, 6, 3), jnp.float64, -1, 1)

    report = gradient_alignment_report(
        model, d, x, tol=1e-10, restart=60, cycles=10, forward_tol=1e-12, forward_max_iter=400
    )
    assert report["ift_adjoint_converged"] == 1.0 and report["forward_tol"] == 1e-12

    tight = model.with_solver(solver=jfbjax.Anderson(tol=1e-13, max_iter=400))
    x_star, info = tight(d)
    assert bool(jnp.all(info.status == 0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def T(p, z):
        return nnx.merge(graphdef, p, rest).step(z, d)

    n = x_star.size
    jac = jax.jacobian(lambda z: T(params, z))(x_star).reshape(n, n)
    v = jax.grad(lambda z: mse_loss(z, x))(x_star)
    u = jnp.linalg.solve(jnp.eye(n) - jac.T, v.ravel()).reshape(v.shape)
    _, vjp = jax.vjp(lambda p: T(p, x_star), params)
    g_jfb, g_ift = vjp(v)[0], vjp(u)[0]
    cos = float(gradient_alignment(g_jfb, g_ift))
    assert abs(cos) < 0.999  # the two gradients differ here, so the check can fail
    np.testing.assert_allclose(report["cos_jfb_ift"], cos, rtol=1e-6)
    np.testing.assert_allclose(report["grad_norm_jfb"], tree_norm(g_jfb), rtol=1e-6)
    np.testing.assert_allclose(report["grad_norm_ift"], tree_norm(g_ift), rtol=1e-6)
