"""The scripts in examples/ run and do what their READMEs say."""

from __future__ import annotations

import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    """Imports ``examples/<name>.py`` as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deq_classifier_learns_the_spirals_with_jfb_and_ift(capsys):
    example = _load("deq_classifier")
    results = example.main(steps=50)
    out = capsys.readouterr().out

    # Chance on two balanced classes is 0.5, and the untrained model sits there.
    assert 0.35 < results["accuracy0"] < 0.65
    for mode in ("jfb", "ift"):
        r = results[mode]
        # Measured: ~0.99 test accuracy for both at 80 steps, 0.92+ already at 40.
        assert r["test_accuracy"] >= 0.85, (mode, r["test_accuracy"])
        assert r["loss"] < 0.5 * results["loss0"], (mode, r["loss"], results["loss0"])
        # The layer contracts, so every solve converges in a few Anderson steps.
        assert r["iterations"] < example.SOLVER.max_iter
    # JFB's gradient points the way of the true (IFT) gradient at the start (measured ~0.98).
    assert results["cosine_layer"] > 0.5
    for text in ("cosine(JFB, IFT)", "JFB: train accuracy", "IFT: train accuracy", "ms/step"):
        assert text in out
