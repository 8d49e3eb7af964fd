"""benchmarks.backward_cost runs end to end at tiny sizes and its numbers are sane.

Only compiled-memory figures (XLA's memory analysis: deterministic) are
asserted quantitatively; wall times are only checked to exist.
"""

import json

import jax.numpy as jnp
import pytest

from benchmarks import backward_cost, common, harness


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("backward_cost")
    result = backward_cost.run(
        [
            "--quick",
            "--modes",
            "jfb,ift_anderson,unrolled",
            "--iters",
            "2,12",
            "--no_sizes",
            "--no_extras",
            "--no_adjoint_stats",
            "--warm_steps",
            "0",
            "--repeat",
            "1",
            "--batch",
            "3",
            "--out",
            str(out),
        ]
    )
    return out, result


def test_batch_option_sets_the_batch_and_rejects_zero(quick):
    _, result = quick
    assert result["meta"]["batch"] == 3
    with pytest.raises(SystemExit):
        backward_cost.run(["--quick", "--batch", "0"])


def test_writes_tables_json_and_plot(quick):
    out, _ = quick
    (md,) = out.glob("backward_cost_*_quick.md")
    (js,) = out.glob("backward_cost_*_quick.json")
    (png,) = out.glob("backward_cost_*_quick.png")
    assert png.stat().st_size > 1000
    result = json.loads(js.read_text())
    assert {r["mode"] for r in result["iterations"]} == {"jfb", "ift_anderson", "unrolled"}
    assert sorted({r["iters"] for r in result["iterations"]}) == [2, 12]
    assert result["sizes"] == [] and result["adjoint_iterations"] is None
    text = md.read_text()
    assert "| 12 |" in text and "### Memory growth" in text and "| unrolled |" in text


def test_rows_are_complete_and_solves_run_the_stated_iterations(quick):
    _, result = quick
    for r in result["iterations"]:
        for key in ("step_ms", "fwd_ms", "vjp_ms", "vjp_vmap_ms", "compile_s"):
            assert r[key] > 0, (key, r)
        assert r["step_peak_bytes"] > 0 and r["fwd_peak_bytes"] > 0
        assert r["finite"] == 1.0
        # tol=0: every mode does exactly the same forward work
        assert r["mean_iterations"] == r["iters"]


def test_implicit_modes_memory_is_flat_and_unrolled_grows(quick):
    _, result = quick
    slopes = result["summary"]["memory_slopes"]
    for mode in ("jfb", "ift_anderson"):
        assert abs(slopes[mode]["memory_growth"]) <= 0.05, slopes[mode]
    # 2 -> 12 iterations: the scan stores every iteration's residuals
    assert slopes["unrolled"]["memory_growth"] > 1.0, slopes["unrolled"]
    by = {(r["mode"], r["iters"]): r for r in result["iterations"]}
    assert by[("unrolled", 12)]["step_peak_bytes"] > 2 * by[("jfb", 12)]["step_peak_bytes"]
    # the forward solve alone does not grow either
    assert by[("jfb", 2)]["fwd_peak_bytes"] == by[("jfb", 12)]["fwd_peak_bytes"]


def test_step_time_over_jfb_reported(quick):
    _, result = quick
    over = result["summary"]["over_jfb"]
    assert [r["iters"] for r in over] == [2, 12]
    by = {(r["mode"], r["iters"]): r["step_ms"] for r in result["iterations"]}
    for r in over:
        assert r["ift_anderson"] == by[("ift_anderson", r["iters"])] / by[("jfb", r["iters"])]
    (md,) = quick[0].glob("backward_cost_*_quick.md")
    assert "### Step time over JFB's" in md.read_text()


def test_jfb_ratios_reported(quick):
    _, result = quick
    ratios = result["summary"]["jfb_ratios"]
    assert [r["iters"] for r in ratios] == [2, 12]
    assert all(r["jfb_over_fwd_plus_vjp"] > 0 for r in ratios)


def test_anderson_one_hot_write_matches_the_scatter_and_removes_it():
    rows = backward_cost.anderson_write(quick=True, repeat=1, cases=((1e-4, 100),))["rows"]
    assert len(rows) == 1
    for r in rows:
        assert r["max_abs_diff"] <= 1e-6
        assert r["anderson_onehot_iters"] == r["anderson_scatter_iters"]
        assert r["anderson_onehot_scatters"] < r["anderson_scatter_scatters"]
        assert r["anderson_onehot_ms"] > 0 and r["picard_ms"] > 0


def test_machine_name_is_cpu_here():
    assert common.machine_name() == "cpu"


def test_markdown_table_and_command_line():
    lines = common.markdown_table(["a", "b"], [[1, "x"], [2.5, None]])
    assert lines == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | None |"]
    with pytest.raises(ValueError, match="row has 1 cells, header has 2"):
        common.markdown_table(["a", "b"], [[1]])
    assert common.command_line("benchmarks.x", ["--quick", "--seed", "1"]) == (
        "python -m benchmarks.x --quick --seed 1"
    )
    assert "cores" in common.device_description()


def test_fixed_solver_runs_exactly_its_iterations():
    from experiments.configs import get_config

    s = harness.fixed_solver(get_config("cpu"), 7)
    assert (s.tol, s.max_iter, s.m) == (0.0, 7, 5)
    with pytest.raises(ValueError, match="unknown mode"):
        harness.backward_mode("nope", get_config("cpu"))
    x = harness.images(2, 10)
    assert x.shape == (2, 10, 10, 3) and float(jnp.max(jnp.abs(x))) <= 1.0
