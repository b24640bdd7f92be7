r"""Estimators of a weak-error study (MATH §5): the max-over-time gap, the Monte-Carlo floor and the order.

**The gap, free of selection bias.** :math:`\max_k|\hat g_k|` over many recorded times is biased upward (the
maximum of many noisy gaps) and passes a 3-SE floor too often when the true gap is 0. Here the paths are
split in two independent halves A and B; the time is chosen on one half and the gap estimated on the other,
both ways round (cross-fitting), and the two estimates are averaged:

.. math:: \hat G = \tfrac12\big(s_A\,\hat g^B_{k_A} + s_B\,\hat g^A_{k_B}\big),\qquad
          k_A = \arg\max_{k}|\hat g^A_k|,\ s_A = \mathrm{sign}\,\hat g^A_{k_A}\ (\text{and } A\leftrightarrow B),

Each term is, given the half that chose its time, an unbiased estimate of :math:`|g|` at that time, so
:math:`\hat G` is unbiased for the true gap at the chosen times (conservative: never above the true maximum)
[derived]. The two terms are *positively correlated* (each half chooses for the other; 0.3–0.6 measured), so
:math:`\tfrac12\sqrt{se_B^2+se_A^2}` is too small: under the null (6,000 points, 1,000 studies with exact
truth) sd/SE was 1.15–1.28 and 0.67% of points passed the 3-SE floor. The SE reported here repeats the
selection (:func:`cross_fit_se`, a parametric bootstrap): sd/SE 0.95–1.03 under the null, 0.97–0.99 when the
gap is resolved, 0.92–1.02 near the floor, and 0.17% of the null points pass the floor (10 of 6,000; a
Gaussian single-time test would pass 0.13%). A negative :math:`\hat G` means the halves disagree: no resolved gap.

**The order.** Weighted least squares of :math:`\log\hat G` on :math:`\log\eta` with the delta-method variances
:math:`(\mathrm{SE}/\hat G)^2`, and one continuous interval rule (the Birge ratio / PDG scale factor):

.. math:: \hat\alpha \pm z_{0.975}\,\mathrm{se}(\hat\alpha)\,\max\big(1, \sqrt{\chi^2/(m-2)}\big),

with :math:`m` learning rates. When the points scatter as their SEs say, the interval is the known-variance
one (coverage 96% over replicates, 95% + the chance that :math:`\chi^2/(m-2)>1`); a lack of fit (curvature,
a bias) widens it continuously. A :math:`t_{m-2}` quantile on top would double-count the scale's
uncertainty: with known SEs it covers 99.9% at :math:`m=5` and 100% at :math:`m=3`. With :math:`m=2` the
line passes through both points, :math:`\chi^2 = 0` tells nothing, and the interval rests on the SEs alone.
This is the grid's *secant* slope (:meth:`WeakErrorStudy.secant`); the order itself, with a correction term,
local slopes and the pre-asymptotic flag, is in :mod:`.order`. In exact mode there is no noise: the slope is
an OLS fit, with local slopes between consecutive :math:`\eta` and no interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

FLOOR = 3.0
"""A gap below ``FLOOR`` standard errors is indistinguishable from Monte-Carlo noise (MATH §5)."""
Z975 = 1.959963984540054
"""The standard normal's 0.975 quantile, ``scipy.stats.norm.ppf(0.975)`` (a test holds it; scipy.stats is not imported
here for it: ~0.5 s)."""
BOOTSTRAP_DRAWS = 400
"""Draws of the parametric bootstrap behind the cross-fitted gap's SE (its own relative error: ~3.5%)."""
BOOTSTRAP_SEED = 20_240_601
SHRINK = 1.0
"""The bootstrap's true gap: the full-sample gap soft-thresholded at ``SHRINK`` of its SEs (chosen by measurement)."""


class MonteCarloFloorError(ValueError):
    """A slope was asked from points whose gap is below ``FLOOR`` standard errors.

    Attributes:
        paths_needed: Paths per simulation that would lift every point above the floor (if the measured
            gaps are the true ones), or ``None`` when a gap is indistinguishable from 0.
        points: The per-lr gaps, with an ``under_floor`` column.
    """

    def __init__(self, message: str, paths_needed: int | None, points: pd.DataFrame):
        super().__init__(message)
        self.paths_needed, self.points = paths_needed, points


