r"""DnCNN: the learned regulariser ``R`` of the DE-GRAD map (Flax NNX).

``R`` is a plain stack of 3x3 convolutions, NHWC, "SAME" zero padding:

.. math:: R = C_{depth} \circ \mathrm{relu} \circ C_{depth-1} \circ \dots
          \circ \mathrm{relu} \circ C_1,

``C_1: channels -> features``, ``C_2 .. C_{depth-1}: features -> features``,
``C_{depth}: features -> channels``. There is no batch norm: batch statistics
inside a fixed-point map change at every solver iteration, so the map being
solved is not a fixed function (and train and eval maps differ); the paper's
public code has that defect.

Optionally each convolution is spectrally normalised (:class:`SpectralConv`)
to help keep the DE-GRAD map contractive.

Mixed precision: with ``dtype="bfloat16"`` every convolution but the first
casts its input and its (normalised) kernel to bfloat16 and accumulates into
a float32 output (``preferred_element_type``); biases, ReLUs, the spectral
norm's power iteration and everything outside ``R`` (the DE-GRAD iterate, the
solver state, norms) stay float32. Parameters are stored in float32 either
way. The first convolution reads the iterate ``x`` itself and stays float32:
rounding ``x`` to bfloat16 moved ``T(x*)`` by 2.3e-4 of its norm on the
trained cpu model, against 8.4e-5 with the first convolution in float32,
close to the solver's 1e-3 tolerance
(``benchmarks/results/precision_floor_cpu.md``). It is the cheapest layer
(``channels`` inputs).
"""

from __future__ import annotations

import functools
import itertools
from typing import TypeVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from jfbjax.models.conv import conv_general_dilated

__all__ = [
    "COMPUTE_DTYPES",
    "DnCNN",
    "PowerVector",
    "SpectralConv",
    "freeze_spectral_norm",
    "spectral_norm_estimate",
]

M = TypeVar("M", bound=nnx.Module)

#: Convolution compute dtypes accepted by :class:`DnCNN` and :class:`SpectralConv`.
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def _compute_dtype(dtype) -> jnp.dtype:
    name = jnp.dtype(dtype).name
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    return jnp.dtype(name)


class PowerVector(nnx.Variable):
    """The fixed start vector of a spectral-norm power iteration (not trained, never updated).

    A :class:`SpectralConv` holds one of shape ``(c_out,)``, drawn once at
    construction. Being an ``nnx.Variable`` but not an ``nnx.Param``, it sits
    in the non-trained part of a split (``rest``), is checkpointed with the
    model, and is skipped by optimisers that update ``nnx.Param`` only.
    """


def _unit(v: jax.Array) -> jax.Array:
    return v / (jnp.linalg.norm(v) + jnp.finfo(v.dtype).tiny)


def spectral_norm_estimate(matrix: jax.Array, u0: jax.Array, squarings: int) -> jax.Array:
    r"""Largest singular value of ``matrix`` (shape (p, q)) by power iteration.

    The right singular vector is found by power iteration on the Gram matrix
    ``G = W^T W`` (q x q) accelerated by repeated squaring: ``P = G^(2^s)``
    (normalised after every squaring), ``u = P u0 / ||P u0||``, which is
    ``2^s`` ordinary power-iteration steps for ``s`` small matrix products
    (error factor ``(s_2 / s_1)^(2^(s+1))``; randomly initialised 64 x 64
    conv kernels have ``s_2 / s_1 ~ 0.99``, where a handful of plain steps
    would underestimate ``s_1`` by several per cent). Then
    ``v = W u / ||W u||`` and

    .. math:: \hat\sigma = v^T W u,

    with ``u`` and ``v`` held constant under differentiation
    (``stop_gradient``), so ``d sigma / d W = v u^T``, the exact derivative
    of the largest singular value at convergence (Miyato et al. 2018).
    """
    # Full-precision products (no TF32 / bf16 passes on accelerators); they are tiny.
    dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
    w_const = jax.lax.stop_gradient(matrix)
    gram = dot(w_const.T, w_const)
    for _ in range(squarings):
        gram = dot(gram, gram)
        gram = gram / (jnp.max(jnp.abs(gram)) + jnp.finfo(gram.dtype).tiny)
    u = _unit(dot(gram, _unit(u0.astype(gram.dtype))))
    v = _unit(dot(w_const, u))
    u, v = jax.lax.stop_gradient((u, v))
    return dot(v, dot(matrix, u))


