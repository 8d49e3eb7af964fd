"""benchmarks.precision_floor on a tiny bfloat16 run."""

import pytest

from benchmarks import precision_floor
from experiments.configs import get_config
from jfbjax.training import train_and_evaluate


def _run(tmp_path_factory, dtype):
    config = get_config("smoke")
    config.steps = 2
    config.optim.warmup = 1
    config.eval_every = 100
    config.model.dtype = dtype
    workdir = tmp_path_factory.mktemp(f"run_{dtype}")
    train_and_evaluate(config, workdir, progress=False)
    return workdir


def test_variants_from_low_precision_to_float32(tmp_path_factory):
    workdir = _run(tmp_path_factory, "bfloat16")
    out = tmp_path_factory.mktemp("floor")
    res = precision_floor.run(["--run", str(workdir), "--n", "2", "--out", str(out)])
    rows = {r["variant"]: r for r in res["rows"]}
    assert list(rows) == list(precision_floor.VARIANTS)
    assert rows["all float32"]["noise_floor"] == 0.0  # the reference itself
    assert 0 < rows["all low precision"]["noise_floor"] < 0.05  # bfloat16: ~2^-9 relative
    # the model's own assignment (first conv float32) is one of the variants
    assert rows["first conv float32"]["noise_floor"] < rows["all low precision"]["noise_floor"]
    for r in rows.values():
        assert 1 <= r["iterations"] <= res["max_iter"] and 0 <= r["converged"] <= 1
    (md,) = out.glob("precision_floor_*.md")
    assert "| first conv float32 |" in md.read_text()
    with pytest.raises(ValueError, match="--n must be"):
        precision_floor.run(["--run", str(workdir), "--n", "0", "--out", str(out)])


def test_a_float32_run_is_refused(tmp_path_factory):
    workdir = _run(tmp_path_factory, "float32")
    with pytest.raises(ValueError, match="computes in float32"):
        precision_floor.run(["--run", str(workdir), "--out", str(workdir)])
