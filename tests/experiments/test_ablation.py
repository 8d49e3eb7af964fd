"""experiments.ablation: the lever registry, configs built from it, a smoke ablation end to end."""

import json
import os

import pytest

from experiments import ablation, compare
from jfbjax.training.records import config_diff, training_diff


def test_every_lever_changes_only_what_it_names():
    keys = [lv.key for lv in ablation.LEVERS]
    assert len(keys) == len(set(keys)) and keys[0] == "base"
    base = ablation.ablation_config("cpu", ablation.LEVERS[0], 0).to_dict()
    assert base["model"]["family"] == "degrad" and base["model"]["start"] == "adjoint"
    assert base["contraction"]["spectral_weight"] == 0 and base["steps"] == 250
    for lever in ablation.LEVERS[1:]:
        c = ablation.ablation_config("cpu", lever, 1)
        assert c.seed == 1
        changed = {d.split(":")[0] for d in config_diff(base, c.to_dict())}
        named = {o.split("=")[0] for o in lever.overrides} | {"seed"}
        assert changed <= named, (lever.key, changed - named)


def test_the_cpu_default_is_the_ablation_row_it_names():
    from experiments.configs import get_config

    levers = {lv.key: lv for lv in ablation.LEVERS}
    chosen = ablation.ablation_config("cpu", levers[ablation.DEFAULT_LEVER], 0).to_dict()
    # the same training; the ablation leaves out the report-only self-ensemble
    assert training_diff(chosen, get_config("cpu").to_dict()) == []
    assert config_diff(chosen, get_config("cpu").to_dict()) == ["self_ensemble: False -> True"]
    # a run scored on another schedule trained the same model (reused, not retrained) ...
    rescheduled = {**chosen, "eval_every": chosen["eval_every"] + 1}
    assert config_diff(chosen, rescheduled) and training_diff(chosen, rescheduled) == []
    # ... a run with another training cap did not
    capped = {**chosen, "solver": {**chosen["solver"], "train_max_iter": 7}}
    assert training_diff(chosen, capped) == ["solver.train_max_iter: 30 -> 7"]


def test_smoke_ablation_end_to_end(tmp_path):
    out = tmp_path / "abl"
    argv = ["--preset", "smoke_ablation", "--out", str(out), "--seeds", "0"]
    argv += ["--set", "steps=2", "--set", "optim.warmup=1"]
    table = compare.run([*argv, "--levers", "base", "spectral"])
    rows = {r["key"]: r for r in table["rows"]}
    assert set(rows) == {"base", "spectral"}
    for r in rows.values():
        assert r["seeds"] == [0] and r["psnr_standard"] > 0 and r["val_psnr_standard"] > 0
        assert 0 < r["contraction_mean"] <= r["contraction_max"]
        assert 0 < r["val_contraction_max"] < 2
        assert r["ms_per_step"] > 0 and -1 <= r["cos_jfb_ift"] <= 1
    assert table["header"]["tv_psnr_standard"] > 0
    with open(out / "table.md") as f:
        md = f.read()
    assert (
        "spectral penalty" in md and "contraction mean / max" in md and "val contraction max" in md
    )
    with open(out / "runs" / "spectral" / "seed0" / "config.json") as f:
        assert json.load(f)["contraction"]["spectral_weight"] == 1.0
    # A second call reuses the finished runs; --skip_missing tabulates without training.
    again = ablation.run([*argv[2:], "--preset", "smoke", "--skip_missing"])
    assert [r["key"] for r in again["rows"]] == ["base", "spectral"]
    assert os.path.exists(out / "table.json")
    with pytest.raises(ValueError, match="unknown levers"):
        ablation.run(["--preset", "smoke", "--out", str(out), "--levers", "nope"])
    assert ablation.main(["--preset", "smoke", "--out", str(out), "--levers", "nope"]) == 2
