r"""Weak-error studies: how far a discrete method and its SDE models are apart in law (MATH §5).

For each learning rate :math:`\eta` of a grid (with :math:`\rho` fixed or a function of :math:`\eta`), the
study estimates :math:`\mathbb E\phi(x_k)` for the discrete method and :math:`\mathbb E\phi(X_{k\eta})` for
each SDE model at common times :math:`t = k\eta\le T`, with standard errors, and fits the weak order from

.. math:: \max_{k\le T/\eta}\big|\mathbb E\phi(x_k) - \mathbb E\phi(X_{k\eta})\big| \approx C\,\eta^{\alpha}.

Two modes. *Exact* (linear-Gaussian cases: SGD or USAM on a :class:`~sde_sam.Quadratic`): the discrete mean
and covariance recursions and the Ornstein–Uhlenbeck mean and Lyapunov covariance (MATH §3.4) give the
expectations of quadratic test functions with no Monte-Carlo error. *Monte Carlo*: :func:`sde_sam.run`
for the method and :func:`sde_sam.simulate` for each model, independent seeds, the SDE integrated with
:math:`\Delta t = \eta/\texttt{dt\_ratio}` (MATH §4: :math:`\Delta t\ge\eta` proves nothing).

Example:
    >>> prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)), noise_cov=1.0)
    >>> study = ss.weak_error(prob, ss.USAM(0.1, rho=0.1), lrs=[0.1, 0.05, 0.025], horizon=1.0,
    ...                       x0=torch.ones(2, dtype=torch.float64), sde_order=[0, 1])
    >>> study.order("loss", model="order 1").slope  # doctest: +SKIP
    1.0...
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from . import _checks
from .discrete import run
from .methods import SGD, USAM, Method, UnifiedSAM
from .observables import record_times
from .problems.base import Problem
from .problems.gaussian import Objective, Quadratic

ORDERS = (0, 1, 2, "exact")
DEFAULT_TEST_FUNCTIONS = ("loss", "x_norm_sq", "grad_norm_plus_x_norm")
EXACT_TEST_FUNCTIONS = ("loss", "x_norm_sq")
"""Test functions with closed-form Gaussian expectations (quadratic in x), available in exact mode."""
COLUMNS = ["lr", "rho", "model", "test_function", "time", "discrete_mean", "discrete_se",
           "sde_mean", "sde_se", "gap", "gap_se"]
FLOOR = 3.0
"""A gap below ``FLOOR`` standard errors is indistinguishable from Monte-Carlo noise (MATH §5)."""


def model_label(order) -> str:
    """The model's name in tables: ``"order 0"``, ``"order 1"``, ``"order 2"`` or ``"exact"``."""
    return "exact" if order == "exact" else f"order {order}"


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


