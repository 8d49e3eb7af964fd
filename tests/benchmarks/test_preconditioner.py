"""benchmarks/preconditioner.py on tiny sizes: times both forms of P, writes its table."""

import json

import pytest

from benchmarks import preconditioner


def test_quick_run_times_both_forms(tmp_path):
    result = preconditioner.run(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    rows = result["rows"]
    assert [r["op"] for r in rows] == ["P (mu 0.25)", "T(x; d), cpu preset"]
    for r in rows:
        assert r["chebyshev_ms"] > 0 and r["exact_ms"] > 0
        assert r["speed_up"] == pytest.approx(r["chebyshev_ms"] / r["exact_ms"])
    # 10 Chebyshev iterations for mu 0.25 are within 2 q^10 = 1.3e-4 of the inverse
    assert 0 < rows[0]["relative_gap"] < 2e-4 and rows[1]["relative_gap"] is None
    (md,) = tmp_path.glob("preconditioner_*_quick.md")
    assert "| 16 | 2 | P (mu 0.25) |" in md.read_text()
    assert (
        json.loads(next(tmp_path.glob("preconditioner_*_quick.json")).read_text())["rows"] == rows
    )
    assert "training" not in result
    # the cpu preset as it is: lagged P(x) against the fixed exact P, alone and inside T
    lagged = result["lagged"]
    assert [r["op"] for r in lagged] == [
        "P (mu 0.05; lagged: 5 Chebyshev steps)",
        "T(x; d), cpu preset",
    ]
    for r in lagged:
        assert r["lagged_ms"] > 0 and r["fixed_ms"] > 0
        assert r["ratio"] == pytest.approx(r["lagged_ms"] / r["fixed_ms"])
    assert "| lagged / fixed |" in md.read_text()


@pytest.mark.parametrize("flag", [["--batch", "0"], ["--cheb_iters", "0"], ["--train_steps", "1"]])
def test_bad_flags_exit(flag, tmp_path):
    with pytest.raises(SystemExit):
        preconditioner.run(["--quick", *flag, "--out", str(tmp_path)])