class SpectralConv(nnx.Module):
    r"""A 3x3 (by default) NHWC convolution with a spectrally normalised kernel.

    The kernel ``K`` (``(kh, kw, c_in, c_out)``, HWIO) is used as
    ``K / max(1, sigma)`` with ``sigma`` the spectral norm of ``K`` reshaped to
    the ``(kh * kw * c_in, c_out)`` matrix ``W`` (:func:`spectral_norm_estimate`),
    the usual spectral normalisation of a convolution (Miyato et al. 2018).
    Only kernels with ``sigma > 1`` are rescaled, so ``||W||_2 <= 1`` (up to
    the estimate's accuracy, about 1e-4 with the default ``squarings``).

    What that bounds: with zero "same" padding, each output pixel is ``W^T``
    applied to its ``kh * kw * c_in`` patch, and each input pixel lies in at
    most ``kh * kw`` patches, so the convolution's Lipschitz constant (the
    operator norm on images) is at most ``sqrt(kh * kw) ||W||_2`` (3 for a 3x3
    kernel), not 1. The reshaped-matrix normalisation is the standard cheap
    proxy: it bounds the gain of ``R`` whatever the scale of the weights. It
    is not a contraction certificate for DE-GRAD:
    ``T = I - eta (A^T A + R)`` contracts only where ``A^T A + R`` is
    strongly monotone, which a bound on ``R`` does not give (a blur with a
    near null space leaves ``I - eta A^T A`` with eigenvalues near 1 there).
    Check with :func:`jfbjax.contraction_estimate`.

    The normalisation is a pure function of the kernel: the power iteration
    starts from a fixed :class:`PowerVector` and nothing is written back, so
    the layer is the same function at every call (unlike ``nnx.SpectralNorm``,
    which writes the normalised kernel and the power-iteration statistics
    back into the module at every call). Inside a DE-GRAD solve the
    normalised kernels are computed once per solve, outside the solver loop
    (:func:`freeze_spectral_norm`).

    Args:
      c_in, c_out: input and output channels.
      kernel_size: spatial size of the kernel.
      squarings: matrix squarings of the power iteration (``2^squarings``
        power steps; 8 is accurate to better than 0.1% on random 64-channel
        kernels and costs 8 (c_out x c_out) matrix products per call).
      dtype: compute dtype of the convolution (``"float32"``, the default, or
        ``"bfloat16"`` / ``"float16"``: input and normalised kernel cast to it,
        float32 accumulation and output). The kernel is stored, and the
        spectral norm computed, in float32 either way.
      rngs: ``rngs.params()`` initialises the kernel (LeCun normal, as
        ``nnx.Conv``) and the start vector; the bias starts at zero.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: tuple[int, int] = (3, 3),
        *,
        squarings: int = 8,
        dtype: str | jnp.dtype = "float32",
        rngs: nnx.Rngs,
    ):
        self.dtype = _compute_dtype(dtype)
        if squarings < 0:
            raise ValueError(f"squarings must be >= 0, got {squarings}")
        shape = (*kernel_size, c_in, c_out)
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((c_out,)))
        self.u0 = PowerVector(jax.random.normal(rngs.params(), (c_out,)))
        self.squarings = squarings
        #: False in a frozen copy (:func:`freeze_spectral_norm`), whose kernel
        #: already holds the normalised value.
        self.normalise = True

    def sigma(self) -> jax.Array:
        """The estimate of the spectral norm of the reshaped kernel matrix."""
        w = self.kernel[...]
        return spectral_norm_estimate(w.reshape(-1, w.shape[-1]), self.u0[...], self.squarings)

    def normalised_kernel(self) -> jax.Array:
        """``K / max(1, sigma)``, differentiable in ``K``."""
        if not self.normalise:
            return self.kernel[...]
        return self.kernel[...] / jnp.maximum(1.0, self.sigma())

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, c_in)`` or ``(H, W, c_in)`` to the same layout with ``c_out`` channels."""
        batched = x if x.ndim == 4 else x[None]
        batched, kernel, bias = promote_dtype((batched, self.normalised_kernel(), self.bias[...]))
        out_dtype = None
        if self.dtype != jnp.float32:  # low-precision inputs, float32 (or wider) accumulation
            out_dtype = batched.dtype
            batched, kernel = batched.astype(self.dtype), kernel.astype(self.dtype)
        y = conv_general_dilated(
            batched,
            kernel,
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=out_dtype,
        )
        y = y + bias
        return y if x.ndim == 4 else y[0]


