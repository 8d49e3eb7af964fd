"""Multi-host data parallelism, on one machine: two JAX processes on the loopback address.

Each process owns one CPU device and feeds its half of every global batch
(``DataParallel.shard_batch``); gradients are averaged over both through
gloo. The first launch is killed right after its step-2 checkpoint (an
``os._exit`` in the batch hook: as abrupt as a SIGKILL, but at a known step);
``python -m experiments.deblur_celeba --multihost --resume`` then finishes
the run. It must end with the parameters of one process that trained on the
whole batch without interruption, with one set of checkpoints and records.

Marked slow (four process launches, about a minute and a half of a 2-core CI
machine): run it with ``pytest --runslow``. Its parts are covered in CI by
cheaper tests: gradients averaged over sharded devices
(tests/training/test_data_parallel.py, four devices in one process) and a
killed run resumed to the uninterrupted result
(tests/training/test_training_loop.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from jfbjax.training import load_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = ["steps=4", "checkpoint_every=2", "eval_every=100", "optim.warmup=1",
             "tv.weights=()", "contraction.align_images=0"]  # fmt: skip

LAUNCH = textwrap.dedent(
    """
    import os, sys
    from experiments.configs import apply_overrides, get_config
    from experiments.deblur_celeba import init_distributed

    coordinator, pid, out, kill_at = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    init_distributed(coordinator, 2, pid)
    from jfbjax.training import train_and_evaluate

    config = get_config("smoke")
    apply_overrides(config, sys.argv[5:])

    def hook(step, batch):
        if step == kill_at:  # after the checkpoint of step kill_at: die without cleanup
            os._exit(137)
        return batch

    train_and_evaluate(config, out, progress=False, batch_hook=hook, tensorboard=False)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(argv_for, logdir, timeout=240) -> list[tuple[int, str]]:
    """Runs the two processes ``argv_for(0)``, ``argv_for(1)``; returns (exit code, output)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    # One CPU device per process (no device-count flag), compiled as in this process
    # (tests/conftest.py) so that the compilation cache serves both.
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    logs = [open(os.path.join(logdir, f"process{i}.log"), "w+") for i in range(2)]
    procs = [
        subprocess.Popen(argv_for(i), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        for i, log in enumerate(logs)
    ]
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return list(zip(codes, outputs, strict=True))


def _params(workdir):
    state = nnx.state(load_run(workdir, which="latest").model, nnx.Param)
    return jax.tree.leaves(jax.device_get(state))


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_a_kill(tmp_path, tiny_run):
    out = str(tmp_path / "two")
    coordinator = f"127.0.0.1:{_free_port()}"
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    killed = _launch(
        lambda i: [sys.executable, str(script), coordinator, str(i), out, "3", *OVERRIDES],
        tmp_path,
    )
    assert [code for code, _ in killed] == [137, 137], killed
    assert sorted(os.listdir(os.path.join(out, "checkpoints", "latest"))) != []
    assert not os.path.exists(os.path.join(out, "results.json"))

    coordinator = f"127.0.0.1:{_free_port()}"
    resumed = _launch(
        lambda i: [sys.executable, "-m", "experiments.deblur_celeba", "--out", out, "--resume",
                   "--multihost", "--coordinator", coordinator, "--num_processes", "2",
                   "--process_id", str(i), "--no_progress", "--no_tensorboard"],
        tmp_path,
    )  # fmt: skip
    assert [code for code, _ in resumed] == [0, 0], resumed
    assert "resume: continuing from the checkpoint after 2 updates" in resumed[0][1]
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["device"]["process_count"] == 2 and results["device"]["num_devices"] == 2
    assert results["resumed_from_step"] == 2
    # One set of records: process 0 wrote metrics.jsonl, each step's records once.
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    for kind in ("train/loss", "val/psnr_standard"):
        steps = [r["step"] for r in records if kind in r]
        assert len(steps) == len(set(steps)) and max(steps) == 4, (kind, steps)

    # One process, the whole batch, no interruption.
    single, _ = tiny_run(*OVERRIDES[1:], steps=4)
    for a, b in zip(_params(out), _params(single), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
