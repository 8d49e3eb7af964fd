"""``load_data``: one entry point over the built-in, tfds and folder sources."""

from __future__ import annotations

import os

from jfbjax.data.builtin import load_builtin
from jfbjax.data.celeba_folder import find_image_dir, load_celeba_folder
from jfbjax.data.celeba_tfds import has_tfds_celeba, load_celeba_tfds
from jfbjax.data.common import DeblurData

__all__ = ["BUILTIN_NOTICE", "SOURCES", "detect_celeba", "load_data"]

SOURCES = ("auto", "builtin", "tfds", "folder")
BUILTIN_NOTICE = (
    "data: using the built-in offline image set (photos shipped in scikit-image, "
    "scikit-learn, matplotlib); "
    "pass --data tfds|folder --data_dir DIR to use CelebA"
)


def detect_celeba(data_dir: str | os.PathLike | None) -> str | None:
    """Which CelebA layout ``data_dir`` holds: ``"folder"`` (aligned JPEGs in it or in
    its ``img_align_celeba``), ``"tfds"`` (a prepared ``celeb_a``) or ``None``.
    The folder layout wins when both are present, as it needs no TensorFlow."""
    if data_dir is None:
        return None
    if find_image_dir(data_dir) is not None:
        return "folder"
    if has_tfds_celeba(data_dir):
        return "tfds"
    return None


def load_data(
    source: str = "auto",
    image_size: int = 32,
    *,
    data_dir: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    builtin_set: str = "scenes",
) -> DeblurData:
    """Loads clean images for deblurring as float32 (N, S, S, 3) arrays in [-1, 1].

    Every source selects its held-out images deterministically; training
    batches draw their crops from their own seed, ``train_batch(step,
    batch_size, seed)``.

    Args:
      source: ``"builtin"`` (photos bundled with scikit-image, offline),
        ``"tfds"`` (a prepared tensorflow-datasets ``celeb_a`` in ``data_dir``),
        ``"folder"`` (an ``img_align_celeba`` folder, the paper's split) or
        ``"auto"``: CelebA when ``data_dir`` holds it in either layout, else the
        built-in set, announced by one printed line. An explicit source that is
        missing raises; it never falls back.
      image_size: side S of every image.
      data_dir: where CelebA lives (tfds ``data_dir``, or the image folder or its
        parent). The built-in source ignores it.
      n_train, n_val, n_test: how many images to use (None: the source's
        defaults; for the built-in set ``n_train`` counts photos, not crops).
      builtin_set: the built-in set's training/validation photos
        (``"scenes"`` or ``"legacy"``, see :func:`~jfbjax.data.builtin.load_builtin`).

    Returns:
      A :class:`DeblurData`.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; choose one of {SOURCES}")
    counts = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    if source == "auto":
        found = detect_celeba(data_dir)
        if found is None:
            notice = BUILTIN_NOTICE
            if data_dir is not None:
                notice = f"data: no CelebA found in {os.fspath(data_dir)!r}; " + notice[6:]
            print(notice, flush=True)
            return load_builtin(image_size, **counts, train_set=builtin_set)
        source = found
    if source == "builtin":
        return load_builtin(image_size, **counts, train_set=builtin_set)
    if source == "folder":
        if data_dir is None:
            raise FileNotFoundError(
                "--data folder needs --data_dir: the img_align_celeba folder or its parent"
            )
        return load_celeba_folder(data_dir, image_size, **counts)
    return load_celeba_tfds(image_size, data_dir=data_dir, **counts)


def load_data_from_config(config) -> DeblurData:
    """:func:`load_data` with the ``config.data`` section of an experiment
    configuration (see ``experiments/configs.py``)."""
    return load_data(
        config.data.source,
        int(config.data.image_size),
        data_dir=config.data.data_dir,
        n_train=config.data.n_train,
        n_val=config.data.n_val,
        n_test=config.data.n_test,
        builtin_set=str(config.data.get("builtin_set", "scenes")),
    )
