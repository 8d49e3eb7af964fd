"""benchmarks.alignment on a tiny trained run: one row per setting, and a larger
Krylov space never leaves a larger adjoint residual."""

import json

import numpy as np
import pytest

from benchmarks import alignment


def test_rows_per_setting_and_residual_falls_with_the_krylov_space(tiny_run, tmp_path):
    workdir, _ = tiny_run()
    settings = ["run:4:1:batched:1e-4", "1e-6:16:3:incremental:1e-4"]
    res = alignment.run(
        ["--run", str(workdir), "--n", "2", "--setting", *settings, "--out", str(tmp_path)]
    )
    (md,) = tmp_path.glob("alignment_*.md")
    (js,) = tmp_path.glob("alignment_*.json")
    assert json.loads(js.read_text())["rows"] == json.loads(json.dumps(res["rows"]))
    text = md.read_text()
    assert "Givens" in text and "normal equations" in text and "| 16 x 3 |" in text
    small, large = res["rows"]
    assert [r["n_images"] for r in res["rows"]] == [2, 2] and large["forward_tol"] == 1e-6
    for r in res["rows"]:
        assert -1 - 1e-6 <= r["cos_jfb_ift"] <= 1 + 1e-6 and r["grad_norm_jfb"] > 0
    # Three cycles of GMRES(16) from a tighter fixed point leave a smaller adjoint
    # residual than one cycle of GMRES(4) (which stops far from the tolerance).
    assert small["ift_adjoint_residual_max"] > 1e-4
    assert large["ift_adjoint_residual_max"] < small["ift_adjoint_residual_max"]


@pytest.mark.parametrize("bad", ["1e-5:60:20:qr:1e-4", "1e-5:60:20", "x:60:20:batched:1e-4"])
def test_bad_settings_are_refused(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        alignment.main(["--setting", bad])
    assert exit_.value.code == 2 and "--setting" in capsys.readouterr().err


def test_default_settings_parse_and_end_with_the_reports_default():
    parsed = [alignment._parse_setting(s) for s in alignment.DEFAULT_SETTINGS]
    assert parsed[-2] == {
        "forward_tol": 1e-5,
        "restart": 60,
        "cycles": 20,
        "gmres_method": "incremental",
        "tol": 1e-4,
    }
    assert np.isclose(parsed[0]["tol"], 1e-6) and parsed[0]["forward_tol"] is None
