"""Every object of a run, built from its ml_collections config, in one place.

The config schema (every key, its meaning and the presets) is
``experiments/configs.py``; this module turns its sections into objects:

=====================  =====================================================
``blur_from_config``   ``config.blur`` -> :class:`~jfbjax.imaging.blur.Blur`
``solver_from_config`` ``config.solver`` -> a forward solver (registry below)
``backward_from_config`` ``config.backward`` -> a backward mode (registry below)
``regulariser_from_config`` ``config.model`` -> the DnCNN ``R``
``build_model``        the whole model (DE-GRAD, DE-Prox or feed-forward)
=====================  =====================================================

(data: :func:`jfbjax.data.load_data_from_config`; optimiser:
:func:`jfbjax.training.make_optimizer`, both next to the code they configure.)

Solvers and backward modes are looked up by ``name`` in two registries, so
a user's :class:`~jfbjax.AbstractSolver` or :class:`~jfbjax.AbstractBackward`
is usable from a config (``train_and_evaluate``, ``build_model``, in the same
process) after one call::

    register_solver("mine", lambda cfg: MySolver(tol=cfg.tol, max_iter=cfg.max_iter))
    config.solver.name = "mine"

A builder receives the config section (``config.solver`` or
``config.backward``) and reads the keys it needs; keys a built-in mode does
not know are ignored, missing optional keys take the defaults listed in
:data:`SOLVERS` / :data:`BACKWARDS`' builders.
"""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

import jfbjax
from jfbjax.backward import Backward
from jfbjax.imaging.blur import Blur
from jfbjax.models.degrad import DEGRAD, FAMILIES, DEProx, FeedForward
from jfbjax.models.dncnn import DnCNN
from jfbjax.models.ridge import ConvexRidge
from jfbjax.solvers import Solver

__all__ = [
    "BACKWARDS",
    "SOLVERS",
    "backward_from_config",
    "blur_from_config",
    "build_model",
    "register_backward",
    "register_solver",
    "regulariser_from_config",
    "solver_from_config",
]


def _anderson(cfg) -> jfbjax.Anderson:
    return jfbjax.Anderson(
        m=int(cfg.m),
        beta=float(cfg.beta),
        ridge=float(cfg.ridge),
        tol=float(cfg.tol),
        max_iter=int(cfg.max_iter),
        best_iterate=bool(cfg.get("best_iterate", False)),
    )


def _picard(cfg) -> jfbjax.Picard:
    # ``damping`` is the clear name; ``beta`` (shared with Anderson's mixing) is accepted.
    return jfbjax.Picard(
        tol=float(cfg.tol),
        max_iter=int(cfg.max_iter),
        damping=float(cfg.get("damping", cfg.get("beta", 1.0))),
        best_iterate=bool(cfg.get("best_iterate", False)),
    )


def _broyden(cfg) -> jfbjax.Broyden:
    return jfbjax.Broyden(
        memory=int(cfg.get("memory", 20)),
        guard=float(cfg.get("guard", 1e-6)),
        tol=float(cfg.tol),
        max_iter=int(cfg.max_iter),
        best_iterate=bool(cfg.get("best_iterate", False)),
    )


#: ``config.solver.name`` -> builder. anderson: ``m, beta, ridge, tol,
#: max_iter``; picard: ``tol, max_iter, damping`` (or ``beta``, default 1);
#: broyden: ``tol, max_iter, memory`` (default 20), ``guard`` (1e-6); each
#: also ``best_iterate`` (default False).
SOLVERS: dict[str, Callable[..., Solver]] = {
    "anderson": _anderson,
    "picard": _picard,
    "broyden": _broyden,
}

