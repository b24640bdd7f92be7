r"""Moments of USAM (and SGD) on quadratics with additive noise, discrete and SDE (MATH §3.4)."""
from __future__ import annotations

import numpy as np
import torch

from ._backend import ArrayLike, _backend, _check, _finite, _lr, _nonneg, _out, _quiet, _rho


# -- quadratic moments (MATH §3.4): f = ½xᵀHx, additive noise Σ = σ²I -------------------------------
def _scalars(xp, **values) -> None:
    for name, v in values.items():
        _check(xp, v.ndim == 0, name, v.shape, "a scalar here (the spectrum carries the last axis)")


def _spectrum(xp, H, name: str):
    """``(eigenvalues (d,), eigenvectors (d, d) or None)`` of a symmetric ``(d, d)`` matrix or a diagonal ``(d,)``."""
    _check(xp, H.ndim in (1, 2) and (H.ndim == 1 or H.shape[0] == H.shape[1]), name, tuple(H.shape),
           "a diagonal (d,) or a square matrix (d, d)")
    _finite(xp, name, H)
    if H.ndim == 1:
        return H, None
    scale = max(float(xp.abs(H).max()), 1.0) if H.shape[0] else 1.0
    tol = 1e3 * (torch.finfo(H.dtype).eps if xp is torch else np.finfo(H.dtype).eps) * scale
    asym = float(xp.abs(H - H.T).max()) if H.shape[0] else 0.0
    if not asym <= tol:
        raise ValueError(f"`{name}` must be symmetric, got max|{name} - {name}^T|={asym:g} (tolerance {tol:g})")
    return xp.linalg.eigh(H)


def _state(xp, x0, d: int) -> None:
    _check(xp, x0.ndim >= 1 and x0.shape[-1] == d, "x0", tuple(x0.shape), f"an array (..., d) with d={d}")
    _finite(xp, "x0", x0)


def _time_axis(xp, name: str, t, batch_ndim: int, *, integer: bool = False):
    """Check times (or step counts) and reshape them to ``t.shape + (1,) * (batch_ndim + 1)`` for broadcasting."""
    _nonneg(xp, name, t)
    if integer:
        _check(xp, t == xp.round(t), name, t, "a non-negative integer (a step count)")
    return t.reshape(tuple(t.shape) + (1,) * (batch_ndim + 1))


def _moment_args(xp, lams, x0, lr, rho, sigma2) -> None:
    _lr(xp, lr)
    _rho(xp, rho)
    _nonneg(xp, "sigma2", sigma2)
    _scalars(xp, lr=lr, rho=rho, sigma2=sigma2)
    _check(xp, lams.ndim == 1, "lams", tuple(lams.shape), "a 1-D array of eigenvalues (d,)")
    _finite(xp, "lams", lams)
    if x0 is not None:
        _state(xp, x0, lams.shape[0])


def usam_sde_mean(H: ArrayLike, x0: ArrayLike, t: ArrayLike, rho: ArrayLike) -> ArrayLike:
    r"""Mean of the USAM SDE (an Ornstein–Uhlenbeck process) on :math:`f=\frac12x^\top Hx`.

    .. math:: \mathbb E X_t = e^{-H(I+\rho H)t}x_0

    evaluated through :math:`H=V\mathrm{diag}(\lambda)V^\top` (``eigh``), so :math:`H` may be any symmetric
    matrix. :math:`\rho=0` is the SGD SDE. Source: Compagnoni et al. (2023); MATH §3.4.

    Args:
        H: Symmetric Hessian ``(d, d)``, or its diagonal ``(d,)``.
        x0: Initial points ``(..., d)``.
        t: Times ``>= 0``, scalar or any shape ``T``.
        rho: Scalar radius.

    Returns:
        ``T + x0.shape``.
    """
    xp, (H, x0, t, rho), kind = _backend(H, x0, t, rho)
    _rho(xp, rho)
    _scalars(xp, rho=rho)
    lams, V = _spectrum(xp, H, "H")
    _state(xp, x0, lams.shape[0])
    t_ = _time_axis(xp, "t", t, x0.ndim - 1)
    y = x0 if V is None else x0 @ V  # coordinates in the eigenbasis
    out = xp.exp(-lams * (1 + rho * lams) * t_) * y
    return _out(out if V is None else out @ V.T, kind)


