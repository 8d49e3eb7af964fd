"""DnCNN: the learned regulariser R of the DE-GRAD map (Flax NNX)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx


class SpectralConv(nnx.Module):
    """A 3x3 convolution whose kernel is divided by ``max(1, s)``, ``s`` a
    power-iteration estimate of the spectral norm of the kernel reshaped to a
    ``(kh * kw * c_in, c_out)`` matrix (Miyato et al.'s normalisation; it bounds
    the convolution's Lipschitz constant up to the usual factor for the
    reshaped matrix).

    The estimate is a pure function of the kernel: ``iters`` power iterations
    from a fixed stored vector, with the singular vectors held constant under
    differentiation (``stop_gradient``). Nothing is updated when the layer is
    called, so the layer is the same function at every solver iteration
    (unlike batch norm or a stateful spectral norm, whose statistics would
    change inside the fixed-point solve).
    """

    def __init__(self, c_in: int, c_out: int, *, iters: int = 5, rngs: nnx.Rngs):
        self.conv = nnx.Conv(c_in, c_out, (3, 3), padding="SAME", rngs=rngs)
        self.u0 = nnx.Variable(jax.random.normal(rngs.params(), (c_out,)))
        self.iters = iters

    def sigma(self) -> jax.Array:
        w = self.conv.kernel[...]
        mat = jax.lax.stop_gradient(w.reshape(-1, w.shape[-1]))
        u = self.u0[...] / jnp.linalg.norm(self.u0[...])
        for _ in range(self.iters):
            v = mat @ u
            v = v / (jnp.linalg.norm(v) + 1e-12)
            u = mat.T @ v
            u = u / (jnp.linalg.norm(u) + 1e-12)
        return v @ (w.reshape(-1, w.shape[-1]) @ u)

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = 1.0 / jnp.maximum(1.0, self.sigma())
        w = self.conv.kernel[...] * scale
        y = jax.lax.conv_general_dilated(
            x[None] if x.ndim == 3 else x,
            w.astype(x.dtype),
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = y + self.conv.bias[...].astype(x.dtype)
        return y[0] if x.ndim == 3 else y


class DnCNN(nnx.Module):
    """Conv(3x3)+ReLU, ``depth - 2`` x [Conv(3x3)+ReLU], Conv(3x3): ``depth``
    convolutions with ``features`` channels, no batch norm (batch statistics
    inside a fixed-point map change at every solver iteration and break the
    map's contraction; the paper's public code has that defect).

    The last convolution starts at zero, so ``R = 0`` at initialisation and
    DE-GRAD starts as plain gradient descent on the data fit (a stable start).

    Input and output: ``(H, W, C)`` or ``(N, H, W, C)`` images.
    """

    def __init__(
        self,
        channels: int = 3,
        depth: int = 17,
        features: int = 64,
        *,
        spectral_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        if depth < 2:
            raise ValueError(f"DnCNN depth must be >= 2, got {depth}")
        sizes = [channels] + [features] * (depth - 1) + [channels]

        def conv(c_in, c_out):
            if spectral_norm:
                return SpectralConv(c_in, c_out, rngs=rngs)
            return nnx.Conv(c_in, c_out, (3, 3), padding="SAME", rngs=rngs)

        self.layers = nnx.List([conv(a, b) for a, b in itertools.pairwise(sizes)])
        last = self.layers[-1].conv if spectral_norm else self.layers[-1]
        last.kernel[...] = jnp.zeros_like(last.kernel[...])
        self.spectral_norm = spectral_norm

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for layer in self.layers[:-1]:
            h = jax.nn.relu(layer(h))
        return self.layers[-1](h)
