r"""Contraction of an implicit model's map: penalties that train it, estimates that measure it.

A model with a ``step(x, d)`` method (``T``, e.g. :class:`~jfbjax.models.DEGRAD`)
has the Jacobian :math:`J = \partial T / \partial x` at its fixed point
:math:`x^*`. Its spectral norm :math:`\|J\|_2` is the local contraction
factor: below 1 the forward solve converges linearly near :math:`x^*`, the
adjoint equation of the IFT gradient has a unique solution that Picard and
Anderson reach, and JFB's update is a descent direction (Fung et al. 2022).
Nothing in DE-GRAD or DE-Prox bounds it, so these penalties are added to
the training loss (``config.contraction``), both evaluated at the solver's
output :math:`x^*` held constant (``stop_gradient``), so they shape ``T``
around the fixed point without a second solve:

* **Jacobian (Frobenius) penalty**, Bai, Koltun, Kolter 2021:
  :math:`\|J\|_F^2 / n = \mathbb{E}_\epsilon \|J^T \epsilon\|^2 / n` with
  :math:`\epsilon \sim N(0, I)` (Hutchinson), one VJP per sample; the mean
  squared singular value, so it lowers every singular value, not only the
  largest. No guarantee on :math:`\|J\|_2` (only
  :math:`\|J\|_2^2 \le \|J\|_F^2`, which is ``n`` times larger).
* **Spectral penalty**, after Hurault, Leclaire, Papadakis 2022:
  :math:`\max(\sigma - \tau, 0)^2` with :math:`\sigma \approx \|J\|_2` from
  ``power_iters`` power-iteration steps on :math:`J^T J` (each one JVP, as
  the transpose of a VJP, and one VJP; the iteration itself is not
  differentiated), then :math:`\sigma = \langle u, J w \rangle` with the unit
  vectors ``u, w`` held constant, whose gradient is that of the largest
  singular value when the iteration has converged (as in spectral
  normalisation). It acts only where :math:`\sigma > \tau`, so a target
  :math:`\tau < 1` asks for a contraction by ``tau`` at the training fixed
  points; few power steps underestimate :math:`\sigma`, so the achieved
  factor is measured afterwards with :func:`contraction_factors`.

Both penalties need reverse-over-reverse differentiation of ``T`` (one more
pass through ``R`` per VJP), and run on the first ``samples`` images of a
batch to bound their cost.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jfbjax.diagnostics import contraction_estimate

__all__ = [
    "AdjointStats",
    "ContractionPenalty",
    "alignment_from_config",
    "contraction_factors",
    "gradient_alignment_report",
    "make_contraction_eval",
    "penalty_from_config",
]


def _unit(w: jax.Array) -> jax.Array:
    return w / (jnp.linalg.norm(w.ravel()) + 1e-12)


def _jacobian_ops(step, x: jax.Array, d: jax.Array):
    """``(vjp, jvp)`` of ``x -> step(x, d)`` at ``x`` (the JVP as the VJP's transpose)."""
    fx, vjp = jax.vjp(lambda z: step(z, d), x)
    jt = jax.linear_transpose(lambda u: vjp(u)[0], fx)
    return (lambda u: vjp(u)[0]), (lambda w: jt(w)[0])


@dataclasses.dataclass(frozen=True)
class ContractionPenalty:
    """The contraction penalties of one training step (see the module docstring).

    Attributes:
      jac_weight: weight of the Hutchinson estimate of ``||J||_F^2 / n`` (0: off).
      spectral_weight: weight of ``max(sigma - target, 0)^2`` (0: off).
      target: the spectral penalty's target contraction ``tau``.
      power_iters: power-iteration steps of the spectral estimate.
      samples: the penalties use the first ``samples`` images of the batch.
    """

    jac_weight: float = 0.0
    spectral_weight: float = 0.0
    target: float = 0.9
    power_iters: int = 3
    samples: int = 4

    def __post_init__(self):
        for name in ("jac_weight", "spectral_weight", "target"):
            value = getattr(self, name)
            if not (jnp.isfinite(value) and value >= 0):
                raise ValueError(f"contraction.{name} must be a finite number >= 0, got {value}")
        if int(self.power_iters) < 1 or int(self.samples) < 1:
            raise ValueError(
                f"contraction.power_iters and contraction.samples must be >= 1, got "
                f"{self.power_iters} and {self.samples}"
            )

    @property
    def active(self) -> bool:
        """Whether either penalty has a positive weight."""
        return self.jac_weight > 0 or self.spectral_weight > 0

    def __call__(self, step, x_star: jax.Array, d: jax.Array, key: jax.Array):
        """``(penalty, metrics)`` for the map ``step(x, d)`` at the batch ``x_star`` (N, H, W, C).

        ``step`` closes over the parameters being trained, so ``penalty`` is
        differentiable with respect to them; ``x_star`` is held constant.
        ``metrics`` holds each estimate (``jacobian_fro2``, ``spectral``).
        """
        x = jax.lax.stop_gradient(x_star[: self.samples])
        d = d[: self.samples]
        acc = jnp.promote_types(x.dtype, jnp.float32)  # at least float32, float64 under x64
        total = jnp.zeros((), acc)
        metrics = {}
        k_jac, k_pow = jax.random.split(key)
        if self.jac_weight > 0:
            eps = jax.random.normal(k_jac, x.shape, x.dtype)
            _, vjp = jax.vjp(lambda z: step(z, d), x)
            g = vjp(eps)[0]
            fro2 = jnp.sum(jnp.square(g.astype(acc))) / x.size
            metrics["jacobian_fro2"] = fro2
            total = total + self.jac_weight * fro2
        if self.spectral_weight > 0:
            w0 = jax.random.normal(k_pow, x.shape, x.dtype)
            sigma = jax.vmap(lambda xi, di, wi: self._sigma(step, xi, di, wi))(x, d, w0)
            metrics["spectral"] = jnp.mean(sigma)
            excess = jnp.maximum(sigma.astype(acc) - self.target, 0.0)
            total = total + self.spectral_weight * jnp.mean(jnp.square(excess))
        return total, metrics

    def _sigma(self, step, x, d, w):
        vjp, jvp = _jacobian_ops(step, x, d)

        def body(_, w):
            return _unit(vjp(jvp(w)))

        w = jax.lax.stop_gradient(jax.lax.fori_loop(0, int(self.power_iters), body, _unit(w)))
        u = jax.lax.stop_gradient(_unit(jvp(w)))
        # sigma = <u, J w> = <J^T u, w>: one VJP, differentiable in the parameters.
        return jnp.vdot(vjp(u), w)


def penalty_from_config(config) -> ContractionPenalty | None:
    """The penalty of ``config.contraction``; None when it is absent or both weights are 0."""
    c = config.get("contraction")
    if c is None:
        return None
    penalty = ContractionPenalty(
        jac_weight=float(c.jac_weight),
        spectral_weight=float(c.spectral_weight),
        target=float(c.target),
        power_iters=int(c.power_iters),
        samples=int(c.samples),
    )
    return penalty if penalty.active else None


def contraction_factors(step, x_star: jax.Array, d: jax.Array, iters: int = 20) -> jax.Array:
    """``||dT/dx||_2`` at the fixed point of each image, shape (N,), by power iteration.

    ``step(x, d)`` is the model's map on one image; ``x_star`` and ``d`` are
    (N, H, W, C) batches. Each estimate is a lower bound that tightens with
    ``iters`` (power-iteration steps from a random vector, ``PRNGKey(i)``
    for image ``i``).
    """
    keys = jax.random.split(jax.random.PRNGKey(0), x_star.shape[0])

    def one(x, di, key):
        return contraction_estimate(step, x, di, iters=iters, key=key)

    return jax.vmap(one)(jax.lax.stop_gradient(x_star), d, keys)


class AdjointStats:
    """Counts the backward (adjoint) solves that reached their tolerance.

    Set as a model's ``backward_callback`` (see :class:`~jfbjax.models.DEGRAD`),
    it is called on the host with the :class:`jfbjax.SolverInfo` of every
    adjoint solve that :func:`jfbjax.fixed_point` runs (per sample under
    ``vmap``) and adds up how many ended with status ``CONVERGED``. For IFT
    this is the fraction of training gradients that are the implicit
    gradient to the adjoint tolerance; an IFT run with a low fraction
    trained on truncated adjoints. (JFB and Neumann report status
    ``MAX_ITER`` by definition: they run no solve.)
    """

    def __init__(self):
        self.converged = 0
        self.total = 0

    def __call__(self, info) -> None:
        status = np.asarray(info.status)
        self.total += int(status.size)
        self.converged += int(np.sum(status == 0))

    @property
    def fraction(self) -> float | None:
        """Converged / total, or None before any adjoint solve."""
        return self.converged / self.total if self.total else None

    def reset(self) -> None:
        """Forget the counts (e.g. before timing steps that should not be counted)."""
        self.converged = self.total = 0


def gradient_alignment_report(
    model,
    d: jax.Array,
    x: jax.Array,
    *,
    tol: float = 1e-4,
    restart: int = 60,
    cycles: int = 20,
    forward_tol: float | None = 1e-5,
    forward_max_iter: int = 300,
    gmres_method: str = "incremental",
) -> dict:
    """cos(JFB gradient, IFT gradient) of the MSE on one batch, with a tight IFT adjoint.

    The forward solve is redone to ``forward_tol`` (None: the model's own
    solver), so that both gradients are taken at an accurate fixed point:
    for a map that contracts by 0.99, ``(I - J)^{-1}`` amplifies a forward
    residual of 1e-3 a hundredfold, and so does the IFT gradient. The IFT
    adjoint is solved by GMRES (which needs only ``I - J`` to be invertible,
    not ``T`` to contract) to ``tol``, for at most ``cycles`` restarts of
    ``restart`` Krylov vectors, with Givens rotations (``gmres_method=
    "incremental"``: the normal equations of the batched form give NaN in
    float32 at this ``restart``); whether each image got there is reported
    beside the cosine. Both gradients share the same forward solve.

    Measured on the trained JFB model of the cpu preset (8 test images): the
    old setting (forward at 1e-3, GMRES(30) to 1e-6) converged on none of
    them; forward at 1e-5 with GMRES(60) to 1e-4 converges on all 8.

    Args:
      model: a :class:`~jfbjax.models.DEGRAD` (or subclass) model.
      d, x: a (N, H, W, C) batch of degraded images and their clean versions.
      tol, restart, cycles: the GMRES adjoint solve (see above).
      forward_tol, forward_max_iter: tolerance and iteration cap of the
        forward solve (the model's solver type and other settings are kept).
      gmres_method: :class:`~jfbjax.IFT`'s ``gmres_method`` (``"batched"``
        reproduces the report of runs before 2026-12-04).

    Returns:
      ``{"cos_jfb_ift", "ift_adjoint_tol", "ift_adjoint_restart",
      "ift_adjoint_cycles", "forward_tol", "gmres_method", "ift_adjoint_converged",
      "ift_adjoint_residual_max", "grad_norm_jfb", "grad_norm_ift",
      "n_images"}``.
    """
    import dataclasses

    from flax import nnx

    from jfbjax.backward import IFT, JFB
    from jfbjax.diagnostics import gradient_alignment
    from jfbjax.solvers import tree_norm
    from jfbjax.training.steps import mse_loss

    if forward_tol is not None:
        solver = dataclasses.replace(
            model.solver,
            tol=float(forward_tol),
            max_iter=max(int(model.solver.max_iter), int(forward_max_iter)),
        )
        model = model.with_solver(solver=solver)
    residuals = []

    def record(info):
        residuals.append(np.asarray(info.residual))

    def grads(backward, callback):
        m = model.with_solver(backward=backward)
        m.backward_callback = callback
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)

        def loss(params):
            return mse_loss(nnx.merge(graphdef, params, rest)(d)[0], x)

        return jax.jit(jax.grad(loss))(params)

    g_jfb = grads(JFB(), None)
    reference = IFT("gmres", tol=tol, max_iter=cycles, restart=restart, gmres_method=gmres_method)
    g_ift = jax.block_until_ready(grads(reference, record))
    res = np.concatenate([r.ravel() for r in residuals]) if residuals else np.array([np.nan])
    return {
        "cos_jfb_ift": float(gradient_alignment(g_jfb, g_ift)),
        "ift_adjoint_tol": tol,
        "ift_adjoint_restart": int(restart),
        "ift_adjoint_cycles": int(cycles),
        "forward_tol": float(model.solver.tol),
        "gmres_method": gmres_method,
        "ift_adjoint_converged": float(np.mean(res <= tol)),
        "ift_adjoint_residual_max": float(np.max(res)),
        "grad_norm_jfb": float(tree_norm(g_jfb)),
        "grad_norm_ift": float(tree_norm(g_ift)),
        "n_images": int(d.shape[0]),
    }


