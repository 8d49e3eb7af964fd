"""Deblur your own images with a trained model (the shipped one by default).

    python -m experiments.deblur_image photo.png                  # a photo you blurred
    python -m experiments.deblur_image photos/ --simulate         # clean photos: blur them first
    python -m experiments.deblur_image blurred/ --reference clean/ --run runs/my-run

PATH is an image or a folder of images (any format Pillow reads; files that
are not images, or are corrupt, are skipped with a warning naming them). The
model is the shipped :data:`jfbjax.pretrained.DEFAULT` unless ``--run`` names a
run folder or ``--model`` an exported model folder.

* Without ``--simulate``, each image is taken as already degraded by the
  model's blur (``meta.json`` / ``config.json`` say which: the shipped model
  was trained for a 5x5 Gaussian blur of std 5 with zero padding and noise
  std 0.01 on [-1, 1]). With ``--reference DIR``, the clean image of the same
  file name in DIR is the reference for PSNR/SSIM.
* With ``--simulate``, each image is the clean reference: the command blurs
  it with the model's blur and noise (``--seed``), writes the blurred image
  too, and restores that.

The model is fully convolutional: images of any size are restored whole (no
tiles); the solve is jitted once per image size. Writes ``<name>_restored.png``
(and ``<name>_blurred.png`` with ``--simulate``) to ``--out``, and, when
references exist, ``metrics.csv`` with PSNR/SSIM (standard convention, [0, 1]
images) of the blurred input and of the restoration, and the solver's
iterations and status per image.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image
from tqdm.auto import tqdm

import jfbjax
from jfbjax import pretrained
from jfbjax.data.common import read_rgb_uint8, to_float
from jfbjax.imaging.metrics import psnr, ssim
from jfbjax.imaging.noise import degrade
from jfbjax.models.ensemble import SelfEnsemble

__all__ = ["deblur_files", "find_images", "main", "read_image"]

CSV_FIELDS = (
    "file",
    "height",
    "width",
    "psnr_blurred",
    "psnr_restored",
    "ssim_blurred",
    "ssim_restored",
    "iterations",
    "converged",
)


def read_image(path: str) -> np.ndarray:
    """The image at ``path`` as float32 (H, W, 3) on [-1, 1] (grayscale replicated,
    alpha dropped). Raises ``ValueError`` naming the file if Pillow cannot read it."""
    return to_float(read_rgb_uint8(path))


def _write_png(x: np.ndarray, path: str) -> None:
    u8 = np.round((np.clip(np.asarray(x), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    Image.fromarray(u8).save(path)


def find_images(path: str) -> list[str]:
    """``[path]`` for a file, the sorted files of a folder (not recursive).

    Raises ``FileNotFoundError`` for a missing path or an empty folder."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if os.path.isfile(os.path.join(path, f)) and not f.startswith(".")
        )
        if not files:
            raise FileNotFoundError(f"{path} holds no files")
        return files
    raise FileNotFoundError(f"{path} does not exist")


def _references(reference_dir: str) -> dict[str, str]:
    """The files of ``reference_dir`` by name without extension (the first, sorted, wins)."""
    found: dict[str, str] = {}
    for f in sorted(os.listdir(reference_dir)):
        found.setdefault(os.path.splitext(f)[0], os.path.join(reference_dir, f))
    return found


def _metrics(x: jax.Array, ref: jax.Array) -> tuple[float, float]:
    return float(psnr(x[None], ref[None])[0]), float(ssim(x[None], ref[None])[0])


@functools.lru_cache(maxsize=8)
def _restorer(graphdef):
    """``restore(state, d) -> (x, iterations, status)`` for one (H, W, C) image, jitted:
    it compiles once per image size (and per model structure, across calls)."""

    @jax.jit
    def restore(state, d):
        x, info = nnx.merge(graphdef, state)(d[None])
        return x[0], info.iterations[0], info.status[0]

    return restore