@dataclass(frozen=True)
class OrderFit:
    r"""A fitted weak order (:mod:`sde_sam.weak.order`): :math:`\log\hat G(\eta) = a + \alpha\log\eta`
    (+ correction terms in :math:`\eta/\eta_{\max}` when ``targets == "order"``).

    Attributes:
        test_function, model: What was fitted.
        slope: The estimate; ``ci_low``/``ci_high`` its 95% interval (NaN in exact mode: no noise).
        intercept: :math:`a`.
        slope_se: Standard error of the slope, scale factor (and model spread) included (NaN in exact mode).
        dof: Residual degrees of freedom (points − fitted coefficients).
        fit: ``"wls"`` (the secant, Monte Carlo), ``"corrected"`` (with correction terms) or ``"exact"``.
        points: The per-lr gaps used: lr, rho, time, gap, gap_se, abs_gap, ...
        note: How the estimate and its interval were obtained, and what they target.
        scale: The lack-of-fit factor :math:`\max(1, \sqrt{\chi^2/\mathrm{dof}})` (1 without dof or in exact mode).
        local_slopes: Slopes between consecutive lrs (``lr_high, lr_low, slope``, and in Monte Carlo
            ``slope_se, ci_low, ci_high``), from large to small lr.
        targets: ``"order"`` (the interval targets the order p) or ``"secant"`` (the grid's secant slope).
        pre_asymptotic: The local slopes disagree beyond their errors (the secant is not the order).
        local_chi2: :math:`\chi^2/(m-2)` of the straight line (NaN with 2 points or in exact mode).
        corrections: Coefficients of :math:`(\eta/\eta_{\max})^j` in the log-gap (``targets == "order"``).
        lr_max: :math:`\eta_{\max}` of the corrections.
        near_floor: Learning rates whose gap is below ``NEAR_FLOOR`` (5) SEs: passed the floor partly by luck, so
            the slope is biased low there (selection at the floor).
        excluded: ``(lr, reason)`` pairs left out of the fit (most paths diverged).
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
    scale: float = 1.0
    local_slopes: pd.DataFrame | None = field(default=None, repr=False)
    targets: str = "secant"
    pre_asymptotic: bool = False
    local_chi2: float = math.nan
    corrections: tuple = ()
    lr_max: float = math.nan
    near_floor: tuple = ()
    excluded: tuple = ()

    @property
    def inconclusive(self) -> bool:
        """True when the interval cannot tell orders 1/2 and 1 apart: it holds both, or is wider than 1."""
        if self.fit == "exact":
            return False
        return (self.ci_low <= 0.5 and self.ci_high >= 1.0) or self.ci_high - self.ci_low > 1.0

    def curve(self, lr: np.ndarray) -> np.ndarray:
        """The fitted gap at ``lr`` (the line, with its correction terms)."""
        lr = np.asarray(lr, dtype=float)
        log = self.intercept + self.slope * np.log(lr)
        for j, c in enumerate(self.corrections, start=1):
            log = log + c * (lr / self.lr_max) ** j
        return np.exp(log)

    def flags(self) -> list[str]:
        """The warnings that go with the estimate (pre-asymptotic, near the floor, excluded lrs)."""
        out = []
        if self.pre_asymptotic:
            local = ", ".join(f"{s:.2f}" for s in self.local_slopes["slope"])
            out.append(f"pre-asymptotic: local slopes {local} (large to small lr) disagree beyond their errors, "
                       f"χ²/(m−2) = {self.local_chi2:.1f}" + ("; the secant is not the order" if self.targets == "secant"
                                                                else ""))
        if self.near_floor:
            out.append(f"near the MC floor at lr={', '.join(f'{lr:g}' for lr in self.near_floor)} (gap < "
                       "5 SE): such points passed the floor partly by luck, so the slope is biased low; more paths")
        for lr, why in self.excluded:
            out.append(f"lr={lr:g} left out: {why}")
        return out

    def __str__(self) -> str:
        what = "order" if self.targets == "order" else "slope"
        head = f"{self.model}, {self.test_function}: {what} {self.slope:.3f}"
        if self.fit == "exact":
            local = ", ".join(f"{s:.3f}" for s in self.local_slopes["slope"])
            extra = "".join(f"  [lr={lr:g} left out: {why}]" for lr, why in self.excluded)
            return f"{head} (exact moments, no CI; local slopes {local} from large to small lr){extra}"
        flag = "  [inconclusive: the CI does not separate 1/2 from 1]" if self.inconclusive else ""
        how = ("with a correction term, targets the order p" if self.targets == "order"
               else "the grid's secant slope")
        extra = "".join(f"  [{f}]" for f in self.flags())
        return (f"{head}, 95% CI [{self.ci_low:.3f}, {self.ci_high:.3f}] ({self.fit}, {len(self.points)} lrs; {how})"
                f"{flag}{extra}")


def split_gap(times: np.ndarray, gap_a: np.ndarray, se_a: np.ndarray, gap_b: np.ndarray,
              se_b: np.ndarray) -> dict:
    """The cross-fitted gap of one (lr, model, test function) from the two halves' per-time gaps (t > 0).

    Returns:
        ``time`` (chosen on half A), ``time_b`` (chosen on half B), ``gap`` and ``gap_se`` (the selection-aware
        SE of :func:`cross_fit_se`; see the module).
    """
    ok = np.isfinite(gap_a) & np.isfinite(gap_b) & np.isfinite(se_a) & np.isfinite(se_b)
    if not ok.any():
        return {"time": math.nan, "time_b": math.nan, "gap": math.nan, "gap_se": math.nan}
    idx = np.flatnonzero(ok)
    ka = idx[np.argmax(np.abs(gap_a[idx]))]
    kb = idx[np.argmax(np.abs(gap_b[idx]))]
    est_a = np.sign(gap_a[ka]) * gap_b[ka]  # time and direction from A, value from B
    est_b = np.sign(gap_b[kb]) * gap_a[kb]
    return {"time": float(times[ka]), "time_b": float(times[kb]), "gap": 0.5 * float(est_a + est_b),
            "gap_se": cross_fit_se(gap_a[idx], se_a[idx], gap_b[idx], se_b[idx])}


def _cross_fit(ga: np.ndarray, gb: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Cross-fitted gaps of ``(draws, K)`` half-gaps, less the target at the chosen times (signed as chosen)."""
    ka, kb = np.abs(ga).argmax(axis=-1)[:, None], np.abs(gb).argmax(axis=-1)[:, None]
    sa, sb = np.sign(np.take_along_axis(ga, ka, -1)), np.sign(np.take_along_axis(gb, kb, -1))
    est = sa * (np.take_along_axis(gb, ka, -1) - target[ka]) + sb * (np.take_along_axis(ga, kb, -1) - target[kb])
    return 0.5 * est[:, 0]


