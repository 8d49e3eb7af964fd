r"""DE-GRAD (Gilton, Ongie, Willett 2021) and a feed-forward baseline, in Flax NNX.

The DE-GRAD map is one gradient step on the data fit ``||A x - d||^2 / 2``
plus a learned regulariser ``R`` (a :class:`~jfbjax.models.DnCNN`):

.. math:: T(x; d) = x - \eta \big(A^T(A x - d) + R(x)\big),\qquad
          \eta = \mathrm{softplus}(\rho) > 0,

optionally clamped to the data range [-1, 1] (Gilton's variant). The model's
output is the fixed point ``x* = T(x*; d)``, found by :func:`jfbjax.fixed_point`
from ``x0 = A^T d`` for every sample separately (``jax.vmap``), with the
solver and the backward mode (JFB, IFT, Neumann, unrolled) held as static
configuration. The sign convention ``+R`` is the paper's code's; Gilton
writes ``-R``, which is the same family of maps up to the sign of the last
layer.

:class:`DEProx` is Gilton's other deblurring map, a proximal-gradient step
with a learned denoiser in place of the proximal operator,
``T(x; d) = D(x - eta A^T(A x - d))`` with ``D = I - R``.

Start points (``start``): ``"adjoint"``, ``x0 = A^T d`` (the paper's), or
``"cg"``, ``x0`` = a few conjugate-gradient iterations on the Tikhonov
problem ``(A^T A + w I) x = A^T d`` (Gilton starts from 60 iterations with
``w = 0.01``). The start point is not differentiated (``fixed_point`` stops
gradients into ``x0``), and the fixed point, when the solve converges, does
not depend on it: it changes how many iterations the solve needs, and which
fixed point is found if ``T`` has several.

Neither map contracts by construction: ``dT/dx = I - eta (A^T A + dR/dx)``
(DE-GRAD) has eigenvalues near 1 along directions that the blur removes
unless ``dR/dx`` is positive there, and ``D``'s Jacobian (DE-Prox) is near
the identity along image content the blur removes. Contraction is a trained
property here (``jfbjax.training.contraction``: Jacobian and spectral
penalties) and a measured one (``jfbjax.contraction_estimate``).
"""

from __future__ import annotations

import copy
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jfbjax
from jfbjax.backward import Backward
from jfbjax.imaging.baselines import smoothed_tv_gradient, tikhonov_cg, tv_lagged_diffusivity
from jfbjax.imaging.blur import Blur, chebyshev, chebyshev_bound
from jfbjax.models.dncnn import freeze_spectral_norm
from jfbjax.models.ensemble import SUBGROUPS, symmetrize
from jfbjax.solvers import Solver

__all__ = ["DEGRAD", "FAMILIES", "STARTS", "DEProx", "FeedForward"]

#: Map families of ``config.model.family``.
FAMILIES = ("degrad", "deprox")
#: Start points of ``config.model.start``.
STARTS = ("adjoint", "cg")


def _inverse_softplus(y: float) -> float:
    """``rho`` with ``softplus(rho) = log(1 + e^rho) = y`` (for ``y > 0``)."""
    return float(y + np.log(-np.expm1(-y)))


def _subgroup_size(name: str, size) -> int:
    """``size`` as an int, or ``ValueError`` unless it is a size of :data:`SUBGROUPS`."""
    if isinstance(size, bool) or size not in SUBGROUPS:
        raise ValueError(
            f"{name} must be one of {tuple(SUBGROUPS)} (the size of the subgroup of "
            f"flips/rotations averaged over), got {size!r}"
        )
    return int(size)


def _check_batch(d: jax.Array, channels: int | None, who: str) -> None:
    if jnp.ndim(d) != 4:
        raise ValueError(f"{who} expects a batch of images (N, H, W, C), got shape {jnp.shape(d)}")
    if not jnp.issubdtype(jnp.result_type(d), jnp.floating):
        raise TypeError(f"{who} expects floating images, got dtype {jnp.result_type(d)}")
    if channels is not None and d.shape[-1] != channels:
        raise ValueError(
            f"{who}: the regulariser has {channels} channels, the images have {d.shape[-1]} "
            f"(shape {d.shape})"
        )