#: ``config.backward.name`` -> builder. ift: ``adjoint_solver`` (anderson,
#: picard, broyden, gmres), ``tol``, ``max_iter``; neumann: ``k``; phantom:
#: ``k`` and ``lam`` (default 1.0).
BACKWARDS: dict[str, Callable[..., Backward]] = {
    "jfb": lambda cfg: jfbjax.JFB(),
    "ift": lambda cfg: jfbjax.IFT(
        str(cfg.adjoint_solver), tol=float(cfg.tol), max_iter=int(cfg.max_iter)
    ),
    "neumann": lambda cfg: jfbjax.Neumann(int(cfg.k)),
    "phantom": lambda cfg: jfbjax.Phantom(int(cfg.k), float(cfg.get("lam", 1.0))),
    "unrolled": lambda cfg: jfbjax.Unrolled(),
}


def _register(registry: dict, kind: str, name: str, builder: Callable) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {kind} name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise TypeError(f"the {kind} builder for {name!r} must be callable, got {builder!r}")
    registry[name] = builder


def register_solver(name: str, builder: Callable[..., Solver]) -> None:
    """Make ``config.solver.name = name`` build ``builder(config.solver)``
    (an :class:`~jfbjax.AbstractSolver`); replaces an existing entry of that name."""
    _register(SOLVERS, "solver", name, builder)


def register_backward(name: str, builder: Callable[..., Backward]) -> None:
    """Make ``config.backward.name = name`` build ``builder(config.backward)``
    (an :class:`~jfbjax.AbstractBackward`); replaces an existing entry of that name."""
    _register(BACKWARDS, "backward mode", name, builder)


def _build(registry: dict, kind: str, cfg, check: Callable):
    name = str(cfg.name)
    if name not in registry:
        raise ValueError(f"{kind}.name must be one of {sorted(registry)}, got {name!r}")
    built = registry[name](cfg)
    return check(built)


def solver_from_config(cfg) -> Solver:
    """The forward solver of a ``config.solver`` section (:data:`SOLVERS`).

    Raises:
      ValueError: an unregistered ``name``, invalid settings, or a builder
        that did not return a solver.
    """
    return _build(SOLVERS, "solver", cfg, jfbjax.as_solver)


def backward_from_config(cfg) -> Backward:
    """The backward mode of a ``config.backward`` section (:data:`BACKWARDS`).

    Raises:
      ValueError: an unregistered ``name``, invalid settings of the mode, or a
        builder that did not return a backward mode.
    """
    return _build(BACKWARDS, "backward", cfg, jfbjax.as_backward)


def blur_from_config(config) -> Blur:
    """The :class:`Blur` of ``config.blur``: a Gaussian kernel of side
    ``kernel_size`` and standard deviation ``sigma`` (pixels), applied with
    ``boundary`` padding (``"zero"`` or ``"circular"``).

    Raises:
      ValueError: an invalid kernel size, sigma or boundary (from :class:`Blur`).
    """
    return Blur(
        kernel_size=int(config.blur.kernel_size),
        sigma=float(config.blur.sigma),
        boundary=config.blur.boundary,
    )


#: The learned regularisers ``R`` of ``config.model.regulariser``.
REGULARISERS = ("dncnn", "convex_ridge")


def regulariser_from_config(m, rngs: nnx.Rngs) -> DnCNN | ConvexRidge:
    """The regulariser of a ``config.model`` section: ``regulariser`` (default
    "dncnn"; :data:`REGULARISERS`). The DnCNN reads ``depth``, ``features``,
    ``spectral_norm``, and optionally ``channels`` (3), ``dtype`` ("float32") and
    ``inject`` (False; True: it reads twice the channels, the iterate and the
    measurement) and ``padding`` ("zero" | "reflect"). "convex_ridge"
    (:class:`~jfbjax.models.ridge.ConvexRidge`, monotone by construction) reads
    ``ridge_features`` (32) and ``ridge_kernel`` (5), and refuses ``inject`` and a
    low-precision ``dtype``."""
    channels = int(m.get("channels", 3))
    kind = str(m.get("regulariser", "dncnn"))
    if kind not in REGULARISERS:
        raise ValueError(f"model.regulariser must be one of {REGULARISERS}, got {kind!r}")
    if kind == "convex_ridge":
        if bool(m.get("inject", False)) or str(m.get("dtype", "float32")) != "float32":
            raise ValueError(
                "model.regulariser=convex_ridge reads the iterate only, in float32: set "
                "model.inject=false and model.dtype=float32"
            )
        return ConvexRidge(
            channels, int(m.get("ridge_features", 32)), int(m.get("ridge_kernel", 5)), rngs=rngs
        )
    return DnCNN(
        channels,
        int(m.depth),
        int(m.features),
        spectral_norm=bool(m.spectral_norm),
        dtype=str(m.get("dtype", "float32")),
        in_channels=2 * channels if bool(m.get("inject", False)) else channels,
        padding=str(m.get("padding", "zero")),
        rngs=rngs,
    )