def cross_fit_se(gap_a: np.ndarray, se_a: np.ndarray, gap_b: np.ndarray, se_b: np.ndarray, *,
                 draws: int = BOOTSTRAP_DRAWS, shrink: float = SHRINK) -> float:
    r"""Standard error of the cross-fitted gap, the selection repeated (a parametric bootstrap) [derived].

    The halves' noises are independent Gaussian processes over the recorded times with the SEs given and,
    within a half, the correlation between consecutive times of an AR(1) process, :math:`r`, estimated from
    the standardised difference of the halves :math:`u_k = (\hat g^A_k-\hat g^B_k)/\sqrt{se^{A\,2}_k+se^{B\,2}_k}`
    (pure noise whatever the true gap). The true gap is replaced by the full-sample gap soft-thresholded at
    ``shrink`` of its SEs (so that a null study is bootstrapped as a null study, not around its own noise).
    ``draws`` pairs of halves are drawn from that law with a fixed seed (the SE is a deterministic function of
    the table), the selection is repeated on each, and the SE is the sd of the cross-fitted gap less its target
    at the chosen times. One time: no selection, :math:`	frac12\sqrt{se_A^2+se_B^2}`.
    """
    s = np.hypot(se_a, se_b)
    k = len(s)
    if k == 1 or not (s > 0).any():
        return 0.5 * float(s[0]) if k == 1 else 0.0
    # times without noise (an SE of 0: e.g. a deterministic first step) carry no information on r
    u = np.where(s > 0, (gap_a - gap_b) / np.where(s > 0, s, 1.0), 0.0)
    r = float(np.clip((u[1:] * u[:-1]).sum() / (u * u).sum(), 0.0, 0.99)) if k > 2 and (u * u).sum() > 0 else 0.0
    full = 0.5 * (gap_a + gap_b)
    target = np.sign(full) * np.maximum(np.abs(full) - shrink * 0.5 * s, 0.0)
    z = np.random.default_rng(BOOTSTRAP_SEED).standard_normal((2, draws, k))
    z[..., 0] /= math.sqrt(1.0 - r * r)  # a stationary start
    from scipy.signal import lfilter  # here, not at import: scipy.signal takes ~1 s to import

    e = lfilter([math.sqrt(1.0 - r * r)], [1.0, -r], z, axis=-1)  # AR(1), unit variance
    return float(_cross_fit(target + e[0] * se_a, target + e[1] * se_b, target).std(ddof=1))


