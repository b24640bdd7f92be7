r"""Two-step USAM and Hessian USAM (Bolte, Le & Pauwels 2025; MATH §2.1): USAM variants whose perturbation needs
the same draw's gradient elsewhere or its Hessian-vector product, and whose eigenvalue filters exclude negative
curvature. Provenance: **[reconstructed]** (MATH §2.1)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Perturbation, Perturbing, no_guard, require, scale_rows


@dataclass(frozen=True, repr=False)
class TwoStepUSAM(Perturbing):
    r"""Two-step USAM ("USAM2", Bolte, Le & Pauwels 2025): the USAM ascent taken twice, with the same draw.

    .. math:: \varepsilon_\gamma(x) = \rho\,\nabla f_\gamma\big(x + \rho\,\nabla f_\gamma(x)\big)

    Three gradients per step. At a critical point the effective gradient's Jacobian is
    :math:`H(I+\rho H+\rho^2H^2)`; :math:`1+\rho\lambda+\rho^2\lambda^2>0`, so its eigenvalue filter
    (:func:`sde_sam.theory.two_step_usam_filter`) excludes negative curvature, unlike USAM's.
    Provenance: **[reconstructed]** (MATH §2.1) — the paper's text could not be read here; its public reviews
    describe both variants as USAM variants whose filters exclude negative curvature, which this has.

    Example:
        >>> TwoStepUSAM(lr=0.05, rho=0.1).needs_oracle
        True
    """

    name: ClassVar[str] = "TwoStepUSAM"
    base_oracles: ClassVar[frozenset] = frozenset({"grad_at", "x"})

    def jacobian_factor(self) -> list[float] | None:
        if self.micro_batch is not None:
            return None
        rho = self._radius()
        return self._with_decay([rho**2, rho, 1.0, 0.0])

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        rho = self._radius()
        y = require(self, "x", x) + scale_rows(g, rho)
        return Perturbation(scale_rows(require(self, "grad_at", grad_at)(y), rho), no_guard(g))


@dataclass(frozen=True, repr=False)
class HessianUSAM(Perturbing):
    r"""Hessian USAM ("HUSAM", Bolte, Le & Pauwels 2025): the perturbation is one Hessian-vector product.

    .. math:: \varepsilon_\gamma(x) = \rho\,\nabla^2 f_\gamma(x)\,\nabla f_\gamma(x)

    Two gradients and one HVP per step. At a critical point the effective gradient's Jacobian is
    :math:`H(I+\rho H^2)`, whose factor :math:`1+\rho\lambda^2>0` makes its eigenvalue filter
    (:func:`sde_sam.theory.hessian_usam_filter`: :math:`0\le\lambda(1+\rho\lambda^2)\le2/\eta`) exclude
    negative curvature. Provenance: **[reconstructed]** (MATH §2.1); a public review of the paper compares its
    filter with the USAM edge :math:`\lambda+\rho\lambda^2` and notes "a factor of :math:`\lambda` in the term
    linear in :math:`\rho`", consistent with :math:`\lambda+\rho\lambda^3` here.

    Example:
        >>> HessianUSAM(lr=0.05, rho=0.1).rho
        0.1
    """

    name: ClassVar[str] = "HessianUSAM"
    base_oracles: ClassVar[frozenset] = frozenset({"hvp"})

    def jacobian_factor(self) -> list[float] | None:
        if self.micro_batch is not None:
            return None
        return self._with_decay([self._radius(), 0.0, 1.0, 0.0])

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        rho = self._radius()
        return Perturbation(scale_rows(require(self, "hvp", hvp)(g), rho), no_guard(g))
