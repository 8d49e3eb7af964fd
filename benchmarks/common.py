"""What every benchmark script shares: naming the machine, describing the
device, the command line that reproduces a result, and markdown tables.

Timing and compiled memory come from :mod:`jfbjax.training.profiling`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import jax

__all__ = [
    "command_line",
    "device_description",
    "exit_status",
    "machine_name",
    "markdown_table",
    "run_meta",
    "write_result",
]


def exit_status(run: Callable[[Sequence[str] | None], object]) -> Callable[..., int]:
    """A benchmark's ``main(argv=None) -> int`` from its ``run(argv)``: runs it and
    returns 0 (bad flags exit through argparse with status 2, other errors raise)."""

    def main(argv: Sequence[str] | None = None) -> int:
        run(argv)
        return 0

    main.__doc__ = f"The command line of ``{run.__module__}``: :func:`run`, then exit status 0."
    return main


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


def run_meta(module: str, argv: Sequence[str] | None, start: float, **fields) -> dict:
    """The ``meta`` record of a result: machine, device and jax version, then
    ``fields``, then the reproducing command and the wall time since ``start``
    (a ``time.perf_counter()`` reading)."""
    return {
        "machine": machine_name(),
        "device": device_description(),
        "jax": jax.__version__,
        **fields,
        "command": command_line(module, argv),
        "wall_s": time.perf_counter() - start,
    }


def write_result(out: str | Path, stem: str, result: dict, markdown: str) -> list[str]:
    """Writes ``out/<stem>.json`` (``result``) and ``out/<stem>.md`` (``markdown``),
    prints the markdown, and returns the two paths (markdown first)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
    return [str(out / f"{stem}.md"), str(out / f"{stem}.json")]


def short_cpu_training(steps: int, out: str, configure: Callable | None = None) -> dict:
    """``steps`` training steps of the ``cpu`` preset into the fresh folder ``out``
    (no evaluation during training, no TV baseline, alignment report or
    self-ensemble; ``configure(config)`` may change the config first), as a
    benchmark row: mean ms per step after the first, the first step (compilation
    included), the final evaluation (val + test, contraction estimate) and the
    test PSNR after the steps."""
    import shutil

    from experiments.configs import get_config
    from jfbjax.training import train_and_evaluate

    config = get_config("cpu")
    config.steps = steps
    config.optim.warmup = min(int(config.optim.warmup), steps - 1)
    config.eval_every = steps + 1
    config.tv.weights = ()
    config.contraction.align_images = 0
    config.self_ensemble = False
    if configure is not None:
        configure(config)
    shutil.rmtree(out, ignore_errors=True)
    r = train_and_evaluate(config, out, progress=False, tensorboard=False)
    t = r["timing"]
    return {
        "steps": steps,
        "ms_per_step": t["ms_per_step"],
        "first_step_s": t["first_step_s"],
        "final_eval_s": t["final_eval_s"],
        "test_psnr": r["test"]["model"]["psnr_standard"],
    }


def column_table(rows: list[dict], columns) -> list[str]:
    """:func:`markdown_table` of ``rows`` with ``columns`` a list of ``(header, key,
    format)``: ``format`` a ``str.format`` pattern or a function of the value."""
    show = [f.format if isinstance(f, str) else f for _, _, f in columns]
    cells = [[s(r[key]) for s, (_, key, _) in zip(show, columns, strict=True)] for r in rows]
    return markdown_table([header for header, _, _ in columns], cells)


def training_markdown(rows: list[dict], first: tuple[str, str], each: str) -> list[str]:
    """The markdown section of :func:`short_cpu_training` rows: a sentence and a table
    whose first column is ``first`` = ``(header, key)`` (what differs between the
    rows, e.g. ``("method", "method")``), ``each`` naming it in the sentence."""
    columns = [
        (first[0], first[1], "{}"),
        ("steps", "steps", "{}"),
        ("ms/step", "ms_per_step", "{:.0f}"),
        ("first step (s)", "first_step_s", "{:.1f}"),
        ("final eval (s)", "final_eval_s", "{:.1f}"),
        ("test PSNR", "test_psnr", "{:.3f}"),
    ]
    return [
        "",
        f"Training with the `cpu` preset (batch 16, 32x32), each {each} in turn in the "
        "same process: ms per step after the first, the first step (compilation "
        "included), the final evaluation (40 val + 40 test images, contraction "
        "estimate) and the test PSNR after the steps.",
        "",
        *column_table(rows, columns),
    ]
