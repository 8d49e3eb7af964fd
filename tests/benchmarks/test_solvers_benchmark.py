"""The solver benchmark runs end to end on tiny sizes and writes its tables."""

import json

import numpy as np

from benchmarks import solvers


def test_quick_benchmark_writes_tables(tmp_path):
    assert solvers.main(["--quick", "--no_peers", "--repeat", "1", "--max_iter", "100",
                         "--out", str(tmp_path)]) == 0  # fmt: skip
    (md,) = tmp_path.glob("solvers_*_quick.md")
    (js,) = tmp_path.glob("solvers_*_quick.json")
    rows = json.loads(js.read_text())["rows"]
    assert [r["problem"] for r in rows] == ["dense-32 x8", "conv-16 x2", "degrad-16 x2"]
    for r in rows:
        assert r["iters_anderson"] > 0 and r["fwd_ms_anderson"] > 0
        for solver in ("picard", "anderson", "broyden"):
            assert np.isfinite(r[f"relres_{solver}"]), (r["problem"], solver)
            if r["problem"] != "degrad-16 x2":  # the trained map contracts too slowly for 100
                assert r[f"relres_{solver}"] <= 1e-4, (r["problem"], solver)
    # on the trained DE-GRAD map Broyden needs far fewer iterations than Picard
    assert rows[2]["iters_broyden"] < rows[2]["iters_picard"]
    for r in rows[:2]:  # the adjoint converges on these two (not on the trained DE-GRAD map)
        # the implicit modes agree with IFT; JFB is a descent direction
        assert r["cos_to_ift_ift_gmres"] > 0.999 and r["cos_to_ift_unrolled"] > 0.999
        assert r["cos_to_ift_jfb"] > 0
    assert "| dense-32 x8 |" in md.read_text()
