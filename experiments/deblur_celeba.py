"""Train and evaluate DE-GRAD (+JFB by default) for image deblurring.

    python -m experiments.deblur_celeba                    # the cpu preset, built-in photos
    python -m experiments.deblur_celeba --preset smoke     # a few seconds, end to end
    python -m experiments.deblur_celeba --preset paper --data folder --data_dir ~/celeba
    python -m experiments.deblur_celeba --backward ift --set optim.lr=3e-4
    python -m experiments.deblur_celeba --out runs/x --resume   # continue an interrupted run

Writes results.json, metrics.jsonl, training_curves.png, restorations.png and
Orbax checkpoints to --out (default: a fresh folder under runs/), and prints a
table of PSNR/SSIM in the standard and the paper's convention.

Multi-host: pass --multihost on every host (it calls
``jax.distributed.initialize()`` first; see the JAX docs for the environment it
reads); the batch is split over all devices of all hosts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from experiments.configs import PRESETS, apply_overrides, get_config
from jfbjax import builders

__all__ = ["build_config", "init_distributed", "main", "parse_args"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one (not None / False / [])."""

    def _get_help_string(self, action):
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _presets(get) -> str:
    """``'default from the preset: cpu 250, smoke 20, paper 25000'`` for a config getter."""
    values = ", ".join(f"{p} {get(get_config(p))}" for p in ("cpu", "smoke", "paper"))
    return f"default from the preset: {values}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.deblur_celeba",
        description=(
            "Deblurring with an implicit DE-GRAD network trained by Jacobian-free "
            "backpropagation (arXiv 2402.02065). Flags left unset take the preset's value."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--preset", choices=PRESETS, default="cpu", help="configuration preset")
    p.add_argument(
        "--data",
        choices=("auto", "builtin", "tfds", "folder"),
        default=None,
        help="data source; auto = CelebA if --data_dir holds it, else the built-in photos "
        f"({_presets(lambda c: c.data.source)})",
    )
    p.add_argument("--data_dir", default=None, help="CelebA location (tfds data_dir or folder)")
    p.add_argument(
        "--backward",
        choices=sorted(builders.BACKWARDS),
        default=None,
        help=f"gradient of the fixed point ({_presets(lambda c: c.backward.name)})",
    )
    p.add_argument(
        "--solver",
        choices=sorted(builders.SOLVERS),
        default=None,
        help=f"forward fixed-point solver ({_presets(lambda c: c.solver.name)})",
    )
    p.add_argument(
        "--steps", type=int, default=None, help=f"training steps ({_presets(lambda c: c.steps)})"
    )
    p.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="global batch size, a multiple of the device count "
        f"({_presets(lambda c: c.batch_size)})",
    )
    p.add_argument(
        "--image_size",
        type=int,
        default=None,
        help=f"image side in pixels ({_presets(lambda c: c.data.image_size)})",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: a fresh runs/<preset>-<date>-<time> in the working "
        "directory)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help=f"random seed ({_presets(lambda c: c.seed)})"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint, with the same data order "
        "and noise; its saved config.json is reused (flags given still override it)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config field, repeatable, e.g. --set optim.lr=3e-4 --set model.depth=8 "
        "(fields: see experiments/configs.py)",
    )
    p.add_argument(
        "--no_progress", action="store_true", help="no progress bar (e.g. for log files)"
    )
    p.add_argument(
        "--no_tensorboard",
        action="store_true",
        help="no TensorBoard event files in OUT/tensorboard (written when tensorboardX is "
        "installed; open with `tensorboard --logdir OUT`)",
    )
    p.add_argument(
        "--multihost",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host data parallelism); on a "
        "cluster (SLURM, Open MPI, TPU) it finds its peers itself, elsewhere pass --coordinator, "
        "--num_processes and --process_id",
    )
    p.add_argument("--coordinator", default=None, help="with --multihost: host:port of process 0")
    p.add_argument("--num_processes", type=int, default=None, help="with --multihost")
    p.add_argument("--process_id", type=int, default=None, help="with --multihost: 0..N-1")
    return p.parse_args(argv)


def init_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """``jax.distributed.initialize`` with the given (or auto-detected) layout.

    Without a GPU or TPU, the processes' CPU devices talk through gloo
    (``jax_cpu_collectives_implementation``), so several processes on one
    machine (``--coordinator 127.0.0.1:PORT``) form one data-parallel mesh:
    the way to try multi-host training without a cluster.
    """
    import jax

    if os.environ.get("JAX_PLATFORMS", "").lower() == "cpu" or not _has_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def _has_accelerator() -> bool:
    """Whether a CUDA or TPU plugin of JAX is installed (without initialising a backend)."""
    import importlib.util

    return any(
        importlib.util.find_spec(m) is not None
        for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")
    )


