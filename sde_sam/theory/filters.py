r"""Eigenvalue filters at convergence (Bolte, Le & Pauwels 2025; MATH §7)."""
from __future__ import annotations

import numpy as np
import torch

from ._backend import ArrayLike, _backend, _check, _finite, _lr, _out, _rho


# -- eigenvalue filters at convergence ---------------------------------------------------------------
def _beta(xp, beta):
    _check(xp, (beta >= 0) & (beta < 1), "beta", beta, "in [0, 1)")


def gd_filter(lr: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Whether GD can converge to a point with Hessian eigenvalue :math:`\lambda`: :math:`0\le\lambda\le2/\eta`.

    Source: Bolte, Le & Pauwels (2025).
    """
    xp, (lr, lam), kind = _backend(lr, lam)
    _lr(xp, lr)
    _finite(xp, "lam", lam)
    return _out((lam >= 0) & (lam <= 2 / lr), kind)


def heavy_ball_filter(lr: ArrayLike, beta: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Heavy ball with momentum :math:`\beta`: :math:`0\le\lambda\le2(1+\beta)/\eta`.

    Source: Bolte, Le & Pauwels (2025).
    """
    xp, (lr, beta, lam), kind = _backend(lr, beta, lam)
    _lr(xp, lr)
    _beta(xp, beta)
    _finite(xp, "lam", lam)
    return _out((lam >= 0) & (lam <= 2 * (1 + beta) / lr), kind)


def usam_heavy_ball_filter(lr: ArrayLike, rho: ArrayLike, beta: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""USAM with heavy ball: :math:`0\le\lambda(1+\rho\lambda)\le2(1+\beta)/\eta`.

    Note the set also contains :math:`\lambda\le-1/\rho` (USAM can converge to saddles).
    Source: Bolte, Le & Pauwels (2025).
    """
    xp, (lr, rho, beta, lam), kind = _backend(lr, rho, beta, lam)
    _lr(xp, lr)
    _rho(xp, rho)
    _beta(xp, beta)
    _finite(xp, "lam", lam)
    a = lam * (1 + rho * lam)
    return _out((a >= 0) & (a <= 2 * (1 + beta) / lr), kind)


def nesterov_filter(lr: ArrayLike, beta: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Nesterov momentum (``torch.optim.SGD(nesterov=True)``): :math:`0\le\lambda\le\frac{2(1+\beta)}{(1+2\beta)\eta}`.

    Along an eigendirection the linearised iteration on :math:`(x_k, x_{k-1})` has characteristic polynomial
    :math:`z^2-(1+\beta)c\,z+\beta c`, :math:`c=1-\eta\lambda`; the Jury (Schur–Cohn) conditions
    :math:`|\beta c|\le1` and :math:`|(1+\beta)c|\le1+\beta c` give the interval. Source: **[derived]** (MATH §7);
    stated for Nesterov by Bolte, Le & Pauwels (2025).
    """
    xp, (lr, beta, lam), kind = _backend(lr, beta, lam)
    _lr(xp, lr)
    _beta(xp, beta)
    _finite(xp, "lam", lam)
    return _out((lam >= 0) & (lam <= 2 * (1 + beta) / ((1 + 2 * beta) * lr)), kind)


def momentum_edge(lr: ArrayLike, beta: ArrayLike = 0.0, nesterov: bool = False) -> ArrayLike:
    r"""Upper end :math:`B` of the filter :math:`0\le a\le B` on the eigenvalue :math:`a` of a method's Jacobian factor.

    :math:`B=2/\eta` without momentum, :math:`2(1+\beta)/\eta` with heavy ball, :math:`\frac{2(1+\beta)}{(1+2\beta)\eta}`
    with Nesterov (MATH §7). Any method with momentum: replace :math:`\lambda` by :math:`a(\lambda)`, see
    :func:`jacobian_eigenvalue`.
    """
    xp, (lr, beta), kind = _backend(lr, beta)
    _lr(xp, lr)
    _beta(xp, beta)
    _check(xp, isinstance(nesterov, bool), "nesterov", nesterov, "True or False")
    return _out(2 * (1 + beta) / ((1 + 2 * beta) * lr) if nesterov else 2 * (1 + beta) / lr, kind)


def _factor_filter(lr, rho, beta, lam, nesterov, factor):
    xp, (lr, rho, beta, lam), kind = _backend(lr, rho, beta, lam)
    _lr(xp, lr)
    _rho(xp, rho)
    _beta(xp, beta)
    _finite(xp, "lam", lam)
    a = lam * factor(rho, lam)
    edge = 2 * (1 + beta) / ((1 + 2 * beta) * lr) if nesterov else 2 * (1 + beta) / lr
    return _out((a >= 0) & (a <= edge), kind)


def two_step_usam_filter(lr: ArrayLike, rho: ArrayLike, lam: ArrayLike, *, beta: ArrayLike = 0.0,
                         nesterov: bool = False) -> ArrayLike:
    r"""Two-step USAM: :math:`0\le\lambda(1+\rho\lambda+\rho^2\lambda^2)\le B` (:func:`momentum_edge`, :math:`2/\eta` alone).

    At a critical point :math:`\varepsilon=\rho\nabla f(x+\rho\nabla f(x))` has Jacobian :math:`\rho H(I+\rho H)`, so
    the effective gradient's is :math:`H(I+\rho H+\rho^2H^2)`. The factor :math:`1+\rho\lambda+\rho^2\lambda^2` is
    positive (negative discriminant): every :math:`\lambda<0` is filtered out. Source: **[derived]** from the
    MATH §2.1 reconstruction of Bolte, Le & Pauwels (2025).
    """
    return _factor_filter(lr, rho, beta, lam, nesterov, lambda r, l: 1 + r * l + (r * l) ** 2)


def hessian_usam_filter(lr: ArrayLike, rho: ArrayLike, lam: ArrayLike, *, beta: ArrayLike = 0.0,
                        nesterov: bool = False) -> ArrayLike:
    r"""Hessian USAM: :math:`0\le\lambda(1+\rho\lambda^2)\le B` (:func:`momentum_edge`, :math:`2/\eta` alone).

    At a critical point :math:`\varepsilon=\rho\nabla^2f\,\nabla f` has Jacobian :math:`\rho H^2` (the
    :math:`\nabla^3f[\nabla f]` term vanishes), so the effective gradient's is :math:`H(I+\rho H^2)`; the factor
    :math:`1+\rho\lambda^2>0` filters out every :math:`\lambda<0`. Source: **[derived]** from the MATH §2.1
    reconstruction of Bolte, Le & Pauwels (2025).
    """
    return _factor_filter(lr, rho, beta, lam, nesterov, lambda r, l: 1 + r * l**2)


# -- a method's filter ---------------------------------------------------------------------------------
def _coefficients(method) -> list[float]:
    """Coefficients (highest degree first) of the polynomial :math:`a(\\lambda)` of ``method``: its declaration
    (:meth:`~sde_sam.methods.Method.jacobian_factor`)."""
    coef = method.jacobian_factor()
    if coef is not None:
        return coef
    method.check_ready()
    if method.rho == 0.0:  # every method is SGD at rho = 0 (m-SAM included: no perturbation to split)
        return [1.0, 0.0] if method.weight_decay == 0.0 else [1.0, method.weight_decay]
    why = (f"{method.name}'s normalised perturbation is not differentiable at a critical point" if method.normalises
           else f"the linearisation of {method.name} with these options is not a function of the Hessian's eigenvalue")
    raise ValueError(f"`method` must be SGD, USAM (or UnifiedSAM with lam=0), TwoStepUSAM or HessianUSAM: {why}, so "
                     f"it has no eigenvalue filter of this form, got method={method!r}")


def jacobian_eigenvalue(method, lam: ArrayLike) -> ArrayLike:
    r"""Eigenvalue :math:`a(\lambda)` of the Jacobian of ``method``'s effective gradient at a critical point.

    SGD :math:`\lambda`; USAM :math:`\lambda(1+\rho\lambda)`; Two-step USAM :math:`\lambda(1+\rho\lambda+\rho^2\lambda^2)`;
    Hessian USAM :math:`\lambda(1+\rho\lambda^2)` (MATH §2.1, §7), as each method declares it
    (:meth:`~sde_sam.methods.Method.jacobian_factor`). Momentum does not change it; weight decay :math:`\lambda_{\rm wd}`
    adds itself, :math:`a(\lambda)+\lambda_{\rm wd}` (exact on quadratics) [derived].

    Raises:
        ValueError: for SAM, DNSAM, Unified SAM with ``lam > 0`` and Eigen-SAM (normalised, not differentiable
            at a critical point) unless ``rho == 0``.
    """
    coef = _coefficients(method)
    xp, (lam,), kind = _backend(lam)
    _finite(xp, "lam", lam)
    a = 0 * lam
    for c in coef:  # Horner
        a = a * lam + c
    return _out(a, kind)


def method_filter(method, lam: ArrayLike, *, tol: float = 0.0) -> ArrayLike:
    r"""Whether ``method`` can converge to a critical point with Hessian eigenvalue :math:`\lambda`.

    .. math:: -\mathrm{tol}\cdot B\ \le\ a(\lambda)\ \le\ (1+\mathrm{tol})\,B

    with :math:`a` from :func:`jacobian_eigenvalue` and :math:`B` from :func:`momentum_edge` for the method's
    ``lr``, ``momentum`` and ``nesterov``. ``tol=0`` is the exact filter (spectral radius of the step's
    Jacobian at most 1, Bolte, Le & Pauwels 2025); a small ``tol`` allows for eigenvalues measured at a
    finite-precision limit. Every eigenvalue of the Hessian at a limit must pass.

    Example:
        >>> from sde_sam import USAM, theory
        >>> theory.method_filter(USAM(0.1, 1.5), -1.0)   # a = (-1)(1 - 1.5) = 0.5: a saddle can attract USAM
        True
    """
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 <= tol < 1):
        raise ValueError(f"`tol` must be a number in [0, 1), got tol={tol!r}")
    a = jacobian_eigenvalue(method, lam)
    edge = momentum_edge(method.lr, method.momentum, method.nesterov)
    if isinstance(a, torch.Tensor):
        return (a >= -tol * edge) & (a <= (1 + tol) * edge)
    out = (np.asarray(a) >= -tol * edge) & (np.asarray(a) <= (1 + tol) * edge)
    return bool(out) if np.ndim(out) == 0 else out


def filter_intervals(method) -> list[tuple[float, float]]:
    r"""The filter of ``method`` as a union of closed :math:`\lambda`-intervals, sorted (ends may be :math:`\pm\infty`).

    :math:`\{\lambda: 0\le a(\lambda)\le B\}` from the real roots of :math:`a(\lambda)` and :math:`a(\lambda)-B`.
    GD: ``[(0, 2/lr)]``; USAM: ``[(λ₋, -1/ρ), (0, λ*)]`` (the first interval is where USAM can sit at a saddle);
    Two-step and Hessian USAM: one interval ``(0, λ*)``.
    """
    coef = np.asarray(_coefficients(method), dtype=np.float64)
    edge = float(momentum_edge(method.lr, method.momentum, method.nesterov))
    shifted = coef.copy()
    shifted[-1] -= edge
    pts = sorted({float(r.real) for p in (coef, shifted) for r in np.roots(np.trim_zeros(p, "f"))
                  if abs(r.imag) <= 1e-12 * max(1.0, abs(r))})
    a = lambda l: float(np.polyval(coef, l))
    inside = lambda l: -1e-12 * edge <= a(l) <= edge * (1 + 1e-12)
    bounds = [-np.inf, *pts, np.inf]
    out: list[tuple[float, float]] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        mid = (lo + hi) / 2 if np.isfinite(lo) and np.isfinite(hi) else (hi - 1.0 if np.isfinite(hi) else lo + 1.0)
        if inside(mid):
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
    # isolated points (e.g. a double root of a(λ) = 0) that are inside but not in any open piece
    for p in pts:
        if inside(p) and not any(lo <= p <= hi for lo, hi in out):
            out.append((p, p))
    return sorted(out)
