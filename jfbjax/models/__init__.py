"""Flax NNX models: the DnCNN regulariser, DE-GRAD and a feed-forward baseline."""

from jfbjax.models.degrad import (
    DEGRAD,
    FeedForward,
    backward_from_config,
    build_model,
    solver_from_config,
)
from jfbjax.models.dncnn import DnCNN, SpectralConv

__all__ = [
    "DEGRAD",
    "DnCNN",
    "FeedForward",
    "SpectralConv",
    "backward_from_config",
    "build_model",
    "solver_from_config",
]
