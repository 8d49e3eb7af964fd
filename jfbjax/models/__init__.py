"""Flax NNX models: the DnCNN regulariser (and a monotone convex-ridge one), the
DE-GRAD implicit model and a feed-forward baseline, plus their construction from an
ml_collections config."""

from jfbjax.models.degrad import DEGRAD, FAMILIES, STARTS, DEProx, FeedForward
from jfbjax.models.dncnn import (
    DnCNN,
    PowerVector,
    SpectralConv,
    freeze_spectral_norm,
    spectral_norm_estimate,
)
from jfbjax.models.ensemble import (
    DIHEDRAL,
    RECTANGLE,
    SUBGROUPS,
    SelfEnsemble,
    check_dihedral_symmetric,
    dihedral,
    dihedral_inverse,
    symmetrize,
)
from jfbjax.models.pnp import pnp_pgd
from jfbjax.models.ridge import ConvexRidge

__all__ = [
    "DEGRAD",
    "DIHEDRAL",
    "FAMILIES",
    "RECTANGLE",
    "STARTS",
    "SUBGROUPS",
    "ConvexRidge",
    "DEProx",
    "DnCNN",
    "FeedForward",
    "PowerVector",
    "SelfEnsemble",
    "SpectralConv",
    "backward_from_config",
    "build_model",
    "check_dihedral_symmetric",
    "dihedral",
    "dihedral_inverse",
    "freeze_spectral_norm",
    "pnp_pgd",
    "solver_from_config",
    "spectral_norm_estimate",
    "symmetrize",
]


# The config builders live in jfbjax.builders (which imports this package);
# their old names here resolve lazily to avoid a circular import.
_BUILDERS = ("backward_from_config", "build_model", "solver_from_config")


def __getattr__(name):
    if name in _BUILDERS:
        from jfbjax import builders

        return getattr(builders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