def usam_discrete_mean(H: ArrayLike, x0: ArrayLike, k: ArrayLike, lr: ArrayLike, rho: ArrayLike) -> ArrayLike:
    r"""Mean of discrete USAM with additive noise on :math:`f=\frac12x^\top Hx`.

    .. math:: \mathbb E x_k = \big(I-\eta H(I+\rho H)\big)^k x_0

    Args:
        H: Symmetric Hessian ``(d, d)``, or its diagonal ``(d,)``.
        x0: Initial points ``(..., d)``.
        k: Step counts (non-negative integers), scalar or any shape ``K``.
        lr, rho: Scalars.

    Returns:
        ``K + x0.shape``. Source: MATH §3.4.
    """
    xp, (H, x0, k, lr, rho), kind = _backend(H, x0, k, lr, rho)
    _lr(xp, lr)
    _rho(xp, rho)
    _scalars(xp, lr=lr, rho=rho)
    lams, V = _spectrum(xp, H, "H")
    _state(xp, x0, lams.shape[0])
    k_ = _time_axis(xp, "k", k, x0.ndim - 1, integer=True)
    y = x0 if V is None else x0 @ V
    out = (1 - lr * lams * (1 + rho * lams)) ** k_ * y
    return _out(out if V is None else out @ V.T, kind)


def usam_sde_expected_loss(lams: ArrayLike, x0: ArrayLike, t: ArrayLike, lr: ArrayLike, rho: ArrayLike,
                           sigma2: ArrayLike) -> ArrayLike:
    r"""Expected loss of the USAM SDE on :math:`f=\frac12\sum_i\lambda_ix_i^2` with :math:`\Sigma=\sigma^2I`.

    .. math:: \mathbb Ef(X_t)=\tfrac12\sum_i\lambda_ix_{0,i}^2e^{-2a_it}
              +\tfrac{\eta\sigma^2}4\sum_i(1+\rho\lambda_i)(1-e^{-2a_it}),\qquad a_i=\lambda_i(1+\rho\lambda_i)

    Valid for any real :math:`\lambda_i` (no stationarity needed). Source: MATH §3.4 (OU moments).

    Args:
        lams: Eigenvalues ``(d,)`` (the Hessian's diagonal in its eigenbasis; express ``x0`` there too).
        x0: Initial points ``(..., d)``.
        t: Times ``>= 0``, scalar or shape ``T``.
        lr, rho, sigma2: Scalars (:math:`\eta`, :math:`\rho`, :math:`\sigma^2`).

    Returns:
        ``T + x0.shape[:-1]``.
    """
    xp, (lams, x0, t, lr, rho, sigma2), kind = _backend(lams, x0, t, lr, rho, sigma2)
    _moment_args(xp, lams, x0, lr, rho, sigma2)
    t_ = _time_axis(xp, "t", t, x0.ndim - 1)
    a = lams * (1 + rho * lams)
    decay = xp.exp(-2 * a * t_)
    # -expm1 keeps 1 - e^{-2at} accurate for small a*t.
    terms = 0.5 * lams * x0**2 * decay - lr * sigma2 / 4 * (1 + rho * lams) * xp.expm1(-2 * a * t_)
    return _out(terms.sum(-1), kind)


