"""The zero-boundary blur's two implementations, side by side in one run.

Usage::

    python -m benchmarks.blur_ops            # -> benchmarks/results/blur_ops_<machine>.{md,json}
    python -m benchmarks.blur_ops --quick    # tiny sizes (used by the tests)

:class:`jfbjax.imaging.Blur` (zero boundary) applies its separable Gaussian
one image axis at a time, as a banded matrix product for axes of up to
``jfbjax.imaging.blur.BANDED_MAX`` pixels and as a sum of shifted, weighted
copies beyond. This script times both on the same inputs, for the
operations a DE-GRAD step uses: one ``A^T A``, the preconditioner
``P ~ (A^T A + mu I)^-1`` (``iters`` chained applications of ``A^T A``),
the whole step ``T(x; d)`` of the ``cpu`` preset's untrained model
(DnCNN regulariser, smoothed-TV term, preconditioner), and 300 iterations
of a loop with one ``A^T A`` each (the pattern of the TV and CG baselines,
which use shifted copies for that reason) at each image size;
then (``--train_steps``, default 12) a short training run of the ``cpu``
preset with each.
Times are medians of jitted calls; compare the two columns of one row, not
rows across machines.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import jax
import numpy as np
from flax import nnx

from benchmarks.common import (
    column_table,
    exit_status,
    run_meta,
    short_cpu_training,
    training_markdown,
    write_result,
)
from jfbjax.imaging import blur as blur_module
from jfbjax.training.profiling import time_call

METHODS = ("banded", "shifted")


@contextlib.contextmanager
def _blur_form(method: str):
    """Within the block, every blur whose form is not asked for explicitly
    (``Blur.apply(..., banded=None)``) traces to ``method``'s form; the threshold
    is restored after. It is read at trace time: jit fresh functions inside."""
    banded_max = blur_module.BANDED_MAX
    blur_module.BANDED_MAX = banded_max if method == "banded" else 0
    try:
        yield
    finally:
        blur_module.BANDED_MAX = banded_max


def _ops(size: int, batch: int, precond_iters: int):
    """``name -> (fn, args)`` of the timed operations at one image size."""
    from experiments.configs import get_config
    from jfbjax.builders import blur_from_config, build_model
    from jfbjax.models.dncnn import freeze_spectral_norm

    config = get_config("cpu")
    blur = blur_from_config(config)
    model = freeze_spectral_norm(build_model(config, blur, nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.normal(size=(batch, size, size, 3)) * 0.3, jax.numpy.float32)
    d = blur.apply(x)
    mu = 0.25  # the cpu preset's mu when this was measured (benchmarks.preconditioner.PINNED)
    return {
        "A^T A": (blur.normal, (x,)),
        f"P, {precond_iters} x A^T A": (
            lambda v: blur.normal_inverse_approx(v, mu, precond_iters),
            (x,),
        ),
        "T(x; d), cpu preset": (lambda s, v, w: nnx.merge(graphdef, s).step(v, w), (state, x, d)),
        # One A^T A per loop iteration, the pattern of the TV and CG baselines
        # (which therefore ask for shifted copies: Blur.apply's `banded`).
        "300 x A^T A in a loop": (
            lambda w: jax.lax.fori_loop(0, 300, lambda i, z: z - 0.5 * blur.normal(z) + 0.5 * w, w),
            (d,),
        ),
    }


def measure(sizes, batch: int, precond_iters: int, repeats: int) -> list[dict]:
    """One row per (size, operation): median ms of each method, and their ratio."""
    rows = []
    for size in sizes:
        for name, (fn, args) in _ops(size, batch, precond_iters).items():
            row = {"size": size, "batch": batch, "op": name}
            for method in METHODS:
                # jit caches traces per Python function: a fresh function per method.
                with _blur_form(method):
                    t = time_call(jax.jit(lambda *a, f=fn: f(*a)), *args, repeats=repeats, warmup=1)
                row[f"{method}_ms"] = 1e3 * t["median_s"]
            row["shifted_over_banded"] = row["shifted_ms"] / row["banded_ms"]
            rows.append(row)
    return rows


def measure_training(steps: int, workdir: str) -> list[dict]:
    """Training steps of the ``cpu`` preset with each method, in one process
    (:func:`benchmarks.common.short_cpu_training`, one row per method)."""
    rows = []
    for method in METHODS:
        with _blur_form(method):
            rows.append({"method": method, **short_cpu_training(steps, f"{workdir}/{method}")})
    return rows


#: (header, key, format) of the markdown tables' columns.
OP_COLUMNS = [
    ("size", "size", "{}"),
    ("batch", "batch", "{}"),
    ("operation", "op", "{}"),
    ("banded (ms)", "banded_ms", "{:.2f}"),
    ("shifted (ms)", "shifted_ms", "{:.2f}"),
    ("shifted / banded", "shifted_over_banded", "{:.1f}x"),
]


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# Zero-boundary blur: banded matrices against shifted copies",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['device']}; jax {meta['jax']}",
        "",
        "Median ms of jitted calls on the same inputs (batch of images, 3 channels). "
        "`banded`: the default for axes of up to "
        f"{meta['banded_max']} pixels; `shifted`: sums of shifted, weighted copies.",
        "",
    ]
    lines += column_table(result["rows"], OP_COLUMNS)
    if result.get("training"):
        lines += training_markdown(result["training"], ("method", "method"), "method")
    return "\n".join(lines) + "\n"


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--sizes", default=None, help="image sizes, e.g. 32,64,128")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--precond_iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--train_steps", type=int, default=None,
        help="also train the cpu preset this many steps with each method (default 12; 0: skip)",
    )  # fmt: skip
    parser.add_argument(
        "--workdir", default="/tmp/blur_ops_runs", help="run folders of --train_steps"
    )
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sizes = args.sizes or ("16" if args.quick else "32,64,128")
    sizes = [int(s) for s in sizes.split(",")]
    batch = args.batch if args.batch is not None else (2 if args.quick else 16)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 20)
    if batch < 1 or repeats < 1 or args.precond_iters < 1:
        parser.error("--batch, --repeats and --precond_iters must be >= 1")
    train_steps = args.train_steps if args.train_steps is not None else (0 if args.quick else 12)
    if train_steps == 1 or train_steps < 0:
        parser.error("--train_steps must be 0 (skip) or >= 2")
    result = {"rows": measure(sizes, batch, args.precond_iters, repeats)}
    if train_steps:
        result["training"] = measure_training(train_steps, args.workdir)
    result["meta"] = run_meta(
        "benchmarks.blur_ops", argv, start, banded_max=blur_module.BANDED_MAX, repeats=repeats
    )
    stem = f"blur_ops_{result['meta']['machine']}" + ("_quick" if args.quick else "")
    result["paths"] = write_result(args.out, stem, result, to_markdown(result))
    return result


main = exit_status(run)

if __name__ == "__main__":
    raise SystemExit(main())
