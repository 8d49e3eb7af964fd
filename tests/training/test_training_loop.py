"""train_and_evaluate: outputs, resume equivalence, non-finite stop."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs import get_config
from jfbjax.training import NonFiniteLossError, ResultsExistError, train_and_evaluate
from jfbjax.training.checkpoints import has_checkpoint


def _config(steps=8):
    config = get_config("smoke")
    config.steps = steps
    config.optim.warmup = 1
    config.log_every = 2
    config.eval_every = 100  # only the final evaluation
    config.checkpoint_every = 3
    # What these tests check is the training loop: no TV tuning, alignment report
    # or self-ensemble at the evaluations (tests/experiments cover them).
    config.tv.weights = ()
    config.contraction.align_images = 0
    config.self_ensemble = False
    # Spectral norm adds non-trainable variables (power-iteration vectors) to the
    # state, so resume covers TrainState.rest too.
    config.model.spectral_norm = True
    return config


def _checkpoint(workdir, kind="latest"):
    """(step, state dict) of the only checkpoint in ``workdir/checkpoints/<kind>``."""
    root = os.path.join(workdir, "checkpoints", kind)
    steps = sorted(int(p) for p in os.listdir(root) if p.isdigit())
    assert len(steps) == 1, steps
    state = ocp.StandardCheckpointer().restore(os.path.join(root, str(steps[0]), "default"))
    return steps[0], state


class _Crash(RuntimeError):
    pass


def _crash_at(step_to_crash):
    def hook(step, batch):
        if step == step_to_crash:
            raise _Crash(f"simulated crash before step {step}")
        return batch

    return hook


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    config = _config(steps=8)
    straight = train_and_evaluate(config, tmp_path / "straight", progress=False)

    crashed = tmp_path / "crashed"
    with pytest.raises(_Crash):
        train_and_evaluate(config, crashed, batch_hook=_crash_at(7), progress=False)
    step, _ = _checkpoint(crashed)
    assert step == 6  # checkpoints after 3 and 6 updates; only the newest is kept
    with pytest.raises(ResultsExistError, match="--resume"):
        train_and_evaluate(config, crashed, progress=False)
    resumed = train_and_evaluate(config, crashed, resume=True, progress=False)
    assert resumed["resumed_from_step"] == 6
    assert resumed["timing"]["steps_run"] == 2

    s_step, s_state = _checkpoint(tmp_path / "straight")
    r_step, r_state = _checkpoint(crashed)
    assert s_step == r_step == 8
    assert jax.tree.leaves(s_state["rest"]), "expected non-trainable variables"
    for part in ("params", "rest", "opt_state", "key", "step"):
        jax.tree.map(np.testing.assert_array_equal, r_state[part], s_state[part])
    assert resumed["test"]["model"]["psnr_standard"] == pytest.approx(
        straight["test"]["model"]["psnr_standard"], abs=1e-6
    )

    # The training log of the resumed run has each step once, as the straight run's.
    def train_steps(workdir):
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return [r["step"] for r in map(json.loads, f) if "train/loss" in r]

    assert train_steps(crashed) == train_steps(tmp_path / "straight") == [2, 4, 6, 8]

    # The training clock continues across the crash: the resumed process adds its
    # own time to the total recorded at the checkpoint (step 6).
    with open(os.path.join(crashed, "metrics.jsonl")) as f:
        clock = {r["step"]: r["train_time_s"] for r in map(json.loads, f) if "train_time_s" in r}
    assert sorted(clock) == [2, 4, 6, 8]
    assert clock[2] <= clock[4] <= clock[6] < clock[8]
    assert clock[8] >= clock[6] + resumed["timing"]["first_step_s"]


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_and_evaluate(_config(), tmp_path / "empty", resume=True, progress=False)


def test_pretraining_with_an_injected_measurement_is_refused_before_anything_runs(tmp_path):
    config = _config()
    config.model.inject, config.model.pretrain_steps = True, 3
    with pytest.raises(ValueError, match=r"model\.inject=false"):
        train_and_evaluate(config, tmp_path / "run", progress=False)
    assert not os.path.exists(tmp_path / "run")


def test_a_run_killed_before_its_first_checkpoint_says_so_on_resume(tmp_path):
    # killed before its first step: config, metrics and an empty checkpoints/latest
    with pytest.raises(_Crash):
        train_and_evaluate(_config(), tmp_path / "run", batch_hook=_crash_at(0), progress=False)
    latest = tmp_path / "run" / "checkpoints" / "latest"
    (latest / "3.orbax-checkpoint-tmp-1").mkdir(parents=True)  # an interrupted save
    assert not has_checkpoint(latest)
    with pytest.raises(FileNotFoundError, match="stopped before its first checkpoint"):
        train_and_evaluate(_config(), tmp_path / "run", resume=True, progress=False)
    (latest / "3").mkdir()
    assert has_checkpoint(latest)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(step, batch):
        if step == 4:
            batch = batch.copy()
            batch[1, 2, 2, 1] = np.nan
        return batch

    with pytest.raises(NonFiniteLossError, match="step 4") as err:
        train_and_evaluate(_config(steps=8), tmp_path, batch_hook=poison, progress=False)
    assert err.value.step == 4 and err.value.checkpoint_step == 3
    assert "after 3 updates" in str(err.value) and "--resume" in str(err.value)
    step, state = _checkpoint(tmp_path)
    assert step == 3
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
    assert not os.path.exists(tmp_path / "results.json")


def test_absurd_learning_rate_is_caught_not_saved(tmp_path):
    config = _config(steps=6)
    config.optim.lr = 1e30
    config.optim.grad_clip = 0.0
    config.optim.warmup = 0
    config.optim.schedule = "constant"
    with pytest.raises(NonFiniteLossError, match="non-finite training loss at step"):
        train_and_evaluate(config, tmp_path, progress=False)
    assert not os.path.exists(tmp_path / "results.json")


def test_the_training_cap_only_ever_lowers_the_solver_iterations():
    from flax import nnx

    from jfbjax.builders import blur_from_config, build_model
    from jfbjax.training.loop import train_graphdef

    config = _config()
    model = build_model(config, blur_from_config(config), nnx.Rngs(0))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    assert config.solver.max_iter == 15
    for cap, expected in ((0, 15), (5, 5), (15, 15), (30, 15)):  # 30: an unrolled K stays K
        config.solver.train_max_iter = cap
        train_gd = train_graphdef(config, model)
        trained = nnx.merge(train_gd, params, rest)
        assert trained.solver.max_iter == expected, cap
        assert trained.solver.tol == model.solver.tol  # the rest of the solver is the model's
    assert model.solver.max_iter == 15  # the evaluation graph keeps max_iter
    config.solver.train_max_iter = -1
    with pytest.raises(ValueError, match="train_max_iter must be >= 0"):
        train_and_evaluate(config, "/nonexistent/never-written", progress=False)


def test_an_evaluation_that_is_no_equilibrium_warns_with_the_remedy():
    from jfbjax.training.loop import _equilibrium_warning

    fine = {"fraction_converged": 1.0, "contraction_max": 1.002}
    assert _equilibrium_warning(fine, fine) is None
    assert _equilibrium_warning({}, {}) is None  # nothing measured: nothing to say
    slow = {"fraction_converged": 0.75, "contraction_max": 1.002}
    expands = {"fraction_converged": 1.0, "contraction_max": 5.9}
    text = _equilibrium_warning(slow, expands)
    assert "75% of the val solves converged" in text and "test contraction max 5.90" in text
    assert "contraction.spectral_weight=1.0" in text
    assert "val" not in _equilibrium_warning(fine, expands).split("(")[1].split(")")[0]
    # each consequence is said only when its condition fired
    assert "truncated iterations" in text and "descent guarantee" in text
    assert "truncated iterations" not in _equilibrium_warning(fine, expands)
    assert "descent guarantee" not in _equilibrium_warning(slow, fine)