def usam_discrete_expected_loss(lams: ArrayLike, x0: ArrayLike, k: ArrayLike, lr: ArrayLike, rho: ArrayLike,
                                sigma2: ArrayLike) -> ArrayLike:
    r"""Expected loss of discrete USAM on :math:`f=\frac12\sum_i\lambda_ix_i^2` with :math:`\Sigma=\sigma^2I`.

    .. math:: \mathbb Ef(x_k)=\tfrac12\sum_i\lambda_i\Big[(1-\eta a_i)^{2k}x_{0,i}^2
              +\eta^2\sigma^2(1+\rho\lambda_i)^2\frac{1-(1-\eta a_i)^{2k}}{1-(1-\eta a_i)^2}\Big]

    The geometric factor is taken as its limit :math:`k` where :math:`(1-\eta a_i)^2=1`
    (:math:`a_i=0` or :math:`\eta a_i=2`). :math:`\rho=0` is SGD. Source: MATH §3.4.

    Args:
        lams: Eigenvalues ``(d,)``.
        x0: Initial points ``(..., d)`` in the eigenbasis.
        k: Step counts (non-negative integers), scalar or shape ``K``.
        lr, rho, sigma2: Scalars.

    Returns:
        ``K + x0.shape[:-1]``.
    """
    xp, (lams, x0, k, lr, rho, sigma2), kind = _backend(lams, x0, k, lr, rho, sigma2)
    _moment_args(xp, lams, x0, lr, rho, sigma2)
    k_ = _time_axis(xp, "k", k, x0.ndim - 1, integer=True)
    a = lams * (1 + rho * lams)
    q_k = (1 - lr * a) ** (2 * k_)
    one_minus_q = lr * a * (2 - lr * a)  # = 1 - (1 - lr a)^2 without cancellation
    with _quiet(xp):
        geometric = xp.where(one_minus_q == 0, k_ + 0 * q_k, (1 - q_k) / one_minus_q)
    terms = 0.5 * lams * (q_k * x0**2 + lr**2 * sigma2 * (1 + rho * lams) ** 2 * geometric)
    return _out(terms.sum(-1), kind)


def usam_sde_stationary_loss(lams: ArrayLike, lr: ArrayLike, rho: ArrayLike, sigma2: ArrayLike) -> ArrayLike:
    r"""Stationary expected loss of the USAM SDE: :math:`\frac{\eta\sigma^2}4(d+\rho\,\mathrm{tr}H)`.

    Exists iff every :math:`a_i=\lambda_i(1+\rho\lambda_i)>0`. Source: MATH §3.4.
    """
    xp, (lams, lr, rho, sigma2), kind = _backend(lams, lr, rho, sigma2)
    _moment_args(xp, lams, None, lr, rho, sigma2)
    _check(xp, lams * (1 + rho * lams) > 0, "lams", lams,
           "such that lam*(1+rho*lam) > 0 for every eigenvalue (else there is no stationary law)", rho=rho)
    return _out(lr * sigma2 / 4 * (1 + rho * lams).sum(-1), kind)


def usam_discrete_stationary_loss(lams: ArrayLike, lr: ArrayLike, rho: ArrayLike, sigma2: ArrayLike) -> ArrayLike:
    r"""Stationary expected loss of discrete USAM: :math:`\frac{\eta\sigma^2}2\sum_i\frac{1+\rho\lambda_i}{2-\eta a_i}`.

    Exists iff every :math:`0<\eta a_i<2`, :math:`a_i=\lambda_i(1+\rho\lambda_i)`. Source: MATH §3.4.
    """
    xp, (lams, lr, rho, sigma2), kind = _backend(lams, lr, rho, sigma2)
    _moment_args(xp, lams, None, lr, rho, sigma2)
    a = lams * (1 + rho * lams)
    _check(xp, (a > 0) & (lr * a < 2), "lams", lams,
           "such that 0 < lr*lam*(1+rho*lam) < 2 for every eigenvalue (else there is no stationary law)",
           lr=lr, rho=rho)
    return _out(lr * sigma2 / 2 * ((1 + rho * lams) / (2 - lr * a)).sum(-1), kind)