def freeze_spectral_norm(module: M) -> M:
    """A copy of ``module`` in which every :class:`SpectralConv` holds its
    normalised kernel ``K / max(1, sigma(K))`` and skips the normalisation.

    The copy computes the same function as ``module``; its kernels are
    (differentiable) functions of ``module``'s, so gradients with respect to
    the copy's state flow back to ``module``'s parameters through the
    normalisation. Use it to take the power iterations out of a loop that
    applies the module many times (the fixed-point solve). ``module`` itself
    is not modified. Modules without spectral normalisation come back as a
    plain copy.
    """
    frozen = nnx.clone(module)  # new Variable objects (nnx.merge alone would share them)
    for _, node in nnx.iter_graph(frozen):
        if isinstance(node, SpectralConv) and node.normalise:
            node.kernel[...] = node.normalised_kernel()
            node.normalise = False
    return frozen


#: What :class:`DnCNN`'s convolutions see beyond the image (its ``padding``).
PADDINGS = ("zero", "reflect")


class DnCNN(nnx.Module):
    """The DnCNN regulariser: ``depth`` 3x3 convolutions with ReLU between them.

    Conv(channels -> features) + ReLU, ``depth - 2`` x [Conv(features ->
    features) + ReLU], Conv(features -> channels); no batch norm (see the
    module docstring). Paper: ``depth=17, features=64``.

    The last convolution's kernel and bias start at zero, so ``R = 0`` at
    initialisation and DE-GRAD starts as plain gradient descent on the data
    fit, ``T(x) = x - eta A^T (A x - d)``, a stable start for training
    (the same idea as zero-initialised residual branches). The other layers
    receive gradient from the first update of the last one on.

    Args:
      channels: image channels (output, and input unless ``in_channels`` is given).
      depth: number of convolutions (>= 2).
      features: channels of the hidden layers.
      spectral_norm: use :class:`SpectralConv` layers.
      dtype: compute dtype of the convolutions: ``"float32"`` (default) or
        ``"bfloat16"`` (mixed precision: inputs and kernels of every
        convolution but the first cast to bfloat16, float32 accumulation and
        output; see the module docstring).
        ``"float16"`` is accepted too. Parameters stay float32.
      in_channels: input channels when they differ from ``channels`` (e.g.
        ``2 * channels`` for a regulariser that also reads the measurement,
        :class:`~jfbjax.models.DEGRAD`'s ``inject``); None: ``channels``.
      padding: what each convolution sees beyond the image: ``"zero"`` (the
        default, "SAME" zero padding) or ``"reflect"`` (the image mirrored
        about its edge pixel, ``jnp.pad(mode="reflect")``, so that no layer
        sees an artificial dark frame). Reflect is computed as a 1-pixel
        reflect pad, the zero-padded convolution and a crop of the 1-pixel
        rim, which keeps :func:`~jfbjax.models.conv.conv_same`'s fast
        backward; the rim costs ``((H + 2)(W + 2) / (H W))`` more work.
      rngs: initialisation keys.

    Input: ``(N, H, W, in_channels)`` or ``(H, W, in_channels)`` images; output:
    the same with ``channels`` channels.
    """

    def __init__(
        self,
        channels: int = 3,
        depth: int = 17,
        features: int = 64,
        *,
        spectral_norm: bool = False,
        dtype: str | jnp.dtype = "float32",
        in_channels: int | None = None,
        padding: str = "zero",
        rngs: nnx.Rngs,
    ):
        dtype = _compute_dtype(dtype)
        if padding not in PADDINGS:
            raise ValueError(f"DnCNN padding must be one of {PADDINGS}, got {padding!r}")
        in_channels = channels if in_channels is None else in_channels
        for name, value, low in (
            ("channels", channels, 1), ("in_channels", in_channels, 1), ("depth", depth, 2)
        ):  # fmt: skip
            if not isinstance(value, int) or value < low:
                raise ValueError(f"DnCNN {name} must be an integer >= {low}, got {value!r}")
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"DnCNN features must be an integer >= 1, got {features!r}")
        sizes = [in_channels] + [features] * (depth - 1) + [channels]

        def conv(c_in: int, c_out: int, dtype: jnp.dtype) -> nnx.Module:
            if spectral_norm:
                return SpectralConv(c_in, c_out, dtype=dtype, rngs=rngs)
            low = dtype != jnp.float32
            return nnx.Conv(
                c_in,
                c_out,
                (3, 3),
                padding="SAME",
                dtype=dtype if low else None,
                preferred_element_type=jnp.float32 if low else None,
                conv_general_dilated=conv_general_dilated,
                rngs=rngs,
            )

        # The first convolution reads the iterate itself: it stays float32, because
        # rounding x puts a floor under the solver's residual (module docstring).
        dtypes = [jnp.dtype(jnp.float32)] + [dtype] * (depth - 1)
        self.layers = nnx.List(
            [conv(a, b, t) for (a, b), t in zip(itertools.pairwise(sizes), dtypes, strict=True)]
        )
        last = self.layers[-1]
        last.kernel[...] = jnp.zeros_like(last.kernel[...])
        last.bias[...] = jnp.zeros_like(last.bias[...])
        self.channels = channels
        self.in_channels = in_channels
        self.spectral_norm = spectral_norm
        self.dtype = dtype
        self.padding = padding

    def scale_output(self, factor: float) -> None:
        """Multiplies the network's output by ``factor`` (0 < factor <= 1), in place:
        the last convolution's bias times ``factor``, its kernel replaced by
        ``factor`` times the kernel it uses (normalised first with
        ``spectral_norm``, so that the scaled one, of norm at most ``factor <= 1``,
        is used as it is). E.g. to start DE-GRAD from a pretrained ``R`` that its
        preconditioned step would magnify."""
        if not 0 < factor <= 1:
            raise ValueError(f"the output scale must be in (0, 1], got {factor!r}")
        last = self.layers[-1]
        kernel = last.normalised_kernel() if self.spectral_norm else last.kernel[...]
        last.kernel[...] = factor * kernel
        last.bias[...] = factor * last.bias[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.in_channels
        if x.ndim not in (3, 4) or x.shape[-1] != c:
            raise ValueError(
                f"DnCNN expects (N, H, W, {c}) or (H, W, {c}) images, got shape {x.shape}"
            )
        conv = self._reflect_conv if self.padding == "reflect" else (lambda layer, h: layer(h))
        h = x
        for layer in self.layers[:-1]:
            h = jax.nn.relu(conv(layer, h))
        return conv(self.layers[-1], h)

    @staticmethod
    def _reflect_conv(layer, h: jax.Array) -> jax.Array:
        """``layer`` (a 3x3 "SAME" zero-padded convolution) on ``h`` reflect-padded by
        one pixel, cropped back: the 3x3 convolution with reflect padding."""
        pad = [(0, 0)] * (h.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
        return layer(jnp.pad(h, pad, mode="reflect"))[..., 1:-1, 1:-1, :]
