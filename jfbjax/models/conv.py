r"""A "SAME" stride-1 convolution whose input gradient is an ordinary convolution.

Reverse-mode autodiff of ``lax.conv_general_dilated`` expresses the input
gradient as a convolution with the kernel reversed and its two feature axes
swapped through the dimension numbers. XLA:CPU runs that form about 25x
slower than a plain convolution when it sits inside a loop (measured with
jax 0.10.2 on a 16x32x32x32 batch and a 3x3x32x32 kernel: six input-gradient
convolutions in a ``fori_loop`` took 2.0 s, the same six with an explicitly
flipped and transposed HWIO kernel 83 ms, plain forward convolutions 62 ms).
Every backward mode of :func:`jfbjax.fixed_point` except JFB applies the
input gradient inside a loop (IFT's adjoint solve, Neumann's series, the
unrolled scan), so this cost multiplied their training steps.

:func:`conv_same` computes the same convolution with a ``jax.custom_vjp``
whose backward pass uses the explicit form,

.. math:: \bar x = \bar y \star \tilde W,\qquad
          \tilde W_{h, w, o, i} = W_{k_h - 1 - h,\, k_w - 1 - w,\, i, o},

(``\star``: the same "SAME" correlation), and a kernel gradient that is
also written as a plain convolution (batch and channel axes swapped), since
XLA's own form of it is just as slow inside loops (it dominated the
unrolled backward pass).
:func:`conv_general_dilated` has the signature of ``lax.conv_general_dilated``
(for ``nnx.Conv(conv_general_dilated=...)``) and uses :func:`conv_same` where
it applies: stride 1, no dilation, one group, NHWC/HWIO, odd kernel sizes
with "SAME" padding; anything else goes to ``lax.conv_general_dilated``.

Forward-mode differentiation (``jax.jvp``) of a ``custom_vjp`` function is
not defined; use reverse mode (``jax.vjp``, ``jax.grad``) or
``jax.linear_transpose`` of a VJP to get Jacobian-vector products (as
:func:`jfbjax.contraction_estimate` does).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["adjoint_kernel", "conv_general_dilated", "conv_same"]

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, preferred_element_type):
    return lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=_DN, preferred_element_type=preferred_element_type
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_same(x: jax.Array, w: jax.Array, preferred_element_type=None) -> jax.Array:
    r"""``y = x \star W``: NHWC input, HWIO kernel with odd sides, stride 1, "SAME" zero padding.

    Args:
      x: (N, H, W, C_in) input.
      w: (k_h, k_w, C_in, C_out) kernel, ``k_h`` and ``k_w`` odd.
      preferred_element_type: accumulation/output dtype (as in
        ``lax.conv_general_dilated``), e.g. float32 for bfloat16 inputs.

    Returns:
      (N, H, W, C_out), equal to ``lax.conv_general_dilated(x, w, (1, 1), "SAME", ...)``.
      Its VJP is exact; its input gradient is computed as a plain convolution
      (see the module docstring for why).
    """
    return _conv(x, w, preferred_element_type)


def _conv_same_fwd(x, w, preferred_element_type):
    return _conv(x, w, preferred_element_type), (x, w)


def adjoint_kernel(w: jax.Array) -> jax.Array:
    r"""The HWIO kernel of the adjoint of :func:`conv_same` in ``x``: ``conv_same(u,
    adjoint_kernel(w))`` is :math:`W^T u` (taps reversed, ``C_in`` and ``C_out`` swapped;
    "SAME" zero padding and odd sides make the adjoint a convolution of the same kind)."""
    return jnp.flip(w, (0, 1)).swapaxes(2, 3)


def _conv_same_bwd(preferred_element_type, residuals, ct):
    x, w = residuals
    x_bar = _conv(ct.astype(w.dtype), adjoint_kernel(w), preferred_element_type).astype(x.dtype)
    return x_bar, _kernel_gradient(x, ct, w.shape, preferred_element_type).astype(w.dtype)


def _kernel_gradient(x, ct, kernel_shape, preferred_element_type):
    r"""``dW[a, b, i, o] = sum_{n, h, w} x_pad[n, h + a, w + b, i] ct[n, h, w, o]`` as a plain
    "VALID" convolution: the padded input with batch and channels swapped,
    ``(C_in, H + k_h - 1, W + k_w - 1, N)``, correlated with the cotangent as an HWIO
    kernel ``(H, W, N, C_out)``, gives ``(C_in, k_h, k_w, C_out)``."""
    kh, kw = kernel_shape[:2]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    x_pad = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    lhs = x_pad.transpose(3, 1, 2, 0)  # (C_in, H', W', N)
    rhs = ct.astype(x.dtype).transpose(1, 2, 0, 3)  # (H, W, N, C_out)
    out = lax.conv_general_dilated(
        lhs,
        rhs,
        (1, 1),
        "VALID",
        dimension_numbers=_DN,
        preferred_element_type=preferred_element_type,
    )  # (C_in, k_h, k_w, C_out)
    return out.transpose(1, 2, 0, 3)


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


def _is_same_padding(padding, kernel_shape) -> bool:
    if isinstance(padding, str):
        return padding.upper() == "SAME"
    half = [((k - 1) // 2, (k - 1) // 2) for k in kernel_shape]
    return [tuple(p) for p in padding] == half


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
    **kwargs,
):
    """``lax.conv_general_dilated`` that routes the common DnCNN case to :func:`conv_same`.

    Same arguments and result as ``lax.conv_general_dilated``. The case
    stride 1, no dilation, one group, ``("NHWC", "HWIO", "NHWC")`` layout,
    odd kernel sides, "SAME" (or the equivalent symmetric) padding and
    default precision uses :func:`conv_same` (fast input gradients inside
    loops); every other case is passed through unchanged (as are extra
    keyword arguments such as ``out_sharding``; a non-None one disables the
    fast path).
    """
    k_shape = rhs.shape[:2]
    fast = (
        lhs.ndim == 4
        and tuple(window_strides) == (1, 1)
        and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
        and (rhs_dilation is None or tuple(rhs_dilation) == (1, 1))
        and feature_group_count == 1
        and batch_group_count == 1
        and precision is None
        and _layout(dimension_numbers) == _DN
        and all(k % 2 == 1 for k in k_shape)
        and _is_same_padding(padding, k_shape)
        and all(v is None for v in kwargs.values())
    )
    if fast:
        return conv_same(lhs, rhs, preferred_element_type)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
        **kwargs,
    )


def _layout(dimension_numbers):
    """The (lhs, rhs, out) layout strings of ``dimension_numbers``, or None."""
    if dimension_numbers is None:
        return None
    if isinstance(dimension_numbers, tuple) and all(isinstance(s, str) for s in dimension_numbers):
        return tuple(dimension_numbers)
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        nhwc = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _DN)
        return _DN if dimension_numbers == nhwc else None
    return None
