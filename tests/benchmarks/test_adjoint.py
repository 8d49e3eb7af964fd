"""benchmarks.adjoint on a tiny trained run: every field is there and the
contraction estimates agree with the dense Jacobian."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import adjoint
from jfbjax.training import load_run


@pytest.fixture(scope="module")
def result(tiny_run, tmp_path_factory):
    workdir, _ = tiny_run()
    out = tmp_path_factory.mktemp("adjoint")
    argv = ["--run", str(workdir), "--n", "2", "--iters", "60", "--fwd_iters", "40"]
    return workdir, out, adjoint.run([*argv, "--out", str(out)])


def test_writes_a_table_with_every_field(result):
    _, out, res = result
    (md,) = out.glob("adjoint_*.md")
    (js,) = out.glob("adjoint_*.json")
    assert json.loads(js.read_text())["rows"] == res["rows"]
    assert len(res["rows"]) == 2 and "| 1 |" in md.read_text()
    for r in res["rows"]:
        assert 0 < r["norm_dT"] < 1.5 and 0 < r["norm_data_step"] <= 1 + 1e-4
        for name in ("picard", "anderson"):
            assert r[f"{name}_min"] <= r[f"{name}_res10"]
        assert np.isfinite(r["gmres_residual"]) and np.isfinite(r["fwd_residual"])
        if r["norm_dT"] < 1:
            est = np.log(res["meta"]["tol"]) / np.log(r["norm_dT"])
            assert r["picard_iters_to_tol_estimate"] == pytest.approx(est)


def test_data_step_norm_matches_the_dense_jacobian(result):
    # ||I - eta A^T A||_2 from the dense matrix, against the power-iteration estimate
    workdir, _, res = result
    run = load_run(workdir)
    eta = res["meta"]["eta"]
    size = int(run.config.data.image_size)
    shape = (size, size, 3)
    n = int(np.prod(shape))

    def data_step(x):
        x = x.reshape(shape)
        return (x - eta * run.blur.adjoint(run.blur.apply(x))).reshape(-1)

    dense = np.asarray(jax.jacfwd(data_step)(jnp.zeros(n)))
    exact = np.linalg.norm(dense, 2)
    for r in res["rows"]:
        assert r["norm_data_step"] <= exact * (1 + 1e-4)
        assert r["norm_data_step"] == pytest.approx(exact, rel=2e-3)


def test_rejects_bad_arguments(result):
    workdir, out, _ = result
    with pytest.raises(SystemExit):
        adjoint.run(["--run", str(workdir), "--n", "0", "--out", str(out)])
    with pytest.raises(ValueError, match="validation images"):
        adjoint.run(["--run", str(workdir), "--n", "100000", "--out", str(out)])


def test_adjoint_budget_counts_converged_solves(result, tmp_path):
    from benchmarks import adjoint_budget

    workdir, _, _ = result
    argv = ["--run", str(workdir), "--batches", "1", "--fwd_tol", "1e-3", "--out", str(tmp_path)]
    res = adjoint_budget.run([*argv, "--adjoint", "anderson:1", "anderson:40"])
    few, many = res["rows"]
    batch = load_run(workdir).config.batch_size
    assert few["total"] == many["total"] == batch  # one adjoint solve per sample
    assert few["converged"] <= many["converged"] and 0 < many["contraction_max"] < 1.5
    assert "anderson (40 iterations)" in (tmp_path / "adjoint_budget_cpu.md").read_text()
    with pytest.raises(SystemExit):
        adjoint_budget.run(["--run", str(workdir), "--adjoint", "nope:3"])
