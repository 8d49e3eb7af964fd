r"""A monotone regulariser by construction: the gradient of a convex ridge energy.

DE-GRAD's step is :math:`T(x) = x - \eta P (A^T(Ax - d) + R(x))`. At a fixed
point the Jacobian is :math:`I - \eta P (A^T A + \partial R / \partial x)`,
and a learned DnCNN ``R`` is free to make :math:`\partial R / \partial x`
negative along some directions (it sharpens), cancelling the curvature that
the data term and a TV term provide, which leaves the map at the edge of
contraction (``benchmarks.contraction_vs_eta --direction_iters`` measures
that split). :class:`ConvexRidge` cannot do that:

.. math:: R(x) = W^T \big(s \odot \tanh(W x + b)\big)
          = \nabla_x \psi(x),\qquad
          \psi(x) = \sum_{k,\,p} s_k \log\cosh\big((W x + b)_{k,p}\big),

with :math:`W` a bank of ``features`` convolutions (``kernel`` x ``kernel``,
"SAME" zero padding), :math:`W^T` its adjoint (the correlation with the
flipped kernel, channels swapped), :math:`b` a bias per filter and
:math:`s_k = \mathrm{softplus}(\rho_k) > 0` a learned weight per filter.

**Guarantee.** :math:`\log\cosh` is convex, so :math:`\psi` is convex (a
sum of convex functions of affine maps of ``x``) and ``R`` is its gradient:

.. math:: \frac{\partial R}{\partial x} = W^T \operatorname{diag}
          \big(s \odot (1 - \tanh^2(W x + b))\big)\, W \succeq 0,

symmetric positive semidefinite at every ``x``, with
:math:`\|\partial R/\partial x\|_2 \le \max_k s_k \, \|W\|_2^2`. So ``R``
is monotone: :math:`\langle R(x) - R(y), x - y \rangle \ge 0`. With
:math:`A^T A \succeq 0`, a convex TV term and a symmetric positive definite
preconditioner ``P`` at the fixed point, the eigenvalues of
:math:`\eta P (A^T A + H_{tv} + \partial R/\partial x)` are real and
:math:`\ge 0`, so the iteration's local rate is below 1 for any step
:math:`\eta` below 2 over the largest of them, and the map contracts in the
:math:`P^{-1}` norm. What it does not give: a margin (directions where the
blur, the TV and every filter are flat keep a rate near 1) or a bound on
the Euclidean :math:`\|\partial T/\partial x\|_2` (``P`` and the Hessian do
not commute). It is the field-of-experts family with a log-cosh potential
(Roth and Black 2005), a smooth relative of the convex ridge regularisers
of Goujon et al. 2022, whose learned activations it does not have.

The filters start small (``init_scale``: the standard deviation of ``W``'s
entries, 0.003 by default) and ``s`` at ``softplus(0) = 0.69``, so ``R``
starts close to 0 and DE-GRAD close to its untrained map. Small matters: a
preconditioner that does not know ``R`` magnifies its curvature by up to
``1 / mu`` along the directions the blur removes (20 in the ``cpu`` preset),
so ``||dR/dx||`` must stay under about ``2 mu / eta`` there or the step
overshoots. With 32 5x5 filters at 0.05 (``||dR/dx||`` of order 1) the
``cpu`` preset's training diverged within 100 steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jfbjax.models.conv import adjoint_kernel, conv_same

__all__ = ["ConvexRidge"]


class ConvexRidge(nnx.Module):
    """``R(x) = W^T (s * tanh(W x + b))``, the gradient of a convex energy (module docstring).

    Args:
      channels: image channels (input and output).
      features: number of filters ``K``.
      kernel: the filters' (odd) side.
      init_scale: standard deviation of the filters' initial entries.
      rngs: initialisation keys.

    Input: ``(N, H, W, channels)`` or ``(H, W, channels)`` images; output: the same shape.
    """

    def __init__(
        self,
        channels: int = 3,
        features: int = 32,
        kernel: int = 5,
        *,
        init_scale: float = 0.003,
        rngs: nnx.Rngs,
    ):
        for name, value in (("channels", channels), ("features", features)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ConvexRidge {name} must be an integer >= 1, got {value!r}")
        if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"ConvexRidge kernel must be an odd integer >= 1, got {kernel!r}")
        if not init_scale > 0:
            raise ValueError(f"ConvexRidge init_scale must be > 0, got {init_scale!r}")
        shape = (kernel, kernel, channels, features)
        self.kernel = nnx.Param(init_scale * jax.random.normal(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((features,)))
        self.raw_weight = nnx.Param(jnp.zeros((features,)))
        self.channels = channels
        self.in_channels = channels
        self.features = features

    @property
    def weights(self) -> jax.Array:
        """The per-filter weights ``s = softplus(raw_weight) > 0``."""
        return jax.nn.softplus(self.raw_weight[...])

    def energy(self, x: jax.Array) -> jax.Array:
        """``psi(x) = sum s_k log cosh(W x + b)`` (summed over images too), whose gradient is R."""
        z = self._filter(x)  # log cosh z = log(e^z + e^-z) - log 2, stable for large |z|
        return jnp.sum(self.weights * (jnp.logaddexp(z, -z) - jnp.log(2.0)))

    def _filter(self, x: jax.Array) -> jax.Array:
        batched = x if x.ndim == 4 else x[None]
        z = conv_same(batched, self.kernel[...].astype(x.dtype)) + self.bias[...].astype(x.dtype)
        return z if x.ndim == 4 else z[0]

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.channels
        if x.ndim not in (3, 4) or x.shape[-1] != c:
            raise ValueError(
                f"ConvexRidge expects (N, H, W, {c}) or (H, W, {c}) images, got shape {x.shape}"
            )
        u = self.weights.astype(x.dtype) * jnp.tanh(self._filter(x))
        batched = u if u.ndim == 4 else u[None]
        out = conv_same(batched, adjoint_kernel(self.kernel[...]).astype(x.dtype))  # W^T u
        return out if x.ndim == 4 else out[0]
