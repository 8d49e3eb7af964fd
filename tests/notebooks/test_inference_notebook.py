"""notebooks/inference.ipynb runs top to bottom on a fresh run folder.

The notebook is executed by a real Jupyter kernel (nbclient + ipykernel) from
the repository root, with ``RUN_DIR`` pointed into ``tmp_path``: the folder
holds no checkpoint, so the notebook first trains the ``smoke`` preset into
it, then loads it, deblurs, plots, times and restores a demo image.
"""

from __future__ import annotations

import os
import pathlib
import re

import nbformat
from nbclient import NotebookClient

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


def test_inference_notebook_trains_loads_and_restores(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    run_dir = tmp_path / "run"
    params = _code_cells(nb)[0]
    params.source += f"\nRUN_DIR = {str(run_dir)!r}  # injected by the test\n"

    env = dict(os.environ, MPLBACKEND="Agg")
    client = NotebookClient(nb, timeout=300, kernel_name="python3")
    client.execute(cwd=str(REPO), env=env)  # raises CellExecutionError on any error

    outputs = [o for cell in _code_cells(nb) for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stdout = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")

    # No checkpoint in RUN_DIR: the smoke preset was trained there, and then loaded.
    assert f"No checkpoint in {run_dir}" in stdout
    assert f"TRAINED the smoke preset into {run_dir}" in stdout
    assert (run_dir / "config.json").exists() and (run_dir / "checkpoints").is_dir()
    assert re.search(r"checkpoint 'best' at step (10|20)\b", stdout)  # smoke: evals at 10, 20

    # Test images: PSNR in the standard convention, and the model beats its input
    # (the smoke run measures ~24.3 dB restored vs ~19.8 dB blurred).
    m = re.search(r"mean PSNR \(standard\): blurred ([\d.]+) dB, restored ([\d.]+) dB", stdout)
    assert m, stdout
    blurred, restored = map(float, m.groups())
    assert restored > blurred + 1.0, (blurred, restored)

    # Residual traces for both solvers, the timing, and the user-image path.
    assert re.search(r"^Picard: residual [\d.e+-]+ after 60 iterations", stdout, re.MULTILINE)
    assert re.search(r"^Anderson \(m=5\): residual", stdout, re.MULTILINE)
    assert "||dT/dx||_2 at x* ~" in stdout
    # The note on a stalled solve appears exactly when no solver reached the run's tol
    # (the smoke model, without spectral norm, stalls near 1.4e-3 > 1e-3 on CPU).
    reached = re.search(r"run's tol [\d.e+-]+ after \d+ iterations", stdout) is not None
    assert reached != ("Neither solver reaches the run's tolerance" in stdout)
    assert re.search(r"batch of 1: .* ms per image", stdout)
    assert "IMAGE_PATH is None: wrote a demo photo" in stdout
    assert re.search(r"own image, standard convention: blurred PSNR [\d.]+ dB", stdout)

    # Three figures: the restorations, the residual traces, the user's image.
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3