def make_contraction_eval(graphdef, config, batch_size: int):
    """``f(params, rest, x_star, d) -> {"contraction_mean", "contraction_max"}`` over images.

    The contraction factor :func:`contraction_factors` of the model
    ``nnx.merge(graphdef, params, rest)`` at each fixed point ``x_star[i]``
    (with ``config.contraction.eval_iters`` power steps, default 20), jitted
    once and run in batches of ``batch_size`` (the last one padded).
    """
    from flax import nnx

    from jfbjax.models.dncnn import freeze_spectral_norm

    iters = int(config.get("contraction", {}).get("eval_iters", 20))

    @jax.jit
    def factors(params, rest, x, d):
        step = freeze_spectral_norm(nnx.merge(graphdef, params, rest)).step
        return contraction_factors(step, x, d, iters)

    def evaluate(params, rest, x_star, d) -> dict:
        params, rest = jax.device_get((params, rest))
        n, out = len(d), []
        for i in range(0, n, batch_size):
            xb, db = np.asarray(x_star[i : i + batch_size]), np.asarray(d[i : i + batch_size])
            pad = batch_size - len(db)
            if pad:
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
                db = np.concatenate([db, np.repeat(db[-1:], pad, 0)])
            out.append(np.asarray(factors(params, rest, xb, db))[: batch_size - pad])
        f = np.concatenate(out)
        return {"contraction_mean": float(np.mean(f)), "contraction_max": float(np.max(f))}

    return evaluate


def alignment_from_config(
    config, graphdef, state, d_test: np.ndarray, x_test: np.ndarray
) -> dict | None:
    """:func:`gradient_alignment_report` of a trained model (``graphdef`` and a
    train state with ``params`` and ``rest``) on the first
    ``config.contraction.align_images`` test images (default 8, at most all),
    with ``align_cycles`` GMRES restarts of ``align_restart`` vectors to
    ``align_tol``, after a forward solve to ``align_forward_tol`` (a field the
    config lacks takes the report's default); None when ``align_images`` is 0,
    in which case the model is not built."""
    from flax import nnx

    c = config.get("contraction", {})
    n = min(int(c.get("align_images", 8)), len(d_test))
    if n <= 0:
        return None
    model = nnx.merge(graphdef, *jax.device_get((state.params, state.rest)))
    d, x = jnp.asarray(d_test[:n]), jnp.asarray(x_test[:n])
    fields = {
        "align_tol": ("tol", float),
        "align_restart": ("restart", int),
        "align_cycles": ("cycles", int),
        "align_forward_tol": ("forward_tol", float),
    }
    kwargs = {arg: cast(c[key]) for key, (arg, cast) in fields.items() if key in c}
    return gradient_alignment_report(model, d, x, **kwargs)
