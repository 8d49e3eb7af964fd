"""benchmarks.contraction_vs_eta on a tiny trained run: one row per step, the trained
one marked, and each estimate agrees with the dense Jacobian at that step."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import contraction_vs_eta
from jfbjax.data import load_data_from_config
from jfbjax.training import load_run
from jfbjax.training.records import evaluation_images


def test_rows_per_eta_match_the_dense_jacobian(tiny_run, tmp_path):
    workdir, _ = tiny_run()
    argv = ["--run", str(workdir), "--n", "1", "--etas", "0.5", "1.5", "--iters", "60"]
    argv += ["--radius_iters", "150"]
    res = contraction_vs_eta.run([*argv, "--out", str(tmp_path)])
    (js,) = tmp_path.glob("contraction_vs_eta_*.json")
    assert json.loads(js.read_text())["rows"] == res["rows"]
    assert "(trained)" in next(tmp_path.glob("contraction_vs_eta_*.md")).read_text()
    etas = [r["eta"] for r in res["rows"]]
    assert etas == sorted(etas) and len(etas) == 3 and sum(r["trained"] for r in res["rows"]) == 1

    # ||dT/dx||_2 at the (eta-independent) fixed point, from the dense Jacobian.
    run = load_run(workdir)
    d_val, _ = evaluation_images(run.config, load_data_from_config(run.config), run.blur)
    d = jnp.asarray(d_val[:1])
    model = run.model.with_solver("anderson")
    model.solver = type(model.solver)(tol=1e-6, max_iter=300)
    x_star = model(d)[0][0]
    shape = x_star.shape
    for r in res["rows"]:
        m = contraction_vs_eta._with_eta(run.model, r["eta"])
        assert float(m.eta) == pytest.approx(r["eta"], rel=1e-5)
        jac = jax.jacrev(lambda x, m=m: m.step(x.reshape(shape), d[0]).reshape(-1))
        dense = np.asarray(jac(x_star.reshape(-1)))
        exact = np.linalg.norm(dense, 2)
        assert r["max"] <= exact * (1 + 1e-3)
        assert r["max"] == pytest.approx(exact, rel=2e-2)
        if r["trained"]:  # the spectral radius at the trained step, from the eigenvalues
            rho = np.max(np.abs(np.linalg.eigvals(dense)))
            assert res["radius"]["max"] == pytest.approx(rho, rel=2e-2)
            assert res["radius"]["max"] <= r["max"] * (1 + 1e-3)


def test_bad_input_fails_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit):  # checked before any run is loaded
        contraction_vs_eta.run(["--run", str(tmp_path), "--etas", "0", "--out", str(tmp_path)])
    assert "every --etas value > 0" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        contraction_vs_eta.run(["--run", str(tmp_path / "none"), "--out", str(tmp_path)])