def build_config(args: argparse.Namespace):
    """The preset (or, with --resume, the run's saved config.json) with the flags applied."""
    import ml_collections

    saved = os.path.join(args.out, "config.json") if args.out else None
    if args.resume and saved and os.path.exists(saved):
        with open(saved) as f:
            config = ml_collections.ConfigDict(json.load(f))
    else:
        config = get_config(args.preset)
    flags = {
        "data.source": args.data,
        "data.data_dir": args.data_dir,
        "backward.name": args.backward,
        "solver.name": args.solver,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "data.image_size": args.image_size,
        "seed": args.seed,
    }
    for key, value in flags.items():
        if value is not None:
            section, _, leaf = key.rpartition(".")
            (config[section] if section else config)[leaf] = value
    return apply_overrides(config, args.overrides)


def _default_out(preset: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", f"{preset}-{stamp}")
    out, i = base, 1
    while os.path.exists(out):
        out, i = f"{base}-{i}", i + 1
    return out


def format_table(results: dict) -> str:
    """The final summary: PSNR/SSIM of each method, both conventions, labelled."""
    test = results["test"]
    rows = [
        ("blurred input d", test["blurred"]),
        ("A^T d (solver start)", test["adjoint"]),
        (f"Wiener FFT (w={test['wiener']['weight']:.2g})", test["wiener"]),
        (f"Tikhonov CG (w={test['tikhonov']['weight']:.2g})", test["tikhonov"]),
        *([(f"TV (w={test['tv']['weight']:.2g})", test["tv"])] if "tv" in test else []),
        (results["model"]["name"], test["model"]),
    ]
    if ensemble := results.get("self_ensemble"):
        rows.append((f"{results['model']['name']} x8 flips", ensemble["test"]))

    def num(v, fmt):
        return "nan" if v is None else format(v, fmt)

    head = (
        f"{'method':<26}{'PSNR standard':>15}{'PSNR paper':>12}"
        f"{'SSIM standard':>15}{'SSIM paper':>12}"
    )
    lines = [
        f"test set: {results['data']['n_test']} images ({results['data']['name']}); "
        "PSNR in dB: standard = 10 log10(1/MSE) on images mapped to [0,1]; "
        "paper = -10 log10(MSE) on [-1,1] (arXiv 2402.02065), 6.02 dB lower",
        head,
        "-" * len(head),
    ]
    for name, m in rows:
        lines.append(
            f"{name:<26}{num(m['psnr_standard'], '.2f'):>15}{num(m['psnr_paper'], '.2f'):>12}"
            f"{num(m['ssim_standard'], '.4f'):>15}{num(m['ssim_paper'], '.4f'):>12}"
        )
    timing = results["timing"]
    ms = timing["ms_per_step"]
    lines.append(
        f"forward solver: {results['mean_forward_iterations']:.1f} iterations on average, "
        f"{100 * results['fraction_converged']:.0f}% of test solves converged"
        + (
            f", contraction ||dT/dx|| mean {c['test_mean']:.4f} max {c['test_max']:.4f}"
            + (f" (val max {c['val_max']:.4f}); " if c.get("val_max") is not None else "; ")
            if (c := results.get("contraction"))
            else "; "
        )
        + f"{'n/a' if ms is None else f'{ms:.0f}'} ms/step, "
        f"total {timing['total_s'] / 60:.1f} min on {results['device']['num_devices']} x "
        f"{results['device']['device_kind']}"
    )
    return "\n".join(lines)


def _fail(message: str, code: int = 1) -> int:
    print(f"\nerror: {message}", file=sys.stderr, flush=True)
    return code


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.resume and not args.out:
        return _fail("--resume needs --out: the folder of the run to continue", 2)
    if args.multihost:
        init_distributed(args.coordinator, args.num_processes, args.process_id)
    try:
        config = build_config(args)
    except (ValueError, TypeError, KeyError) as e:
        return _fail(f"bad configuration: {e}", 2)
    out = args.out or _default_out(args.preset)

    from jfbjax.training import NonFiniteLossError, ResultsExistError, train_and_evaluate

    try:
        results = train_and_evaluate(
            config,
            out,
            resume=args.resume,
            progress=not args.no_progress,
            tensorboard=not args.no_tensorboard,
        )
    except NonFiniteLossError as e:
        return _fail(str(e))
    except ResultsExistError as e:
        return _fail(str(e))
    except FileNotFoundError as e:
        return _fail(f"{e}", 1)
    except ImportError as e:
        return _fail(
            f"a dependency is missing: {e}. Install the extra it needs, e.g. "
            "pip install -e '.[celeba]' for the tfds source."
        )
    except ValueError as e:
        return _fail(f"{e}")
    except KeyboardInterrupt:
        return _fail(
            f"interrupted. Continue with: python -m experiments.deblur_celeba --out {out} --resume",
            130,
        )
    if "blurred" not in results.get("test", {}):  # a non-main process of a multi-host run
        return 0
    print()
    print(format_table(results))
    print(
        f"outputs: {os.path.abspath(out)} (results.json, metrics.jsonl, training_curves.png, "
        "restorations.png, checkpoints/)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
