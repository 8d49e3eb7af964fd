"""CelebA through tensorflow-datasets (``celeb_a``), read from a prepared ``data_dir``.

Never downloads: ``tfds.load(..., download=False)``. TensorFlow and
tensorflow-datasets are imported inside :func:`load_celeba_tfds` only (they
are the optional ``jfbjax[celeba]`` extra), and TensorFlow is hidden from any
GPU so that it does not take accelerator memory from JAX.

Splits: the first ``n_train`` images of tfds's ``train`` split (default 8000,
the paper's training-set size), the first ``n_val`` of ``validation``
(default 256) and the first ``n_test`` of ``test`` (default 2000, the paper's
test-set size), read in file order (``shuffle_files=False``) so the selection
is reproducible. These are not the paper's exact files (tfds orders examples
by its own key); use the folder source for the paper's 000001-010000 split.
Preprocessing is shared with the folder source: centre crop to 178x178, area
resize to ``image_size``, scale to [-1, 1].
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from jfbjax.data.common import (
    ArrayBatcher,
    DeblurData,
    _check_count,
    check_image_size,
    preprocess_celeba,
    to_float,
)

__all__ = [
    "DEFAULT_N_TEST",
    "DEFAULT_N_TRAIN",
    "DEFAULT_N_VAL",
    "has_tfds_celeba",
    "load_celeba_tfds",
]

DEFAULT_N_TRAIN = 8000
DEFAULT_N_VAL = 256
DEFAULT_N_TEST = 2000
DATASET = "celeb_a"


def has_tfds_celeba(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir/celeb_a/<version>/dataset_info.json`` exists (no TF import)."""
    root = os.path.join(os.fspath(data_dir), DATASET)
    try:
        with os.scandir(root) as it:
            return any(
                entry.is_dir() and os.path.isfile(os.path.join(entry.path, "dataset_info.json"))
                for entry in it
            )
    except OSError:
        return False


def _import_tfds():
    """Imports tensorflow_datasets, keeping TensorFlow off the GPU and quiet."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "--data tfds needs TensorFlow and tensorflow-datasets: "
            "pip install 'jfbjax[celeba]' (or use --data folder / --data builtin)"
        ) from e
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised: leave them as they are
        pass
    return tfds


def _not_prepared_message(data_dir: str | None) -> str:
    where = data_dir if data_dir is not None else "the default tfds folder (~/tensorflow_datasets)"
    target = data_dir if data_dir is not None else "~/tensorflow_datasets"
    return (
        f"tensorflow-datasets 'celeb_a' is not prepared in {where} (this code never downloads). "
        f"Prepare it once with `tfds build celeb_a --data_dir {target}` (or, if the automatic "
        f"download fails, download the CelebA files by hand into {target}/downloads/manual and "
        "run the same command), then pass --data tfds --data_dir DIR; or use an unzipped "
        "img_align_celeba folder with --data folder --data_dir DIR; or --data builtin."
    )


def load_celeba_tfds(
    image_size: int = 32,
    *,
    data_dir: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
) -> DeblurData:
    """CelebA from a prepared tensorflow-datasets ``celeb_a`` (see the module docstring).

    Raises:
      ImportError: TensorFlow / tensorflow-datasets are not installed.
      FileNotFoundError: ``celeb_a`` is not prepared in ``data_dir``.
    """
    image_size = check_image_size(image_size)
    counts = {
        "train": _check_count(n_train, "n_train") or DEFAULT_N_TRAIN,
        "validation": _check_count(n_val, "n_val") or DEFAULT_N_VAL,
        "test": _check_count(n_test, "n_test") or DEFAULT_N_TEST,
    }
    data_dir = None if data_dir is None else os.fspath(data_dir)
    tfds = _import_tfds()

    parts = {}
    for split, n in counts.items():
        try:
            ds = tfds.load(
                DATASET,
                split=f"{split}[:{n}]",
                data_dir=data_dir,
                download=False,
                shuffle_files=False,
            )
        except (AssertionError, tfds.core.DatasetNotFoundError) as e:
            raise FileNotFoundError(_not_prepared_message(data_dir)) from e
        # take(n) as well as the split slice: mocked datasets ignore the slice.
        ds = ds.take(n).map(lambda ex: ex["image"])
        images = [preprocess_celeba(im, image_size) for im in tfds.as_numpy(ds)]
        if not images:
            raise ValueError(f"tfds celeb_a split {split!r} in {data_dir} yielded no image")
        if len(images) < n:
            warnings.warn(
                f"tfds celeb_a split {split!r} has only {len(images)} images; {n} were requested",
                stacklevel=2,
            )
        parts[split] = np.stack(images)

    train = parts["train"]
    return DeblurData(
        name="celeba-tfds",
        image_size=image_size,
        train_batch=ArrayBatcher(train),
        val=to_float(parts["validation"]),
        test=to_float(parts["test"]),
        description=(
            f"CelebA (tfds celeb_a in {data_dir or 'the default tfds folder'}): "
            f"{len(train)} train, {len(parts['validation'])} val, {len(parts['test'])} test "
            f"at {image_size}x{image_size}"
        ),
        train_size=int(train.shape[0]),
    )