def fit_wls(x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> dict:
    """WLS of ``y`` on ``x`` with known SEs ``sigma`` and the scale-factor interval (see the module)."""
    m, dof = len(x), len(x) - 2
    X = np.stack([np.ones(m), x], axis=1)
    w = sigma**-2.0
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    a, slope = cov @ (X.T @ (w * y))
    chi2 = float((w * (y - a - slope * x) ** 2).sum())
    scale = max(1.0, math.sqrt(chi2 / dof)) if dof >= 1 else 1.0
    se = math.sqrt(cov[1, 1]) * scale
    if dof < 1:
        note = ("WLS through 2 points: the line fits exactly, so there is no lack-of-fit check; the CI "
                "comes from the SEs alone (z·se)")
    else:
        note = f"WLS, CI = slope ± 1.96·se·max(1, √(χ²/{dof})), scale factor {scale:.2f}"
    return {"intercept": float(a), "slope": float(slope), "slope_se": se, "ci_low": float(slope - Z975 * se),
            "ci_high": float(slope + Z975 * se), "dof": dof, "scale": scale, "note": note}


def fit_exact(x: np.ndarray, y: np.ndarray) -> dict:
    """OLS through exact points, and the local slopes between consecutive ones (sorted by decreasing x)."""
    order = np.argsort(-x)
    x, y = x[order], y[order]
    slope, a = np.polyfit(x, y, 1)
    local = pd.DataFrame({"lr_high": np.exp(x[:-1]), "lr_low": np.exp(x[1:]),
                          "slope": np.diff(y) / np.diff(x)})
    return {"intercept": float(a), "slope": float(slope), "slope_se": math.nan, "ci_low": math.nan,
            "ci_high": math.nan, "dof": len(x) - 2, "scale": 1.0, "local_slopes": local,
            "note": "exact moments: no Monte-Carlo noise, so no CI; local slopes between consecutive lrs"}


def floor_error(pts: pd.DataFrame, test_fn: str, model: str, n_paths: int) -> MonteCarloFloorError:
    """The refusal for points under the floor, with the paths that would lift them above it."""
    bad = pts[pts["under_floor"]]
    positive = bad["gap"] > 0
    ratio = (FLOOR * bad["gap_se"] / bad["gap"].where(positive)).max() if positive.all() else math.inf
    needed = int(math.ceil(n_paths * ratio**2)) if ratio < 1e3 else None
    lrs = ", ".join(f"{lr:g} (gap {g:.3g} ± {s:.2g})" for lr, g, s in zip(bad["lr"], bad["gap"], bad["gap_se"]))
    how = (f"about {needed:,} paths per simulation (n_paths·(3·gap_se/gap)², SE ∝ 1/√n_paths) would lift "
           f"them above it, if the measured gaps are the true ones" if needed is not None
           else "the gap is indistinguishable from 0 at any affordable number of paths")
    return MonteCarloFloorError(
        f"refusing to fit a slope for {model}, {test_fn}: at lr = {lrs} the gap is below {FLOOR:g} "
        f"standard errors (the Monte-Carlo floor) with n_paths={n_paths}; {how}. Or drop those lrs (`lrs=`)"
        f", or use coupling=True where it applies.", needed, pts)