def build_model(config, blur: Blur, rngs: nnx.Rngs) -> DEGRAD | FeedForward:
    """The model of ``config.model`` with a DnCNN regulariser.

    ``config.model``: ``kind`` ("degrad" | "feedforward"), the DnCNN's keys
    (:func:`regulariser_from_config`), ``eta_init``, ``clamp``, and optionally
    ``learn_eta`` (default True), ``family`` (:data:`~jfbjax.models.FAMILIES`,
    default "degrad": :class:`~jfbjax.models.DEGRAD`; "deprox":
    :class:`~jfbjax.models.DEProx`), ``start``
    (:data:`~jfbjax.models.STARTS`, default "adjoint"), ``start_iters`` and
    ``start_weight`` (the CG start), and for DE-GRAD ``precond``,
    ``precond_iters``, ``tikhonov``, ``tv_weight``, ``tv_eps`` (0 / 10 / 0 /
    0 / 0.1 by default: the paper's map). The solver and backward mode come
    from ``config.solver`` and ``config.backward``.

    Args:
      config: a full configuration (``experiments.configs.get_config``).
      blur: the forward operator ``A``.
      rngs: the random streams that initialise the DnCNN.

    Returns:
      A :class:`~jfbjax.models.DEGRAD`, :class:`~jfbjax.models.DEProx` or
      :class:`~jfbjax.models.FeedForward` model.

    Raises:
      ValueError: an unknown ``model.kind`` or ``model.family``, solver or backward name.
    """
    m = config.model
    if m.kind not in ("degrad", "feedforward"):
        raise ValueError(f"model.kind must be 'degrad' or 'feedforward', got {m.kind!r}")
    if m.kind == "feedforward" and bool(m.get("inject", False)):
        raise ValueError("model.inject is an option of the equilibrium maps, not of feedforward")
    regulariser = regulariser_from_config(m, rngs)
    if m.kind == "feedforward":
        return FeedForward(blur, regulariser)
    family = str(m.get("family", "degrad"))
    if family not in FAMILIES:
        raise ValueError(f"model.family must be one of {FAMILIES}, got {family!r}")
    cls = DEProx if family == "deprox" else DEGRAD
    extra = {}
    if cls is DEGRAD:
        extra = {
            "precond": float(m.get("precond", 0.0)),
            "precond_iters": int(m.get("precond_iters", 10)),
            "precond_tv": bool(m.get("precond_tv", False)),
            "tikhonov": float(m.get("tikhonov", 0.0)),
            "tv_weight": float(m.get("tv_weight", 0.0)),
            "tv_eps": float(m.get("tv_eps", 0.1)),
        }
    return cls(
        blur,
        regulariser,
        equivariance=int(m.get("equivariance", 1)),
        tv_equivariance=int(m.get("tv_equivariance", 1)),
        eta_init=float(m.eta_init),
        clamp=bool(m.clamp),
        learn_eta=bool(m.get("learn_eta", True)),
        solver=solver_from_config(config.solver),
        backward=backward_from_config(config.backward),
        start=str(m.get("start", "adjoint")),
        start_iters=int(m.get("start_iters", 60)),
        start_weight=float(m.get("start_weight", 0.01)),
        inject=bool(m.get("inject", False)),
        **extra,
    )
