"""benchmarks/tv_self_ensemble.py on the smoke preset's tiny images."""

import json

import pytest

from benchmarks import tv_self_ensemble


def test_quick_run_tunes_both_forms_on_val(tmp_path):
    result = tv_self_ensemble.run(["--quick", "--weights", "1e-3,1e-2", "--out", str(tmp_path)])
    assert [r["method"] for r in result["rows"]] == ["TV", "TV x8"]
    tuning = result["tuning"]
    assert len(tuning) == 4
    for row in result["rows"]:
        mine = [t for t in tuning if t["method"] == row["method"]]
        assert row["val_psnr"] == max(t["val_psnr"] for t in mine)  # tuned on val
        assert row["weight"] in (1e-3, 1e-2) and 0 < row["test_ssim"] <= 1
    # the forward differences are not equivariant: the average is another estimator
    assert tuning[0]["val_psnr"] != tuning[2]["val_psnr"]
    (md,) = tmp_path.glob("tv_self_ensemble_*_quick.md")
    assert "| TV x8 |" in md.read_text()
    saved = json.loads(next(tmp_path.glob("tv_self_ensemble_*_quick.json")).read_text())
    assert saved["rows"] == result["rows"]


def test_bad_weights_exit(tmp_path):
    with pytest.raises(SystemExit):
        tv_self_ensemble.run(["--quick", "--weights", "0,1e-3", "--out", str(tmp_path)])
