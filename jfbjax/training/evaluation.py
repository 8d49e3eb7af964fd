"""Evaluation of a model and of the classical baselines on fixed degraded images.

Every method is scored on the same degraded images ``d`` (one fixed noise
draw), with the metrics of :func:`jfbjax.imaging.metrics.evaluate` in both
PSNR/SSIM conventions:

* ``*_standard``: data range of the images (2 for [-1, 1] data), the usual
  numbers;
* ``*_paper``: the convention of arXiv 2402.02065, ``-10 log10(MSE)`` on
  [-1, 1] data (peak 1), 6.02 dB below the standard PSNR.
"""

from __future__ import annotations

import numpy as np

import jfbjax
from jfbjax.imaging.metrics import evaluate
from jfbjax.training.parallel import DataParallel

__all__ = ["predict", "score", "score_model", "score_run", "score_self_ensemble"]


def score(x_true: np.ndarray, x_hat: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM (means and stds, both conventions) as plain floats.

    Also ``nonfinite_images``: how many reconstructions hold NaN or inf (their
    metrics, and so the means, are then NaN).

    Args:
      x_true: clean images (N, H, W, C) on the [-1, 1] scale.
      x_hat: reconstructions of the same shape.

    Returns:
      The dict of :func:`jfbjax.imaging.evaluate` (``psnr_standard``,
      ``psnr_paper``, ``ssim_standard``, ``ssim_paper`` and their ``_std``)
      plus ``nonfinite_images``.

    Raises:
      ValueError: the shapes differ.
    """
    x_hat = np.asarray(x_hat, np.float32)
    if x_hat.shape != x_true.shape:
        raise ValueError(f"reconstructions {x_hat.shape} do not match the images {x_true.shape}")
    metrics = {k: float(v) for k, v in evaluate(x_true, x_hat).items()}
    finite = np.all(np.isfinite(x_hat.reshape(len(x_hat), -1)), axis=1)
    metrics["nonfinite_images"] = int(np.sum(~finite))
    return metrics


def predict(eval_step, params, rest, d: np.ndarray, batch_size: int, dp: DataParallel):
    """Runs ``eval_step`` over ``d`` in batches of ``batch_size``.

    The last batch is padded (with copies of the last image) to the full
    batch size, so that the step is compiled once; padded outputs are dropped.

    Args:
      eval_step: ``eval_step(params, rest, d) -> (x_hat, info)``, from
        :func:`~jfbjax.training.make_eval_step`.
      params, rest: the model's state (replicated).
      d: degraded images (N, H, W, C).
      batch_size: images per call; a multiple of the device count.
      dp: the device layout.

    Returns:
      ``(x_hat, iterations, status)`` as numpy arrays of length ``len(d)``.

    Raises:
      ValueError: a batch size the devices do not divide.
    """
    dp.check_batch_size(batch_size, "eval_batch_size")
    n = len(d)
    outs, iters, status = [], [], []
    for start in range(0, n, batch_size):
        chunk = np.asarray(d[start : start + batch_size])
        m = len(chunk)
        if m < batch_size:
            pad = np.repeat(chunk[-1:], batch_size - m, axis=0)
            chunk = np.concatenate([chunk, pad], axis=0)
        x_hat, info = eval_step(params, rest, dp.shard_batch(chunk))
        outs.append(dp.to_host(x_hat)[:m])
        iters.append(dp.to_host(info.iterations)[:m])
        status.append(dp.to_host(info.status)[:m])
    return np.concatenate(outs), np.concatenate(iters), np.concatenate(status)


def score_model(
    eval_step, params, rest, d: np.ndarray, x_true: np.ndarray, batch_size: int, dp: DataParallel
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of the model on ``(d, x_true)`` plus its solver statistics.

    Runs :func:`predict` and scores the result with :func:`score`; the
    arguments are theirs (``x_true``: the clean images matching ``d``).

    Returns ``(metrics, x_hat)``; ``metrics`` adds to :func:`score`'s keys
    ``mean_iterations``, ``max_iterations`` and ``fraction_converged`` (share
    of the per-image forward solves that reached the tolerance).
    """
    x_hat, iterations, status = predict(eval_step, params, rest, d, batch_size, dp)
    metrics = score(x_true, x_hat)
    metrics["mean_iterations"] = float(np.mean(iterations))
    metrics["max_iterations"] = int(np.max(iterations))
    metrics["fraction_converged"] = float(np.mean(status == int(jfbjax.CONVERGED)))
    return metrics, x_hat


def score_self_ensemble(
    graphdef,
    params,
    rest,
    sets: dict[str, tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    dp: DataParallel,
) -> dict[str, dict[str, float]]:
    """Scores the model of ``(graphdef, params, rest)`` averaged over the 8 symmetries of
    the square (:class:`~jfbjax.models.ensemble.SelfEnsemble`) on each of ``sets``.

    Args:
      graphdef, params, rest: the model's state, as for :func:`score_model`.
      sets: name -> ``(d, x_true)``, e.g. ``{"val": ..., "test": ...}``.
      batch_size, dp: as for :func:`score_model`.

    Returns:
      name -> :func:`score_model`'s metrics, with ``mean_iterations`` and
      ``max_iterations`` counting the 8 solves of an image together.

    Raises:
      ValueError: the blur does not commute with the symmetries.
    """  # fmt: skip
    from flax import nnx

    from jfbjax.models.ensemble import SelfEnsemble
    from jfbjax.training.steps import make_eval_step

    ensemble = SelfEnsemble(nnx.merge(graphdef, params, rest))
    e_graphdef, e_params, e_rest = nnx.split(ensemble, nnx.Param, ...)
    step = make_eval_step(e_graphdef, dp)
    return {
        name: score_model(step, e_params, e_rest, d, x_true, batch_size, dp)[0]
        for name, (d, x_true) in sets.items()
    }


def score_run(run, split: str = "test", data=None, contraction: bool = True):
    """Scores a trained :class:`~jfbjax.training.Run` on its own evaluation images.

    The images are those :func:`~jfbjax.training.train_and_evaluate` scored the
    run with: ``split`` ("val" or "test") of the run's data (or ``data``, a
    :class:`~jfbjax.data.common.DeblurData` already loaded), degraded by the
    run's blur with the noise draw of its seed
    (:func:`~jfbjax.training.records.evaluation_images`).

    Returns ``(metrics, x_hat)``: :func:`score_model`'s metrics, plus
    ``contraction_mean`` / ``contraction_max`` at the fixed points for an
    implicit model when ``contraction`` is true.
    """
    from flax import nnx

    from jfbjax.data.loader import load_data_from_config
    from jfbjax.models import DEGRAD
    from jfbjax.training.contraction import make_contraction_eval
    from jfbjax.training.records import evaluation_images
    from jfbjax.training.steps import make_eval_step

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    data = load_data_from_config(run.config) if data is None else data
    d_val, d_test = evaluation_images(run.config, data, run.blur)
    d, x_true = (d_val, data.val) if split == "val" else (d_test, data.test)
    dp = DataParallel.create()
    graphdef, params, rest = nnx.split(run.model, nnx.Param, ...)
    batch_size = int(run.config.eval_batch_size)
    metrics, x_hat = score_model(
        make_eval_step(graphdef, dp), params, rest, d, x_true, batch_size, dp
    )
    if contraction and isinstance(run.model, DEGRAD):
        factors = make_contraction_eval(graphdef, run.config, batch_size)
        metrics.update(factors(params, rest, x_hat, d))
    return metrics, x_hat
