"""DE-GRAD's preconditioner, exact against Chebyshev, side by side in one run.

Usage::

    python -m benchmarks.preconditioner          # -> benchmarks/results/preconditioner_<machine>.*
    python -m benchmarks.preconditioner --quick  # tiny sizes (used by the tests)

The ``cpu`` preset's map is ``T(x) = x - eta P (A^T(A x - d) + R(x))`` with
``P ~ (A^T A + mu I)^-1``. ``P`` is either ``iters`` Chebyshev iterations
(``Blur.normal_inverse_approx``, ``iters`` applications of ``A^T A``) or the
exact inverse from the eigendecomposition of the separable blur
(``Blur.normal_inverse``, four products with ``n x n`` matrices, selected by
``model.precond_iters=0``). This script times ``P`` alone and the whole step
``T(x; d)`` of the preset's untrained model with each, at each image size, and
reports how far the Chebyshev ``P`` is from the exact one; then
(``--train_steps``, default 12) a short training run of the ``cpu`` preset with
each. Times are medians of jitted calls; compare the columns of one row, not
rows across machines.

The ``cpu`` preset now preconditions with the TV's lagged diffusivity,
``P(x) ~ (A^T A + mu I + w L_x)^-1`` by ``precond_iters`` Chebyshev steps around the
exact ``(A^T A + mu I)^-1`` (``model.precond_tv``). A second table times that
``P(x)`` and the step ``T(x; d)`` of the preset's untrained model as it is, against
the same model with the fixed exact ``P`` (``precond_tv=False``, same ``mu``): what
the lagged term costs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
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
from jfbjax.training.profiling import time_call

#: Chebyshev iterations of the ``cpu`` preset's P (``model.precond_iters``).
CHEB_ITERS = 10

#: The map whose two forms of ``P = (A^T A + mu I)^-1`` are compared: the ``cpu``
#: preset's until 2026-12-06 (mu 0.25, no lagged-diffusivity term, eta from 1).
PINNED = {"precond": 0.25, "precond_tv": False, "eta_init": 1.0}


def _config(**model):
    """The ``cpu`` preset with ``model`` overrides (:data:`PINNED` for the first table)."""
    from experiments.configs import get_config

    config = get_config("cpu")
    config.model.update(model)
    return config


def _untrained(config):
    """The untrained model of ``config``, its spectral norms frozen (as ``model(d)`` uses them)."""
    from jfbjax.builders import blur_from_config, build_model
    from jfbjax.models.dncnn import freeze_spectral_norm

    return freeze_spectral_norm(build_model(config, blur_from_config(config), nnx.Rngs(0)))


def _model_step(precond_iters: int, x, d):
    """``(fn, args)``: the step ``T(x; d)`` of the untrained ``cpu``-preset model."""
    graphdef, state = nnx.split(_untrained(_config(**PINNED, precond_iters=precond_iters)))
    return (lambda s, v, w: nnx.merge(graphdef, s).step(v, w)), (state, x, d)


def measure(sizes, batch: int, cheb_iters: int, repeats: int) -> list[dict]:
    """One row per (size, operation): median ms of each form and their ratio; the
    ``P`` rows also hold the relative gap ``||P_cheb x - P_exact x|| / ||P_exact x||``."""
    from jfbjax.builders import blur_from_config

    config = _config(**PINNED)
    blur, mu = blur_from_config(config), float(config.model.precond)
    forms = {"chebyshev": cheb_iters, "exact": 0}
    rows = []
    for size in sizes:
        rng = np.random.default_rng(size)
        x = jnp.asarray(rng.normal(size=(batch, size, size, 3)) * 0.3, jnp.float32)
        d = blur.apply(x)
        p = {
            "chebyshev": lambda v: blur.normal_inverse_approx(v, mu, cheb_iters),
            "exact": lambda v: blur.normal_inverse(v, mu),
        }
        row = {"size": size, "batch": batch, "op": f"P (mu {mu:g})"}
        for name, fn in p.items():
            t = time_call(jax.jit(fn), x, repeats=repeats, warmup=1)
            row[f"{name}_ms"] = 1e3 * t["median_s"]
        exact = np.asarray(p["exact"](x))
        row["relative_gap"] = float(
            np.linalg.norm(np.asarray(p["chebyshev"](x)) - exact) / np.linalg.norm(exact)
        )
        rows.append(row)
        row = {"size": size, "batch": batch, "op": "T(x; d), cpu preset", "relative_gap": None}
        for name, iters in forms.items():
            fn, args = _model_step(iters, x, d)
            t = time_call(jax.jit(fn), *args, repeats=repeats, warmup=1)
            row[f"{name}_ms"] = 1e3 * t["median_s"]
        rows.append(row)
    for row in rows:
        row["speed_up"] = row["chebyshev_ms"] / row["exact_ms"]
    return rows


def measure_lagged(sizes, batch: int, repeats: int) -> list[dict]:
    """One row per (size, operation): median ms with the lagged ``P(x)`` (the ``cpu``
    preset now) and with the fixed exact ``P`` of the same ``mu``, and their ratio."""
    config = _config()
    lagged, fixed = _untrained(config), _untrained(_config(precond_tv=False))
    mu, iters = float(config.model.precond), int(config.model.precond_iters)
    (gd_lag, s_lag), (gd_fix, s_fix) = nnx.split(lagged), nnx.split(fixed)
    rows = []
    for size in sizes:
        rng = np.random.default_rng(size)
        x = jnp.asarray(rng.normal(size=(batch, size, size, 3)) * 0.3, jnp.float32)
        d, g = lagged.blur.apply(x), jnp.asarray(rng.normal(size=x.shape), jnp.float32)
        pairs = {  # (the lagged form, the fixed form, their arguments)
            f"P (mu {mu:g}; lagged: {iters} Chebyshev steps)": (
                lambda v, w: lagged.lagged_precondition(v, w),
                lambda v, w: fixed.blur.normal_inverse(w, mu),
                (x, g),
                (x, g),
            ),
            "T(x; d), cpu preset": (
                lambda s, v, w: nnx.merge(gd_lag, s).step(v, w),
                lambda s, v, w: nnx.merge(gd_fix, s).step(v, w),
                (s_lag, x, d),
                (s_fix, x, d),
            ),
        }
        for op, (with_lag, without, lag_args, fix_args) in pairs.items():
            row = {"size": size, "batch": batch, "op": op}
            for key, fn, args in (("lagged_ms", with_lag, lag_args),
                                  ("fixed_ms", without, fix_args)):  # fmt: skip
                t = time_call(jax.jit(fn), *args, repeats=repeats, warmup=1)
                row[key] = 1e3 * t["median_s"]
            row["ratio"] = row["lagged_ms"] / row["fixed_ms"]
            rows.append(row)
    return rows


def measure_training(steps: int, workdir: str, cheb_iters: int) -> list[dict]:
    """Training steps of the ``cpu`` preset with each form of ``P``, in one process
    (:func:`benchmarks.common.short_cpu_training`, one row per form)."""
    rows = []
    for name, iters in {"chebyshev": cheb_iters, "exact": 0}.items():

        def configure(config, iters=iters):
            config.model.update(PINNED)
            config.model.precond_iters = iters

        rows.append({"form": name, **short_cpu_training(steps, f"{workdir}/{name}", configure)})
    return rows


def _gap(v) -> str:
    return "–" if v is None else f"{v:.1e}"


#: (header, key, format) of the markdown tables' columns.
OP_COLUMNS = [
    ("size", "size", "{}"),
    ("batch", "batch", "{}"),
    ("operation", "op", "{}"),
    ("Chebyshev (ms)", "chebyshev_ms", "{:.2f}"),
    ("exact (ms)", "exact_ms", "{:.2f}"),
    ("Chebyshev / exact", "speed_up", "{:.1f}x"),
    ("relative gap of P", "relative_gap", _gap),
]


LAGGED_COLUMNS = [
    ("size", "size", "{}"),
    ("batch", "batch", "{}"),
    ("operation", "op", "{}"),
    ("lagged P(x) (ms)", "lagged_ms", "{:.2f}"),
    ("fixed exact P (ms)", "fixed_ms", "{:.2f}"),
    ("lagged / fixed", "ratio", "{:.1f}x"),
]


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# DE-GRAD's preconditioner: exact inverse against Chebyshev iterations",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['device']}; jax {meta['jax']}",
        "",
        f"Median ms of jitted calls on the same inputs (batch of images, 3 channels). "
        f"Chebyshev: {meta['cheb_iters']} iterations (`Blur.normal_inverse_approx`, one "
        "A^T A each); exact: `Blur.normal_inverse` (eigenbases of the two axes' 1-D "
        "blurs). Relative gap: `||P_cheb x - P_exact x|| / ||P_exact x||` on the row's "
        "random images.",
        "",
    ]
    lines += column_table(result["rows"], OP_COLUMNS)
    if result.get("lagged"):
        lines += [
            "",
            "The `cpu` preset now: the lagged-diffusivity `P(x)` (Chebyshev steps around "
            "the exact inverse, `model.precond_tv`) against the fixed exact `P` of the same "
            "`mu`, alone (on random `g`) and inside the untrained model's `T(x; d)`.",
            "",
            *column_table(result["lagged"], LAGGED_COLUMNS),
        ]
    if result.get("training"):
        lines += training_markdown(result["training"], ("P", "form"), "form")
    return "\n".join(lines) + "\n"


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--sizes", default=None, help="image sizes, e.g. 32,64,128")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--cheb_iters", type=int, default=CHEB_ITERS)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--train_steps", type=int, default=None,
        help="also train the cpu preset this many steps with each form (default 12; 0: skip)",
    )  # fmt: skip
    parser.add_argument("--workdir", default="/tmp/preconditioner_runs")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sizes = [int(s) for s in (args.sizes or ("16" if args.quick else "32,64,128")).split(",")]
    batch = args.batch if args.batch is not None else (2 if args.quick else 16)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 20)
    if batch < 1 or repeats < 1 or args.cheb_iters < 1:
        parser.error("--batch, --repeats and --cheb_iters must be >= 1")
    train_steps = args.train_steps if args.train_steps is not None else (0 if args.quick else 12)
    if train_steps == 1 or train_steps < 0:
        parser.error("--train_steps must be 0 (skip) or >= 2")
    result = {
        "rows": measure(sizes, batch, args.cheb_iters, repeats),
        "lagged": measure_lagged(sizes, batch, repeats),
    }
    if train_steps:
        result["training"] = measure_training(train_steps, args.workdir, args.cheb_iters)
    result["meta"] = run_meta(
        "benchmarks.preconditioner", argv, start, cheb_iters=args.cheb_iters, repeats=repeats
    )
    stem = f"preconditioner_{result['meta']['machine']}" + ("_quick" if args.quick else "")
    result["paths"] = write_result(args.out, stem, result, to_markdown(result))
    return result


main = exit_status(run)

if __name__ == "__main__":
    raise SystemExit(main())