def _trivial_info(d: jax.Array) -> jfbjax.SolverInfo:
    """A :class:`jfbjax.SolverInfo` of shape (N,) for a model without a solve:
    0 iterations, residual 0, status CONVERGED."""
    n = d.shape[0]
    residual_dtype = jnp.promote_types(d.dtype, jnp.float32)
    return jfbjax.SolverInfo(
        iterations=jnp.zeros(n, jnp.int32),
        residual=jnp.zeros(n, residual_dtype),
        status=jnp.full(n, int(jfbjax.CONVERGED), jnp.int32),
    )


class DEGRAD(nnx.Module):
    r"""The DE-GRAD implicit deblurring model.

    Args:
      blur: the forward operator ``A`` (a frozen, hashable
        :class:`~jfbjax.imaging.blur.Blur`; static).
      regulariser: ``R``, e.g. a :class:`~jfbjax.models.DnCNN`, mapping
        ``(H, W, C)`` and ``(N, H, W, C)`` images to the same shape.
      eta_init: the initial step ``eta``. The parameter is the raw value
        ``rho`` with ``eta = softplus(rho)``, so ``eta > 0`` throughout
        training. Default 1: the blur kernel is non-negative and sums to 1,
        so ``||A||_2 <= 1`` (Young's inequality for zero padding; the DC
        Fourier coefficient for circular), and ``eta = 1 / ||A^T A||`` is the
        classical largest step that keeps the data-fit step
        ``x - eta A^T(A x - d)`` non-expansive with eigenvalues
        ``1 - eta s_i^2`` in [0, 1] (any ``eta < 2`` is non-expansive).
      clamp: clip ``T``'s output to [-1, 1] (Gilton's variant). Its gradient
        is zero for clipped pixels.
      learn_eta: make ``raw_eta`` an ``nnx.Param`` (trained, the default, as
        in the paper) or a plain ``nnx.Variable`` (held fixed by optimisers
        that train ``nnx.Param`` only). Note that the fixed point does not
        depend on ``eta``: ``x* = T(x*)`` iff ``A^T(A x* - d) + R(x*) = 0``
        (with the clamp: iff ``x*`` solves the same projected equation), so
        the exact implicit (IFT) gradient with respect to ``eta`` is zero, and
        JFB / IFT / Neumann gradients with respect to ``eta`` come only from
        the solver's residual at the returned point (unrolled: from the
        truncation of the iteration). ``eta`` sets how fast the solver
        converges, not what it converges to.
      solver: forward solver of :func:`jfbjax.fixed_point` (static).
      backward: backward mode of :func:`jfbjax.fixed_point` (static).
      start: ``"adjoint"`` (``x0 = A^T d``) or ``"cg"`` (``start_iters``
        conjugate-gradient iterations on ``(A^T A + start_weight I) x = A^T d``
        from 0; static).
      start_iters, start_weight: the CG start's iterations and Tikhonov weight.
      precond: ``mu > 0`` preconditions the step with ``P ~ (A^T A + mu I)^{-1}``
        (``precond_iters`` Chebyshev iterations,
        :meth:`~jfbjax.imaging.blur.Blur.normal_inverse_approx`; with
        ``precond_iters=0`` the exact inverse,
        :meth:`~jfbjax.imaging.blur.Blur.normal_inverse`, whose cost is about
        one ``A^T A`` instead of ``precond_iters`` of them), i.e.
        ``T(x) = x - eta P (A^T(A x - d) + R(x))``; 0 (the default, the
        paper's map) means ``P = I``. ``P`` is symmetric positive definite,
        so the fixed points are the same for every ``mu``:
        ``x = T(x) <=> A^T(A x - d) + R(x) = 0``. What changes is the
        Jacobian, ``I - eta P (A^T A + dR/dx)``: in an eigenvector of
        ``A^T A`` with eigenvalue ``h``, where ``dR/dx`` acts as ``r``, it
        is about ``(mu - r) / (h + mu)`` for ``eta = 1`` (``P`` commutes
        with ``A^T A``), so directions the blur removes (``h = 0``) contract by
        ``|1 - r / mu|`` instead of ``|1 - r|``: a weak regulariser
        (``0 < r < 2 mu``) now gives a contraction, and the JFB gradient
        ``-v^T eta P dR/dtheta`` is the IFT gradient with ``dR/dx``
        replaced by ``mu I``. No guarantee: ``r <= 0`` or ``r >= 2 mu``
        still expands. Only :class:`DEGRAD` uses it.
      precond_tv: with ``precond = mu > 0`` and a smoothed-TV term (``tv_weight
        = w > 0``), precondition by ``P(x) ~ (A^T A + mu I + w L_x)^{-1}`` instead,
        with ``L_x`` the TV's lagged-diffusivity operator at the current iterate
        (:func:`~jfbjax.imaging.baselines.tv_lagged_diffusivity`, averaged like the
        TV term by ``tv_equivariance``): ``precond_iters`` (>= 1) Chebyshev
        iterations (:func:`~jfbjax.imaging.blur.chebyshev`) preconditioned by the
        exact ``(A^T A + mu I)^{-1}``, for which the spectrum lies in ``[1, 1 + 8 w
        / (eps mu)]``; ``precond_iters`` must make the polynomial positive definite
        there (checked). Why: along directions the blur removes, the
        preconditioned Jacobian is ``P dR/dx``; the smoothed TV is stiff in flat
        regions (curvature up to ``8 w / eps``) and soft across edges, so with
        ``P = (A^T A + mu I)^{-1}`` its spectrum spans a wide range and no step
        ``eta`` contracts well. ``L_x`` is the TV's curvature frozen at ``x``, so
        ``P(x)`` normalises the flat regions and a smaller ``mu`` lifts the
        soft directions. The fixed points do not change (``P(x)`` is symmetric
        positive definite at every ``x``, so ``T(x) = x`` iff ``A^T(A x - d) +
        R(x) = 0``), and at a fixed point ``dT/dx = I - eta P(x*) (A^T A +
        dR/dx)`` (the derivative of ``P`` multiplies the zero residual). Cost:
        ``precond_iters`` products with ``A^T A`` and with the exact inverse per step.
      tikhonov: ``lam >= 0`` adds a fixed Tikhonov term to the regulariser,
        ``R(x) -> lam x + R(x)``, so that the untrained model (``R = 0``,
        its last layer starts at zero) is the Tikhonov solution
        ``(A^T A + lam I)^{-1} A^T d`` instead of the ill-posed least-squares
        one, and ``dR/dx`` starts at ``lam I > 0`` in every direction (with
        ``precond = mu`` the map then starts as a contraction by about
        ``|1 - lam / mu|`` along the directions the blur removes). The DnCNN
        learns the correction. 0 (the default): the paper's map.
      tv_weight, tv_eps: ``w >= 0`` adds a smoothed total-variation gradient,
        ``R(x) -> w grad TV_eps(x) + R(x)``
        (:func:`~jfbjax.imaging.baselines.smoothed_tv_gradient`): the untrained
        model is then the smoothed-TV deblurrer, a strong classical start,
        and the DnCNN learns a correction to it. The term's Jacobian is the
        Hessian of a convex function (symmetric positive semi-definite, norm
        ``<= 8 w / eps``), so it only adds positive curvature: it can
        only lower the contraction factor of the preconditioned map where
        ``8 w / eps <= 2 mu``. 0 (the default): the paper's map.
      equivariance: 1 (the default, the paper's map), 2, 4 or 8: ``R`` is
        averaged over that subgroup of the square's symmetries (the half turn,
        the rotations, all flips and rotations;
        :func:`~jfbjax.models.ensemble.symmetrize`), so ``R`` and, for a blur
        that commutes with them (an isotropic kernel), the map ``T`` and its
        fixed point are exactly equivariant to the subgroup. A learned ``R`` is
        only roughly equivariant, even when trained on flipped and rotated crops;
        the average removes the rest of its error by construction, at
        ``equivariance`` evaluations of the DnCNN per step. No effect on the
        contraction guarantee (none): ``dR/dx`` becomes the average of the
        conjugated Jacobians, whose norm is at most their largest.
      tv_equivariance: the same for the smoothed-TV term alone (1: its forward
        differences as they are; 2: averaged with its half turn, i.e. forward
        and backward differences). The TV term costs little next to the DnCNN,
        so this symmetrises the classical part of the map at almost no cost.
      inject: False (the default, the paper's map): the DnCNN reads the
        iterate, ``R(x)``. True: it also reads the measurement, ``R(x, d)``
        with ``x`` and ``d`` stacked along the channels (the regulariser needs
        ``in_channels = 2 * channels``), the input injection of deep
        equilibrium models (Bai et al. 2019): the learned term can compare the
        iterate with what was observed, e.g. where the observation has edges
        or flat regions, instead of inferring it from ``x`` alone. The fixed
        point solves ``A^T(A x - d) + R(x, d) = 0``; ``dT/dx`` and the
        backward modes are unchanged (``d`` is a constant of the solve). With
        ``equivariance > 1`` ``x`` and ``d`` are transformed together, which
        keeps the map exactly equivariant.

    ``model.solver`` and ``model.backward`` are plain attributes and may be
    reassigned (e.g. a tighter solver for evaluation); :meth:`with_solver`
    returns a model with other settings that shares this one's variables.
    """

    def __init__(
        self,
        blur: Blur,
        regulariser: nnx.Module,
        *,
        eta_init: float = 1.0,
        clamp: bool = False,
        learn_eta: bool = True,
        solver: Solver | str = "anderson",
        backward: Backward | str = "jfb",
        start: str = "adjoint",
        start_iters: int = 60,
        start_weight: float = 0.01,
        precond: float = 0.0,
        precond_iters: int = 10,
        precond_tv: bool = False,
        tikhonov: float = 0.0,
        tv_weight: float = 0.0,
        tv_eps: float = 0.1,
        equivariance: int = 1,
        tv_equivariance: int = 1,
        inject: bool = False,
    ):
        if not (np.isfinite(eta_init) and eta_init > 0):
            raise ValueError(f"eta_init must be a finite number > 0, got {eta_init!r}")
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}")
        if int(start_iters) < 1 or not float(start_weight) > 0:
            raise ValueError(
                f"the CG start needs start_iters >= 1 and start_weight > 0, got "
                f"{start_iters!r} and {start_weight!r}"
            )
        if not (np.isfinite(precond) and precond >= 0):
            raise ValueError(f"precond must be a finite number >= 0, got {precond!r}")
        if isinstance(precond_iters, bool) or int(precond_iters) < 0:
            raise ValueError(
                f"precond_iters must be an integer >= 0 (0: the exact inverse), got "
                f"{precond_iters!r}"
            )
        self.precond = float(precond)
        self.precond_iters = int(precond_iters)
        if not (np.isfinite(tikhonov) and tikhonov >= 0):
            raise ValueError(f"tikhonov must be a finite number >= 0, got {tikhonov!r}")
        self.tikhonov = float(tikhonov)
        if not (np.isfinite(tv_weight) and tv_weight >= 0 and np.isfinite(tv_eps) and tv_eps > 0):
            raise ValueError(
                f"tv_weight must be >= 0 and tv_eps > 0, got {tv_weight!r} and {tv_eps!r}"
            )
        self.tv_weight, self.tv_eps = float(tv_weight), float(tv_eps)
        self.precond_tv = bool(precond_tv)
        if self.precond_tv:
            if not (self.precond > 0 and self.tv_weight > 0 and self.precond_iters >= 1):
                raise ValueError(
                    "precond_tv needs precond > 0, tv_weight > 0 and precond_iters >= 1, got "
                    f"{precond!r}, {tv_weight!r} and {precond_iters!r}"
                )
            bound = chebyshev_bound(*self._lagged_interval(), self.precond_iters)
            if not bound < 1:
                raise ValueError(
                    f"precond_tv: {self.precond_iters} Chebyshev iterations do not make the "
                    f"preconditioner positive definite on [1, 1 + 8 w / (eps mu)] (bound "
                    f"{bound:.2f} >= 1); use more precond_iters or a larger precond"
                )
        self.equivariance = _subgroup_size("equivariance", equivariance)
        self.tv_equivariance = _subgroup_size("tv_equivariance", tv_equivariance)
        self.inject = bool(inject)
        c_out = getattr(regulariser, "channels", None)
        c_in = getattr(regulariser, "in_channels", c_out)
        k = 2 if self.inject else 1
        if c_out is not None and c_in != k * c_out:
            raise ValueError(
                f"inject={self.inject} needs a regulariser with in_channels = {k} x channels, "
                f"got {c_in} and {c_out}"
            )
        self.start_kind = start
        self.start_iters = int(start_iters)
        self.start_weight = float(start_weight)
        self.blur = blur
        self.regulariser = regulariser
        raw_eta = jnp.asarray(_inverse_softplus(float(eta_init)), jnp.float32)
        self.raw_eta = nnx.Param(raw_eta) if learn_eta else nnx.Variable(raw_eta)
        self.clamp = bool(clamp)
        self.solver = jfbjax.as_solver(solver)
        self.backward = jfbjax.as_backward(backward)
        #: Optional host callback on every backward solve's :class:`jfbjax.SolverInfo`
        #: (``fixed_point``'s ``backward_callback``; static), e.g. a
        #: :class:`jfbjax.training.contraction.AdjointStats` counting converged IFT adjoints.
        self.backward_callback = None

    @property
    def eta(self) -> jax.Array:
        """The step size ``softplus(raw_eta) > 0``."""
        return jax.nn.softplus(self.raw_eta[...])

    def with_solver(
        self, solver: Solver | str | None = None, backward: Backward | str | None = None
    ) -> DEGRAD:
        """This model with another solver and/or backward mode.

        The result shares this model's variables (an update of one's
        parameters is seen by the other); ``self`` is unchanged.
        """
        other = copy.copy(self)
        if solver is not None:
            other.solver = jfbjax.as_solver(solver)
        if backward is not None:
            other.backward = jfbjax.as_backward(backward)
        return other

    def regulariser_terms(self, x: jax.Array, d: jax.Array | None = None) -> dict:
        """The terms of one (unsymmetrised) regulariser evaluation, by name: ``"R"``, the
        learned network (reading ``d`` too when it is given, ``inject``), and, when
        set, ``"tik"`` (``tikhonov * x``) and ``"tv"`` (the smoothed-TV gradient
        times ``tv_weight``, averaged over ``tv_equivariance``). Their sum, in this
        order, is the regulariser term of the step (with ``equivariance`` 1)."""
        r = self.regulariser(x if d is None else jnp.concatenate([x, d.astype(x.dtype)], -1))
        terms = {"R": r}
        if self.tikhonov > 0:
            terms["tik"] = self.tikhonov * x
        if self.tv_weight > 0:
            tv = symmetrize(lambda z: smoothed_tv_gradient(z, self.tv_eps), x, self.tv_equivariance)
            terms["tv"] = self.tv_weight * tv.astype(r.dtype)
        return terms

    def _regularise_once(self, x: jax.Array, d: jax.Array | None = None) -> jax.Array:
        terms = self.regulariser_terms(x, d)
        r = terms["R"]
        for name in ("tik", "tv"):
            if name in terms:
                r = r + terms[name]
        return r

    def regularise(self, x: jax.Array, d: jax.Array | None = None) -> jax.Array:
        """The whole regulariser term of the step: the DnCNN ``R(x)`` (``R(x, d)``
        with ``inject``, which needs ``d``) plus the Tikhonov and smoothed-TV terms
        when set, averaged over the subgroup of flips/rotations of size
        ``equivariance`` (:func:`~jfbjax.models.ensemble.symmetrize`; 1: no
        average). The smoothed TV's forward differences are not equivariant either
        (a half turn makes them backward differences), so it is averaged with R."""
        if not self.inject:
            return symmetrize(self._regularise_once, x, self.equivariance)
        if d is None or d.shape != x.shape:
            raise ValueError(
                "inject=True: the regulariser reads the measurement d, of the iterate's shape "
                f"{x.shape}; got {None if d is None else d.shape}"
            )
        return symmetrize(self._regularise_once, x, self.equivariance, d)

    def _lagged_interval(self) -> tuple[float, float]:
        """The spectrum of ``(A^T A + mu I)^{-1} (A^T A + mu I + w L_x)`` lies in it."""
        return 1.0, 1.0 + 8.0 * self.tv_weight / (self.tv_eps * self.precond)

    def lagged_precondition(self, x: jax.Array, g: jax.Array) -> jax.Array:
        """``P(x) g ~ (A^T A + mu I + w L_x)^{-1} g`` (``precond_tv``; see the class docstring)."""
        mu, w = self.precond, self.tv_weight
        lagged = lambda x, v: tv_lagged_diffusivity(x, v, self.tv_eps)

        def matvec(v):  # x moves with v under every symmetry of the average
            tv = symmetrize(lagged, x, self.tv_equivariance, v)
            return self.blur.normal(v) + mu * v + w * tv

        lo, hi = self._lagged_interval()
        inverse = lambda v: self.blur.normal_inverse(v, mu)
        return chebyshev(matvec, g, lo, hi, self.precond_iters, precond=inverse)

    def precondition(self, x: jax.Array, g: jax.Array) -> jax.Array:
        """``P(x) g``, the preconditioner of the step at the iterate ``x``: the lagged-TV
        ``P(x)`` (``precond_tv``), ``(A^T A + precond I)^{-1}`` exactly
        (``precond_iters=0``) or by Chebyshev steps, or ``g`` itself (no preconditioner).
        Linear in ``g``."""
        if self.precond_tv:
            return self.lagged_precondition(x, g)
        if self.precond > 0:
            if self.precond_iters == 0:
                return self.blur.normal_inverse(g, self.precond)
            return self.blur.normal_inverse_approx(g, self.precond, self.precond_iters)
        return g

    def step(self, x: jax.Array, d: jax.Array) -> jax.Array:
        """One application of ``T(x; d)`` to ``(H, W, C)`` or ``(N, H, W, C)`` images.

        Returns an array of ``x``'s shape and dtype.
        """
        grad = self.precondition(
            x, self.blur.adjoint(self.blur.apply(x) - d) + self.regularise(x, d)
        )
        out = x - self.eta.astype(grad.dtype) * grad
        if self.clamp:
            out = jnp.clip(out, -1.0, 1.0)
        return out.astype(x.dtype)

    def map(self, x: jax.Array, d: jax.Array) -> jax.Array:
        """Deprecated spelling of :meth:`step` (the same map ``T``); use ``step``."""
        warnings.warn("DEGRAD.map is deprecated: call DEGRAD.step", DeprecationWarning, 2)
        return self.step(x, d)

    def start(self, d: jax.Array) -> jax.Array:
        """The start point: ``A^T d``, or CG iterations on the Tikhonov problem (``start="cg"``)."""
        if self.start_kind == "cg":
            return tikhonov_cg(d, self.blur, self.start_weight, iters=self.start_iters, tol=0.0)
        return self.blur.adjoint(d)

    def __call__(self, d: jax.Array) -> tuple[jax.Array, jfbjax.SolverInfo]:
        """Fixed points ``x*_i = T(x*_i; d_i)`` of a batch ``d`` of shape (N, H, W, C).

        Each sample is solved on its own (``jax.vmap`` of
        :func:`jfbjax.fixed_point`): own iterations, residual and status; a
        non-finite ``d_i`` gives status ``NONFINITE`` for sample ``i`` only.
        ``T`` is a pure function of the parameters, passed to the solve as
        explicit arguments, so gradients reach every parameter through the
        configured backward mode. Spectral normalisation, if any, is
        computed once per call, before the solve.

        Returns:
          ``(x_star, info)``: ``x_star`` of ``d``'s shape, ``info`` a
          :class:`jfbjax.SolverInfo` with fields of shape (N,).
        """
        _check_batch(d, getattr(self.regulariser, "channels", None), "DEGRAD")
        graphdef, params, rest = nnx.split(freeze_spectral_norm(self), nnx.Param, ...)
        rest = jax.lax.stop_gradient(rest)

        def T(x, params, rest, d):
            return nnx.merge(graphdef, params, rest).step(x, d)

        def solve(x0, d):
            return jfbjax.fixed_point(
                T,
                x0,
                params,
                rest,
                d,
                solver=self.solver,
                backward=self.backward,
                backward_callback=self.backward_callback,
            )

        return jax.vmap(solve)(self.start(d), d)


