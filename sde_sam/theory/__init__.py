r"""Closed forms of MATH §7 (and the quadratic moments of MATH §3.4): stability edges, the SAM 2-cycle,
saddle criteria, Eigen-SAM geometry, eigenvalue filters (including those of momentum, Two-step and Hessian USAM).

Modules by role: :mod:`~sde_sam.theory.edges` (stability edges, SAM 2-cycle), :mod:`~sde_sam.theory.saddles`,
:mod:`~sde_sam.theory.eigen_sam`, :mod:`~sde_sam.theory.filters`, :mod:`~sde_sam.theory.moments`; every name is
also here, ``sde_sam.theory.<name>``.

Every function is vectorised and backend-preserving: arguments may be python floats, numpy arrays (or
lists) or torch tensors, broadcast together. If any argument is a tensor the computation uses torch ops
(dtype and device of the first tensor) and returns a tensor; otherwise it uses numpy in float64 and returns
a python ``float``/``bool`` when every argument was a scalar, else a numpy array. Arguments are validated
once, here at the boundary, with a ``ValueError`` naming the argument, its (first offending) value and what
is allowed.

Notation: ``lr`` is :math:`\eta`, ``rho`` is :math:`\rho`, ``lam`` an eigenvalue :math:`\lambda` of the
Hessian, ``grad_norm`` the gradient norm :math:`\|g\|`.

Example:
    >>> from sde_sam import theory
    >>> theory.usam_edge(0.01, 0.1)
    40.0
"""
from __future__ import annotations

from .edges import (gd_edge, sam_centre_drift_step, sam_cycle_amplitude, sam_cycle_contraction, sam_cycle_grad_norm,
                    sam_edge, usam_diverges, usam_edge, usam_lr_threshold)
from .eigen_sam import eigen_sam_alignment, eigen_sam_perturbation_norm
from .filters import (filter_intervals, gd_filter, heavy_ball_filter, hessian_usam_filter, jacobian_eigenvalue,
                      method_filter, momentum_edge, nesterov_filter, two_step_usam_filter, usam_heavy_ball_filter)
from .moments import (usam_discrete_expected_loss, usam_discrete_mean, usam_discrete_stationary_loss,
                      usam_sde_expected_loss, usam_sde_mean, usam_sde_stationary_loss)
from .saddles import dnsam_diffusion_factor, sam_flow_contracts, usam_discrete_converges, usam_flow_contracts

__all__ = [
    "gd_edge", "usam_edge", "usam_lr_threshold", "usam_diverges", "sam_edge",
    "sam_cycle_amplitude", "sam_cycle_grad_norm", "sam_cycle_contraction", "sam_centre_drift_step",
    "usam_flow_contracts", "usam_discrete_converges", "sam_flow_contracts", "dnsam_diffusion_factor",
    "eigen_sam_alignment", "eigen_sam_perturbation_norm",
    "gd_filter", "heavy_ball_filter", "usam_heavy_ball_filter", "nesterov_filter",
    "two_step_usam_filter", "hessian_usam_filter", "momentum_edge", "jacobian_eigenvalue", "method_filter",
    "filter_intervals",
    "usam_sde_mean", "usam_discrete_mean", "usam_sde_expected_loss", "usam_discrete_expected_loss",
    "usam_sde_stationary_loss", "usam_discrete_stationary_loss",
]