@dataclass
class WeakErrorStudy:
    """The outcome of :func:`weak_error`.

    Attributes:
        table: Tidy DataFrame, one row per (lr, model, test_function, time): ``lr, rho, model,
            test_function, time, discrete_mean, discrete_se, sde_mean, sde_se, gap, gap_se`` with
            ``gap = discrete - sde`` and ``gap_se`` the root sum of squares of the SEs (0 in exact mode).
        solver_error: Max-over-time ``|sde(dt) - sde(dt/2)|`` per (lr, model, test_function) with its SE
            and the max gap beside it (``None`` without ``solver_check``). In exact mode it is the exact
            error of Euler–Maruyama's moments; in Monte Carlo it includes the noise of two runs.
        cells: One row per computed piece (lr, model): paths, diverged paths, seconds, loaded or computed.
        config: The study's configuration (what ``results_dir/config.json`` holds).
        mode: ``"exact"`` or ``"monte_carlo"``.
    """

    table: pd.DataFrame
    solver_error: pd.DataFrame | None
    cells: pd.DataFrame
    config: dict
    mode: str

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.table["model"]))

    @property
    def test_functions(self) -> list[str]:
        return list(dict.fromkeys(self.table["test_function"]))

    def _model(self, model: str | None) -> str:
        if model is None:
            if len(self.models) > 1:
                raise ValueError(f"`model` must be given when the study has several models, one of {self.models}")
            return self.models[0]
        if model not in self.models:
            raise ValueError(f"`model` must be one of {self.models}, got model={model!r}")
        return model

    def _test_fn(self, test_fn: str) -> str:
        if test_fn not in self.test_functions:
            raise ValueError(f"`test_fn` must be one of {self.test_functions}, got test_fn={test_fn!r}")
        return test_fn

    def max_gaps(self) -> pd.DataFrame:
        """Per (lr, model, test_function): the time of the largest |gap| (t > 0), the gap there, its SE,
        and ``under_floor`` (|gap| < 3 SE)."""
        t = self.table[self.table["time"] > 0].assign(abs_gap=lambda f: f["gap"].abs()).dropna(subset=["abs_gap"])
        keys = ["lr", "model", "test_function"]
        best = t.loc[t.groupby(keys, sort=False)["abs_gap"].idxmax()]
        best = best[keys + ["rho", "time", "gap", "gap_se", "abs_gap"]].reset_index(drop=True)
        return best.assign(under_floor=best["abs_gap"] < FLOOR * best["gap_se"])

    def order(self, test_fn: str, model: str | None = None, *, lrs: Sequence[float] | None = None) -> OrderFit:
        r"""Fit the weak order: slope of :math:`\log\max_k|\text{gap}|` against :math:`\log\eta`.

        Monte Carlo: weighted least squares with weights from the delta method,
        :math:`\mathrm{se}(\log g)\approx\mathrm{se}(g)/g`; a normal interval while the points scatter within
        their SEs, else the SE inflated by :math:`\sqrt{\chi^2/\text{dof}}` and a t interval with
        ``dof = points - 2``. Exact: ordinary least squares, a t interval from the residuals (degenerate with
        2 points).

        Args:
            test_fn: A test function of the study.
            model: A model label (``"order 1"``); optional when the study has one model.
            lrs: Restrict the fit to these learning rates.

        Raises:
            MonteCarloFloorError: Some point's gap is below 3 standard errors; the message says how many
                paths would lift it above (SE scales as :math:`1/\sqrt{n}`: :math:`n\,(3\,\mathrm{se}/g)^2`).
        """
        test_fn, model = self._test_fn(test_fn), self._model(model)
        pts = self.max_gaps()
        pts = pts[(pts["model"] == model) & (pts["test_function"] == test_fn)]
        if lrs is not None:
            pts = pts[np.isin(pts["lr"].to_numpy(), np.asarray(lrs, dtype=float))]
        pts = pts.reset_index(drop=True)
        if len(pts) < 2:
            raise ValueError(f"a slope needs at least 2 learning rates, got {len(pts)} for {model}, {test_fn}")
        if (pts["abs_gap"] == 0).any():
            raise ValueError(f"the gap of {model} on {test_fn} is exactly 0 at lr="
                             f"{pts.loc[pts['abs_gap'] == 0, 'lr'].tolist()}: no order to fit")
        exact = self.mode == "exact"
        if not exact and pts["under_floor"].any():
            raise self._floor_error(pts, test_fn, model)
        x, y = np.log(pts["lr"].to_numpy()), np.log(pts["abs_gap"].to_numpy())
        sigma = None if exact else (pts["gap_se"] / pts["abs_gap"]).to_numpy()
        a, slope, se, q, dof, note = _fit_line(x, y, sigma)
        return OrderFit(test_fn, model, float(slope), float(a), float(slope - q * se), float(slope + q * se),
                        float(se), dof, "ols" if exact else "wls", pts, note)

    def _floor_error(self, pts: pd.DataFrame, test_fn: str, model: str) -> MonteCarloFloorError:
        bad = pts[pts["under_floor"]]
        n = int(self.config["n_paths"])
        ratio = (FLOOR * bad["gap_se"] / bad["abs_gap"]).max()
        needed = int(math.ceil(n * ratio**2)) if ratio < 1e3 else None
        lrs = ", ".join(f"{lr:g} (gap {g:.3g} ± {s:.2g})" for lr, g, s in zip(bad["lr"], bad["gap"], bad["gap_se"]))
        how = (f"about {needed:,} paths per simulation (n_paths·(3·gap_se/|gap|)², SE ∝ 1/√n_paths) would lift "
               f"them above it, if the measured gaps are the true ones" if needed is not None
               else "the gap is indistinguishable from 0 at any affordable number of paths")
        return MonteCarloFloorError(
            f"refusing to fit a slope for {model}, {test_fn}: at lr = {lrs} the max gap is below {FLOOR:g} "
            f"standard errors (the Monte-Carlo floor) with n_paths={n}; {how}. Or drop those lrs (`lrs=`).",
            needed, pts)

    def relative(self, test_fn: str) -> pd.DataFrame:
        r"""The SAM-SDE paper's statistic :math:`\max_k|\bar\phi_d - \bar\phi_s| / \mathrm{mean}_k|\bar\phi_d|`
        per (lr, model): columns ``lr, rho, model, relative_error``."""
        t = self.table[self.table["test_function"] == self._test_fn(test_fn)]
        g = t.groupby(["lr", "model"], sort=False)
        out = pd.DataFrame({"rho": g["rho"].first(), "relative_error": g["gap"].apply(lambda s: s.abs().max())
                            / g["discrete_mean"].apply(lambda s: s.abs().mean())})
        return out.reset_index()[["lr", "rho", "model", "relative_error"]]

    def summary(self) -> str:
        """A printable report: max gap ± SE per (lr, model, test function) and the fitted orders."""
        pts = self.max_gaps()
        lines = [f"weak error of {self.config['method']['method']} ({self.mode}), horizon {self.config['horizon']:g}"]
        for tf in self.test_functions:
            lines.append(f"\n{tf}:")
            sub = pts[pts["test_function"] == tf]
            for _, r in sub.iterrows():
                se = "(exact)" if self.mode == "exact" else f"± {r['gap_se']:.1e}"
                flag = "  [below MC floor]" if r["under_floor"] and self.mode != "exact" else ""
                lines.append(f"  lr={r['lr']:<8.4g} rho={r['rho']:<8.4g} {r['model']:<8} "
                             f"max gap {r['gap']:+.4e} {se} at t={r['time']:.3g}{flag}")
            for m in self.models:
                try:
                    lines.append(f"  fit: {self.order(tf, m)}")
                except ValueError as err:
                    lines.append(f"  fit: {m}: {err}")
        if self.solver_error is not None:
            se = self.solver_error
            line = (f"\nsolver error, max over time of |sde(dt) - sde(dt/2)|: at most {se['ratio'].max():.2g} "
                    f"× the max gap")
            if self.mode != "exact":
                z = (se["max_abs_diff"] / se["diff_se"]).max()
                line += f" (Monte-Carlo noise included: the largest is {z:.1f} SE)"
            lines.append(line)
        return "\n".join(lines)

    def plot(self, test_fns: Sequence[str] | None = None):
        """Log-log figure of max |gap| against lr, one panel per test function, one hue per model, with
        SE error bars, the fitted lines, and reference slopes 1 (solid grey) and 1/2 (dashed grey) drawn
        below the data. Points under the Monte-Carlo floor are circled.

        Returns:
            A :class:`matplotlib.figure.Figure` (not registered with pyplot: save it with ``savefig``).
        """
        import matplotlib.figure
        import matplotlib.ticker
        import seaborn as sns

        test_fns = self.test_functions if test_fns is None else [self._test_fn(t) for t in test_fns]
        pts = self.max_gaps()
        palette = dict(zip(self.models, sns.color_palette("colorblind", len(self.models))))
        fig = matplotlib.figure.Figure(figsize=(4.3 * len(test_fns) + 0.4, 4.2), layout="constrained")
        axes = fig.subplots(1, len(test_fns), squeeze=False)[0]
        for ax, tf in zip(axes, test_fns):
            sub = pts[pts["test_function"] == tf]
            sns.scatterplot(data=sub, x="lr", y="abs_gap", hue="model", palette=palette, ax=ax, s=40,
                            zorder=3, legend=False)
            lr = np.geomspace(sub["lr"].min(), sub["lr"].max(), 50)
            for m in self.models:
                ms = sub[sub["model"] == m]
                ax.errorbar(ms["lr"], ms["abs_gap"], yerr=ms["gap_se"], fmt="none", ecolor=palette[m], capsize=3)
                low = ms[ms["under_floor"]] if self.mode != "exact" else ms.iloc[:0]
                ax.scatter(low["lr"], low["abs_gap"], s=110, facecolors="none", edgecolors="k", zorder=4,
                           label="below MC floor" if len(low) else None)
                try:
                    fit = self.order(tf, m)
                    label = f"{m}: slope {fit.slope:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]"
                    ax.plot(lr, np.exp(fit.intercept) * lr**fit.slope, color=palette[m], label=label)
                except ValueError as err:
                    why = "MC floor" if isinstance(err, MonteCarloFloorError) else "not fitted"
                    ax.plot([], [], color=palette[m], label=f"{m}: no slope ({why})")
            # Reference slopes, fanning out leftwards from below the lowest point at the largest lr.
            anchor = 0.5 * sub.loc[sub["lr"] == sub["lr"].max(), "abs_gap"].min()
            for p, ls in ((1.0, "-"), (0.5, "--")):
                ax.plot(lr, anchor * (lr / lr.max()) ** p, color="0.55", ls=ls, lw=1, label=f"slope {p:g}")
            ax.set(xscale="log", yscale="log", xlabel=r"learning rate $\eta$",
                   ylabel=r"$\max_k\,|\mathrm{E}\,\phi(x_k) - \mathrm{E}\,\phi(X_{k\eta})|$",
                   title=rf"$\phi$ = {tf}")
            ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(sorted(sub["lr"].unique())))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.legend(fontsize=7, loc="upper left")
        mode = "exact moments" if self.mode == "exact" else f"Monte Carlo, {self.config['n_paths']:,} paths"
        rho = self.config.get("rho_spec", "").replace("rho", "ρ").replace("lr", "η")
        fig.suptitle(f"Weak error of {self.config['method']['method']} against its SDE models "
                     f"({mode}; {rho}; horizon T = {self.config['horizon']:g})", fontsize=10)
        return fig

    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, ``table.csv``, ``cells.csv`` and ``solver_error.csv`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config, indent=2))
        self.table.to_csv(directory / "table.csv", index=False)
        self.cells.to_csv(directory / "cells.csv", index=False)
        if self.solver_error is not None:
            self.solver_error.to_csv(directory / "solver_error.csv", index=False)

    @classmethod
    def load(cls, directory: str | Path) -> "WeakErrorStudy":
        """Read a study written by :meth:`save` (figures are redrawn from saved results, no rerun)."""
        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        solver = directory / "solver_error.csv"
        return cls(table=pd.read_csv(directory / "table.csv"),
                   solver_error=pd.read_csv(solver) if solver.exists() else None,
                   cells=pd.read_csv(directory / "cells.csv"), config=config, mode=config["mode"])


# -- test functions ----------------------------------------------------------------------------------------
def _test_functions(problem: Problem, test_functions) -> dict[str, str | Callable]:
    """Name -> observable (a built-in name or a named callable ``(n, d) -> (n,)``)."""
    def x_norm_sq(x):
        return (x * x).sum(dim=-1)

    def grad_norm_plus_x_norm(x):
        return torch.linalg.vector_norm(problem.grad(x), dim=-1) + torch.linalg.vector_norm(x, dim=-1)

    own = {"x_norm_sq": x_norm_sq, "grad_norm_plus_x_norm": grad_norm_plus_x_norm}
    out: dict[str, str | Callable] = {}
    for tf in DEFAULT_TEST_FUNCTIONS if test_functions is None else test_functions:
        if callable(tf):
            out[getattr(tf, "__name__", f"phi{len(out)}")] = tf
        elif isinstance(tf, str) and tf in own:
            out[tf] = own[tf]
        elif tf in ("loss", "grad_norm", "x_norm", "lambda_max"):
            out[tf] = tf
        else:
            raise ValueError(f"`test_functions` entries must be one of {DEFAULT_TEST_FUNCTIONS + ('grad_norm', 'x_norm', 'lambda_max')} "
                             f"or a callable (n_paths, d) -> (n_paths,), got {tf!r}")
    if not out:
        raise ValueError("`test_functions` must name at least one test function")
    return out


# -- exact moments (linear-Gaussian cases, MATH §3.4) -------------------------------------------------------
def _exact_applicable(problem: Problem, method: Method) -> str | None:
    """``None`` if exact moments apply, else why not."""
    if not isinstance(problem, Quadratic):
        return f"the problem is a {type(problem).__name__}, not a Quadratic with additive Gaussian noise"
    if not (type(method) in (SGD, USAM) or (isinstance(method, UnifiedSAM) and method.lam == 0.0)):
        return f"the method is {method.name}, not SGD or USAM (whose step is linear on a quadratic)"
    return None


def _warn_unstable(problem: Quadratic, method: Method, lrs, rho) -> None:
    """Discrete USAM on a quadratic diverges when some lr·λ(1+ρλ) leaves [0, 2] (MATH §7)."""
    lam = torch.linalg.eigvalsh(0.5 * (problem.H + problem.H.T)).double()
    for lr in lrs:
        r = method.rho if rho is None else (rho(lr) if callable(rho) else rho)
        a = lr * lam * (1 + r * lam)
        if bool((a > 2).any()):
            warnings.warn(f"discrete {method.name} is unstable at lr={lr:g}, rho={r:g}: lr·λ(1+ρλ) = "
                          f"{float(a.max()):.3g} > 2, its moments diverge", stacklevel=3)


def _linear_model(problem: Quadratic, rho: float, order, diffusion: str) -> tuple[np.ndarray, np.ndarray]:
    r"""``(A, Q)`` of the OU model :math:`dX = -AX\,dt + \sqrt\eta\,Q^{1/2}dW` of USAM (SGD: ρ = 0).

    Order 0: :math:`A = H`, :math:`Q = \Sigma`. Orders 1, 2 and exact coincide on quadratics (no third
    derivative): :math:`A = H(I+\rho H)`, :math:`Q = (I+\rho H)\Sigma(I+\rho H)` (``factor``) or
    :math:`\Sigma+\rho(\Sigma H+H\Sigma)` clipped to PSD (``paper``, orders 1 and 2).
    """
    H = problem.H.detach().cpu().double().numpy()
    H = 0.5 * (H + H.T)
    S = problem.noise_cov.detach().cpu().double().numpy()
    if order == 0:
        return H, S
    P = np.eye(len(H)) + rho * H
    if diffusion == "paper" and order != "exact":
        w, V = np.linalg.eigh(S + rho * (S @ H + H @ S))
        return H @ P, (V * w.clip(min=0)) @ V.T
    return H @ P, P @ S @ P


def _quad_expectations(names: Sequence[str], H: np.ndarray, m: np.ndarray, C: np.ndarray) -> dict[str, np.ndarray]:
    """E φ for Gaussian N(m, C) batches ``m: (T, d)``, ``C: (T, d, d)``: loss ½tr(H(C+mmᵀ)), ‖x‖² = tr C + ‖m‖²."""
    out = {}
    for name in names:
        if name == "loss":
            out[name] = 0.5 * (np.einsum("ij,tji->t", H, C) + np.einsum("ti,ij,tj->t", m, H, m))
        else:
            out[name] = np.einsum("tii->t", C) + (m * m).sum(-1)
    return out


def _linear_recursion(M: np.ndarray, N: np.ndarray, x0: np.ndarray, ks: Sequence[int]):
    """Moments of :math:`x_{k+1} = Mx_k + \\text{noise}` (noise covariance ``N``) at the steps ``ks``."""
    m, C = x0.copy(), np.zeros((len(x0), len(x0)))
    want, ms, Cs = set(ks), [], []
    for k in range(ks[-1] + 1):
        if k in want:
            ms.append(m.copy()), Cs.append(C.copy())
        m, C = M @ m, M @ C @ M.T + N
    return np.array(ms), np.array(Cs)


def _ou_moments(A: np.ndarray, Q: np.ndarray, lr: float, x0: np.ndarray, times: np.ndarray):
    r"""Exact OU moments: mean :math:`e^{-At}x_0`, covariance :math:`\int_0^t e^{-As}\eta Q e^{-As}ds`
    (A symmetric: in its eigenbasis entry ij is :math:`\eta\tilde Q_{ij}(1-e^{-(a_i+a_j)t})/(a_i+a_j)`)."""
    a, V = np.linalg.eigh(A)
    Qt = V.T @ Q @ V
    s = a[:, None] + a[None, :]
    st = s[None] * times[:, None, None]
    phi = np.where(np.abs(st) > 1e-12, -np.expm1(-st) / np.where(s == 0, 1.0, s)[None], times[:, None, None])
    C = V[None] @ (lr * Qt[None] * phi) @ V.T[None]
    m = (np.exp(-a[None] * times[:, None]) * (V.T @ x0)[None]) @ V.T
    return m, C


# -- cells: one computed piece per (lr, model), saved and resumed ------------------------------------------
def _frame(times, means: dict, ses: dict | None) -> pd.DataFrame:
    rows = [pd.DataFrame({"test_function": k, "time": np.asarray(times, dtype=float),
                          "mean": np.asarray(v, dtype=float),
                          "se": np.zeros(len(times)) if ses is None else np.asarray(ses[k], dtype=float)})
            for k, v in means.items()]
    return pd.concat(rows, ignore_index=True)


class _Store:
    """Cells as CSV files in ``results_dir`` next to ``config.json``; a cell present is loaded, not recomputed."""

    def __init__(self, directory: str | Path | None, config: dict):
        self.dir = None if directory is None else Path(directory)
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "config.json"
        if path.exists():
            old = json.loads(path.read_text())
            differ = sorted(k for k in set(old) | set(config)
                            if k not in ("lrs", "rho_spec") and old.get(k) != config.get(k))
            if differ:
                raise ValueError(f"`results_dir` {str(self.dir)!r} holds a study with a different configuration "
                                 f"(differs in {differ}); pass another results_dir or delete it")
        path.write_text(json.dumps(config, indent=2))

    def path(self, kind: str, lr: float, rho: float) -> Path | None:
        name = f"{kind.replace(' ', '')}_lr={lr!r}_rho={rho!r}.csv"
        return None if self.dir is None else self.dir / "cells" / name

    def get(self, key) -> pd.DataFrame | None:
        p = self.path(*key)
        return pd.read_csv(p) if p is not None and p.exists() else None

    def put(self, key, frame: pd.DataFrame) -> None:
        p = self.path(*key)
        if p is not None:
            p.parent.mkdir(exist_ok=True)
            tmp = p.with_suffix(".tmp")
            frame.to_csv(tmp, index=False)
            tmp.replace(p)  # atomic: an interrupted write never leaves a half cell


def _seed(seed: int, lr: float, kind: str) -> int:
    """Independent stream per (lr, piece), from the lr's value (not its index): cells do not depend on
    which other lrs are in the study."""
    bits = struct.unpack("<Q", struct.pack("<d", float(lr)))[0]
    code = int(hashlib.sha256(kind.encode()).hexdigest()[:8], 16)
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(bits, code))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(2))


def _mc_frame(traj, names: Sequence[str]) -> pd.DataFrame:
    frame = _frame(traj.times.numpy(), {k: traj.mean(k).numpy() for k in names}, {k: traj.sem(k).numpy() for k in names})
    return frame.assign(n_diverged=traj.n_diverged)


# -- the study ---------------------------------------------------------------------------------------------
def weak_error(problem: Problem, method: Method, *, lrs: Sequence[float], horizon: float, x0: torch.Tensor,
               n_paths: int = 20_000, seed: int = 0, test_functions: Sequence | None = None,
               sde_order=1, rho: float | Callable[[float], float] | None = None, dt_ratio: int = 10,
               mode: str = "auto", record_every: int | None = None, diffusion: str = "factor",
               expectation: str = "auto", increments: str = "gaussian", solver_check: bool = True,
               chunk_size: int | None = None, max_norm: float = math.inf,
               results_dir: str | Path | None = None, progress: bool | None = None) -> WeakErrorStudy:
    r"""Weak error of ``method`` against its SDE models over a grid of learning rates (MATH §5).

    For each ``lr`` the method runs ``floor(horizon / lr)`` steps; each model is integrated by
    Euler–Maruyama with ``dt = lr / dt_ratio``; both record the test functions every ``record_every``
    steps (the SDE every ``record_every * dt_ratio`` solver steps), so they meet at the same times
    :math:`t = k\eta`.

    Args:
        problem: The objective and noise model.
        method: The discrete method; its ``lr`` (and ``rho``, see below) are replaced per grid point.
        lrs: Learning rates.
        horizon: Time horizon :math:`T` on the SDE scale.
        x0: ``(d,)`` start shared by every path, in the problem's dtype.
        n_paths: Paths per simulation (Monte Carlo).
        seed: Seed; each (lr, piece) gets an independent stream derived from it and the lr's value.
        test_functions: Names (``"loss"``, ``"x_norm_sq"``, ``"grad_norm_plus_x_norm"``, ``"grad_norm"``,
            ``"x_norm"``, ``"lambda_max"``) or callables ``(n_paths, d) -> (n_paths,)`` named by ``__name__``.
            Default: loss, :math:`\|x\|^2` and :math:`\|\nabla f\| + \|x\|` (the SAM-SDE paper's).
        sde_order: ``0``, ``1``, ``2``, ``"exact"``, or a list of them, compared in one study.
        rho: ``None`` (the method's), a float, or a callable ``lr -> rho`` (e.g. ``lambda lr: lr**0.5``).
        dt_ratio: ``lr / dt`` (integer; below 2 warns: :math:`\Delta t\ge\eta` proves nothing, MATH §4).
        mode: ``"auto"`` (exact when SGD/USAM on a :class:`~sde_sam.Quadratic`), ``"exact"`` or ``"monte_carlo"``.
        record_every: Discrete steps between compared times (default: every step in exact mode, about 100
            times per run in Monte Carlo).
        diffusion, expectation, increments: Passed to :func:`sde_sam.sde_model` / :func:`sde_sam.simulate`.
        solver_check: Also integrate each model at ``dt / 2`` and report the difference (``solver_error``).
        chunk_size, max_norm: Passed to the runners.
        results_dir: Save each finished cell there (CSV, with ``config.json``) and resume from it.
        progress: Progress bar over cells (``None``: on a terminal, in Monte-Carlo mode).

    Returns:
        A :class:`WeakErrorStudy`.

    Example:
        >>> study = ss.weak_error(prob, ss.USAM(0.1, rho=0.1), lrs=[0.1, 0.05], horizon=1.0, x0=x0,
        ...                       rho=lambda lr: lr**0.5, sde_order=[0, 1])  # doctest: +SKIP
        >>> study.order("loss", "order 0").slope  # doctest: +SKIP
        0.5...
    """
    lrs, orders, rho = _check_arguments(problem, method, lrs=lrs, horizon=horizon, x0=x0, n_paths=n_paths,
                                        dt_ratio=dt_ratio, record_every=record_every, sde_order=sde_order,
                                        mode=mode, diffusion=diffusion, rho=rho)
    mode, tfs = _resolve_mode(problem, method, mode, _test_functions(problem, test_functions), lrs, rho)
    grid = []
    for lr in lrs:
        m = method.with_lr(lr) if rho is None else method.with_lr(lr).with_rho(float(rho(lr)) if callable(rho) else rho)
        steps = int(math.floor(horizon / lr + 1e-9))
        every = record_every or (1 if mode == "exact" else max(1, -(-steps // 100)))
        grid.append((lr, m, steps, min(every, steps)))
    labels = {model_label(o): o for o in orders}
    config = {"mode": mode, "method": {**method.describe(), "method": method.name}, "problem": _fingerprint(problem, x0),
              "x0": x0.detach().cpu().double().tolist(), "horizon": float(horizon), "lrs": lrs,
              "rho_spec": _describe_rho(lrs, [m.rho for _, m, *_ in grid]), "models": list(labels),
              "test_functions": list(tfs), "n_paths": n_paths if mode == "monte_carlo" else None,
              "seed": seed, "dt_ratio": dt_ratio, "record_every": record_every, "diffusion": diffusion,
              "expectation": expectation, "increments": increments, "solver_check": bool(solver_check),
              "max_norm": max_norm if math.isfinite(max_norm) else None}
    for key in ("lr", "rho"):  # per cell, not per study
        config["method"].pop(key, None)

    # The cells, in order: each lr's discrete run, then each model and its solver check.
    jobs = []
    for lr, m, steps, every in grid:
        jobs.append(("discrete", m, steps, every, None))
        for label, order in labels.items():
            jobs += [(label, m, steps, every, order)] + ([("solver " + label, m, steps, every, order)] if solver_check else [])
    opts = dict(problem=problem, x0=x0, tfs=tfs, n_paths=n_paths, seed=seed, dt_ratio=dt_ratio,
                diffusion=diffusion, expectation=expectation, increments=increments, chunk_size=chunk_size,
                max_norm=max_norm)
    show = progress if progress is not None else (mode == "monte_carlo" and sys.stderr.isatty())
    done, cells = _run_cells(jobs, _exact_cell if mode == "exact" else _mc_cell, opts,
                             _Store(results_dir, config), show, n_paths if mode == "monte_carlo" else None)
    table, solver = _assemble(grid, labels, done, solver_check, dt_ratio)
    study = WeakErrorStudy(table=table, solver_error=solver, cells=pd.DataFrame(cells), config=config, mode=mode)
    if results_dir is not None:
        study.save(results_dir)
    return study


def _check_arguments(problem, method, *, lrs, horizon, x0, n_paths, dt_ratio, record_every, sde_order, mode,
                     diffusion, rho) -> tuple[list[float], list, float | Callable | None]:
    """Validate at the public boundary; return the lrs as floats, the orders as a list, and rho."""
    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be an sde_sam Problem, got {type(problem).__name__}")
    if not isinstance(method, Method):
        raise TypeError(f"`method` must be an sde_sam Method (SGD, USAM, SAM, ...), got {type(method).__name__}")
    lrs = [_checks.positive("lrs", lr) for lr in (lrs if isinstance(lrs, (list, tuple, np.ndarray)) else [lrs])]
    if not lrs or len(set(lrs)) != len(lrs):
        raise ValueError(f"`lrs` must be a non-empty list of distinct learning rates, got lrs={lrs}")
    if _checks.positive("horizon", horizon) < max(lrs) * (1 - 1e-9):
        raise ValueError(f"`horizon` must be >= the largest lr (one step), got horizon={horizon}, lrs={lrs}")
    _checks.positive_int("n_paths", n_paths, minimum=2)
    if _checks.positive_int("dt_ratio", dt_ratio) < 2:
        warnings.warn(f"dt_ratio={dt_ratio}: with dt >= lr Euler–Maruyama of the SDE can coincide with the "
                      "discrete method in law, so the study proves nothing (MATH §4); use dt_ratio >= 2 (default 10)",
                      stacklevel=3)
    if record_every is not None:
        _checks.positive_int("record_every", record_every)
    orders = list(sde_order) if isinstance(sde_order, (list, tuple)) else [sde_order]
    if not orders or any(o not in ORDERS or isinstance(o, bool) for o in orders) or len(set(map(str, orders))) != len(orders):
        raise ValueError(f"`sde_order` must be one of {ORDERS} or a list of distinct ones, got sde_order={sde_order!r}")
    if mode not in ("auto", "exact", "monte_carlo"):
        raise ValueError(f"`mode` must be 'auto', 'exact' or 'monte_carlo', got mode={mode!r}")
    if diffusion not in ("factor", "paper"):
        raise ValueError(f"`diffusion` must be 'factor' or 'paper', got diffusion={diffusion!r}")
    if rho is not None and not callable(rho):
        rho = _checks.nonneg("rho", rho)
    if getattr(x0, "ndim", None) != 1:
        raise ValueError(f"`x0` must have shape (d,) (one start shared by every path), got {tuple(getattr(x0, 'shape', ()))}")
    d = problem.d if problem.d is not None else x0.shape[-1]
    _checks.state(x0, d=d, dtype=problem.dtype, device=problem.device, n_paths=1)
    return lrs, orders, rho


def _resolve_mode(problem, method, mode: str, tfs: dict, lrs, rho) -> tuple[str, dict]:
    """``"exact"`` or ``"monte_carlo"``, and the test functions that mode can evaluate."""
    why_not = _exact_applicable(problem, method)
    if mode == "exact" and why_not:
        raise ValueError(f"`mode='exact'` needs a linear-Gaussian case, but {why_not}")
    mode = ("monte_carlo" if why_not else "exact") if mode == "auto" else mode
    if mode == "monte_carlo":
        return mode, tfs
    _warn_unstable(problem, method, lrs, rho)
    dropped = [k for k in tfs if k not in EXACT_TEST_FUNCTIONS]
    if dropped:
        warnings.warn(f"exact mode has closed forms only for {EXACT_TEST_FUNCTIONS}; dropping test "
                      f"functions {dropped} (use mode='monte_carlo' to keep them)", stacklevel=3)
    tfs = {k: v for k, v in tfs.items() if k in EXACT_TEST_FUNCTIONS}
    if not tfs:
        raise ValueError(f"no test function left for exact mode; it supports {EXACT_TEST_FUNCTIONS}")
    return mode, tfs


def _run_cells(jobs, compute, opts: dict, store: "_Store", show: bool, n_paths: int | None):
    """Load or compute every cell in order (saving each as it finishes); a progress bar over cells."""
    done, cells = {}, []
    for kind, m, steps, every, order in tqdm(jobs, disable=not show, desc="weak error", unit="cell"):
        key = (kind, m.lr, m.rho)
        frame, source, t0 = store.get(key), "loaded", time.perf_counter()
        if frame is None:
            frame, source = compute(kind, m, steps, every, order, done, **opts), "computed"
            store.put(key, frame)
        done[key] = frame
        n_div = int(frame["n_diverged"].iloc[0]) if "n_diverged" in frame else 0
        if n_div and source == "computed":
            warnings.warn(f"{kind} at lr={m.lr:g}: {n_div} of {n_paths} paths diverged and are left out", stacklevel=3)
        cells.append({"kind": kind, "lr": m.lr, "rho": m.rho, "n_paths": n_paths, "n_diverged": n_div,
                      "seconds": time.perf_counter() - t0, "source": source})
    return done, cells


def _describe_rho(lrs: list[float], rhos: list[float]) -> str:
    """``"rho = 0.1"``, ``"rho = 0.5·lr^0.5"`` when the values follow a power law, else the list."""
    if len(set(rhos)) == 1:
        return f"rho = {rhos[0]:g}"
    if min(rhos) > 0 and len(lrs) > 1:
        p = math.log(rhos[0] / rhos[-1]) / math.log(lrs[0] / lrs[-1])
        c = rhos[0] / lrs[0] ** p
        if all(math.isclose(r, c * lr**p, rel_tol=1e-6) for lr, r in zip(lrs, rhos)):
            return f"rho = {c:.3g}·lr^{p:.3g}"
    return "rho = " + ", ".join(f"{r:.3g}" for r in rhos)


def _fingerprint(problem: Problem, x0: torch.Tensor) -> dict:
    """What identifies the problem for resuming: its repr and a hash of f, ∇f (and Σ) at two points."""
    probe = x0 + 0.1 * torch.arange(1, x0.shape[0] + 1, dtype=x0.dtype, device=x0.device).cos()
    xs = torch.stack([x0, probe])
    parts = [problem.loss(xs), problem.grad(xs)]
    if isinstance(problem, Objective):
        parts.append(problem.noise_cov)
    digest = hashlib.sha256(b"".join(p.detach().cpu().double().numpy().tobytes() for p in parts)).hexdigest()
    return {"repr": repr(problem), "hash": digest[:16]}


def _exact_cell(kind, m, steps, every, order, done, *, problem, x0, tfs, dt_ratio, diffusion, **_) -> pd.DataFrame:
    H = 0.5 * (problem.H + problem.H.T).detach().cpu().double().numpy()
    x = x0.detach().cpu().double().numpy()
    lr, names, eye = m.lr, list(tfs), np.eye(x0.shape[0])
    times = np.array(record_times(steps, every)) * lr
    if kind == "discrete":
        A, Q = _linear_model(problem, m.rho, 1, "factor")  # USAM's step: x - lr (A x + P Z), Cov(P Z) = Q
        ms, Cs = _linear_recursion(eye - lr * A, lr**2 * Q, x, record_times(steps, every))
        return _frame(times, _quad_expectations(names, H, ms, Cs), None)
    A, Q = _linear_model(problem, m.rho, order, diffusion)
    if kind.startswith("solver"):  # Euler–Maruyama's own moments at dt and dt/2: the solver error, exactly
        em = []
        for r in (dt_ratio, 2 * dt_ratio):
            ms, Cs = _linear_recursion(eye - lr / r * A, lr**2 / r * Q, x, record_times(steps * r, every * r))
            em.append(_quad_expectations(names, H, ms, Cs))
        return _frame(times, {k: em[0][k] - em[1][k] for k in names}, None)
    ms, Cs = _ou_moments(A, Q, lr, x, times)
    return _frame(times, _quad_expectations(names, H, ms, Cs), None)


def _mc_cell(kind, m, steps, every, order, done, *, problem, x0, tfs, n_paths, seed, dt_ratio, diffusion,
             expectation, increments, chunk_size, max_norm) -> pd.DataFrame:
    names, obs = list(tfs), list(tfs.values())
    common = dict(n_paths=n_paths, observables=obs, chunk_size=chunk_size, max_norm=max_norm, progress=False)
    if kind == "discrete":
        traj = run(problem, m, x0, steps=steps, record_every=every, seed=_seed(seed, m.lr, kind), **common)
        return _mc_frame(traj, names)
    from . import sde_model, simulate  # the SDE layer, imported when first needed

    label = model_label(order)
    sde = sde_model(problem, m, order=order, diffusion=diffusion, expectation=expectation)
    r = dt_ratio * (2 if kind.startswith("solver") else 1)
    traj = simulate(sde, x0, t1=steps * m.lr, dt=m.lr / r, record_every=every * r, seed=_seed(seed, m.lr, label),
                    increments=increments, **common)
    expected = np.array(record_times(steps, every)) * m.lr
    if len(traj.times) != len(expected) or not np.allclose(traj.times.numpy(), expected, rtol=1e-9, atol=0):
        raise RuntimeError(f"simulate recorded at times {traj.times.tolist()[:4]}..., expected t = k*lr = "
                           f"{expected.tolist()[:4]}...; cannot compare with the discrete method")
    frame = _mc_frame(traj, names)
    if not kind.startswith("solver"):
        return frame
    full = done[(label, m.lr, m.rho)]  # same seed at dt: its cell was computed (or loaded) just before
    return frame.assign(mean=full["mean"].to_numpy() - frame["mean"].to_numpy(),
                        se=np.hypot(full["se"].to_numpy(), frame["se"].to_numpy()))


def _assemble(grid, labels, done, solver_check: bool, dt_ratio: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The tidy table (discrete cell against each model cell, aligned on time) and the solver table."""
    rows, solver = [], []
    for lr, m, _, _ in grid:
        disc = done[("discrete", lr, m.rho)]
        for label in labels:
            sde = done[(label, lr, m.rho)]
            if len(sde) != len(disc) or not np.allclose(sde["time"], disc["time"], rtol=1e-9, atol=0):
                raise RuntimeError(f"discrete and {label} records at lr={lr} are not at the same times")
            gap = disc["mean"].to_numpy() - sde["mean"].to_numpy()
            rows.append(pd.DataFrame({
                "lr": lr, "rho": m.rho, "model": label, "test_function": disc["test_function"],
                "time": disc["time"], "discrete_mean": disc["mean"], "discrete_se": disc["se"],
                "sde_mean": sde["mean"].to_numpy(), "sde_se": sde["se"].to_numpy(), "gap": gap,
                "gap_se": np.hypot(disc["se"].to_numpy(), sde["se"].to_numpy())}))
            if solver_check:
                diff = done[("solver " + label, lr, m.rho)].assign(abs_gap=np.abs(gap))
                for tf, g in diff.groupby("test_function", sort=False):
                    i = g["mean"].abs().idxmax()
                    solver.append({"lr": lr, "rho": m.rho, "model": label, "test_function": tf,
                                   "dt": lr / dt_ratio, "max_abs_diff": abs(g.at[i, "mean"]),
                                   "diff_se": g.at[i, "se"], "max_gap": g["abs_gap"].max()})
    table = pd.concat(rows, ignore_index=True)[COLUMNS]
    if not solver_check:
        return table, None
    solver = pd.DataFrame(solver)
    return table, solver.assign(ratio=solver["max_abs_diff"] / solver["max_gap"])
