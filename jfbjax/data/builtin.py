"""A small offline image set: real photographs shipped inside installed packages.

No download is ever needed: every photo below ships inside a wheel the
project depends on (``skimage/data/*`` of scikit-image, the sample images of
scikit-learn, and matplotlib's sample data) and loads without network access.
Photos that ``skimage.data`` fetches with pooch on first use (eagle, lily,
skin, ...) are deliberately not used, and ``cat`` is left out because it is
``chelsea`` again.

The split is by photo, so no scene is shared between training and evaluation:

* training (8 photos): chelsea (a cat), the left and right views of the stereo
  motorcycle pair, china (a temple, scikit-learn), flower (scikit-learn), and
  the grayscale camera (cameraman), brick (a brick wall) and grass, replicated
  to three channels. The stereo pair stays on one side of the split because
  it is one scene. The micrographs and scientific images of earlier versions
  (immunohistochemistry, retina, moon, coins, gravel) are no longer used:
  they are not photographs of scenes like the test images. hubble_deep_field
  is left out too (most of its crops are black sky).
* validation (2 photos): rocket (a launch pad at dusk) and grace_hopper (a
  colour portrait, matplotlib), so that settings are chosen on a portrait and
  a scene, as the test set holds.
* test (2 photos, unchanged so that old and new numbers compare): astronaut
  (a portrait, Eileen Collins) and coffee (a cup of coffee on a wooden table).

Training batches are random ``image_size`` crops, with a random element of
the dihedral group (horizontal flip, vertical flip, transpose), taken from a
fixed pyramid of each photo: resized copies whose shorter side is
``image_size * 2**(k/2)`` for k = 2..8 (2x to 16x the crop size, capped at the
photo's native size). A batch draws, per sample, a photo uniformly, then a
level uniformly, then a crop position uniformly, then the three flips with
probability 1/2 each, all from ``np.random.default_rng([seed, step])``.

Validation and test images are fixed: each photo is resized (area filter) so
that its shorter side is ``eval_scale * image_size`` (default 4x, capped at
the native size), and cut into a centred grid of non-overlapping crops, in
row-major order, photo after photo. At ``image_size=32`` this gives 24 + 16 =
40 validation crops (rocket, grace_hopper) and 16 + 24 = 40 test crops
(astronaut, coffee). ``n_val`` / ``n_test`` pick that many crops evenly
spaced through the list.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import skimage
import skimage.data

from jfbjax.data.common import (
    DeblurData,
    _check_batch_args,
    _check_count,
    check_image_size,
    resize_uint8,
    to_float,
    to_rgb_uint8,
)

__all__ = [
    "LEGACY_TRAIN_PHOTOS",
    "LEGACY_VAL_PHOTOS",
    "PYRAMID_FACTORS",
    "SCENES_PLUS_TRAIN_PHOTOS",
    "TEST_PHOTOS",
    "TRAIN_PHOTOS",
    "TRAIN_SETS",
    "VAL_PHOTOS",
    "CropBatcher",
    "grid_crops",
    "load_builtin",
    "load_photo",
]

TRAIN_PHOTOS: tuple[str, ...] = (
    "chelsea",
    "motorcycle_left",
    "motorcycle_right",
    "china",
    "flower",
    "camera",
    "brick",
    "grass",
)
VAL_PHOTOS: tuple[str, ...] = ("rocket", "grace_hopper")

#: The training and validation photos of the earlier built-in set (before the
#: photographs of scenes above replaced its micrographs), kept so that the
#: ablation can measure what the new set changes: ``train_set="legacy"``.
LEGACY_TRAIN_PHOTOS: tuple[str, ...] = (
    "chelsea",
    "motorcycle_left",
    "motorcycle_right",
    "immunohistochemistry",
    "retina",
    "camera",
    "moon",
    "coins",
    "gravel",
)
LEGACY_VAL_PHOTOS: tuple[str, ...] = ("rocket",)

#: The photographs of scenes and, as more training data, the legacy set's
#: micrographs and scientific images (13 photos, the same validation photos):
#: ``train_set="scenes_plus"``, an ablation lever (does more, less similar data help?).
SCENES_PLUS_TRAIN_PHOTOS: tuple[str, ...] = TRAIN_PHOTOS + tuple(
    p for p in LEGACY_TRAIN_PHOTOS if p not in TRAIN_PHOTOS
)

#: ``train_set`` name -> (training photos, validation photos).
TRAIN_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "scenes": (TRAIN_PHOTOS, VAL_PHOTOS),
    "legacy": (LEGACY_TRAIN_PHOTOS, LEGACY_VAL_PHOTOS),
    "scenes_plus": (SCENES_PLUS_TRAIN_PHOTOS, VAL_PHOTOS),
}
TEST_PHOTOS: tuple[str, ...] = ("astronaut", "coffee")

# Shorter side of each training pyramid level, as a multiple of image_size.
PYRAMID_FACTORS: tuple[float, ...] = tuple(2 ** (k / 2) for k in range(2, 9))


def _matplotlib_sample(name: str) -> np.ndarray:
    """A photo of matplotlib's bundled sample data (``mpl-data/sample_data``)."""
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data(name) as f:
        return np.asarray(Image.open(f).convert("RGB"))


