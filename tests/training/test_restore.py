"""load_run: a run folder gives back the trained model, and bad folders fail clearly."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from jfbjax.models import DEGRAD
from jfbjax.training import load_run


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run("checkpoint_every=2", steps=4)


def test_load_run_reproduces_the_final_test_psnr(run_dir):
    workdir, results = run_dir
    run = load_run(workdir, which="latest")
    assert isinstance(run.model, DEGRAD)
    assert run.step == 4 and run.which == "latest"
    assert run.noise_std == pytest.approx(results["config"]["noise_std"])
    # Score the restored model on the run's own test images: same PSNR as results.json.
    from jfbjax.data import load_data_from_config
    from jfbjax.imaging import degrade, psnr

    c = run.config
    data = load_data_from_config(c)
    keys = jax.random.split(jax.random.PRNGKey(c.seed), 3)
    d = degrade(keys[2], data.test, run.blur, run.noise_std)
    x_hat, info = jax.jit(run.model)(d)
    got = float(np.mean(psnr(data.test, x_hat)))
    assert got == pytest.approx(results["test"]["model"]["psnr_standard"], abs=1e-3)
    assert info.iterations.shape == (len(d),)


def test_best_falls_back_to_latest_or_is_used(run_dir):
    workdir, _ = run_dir
    run = load_run(workdir)  # best: the final evaluation was checkpointed
    assert run.which == "best" and run.step == 4


def test_bad_folders_fail_clearly(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid configuration"):
        load_run(tmp_path)
    workdir, _ = run_dir
    (tmp_path / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="which"):
        load_run(workdir, which="first")
    json.loads(open(os.path.join(workdir, "config.json")).read())


def test_readme_load_run_snippet_runs(run_dir):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "load_run(" in b]
    assert blocks, "README lost its load_run snippet"
    workdir, _ = run_dir
    code = re.sub(r'load_run\("[^"]*"', f'load_run("{workdir}"', blocks[0])
    code += "\nimport jax.numpy as jnp\nx_hat, info = deblur(state, jnp.zeros((2, 16, 16, 3)))\n"
    scope = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["x_hat"].shape == (2, 16, 16, 3)


def test_tensorboard_events_mirror_metrics_jsonl(run_dir):
    from jfbjax.training.records import read_tensorboard

    workdir, _ = run_dir
    events = read_tensorboard(os.path.join(workdir, "tensorboard"))
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    final = [r for r in records if "val/psnr_standard" in r][-1]
    for key in ("val/psnr_standard", "test/psnr_standard", "test/contraction_max"):
        step, value = events[key][-1]
        assert step == final["step"] and value == pytest.approx(final[key], rel=1e-6), key
    train = [r for r in records if "train/loss" in r]
    assert [s for s, _ in events["train/loss"]] == [r["step"] for r in train]
    assert "train/lr" in events and "train/iterations" in events
    # restored test images at every evaluation, clean and blurred ones once
    assert [s for s, _ in events["test/restored"]] == [
        r["step"] for r in records if "val/psnr_standard" in r
    ]
    assert len(events["test/clean"]) == 1 and len(events["test/blurred"]) == 1


def test_metrics_log_without_tensorboardx_writes_only_jsonl(tmp_path, monkeypatch):
    import sys

    from jfbjax.training.records import MetricsLog, read_tensorboard

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    log = MetricsLog(str(tmp_path / "m.jsonl"), None, tensorboard=str(tmp_path / "tb"))
    assert not log.tensorboard_active
    log.write({"step": 1, "train/loss": 0.5})
    log.close()
    assert log.read() == [{"step": 1, "train/loss": 0.5}]
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="no TensorBoard event file"):
        read_tensorboard(str(tmp_path / "tb"))
