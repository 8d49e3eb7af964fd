"""notebooks/inference.ipynb runs top to bottom on a fresh run folder.

With ``RUN_DIR = None`` the notebook loads the shipped model
(``jfbjax.pretrained``), deblurs the built-in test images, plots, times and
restores a demo image at full size. Its code cells run in this process, in
order and in one namespace, as a kernel runs them (the CI test); the same
notebook in a real Jupyter kernel (nbclient + ipykernel, ``--runslow``) adds
the kernel's start-up and the inline figures. The branch that trains the
``smoke`` preset into an empty ``RUN_DIR`` calls ``train_and_evaluate`` and
``load_run``, tested in tests/training."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re

import nbformat
import pytest
import skimage.data
from nbclient import NotebookClient
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "inference.ipynb"


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    params = _code_cells(nb)[0]
    assert "parameters" in params.metadata.get("tags", [])
    for name in ("RUN_DIR", "IMAGE_PATH", "WHICH"):
        assert re.search(rf"^{name} = ", params.source, re.MULTILINE), name


def _parameterised(tmp_path):
    """The notebook with one test image and a 32x32 "own image" injected: every cell
    then runs on one input shape, so the shipped model's solve compiles once
    (larger images: tests/experiments)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    own = tmp_path / "own.png"
    Image.fromarray(skimage.data.coffee()[100:132, 200:232]).save(own)
    params = _code_cells(nb)[0]
    params.source += f"\nNUM_IMAGES = 1\nIMAGE_PATH = {str(own)!r}  # injected by the test\n"
    return nb


@pytest.mark.slow  # the in-process run below executes the same cells, without a kernel
def test_inference_notebook_in_a_jupyter_kernel(tmp_path):
    nb = _parameterised(tmp_path)
    env = dict(os.environ, MPLBACKEND="Agg")
    client = NotebookClient(nb, timeout=300, kernel_name="python3")
    client.execute(cwd=str(REPO), env=env)  # raises CellExecutionError on any error

    outputs = [o for cell in _code_cells(nb) for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stdout = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    _check_outputs(stdout, len([o for o in outputs if "image/png" in o.get("data", {})]))


def test_inference_notebook_cells_run_in_order(tmp_path, monkeypatch):
    """Every code cell, top to bottom, in one namespace as a kernel would run them (the
    line magic ``%matplotlib inline`` dropped; figures counted at ``plt.show()``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nb = _parameterised(tmp_path)
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(plt.gcf().number))
    monkeypatch.chdir(REPO)
    namespace = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, cell in enumerate(_code_cells(nb)):
            source = "\n".join(
                line for line in cell.source.splitlines() if not line.startswith("%")
            )
            exec(compile(source, f"<notebook cell {i}>", "exec"), namespace)
    plt.close("all")
    _check_outputs(out.getvalue(), len(shown))


def _check_outputs(stdout: str, n_figures: int) -> None:
    """What a user sees when the notebook runs with the shipped model (RUN_DIR None)."""
    # RUN_DIR None: the shipped model, with its provenance and recorded test numbers.
    assert "shipped model deblur-builtin-32" in stdout
    assert "trained by: python -m experiments.deblur_celeba --preset cpu" in stdout
    assert re.search(r"checkpoint '(best|latest)' at step 250\b", stdout)

    # Test images: PSNR in the standard convention, and the model beats its input
    # by far (the shipped model: 21.25 dB blurred -> 30.78 dB restored on the first one).
    m = re.search(r"mean PSNR \(standard\): blurred ([\d.]+) dB, restored ([\d.]+) dB", stdout)
    assert m, stdout
    blurred, restored = map(float, m.groups())
    assert restored > blurred + 4.0, (blurred, restored)

    # Residual traces for both solvers, the timing, and the user-image path.
    assert re.search(r"^Picard: residual [\d.e+-]+ after 60 iterations", stdout, re.MULTILINE)
    assert re.search(r"^Anderson \(m=5\): residual", stdout, re.MULTILINE)
    assert "||dT/dx||_2 at x* ~" in stdout
    # The shipped map converges: both solvers reach the run's tol, and T contracts at x*.
    assert len(re.findall(r"run's tol [\d.e+-]+ after \d+ iterations", stdout)) == 2, stdout
    assert "Neither solver reaches" not in stdout
    lip = float(re.search(r"\|\|dT/dx\|\|_2 at x\* ~ ([\d.]+)", stdout).group(1))
    assert lip < 1.0, lip
    assert re.search(r"batch of 1: .* ms per image", stdout)
    assert "32x32 pixels, restored whole" in stdout
    m = re.search(r"own image, standard convention: blurred PSNR ([\d.]+) dB .* restored PSNR "
                  r"([\d.]+) dB", stdout)  # fmt: skip
    assert m and float(m.group(2)) > float(m.group(1)) + 2.0, stdout

    # Three figures: the restorations, the residual traces, the user's image.
    assert n_figures == 3