class DEProx(DEGRAD):
    r"""DE-Prox (Gilton, Ongie, Willett 2021): a proximal-gradient step with a learned denoiser,

    .. math:: T(x; d) = D\big(x - \eta A^T(A x - d)\big),\qquad D(z) = z - R(z),

    optionally clamped to [-1, 1]. ``R`` (a DnCNN) predicts the noise of its
    input, so ``D`` is a residual denoiser: pretraining ``R`` on noisy clean
    crops (``jfbjax.training.pretrain``) makes ``D`` a denoiser before the
    equilibrium is trained, as Gilton does. The fixed point satisfies
    ``x* = D(x* - eta A^T(A x* - d))`` and, unlike DE-GRAD's, depends on
    ``eta``. Guarantee: ``T`` is a contraction when ``D`` is (the data step
    ``I - eta A^T A`` is non-expansive for ``0 < eta <= 2``, since ``||A|| <=
    1``); nothing here forces ``D`` to be one, so contraction is trained and
    measured. Same arguments as :class:`DEGRAD`.
    """

    def __init__(self, *args, **kwargs):
        if any(kwargs.get(k, 0.0) for k in ("precond", "tikhonov", "tv_weight")):
            raise ValueError("precond, tikhonov and tv_weight are DE-GRAD's options, not DEProx's")
        super().__init__(*args, **kwargs)

    def step(self, x: jax.Array, d: jax.Array) -> jax.Array:
        """``D(x - eta A^T(A x - d))`` on ``(H, W, C)`` or ``(N, H, W, C)`` images."""
        z = x - self.eta.astype(x.dtype) * self.blur.adjoint(self.blur.apply(x) - d)
        out = z - self.regularise(z, d)
        if self.clamp:
            out = jnp.clip(out, -1.0, 1.0)
        return out.astype(x.dtype)


class FeedForward(nnx.Module):
    """A direct deblurrer ``x = A^T d - R(A^T d)`` (the paper's pretraining of R).

    Same call signature as :class:`DEGRAD`: ``model(d) -> (x, info)`` with a
    trivial ``info`` (0 iterations, residual 0, status CONVERGED) of shape (N,).
    """

    def __init__(self, blur: Blur, regulariser: nnx.Module):
        self.blur = blur
        self.regulariser = regulariser

    def __call__(self, d: jax.Array) -> tuple[jax.Array, jfbjax.SolverInfo]:
        _check_batch(d, getattr(self.regulariser, "channels", None), "FeedForward")
        x0 = self.blur.adjoint(d)
        return (x0 - self.regulariser(x0)).astype(d.dtype), _trivial_info(d)