def _sklearn_sample(name: str) -> np.ndarray:
    """A photo bundled with scikit-learn (``sklearn/datasets/images``)."""
    import sklearn.datasets

    return np.asarray(sklearn.datasets.load_sample_image(name))


_LOADERS = {
    "astronaut": skimage.data.astronaut,
    "brick": skimage.data.brick,
    "china": lambda: _sklearn_sample("china.jpg"),
    "flower": lambda: _sklearn_sample("flower.jpg"),
    "grace_hopper": lambda: _matplotlib_sample("grace_hopper.jpg"),
    "grass": skimage.data.grass,
    "coins": skimage.data.coins,
    "gravel": skimage.data.gravel,
    "immunohistochemistry": skimage.data.immunohistochemistry,
    "moon": skimage.data.moon,
    "retina": skimage.data.retina,
    "camera": skimage.data.camera,
    "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "motorcycle_left": lambda: skimage.data.stereo_motorcycle()[0],
    "motorcycle_right": lambda: skimage.data.stereo_motorcycle()[1],
    "rocket": skimage.data.rocket,
}


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """The bundled photo ``name`` as a read-only (H, W, 3) uint8 array (cached).

    Grayscale photos are replicated to three channels. Raises ``KeyError`` for
    a name not in the built-in list and ``RuntimeError`` if its package
    cannot load the file (it must ship inside the package; nothing is fetched).
    """
    if name not in _LOADERS:
        raise KeyError(f"unknown built-in photo {name!r}; known: {sorted(_LOADERS)}")
    try:
        image = _LOADERS[name]()
    except Exception as e:  # a missing optional file surfaces as various errors
        raise RuntimeError(
            f"could not load the built-in photo {name!r} (it must ship inside an installed "
            f"package: scikit-image, scikit-learn or matplotlib; nothing is downloaded): {e}"
        ) from e
    image = to_rgb_uint8(image)
    image.flags.writeable = False
    return image


def _resize_short_side(image: np.ndarray, short: int) -> np.ndarray:
    """Resizes so that the shorter side is ``short`` pixels, keeping the aspect ratio."""
    h, w = image.shape[:2]
    scale = short / min(h, w)
    size = (max(short, round(h * scale)), max(short, round(w * scale)))
    return resize_uint8(image, *size)


def _pyramid(image: np.ndarray, image_size: int) -> list[np.ndarray]:
    """Resized copies of ``image`` whose shorter side is ``image_size * f`` for f in
    ``PYRAMID_FACTORS``, capped at the native size (duplicates removed)."""
    native = min(image.shape[:2])
    shorts = sorted({min(native, round(image_size * f)) for f in PYRAMID_FACTORS})
    shorts = [max(s, image_size) for s in shorts]
    return [_resize_short_side(image, s) for s in dict.fromkeys(shorts)]


def grid_crops(image: np.ndarray, image_size: int, short_side: int) -> np.ndarray:
    """Non-overlapping ``image_size`` crops on a centred grid, row-major.

    The image is first resized so that its shorter side is ``min(short_side,
    native shorter side)`` (never below ``image_size``). Returns (n, S, S, 3) uint8.
    """
    short = max(image_size, min(short_side, min(image.shape[:2])))
    image = _resize_short_side(image, short)
    h, w = image.shape[:2]
    rows, cols = h // image_size, w // image_size
    top, left = (h - rows * image_size) // 2, (w - cols * image_size) // 2
    crops = [
        image[
            top + r * image_size : top + (r + 1) * image_size,
            left + c * image_size : left + (c + 1) * image_size,
        ]
        for r in range(rows)
        for c in range(cols)
    ]
    return np.stack(crops)


def _evenly_spaced(images: np.ndarray, n: int | None, what: str) -> np.ndarray:
    """``n`` entries of ``images`` at evenly spaced indices (all when n is None)."""
    total = images.shape[0]
    if n is None or n == total:
        return images
    if n > total:
        raise ValueError(
            f"{what}={n} but the built-in set has only {total} {what[2:]} crops at this "
            f"image_size; ask for at most {total}, or raise eval_scale for more crops"
        )
    return images[np.round(np.linspace(0, total - 1, n)).astype(int)]


