"""Measuring jitted functions: wall time after compilation and compiled memory.

Used by ``experiments.compare`` and ``benchmarks/``. Times are wall-clock
seconds of calls that block until every output is ready
(``jax.block_until_ready``), measured after a warm-up call so compilation is
excluded. Memory comes from XLA's analysis of the compiled executable, which
exists on every backend (CPU included); on a GPU the device's own peak
counter is available too (:func:`device_peak_bytes`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["StepClock", "compiled_memory", "device_peak_bytes", "time_call"]


def time_call(fn: Callable, *args: Any, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median and minimum wall time of ``fn(*args)`` over ``repeats`` timed calls.

    ``warmup`` untimed calls run first (compilation, caches). Every call
    blocks until its outputs are ready.

    Returns:
      ``{"median_s", "min_s", "repeats"}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)), "repeats": repeats}


def compiled_memory(jitted: Any, *args: Any) -> dict[str, int | None]:
    """XLA's memory analysis of ``jitted`` compiled for ``args``.

    ``jitted`` is a ``jax.jit``-wrapped function (anything with
    ``.lower(*args)``), or an already compiled executable (``args`` are then
    ignored), so a caller can time and analyse one compilation. The peak
    estimate is
    ``arguments + outputs + temporaries - aliased`` bytes: what the
    executable needs at once, excluding the runtime's own overhead. Fields
    are ``None`` where the backend gives no analysis.

    Returns:
      ``{"argument_bytes", "output_bytes", "temp_bytes", "alias_bytes",
      "generated_code_bytes", "peak_bytes"}``.
    """
    compiled = jitted if hasattr(jitted, "memory_analysis") else jitted.lower(*args).compile()
    analysis = compiled.memory_analysis()
    keys = ("argument", "output", "temp", "alias", "generated_code")
    if analysis is None:
        return {f"{k}_bytes": None for k in keys} | {"peak_bytes": None}
    out = {f"{k}_bytes": int(getattr(analysis, f"{k}_size_in_bytes")) for k in keys}
    out["peak_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    )
    return out


def device_peak_bytes(device: jax.Device | None = None) -> int | None:
    """The device's peak bytes in use since start-up (GPU/TPU), or None where the
    backend keeps no such counter (CPU)."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


class StepClock:
    """Wall time of a training loop: its first step (compilation included)
    apart from the others, its evaluations, and the time of earlier processes
    that worked on the same run (``before``, so a resumed run's clock goes on).
    """

    def __init__(self, before: float = 0.0):
        self.before = float(before)
        self.first_s: float | None = None
        self.step_s: list[float] = []
        self.eval_s = 0.0

    def add_step(self, seconds: float) -> None:
        """Records one training step's wall time."""
        if self.first_s is None:
            self.first_s = seconds
        else:
            self.step_s.append(seconds)

    def train_time(self) -> float:
        """Seconds in training steps over every process that worked on the run
        (compilation included, evaluations not)."""
        return self.before + (self.first_s or 0.0) + float(np.sum(self.step_s))

    def ms_per_step(self, last: int | None = None) -> float | None:
        """Mean milliseconds of the steps after the first (of the ``last`` ones)."""
        times = self.step_s[-last:] if last else self.step_s
        return 1e3 * float(np.mean(times)) if times else None
