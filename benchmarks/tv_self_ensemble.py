"""Does total variation gain from the self-ensemble too? TV plain against TV x8, same images.

Usage::

    python -m benchmarks.tv_self_ensemble          # -> benchmarks/results/tv_self_ensemble_*
    python -m benchmarks.tv_self_ensemble --quick  # tiny images (used by the tests)

The learned model is reported with and without the geometric self-ensemble
(the average over the 8 flips/rotations of the input, 8 solves an image,
``jfbjax.models.SelfEnsemble``). TV's discretisation (forward differences) is
not equivariant to those symmetries either, so the same average is a
different, possibly better, classical estimator; a fair comparison gives it
the same chance. For each weight of the grid this script scores TV (the
primal-dual solver of the baselines, ``jfbjax.imaging.tv_deblur``, with the
``cpu`` preset's iterations and tolerance) and TV x8 on the validation
images, picks each one's weight there, and scores both on the test images
of the ``cpu`` preset's data and noise draw (seed 0).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import column_table, exit_status, run_meta, write_result
from jfbjax.models.ensemble import DIHEDRAL, symmetrize


def measure(config, weights) -> dict:
    """Val PSNR of TV and TV x8 at each weight, each one's val-tuned weight and its test scores."""
    from jfbjax.builders import blur_from_config
    from jfbjax.data.loader import load_data_from_config
    from jfbjax.imaging.baselines import tv_deblur
    from jfbjax.training.evaluation import score
    from jfbjax.training.records import evaluation_images

    blur = blur_from_config(config)
    data = load_data_from_config(config)
    d_val, d_test = (jnp.asarray(d) for d in evaluation_images(config, data, blur))
    solve = functools.partial(tv_deblur, iters=int(config.tv.iters), tol=float(config.tv.tol))
    forms = {  # jitted per weight (static): one program for the 8 solves of TV x8
        "TV": jax.jit(lambda d, w: solve(d, blur, w), static_argnums=1),
        "TV x8": jax.jit(
            lambda d, w: symmetrize(lambda e: solve(e, blur, w), d, DIHEDRAL), static_argnums=1
        ),
    }
    tuning, best = [], {}
    for name, fn in forms.items():
        for w in weights:
            val = score(data.val, np.asarray(fn(d_val, w)))["psnr_standard"]
            tuning.append({"method": name, "weight": w, "val_psnr": val})
        rows = [r for r in tuning if r["method"] == name]
        top = max(rows, key=lambda r: r["val_psnr"])
        test = score(data.test, np.asarray(fn(d_test, top["weight"])))
        best[name] = {
            "method": name,
            "weight": top["weight"],
            "val_psnr": top["val_psnr"],
            "test_psnr": test["psnr_standard"],
            "test_ssim": test["ssim_standard"],
        }
    return {"tuning": tuning, "rows": list(best.values())}


ROW_COLUMNS = [
    ("method", "method", "{}"),
    ("weight (tuned on val)", "weight", "{:.3g}"),
    ("val PSNR (dB)", "val_psnr", "{:.2f}"),
    ("test PSNR (dB)", "test_psnr", "{:.2f}"),
    ("test SSIM", "test_ssim", "{:.3f}"),
]
TUNING_COLUMNS = [
    ("method", "method", "{}"),
    ("weight", "weight", "{:.3g}"),
    ("val PSNR (dB)", "val_psnr", "{:.2f}"),
]


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# TV with and without the x8 self-ensemble",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['device']}; jax {meta['jax']}  ",
        f"Data: {meta['data']}",
        "",
        "TV: the baselines' primal-dual solver; TV x8: its average over the 8 "
        "flips/rotations of the input. Each one's weight is the best of the grid on "
        "the validation images; PSNR/SSIM in the standard convention.",
        "",
    ]
    lines += column_table(result["rows"], ROW_COLUMNS)
    lines += ["", "Validation PSNR over the grid:", ""]
    lines += column_table(result["tuning"], TUNING_COLUMNS)
    return "\n".join(lines) + "\n"


def run(argv=None) -> dict:
    from experiments.configs import get_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the smoke preset's tiny images")
    parser.add_argument(
        "--weights", default="5.6e-4,1e-3,1.78e-3",
        help="TV weights to tune over (default: around the cpu preset's tuned 1e-3)",
    )  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    weights = [float(w) for w in args.weights.split(",")]
    if not weights or min(weights) <= 0:
        parser.error("--weights must be positive numbers")
    config = get_config("smoke" if args.quick else "cpu")
    if args.quick:
        config.tv.iters = 50
    result = measure(config, weights)
    result["meta"] = run_meta(
        "benchmarks.tv_self_ensemble", argv, start,
        data=f"preset {'smoke' if args.quick else 'cpu'}, built-in set, seed 0 noise draw",
    )  # fmt: skip
    stem = f"tv_self_ensemble_{result['meta']['machine']}" + ("_quick" if args.quick else "")
    result["paths"] = write_result(args.out, stem, result, to_markdown(result))
    return result


main = exit_status(run)

if __name__ == "__main__":
    raise SystemExit(main())
