"""jfbjax.training.classical: a run's baselines are kept per process, by what they depend on."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.configs import get_config
from jfbjax.imaging import Blur
from jfbjax.training import classical


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4, 12, 12, 3)).astype(np.float32)
    blur = Blur(kernel_size=3, sigma=1.0)
    d = np.asarray(blur.apply(x)) + 0.01 * rng.standard_normal(x.shape).astype(np.float32)
    config = get_config("smoke")
    config.tikhonov.weights = (1e-2, 1e-1)
    config.tv.weights = (1e-2,)
    config.tv.iters = 20
    classical.clear_baseline_cache()
    yield config, blur, (d[:2], x[:2]), (d[2:], x[2:])
    classical.clear_baseline_cache()


def test_baselines_are_computed_once_per_input(problem, monkeypatch):
    config, blur, val, test = problem
    calls = []

    def fake(config, blur, d_val, x_val, d_test, x_test, methods):
        calls.append(sorted(methods))  # the real tuning: tests/imaging, every tiny_run
        return {"tv": {"weight": 0.5, "tuning": [[0.5, 20.0]]}}, {"tv": np.array(d_test)}

    monkeypatch.setattr(classical, "evaluate_classical", fake)
    metrics, outputs = classical.evaluate_baselines(config, blur, val, test)
    assert set(metrics) == {"blurred", "adjoint", "tv"} and set(outputs) == {"tv"}
    assert calls == [["tikhonov", "tv", "wiener"]]

    # The same inputs again: the kept result, as copies the caller may change.
    again, outputs_again = classical.evaluate_baselines(config, blur, val, test)
    assert len(calls) == 1 and again == metrics
    for name in outputs:
        np.testing.assert_array_equal(outputs_again[name], outputs[name])
    again["tv"]["weight"] = -1.0
    outputs_again["tv"][...] = 0.0
    third, outputs_third = classical.evaluate_baselines(config, blur, val, test)
    assert third["tv"]["weight"] == 0.5
    np.testing.assert_array_equal(outputs_third["tv"], outputs["tv"])

    # Anything the baselines depend on changes the result: images, grid, TV's budget, blur.
    d_test, x_test = test
    classical.evaluate_baselines(config, blur, val, (d_test + 0.01, x_test))
    config.tikhonov.weights = (1e-2,)
    classical.evaluate_baselines(config, blur, val, test)
    config.tv.iters = 10
    classical.evaluate_baselines(config, blur, val, test)
    classical.evaluate_baselines(config, Blur(kernel_size=3, sigma=1.5), val, test)
    assert len(calls) == 5
    classical.clear_baseline_cache()
    classical.evaluate_baselines(config, Blur(kernel_size=3, sigma=1.5), val, test)
    assert len(calls) == 6
