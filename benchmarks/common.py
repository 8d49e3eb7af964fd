"""What every benchmark script shares: naming the machine, describing the
device, the command line that reproduces a result, and markdown tables.

Timing and compiled memory come from :mod:`jfbjax.training.profiling`.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable, Sequence

import jax

__all__ = ["command_line", "device_description", "machine_name", "markdown_table"]


def machine_name() -> str:
    """``cpu``, or ``gpu_<kind>`` from the first device's kind (``NVIDIA H200`` -> ``gpu_h200``).

    Result files are named after it (``backward_cost_<machine>.md``).
    """
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return "cpu"
    kind = dev.device_kind.lower().replace("nvidia", "").strip()
    return f"{dev.platform}_" + "_".join(kind.split()).replace("-", "_")


def device_description() -> str:
    """The first device's kind, how many there are, and the host's processor and cores."""
    devices = jax.devices()
    many = f"{len(devices)} devices; " if len(devices) > 1 else ""
    host = platform.processor() or platform.machine()
    return f"{devices[0].device_kind} ({many}host {host}, {os.cpu_count()} cores)"


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """``python -m <module> <args>``: the command that reproduces a run (``argv``
    as passed to ``main``, or the process's own arguments when None)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", "-m", module, *args])


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Lines of a markdown table; cells are written with ``str``."""
    header = [str(h) for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"row has {len(cells)} cells, header has {len(header)}: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
