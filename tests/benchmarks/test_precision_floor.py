"""benchmarks.precision_floor on a tiny bfloat16 run."""

import pytest

from benchmarks import precision_floor


def test_variants_from_low_precision_to_float32(tiny_run, tmp_path_factory):
    workdir, _ = tiny_run("model.dtype=bfloat16")
    out = tmp_path_factory.mktemp("floor")
    res = precision_floor.run(["--run", str(workdir), "--n", "2", "--out", str(out)])
    rows = {r["variant"]: r for r in res["rows"]}
    assert list(rows) == list(precision_floor.VARIANTS)
    assert rows["all float32"]["noise_floor"] == 0.0  # the reference itself
    assert 0 < rows["all low precision"]["noise_floor"] < 0.05  # bfloat16: ~2^-9 relative
    # Every variant with a bfloat16 convolution has a floor of bfloat16's order (which one is
    # lowest depends on the trained weights: on the cpu model, the first conv in float32).
    low = [r["noise_floor"] for v, r in rows.items() if v != "all float32"]
    assert all(0 < f < 0.05 for f in low) and max(low) < 10 * min(low)
    for r in rows.values():
        assert 1 <= r["iterations"] <= res["max_iter"] and 0 <= r["converged"] <= 1
    (md,) = out.glob("precision_floor_*.md")
    assert "| first conv float32 |" in md.read_text()
    with pytest.raises(ValueError, match="--n must be"):
        precision_floor.run(["--run", str(workdir), "--n", "0", "--out", str(out)])


def test_a_float32_run_is_refused(tiny_run):
    workdir, _ = tiny_run("model.dtype=float32")
    with pytest.raises(ValueError, match="computes in float32"):
        precision_floor.run(["--run", str(workdir), "--out", str(workdir)])
