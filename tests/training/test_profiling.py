"""profiling: timing excludes compilation; compiled memory grows with the temporaries."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jfbjax.training.profiling import compiled_memory, device_peak_bytes, time_call


def test_time_call_runs_warmup_then_repeats():
    calls = []

    def fn(x):
        calls.append(1)
        return x + 1

    out = time_call(fn, jnp.ones(3), repeats=3, warmup=2)
    assert len(calls) == 5 and out["repeats"] == 3
    assert 0 <= out["min_s"] <= out["median_s"]
    with pytest.raises(ValueError, match="repeats"):
        time_call(fn, jnp.ones(3), repeats=0)


def test_compiled_memory_sees_arguments_outputs_and_temporaries():
    n = 128
    x = jnp.ones((n, n), jnp.float32)
    small = compiled_memory(jax.jit(lambda x: x.sum()), x)
    assert small["argument_bytes"] == 4 * n * n
    # Keeps 8 full-size intermediates alive at once, so the peak must grow.
    big = compiled_memory(jax.jit(lambda x: jnp.stack([jnp.sin(x * k) @ x for k in range(8)])), x)
    assert big["output_bytes"] == 8 * 4 * n * n
    assert big["peak_bytes"] > small["peak_bytes"] + 7 * 4 * n * n


def test_device_peak_bytes_is_none_or_positive():
    peak = device_peak_bytes()
    assert peak is None or peak > 0
