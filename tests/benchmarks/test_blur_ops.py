"""benchmarks/blur_ops.py on tiny sizes: times both blur implementations, writes its table."""

import json

import pytest

from benchmarks import blur_ops
from jfbjax.imaging import blur as blur_module


def test_quick_run_times_both_methods_and_restores_the_threshold(tmp_path):
    result = blur_ops.run(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    assert blur_module.BANDED_MAX == result["meta"]["banded_max"] == 256
    rows = result["rows"]
    assert [r["op"] for r in rows] == [
        "A^T A",
        "P, 10 x A^T A",
        "T(x; d), cpu preset",
        "300 x A^T A in a loop",
    ]
    for r in rows:
        assert r["banded_ms"] > 0 and r["shifted_ms"] > 0
        assert r["shifted_over_banded"] == pytest.approx(r["shifted_ms"] / r["banded_ms"])
    (md,) = tmp_path.glob("blur_ops_*_quick.md")
    assert "| 16 | 2 | A^T A |" in md.read_text()
    assert json.loads(next(tmp_path.glob("blur_ops_*_quick.json")).read_text())["rows"] == rows
    assert "training" not in result  # --quick trains nothing unless asked


@pytest.mark.parametrize("flag", [["--batch", "0"], ["--repeats", "0"], ["--train_steps", "1"]])
def test_bad_flags_exit(flag, tmp_path):
    with pytest.raises(SystemExit):
        blur_ops.run(["--quick", *flag, "--out", str(tmp_path)])
