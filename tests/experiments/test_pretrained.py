"""The shipped model (jfbjax.pretrained), its export script and the deblur_image command."""

import csv
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import deblur_image, export_pretrained
from jfbjax import pretrained
from jfbjax.training.evaluation import score_run
from jfbjax.training.restore import load_run


@pytest.fixture(scope="module")
def shipped():
    return pretrained.load()


def test_shipped_model_reproduces_its_recorded_test_psnr(shipped):
    meta = pretrained.info()
    assert pretrained.DEFAULT in pretrained.available()
    assert meta["params_sha256"] == pretrained.sha256(pretrained.model_dir() / "params.npz")
    metrics, x_hat = score_run(shipped, "test", contraction=False)
    assert abs(metrics["psnr_standard"] - meta["test"]["psnr_standard"]) < 0.01
    assert abs(metrics["ssim_standard"] - meta["test"]["ssim_standard"]) < 1e-4
    # The run it came from recorded the same number, and it beats TV by its margin in the README.
    assert abs(meta["source"]["run_test_psnr_standard"] - meta["test"]["psnr_standard"]) < 0.01
    assert x_hat.shape == (40, 32, 32, 3)
    assert meta["source"]["train_command"].startswith("python -m experiments.deblur_celeba")


def test_shipped_model_restores_an_image_larger_than_its_crops(shipped):
    # Fully convolutional: a 48x40 image is restored whole (the model saw 32x32 crops).
    x = jnp.asarray(np.random.default_rng(0).uniform(-0.5, 0.5, (1, 48, 40, 3)), jnp.float32)
    x = shipped.blur(shipped.blur(x))  # smooth content, then blurred once more as the input
    x_hat, info = shipped.model(shipped.blur(x))
    assert x_hat.shape == x.shape and bool(jnp.all(jnp.isfinite(x_hat)))
    assert int(info.iterations[0]) < int(shipped.config.solver.max_iter)


def _copy_model(tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(pretrained.model_dir(), dest)
    return dest


def test_corrupt_or_missing_files_name_the_file(tmp_path):
    dest = _copy_model(tmp_path)
    params = dest / "params.npz"
    raw = bytearray(params.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    params.write_bytes(bytes(raw))
    with pytest.raises(pretrained.PretrainedError, match=r"params\.npz is corrupt.*SHA-256"):
        pretrained.load(dest)
    (dest / "meta.json").write_text("{not json")
    with pytest.raises(pretrained.PretrainedError, match=r"meta\.json is corrupt"):
        pretrained.load(dest)
    with pytest.raises(pretrained.PretrainedError, match="no pretrained model 'nope'"):
        pretrained.load("nope")


def test_load_state_rejects_a_file_of_another_model(tmp_path, shipped):
    from flax import nnx

    from experiments.configs import get_config
    from jfbjax.models import build_model

    config = get_config("smoke")
    other = build_model(config, shipped.blur, nnx.Rngs(0))
    with pytest.raises(pretrained.PretrainedError, match="does not match the model"):
        pretrained.load_state(other, pretrained.model_dir() / "params.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(pretrained.PretrainedError, match=r"bad\.npz is corrupt"):
        pretrained.load_state(other, tmp_path / "bad.npz")


def test_export_round_trip_equals_the_run(tiny_run, tmp_path):
    workdir, results = tiny_run()
    out = tmp_path / "exported"
    assert export_pretrained.main(["--run", str(workdir), "--out", str(out), "--name", "t"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["name"] == "t" and meta["source"]["step"] == 2
    assert meta["source"]["train_command"] == (
        "python -m experiments.deblur_celeba --preset smoke --set contraction.align_images=0 "
        "--set eval_every=100 --set optim.warmup=1 --set self_ensemble=False --set steps=2 "
        "--set tv.weights=()"
    )
    assert abs(meta["test"]["psnr_standard"] - results["test"]["model"]["psnr_standard"]) < 0.01
    run, exported = load_run(workdir), pretrained.load(out)
    d = jnp.zeros((1, 16, 16, 3)) + 0.1
    np.testing.assert_array_equal(np.asarray(run.model(d)[0]), np.asarray(exported.model(d)[0]))
    # A run folder without checkpoints fails with load_run's message, and writes nothing.
    assert export_pretrained.main(["--run", str(tmp_path / "nothing"), "--out", str(out)]) == 1


def _write_images(folder):
    folder.mkdir()
    rng = np.random.default_rng(1)
    smooth = np.asarray(
        jax.image.resize(jnp.asarray(rng.uniform(0, 255, (6, 5, 3))), (24, 20, 3), "linear")
    )
    Image.fromarray(smooth.astype(np.uint8)).save(folder / "a.png")
    Image.fromarray(smooth[..., 0].astype(np.uint8)).save(folder / "b.jpg")  # gray
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


def test_deblur_image_simulate_writes_pngs_and_metrics(tmp_path, capsys):
    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="skipping") as caught:
        code = deblur_image.main([str(tmp_path / "in"), "--simulate", "--out", str(out),
                                  "--no_progress"])  # fmt: skip
    assert code == 0
    skipped = " ".join(str(w.message) for w in caught)
    assert "notes.txt" in skipped and "broken.png" in skipped
    for name in ("a_restored", "a_blurred", "b_restored", "b_blurred"):
        assert (out / f"{name}.png").is_file()
    assert Image.open(out / "a_restored.png").size == (20, 24)  # whole image, W x H
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["file"] for r in rows] == ["a.png", "b.jpg"]
    for r in rows:  # smooth content: the restoration is better than the blurred input
        assert float(r["psnr_restored"]) > float(r["psnr_blurred"])
        assert r["converged"] == "True"
    assert "PSNR" in capsys.readouterr().out

    # The blurred outputs, with the clean images as references, score the same way.
    blurred = tmp_path / "blurred"
    blurred.mkdir()
    for stem in ("a", "b"):
        shutil.copy(out / f"{stem}_blurred.png", blurred / f"{stem}.png")
    again = tmp_path / "again"
    assert deblur_image.main([str(blurred), "--reference", str(tmp_path / "in"),
                              "--out", str(again), "--no_progress"]) == 0  # fmt: skip
    rows2 = list(csv.DictReader(open(again / "metrics.csv")))
    assert len(rows2) == 2 and float(rows2[0]["psnr_restored"]) > float(rows2[0]["psnr_blurred"])

    # --self_ensemble: the 24x20 image is a rectangle, 4 solves (its shape-keeping symmetries)
    ens = tmp_path / "ens"
    assert deblur_image.main([str(blurred), "--reference", str(tmp_path / "in"), "--out",
                              str(ens), "--self_ensemble", "--no_progress"]) == 0  # fmt: skip
    rows3 = list(csv.DictReader(open(ens / "metrics.csv")))
    assert int(rows3[0]["iterations"]) > 2 * int(rows2[0]["iterations"])
    assert float(rows3[0]["psnr_restored"]) != float(rows2[0]["psnr_restored"])
    assert Image.open(ens / "a_restored.png").size == (20, 24)


def test_deblur_image_missing_path_is_a_clear_error(tmp_path, capsys):
    assert deblur_image.main([str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err


def test_readme_pretrained_snippet_runs():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [
        b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "pretrained.load(" in b
    ]
    assert blocks, "README lost its pretrained snippet"
    code = (
        blocks[0]
        + "\nimport jax.numpy as jnp\nx_hat, info = deblur(state, jnp.zeros((1, 24, 24, 3)))\n"
    )
    scope = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["x_hat"].shape == (1, 24, 24, 3)
