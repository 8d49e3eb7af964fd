"""notebooks/inference.ipynb runs top to bottom on a fresh run folder.

The notebook is executed by a real Jupyter kernel (nbclient + ipykernel) from
the repository root, as a user opens it: with ``RUN_DIR = None`` it loads the
shipped model (``jfbjax.pretrained``), deblurs the built-in test images,
plots, times and restores a demo image at full size. The branch that trains
the ``smoke`` preset into an empty ``RUN_DIR`` calls ``train_and_evaluate``
and ``load_run``, tested in tests/training.
"""

from __future__ import annotations

import os
import pathlib
import re

import nbformat
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


def test_inference_notebook_loads_the_shipped_model_and_restores(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # One test image and a 32x32 "own image": every cell then runs on one input shape,
    # so the shipped model's solve compiles once (larger images: tests/experiments).
    own = tmp_path / "own.png"
    Image.fromarray(skimage.data.coffee()[100:132, 200:232]).save(own)
    params = _code_cells(nb)[0]
    params.source += f"\nNUM_IMAGES = 1\nIMAGE_PATH = {str(own)!r}  # injected by the test\n"
    env = dict(os.environ, MPLBACKEND="Agg")
    client = NotebookClient(nb, timeout=300, kernel_name="python3")
    client.execute(cwd=str(REPO), env=env)  # raises CellExecutionError on any error

    outputs = [o for cell in _code_cells(nb) for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stdout = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")

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
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3
