"""benchmarks.contraction_vs_eta on a tiny trained run: one row per step, the trained
one marked, and each estimate agrees with the dense Jacobian at that step."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jfbjax
from benchmarks import contraction_vs_eta
from experiments.configs import get_config
from jfbjax.builders import build_model
from jfbjax.data import load_data_from_config
from jfbjax.training import load_run
from jfbjax.training.records import evaluation_images


def _solve(model, d):
    """``model(d)`` compiled as one program (eagerly it dispatches op by op)."""
    return nnx.jit(lambda m, d: m(d))(model, d)


def test_rows_per_eta_match_the_dense_jacobian(tiny_run, tmp_path):
    workdir, _ = tiny_run()
    argv = ["--run", str(workdir), "--n", "1", "--etas", "0.5", "1.5", "--iters", "60"]
    argv += ["--radius_iters", "150", "--direction_iters", "60"]
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
    x_star = _solve(model, d)[0][0]
    shape = x_star.shape
    for r in res["rows"]:
        m = contraction_vs_eta._with_eta(run.model, r["eta"])
        assert float(m.eta) == pytest.approx(r["eta"], rel=1e-5)
        jac = jax.jacrev(lambda x, m=m: m.step(x.reshape(shape), d[0]).reshape(-1))
        dense = np.asarray(jax.jit(jac)(x_star.reshape(-1)))
        exact = np.linalg.norm(dense, 2)
        assert r["max"] <= exact * (1 + 1e-3)
        assert r["max"] == pytest.approx(exact, rel=2e-2)
        if r["trained"]:  # the spectral radius at the trained step, from the eigenvalues
            rho = np.max(np.abs(np.linalg.eigvals(dense)))
            assert res["radius"]["max"] == pytest.approx(rho, rel=2e-2)
            assert res["radius"]["max"] <= r["max"] * (1 + 1e-3)
            # the least-contracted direction's gain is the same largest singular value
            per = res["direction"]["per_image"]
            assert per["sigma"][0] == pytest.approx(exact, rel=2e-2)
            # <w, J w> = 1 - the sum of the four curvature parts (checked on a map with
            # every part below)
            parts = sum(per[f"c_{k}"][0] for k in ("data", "tv", "tik", "R"))
            assert 1 - parts == pytest.approx(per["alignment"][0] * per["sigma"][0], abs=2e-3)
    assert "least-contracted direction" in next(tmp_path.glob("*.md")).read_text()
    side = d.shape[1]  # 16: 144 inner pixels of 256, 1 - pi / 16 of the frequencies high
    assert res["direction"]["uniform_border"] == pytest.approx(112 / 256)
    assert res["direction"]["white_high_freq"] == pytest.approx(1 - np.pi / 16, abs=0.03)
    assert side == 16


def test_curvature_parts_add_up_to_the_dense_jacobian(tiny_run):
    # The tiny run's model with a Tikhonov and a smoothed-TV term and the lagged-TV
    # preconditioner switched on, solved tightly again: at its fixed point
    # <w, J w> = |w|^2 - (c_data + c_tv + c_tik + c_R) for any w.
    workdir, _ = tiny_run()
    run = load_run(workdir)
    d_val, _ = evaluation_images(run.config, load_data_from_config(run.config), run.blur)
    model = run.model.with_solver(jfbjax.Anderson(tol=1e-7, max_iter=500))
    model.tikhonov, model.tv_weight, model.tv_eps = 0.01, 1e-3, 0.1
    model.precond, model.precond_tv, model.precond_iters = 0.1, True, 5
    d = jnp.asarray(d_val[:1, :8, :8])  # an 8x8 corner: a 192 x 192 dense Jacobian
    x_star, info = _solve(model, d)
    assert int(info.status[0]) == int(jfbjax.CONVERGED)
    x, d0 = x_star[0], d[0]
    w = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    parts = jax.jit(lambda x, d0, w: contraction_vs_eta.curvature_parts(model, x, d0, w))(x, d0, w)
    jac = jax.jit(jax.jacrev(lambda v: model.step(v.reshape(x.shape), d0).reshape(-1)))
    wjw = float(w.reshape(-1) @ np.asarray(jac(x.reshape(-1))) @ w.reshape(-1))
    c = {k: float(parts[f"c_{k}"]) for k in ("data", "tv", "tik", "R")}
    # each part is large enough to be missed at the tolerance below
    assert min(abs(v) for v in c.values()) > 3e-3 * float(jnp.vdot(w, w)), c
    assert float(jnp.vdot(w, w)) - sum(c.values()) == pytest.approx(wjw, rel=1e-3)
    assert c["data"] > 0 and c["tik"] > 0 and c["tv"] > 0
    # DE-Prox's step is not a preconditioned gradient step: refused, not mis-split
    config = get_config("smoke")
    config.model.family = "deprox"
    with pytest.raises(ValueError, match="a DEGRAD map"):
        contraction_vs_eta.curvature_parts(build_model(config, run.blur, nnx.Rngs(0)), x, d0, w)


@pytest.mark.parametrize(
    "gain, pattern, alignment, high_freq",
    [(1.1, "checkerboard", 1.0, 1.0), (-1.3, "constant", -1.0, 0.0)],
)
def test_top_direction_of_a_rank_one_map(gain, pattern, alignment, high_freq):
    # J = 0.2 I + gain u u^T: u is the top singular direction, ||J u|| = |0.2 + gain|,
    # <u, J u> has gain's sign; a checkerboard lives at the highest frequency, a constant
    # at zero; u has equal magnitude everywhere, so the 2-pixel border of a 16x16 image
    # holds (256 - 144) / 256 of its energy.
    i, j = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    u = ((-1.0) ** (i + j) if pattern == "checkerboard" else np.ones((16, 16)))[..., None]
    u = jnp.asarray(np.repeat(u, 3, -1) / np.sqrt(16 * 16 * 3), jnp.float32)
    step = lambda x, d: 0.2 * x + gain * jnp.vdot(u, x) * u + d
    x = jnp.zeros_like(u)
    out = contraction_vs_eta.top_direction(step, x, x, 40, jax.random.PRNGKey(0))
    assert float(out["sigma"]) == pytest.approx(abs(0.2 + gain), rel=1e-4)
    assert float(out["alignment"]) == pytest.approx(alignment, abs=1e-4)
    assert float(out["high_freq"]) == pytest.approx(high_freq, abs=1e-4)
    assert float(out["border"]) == pytest.approx(112 / 256, abs=1e-4)


def test_bad_input_fails_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit):  # checked before any run is loaded
        contraction_vs_eta.run(["--run", str(tmp_path), "--etas", "0", "--out", str(tmp_path)])
    assert "every --etas value > 0" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        contraction_vs_eta.run(["--run", str(tmp_path / "none"), "--out", str(tmp_path)])
