"""The classical baselines of a run, tuned on the validation images and scored on the test ones.

One function for the training loop and ``experiments.compare``: Wiener
(FFT), Tikhonov (exact CG) and total variation (primal-dual), each with the
weight of its grid that gives the best mean validation PSNR.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np

from jfbjax.imaging.baselines import tikhonov_cg, tune_weight, tv_deblur, wiener
from jfbjax.imaging.blur import Blur
from jfbjax.training.evaluation import score
from jfbjax.training.records import jsonable

__all__ = [
    "LABELS",
    "classical_methods",
    "clear_baseline_cache",
    "evaluate_baselines",
    "evaluate_classical",
    "input_baselines",
]

#: Display names of the classical methods.
LABELS = {"wiener": "Wiener (FFT)", "tikhonov": "Tikhonov (CG)", "tv": "TV"}


def classical_methods(config) -> dict[str, tuple]:
    """``name -> (method(d, blur, weight), weight grid)`` for ``config``.

    Wiener and Tikhonov (two solutions of the same problem) use
    ``config.tikhonov.weights``; TV uses
    ``config.tv.weights`` with ``config.tv.iters`` / ``config.tv.tol`` and is
    left out when that grid is empty or the section is absent.
    """
    grid = tuple(float(w) for w in config.tikhonov.weights)
    methods = {"wiener": (wiener, grid), "tikhonov": (tikhonov_cg, grid)}
    tv = config.get("tv")
    if tv is not None and len(tv.weights):
        fn = functools.partial(tv_deblur, iters=int(tv.iters), tol=float(tv.get("tol", 0.0)))
        methods["tv"] = (fn, tuple(float(w) for w in tv.weights))
    return methods


def evaluate_classical(
    config,
    blur: Blur,
    d_val: np.ndarray,
    x_val: np.ndarray,
    d_test: np.ndarray,
    x_test: np.ndarray,
    methods: dict[str, tuple] | None = None,
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Tunes each method's weight on the validation images and scores it on the test images.

    Args:
      config: a run configuration (for :func:`classical_methods`).
      blur: the forward operator.
      d_val, x_val, d_test, x_test: degraded and clean validation / test images.
      methods: ``name -> (method, grid)`` (default: :func:`classical_methods`).

    Returns:
      ``(metrics, outputs)``: per method, :func:`~jfbjax.training.score` of
      its test restorations plus ``weight`` and ``tuning`` (the grid with its
      validation PSNRs), and the test restorations themselves.
    """
    methods = classical_methods(config) if methods is None else methods
    metrics, outputs = {}, {}
    dv, xv, dt = jnp.asarray(d_val), jnp.asarray(x_val), jnp.asarray(d_test)
    for name, (method, grid) in methods.items():
        weight, table = tune_weight(method, dv, xv, blur, grid)
        outputs[name] = np.asarray(method(dt, blur, float(weight)))
        metrics[name] = {**score(x_test, outputs[name]), "weight": float(weight)}
        metrics[name]["tuning"] = jsonable(table)
    return metrics, outputs


#: The last few :func:`evaluate_baselines` results of this process, by what they
#: depend on (see there); small: a handful of image batches and their restorations.
_BASELINE_CACHE: OrderedDict[tuple, tuple[dict, dict]] = OrderedDict()
_BASELINE_CACHE_SIZE = 8


def clear_baseline_cache() -> None:
    """Forgets the baselines :func:`evaluate_baselines` has kept in this process.

    Not needed for correctness (the kept results are keyed by everything they
    depend on); for a caller that wants the next call timed from scratch, or
    its memory back."""
    _BASELINE_CACHE.clear()


def _baseline_key(methods: dict[str, tuple], blur: Blur, arrays) -> tuple:
    """Everything the baselines depend on: each method (its function and keyword
    arguments, e.g. TV's iterations and tolerance) with its weight grid, the
    operator, the images (by content) and the precision settings of JAX."""
    digest = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    spec = []
    for name, (method, grid) in methods.items():
        if isinstance(method, functools.partial):
            what = (method.func, tuple(sorted(method.keywords.items())), method.args)
        else:
            what = (method,)
        spec.append((name, *what, tuple(grid)))
    precision = (jax.config.jax_enable_x64, str(jax.config.jax_default_matmul_precision))
    return (tuple(spec), blur, digest.hexdigest(), precision)


def evaluate_baselines(
    config, blur: Blur, val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Every baseline of a run on the test images: the blurred input ``d``,
    the start point ``A^T d`` and :func:`evaluate_classical`'s methods.
    ``val`` and ``test`` are ``(degraded, clean)`` pairs of image batches.

    The baselines are deterministic functions of the configured methods and
    grids, the operator and the images, so the process keeps its last few
    results under those (images compared by content): the runs of one
    ``experiments.compare`` or ablation, which share data, blur and noise,
    tune Wiener, Tikhonov and TV once instead of once per run. The caller gets
    its own copies. :func:`clear_baseline_cache` forgets them.

    Returns:
      ``(metrics, outputs)``: ``metrics`` has the keys ``"blurred"``,
      ``"adjoint"`` and one per classical method; ``outputs`` the classical
      methods' test restorations.
    """
    (d_val, x_val), (d_test, x_test) = val, test
    methods = classical_methods(config)
    key = _baseline_key(methods, blur, (d_val, x_val, d_test, x_test))
    if key not in _BASELINE_CACHE:
        inputs = input_baselines(blur, d_test)
        metrics = {name: score(x_test, x) for name, x in inputs.items()}
        classical, outputs = evaluate_classical(
            config, blur, d_val, x_val, d_test, x_test, methods=methods
        )
        _BASELINE_CACHE[key] = ({**metrics, **classical}, outputs)
        while len(_BASELINE_CACHE) > _BASELINE_CACHE_SIZE:
            _BASELINE_CACHE.popitem(last=False)
    _BASELINE_CACHE.move_to_end(key)
    metrics, outputs = _BASELINE_CACHE[key]
    return copy.deepcopy(metrics), {k: np.array(v) for k, v in outputs.items()}


def input_baselines(blur: Blur, d: np.ndarray) -> dict[str, np.ndarray]:
    """The two restorations that need no weight: ``"blurred"`` (``d`` itself) and
    ``"adjoint"`` (``A^T d``, DE-GRAD's default start point)."""
    return {"blurred": np.asarray(d), "adjoint": np.asarray(blur.adjoint(jnp.asarray(d)))}
