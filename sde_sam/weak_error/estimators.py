"""Estimators of a weak-error study: the Monte-Carlo floor and the fitted order with its interval (MATH §5)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

FLOOR = 3.0
"""A gap below ``FLOOR`` standard errors is indistinguishable from Monte-Carlo noise (MATH §5)."""



class MonteCarloFloorError(ValueError):
    """A slope was asked from points whose gap is below ``FLOOR`` standard errors.

    Attributes:
        paths_needed: Paths per simulation that would lift every point above the floor (if the measured
            gaps are the true ones), or ``None`` when a gap is indistinguishable from 0.
        points: The per-lr maxima, with an ``under_floor`` column.
    """

    def __init__(self, message: str, paths_needed: int | None, points: pd.DataFrame):
        super().__init__(message)
        self.paths_needed, self.points = paths_needed, points


@dataclass(frozen=True)
class OrderFit:
    r"""The fitted weak order: :math:`\log\max_k|\text{gap}| = a + \alpha\log\eta`.

    Attributes:
        test_function, model: What was fitted.
        slope: :math:`\alpha`; ``ci_low``/``ci_high`` its 95% confidence interval (t distribution).
        intercept: :math:`a`.
        slope_se: Standard error of the slope.
        dof: Residual degrees of freedom (points − 2).
        fit: ``"wls"`` (Monte Carlo, weights from the delta-method SE of the log gap) or ``"ols"`` (exact).
        points: The per-lr maxima used: lr, rho, time, gap, gap_se, abs_gap.
        note: How the interval was obtained.
    """

    test_function: str
    model: str
    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    slope_se: float
    dof: int
    fit: str
    points: pd.DataFrame = field(repr=False)
    note: str = ""

    def __str__(self) -> str:
        return (f"{self.model}, {self.test_function}: slope {self.slope:.3f}, 95% CI "
                f"[{self.ci_low:.3f}, {self.ci_high:.3f}] ({self.fit}, {len(self.points)} lrs)")


def _fit_line(x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None) -> tuple[float, float, float, float, int, str]:
    """(Weighted) least squares of ``y`` on ``x``: intercept, slope, slope SE, 97.5% quantile, dof, note.

    OLS (``sigma=None``): the residual scale and a t quantile (a degenerate interval with 2 points). WLS with
    known SEs ``sigma``: the normal quantile while the points scatter no more than their SEs allow
    (chi²/dof <= 1); otherwise (curvature, a bias) the SE is inflated by sqrt(chi²/dof), which is estimated
    from the residuals, hence a t quantile with ``dof = points - 2``.
    """
    n, dof = len(x), len(x) - 2
    X = np.stack([np.ones(n), x], axis=1)
    w = np.ones(n) if sigma is None else sigma**-2.0
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    a, slope = cov @ (X.T @ (w * y))
    chi2 = float((w * (y - a - slope * x) ** 2).sum())
    if sigma is None:
        if dof < 1:
            return a, slope, 0.0, 0.0, dof, "OLS on 2 points: exact line, degenerate interval"
        return a, slope, math.sqrt(cov[1, 1] * chi2 / dof), stats.t.ppf(0.975, dof), dof, "OLS, t interval"
    if dof < 1 or chi2 <= dof:
        return a, slope, math.sqrt(cov[1, 1]), stats.norm.ppf(0.975), dof, "WLS, known SEs, normal interval"
    return (a, slope, math.sqrt(cov[1, 1] * chi2 / dof), stats.t.ppf(0.975, dof), dof,
            f"WLS, SE inflated by sqrt(chi2/dof) = {math.sqrt(chi2 / dof):.2g}, t interval")

