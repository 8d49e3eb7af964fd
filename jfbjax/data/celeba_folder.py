"""CelebA from a folder of aligned images (``img_align_celeba/000001.jpg`` ...).

The paper's split (arXiv 2402.02065): files 000001-008000 for training and
008001-010000 for testing. Validation images are the last ``n_val`` files of
the training range (default 256: 007745-008000), so they are never trained on;
training then uses the first ``n_train`` of the remaining files (default all,
000001-007744) and testing the first ``n_test`` of the test range (default all
2000). The ranges are a :class:`FolderSplit`; :data:`DEFAULT_SPLIT` is looked
up at call time, so it can be replaced (tests use a 12-file split).

Each image is centre-cropped to a square (178x178 from 218x178), area-resized
to ``image_size`` and scaled to [-1, 1], exactly as the tfds source does.
An unreadable or corrupt file is skipped with a warning naming it; a file
missing from the requested range is skipped with one warning listing the
missing names; both are counted in ``DeblurData.skipped``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from jfbjax.data.common import (
    ArrayBatcher,
    DeblurData,
    _check_count,
    check_image_size,
    preprocess_celeba,
    read_rgb_uint8,
    to_float,
)

__all__ = [
    "DEFAULT_N_VAL",
    "DEFAULT_SPLIT",
    "PAPER_SPLIT",
    "FolderSplit",
    "find_image_dir",
    "load_celeba_folder",
]

_EXTENSIONS = (".jpg", ".png")  # img_align_celeba and img_align_celeba_png
_NAME = re.compile(r"^\d{6}\.(jpg|png)$")


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """Inclusive ranges of CelebA file numbers: ``train=(1, 8000)`` is 000001-008000.

    Raises ``ValueError`` for an empty or non-positive range, or for train and
    test ranges that overlap.
    """

    train: tuple[int, int]
    test: tuple[int, int]

    def __post_init__(self) -> None:
        for name, (first, last) in (("train", self.train), ("test", self.test)):
            if not 1 <= first <= last:
                raise ValueError(
                    f"FolderSplit.{name} must be (first, last) with 1 <= first "
                    f"<= last, got {(first, last)}"
                )
        (a, b), (c, d) = self.train, self.test
        if not (b < c or d < a):
            raise ValueError(f"FolderSplit train {self.train} and test {self.test} overlap")


PAPER_SPLIT = FolderSplit(train=(1, 8000), test=(8001, 10000))
DEFAULT_SPLIT = PAPER_SPLIT
DEFAULT_N_VAL = 256


def _has_celeba_files(directory: str) -> bool:
    """True when ``directory`` holds at least one file named like ``000001.jpg``."""
    try:
        with os.scandir(directory) as it:
            return any(_NAME.match(entry.name) for entry in it)
    except OSError:
        return False


def find_image_dir(data_dir: str | os.PathLike) -> str | None:
    """The folder holding the CelebA images: ``data_dir/img_align_celeba`` (or
    ``img_align_celeba_png``) if present, else ``data_dir`` itself; ``None`` when
    neither contains files named like ``000001.jpg``."""
    data_dir = os.fspath(data_dir)
    for sub in ("img_align_celeba", "img_align_celeba_png"):
        candidate = os.path.join(data_dir, sub)
        if os.path.isdir(candidate) and _has_celeba_files(candidate):
            return candidate
    if os.path.isdir(data_dir) and _has_celeba_files(data_dir):
        return data_dir
    return None


def _not_found_message(data_dir: str, split: FolderSplit, detail: str) -> str:
    (a, b), (c, d) = split.train, split.test
    return (
        f"CelebA image folder not usable: {detail}. Expected aligned CelebA images "
        f"named {a:06d}.jpg ... {d:06d}.jpg (train {a:06d}-{b:06d}, test {c:06d}-{d:06d}) "
        f"either in {data_dir!r} itself or in {os.path.join(data_dir, 'img_align_celeba')!r}. "
        "Download img_align_celeba.zip from the CelebA site "
        "(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and unzip it there, "
        "or use --data tfds with a prepared tensorflow-datasets celeb_a, "
        "or --data builtin for the offline image set."
    )


def _file_for(image_dir: str, number: int) -> str | None:
    for ext in _EXTENSIONS:
        path = os.path.join(image_dir, f"{number:06d}{ext}")
        if os.path.isfile(path):
            return path
    return None


def _read(path: str, image_size: int) -> np.ndarray | str:
    """The preprocessed (S, S, 3) uint8 image, or why it could not be read (naming it)."""
    try:
        rgb = read_rgb_uint8(path)
    except ValueError as e:
        return str(e)
    if min(rgb.shape[:2]) < 1:
        return f"{path} is an empty image"
    return preprocess_celeba(rgb, image_size)


def _load_numbers(
    image_dir: str, numbers: range, image_size: int, workers: int
) -> tuple[np.ndarray, int]:
    """Loads the files numbered ``numbers``; returns (uint8 images, number skipped).

    Missing files get one warning listing them; unreadable files one warning each.
    Warnings are raised on the calling thread so that filters and pytest see them.
    """
    paths = [_file_for(image_dir, n) for n in numbers]
    missing = [f"{n:06d}" for n, p in zip(numbers, paths, strict=True) if p is None]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        warnings.warn(
            f"{len(missing)} CelebA file(s) missing from {image_dir}: {shown} (skipped)",
            stacklevel=3,
        )
    present = [p for p in paths if p is not None]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _read(p, image_size), present))
    images, bad = [], 0
    for result in results:
        if isinstance(result, str):
            bad += 1
            warnings.warn(f"skipping unreadable image: {result}", stacklevel=3)
        else:
            images.append(result)
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    return stacked, len(missing) + bad


def load_celeba_folder(
    data_dir: str | os.PathLike,
    image_size: int = 32,
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    split: FolderSplit | None = None,
    workers: int | None = None,
) -> DeblurData:
    """CelebA from an image folder with the paper's split (see the module docstring).

    Args:
      data_dir: the ``img_align_celeba`` folder or its parent.
      image_size: output side S.
      n_train: training images, the first of the training range after the
        validation files are taken out (default: all of them).
      n_val: validation images, the last of the training range (default 256).
      n_test: test images, the first of the test range (default: all).
      split: file-number ranges (default: :data:`DEFAULT_SPLIT`, the paper's).
      workers: threads decoding images (default: ``min(8, os.cpu_count())``).

    Raises:
      FileNotFoundError: the folder is missing or holds none of the expected files.
      ValueError: a requested count does not fit in the split, or every
        training, validation or test file was unreadable.
    """
    image_size = check_image_size(image_size)
    n_train = _check_count(n_train, "n_train")
    n_val = _check_count(n_val, "n_val")
    n_test = _check_count(n_test, "n_test")
    split = DEFAULT_SPLIT if split is None else split
    n_val = DEFAULT_N_VAL if n_val is None else n_val
    workers = workers or min(8, os.cpu_count() or 1)

    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(_not_found_message(data_dir, split, "no such directory"))
    image_dir = find_image_dir(data_dir)
    if image_dir is None:
        raise FileNotFoundError(
            _not_found_message(data_dir, split, "no file named like 000001.jpg found")
        )

    (a, b), (c, d) = split.train, split.test
    n_range = b - a + 1
    if n_val >= n_range:
        raise ValueError(
            f"n_val={n_val} leaves no training image in the training range "
            f"{a:06d}-{b:06d} ({n_range} files)"
        )
    available = n_range - n_val
    if n_train is not None and n_train > available:
        raise ValueError(
            f"n_train={n_train} but only {available} files of the training range "
            f"{a:06d}-{b:06d} remain after the {n_val} validation files"
        )
    if n_test is not None and n_test > d - c + 1:
        raise ValueError(
            f"n_test={n_test} but the test range {c:06d}-{d:06d} has {d - c + 1} files"
        )
    train_numbers = range(a, a + (available if n_train is None else n_train))
    val_numbers = range(b - n_val + 1, b + 1)
    test_numbers = range(c, c + (d - c + 1 if n_test is None else n_test))
    if not any(_file_for(image_dir, n) for n in (*train_numbers, *val_numbers, *test_numbers)):
        raise FileNotFoundError(
            _not_found_message(data_dir, split, f"none of the expected files is in {image_dir}")
        )

    parts, skipped = {}, 0
    for part, numbers in (("train", train_numbers), ("val", val_numbers), ("test", test_numbers)):
        images, n_bad = _load_numbers(image_dir, numbers, image_size, workers)
        if images.shape[0] == 0:
            raise ValueError(
                f"no readable CelebA {part} image among {numbers[0]:06d}-{numbers[-1]:06d} "
                f"in {image_dir}"
            )
        parts[part] = images
        skipped += n_bad

    return DeblurData(
        name="celeba-folder",
        image_size=image_size,
        train_batch=ArrayBatcher(parts["train"]),
        val=to_float(parts["val"]),
        test=to_float(parts["test"]),
        skipped=skipped,
        description=(
            f"CelebA folder {image_dir}: {len(parts['train'])} train "
            f"({train_numbers[0]:06d}-{train_numbers[-1]:06d}), {len(parts['val'])} val "
            f"({val_numbers[0]:06d}-{val_numbers[-1]:06d}), {len(parts['test'])} test "
            f"({test_numbers[0]:06d}-{test_numbers[-1]:06d}) at {image_size}x{image_size}, "
            f"{skipped} skipped"
        ),
        train_size=int(parts["train"].shape[0]),
    )
