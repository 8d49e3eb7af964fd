r"""DE-GRAD (Gilton, Ongie, Willett 2021) and a feed-forward baseline, in Flax NNX.

The DE-GRAD map is one gradient step on the data fit plus a learned
regulariser ``R`` (a :class:`~jfbjax.models.DnCNN`):

.. math:: T(x; d) = x - \eta \big(A^T(A x - d) + R(x)\big),\qquad \eta > 0,

optionally clamped to the data range [-1, 1]; the model outputs its fixed
point ``x* = T(x*; d)`` found by :func:`jfbjax.fixed_point` from
``x0 = A^T d``, with the solver and backward mode given at construction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jfbjax
from jfbjax.imaging.blur import Blur
from jfbjax.models.dncnn import DnCNN


def _inverse_softplus(y: float) -> float:
    return float(y + np.log(-np.expm1(-y)))


class DEGRAD(nnx.Module):
    """The DE-GRAD implicit deblurring model.

    Args:
      blur: the forward operator ``A`` (static).
      regulariser: ``R``, e.g. a :class:`DnCNN`.
      eta_init: initial step size ``eta = softplus(raw)`` (learned, always > 0).
        ``||A^T A|| <= 1`` for a normalised blur, so ``eta <= 1`` keeps the
        data-fit step a contraction while ``R`` is small.
      clamp: clip ``T``'s output to [-1, 1] (Gilton's variant).
      solver, backward: the :func:`jfbjax.fixed_point` configuration (static;
        swap with :meth:`configure`).
    """

    def __init__(
        self,
        blur: Blur,
        regulariser: nnx.Module,
        *,
        eta_init: float = 1.0,
        clamp: bool = False,
        solver: jfbjax.Picard | jfbjax.Anderson | str = "anderson",
        backward: str | jfbjax.JFB | jfbjax.IFT | jfbjax.Neumann | jfbjax.Unrolled = "jfb",
    ):
        if not eta_init > 0:
            raise ValueError(f"eta_init must be > 0, got {eta_init}")
        self.blur = blur
        self.regulariser = regulariser
        self.raw_eta = nnx.Param(jnp.asarray(_inverse_softplus(eta_init), jnp.float32))
        self.clamp = clamp
        self.solver = jfbjax.as_solver(solver)
        self.backward = jfbjax.as_backward(backward)

    @property
    def eta(self) -> jax.Array:
        return jax.nn.softplus(self.raw_eta[...])

    def configure(self, *, solver=None, backward=None) -> DEGRAD:
        """Set the solver and/or backward mode in place (e.g. a tighter solver at test time)."""
        if solver is not None:
            self.solver = jfbjax.as_solver(solver)
        if backward is not None:
            self.backward = jfbjax.as_backward(backward)
        return self

    def map(self, x: jax.Array, d: jax.Array) -> jax.Array:
        """One application of ``T(x; d)`` (single (H, W, C) or batched images)."""
        grad = self.blur.adjoint(self.blur.apply(x) - d) + self.regulariser(x)
        out = x - self.eta.astype(x.dtype) * grad
        return jnp.clip(out, -1.0, 1.0) if self.clamp else out

    def start(self, d: jax.Array) -> jax.Array:
        """The start point ``x0 = A^T d``."""
        return self.blur.adjoint(d)

    def __call__(self, d: jax.Array) -> tuple[jax.Array, jfbjax.SolverInfo]:
        """Fixed points for a batch ``d`` of shape (N, H, W, C): ``(x*, info)``
        with ``info`` fields of shape (N,), one solve per sample."""
        if d.ndim != 4:
            raise ValueError(f"DEGRAD expects a batch (N, H, W, C), got shape {d.shape}")
        graphdef, state = nnx.split(self)

        def T(x, state, d):
            return nnx.merge(graphdef, state).map(x, d)

        def solve(x0, d):
            return jfbjax.fixed_point(T, x0, state, d, solver=self.solver, backward=self.backward)

        return jax.vmap(solve)(self.start(d), d)


class FeedForward(nnx.Module):
    """A direct deblurrer ``x = A^T d - R(A^T d)`` (the paper's pretraining of R).

    Same call signature as :class:`DEGRAD`; its info reports zero iterations.
    """

    def __init__(self, blur: Blur, regulariser: nnx.Module):
        self.blur = blur
        self.regulariser = regulariser

    def __call__(self, d: jax.Array) -> tuple[jax.Array, jfbjax.SolverInfo]:
        if d.ndim != 4:
            raise ValueError(f"FeedForward expects a batch (N, H, W, C), got shape {d.shape}")
        x0 = self.blur.adjoint(d)
        n = d.shape[0]
        info = jfbjax.SolverInfo(
            jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.float32), jnp.zeros(n, jnp.int32)
        )
        return x0 - self.regulariser(x0), info


def solver_from_config(cfg) -> jfbjax.Picard | jfbjax.Anderson:
    """``config.solver`` (name, m, beta, ridge, tol, max_iter) to a solver."""
    if cfg.name == "anderson":
        return jfbjax.Anderson(
            m=int(cfg.m),
            beta=float(cfg.beta),
            ridge=float(cfg.ridge),
            tol=float(cfg.tol),
            max_iter=int(cfg.max_iter),
        )
    if cfg.name == "picard":
        return jfbjax.Picard(
            tol=float(cfg.tol), max_iter=int(cfg.max_iter), damping=float(cfg.beta)
        )
    raise ValueError(f"solver.name must be 'anderson' or 'picard', got {cfg.name!r}")


def backward_from_config(cfg):
    """``config.backward`` (name, k, tol, max_iter, adjoint_solver) to a backward mode."""
    if cfg.name == "jfb":
        return jfbjax.JFB()
    if cfg.name == "ift":
        return jfbjax.IFT(str(cfg.adjoint_solver), tol=float(cfg.tol), max_iter=int(cfg.max_iter))
    if cfg.name == "neumann":
        return jfbjax.Neumann(int(cfg.k))
    if cfg.name == "unrolled":
        return jfbjax.Unrolled()
    raise ValueError(f"backward.name must be one of jfb, ift, neumann, unrolled; got {cfg.name!r}")


def build_model(config, blur: Blur, rngs: nnx.Rngs) -> DEGRAD | FeedForward:
    """The model described by ``config.model`` (+ ``config.solver``, ``config.backward``)."""
    m = config.model
    reg = DnCNN(3, int(m.depth), int(m.features), spectral_norm=bool(m.spectral_norm), rngs=rngs)
    if m.kind == "degrad":
        return DEGRAD(
            blur,
            reg,
            eta_init=float(m.eta_init),
            clamp=bool(m.clamp),
            solver=solver_from_config(config.solver),
            backward=backward_from_config(config.backward),
        )
    if m.kind == "feedforward":
        return FeedForward(blur, reg)
    raise ValueError(f"model.kind must be 'degrad' or 'feedforward', got {m.kind!r}")
