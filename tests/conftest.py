"""Shared pytest fixtures and options."""

import os
import pathlib

import jax
import pytest

# Most of the suite's time is XLA compilation, and many tests compile the same
# programs (the smoke model's train and eval steps, the classical baselines).
# JAX's persistent compilation cache lets every test process, and the
# subprocesses they start (CLI, notebook kernel, multi-host), reuse them.
# The cache lives in .pytest_cache (ignored by git); a fresh clone starts empty.
# XLA's CPU backend at LLVM optimisation level 0 compiles about twice as fast; the
# suite's programs are small, so they run about as fast as at the default level.
# Set before JAX creates its CPU client; subprocesses inherit it.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()
_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_compilation_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def x64():
    """Run the test with float64 enabled, restoring the previous setting after."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Factory: train the ``smoke`` preset for ``steps`` steps (warm-up 1, final
    evaluation only, no TV baseline, no alignment report, no self-ensemble) into a
    fresh folder, with ``key=value`` overrides as on the command line. Returns
    ``(workdir, results)``."""

    def make(*overrides: str, steps: int = 2):
        from experiments.configs import apply_overrides, get_config
        from jfbjax.training import train_and_evaluate

        config = get_config("smoke")
        config.steps = steps
        config.optim.warmup = 1
        config.eval_every = 100
        # What the tests of a trained run need: no TV tuning and no GMRES alignment
        # report unless asked for (tests/experiments cover both on the full smoke run).
        config.tv.weights = ()
        config.contraction.align_images = 0
        config.self_ensemble = False
        apply_overrides(config, overrides)
        workdir = tmp_path_factory.mktemp("run")
        return workdir, train_and_evaluate(config, workdir, progress=False)

    return make
