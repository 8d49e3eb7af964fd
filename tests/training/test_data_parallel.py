"""Data parallelism on 4 simulated CPU devices equals the single-device run.

XLA_FLAGS must be set before JAX starts, so the check runs in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np, optax
    from flax import nnx
    from experiments.configs import get_config
    from jfbjax.imaging.blur import Blur
    from jfbjax.models import build_model
    from jfbjax.training import (DataParallel, create_train_state, make_eval_step,
        make_optimizer, make_train_step, predict, train_and_evaluate)

    assert len(jax.devices()) == 4, jax.devices()
    config = get_config("smoke")
    config.batch_size = 8
    blur = Blur(kernel_size=config.blur.kernel_size, sigma=config.blur.sigma)
    # Picard for a fixed number of iterations and plain SGD: only the order of float32
    # sums differs between the layouts (Anderson's least squares and Adam's g / |g| would
    # amplify those rounding differences).
    config.solver.name, config.solver.tol, config.solver.max_iter = "picard", 1e-12, 10
    tx = optax.sgd(0.05)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32) for _ in range(3)]

    def run(dp):
        model = build_model(config, blur, nnx.Rngs(0))
        graphdef, state = create_train_state(model, tx, jax.random.PRNGKey(0))
        state = dp.replicate(state)
        step = make_train_step(graphdef, tx, blur, config.noise_std, dp)
        losses = []
        for b in batches:
            x = dp.shard_batch(b)
            assert x.sharding.spec == ("data",) or tuple(x.sharding.spec) == ("data",)
            state, m = step(state, x)
            losses.append(float(m["loss"]))
        assert step.traces == 1
        for leaf in jax.tree.leaves(state.params):
            assert leaf.sharding.is_fully_replicated
            assert len(leaf.sharding.device_set) == dp.num_devices
        eval_step = make_eval_step(graphdef, dp)
        x_hat, iters, _ = predict(eval_step, state.params, state.rest, batches[0][:6], 4, dp)
        return jax.tree.map(np.asarray, state.params), np.array(losses), x_hat, iters

    one = run(DataParallel.create(jax.devices()[:1]))
    four = run(DataParallel.create())
    print("losses", one[1], four[1])
    np.testing.assert_allclose(four[1], one[1], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 four[0], one[0])
    np.testing.assert_allclose(four[2], one[2], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(four[3], one[3])

    try:
        DataParallel.create().check_batch_size(6)
    except ValueError as e:
        assert "multiple of the number of devices (4" in str(e), e
    else:
        raise AssertionError("batch 6 on 4 devices was accepted")

    # The whole loop on 4 devices (batch 4 and eval batch 4 split 1 per device); the
    # evaluation's extras (TV tuning, alignment report, self-ensemble) are covered on
    # one device by tests/experiments.
    config.batch_size, config.steps = 4, 4
    config.tv.weights, config.contraction.align_images = (), 0
    config.self_ensemble = False
    results = train_and_evaluate(config, sys.argv[1], progress=False)
    assert results["device"]["num_devices"] == 4
    assert results["timing"]["train_step_traces"] == 1
    try:
        config.batch_size = 6
        train_and_evaluate(config, sys.argv[1] + "-bad", progress=False)
    except ValueError as e:
        assert "batch_size=6" in str(e), e
    else:
        raise AssertionError("batch_size 6 on 4 devices was accepted")
    print("OK")
    """
)


def test_four_devices_match_one(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "run")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.strip().endswith("OK")
