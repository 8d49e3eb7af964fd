"""Tests for jfbjax.data: built-in photos, CelebA folder, CelebA tfds (mocked), auto."""

from __future__ import annotations

import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from jfbjax.data import (
    BUILTIN_NOTICE,
    ArrayBatcher,
    DeblurData,
    builtin,
    celeba_folder,
    detect_celeba,
    load_data,
)
from jfbjax.data.common import preprocess_celeba, to_float


def _check_images(x: np.ndarray, n: int | None, size: int) -> None:
    assert x.dtype == np.float32
    assert x.ndim == 4 and x.shape[1:] == (size, size, 3)
    if n is not None:
        assert x.shape[0] == n
    assert np.all(np.isfinite(x))
    assert x.min() >= -1.0 and x.max() <= 1.0


@pytest.fixture(scope="module")
def builtin32() -> DeblurData:
    return load_data("builtin", 32)


# ----------------------------------------------------------------------------- built-in


def test_builtin_shapes_and_range(builtin32):
    d = builtin32
    assert d.name == "builtin" and d.image_size == 32 and d.skipped == 0
    assert d.train_size is None
    _check_images(d.val, 40, 32)
    _check_images(d.test, 40, 32)
    batch = d.train_batch(0, 16, 0)
    _check_images(batch, 16, 32)
    # Real photos use the full range and are not flat.
    assert d.test.min() < -0.9 and d.test.max() > 0.9
    assert batch.std() > 0.1
    assert "8 train photos" in d.description and "40 test crops" in d.description


def test_builtin_train_batch_is_pure(builtin32):
    f = builtin32.train_batch
    a = f(7, 8, 3)
    np.testing.assert_array_equal(a, f(7, 8, 3))
    f(8, 8, 3)  # an intervening call must not change what step 7 returns
    np.testing.assert_array_equal(a, f(7, 8, 3))
    assert not np.array_equal(a, f(8, 8, 3))
    assert not np.array_equal(a, f(7, 8, 4))
    # numpy integers are accepted; bad arguments are rejected.
    np.testing.assert_array_equal(a, f(np.int64(7), np.int32(8), 3))
    for args in [(-1, 8, 0), (0, 0, 0), (0, 8, -1)]:
        with pytest.raises(ValueError):
            f(*args)
    with pytest.raises(TypeError):
        f(0.5, 8, 0)


def test_builtin_split_is_disjoint_by_photo(builtin32):
    train, val, test = (
        set(builtin.TRAIN_PHOTOS),
        set(builtin.VAL_PHOTOS),
        set(builtin.TEST_PHOTOS),
    )
    assert not (train & val) and not (train & test) and not (val & test)
    # No photo appears twice under two names (skimage's cat() is chelsea()).
    photos = [builtin.load_photo(p) for p in sorted(train | val | test)]
    for i, a in enumerate(photos):
        for b in photos[i + 1 :]:
            assert a.shape != b.shape or not np.array_equal(a, b)
    # The held-out crops are exactly the grids of the held-out photos.
    expected = np.concatenate(
        [builtin.grid_crops(builtin.load_photo(p), 32, 128) for p in builtin.TEST_PHOTOS]
    )
    np.testing.assert_array_equal(builtin32.test, to_float(expected))
    expected = np.concatenate(
        [builtin.grid_crops(builtin.load_photo(p), 32, 128) for p in builtin.VAL_PHOTOS]
    )
    np.testing.assert_array_equal(builtin32.val, to_float(expected))


def test_builtin_sets_share_the_test_photos_and_keep_scenes_apart():
    for train, val in builtin.TRAIN_SETS.values():
        assert not set(train) & set(val)
        assert not (set(train) | set(val)) & set(builtin.TEST_PHOTOS)
    # The new set holds no micrograph or scientific image of the legacy set.
    assert not {"immunohistochemistry", "retina", "moon", "coins", "gravel"} & set(
        builtin.TRAIN_PHOTOS
    )
    legacy = load_data("builtin", 32, builtin_set="legacy")
    scenes = load_data("builtin", 32)
    np.testing.assert_array_equal(legacy.test, scenes.test)
    assert len(legacy.train_batch.pyramids) == len(builtin.LEGACY_TRAIN_PHOTOS)
    assert len(legacy.val) == 24 and len(scenes.val) == 40
    plus = load_data("builtin", 32, builtin_set="scenes_plus")
    assert len(plus.train_batch.pyramids) == 13 and "13 train photos" in plus.description
    np.testing.assert_array_equal(plus.val, scenes.val)
    np.testing.assert_array_equal(plus.test, scenes.test)
    with pytest.raises(ValueError, match="train_set"):
        load_data("builtin", 32, builtin_set="imagenet")


