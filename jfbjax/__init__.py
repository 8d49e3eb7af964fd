"""jfbjax: implicit (deep-equilibrium) layers in JAX with Jacobian-free backpropagation.

The core (this module) depends on jax alone::

    z_star, info = jfbjax.fixed_point(f, z0, *args, solver=jfbjax.Anderson(), backward=jfbjax.JFB())

Deblurring pieces live in sub-packages imported explicitly: ``jfbjax.imaging``,
``jfbjax.models``, ``jfbjax.data``, ``jfbjax.training``.
"""

from jfbjax.backward import (
    IFT,
    JFB,
    PROBE_SIZE,
    AbstractBackward,
    BackwardInfo,
    Neumann,
    Phantom,
    Unrolled,
    as_backward,
    backward_info,
    backward_probe,
)
from jfbjax.diagnostics import (
    contraction_estimate,
    gradient_alignment,
    residual_trace,
    spectral_radius_estimate,
)
from jfbjax.fixed_point import FixedPointError, SolveRoutes, fixed_point
from jfbjax.solvers import (
    CONVERGED,
    FALLBACK,
    MAX_ITER,
    NONFINITE,
    AbstractSolver,
    Anderson,
    Broyden,
    Picard,
    SolverInfo,
    Status,
    as_solver,
    status_name,
)

__version__ = "0.1.0"

__all__ = [
    "CONVERGED",
    "FALLBACK",
    "IFT",
    "JFB",
    "MAX_ITER",
    "NONFINITE",
    "PROBE_SIZE",
    "AbstractBackward",
    "AbstractSolver",
    "Anderson",
    "BackwardInfo",
    "Broyden",
    "FixedPointError",
    "Neumann",
    "Phantom",
    "Picard",
    "SolveRoutes",
    "SolverInfo",
    "Status",
    "Unrolled",
    "as_backward",
    "as_solver",
    "backward_info",
    "backward_probe",
    "contraction_estimate",
    "fixed_point",
    "gradient_alignment",
    "residual_trace",
    "spectral_radius_estimate",
    "status_name",
]
