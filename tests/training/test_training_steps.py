"""Unit tests of jfbjax.training: schedule, optimiser, jitted steps, checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jfbjax
from experiments.configs import get_config
from jfbjax.imaging.blur import Blur
from jfbjax.imaging.metrics import psnr
from jfbjax.models import build_model
from jfbjax.training import (
    Checkpoints,
    DataParallel,
    TrainState,
    batch_psnr,
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
    mse_loss,
    predict,
)
from jfbjax.training.steps import _OBJECTIVES, LOSSES, charbonnier_loss, psnr_weighted_mse


class _Rig:
    """One model and one compiled train step, shared by the tests of this file."""

    def __init__(self, steps=5):
        self.config = config = get_config("smoke")
        config.steps = steps
        self.blur = Blur(kernel_size=config.blur.kernel_size, sigma=config.blur.sigma)
        self.tx = make_optimizer(config.optim, steps)
        self.dp = DataParallel.create()
        self.graphdef, _ = self.fresh_state()
        schedule = make_schedule(config.optim, steps)
        self.step = make_train_step(
            self.graphdef, self.tx, self.blur, config.noise_std, self.dp, schedule
        )

    def fresh_state(self):
        model = build_model(self.config, self.blur, nnx.Rngs(0))
        graphdef, state = create_train_state(model, self.tx, jax.random.PRNGKey(0))
        return graphdef, self.dp.replicate(state)


@pytest.fixture(scope="module")
def rig():
    return _Rig()


def _batch(seed, n=4, size=16):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _host(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def test_schedules():
    c = get_config("smoke").optim
    c.lr, c.warmup = 1e-3, 4
    c.schedule = "constant"
    s = make_schedule(c, 20)
    np.testing.assert_allclose([s(0), s(2), s(4), s(19)], [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
    c.schedule = "cosine"
    s = make_schedule(c, 20)
    np.testing.assert_allclose([s(0), s(4), s(12)], [0.0, 1e-3, 5e-4], rtol=1e-5)
    assert float(s(20)) == pytest.approx(0.0, abs=1e-9)
    c.schedule = "linear"
    with pytest.raises(ValueError, match="cosine"):
        make_schedule(c, 20)
    c.schedule, c.warmup = "cosine", 20
    with pytest.raises(ValueError, match="warmup"):
        make_schedule(c, 20)


def test_optimizer_is_clipped_adam():
    c = get_config("smoke").optim
    c.lr, c.warmup, c.schedule, c.grad_clip, c.weight_decay = 0.1, 0, "constant", 0.5, 0.0
    params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
    reference = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.1))
    tx = make_optimizer(c, 10)
    s_ref, s = reference.init(params), tx.init(params)
    for g in ([30.0, 0.0, -1.0], [0.1, 0.2, 0.0]):  # one clipped, one not
        grads = {"a": jnp.array(g), "b": jnp.array([0.0, 40.0 * g[0]])}
        u_ref, s_ref = reference.update(grads, s_ref, params)
        u, s = tx.update(grads, s, params)
        jax.tree.map(np.testing.assert_allclose, u, u_ref)
    c.grad_clip, c.weight_decay = 0.0, 0.1  # AdamW shrinks a parameter with zero gradient
    tx = make_optimizer(c, 10)
    p = {"w": jnp.ones(2)}
    u, _ = tx.update({"w": jnp.zeros(2)}, tx.init(p), p)
    np.testing.assert_allclose(u["w"], -0.1 * 0.1 * np.ones(2), rtol=1e-6)


def test_loss_and_psnr():
    x = jnp.zeros((2, 4, 4, 3))
    y = x.at[0].set(0.1).at[1].set(0.2)
    assert float(mse_loss(y, x)) == pytest.approx((0.01 + 0.04) / 2)
    expected = np.mean([10 * np.log10(4 / 0.01), 10 * np.log10(4 / 0.04)])
    assert float(batch_psnr(y, x)) == pytest.approx(expected, rel=1e-5)
    standard = psnr(y, x, convention="standard")  # the metric the evaluation reports
    assert float(batch_psnr(y, x)) == pytest.approx(float(jnp.mean(standard)), rel=1e-5)


def test_psnr_weighted_mse_is_the_mse_with_the_gradient_of_the_mean_psnr():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 3)))
    # images with very different errors: plain MSE is dominated by the last one
    scale = jnp.asarray([0.01, 0.05, 0.3])[:, None, None, None]
    y = x + jnp.asarray(rng.normal(size=x.shape)) * scale
    with jax.enable_x64(True):
        x64, y64 = x.astype(jnp.float64), y.astype(jnp.float64)
        m_bar = float(mse_loss(y64, x64))
        assert float(psnr_weighted_mse(y64, x64)) == pytest.approx(m_bar, rel=1e-12)
        g = jax.grad(psnr_weighted_mse)(y64, x64)
        g_psnr = jax.grad(batch_psnr)(y64, x64)  # mean of 10 log10(4 / m_i)
        np.testing.assert_allclose(g, -np.log(10.0) / 10.0 * m_bar * g_psnr, rtol=1e-10, atol=0)
        # not the MSE's direction when the errors differ ...
        g_mse = np.ravel(jax.grad(mse_loss)(y64, x64))
        cos = float(np.dot(np.ravel(g), g_mse) / np.linalg.norm(g) / np.linalg.norm(g_mse))
        assert cos < 0.9
        # ... and exactly it when every image has the same error
        same = x64 + 0.1 * jnp.sign(jnp.asarray(rng.normal(size=x.shape)))
        np.testing.assert_allclose(
            jax.grad(psnr_weighted_mse)(same, x64), jax.grad(mse_loss)(same, x64), rtol=1e-12
        )


def test_charbonnier_loss_is_a_smoothed_l1(x64):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 4, 4, 3)))
    r = jnp.asarray(rng.normal(size=x.shape)) * 0.1
    eps = 2e-3
    expected = np.mean(np.sqrt(np.asarray(r) ** 2 + eps**2) - eps)
    assert float(charbonnier_loss(x + r, x)) == pytest.approx(expected, rel=1e-12)
    assert float(charbonnier_loss(x, x)) == 0.0
    # the per-pixel gradient is r / sqrt(r^2 + eps^2): bounded by 1 / n, sign(r) / n for |r| >> eps
    g = np.asarray(jax.grad(charbonnier_loss)(x + r, x)) * r.size
    np.testing.assert_allclose(g, np.asarray(r) / np.sqrt(np.asarray(r) ** 2 + eps**2), rtol=1e-12)
    assert np.all(np.abs(g) < 1)
    big = np.abs(np.asarray(r)) > 100 * eps
    np.testing.assert_allclose(g[big], np.sign(np.asarray(r))[big], atol=1e-3)
    # quadratic, r^2 / (2 eps), for |r| << eps
    tiny = x + 1e-6
    assert float(charbonnier_loss(tiny, x)) == pytest.approx(1e-12 / (2 * eps), rel=1e-5)
    assert set(_OBJECTIVES) == set(LOSSES)


def test_train_step_minimises_the_configured_loss(rig):
    """loss="psnr" moves the parameters along the inverse-MSE-weighted gradient,
    and reports the same MSE as the default step does from the same state."""
    sgd = optax.sgd(1.0)  # the update is the gradient (Adam's first step is its sign)
    clean = _batch(3)
    clean[0] = 0.0  # a flat image: small error, large weight under the PSNR loss
    results = []
    for loss in ("mse", "psnr"):
        model = build_model(rig.config, rig.blur, nnx.Rngs(0))
        graphdef, state = create_train_state(model, sgd, jax.random.PRNGKey(0))
        step = make_train_step(graphdef, sgd, rig.blur, rig.config.noise_std, rig.dp, loss=loss)
        new, metrics = step(rig.dp.replicate(state), rig.dp.shard_batch(clean))
        results.append((float(metrics["loss"]), _host(new.params)))
    (loss_mse, p_mse), (loss_psnr, p_psnr) = results
    assert loss_psnr == pytest.approx(loss_mse, rel=1e-6)
    differs = jax.tree.map(lambda a, b: not np.allclose(a, b, rtol=1e-6, atol=0), p_mse, p_psnr)
    assert any(jax.tree.leaves(differs))


def test_train_step_refuses_an_unknown_loss(rig):
    with pytest.raises(ValueError, match="loss must be one of"):
        make_train_step(rig.graphdef, rig.tx, rig.blur, 0.01, rig.dp, loss="l1")


def test_create_train_state_checks_the_key(rig):
    model = build_model(rig.config, rig.blur, nnx.Rngs(0))
    with pytest.raises(TypeError, match="PRNGKey"):
        create_train_state(model, rig.tx, jax.random.key(0))


def test_train_step_compiles_once_and_learns(rig):
    _, state = rig.fresh_state()
    dp, step = rig.dp, rig.step
    before = _host(state.params)
    losses = []
    for i in range(4):
        state, metrics = step(state, dp.shard_batch(_batch(i)))
        losses.append(float(metrics["loss"]))
        assert float(metrics["finite"]) == 1.0
        assert 0.0 <= float(metrics["converged"]) <= 1.0
        assert 1 <= float(metrics["iterations"]) <= float(metrics["max_iterations"])
        assert float(metrics["grad_norm"]) > 0
    assert step.traces == 1  # one compilation for every test of this file
    assert int(state.step) == 4
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, state.params)
    assert all(jax.tree.leaves(changed))
    assert np.all(np.isfinite(losses))


def test_train_step_noise_depends_on_step_not_history(rig):
    """Two states at the same step with the same params and key see the same noise."""
    _, state = rig.fresh_state()
    dp, step = rig.dp, rig.step
    snapshot = _host(state)
    s1, m1 = step(state, dp.shard_batch(_batch(0)))
    s2, m2 = step(dp.replicate(jax.tree.map(jnp.asarray, snapshot)), dp.shard_batch(_batch(0)))
    assert float(m1["loss"]) == float(m2["loss"])
    jax.tree.map(np.testing.assert_array_equal, _host(s1.params), _host(s2.params))
    # A different step index draws different noise, so the loss changes.
    moved = snapshot._replace(step=np.int32(7))
    _, m3 = step(dp.replicate(jax.tree.map(jnp.asarray, moved)), dp.shard_batch(_batch(0)))
    assert float(m3["loss"]) != float(m1["loss"])


def test_train_step_skips_a_non_finite_update(rig):
    _, state = rig.fresh_state()
    dp, step = rig.dp, rig.step
    state, _ = step(state, dp.shard_batch(_batch(0)))
    before = _host(state)
    bad = _batch(1)
    bad[0, 3, 3, 0] = np.nan
    after, metrics = step(state, dp.shard_batch(bad))
    assert float(metrics["finite"]) == 0.0
    assert not np.isfinite(float(metrics["loss"]))
    jax.tree.map(np.testing.assert_array_equal, before, _host(after))


def test_eval_step_pads_and_compiles_once(rig):
    graphdef, state = rig.fresh_state()
    config, dp = rig.config, rig.dp
    eval_step = make_eval_step(graphdef, dp)
    d = _batch(3, n=7)
    x_hat, iters, status = predict(eval_step, state.params, state.rest, d, 4, dp)
    assert x_hat.shape == d.shape and iters.shape == (7,) and status.shape == (7,)
    assert eval_step.traces == 1
    assert np.all(iters <= config.solver.max_iter)
    assert set(np.unique(status)) <= {int(jfbjax.CONVERGED), int(jfbjax.MAX_ITER)}
    # Padding does not change the reconstructions: the last 3 alone give the same output.
    x_tail, _, _ = predict(eval_step, state.params, state.rest, d[4:], 4, dp)
    np.testing.assert_allclose(x_tail, x_hat[4:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="eval_batch_size"):
        DataParallel.create(jax.devices()[:1]).check_batch_size(0, "eval_batch_size")


def test_checkpoints_round_trip_and_refuse_nan(rig, tmp_path):
    _, state = rig.fresh_state()
    dp, step = rig.dp, rig.step
    state, _ = step(state, dp.shard_batch(_batch(0)))
    ckpts = Checkpoints(tmp_path / "ckpt")
    assert ckpts.restore_latest(state) is None
    ckpts.save_latest(state)
    ckpts.save_best(state, {"val/psnr_standard": 20.0})
    restored = ckpts.restore_latest(state)
    assert isinstance(restored, TrainState)
    jax.tree.map(np.testing.assert_array_equal, _host(state), _host(restored))
    poisoned = state._replace(
        step=state.step + 1, params=jax.tree.map(lambda x: x * jnp.nan, state.params)
    )
    with pytest.raises(FloatingPointError, match="refusing to checkpoint step 2"):
        ckpts.save_latest(poisoned)
    assert ckpts.latest_step() == 1
    jax.tree.map(np.testing.assert_array_equal, _host(state), _host(ckpts.restore_latest(state)))
    ckpts.close()
