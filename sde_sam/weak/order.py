r"""The weak order from Monte-Carlo gaps (MATH §5, "What the slope estimates"): local slopes, the secant, and a
fit with a correction term whose interval targets the order :math:`p`.

The gap of an order-:math:`p` model is :math:`G(\eta) = C\eta^p(1 + D\eta + O(\eta^2))`, so

.. math:: \log G = \log C + p\log\eta + D\eta + O(\eta^2).

*Local slopes* between consecutive learning rates, :math:`s_i = \Delta\log\hat G/\Delta\log\eta`, have the SE
:math:`\sqrt{\sigma_i^2+\sigma_{i+1}^2}/|\Delta\log\eta|` (:math:`\sigma = \mathrm{SE}/\hat G`, independent points).
They agree within their errors exactly when the points lie on one line, i.e. when the straight-line WLS fit's
:math:`\chi^2` is consistent with :math:`\chi^2_{m-2}`; when it is not (p-value below ``PRE_ASYMPTOTIC_P``) the
study is **pre-asymptotic**: the secant slope over the grid is not the order.

*The order*: with :math:`m\ge4` learning rates, weighted least squares of :math:`\log\hat G` on
:math:`(1, \log\eta, \eta/\eta_{\max})` (one correction term; :math:`\log(1+D\eta) = D\eta + O(\eta^2)`, the
difference being of the order of the next term), the same interval rule as the secant
(:math:`z_{0.975}\,\mathrm{se}\,\max(1,\sqrt{\chi^2/(m-3)})`). When the data resolve a second correction term
(the fit with :math:`(\eta/\eta_{\max})^2` as well has it at more than ``RESOLVED_Z`` standard errors), the
interval is the union of both fits' intervals: that model uncertainty is part of what is not known about
:math:`p`. With 2 or 3 learning rates no correction can be fitted with a check: the reported estimate is the
secant, and says so.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .estimators import Z975, fit_wls

PRE_ASYMPTOTIC_P = 0.01
"""Local slopes disagree beyond their errors when the straight line's χ² has a p-value below this."""
RESOLVED_Z = 2.0
"""A second correction term counts as resolved above this many standard errors."""
NEAR_FLOOR = 5.0
"""Points between the floor (3 SE) and this many SEs passed the floor partly by luck: a slope through them is
biased low (selection at the floor, MATH §5); the fit says so."""


def local_slopes(x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None) -> pd.DataFrame:
    """Slopes between consecutive points, sorted by decreasing ``x`` (log lr); with SEs and 95% CIs when
    ``sigma`` (SEs of ``y``) is given, else exact (NaN SEs)."""
    order = np.argsort(-x)
    x, y = x[order], y[order]
    dx = np.diff(x)
    slope = np.diff(y) / dx
    se = (np.hypot(sigma[order][:-1], sigma[order][1:]) / np.abs(dx)) if sigma is not None else np.full(len(dx), np.nan)
    return pd.DataFrame({"lr_high": np.exp(x[:-1]), "lr_low": np.exp(x[1:]), "slope": slope, "slope_se": se,
                         "ci_low": slope - Z975 * se, "ci_high": slope + Z975 * se})


def fit_with_corrections(x: np.ndarray, y: np.ndarray, sigma: np.ndarray, terms: int) -> dict:
    r"""WLS of ``y`` on :math:`(1, x, h, \dots, h^{terms})`, :math:`h = e^x/\max e^x`, with the scale-factor
    interval on the coefficient of ``x`` (dof ``m - 2 - terms``; none left: SEs alone)."""
    m, dof = len(x), len(x) - 2 - terms
    h = np.exp(x - x.max())
    X = np.column_stack([np.ones(m), x] + [h**j for j in range(1, terms + 1)])
    w = sigma**-2.0
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = cov @ (X.T @ (w * y))
    chi2 = float((w * (y - X @ beta) ** 2).sum())
    scale = max(1.0, math.sqrt(chi2 / dof)) if dof >= 1 else 1.0
    se = np.sqrt(np.diag(cov)) * scale
    # The next term, estimated from the last fitted one as log(1 + Dh) = Dh - D²h²/2 + ... suggests: its effect
    # on the slope through the fit's linear map (the truncation error of the expansion).
    nxt = 0.5 * beta[-1] ** 2 * h ** (terms + 1) if terms else np.zeros(m)
    truncation = float(abs((cov @ (X.T @ (w * nxt)))[1]))
    return {"truncation": truncation, "intercept": float(beta[0]), "slope": float(beta[1]), "slope_se": float(se[1]), "dof": dof,
            "scale": scale, "chi2": chi2, "corrections": tuple(float(b) for b in beta[2:]),
            "correction_z": tuple(float(b / s) for b, s in zip(beta[2:], se[2:])), "lr_max": float(np.exp(x.max())),
            "ci_low": float(beta[1] - Z975 * se[1]), "ci_high": float(beta[1] + Z975 * se[1])}


def pre_asymptotic(x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> tuple[bool, float]:
    """``(flag, χ²/(m−2))`` of the straight line through the points: the local slopes disagree beyond their
    errors when its p-value is below ``PRE_ASYMPTOTIC_P`` (never with 2 points)."""
    dof = len(x) - 2
    if dof < 1:
        return False, math.nan
    from scipy.stats import chi2 as chi2_law  # here, not at import: scipy.stats takes ~0.5 s to import

    chi2 = fit_with_corrections(x, y, sigma, 0)["chi2"]
    return bool(chi2_law.sf(chi2, dof) < PRE_ASYMPTOTIC_P), chi2 / dof


def fit_order(x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> dict:
    """The estimate of the order and its interval (see the module), with what it targets, the local slopes and
    the pre-asymptotic flag."""
    flag, ratio = pre_asymptotic(x, y, sigma)
    common = {"local_slopes": local_slopes(x, y, sigma), "pre_asymptotic": flag, "local_chi2": ratio}
    if len(x) < 4:
        fit = fit_wls(x, y, sigma)
        fit["note"] += ("; the secant slope over the grid (fewer than 4 lrs: no correction term fitted), which is "
                        "the order only if the points are asymptotic")
        return {**fit, **common, "targets": "secant", "corrections": ()}
    one = fit_with_corrections(x, y, sigma, 1)
    low, high = one["ci_low"] - one["truncation"], one["ci_high"] + one["truncation"]
    note = (f"WLS with one correction term (log G = a + p log η + D η), CI = p ± 1.96·se·max(1, √(χ²/{one['dof']})),"
            f" scale factor {one['scale']:.2f}; targets the order p")
    if len(x) >= 5:
        two = fit_with_corrections(x, y, sigma, 2)
        if abs(two["correction_z"][-1]) > RESOLVED_Z:
            low, high = min(low, two["ci_low"]), max(high, two["ci_high"])
            note += (f"; a second correction term is resolved ({abs(two['correction_z'][-1]):.1f} SE): the CI spans "
                     f"the fits with one and two terms (p = {one['slope']:.3f}, {two['slope']:.3f})")
    keep = {k: one[k] for k in ("intercept", "slope", "dof", "scale", "corrections", "lr_max")}
    se = (high - low) / (2 * Z975)
    return {**keep, "slope_se": se, "ci_low": low, "ci_high": high, "note": note, **common, "targets": "order"}