def test_training_crops_cover_the_dihedral_group():
    """Flips and transposes: one photo, one level, many draws; every crop is one of
    the 8 symmetries of some crop of that level."""
    level = np.arange(40 * 40 * 3, dtype=np.int64).reshape(40, 40, 3) % 251
    batcher = builtin.CropBatcher(((level.astype(np.uint8),),), 40)
    seen = set()
    for step in range(40):
        crop = batcher(step, 4, 0)
        for c in crop:
            u = np.round((np.asarray(c) + 1) * 127.5).astype(np.uint8)
            for k, t in enumerate(_dihedral(level.astype(np.uint8))):
                if np.array_equal(u, t):
                    seen.add(k)
    assert seen == set(range(8))


def _dihedral(a):
    out = []
    for t in (a, a.transpose(1, 0, 2)):
        for f in (t, t[::-1], t[:, ::-1], t[::-1, ::-1]):
            out.append(f)
    return out


def test_builtin_training_crops_come_from_training_photos_only(builtin32):
    """Every training level belongs to a training photo: compare colour statistics."""
    batcher = builtin32.train_batch
    assert len(batcher.pyramids) == len(builtin.TRAIN_PHOTOS)
    for name, levels in zip(builtin.TRAIN_PHOTOS, batcher.pyramids, strict=True):
        photo = builtin.load_photo(name)
        assert min(photo.shape[:2]) >= max(min(lv.shape[:2]) for lv in levels)
        mean_photo = photo.reshape(-1, 3).mean(0)
        mean_level = levels[-1].reshape(-1, 3).astype(float).mean(0)
        np.testing.assert_allclose(mean_level, mean_photo, atol=2.0)


def test_builtin_counts_subsets_and_errors():
    d = load_data("builtin", 32, n_train=2, n_val=8, n_test=24)
    assert len(d.train_batch.pyramids) == 2
    _check_images(d.val, 8, 32)
    _check_images(d.test, 24, 32)
    full = load_data("builtin", 32)
    # Evenly spaced subsets of the full grid, first and last crop included.
    np.testing.assert_array_equal(d.test[0], full.test[0])
    np.testing.assert_array_equal(d.test[-1], full.test[-1])
    with pytest.raises(ValueError, match="at most 40"):
        load_data("builtin", 32, n_test=41)
    with pytest.raises(ValueError, match="training photos"):
        load_data("builtin", 32, n_train=10)
    with pytest.raises(ValueError, match="image_size"):
        load_data("builtin", 301)
    with pytest.raises(ValueError):
        load_data("builtin", 0)


def test_builtin_larger_size():
    d = load_data("builtin", 128)
    _check_images(d.test, None, 128)
    _check_images(d.val, None, 128)
    assert len(d.test) >= 24 and len(d.val) >= 8
    _check_images(d.train_batch(0, 4, 0), 4, 128)


def test_builtin_loads_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    builtin.load_photo.cache_clear()
    try:
        for name in builtin.TRAIN_PHOTOS + builtin.VAL_PHOTOS + builtin.TEST_PHOTOS:
            photo = builtin.load_photo(name)
            assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[-1] == 3
            assert min(photo.shape[:2]) >= 300
            assert not photo.flags.writeable
    finally:
        builtin.load_photo.cache_clear()


def test_crop_batcher_flips_and_positions():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    batcher = builtin.CropBatcher(((image,),), 8)
    batch = batcher(0, 64, 0)
    which = np.array([[np.array_equal(c, to_float(t)) for t in _dihedral(image)] for c in batch])
    assert np.all(which.sum(1) == 1)  # each crop is exactly one of the 8 symmetries
    assert 2 <= which[:, 0].sum() <= 18  # the identity about 1/8 of the time
    # Crops of a larger level: every position is reachable, none out of bounds.
    big = np.arange(20 * 20 * 3, dtype=np.int64).reshape(20, 20, 3) % 251
    batcher = builtin.CropBatcher(((big.astype(np.uint8),),), 4, flip=False)
    tops = set()
    for step in range(20):
        for crop in batcher(step, 16, 1):
            u = np.round((crop + 1) * 127.5).astype(int)
            hits = [
                (t, left)
                for t in range(17)
                for left in range(17)
                if np.array_equal(big[t : t + 4, left : left + 4], u)
            ]
            assert hits
            tops.add(hits[0][0])
    assert tops == set(range(17))


