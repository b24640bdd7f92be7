r"""Saddle criteria of USAM, SAM and DNSAM on :math:`f=\frac12x^\top Hx` (MATH §7)."""
from __future__ import annotations


from ._backend import ArrayLike, _backend, _check, _finite, _lr, _nonneg, _out, _rho


# -- saddles (f = ½ xᵀHx with some λ < 0) ------------------------------------------------------------
def usam_flow_contracts(rho: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Whether the USAM flow :math:`\dot x=-H(I+\rho H)x` contracts eigendirection :math:`\lambda`.

    True iff :math:`\lambda(1+\rho\lambda)>0`: always for :math:`\lambda>0`; for a negative direction iff
    :math:`\rho|\lambda|>1` (USAM is attracted to the saddle); never for :math:`\lambda=0`.
    Source: Compagnoni et al. (2023).
    """
    xp, (rho, lam), kind = _backend(rho, lam)
    _rho(xp, rho)
    _finite(xp, "lam", lam)
    return _out(lam * (1 + rho * lam) > 0, kind)


def usam_discrete_converges(lr: ArrayLike, rho: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Whether discrete full-batch USAM stays bounded along eigendirection :math:`\lambda`:
    :math:`0\le\lambda(1+\rho\lambda)\le2/\eta`.

    The closed interval follows MATH §7 (at either end the iterate is constant or 2-cycles, bounded);
    it is the complement of :func:`usam_diverges` up to rounding at the ends.
    Source: Compagnoni et al. (2023); Bolte, Le & Pauwels (2025).
    """
    xp, (lr, rho, lam), kind = _backend(lr, rho, lam)
    _lr(xp, lr)
    _rho(xp, rho)
    _finite(xp, "lam", lam)
    a = lam * (1 + rho * lam)
    return _out((a >= 0) & (a <= 2 / lr), kind)


def sam_flow_contracts(rho: ArrayLike, lam: ArrayLike, grad_norm: ArrayLike) -> ArrayLike:
    r"""Whether the SAM/DNSAM flow :math:`\dot x=-(Hx+\rho H^2x/\|Hx\|)` contracts direction :math:`\lambda`.

    Along eigendirection :math:`i` the rate is :math:`\lambda_i(1+\rho\lambda_i/\|Hx\|)`: a negative
    direction contracts iff :math:`\|Hx\|<\rho|\lambda_i|`; a positive one always does; :math:`\lambda=0`
    never. ``grad_norm=0`` is the limit :math:`\|Hx\|\to0^+`.
    Source: Compagnoni et al. (2023).
    """
    xp, (rho, lam, grad_norm), kind = _backend(rho, lam, grad_norm)
    _rho(xp, rho)
    _finite(xp, "lam", lam)
    _nonneg(xp, "grad_norm", grad_norm, finite=False)
    return _out((lam > 0) | ((lam < 0) & (grad_norm < rho * xp.abs(lam))), kind)


def dnsam_diffusion_factor(rho: ArrayLike, lam: ArrayLike, grad_norm: ArrayLike) -> ArrayLike:
    r"""Eigenvalue of DNSAM's diffusion factor :math:`I+\rho H/\|\nabla f\|` along direction :math:`\lambda`.

    .. math:: 1+\frac{\rho\lambda}{\|\nabla f\|}\ =\ 1-\frac{\rho|\lambda|}{\|\nabla f\|}\quad(\lambda<0)

    It vanishes on :math:`\|\nabla f\|=\rho|\lambda|` for a negative direction: noise cannot push the
    iterate off a saddle there. Pass the *signed* eigenvalue. Source: Compagnoni et al. (2023).
    """
    xp, (rho, lam, grad_norm), kind = _backend(rho, lam, grad_norm)
    _rho(xp, rho)
    _finite(xp, "lam", lam)
    _check(xp, grad_norm > 0, "grad_norm", grad_norm, "> 0 (DNSAM divides by the full-batch gradient norm)")
    return _out(1 + rho * lam / grad_norm, kind)
