r"""Geometric self-ensemble: average a deblurrer over the 8 symmetries of the square.

The dihedral group ``D4`` of the pixel grid has 8 elements ``g``: the rotations
by 0, 90, 180 and 270 degrees, each with or without a transpose. When the blur
``A`` commutes with every ``g`` (``A g = g A``), the degraded image of a
transformed scene is the transformed degraded image, ``A g x + n ~ g (A x + n)``
for white noise, so ``g^{-1} f(g d)`` is as good an estimate of ``x`` as
``f(d)`` for any deblurrer ``f`` trained with the same augmentations. A learned
``f`` is only approximately equivariant; averaging the 8 estimates,

.. math:: \hat x(d) = \frac{1}{8} \sum_{g \in D_4} g^{-1} f(g\, d),

cancels the part of its error that is not (the "geometric self-ensemble" of
restoration networks, e.g. Lim et al. 2017, EDSR). It is an inference-time
estimator that costs 8 solves; the average of 8 fixed points is not itself a
fixed point of ``T``, so contraction and iteration counts are those of the
8 solves, not of the average.

``A`` commutes with ``D4`` when its kernel does and the boundary treats the
four sides alike: :func:`check_dihedral_symmetric` accepts the zero and
circular boundaries with a kernel of odd side that is symmetric under
transposes and flips (every isotropic Gaussian). An even side puts the
kernel's centre half a pixel off the grid, so a flip shifts the blur by one
pixel and the ensemble would average misaligned estimates: it is refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jfbjax
from jfbjax.imaging.blur import Blur

__all__ = [
    "DIHEDRAL",
    "RECTANGLE",
    "SUBGROUPS",
    "SelfEnsemble",
    "check_dihedral_symmetric",
    "dihedral",
    "dihedral_inverse",
    "symmetrize",
]

#: Number of elements of the dihedral group of the square (4 rotations x optional transpose).
DIHEDRAL = 8


def _check_index(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < DIHEDRAL:
        raise ValueError(f"the dihedral index must be an integer in [0, {DIHEDRAL}), got {k!r}")
    return int(k)


def dihedral(x: jax.Array, k: int) -> jax.Array:
    """The ``k``-th symmetry of the square applied to (..., H, W, C) images:
    a transpose of H and W when ``k >= 4``, then ``k % 4`` quarter turns."""
    k = _check_index(k)
    if k >= 4:
        x = jnp.swapaxes(x, -3, -2)
    return jnp.rot90(x, k % 4, axes=(-3, -2))


def dihedral_inverse(x: jax.Array, k: int) -> jax.Array:
    """The inverse of :func:`dihedral`: ``k % 4`` quarter turns back, then the
    transpose when ``k >= 4``, so that ``dihedral_inverse(dihedral(x, k), k) == x``."""
    k = _check_index(k)
    x = jnp.rot90(x, -(k % 4), axes=(-3, -2))
    if k >= 4:
        x = jnp.swapaxes(x, -3, -2)
    return x


#: Subgroups of the symmetries of the square by size, as :func:`dihedral` indices:
#: the identity; with the half turn; the four rotations; all eight.
SUBGROUPS: dict[int, tuple[int, ...]] = {1: (0,), 2: (0, 2), 4: (0, 1, 2, 3), 8: tuple(range(8))}

#: The symmetries that keep a rectangle's shape (:func:`dihedral` indices): the
#: identity, the half turn and the two mirror flips (a subgroup of order 4).
RECTANGLE = (0, 2, 5, 7)


def symmetrize(fn, x: jax.Array, size: int, *others: jax.Array) -> jax.Array:
    r"""``fn`` averaged over a subgroup ``H`` of the square's symmetries (:data:`SUBGROUPS`):

    .. math:: f_H(x) = \frac{1}{|H|} \sum_{g \in H} g^{-1} f(g\, x),

    which is exactly ``H``-equivariant, ``f_H(h x) = h f_H(x)`` for ``h`` in ``H``
    (substitute ``g' = g h`` in the sum), and equals ``fn`` when ``fn`` already
    is. ``size`` 1 returns ``fn(x, *others)``; 2 (the half turn) takes any
    (..., H, W, C) image; 4 and 8 (quarter turns) need ``H == W``. ``others``:
    more images of ``x``'s height and width that ``fn`` reads (``fn(x, *others)``),
    moved by each ``g`` together with ``x`` (a measurement, a direction), so the
    average is equivariant in all of them at once. Cost: ``size`` calls of ``fn``.
    """
    if size not in SUBGROUPS:
        raise ValueError(f"the subgroup size must be one of {tuple(SUBGROUPS)}, got {size!r}")
    for other in others:
        if other.shape[-3:-1] != x.shape[-3:-1]:
            raise ValueError(
                f"every image symmetrized with x must be {x.shape[-3]} x {x.shape[-2]}, got "
                f"{other.shape[-3]} x {other.shape[-2]}"
            )
    if size == 1:
        return fn(x, *others)
    if size > 2 and x.shape[-3] != x.shape[-2]:
        raise ValueError(
            f"averaging over quarter turns needs square images, got {x.shape[-3]} x {x.shape[-2]}"
        )
    return _orbit_mean(fn, SUBGROUPS[size], x, *others)


def _orbit_mean(fn, group, *args: jax.Array) -> jax.Array:
    """``mean_{k in group} dihedral_inverse(fn(*(dihedral(a, k) for a in args)), k)``."""
    outs = [dihedral_inverse(fn(*(dihedral(a, k) for a in args)), k) for k in group]
    return sum(outs[1:], outs[0]) / len(outs)


def check_dihedral_symmetric(blur: Blur) -> None:
    """Raises ``ValueError`` unless ``blur`` commutes with the 8 symmetries of the square.

    Requires an odd kernel side and a kernel equal to its transpose and its
    flips (within 1e-12); both boundaries ("zero", "circular") treat the four
    sides alike.
    """
    if blur.kernel_size % 2 == 0:
        raise ValueError(
            f"the self-ensemble needs an odd kernel side (got {blur.kernel_size}): an even "
            "kernel is centred half a pixel off the grid, so a flip of the image shifts the blur"
        )
    h = blur.kernel
    if not all(np.allclose(h, v, rtol=0, atol=1e-12) for v in (h.T, h[::-1], h[:, ::-1])):
        raise ValueError("the self-ensemble needs a kernel symmetric under transposes and flips")


class SelfEnsemble(nnx.Module):
    """A deblurring model averaged over the 8 symmetries of the square (module docstring).

    Args:
      model: a model with ``model(d) -> (x_hat, info)`` on (N, H, W, C) batches
        and a ``blur`` attribute (:class:`~jfbjax.models.DEGRAD`,
        :class:`~jfbjax.models.DEProx`, :class:`~jfbjax.models.FeedForward`).
        Its variables are shared, not copied.

    ``SelfEnsemble(model)(d)`` returns ``(x_hat, info)`` like ``model``: ``x_hat``
    the mean of the 8 back-transformed estimates, ``info`` a
    :class:`jfbjax.SolverInfo` per image with ``iterations`` the total over the 8
    solves (the cost of the estimate), ``residual`` the largest and ``status`` the
    worst of the 8 (``CONVERGED`` only when every solve converged). Images that
    are not square use the 4 symmetries that keep their shape (:data:`RECTANGLE`:
    the identity, the half turn, the two flips), 4 solves an image.

    Raises:
      ValueError: the blur does not commute with the symmetries
        (:func:`check_dihedral_symmetric`), or ``d`` is not a batch of images.
    """

    def __init__(self, model: nnx.Module):
        check_dihedral_symmetric(model.blur)
        self.model = model
        self.blur = model.blur

    def __call__(self, d: jax.Array) -> tuple[jax.Array, jfbjax.SolverInfo]:
        if jnp.ndim(d) != 4:
            raise ValueError(
                f"the self-ensemble needs a batch of images (N, H, W, C), got {jnp.shape(d)}"
            )
        group = range(DIHEDRAL) if d.shape[1] == d.shape[2] else RECTANGLE
        infos = []

        def solve(e):
            x_k, info_k = self.model(e)
            infos.append(info_k)
            return x_k

        x_hat = _orbit_mean(solve, group, d)
        info = jfbjax.SolverInfo(
            iterations=sum(i.iterations for i in infos),
            residual=jnp.max(jnp.stack([i.residual for i in infos]), axis=0),
            status=jnp.max(jnp.stack([i.status for i in infos]), axis=0),
        )
        return x_hat.astype(d.dtype), info
