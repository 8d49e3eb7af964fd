"""``python -m experiments.deblur_celeba``: end to end on the smoke preset, flags, errors."""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys

import pytest

from experiments import deblur_celeba
from experiments.configs import PRESETS, apply_overrides, get_config
from jfbjax.training.records import (
    config_diff,
    config_json,
    read_config_record,
    upgrade_config_record,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, cwd, timeout=240):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, [env.get("PYTHONPATH")])])
    # One CPU device per process (no device-count flag), compiled as in this process
    # (tests/conftest.py) so that the compilation cache serves both.
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    return subprocess.run(
        [sys.executable, "-m", "experiments.deblur_celeba", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


METRIC_KEYS = {"psnr_standard", "psnr_paper", "ssim_standard", "ssim_paper"}


def test_smoke_preset_end_to_end(tmp_path, monkeypatch, capsys):
    # In this process (the flags and errors below run `python -m` in a subprocess).
    monkeypatch.chdir(tmp_path)
    assert deblur_celeba.main(["--preset", "smoke", "--no_progress"]) == 0
    stdout = capsys.readouterr().out
    runs = glob.glob(str(tmp_path / "runs" / "smoke-*"))
    assert len(runs) == 1, runs  # the default --out: a fresh folder under ./runs
    out = runs[0]

    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    for method in ("blurred", "adjoint", "wiener", "tikhonov", "tv", "model"):
        assert METRIC_KEYS <= set(results["test"][method]), method
        assert results["test"][method]["psnr_standard"] == pytest.approx(
            results["test"][method]["psnr_paper"] + 20 * math.log10(2), abs=1e-3
        )
    assert results["test"]["wiener"]["weight"] > 0 and results["test"]["tikhonov"]["weight"] > 0
    assert results["test"]["tv"]["weight"] in (1e-3, 1e-2)  # the smoke grid, tuned on val
    # Contraction of T at the test fixed points, and JFB against a tight IFT gradient.
    c = results["contraction"]
    assert 0 < c["test_mean"] <= c["test_max"] < 2
    assert c["test_max"] == results["test"]["model"]["contraction_max"]
    assert 0 < c["val_mean"] <= c["val_max"] < 2  # the validation images', to choose by
    assert c["val_max"] == results["val"]["model"]["contraction_max"]
    a = results["gradient_alignment"]
    assert -1 <= a["cos_jfb_ift"] <= 1 and a["n_images"] == 2 and a["grad_norm_ift"] > 0
    assert 0 <= a["ift_adjoint_converged"] <= 1
    assert results["ift_adjoint_converged_during_training"] is None  # a JFB run
    # The smoke preset also scores the model averaged over the 8 flips/rotations.
    ensemble = results["self_ensemble"]
    for split in ("val", "test"):
        assert METRIC_KEYS <= set(ensemble[split]) and ensemble[split]["nonfinite_images"] == 0
    plain_iters = results["test"]["model"]["mean_iterations"]
    assert 4 * plain_iters < ensemble["test"]["mean_iterations"] <= 8 * 15  # 8 solves an image
    assert {"mean_iterations", "fraction_converged"} <= set(results["test"]["model"])
    assert 0.0 <= results["fraction_converged"] <= 1.0
    assert results["mean_forward_iterations"] >= 1
    assert results["ms_per_step"] > 0 and results["total_time_s"] > 0
    assert results["timing"]["train_step_traces"] == 1
    # Where the wall time went: the parts are measured separately and fit in the total.
    t = results["timing"]
    parts = ("baselines_s", "eval_s", "final_eval_s", "self_ensemble_s", "alignment_s",
             "figures_s")  # fmt: skip
    assert all(t[k] >= 0 for k in parts) and t["alignment_s"] > 0  # the smoke run aligns
    assert sum(t[k] for k in parts) + t["steps_run"] * t["ms_per_step"] / 1e3 <= t["total_s"]
    assert results["device"]["num_devices"] >= 1 and results["device"]["platform"] == "cpu"
    assert results["config"]["preset"] == "smoke" and results["config"]["steps"] == 20
    assert results["psnr_conventions"]["paper"].startswith("-10 log10(MSE)")

    for name in ("training_curves.png", "restorations.png", "config.json", "metrics.jsonl"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert os.listdir(os.path.join(out, "checkpoints", "latest")) == ["20"]
    assert len(os.listdir(os.path.join(out, "checkpoints", "best"))) == 1
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "train/loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in records if "test/psnr_standard" in r] == [10, 20]
    evals = [r for r in records if "test/psnr_standard" in r]
    assert all("test/contraction_max" in r for r in evals)  # at every evaluation
    # val's, to choose settings by, at the final evaluation only
    assert ["val/contraction_max" in r for r in evals] == [False, True]

    # The summary table names both conventions and where the outputs went.
    for text in (
        "PSNR standard",
        "PSNR paper",
        "SSIM standard",
        "Wiener FFT",
        "Tikhonov CG",
        "TV (w=",
        "DE-GRAD+JFB",
        "DE-GRAD+JFB x8 flips",
        "contraction ||dT/dx|| mean",
    ):
        assert text in stdout, text
    assert f"outputs: {os.path.realpath(out)}" in stdout

    # A second run into the same folder is refused with a one-paragraph message...
    assert deblur_celeba.main(["--preset", "smoke", "--out", out, "--no_progress"]) == 1
    stderr = capsys.readouterr().err
    assert stderr.strip().startswith("error:") and "already holds a run" in stderr
    # ... and --resume of a finished run reloads its config, trains nothing and re-evaluates.
    assert deblur_celeba.main(["--out", out, "--resume", "--no_progress"]) == 0
    with open(os.path.join(out, "results.json")) as f:
        again = json.load(f)
    assert again["resumed_from_step"] == 20 and again["timing"]["steps_run"] == 0
    assert again["config"]["preset"] == "smoke"
    assert again["test"]["model"]["psnr_standard"] == pytest.approx(
        results["test"]["model"]["psnr_standard"], abs=1e-6
    )


def test_help_lists_the_flags_with_defaults(tmp_path):
    proc = _run(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    for flag in (
        "--preset",
        "--data",
        "--data_dir",
        "--backward",
        "--solver",
        "--steps",
        "--batch_size",
        "--image_size",
        "--out",
        "--seed",
        "--resume",
        "--set",
    ):
        assert flag in proc.stdout, flag
    assert "default: cpu" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "optim.nope=1"], "unknown config field 'optim.nope'"),
        (["--set", "optim.lr=fast"], "bad value for 'optim.lr'"),
        (["--resume"], "--resume needs --out"),
    ],
)
def test_bad_flags_fail_cleanly(tmp_path, args, message):
    proc = _run(["--preset", "smoke", *args], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_data_fails_cleanly(tmp_path):
    proc = _run(
        ["--preset", "smoke", "--data", "folder", "--data_dir", str(tmp_path / "nowhere")],
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_flags_map_onto_the_config():
    args = deblur_celeba.parse_args(
        [
            "--preset",
            "smoke",
            "--data",
            "builtin",
            "--backward",
            "ift",
            "--solver",
            "picard",
            "--steps",
            "7",
            "--batch_size",
            "2",
            "--image_size",
            "24",
            "--seed",
            "3",
            "--data_dir",
            "/x",
            "--set",
            "optim.lr=3e-4",
            "--set",
            "model.clamp=true",
            "--set",
            "tikhonov.weights=(0.1, 0.2)",
        ]
    )
    c = deblur_celeba.build_config(args)
    assert (c.data.source, c.backward.name, c.solver.name) == ("builtin", "ift", "picard")
    assert (c.steps, c.batch_size, c.data.image_size, c.seed) == (7, 2, 24, 3)
    assert c.data.data_dir == "/x" and c.optim.lr == 3e-4 and c.model.clamp is True
    assert tuple(c.tikhonov.weights) == (0.1, 0.2)


def test_a_renamed_field_keeps_its_old_spelling_in_overrides_and_run_records(tmp_path):
    c = get_config("smoke")
    with pytest.deprecated_call(match="tikhonov.weights"):
        apply_overrides(c, ["wiener.weights=(0.1, 0.2)"])
    assert tuple(c.tikhonov.weights) == (0.1, 0.2) and "wiener" not in c
    # A config.json written before the rename reads as the same configuration.
    new = config_json(get_config("smoke"))
    old = json.loads(json.dumps(new))
    old["wiener"] = {"weights": old.pop("tikhonov")["weights"]}
    assert config_diff(upgrade_config_record(old), new) == []
    assert "wiener" in old  # the record itself is left as it was
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert read_config_record(str(tmp_path / "config.json")) == new


def test_a_run_recorded_before_a_field_was_added_reads_with_its_old_behaviour():
    new = config_json(get_config("smoke"))
    old = json.loads(json.dumps(new))
    del old["optim"]["loss"]  # runs recorded before optim.loss trained on the MSE
    assert config_diff(upgrade_config_record(old), new) == []
    assert "loss" not in old["optim"]
    psnr = json.loads(json.dumps(new))
    psnr["optim"]["loss"] = "psnr"  # a recorded value is kept, not overwritten
    assert config_diff(upgrade_config_record(psnr), new) == ["optim.loss: 'psnr' -> 'mse'"]


def test_presets():
    for preset in PRESETS:
        c = get_config(preset)
        assert c.preset == preset
        assert c.model.kind == "degrad" and c.backward.name == "jfb"
    paper = get_config("paper")
    assert (paper.data.image_size, paper.model.depth, paper.model.features) == (128, 17, 64)
    assert (paper.blur.kernel_size, paper.blur.sigma, paper.noise_std) == (5, 5.0, 1e-2)
    assert (paper.solver.m, paper.solver.ridge, paper.solver.tol) == (5, 1e-4, 1e-3)
    assert paper.solver.max_iter == 50 and paper.optim.lr == 1e-4 and paper.batch_size == 32
    assert paper.steps == 100 * 8000 // 32
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("gpu")
    c = get_config("smoke")
    apply_overrides(c, ["steps=3", "optim.schedule=constant", "data.n_test=none"])
    assert c.steps == 3 and c.optim.schedule == "constant" and c.data.n_test is None
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(c, ["steps"])
    with pytest.raises(ValueError, match="is a section"):
        apply_overrides(c, ["optim=1"])
