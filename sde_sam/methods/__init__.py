r"""Methods, each defined once by its perturbation and what it declares about itself (MATH §2, §2.1, §2.2, §2.3).

- :mod:`~sde_sam.methods.base`: the template — options of every method (momentum, Nesterov, weight decay,
  m-SAM's ``micro_batch``), the base step, the declarations (oracles, affine noise, Jacobian factor).
- :mod:`~sde_sam.methods.table`: SGD, USAM, SAM (with multi-step ascent), DNSAM, Unified SAM, Eigen-SAM, ASAM.
- :mod:`~sde_sam.methods.bolte`: Two-step USAM and Hessian USAM (Bolte, Le & Pauwels 2025).
- :mod:`~sde_sam.methods.oracles`: the one wiring of oracles and micro-batches into a step.

Adding a method is one class here, its export, and one row of the tests' method table.
"""
from __future__ import annotations

from .base import ORACLES, AffineNoise, Method, Perturbation, Perturbing, check_method, guarded_norm
from .bolte import HessianUSAM, TwoStepUSAM
from .oracles import effective_gradient, perturb, split
from .table import ASAM, DNSAM, SAM, SGD, USAM, EigenSAM, UnifiedSAM, power_iteration

METHODS: dict[str, type[Method]] = {m.name.lower(): m for m in (SGD, USAM, SAM, DNSAM, UnifiedSAM, EigenSAM,
                                                               TwoStepUSAM, HessianUSAM, ASAM)}
"""Methods by lower-case name (for the CLI and configs)."""

__all__ = ["Method", "Perturbing", "Perturbation", "AffineNoise", "ORACLES", "guarded_norm", "power_iteration",
           "SGD", "USAM", "SAM", "DNSAM", "UnifiedSAM", "EigenSAM", "ASAM", "TwoStepUSAM", "HessianUSAM",
           "METHODS", "check_method", "effective_gradient", "perturb", "split"]
