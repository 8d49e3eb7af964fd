"""The data interface shared by every source, and the image helpers they use.

Every source hands out float32 numpy arrays of layout (N, H, W, 3) with H = W =
``image_size`` and values in [-1, 1], obtained from 8-bit images by

    x = u / 127.5 - 1,    u in {0, ..., 255}.

Images are kept in memory as uint8 and only the requested batch is converted,
so a training step pays for B images, not for the whole set.

Training batches come from ``train_batch(step, batch_size, seed)``, a pure
function of its arguments: there is no iterator state, so a run resumed at
step k sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = [
    "ArrayBatcher",
    "DeblurData",
    "centre_crop_square",
    "check_image_size",
    "preprocess_celeba",
    "read_rgb_uint8",
    "resize_uint8",
    "to_float",
    "to_rgb_uint8",
]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class DeblurData:
    """Images for a deblurring experiment (clean images only; blur is applied later).

    Attributes:
      name: the source: ``"builtin"``, ``"celeba-tfds"`` or ``"celeba-folder"``.
      image_size: side length H = W of every image handed out.
      train_batch: ``train_batch(step, batch_size, seed) -> (B, H, W, 3)`` float32
        in [-1, 1]; a deterministic pure function of its three integer arguments.
      val: (Nv, H, W, 3) float32 held-out validation images (used to tune the
        weights of classical baselines), disjoint from the training images.
      test: (Nt, H, W, 3) float32 held-out test images, disjoint from both.
      skipped: number of image files that could not be read (and were left out).
      description: one line for logs.
      train_size: number of distinct training images when the training set is a
        fixed array (an epoch is ``train_size // batch_size`` steps); ``None``
        for a stream of random crops, which has no epochs.
    """

    name: str
    image_size: int
    train_batch: Callable[[int, int, int], np.ndarray]
    val: np.ndarray
    test: np.ndarray
    skipped: int = 0
    description: str
    train_size: int | None = None

    def __post_init__(self) -> None:
        check_image_size(self.image_size)
        if not callable(self.train_batch):
            raise TypeError(f"train_batch must be callable, got {type(self.train_batch)!r}")
        for part in ("val", "test"):
            _check_float_images(getattr(self, part), self.image_size, f"DeblurData.{part}")
        if self.skipped < 0:
            raise ValueError(f"skipped must be >= 0, got {self.skipped}")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be None or >= 1, got {self.train_size}")


def _check_float_images(x: np.ndarray, image_size: int, what: str) -> None:
    """Raises if ``x`` is not a non-empty float32 (N, S, S, 3) array of finite values in [-1, 1]."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(
            f"{what} must be a float32 numpy array, got {type(x).__name__} "
            f"of dtype {getattr(x, 'dtype', None)}"
        )
    if x.ndim != 4 or x.shape[1:] != (image_size, image_size, 3) or x.shape[0] == 0:
        raise ValueError(
            f"{what} must have shape (N>=1, {image_size}, {image_size}, 3), got {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contains non-finite values")
    if x.min() < -1.0 or x.max() > 1.0:
        raise ValueError(f"{what} must lie in [-1, 1], got [{x.min()}, {x.max()}]")


def check_image_size(image_size: int) -> int:
    """Returns ``image_size`` as an int after checking that it is a positive integer.

    Raises ``TypeError`` for a non-integer (floats included) and ``ValueError`` for ``< 1``.
    """
    try:
        size = operator.index(image_size)
    except TypeError:
        raise TypeError(f"image_size must be an integer, got {image_size!r}") from None
    if size < 1:
        raise ValueError(f"image_size must be >= 1, got {size}")
    return size


def _check_count(value: int | None, name: str) -> int | None:
    """Checks an optional image count (``n_train``, ``n_val``, ``n_test``): None or >= 1."""
    if value is None:
        return None
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer or None, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1 (or None for the default), got {n}")
    return n


def _check_batch_args(step: int, batch_size: int, seed: int) -> tuple[int, int, int]:
    """Validates the arguments of a ``train_batch`` call; returns them as Python ints."""
    try:
        step, batch_size, seed = (operator.index(v) for v in (step, batch_size, seed))
    except TypeError:
        raise TypeError(
            f"train_batch(step, batch_size, seed) takes integers, got "
            f"({step!r}, {batch_size!r}, {seed!r})"
        ) from None
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return step, batch_size, seed