def deblur_files(
    run,
    paths: list[str],
    out: str,
    *,
    simulate: bool = False,
    reference: str | None = None,
    seed: int = 0,
    progress: bool = True,
    self_ensemble: bool = False,
) -> list[dict]:
    """Restores every readable image of ``paths`` with ``run.model`` into ``out``.

    Args:
      run: a :class:`jfbjax.training.Run` (``load_run`` or ``pretrained.load``).
      paths: image files; unreadable ones are skipped with a warning.
      out: output folder (created).
      simulate: treat each image as clean: degrade it with the run's blur and
        noise (key ``seed`` folded with the image's index) and restore that.
      reference: folder of clean images matched by file name (without
        ``simulate``).
      seed: noise seed of ``simulate``.
      progress: a progress bar over the images.
      self_ensemble: restore with the model averaged over the flips/rotations
        of each image (:class:`jfbjax.models.SelfEnsemble`: 8 solves a square
        image, 4 a rectangle); ``iterations`` then counts all of them.

    Returns: one record per restored image (the ``metrics.csv`` rows; metrics
    are None without a reference). ``metrics.csv`` is written when at least
    one image has a reference.
    """
    os.makedirs(out, exist_ok=True)
    model = SelfEnsemble(run.model) if self_ensemble else run.model
    graphdef, state = nnx.split(model)
    restore = _restorer(graphdef)
    key = jax.random.PRNGKey(int(seed))
    references = _references(reference) if reference else {}
    records = []
    for i, path in enumerate(tqdm(paths, desc="deblurring", unit="image", disable=not progress)):
        try:
            image = read_image(path)
        except ValueError as e:
            warnings.warn(f"skipping: {e}", stacklevel=2)
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        ref = None
        if simulate:
            ref = jnp.asarray(image)
            d = degrade(jax.random.fold_in(key, i), ref[None], run.blur, run.noise_std)[0]
            _write_png(d, os.path.join(out, f"{stem}_blurred.png"))
        else:
            d = jnp.asarray(image)
            ref_path = references.get(stem) if reference else None
            if reference and ref_path is None:
                warnings.warn(f"no reference for {path} in {reference}", stacklevel=2)
            if ref_path is not None:
                ref = jnp.asarray(read_image(ref_path))
                if ref.shape != d.shape:
                    raise ValueError(
                        f"reference {ref_path} is {ref.shape[:2]}, {path} is {d.shape[:2]}"
                    )
        x, iterations, status = restore(state, d)
        _write_png(x, os.path.join(out, f"{stem}_restored.png"))
        record = dict.fromkeys(CSV_FIELDS)
        record.update(
            file=os.path.basename(path),
            height=int(d.shape[0]),
            width=int(d.shape[1]),
            iterations=int(iterations),
            converged=bool(int(status) == int(jfbjax.CONVERGED)),
        )
        if ref is not None:
            record["psnr_blurred"], record["ssim_blurred"] = _metrics(d, ref)
            record["psnr_restored"], record["ssim_restored"] = _metrics(x, ref)
        records.append(record)
    if any(r["psnr_restored"] is not None for r in records):
        with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(records)
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.deblur_image",
        description="Deblur an image or a folder of images with a trained implicit model.",
    )
    p.add_argument("path", help="an image file or a folder of images")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--run", default=None, help="a run folder (default: the shipped model)")
    group.add_argument(
        "--model",
        default=pretrained.DEFAULT,
        help=f"a shipped model ({', '.join(pretrained.available())}) or an exported folder",
    )
    p.add_argument("--which", choices=("best", "latest"), default="best", help="with --run")
    p.add_argument("--simulate", action="store_true", help="blur the (clean) images first")
    p.add_argument("--reference", default=None, help="folder of clean references (same names)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of --simulate")
    p.add_argument("--out", default="deblurred", help="output folder")
    p.add_argument(
        "--self_ensemble", action="store_true",
        help="average the restorations of the flipped/rotated image (8 solves; 4 if not square)",
    )  # fmt: skip
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    if args.simulate and args.reference:
        p.error("--simulate makes its own references; drop --reference")
    try:
        paths = find_images(args.path)
        if args.reference and not os.path.isdir(args.reference):
            raise FileNotFoundError(f"--reference {args.reference} is not a folder")
        if args.run:
            from jfbjax.training.restore import load_run

            run = load_run(args.run, which=args.which)
        else:
            run = pretrained.load(args.model)
        records = deblur_files(
            run,
            paths,
            args.out,
            simulate=args.simulate,
            reference=args.reference,
            seed=args.seed,
            progress=not args.no_progress,
            self_ensemble=args.self_ensemble,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not records:
        print(f"error: no readable image in {args.path}", file=sys.stderr)
        return 2
    scored = [r for r in records if r["psnr_restored"] is not None]
    print(f"restored {len(records)} image(s) into {args.out}")
    if scored:
        gain = np.mean([r["psnr_restored"] - r["psnr_blurred"] for r in scored])
        mean = np.mean([r["psnr_restored"] for r in scored])
        print(
            f"PSNR {mean:.2f} dB on {len(scored)} image(s) with a reference "
            f"({gain:+.2f} dB over the blurred input); per image: "
            f"{os.path.join(args.out, 'metrics.csv')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
