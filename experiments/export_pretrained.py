"""Export a trained run as a model folder that :mod:`jfbjax.pretrained` loads.

    python -m experiments.export_pretrained --run results/cpu_ablation/runs/tv_pc1_e05/seed0
    python -m experiments.export_pretrained --run runs/my-run --out my-model   # anywhere

Writes ``params.npz``, ``config.json`` and ``meta.json`` (see
:mod:`jfbjax.pretrained`) to ``--out`` (default: the shipped model's folder in
the package, ``jfbjax/pretrained/<name>``). The weights are loaded back from
the written files and scored on the run's own test images before anything
replaces an existing folder, so ``meta.json``'s PSNR/SSIM and contraction are
those of the exported file, not copied from the run. ``meta.json`` also holds
the training command (the preset plus one ``--set`` per field where the run's
configuration differs from it), this command and the commit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

import flax
import jax
import numpy as np

from experiments.configs import PRESETS, get_config
from jfbjax import pretrained
from jfbjax.training.evaluation import score_run
from jfbjax.training.records import config_json, jsonable
from jfbjax.training.restore import load_run

__all__ = ["export", "main", "training_command"]

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def training_command(config: dict) -> str:
    """The ``python -m experiments.deblur_celeba`` command that trains ``config``:
    its preset plus ``--set key=value`` for every field that differs from it."""
    preset = config.get("preset")
    if preset not in PRESETS:
        return "unknown (the run's config.json names no known preset)"
    base = _leaves(config_json(get_config(preset)))
    sets = [
        f"--set {k}={tuple(v) if isinstance(v, list) else v!r}"
        for k, v in sorted(_leaves(config).items())
        if k != "preset" and base.get(k, object()) != v
    ]
    return " ".join(["python -m experiments.deblur_celeba", f"--preset {preset}", *sets])


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "jfbjax", "experiments"],
            cwd=_REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+uncommitted-changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def export(run_dir: str, out: str, *, name: str, which: str = "best", command: str = "") -> dict:
    """Writes the model folder ``out`` from the run in ``run_dir``; returns its meta.

    Raises:
      FileNotFoundError / ValueError: from :func:`jfbjax.training.load_run`
        (no config or checkpoint in ``run_dir``).
    """
    run = load_run(run_dir, which=which)
    config = config_json(run.config)
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would ship as a private folder
    try:
        n = pretrained.save_state(run.model, os.path.join(tmp, pretrained.PARAMS))
        with open(os.path.join(tmp, pretrained.CONFIG), "w") as f:
            json.dump(config, f, indent=2)
        results_path = os.path.join(run.workdir, "results.json")
        results = {}
        if os.path.exists(results_path):
            with open(results_path) as f:
                results = json.load(f)
        model_name = results.get("model", {}).get("name", run.config.model.kind)
        run_psnr = results.get("test", {}).get("model", {}).get("psnr_standard")
        data_text = results.get("data", {}).get("description", run.config.data.source)
        meta = {
            "name": name,
            "description": f"{model_name}, preset {run.config.get('preset', '?')}, on {data_text}",
            "format": 1,
            "params_sha256": pretrained.sha256(os.path.join(tmp, pretrained.PARAMS)),
            "num_values": n,
            "trained_for": {
                "value_range": "[-1, 1], (N, H, W, 3) NHWC",
                "image_size": int(run.config.data.image_size),
                "blur": dict(run.config.blur),
                "noise_std": float(run.config.noise_std),
            },
            "source": {
                "run": os.path.relpath(run.workdir, _REPO),
                "which": run.which,
                "step": run.step,
                "train_command": training_command(config),
                "export_command": command,
                "commit": _git_commit(),
                "date": datetime.date.today().isoformat(),
                "jax": jax.__version__,
                "flax": flax.__version__,
                "run_test_psnr_standard": run_psnr,
            },
        }
        with open(os.path.join(tmp, pretrained.META), "w") as f:
            json.dump(meta, f, indent=2)
        # Score the files just written (not the in-memory run) on the run's test images.
        metrics, _ = score_run(pretrained.load(tmp), "test")
        meta["test"] = jsonable(metrics)
        with open(os.path.join(tmp, pretrained.META), "w") as f:
            json.dump(meta, f, indent=2)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.export_pretrained",
        description="Export a trained run folder as a model folder for jfbjax.pretrained.load.",
    )
    p.add_argument("--run", required=True, help="run folder (with config.json and checkpoints/)")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint")
    p.add_argument("--name", default=pretrained.DEFAULT, help="model name (the folder's name)")
    p.add_argument(
        "--out", default=None, help="output folder (default: jfbjax/pretrained/<name>, shipped)"
    )
    args = p.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(pretrained.__file__), args.name)
    command = "python -m experiments.export_pretrained " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    try:
        meta = export(args.run, out, name=args.name, which=args.which, command=command.strip())
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    t = meta["test"]
    print(
        f"wrote {out}: {meta['num_values']} values, test PSNR {t['psnr_standard']:.2f} dB, "
        f"SSIM {t['ssim_standard']:.3f}, contraction max {t.get('contraction_max', np.nan):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