def to_float(images: np.ndarray) -> np.ndarray:
    """Maps uint8 images u to float32 x = u / 127.5 - 1 in [-1, 1].

    0 maps to -1 and 255 to 1; any shape. Raises ``TypeError`` for another dtype.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got dtype {images.dtype}")
    return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def read_rgb_uint8(path: str) -> np.ndarray:
    """The image file at ``path`` as an (H, W, 3) uint8 array (grayscale replicated,
    alpha dropped, by Pillow's RGB conversion).

    Raises:
      ValueError: Pillow cannot read it (not an image, truncated, too large); the
        message names the file and the reason.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = f"{type(e).__name__}: {e}"
        raise ValueError(f"{path} is not an image Pillow can read ({reason})") from None


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Returns an (H, W, 3) uint8 image from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).

    Grayscale is replicated to three channels; an alpha channel is dropped.
    Booleans and floats in [0, 1] are scaled to 0..255.
    """
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)) or image.min() < 0 or image.max() > 1:
            raise ValueError("float images must be finite and lie in [0, 1]")
        image = np.round(image * 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise TypeError(f"unsupported image dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {image.shape}"
        )
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes an (H, W, 3) uint8 image to (height, width, 3).

    Downscaling (in both directions) uses PIL's box filter, i.e. each output
    pixel is the area-weighted mean of the input pixels it covers, which is the
    anti-aliased "area" resize. Any upscaling uses bicubic interpolation.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.copy()
    downscale = height <= h and width <= w
    resample = Image.Resampling.BOX if downscale else Image.Resampling.BICUBIC
    out = Image.fromarray(image).resize((width, height), resample=resample)
    return np.asarray(out, dtype=np.uint8)


def centre_crop_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H, W, ...) image (218x178 CelebA -> 178x178).

    Side ``min(H, W)``; an odd surplus leaves the extra row or column at the
    bottom or right. Returns a view, not a copy.
    """
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[top : top + s, left : left + s]


def preprocess_celeba(image: np.ndarray, image_size: int) -> np.ndarray:
    """CelebA preprocessing shared by the tfds and folder sources.

    Centre crop to a square (178x178 from the aligned 218x178 images), then an
    area (anti-aliased) resize to ``image_size``. Returns (S, S, 3) uint8.
    """
    square = centre_crop_square(to_rgb_uint8(image))
    return resize_uint8(square, image_size, image_size)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayBatcher:
    """Epoch-wise shuffled batches from a fixed uint8 array of N training images.

    Step k of batch size B belongs to epoch e = k // (N // B), at position
    i = k mod (N // B). Epoch e uses the permutation drawn from
    ``np.random.default_rng([seed, e])``, and step k takes its entries
    i*B .. i*B + B - 1. The last N mod B images of each permutation are left
    out of that epoch (drop-remainder), so every batch has exactly B images
    and no image appears twice in an epoch.
    """

    images: np.ndarray

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError("ArrayBatcher needs a (N, H, W, 3) uint8 array")
        if x.shape[0] < 1 or x.shape[-1] != 3:
            raise ValueError(f"ArrayBatcher needs N >= 1 RGB images, got shape {x.shape}")

    @property
    def num_images(self) -> int:
        """N, the number of training images."""
        return int(self.images.shape[0])

    def steps_per_epoch(self, batch_size: int) -> int:
        """Number of full batches of ``batch_size`` in one epoch."""
        n = self.num_images
        if batch_size > n:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {n} training images; "
                f"use a batch size <= {n} or more training images (n_train)"
            )
        return n // batch_size

    def indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """The indices into ``images`` of the batch at ``step``."""
        step, batch_size, seed = _check_batch_args(step, batch_size, seed)
        epoch, i = divmod(step, self.steps_per_epoch(batch_size))
        perm = np.random.default_rng([seed, epoch]).permutation(self.num_images)
        return perm[i * batch_size : (i + 1) * batch_size]

    def __call__(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        return to_float(self.images[self.indices(step, batch_size, seed)])
