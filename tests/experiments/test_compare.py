"""experiments.compare: run plan, aggregation over seeds, the smoke comparison end to end."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from experiments import compare, compare_report
from experiments.configs import get_config

ALL_METHODS = (
    "blurred adjoint wiener tikhonov tv pnp feedforward unrolled ift neumann2 jfb jfb_pretrained"
).split()


def test_learned_runs_plan():
    settings = compare.compare_settings("cpu")
    runs = compare.learned_runs(get_config("cpu"), settings)
    seeds = sorted({r.seed for r in runs})
    assert seeds == [0, 1]
    for seed in seeds:
        mine = [r for r in runs if r.seed == seed]
        names = [r.method for r in mine]
        # dependencies first: denoisers before PnP uses them, feed-forward before its reuse
        assert names.index("feedforward") < names.index("jfb_pretrained")
        by = {r.method: r.config for r in mine}
        assert all(c.seed == seed and c.steps == 250 for c in by.values())
        assert by["unrolled"].backward.name == "unrolled"
        assert by["unrolled"].solver.tol == 0 and by["unrolled"].solver.max_iter == 10
        assert by["ift"].backward.name == "ift" and by["jfb"].backward.name == "jfb"
        assert "ift_tight" not in by  # opt-in: only when asked for
        assert {k for k in by if k.startswith("neumann")} == {"neumann2", "neumann5"}
        assert by["neumann5"].backward.k == 5
        assert by["feedforward"].model.kind == "feedforward"
        for sigma in settings.denoiser_noise:
            c = by[f"denoiser_{sigma:g}"]
            assert c.blur.kernel_size == 1 and c.noise_std == sigma
        # every learned method has the same budget and optimiser
        assert len({(c.steps, c.batch_size, c.optim.lr) for c in by.values()}) == 1
        assert [r.init_from for r in mine if r.method == "jfb_pretrained"] == ["feedforward"]
        # the feed-forward R is scaled by mu / eta_init, recorded in the run's config
        (pre,) = [r for r in mine if r.method == "jfb_pretrained"]
        assert pre.init_scale == pytest.approx(0.05 / 1.8) == pre.config.init_scale
        assert all(r.init_scale == 1.0 for r in mine if r.method != "jfb_pretrained")
    # ift_tight: the adjoint budget that converges (adjoint_budget_cpu.md), asked for by name
    (t, _) = [r.config for r in compare.learned_runs(get_config("cpu"), settings, {"ift_tight"})]
    assert (t.backward.name, t.solver.tol, t.backward.max_iter) == ("ift", 1e-5, 150)
    # ... and solved to that tolerance in training too: the preset's cap does not apply
    assert get_config("cpu").solver.train_max_iter == 30 and t.solver.train_max_iter == 0


def test_registry_selects_methods_and_what_they_need():
    settings = compare.compare_settings("cpu")
    registry = compare.methods(settings)
    keys = [m.key for m in registry]
    assert len(keys) == len(set(keys)) and len({m.short for m in registry}) == len(keys)
    shown, run = compare.select(registry, None)
    assert "denoiser_0.05" not in [m.key for m in shown] and "denoiser_0.05" in keys
    assert [m.key for m in shown][:5] == ["blurred", "adjoint", "wiener", "tikhonov", "tv"]
    shown, run = compare.select(registry, {"pnp", "jfb_pretrained"})
    assert [m.key for m in shown] == ["pnp", "jfb_pretrained"]
    assert [m.key for m in run] == [
        "denoiser_0.02", "denoiser_0.05", "denoiser_0.1", "pnp", "feedforward", "jfb_pretrained"
    ]  # fmt: skip
    shown, _ = compare.select(registry, {"neumann"})  # a group
    assert [m.key for m in shown] == ["neumann2", "neumann5"]
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['nope'\]"):
        compare.select(registry, {"nope"})
    runs = compare.learned_runs(get_config("cpu"), settings, {"jfb_pretrained"})
    assert [r.method for r in runs] == ["feedforward", "jfb_pretrained"] * 2  # two seeds
    with pytest.raises(ValueError, match="unknown method"):
        compare.run(["--preset", "smoke", "--methods", "nope"])
    # the pretrained row loads a DnCNN into R: refused up front for another regulariser
    ridge = get_config("cpu")
    ridge.model.regulariser = "convex_ridge"
    with pytest.raises(ValueError, match=r"needs model\.regulariser=dncnn"):
        compare.learned_runs(ridge, settings, {"jfb_pretrained"})
    assert [r.method for r in compare.learned_runs(ridge, settings, {"jfb"})] == ["jfb"] * 2


def test_aggregate_over_seeds():
    rows = [
        {"seed": 0, "psnr_standard": 20.0, "psnr_paper": 14.0, "mean_iterations": 10.0},
        {"seed": 1, "psnr_standard": 21.0, "psnr_paper": 15.0, "mean_iterations": 12.0},
    ]
    agg = compare_report.aggregate(rows)
    assert agg["seeds"] == [0, 1]
    assert agg["psnr_standard"] == pytest.approx(20.5) and agg["mean_iterations"] == 11.0
    assert agg["psnr_standard_seed_std"] == pytest.approx(np.std([20.0, 21.0], ddof=1))
    assert agg["psnr_paper_seed_range"] == pytest.approx(1.0)
    single = compare_report.aggregate(rows[:1])
    assert single["psnr_standard_seed_std"] is None


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    argv = ["--preset", "smoke", "--out", str(out), "--seeds", "0", "--steps", "4"]
    argv += ["--no_progress", "--compare_set", "tv_iters=60"]
    # One denoiser (each noise level compiles its own training step), two PnP steps
    # (the step is traced: no new compilation), so the tuning still chooses.
    argv += ["--compare_set", "denoiser_noise=(0.05,)", "--compare_set", "pnp_steps=(1.0,0.5)"]
    # The comparison tunes TV itself; the training runs need neither their own TV
    # baseline nor the GMRES gradient-alignment report (tested in tests/training).
    argv += ["--set", "tv.weights=()", "--set", "contraction.align_images=0"]
    table = compare.run(argv)
    return out, argv, table


def test_smoke_comparison_end_to_end(smoke):
    out, _, table = smoke
    rows = {r["method"]: r for r in table["rows"]}
    assert list(rows) == ALL_METHODS
    for method, row in rows.items():
        assert np.isfinite(row["psnr_standard"]), method
        assert row["psnr_paper"] == pytest.approx(row["psnr_standard"] - 20 * np.log10(2), abs=0.01)
        assert 0 < row["ssim_standard"] <= 1
    for method in ("feedforward", "unrolled", "ift", "neumann2", "jfb", "jfb_pretrained"):
        row = rows[method]
        assert row["seeds"] == [0]
        assert row["train_ms_per_step"] > 0 and row["peak_memory_bytes"] > 0
        assert row["training_time_s"] > 0 and row["infer_ms_per_image"] > 0
    assert rows["unrolled"]["mean_iterations"] == 4  # exactly K at test time too
    assert 0 <= rows["ift"]["ift_adjoint_converged"] <= 1 and "ift_adjoint_converged" in rows["ift"]
    assert 0 < rows["jfb"]["contraction_mean"] <= rows["jfb"]["contraction_max"]
    # backprop through K iterations needs more memory than a one-step JFB backward
    assert rows["unrolled"]["temp_memory_bytes"] > rows["jfb"]["temp_memory_bytes"]
    (tuning,) = [r["tuning"] for r in rows["pnp"]["per_seed"]]
    assert [(t["denoiser_noise"], t["step"]) for t in tuning] == [(0.05, 1.0), (0.05, 0.5)]
    best = max(tuning, key=lambda t: t["val_psnr"])  # chosen on val
    assert (rows["pnp"]["denoiser_noise"], rows["pnp"]["step"]) == (0.05, best["step"])
    assert rows["tv"]["weight"] in (1e-3, 1e-2)
    md = (out / "table.md").read_text()
    for row in table["rows"]:
        assert row["label"] in md
    assert "python -m experiments.compare --preset smoke" in md
    for name in ("table.json", "restorations.png", "psnr_vs_time.png"):
        assert (out / name).stat().st_size > 0
    on_disk = json.loads((out / "table.json").read_text())
    assert [r["method"] for r in on_disk["rows"]] == ALL_METHODS


def test_pretrained_run_starts_from_the_feed_forward_regulariser(smoke):
    out, _, _ = smoke

    def first_loss(method):
        with open(out / "runs" / method / "seed0" / "metrics.jsonl") as f:
            return next(json.loads(line)["train/loss"] for line in f if "train/loss" in line)

    # same seed, data, noise and config apart from the initial R
    assert first_loss("jfb_pretrained") != first_loss("jfb")


def test_rerun_reuses_runs_and_refuses_a_changed_config(smoke):
    out, argv, _ = smoke
    results = out / "runs" / "jfb" / "seed0" / "results.json"
    before = os.path.getmtime(results)
    table = compare.run([*argv, "--methods", "jfb", "tikhonov"])
    assert [r["method"] for r in table["rows"]] == ["tikhonov", "jfb"]
    assert os.path.getmtime(results) == before  # not retrained
    with pytest.raises(
        compare.RunMismatchError, match=r"different configuration \(optim.lr: 0.001 -> 0.5\)"
    ):
        compare.run([*argv, "--methods", "jfb", "--set", "optim.lr=0.5"])


def test_a_run_record_without_checkpoints_is_trained_again(smoke, tmp_path):
    # what a fresh clone holds: results/<preset>/runs without checkpoints
    out, argv, _ = smoke
    argv = [a if a != str(out) else str(tmp_path) for a in argv]
    shutil.copytree(out / "runs" / "jfb", tmp_path / "runs" / "jfb")
    shutil.rmtree(tmp_path / "runs" / "jfb" / "seed0" / "checkpoints")
    skipped = compare.run([*argv, "--skip_missing", "--methods", "jfb"])
    assert skipped["rows"] == []  # not measurable: no checkpoint
    table = compare.run([*argv, "--methods", "jfb"])
    assert [r["method"] for r in table["rows"]] == ["jfb"]
    assert (tmp_path / "runs" / "jfb" / "seed0" / "checkpoints" / "latest").is_dir()
    # a run killed before its first checkpoint: no results, an empty latest/
    # (a regression: it was taken for a resumable run, and the resume failed)
    run = tmp_path / "runs" / "jfb" / "seed0"
    os.remove(run / "results.json")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints" / "latest").mkdir(parents=True)
    table = compare.run([*argv, "--methods", "jfb"])
    assert [r["method"] for r in table["rows"]] == ["jfb"] and (run / "results.json").exists()


def test_skip_missing_tabulates_only_finished_runs(smoke, tmp_path):
    out, argv, _ = smoke
    argv = [a if a != str(out) else str(tmp_path) for a in argv]
    table = compare.run([*argv, "--skip_missing", "--methods", "wiener", "jfb"])
    assert [r["method"] for r in table["rows"]] == ["wiener"]  # nothing trained in tmp_path
    assert not (tmp_path / "runs").exists()


def test_bad_overrides_fail_cleanly(tmp_path, capsys):
    # The command line: exit status 2 and the reason on stderr, nothing trained.
    for flag in ("--set", "--compare_set"):
        assert compare.main(["--preset", "smoke", "--out", str(tmp_path), flag, "nope=1"]) == 2
        assert "error: unknown config field 'nope'" in capsys.readouterr().err
    assert compare.main(["--preset", "smoke", "--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