@dataclasses.dataclass(frozen=True, eq=False)
class CropBatcher:
    """Random crops with random flips and transposes from a fixed set of image pyramids.

    ``pyramids[p]`` is a tuple of uint8 (h, w, 3) levels of photo p, each at
    least ``image_size`` on both sides. For batch ``(step, batch_size, seed)``
    and ``rng = np.random.default_rng([seed, step])``, sample j takes photo
    p_j ~ U{photos}, level l_j ~ U{levels of p_j}, top-left corner uniform over
    the valid positions of that level, then (with ``flip``) a horizontal flip,
    a vertical flip and a transpose, each with probability 1/2: a uniform
    element of the dihedral group of the square.
    """

    pyramids: tuple[tuple[np.ndarray, ...], ...]
    image_size: int
    flip: bool = True

    def __post_init__(self) -> None:
        if not self.pyramids or any(not levels for levels in self.pyramids):
            raise ValueError("CropBatcher needs at least one photo with at least one level")
        s = self.image_size
        for levels in self.pyramids:
            for level in levels:
                if level.dtype != np.uint8 or level.ndim != 3 or level.shape[-1] != 3:
                    raise ValueError("pyramid levels must be (h, w, 3) uint8 arrays")
                if min(level.shape[:2]) < s:
                    raise ValueError(f"pyramid level {level.shape} is smaller than {s}x{s}")

    def __call__(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        step, batch_size, seed = _check_batch_args(step, batch_size, seed)
        s = self.image_size
        rng = np.random.default_rng([seed, step])
        photos = rng.integers(len(self.pyramids), size=batch_size)
        u_level, u_top, u_left = rng.random((3, batch_size))
        flips = rng.random((3, batch_size)) < 0.5
        out = np.empty((batch_size, s, s, 3), dtype=np.uint8)
        for j, p in enumerate(photos):
            levels = self.pyramids[p]
            level = levels[int(u_level[j] * len(levels))]
            h, w = level.shape[:2]
            top, left = int(u_top[j] * (h - s + 1)), int(u_left[j] * (w - s + 1))
            crop = level[top : top + s, left : left + s]
            if self.flip:
                crop = crop[:, ::-1] if flips[0, j] else crop
                crop = crop[::-1] if flips[1, j] else crop
                crop = crop.transpose(1, 0, 2) if flips[2, j] else crop
            out[j] = crop
        return to_float(out)


def load_builtin(
    image_size: int = 32,
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    eval_scale: float = 4.0,
    train_set: str = "scenes",
) -> DeblurData:
    """The built-in offline set (see the module docstring for which photo goes where).

    Args:
      image_size: crop side S; at most the shorter side of the smallest photo (300).
      n_train: number of training photos to use, the first ``n_train`` of
        ``TRAIN_PHOTOS`` (default: all 8).
      n_val: number of validation crops (default: every grid crop, 40 at S=32).
      n_test: number of test crops (default: every grid crop, 40 at S=32).
      eval_scale: validation/test photos are resized so their shorter side is
        ``eval_scale * image_size`` (capped at the native size) before gridding.
      train_set: ``"scenes"`` (the default, ``TRAIN_PHOTOS`` / ``VAL_PHOTOS``),
        ``"legacy"`` (the earlier set, ``LEGACY_TRAIN_PHOTOS`` /
        ``LEGACY_VAL_PHOTOS``) or ``"scenes_plus"``
        (``SCENES_PLUS_TRAIN_PHOTOS`` / ``VAL_PHOTOS``); the test photos are
        the same for all.
    """
    if train_set not in TRAIN_SETS:
        raise ValueError(f"train_set must be one of {sorted(TRAIN_SETS)}, got {train_set!r}")
    train_photos, val_photos = TRAIN_SETS[train_set]
    image_size = check_image_size(image_size)
    n_train = _check_count(n_train, "n_train")
    n_val = _check_count(n_val, "n_val")
    n_test = _check_count(n_test, "n_test")
    if not eval_scale >= 1:
        raise ValueError(f"eval_scale must be >= 1, got {eval_scale}")
    smallest = min(min(load_photo(p).shape[:2]) for p in train_photos + val_photos + TEST_PHOTOS)
    if image_size > smallest:
        raise ValueError(
            f"image_size {image_size} is larger than the smallest built-in photo "
            f"({smallest} px); use image_size <= {smallest} or CelebA (--data tfds|folder)"
        )
    if n_train is not None and n_train > len(train_photos):
        raise ValueError(
            f"n_train={n_train} but the built-in set has {len(train_photos)} training photos"
        )
    train_names = train_photos[: n_train or len(train_photos)]
    pyramids = tuple(tuple(_pyramid(load_photo(p), image_size)) for p in train_names)
    batcher = CropBatcher(pyramids, image_size)

    short = round(eval_scale * image_size)

    def crops(names: tuple[str, ...]) -> np.ndarray:
        return np.concatenate([grid_crops(load_photo(p), image_size, short) for p in names])

    val = _evenly_spaced(crops(val_photos), n_val, "n_val")
    test = _evenly_spaced(crops(TEST_PHOTOS), n_test, "n_test")
    description = (
        f"built-in (photos shipped in scikit-image, scikit-learn, matplotlib): "
        f"{len(train_names)} train photos (random {image_size}x{image_size} crops at up to "
        f"{len(PYRAMID_FACTORS)} scales + flips/transposes), "
        f"{len(val)} val crops ({', '.join(val_photos)}), "
        f"{len(test)} test crops ({', '.join(TEST_PHOTOS)})"
    )
    return DeblurData(
        name="builtin",
        image_size=image_size,
        train_batch=batcher,
        val=to_float(val),
        test=to_float(test),
        description=description,
    )
