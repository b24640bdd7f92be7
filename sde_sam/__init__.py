"""sde_sam: SDE models of SAM and its variants, batched solvers, weak-error studies and figures.

Documentation: the ``docs/`` folder of the repository (``mkdocs serve``), with getting started, one page
per study, the API reference, and ``docs/math.md``, the mathematics with provenance: docstrings cite its
sections as "MATH §N". ``sde-sam --help`` (or ``python -m sde_sam --help``) lists the command-line studies.
"""
from . import _compat, executors, optim, problems, schedules, solvers, theory, weak
from .discrete import run, step
from .methods import ASAM, DNSAM, SAM, SGD, USAM, EigenSAM, HessianUSAM, Method, TwoStepUSAM, UnifiedSAM
from .problems import FiniteSum, Objective, Problem, Quadratic, saddle
from .results import Trajectory
from .sde import SDEModel, sde_model
from .solvers import simulate
from .spectrum import alignment, top_eigenpair
from .weak import MonteCarloFloorError, OrderFit, WeakErrorStudy, weak_error

__version__ = "0.1.0"

_compat.install()  # the old module path sde_sam.weak_error, for one release

__all__ = [
    "problems", "theory", "executors", "optim", "schedules", "solvers", "weak",
    "Problem", "Objective", "Quadratic", "FiniteSum", "saddle",
    "Method", "SGD", "USAM", "SAM", "DNSAM", "UnifiedSAM", "EigenSAM", "TwoStepUSAM", "HessianUSAM", "ASAM",
    "run", "step", "Trajectory", "sde_model", "SDEModel", "simulate", "top_eigenpair", "alignment",
    "weak_error", "WeakErrorStudy", "OrderFit", "MonteCarloFloorError",
]
