"""benchmarks.peers and benchmarks.gpu_paper_scale run at tiny sizes on the CPU."""

import json

import pytest

from benchmarks import gpu_paper_scale, peers


def test_peers_quick_torchdeq_or_a_clear_skip(tmp_path):
    result = peers.run(["--quick", "--only", "torchdeq", "--repeat", "1", "--out", str(tmp_path)])
    (md,) = tmp_path.glob("peers_*_quick.md")
    saved = json.loads(next(tmp_path.glob("peers_*_quick.json")).read_text())
    assert set(saved["rows"]) == set(result["rows"])
    rows = result["rows"]
    # with --only, jfbjax runs just the rows the selected peer is compared with
    assert {"jfbjax_anderson_jfb", "jfbjax_anderson_ift"} <= set(rows)
    assert "jfbjax_picard_jfb" not in rows and "jaxopt_anderson" not in rows
    for r in rows.values():
        assert r["fwd_ms"] > 0 and r["step_ms"] > 0 and r["iterations"] >= 1
        assert r["relres_max"] < 1.0
    text = md.read_text()
    try:
        import torch  # noqa: F401
        import torchdeq  # noqa: F401
    except ImportError:
        assert any(s.startswith("torchdeq: not installed") for s in result["skipped"])
        assert "Skipped: torchdeq: not installed" in text
        return
    # the same map in PyTorch, with the same weights
    assert result["torch_map_rel_err"] < 1e-4
    for name in ("torchdeq_anderson_ift", "torchdeq_anderson_onestep"):
        r = rows[name]
        assert r["fwd_ratio"] > 0 and r["step_ratio"] > 0
        assert r["reference"] == (
            "jfbjax_anderson_ift" if r["grad"] == "ift" else "jfbjax_anderson_jfb"
        )
        assert f"| {name} |" in text


def test_gpu_script_refuses_full_size_on_cpu(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_paper_scale.run([])
    assert e.value.code == 2
    assert "--quick" in capsys.readouterr().err


def test_gpu_script_quick_on_cpu(tmp_path):
    result = gpu_paper_scale.run(
        ["--quick", "--dtypes", "float32", "--warm_steps", "0", "--out", str(tmp_path)]
    )
    (md,) = tmp_path.glob("gpu_paper_scale_cpu_quick.md")
    rows = result["rows"]
    assert [(r["mode"], r["solver"]) for r in rows] == [
        ("jfb", "as trained"),
        ("jfb", "5 iterations"),
        ("ift_anderson", "as trained"),
        ("ift_anderson", "5 iterations"),
    ]
    for r in rows:
        assert r["step_ms"] > 0 and r["images_per_s"] > 0 and r["projected_hours"] > 0
        assert r["step_tflop"] > 0 and r["achieved_tflops"] > 0
        assert r["finite"] == 1.0
    assert rows[1]["forward_iterations"] == 5  # tol=0: exactly the stated iterations
    assert rows[2]["adjoint_iterations"] >= 1
    # more work in IFT's step than in JFB's at the same forward iterations
    assert rows[3]["step_tflop"] > rows[1]["step_tflop"]
    pieces = rows[-1]["flops_pieces"]
    # the counted T is at least the DnCNN's convolutions
    assert pieces["T"]["used"] >= 0.9 * result["analytic_dncnn_flops"]
    assert result["matmul_peak"]["float32_tflops"] > 0
    assert "| float32 | jfb | as trained |" in md.read_text()