# ----------------------------------------------------------------------------- array batches


def test_array_batcher_epochs_and_resume():
    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    b = ArrayBatcher(images)
    assert b.steps_per_epoch(3) == 3

    def ids(step):
        return b(step, 3, 5)[:, 0, 0, 0]

    epoch0 = np.concatenate([b.indices(s, 3, 5) for s in range(3)])
    epoch1 = np.concatenate([b.indices(s, 3, 5) for s in range(3, 6)])
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9  # no repeats within an epoch
    assert not np.array_equal(epoch0, epoch1)  # fresh permutation per epoch
    np.testing.assert_array_equal(epoch1[:3], np.random.default_rng([5, 1]).permutation(10)[:3])
    np.testing.assert_array_equal(ids(4), to_float(images[b.indices(4, 3, 5)])[:, 0, 0, 0])
    np.testing.assert_array_equal(ids(4), ids(4))
    with pytest.raises(ValueError, match="exceeds the 10 training images"):
        b(0, 11, 0)
    with pytest.raises(ValueError):
        ArrayBatcher(images.astype(np.float32))


def test_deblur_data_validates():
    ok = np.zeros((2, 4, 4, 3), np.float32)
    kwargs = dict(name="x", image_size=4, train_batch=lambda s, b, r: ok, description="x")
    DeblurData(val=ok, test=ok, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        DeblurData(val=ok[:, :3], test=ok, **kwargs)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        DeblurData(val=ok + 2, test=ok, **kwargs)
    with pytest.raises(ValueError, match="non-finite"):
        DeblurData(val=ok, test=ok * np.nan, **kwargs)
    with pytest.raises(TypeError):
        DeblurData(val=ok.astype(np.float64), test=ok, **kwargs)


# ----------------------------------------------------------------------------- CelebA folder


def _face(number: int) -> np.ndarray:
    """A 218x178 stand-in for an aligned CelebA image, distinct per file number.

    The top and bottom 20 rows (removed by the 178x178 centre crop) are pure red.
    """
    image = np.zeros((218, 178, 3), np.uint8)
    image[:20] = image[-20:] = (255, 0, 0)
    yy, xx = np.mgrid[0:178, 0:178]
    image[20:-20, :, 1] = (xx * 255 // 177).astype(np.uint8)
    image[20:-20, :, 2] = (yy * 255 // 177).astype(np.uint8)
    image[20:-20, :, 0] = 10 * number
    return image


@pytest.fixture
def celeba_dir(tmp_path, monkeypatch):
    """12 JPEGs in tmp_path/img_align_celeba: 000005 is garbage, 000003 truncated."""
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    for n in range(1, 13):
        Image.fromarray(_face(n)).save(folder / f"{n:06d}.jpg", quality=95)
    (folder / "000005.jpg").write_bytes(b"this is not a JPEG")
    data = (folder / "000003.jpg").read_bytes()
    (folder / "000003.jpg").write_bytes(data[: len(data) // 2])
    # A 12-file version of the paper's split: train 1-8 (val = 7-8), test 9-12.
    monkeypatch.setattr(celeba_folder, "DEFAULT_SPLIT", celeba_folder.FolderSplit((1, 8), (9, 12)))
    return tmp_path


def test_folder_loads_split_and_skips_corrupt_files(celeba_dir):
    with pytest.warns(UserWarning) as record:
        d = load_data("folder", 16, data_dir=celeba_dir, n_val=2)
    messages = [str(w.message) for w in record]
    assert any("000005.jpg" in m for m in messages)
    assert any("000003.jpg" in m for m in messages)
    assert d.name == "celeba-folder" and d.skipped == 2
    assert d.train_size == 4  # 1, 2, 4, 6
    _check_images(d.val, 2, 16)
    _check_images(d.test, 4, 16)
    # Files land where the split says, with the shared preprocessing.
    for images, numbers in ((d.val, (7, 8)), (d.test, (9, 10, 11, 12))):
        expected = np.stack([preprocess_celeba(_face(n), 16) for n in numbers])
        np.testing.assert_allclose(images, to_float(expected), atol=2 * 8 / 127.5)  # JPEG
    train = d.train_batch(0, 4, 0)  # one epoch = one batch of all 4 training images
    reds = sorted(np.round(((train[:, 8, 8, 0] + 1) * 127.5) / 10).astype(int))
    assert reds == [1, 2, 4, 6]
    # The red bands above and below the face are cropped away.
    # (red is 10 * number <= 120 inside the face, 255 in the bands).
    assert np.all(d.test[:, [0, -1], :, 0] < 0)
    assert "4 train" in d.description and "2 skipped" in d.description


def test_folder_accepts_the_image_dir_itself_and_counts(celeba_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = load_data(
            "folder", 8, data_dir=celeba_dir / "img_align_celeba", n_train=2, n_val=1, n_test=2
        )
    assert d.skipped == 0  # files 1, 2, 8, 9, 10 are all readable
    assert d.train_size == 2
    _check_images(d.val, 1, 8)
    _check_images(d.test, 2, 8)
    with pytest.raises(ValueError, match="n_test=5"):
        load_data("folder", 8, data_dir=celeba_dir, n_test=5, n_val=1)


def test_folder_missing_file_in_range_is_warned_and_counted(celeba_dir):
    (celeba_dir / "img_align_celeba" / "000010.jpg").unlink()
    with pytest.warns(UserWarning) as record:
        d = load_data("folder", 8, data_dir=celeba_dir, n_val=2)
    assert any("missing" in str(w.message) and "000010" in str(w.message) for w in record)
    assert d.skipped == 3
    assert len(d.test) == 3


def test_folder_missing_or_empty_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="img_align_celeba"):
        load_data("folder", 16, data_dir=tmp_path / "nowhere")
    (tmp_path / "unrelated.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"000001\.jpg"):
        load_data("folder", 16, data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        load_data("folder", 16)
    # Files exist but none in the expected ranges.
    Image.fromarray(_face(1)).save(tmp_path / "123456.jpg")
    with pytest.raises(FileNotFoundError, match="none of the expected files"):
        load_data("folder", 16, data_dir=tmp_path)


# ----------------------------------------------------------------------------- CelebA tfds


def test_tfds_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        d = load_data("tfds", 16, data_dir=tmp_path, n_train=5, n_val=2, n_test=3)
        ds = tfds.load("celeb_a", split="test", data_dir=tmp_path, shuffle_files=False)
        raw = [ex["image"] for ex in tfds.as_numpy(ds.take(3))]
    assert raw[0].shape == (218, 178, 3)  # the mock follows celeb_a's feature spec
    expected = np.stack([preprocess_celeba(im, 16) for im in raw])
    np.testing.assert_array_equal(d.test, to_float(expected))
    assert d.name == "celeba-tfds" and d.skipped == 0 and d.train_size == 5
    _check_images(d.val, 2, 16)
    _check_images(d.test, 3, 16)
    batch = d.train_batch(3, 4, 0)
    _check_images(batch, 4, 16)
    np.testing.assert_array_equal(batch, d.train_batch(3, 4, 0))
    assert not np.array_equal(batch[0], batch[1])  # distinct images, not one repeated
    with pytest.raises(ValueError, match="exceeds"):
        d.train_batch(0, 6, 0)


def test_tfds_not_prepared_raises(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="tfds build celeb_a"):
        load_data("tfds", 16, data_dir=tmp_path)


# ----------------------------------------------------------------------------- auto


def test_auto_falls_back_to_builtin_with_one_line(capsys, tmp_path):
    d = load_data("auto", 32)
    out = capsys.readouterr().out
    assert out == BUILTIN_NOTICE + "\n"
    assert d.name == "builtin"
    d = load_data(data_dir=tmp_path)  # a folder without CelebA
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "no CelebA found" in lines[0] and "--data_dir" in lines[0]
    assert d.name == "builtin"


def test_auto_detects_celeba_layouts(celeba_dir, tmp_path_factory, capsys):
    assert detect_celeba(celeba_dir) == "folder"
    assert detect_celeba(celeba_dir / "img_align_celeba") == "folder"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = load_data("auto", 8, data_dir=celeba_dir, n_val=2)
    assert d.name == "celeba-folder"
    assert capsys.readouterr().out == ""
    tfds_dir = tmp_path_factory.mktemp("tfds")
    (tfds_dir / "celeb_a" / "2.1.0").mkdir(parents=True)
    assert detect_celeba(tfds_dir) is None  # a version folder without metadata
    (tfds_dir / "celeb_a" / "2.1.0" / "dataset_info.json").write_text("{}")
    assert detect_celeba(tfds_dir) == "tfds"
    assert detect_celeba(None) is None


def test_explicit_source_never_falls_back(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        load_data("folder", 16, data_dir=tmp_path)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="unknown data source"):
        load_data("celeba", 16)


def test_tensorflow_stays_out_of_the_import_path():
    code = (
        "import sys, jfbjax.data as d\n"
        "d.load_data('builtin', 16, n_train=1)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
