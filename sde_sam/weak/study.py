"""The study object: the tidy table, the selection-free gaps, the fitted orders, the summary, the figure."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import estimators as est
from . import order as order_mod
from .estimators import FLOOR, OrderFit
from .order import NEAR_FLOOR
from .storage import load_frames, save_study

MOSTLY_DIVERGED = 0.5
"""An lr where more than this fraction of some cell's paths diverged is left out of the fit (the survivors are
a selected sample: the gap they give is not the method's)."""


@dataclass(repr=False)
class WeakErrorStudy:
    """The outcome of :func:`~sde_sam.weak.weak_error`.

    Attributes:
        table: Tidy DataFrame, one row per (lr, model, test_function, time): ``lr, rho, model,
            test_function, time, discrete_mean, discrete_se, sde_mean, sde_se, gap, gap_se`` with
            ``gap = discrete - sde`` (its SE: root sum of squares of independent runs, or the SE of the
            per-path differences when coupled; 0 in exact mode), then ``gap_a, gap_se_a, gap_b, gap_se_b``,
            the same on each half of the paths (NaN in exact mode).
        solver_table: Per time, ``diff = sde(dt) - sde(dt/2)`` and its SE (``None`` without a solver check).
            Exact mode: the exact difference of Euler–Maruyama's moments. Monte Carlo: independent seeds,
            SE the root sum of squares; coupled: the difference of the two coupled gaps, with its SE.
        cells: One row per cell: kind, lr, rho, paths, diverged paths, seconds, loaded or computed.
        config: The study's configuration (what ``results_dir/config.json`` holds).
        mode: ``"exact"`` or ``"monte_carlo"``.
    """

    table: pd.DataFrame
    solver_table: pd.DataFrame | None
    cells: pd.DataFrame
    config: dict
    mode: str

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.table["model"]))

    @property
    def test_functions(self) -> list[str]:
        return list(dict.fromkeys(self.table["test_function"]))

    @property
    def lrs(self) -> list[float]:
        return list(dict.fromkeys(self.table["lr"]))

    @property
    def coupled(self) -> bool:
        return bool(self.config.get("coupling", False))

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
        """The max-over-time gap per (lr, model, test_function), over times t > 0.

        Monte Carlo: the cross-fitted gap (time chosen on one half of the paths, gap estimated on the other,
        both ways round; see :mod:`sde_sam.weak.estimators`) in ``gap`` with ``gap_se``; ``time`` and
        ``time_b`` the times chosen on each half; ``under_floor`` when ``gap < 3·gap_se``. Exact: the
        largest |gap| and its time. Also ``abs_gap = |gap|``, ``direction`` (sign of discrete − SDE at
        ``time``) and ``naive_max`` (the biased :math:`\\max_k|\\hat g_k|` on all paths, for reference).
        """
        key = (id(self.table), len(self.table))
        if getattr(self, "_gaps", (None,))[0] == key:  # the bootstrap SEs cost ~1 ms per point: computed once
            return self._gaps[1].copy()
        rows = []
        t = self.table[self.table["time"] > 0]
        for (lr, model, tf), g in t.groupby(["lr", "model", "test_function"], sort=False):
            times, gap = g["time"].to_numpy(), g["gap"].to_numpy()
            row = {"lr": lr, "model": model, "test_function": tf, "rho": g["rho"].iloc[0]}
            full = np.nan_to_num(np.abs(gap), nan=-1.0)
            if self.mode == "exact":
                k = int(np.argmax(full))
                row.update(time=times[k], time_b=times[k], gap=abs(gap[k]), gap_se=0.0)
            else:
                row.update(est.split_gap(times, *(g[c].to_numpy() for c in ("gap_a", "gap_se_a", "gap_b", "gap_se_b"))))
            k = int(np.argmin(np.abs(times - row["time"]))) if math.isfinite(row["time"]) else int(np.argmax(full))
            finite = math.isfinite(row["gap"]) and math.isfinite(gap[k])
            row.update(direction=float(np.sign(gap[k])) if finite else math.nan,
                       naive_max=float(np.nanmax(np.abs(gap))) if np.isfinite(gap).any() else math.nan)
            rows.append(row)
        out = pd.DataFrame(rows)
        out["abs_gap"] = out["gap"].abs()
        out["under_floor"] = False if self.mode == "exact" else ~(out["gap"] >= FLOOR * out["gap_se"])
        out = out[["lr", "model", "test_function", "rho", "time", "time_b", "gap", "gap_se", "abs_gap",
                   "under_floor", "direction", "naive_max"]]
        self._gaps = (key, out)
        return out.copy()

    @property
    def unstable_lrs(self) -> list[float]:
        """Exact mode: the lrs where the discrete recursion is unstable (spectral radius > 1), left out of fits."""
        return list(self.table.attrs.get("unstable_lrs", self.config.get("unstable_lrs") or []))

    def survival(self) -> pd.DataFrame:
        """Paths per cell that survived (did not diverge): ``kind, lr, n_paths, n_diverged, n_survived`` and
        ``mostly_diverged`` (more than half of the paths lost). Exact mode has no paths: empty."""
        cols = ["kind", "lr", "n_paths", "n_diverged", "n_survived", "mostly_diverged"]
        c = self.cells
        if self.mode == "exact" or not {"n_paths", "n_diverged"} <= set(c.columns) or not len(c):
            return pd.DataFrame(columns=cols)
        n = pd.to_numeric(c["n_paths"], errors="coerce").fillna(self.config.get("n_paths") or 0).astype(int)
        lost = pd.to_numeric(c["n_diverged"], errors="coerce").fillna(0).astype(int)
        out = pd.DataFrame({"kind": c["kind"], "lr": c["lr"].astype(float), "n_paths": n, "n_diverged": lost,
                            "n_survived": n - lost})
        return out.assign(mostly_diverged=out["n_diverged"] > MOSTLY_DIVERGED * out["n_paths"])[cols]

    def _excluded(self, pts: pd.DataFrame, model: str) -> dict[float, str]:
        """lr -> why it is left out of the fit: most paths of a cell it needs diverged, or no gap at all."""
        surv = self.survival()
        kinds = {model} | (set() if self.coupled else {"discrete"})
        out = {lr: "unstable: the discrete method's moments diverge at this lr (exact recursion)"
               for lr in pts["lr"] if lr in self.unstable_lrs}
        for lr, gap in zip(pts["lr"], pts["gap"]):
            if lr in out:
                continue
            cells = surv[np.isclose(surv["lr"], lr, rtol=1e-12, atol=0) & surv["kind"].isin(kinds)]
            bad = cells[cells["mostly_diverged"]]
            if len(bad):
                out[lr] = "most paths diverged (" + ", ".join(
                    f"{k}: {s:,} of {n:,} survived" for k, s, n in zip(bad["kind"], bad["n_survived"], bad["n_paths"])) + ")"
            elif not math.isfinite(gap):
                out[lr] = "no gap (no finite estimate on the surviving paths)"
        return out

    def _points(self, test_fn: str, model: str | None, lrs) -> tuple[pd.DataFrame, str, str, tuple]:
        """The per-lr gaps a fit uses (lrs left out with their reasons), refusing below the floor."""
        test_fn, model = self._test_fn(test_fn), self._model(model)
        pts = self.max_gaps()
        pts = pts[(pts["model"] == model) & (pts["test_function"] == test_fn)]
        if lrs is not None:
            pts = pts[np.isin(pts["lr"].to_numpy(), np.asarray(lrs, dtype=float))]
        excluded = self._excluded(pts, model)
        pts = pts[~pts["lr"].isin(list(excluded))].reset_index(drop=True)
        if len(pts) < 2:
            why = "".join(f"; lr={lr:g} left out: {r}" for lr, r in excluded.items())
            raise ValueError(f"a slope needs at least 2 learning rates, got {len(pts)} for {model}, {test_fn}{why}")
        if self.mode == "exact" and (pts["abs_gap"] == 0).any():
            raise ValueError(f"the gap of {model} on {test_fn} is exactly 0 at lr="
                             f"{pts.loc[pts['abs_gap'] == 0, 'lr'].tolist()}: no order to fit")
        if self.mode != "exact" and pts["under_floor"].any():
            raise est.floor_error(pts, test_fn, model, int(self.config["n_paths"]))
        return pts, test_fn, model, tuple(excluded.items())

    def _fit(self, test_fn, model, lrs, which: str) -> OrderFit:
        pts, test_fn, model, excluded = self._points(test_fn, model, lrs)
        x, y = np.log(pts["lr"].to_numpy()), np.log(pts["gap"].to_numpy())
        if self.mode == "exact":
            return OrderFit(test_fn, model, fit="exact", points=pts, excluded=excluded, **est.fit_exact(x, y))
        sigma = (pts["gap_se"] / pts["gap"]).to_numpy()
        near = tuple(float(lr) for lr in pts.loc[pts["gap"] < NEAR_FLOOR * pts["gap_se"], "lr"])
        if which == "order":
            fit = order_mod.fit_order(x, y, sigma)
        else:
            flag, ratio = order_mod.pre_asymptotic(x, y, sigma)
            fit = {**est.fit_wls(x, y, sigma), "local_slopes": order_mod.local_slopes(x, y, sigma),
                   "pre_asymptotic": flag, "local_chi2": ratio, "targets": "secant"}
            fit["note"] += "; the grid's secant slope (the order only if the points are asymptotic)"
        kind = "corrected" if fit.get("corrections") else "wls"
        return OrderFit(test_fn, model, fit=kind, points=pts, near_floor=near, excluded=excluded, **fit)

    def weak_order(self, test_fn: str, model: str | None = None, *, lrs: Sequence[float] | None = None) -> OrderFit:
        r"""The weak order :math:`p` in the learning rate of ``model`` on ``test_fn`` (MATH §5,
        :mod:`sde_sam.weak.order`): :math:`\max_k|\mathbb E\,g(x_k) - \mathbb E\,g(X_{k\eta})| \approx C\eta^p`.
        Not the SDE model's order (``"order 1"``, ``sde_model(order=...)``): ``model`` selects that one.

        Monte Carlo with 4 or more lrs: weighted least squares of :math:`\log\hat G` on :math:`\log\eta` with a
        correction term :math:`D\eta` (and the spread to a second one when the data resolve it), so that the 95%
        interval targets :math:`p`, not the grid's secant (``fit == "corrected"``, ``targets == "order"``). With 2
        or 3 lrs: the secant (:meth:`secant`), marked as such. Always: the local slopes between consecutive lrs
        with their CIs, the ``pre_asymptotic`` flag, the lrs whose gap is below 5 SEs (``near_floor``: the
        slope is biased low there) and the lrs left out because most paths diverged (``excluded``). Exact: OLS
        through the exact points, local slopes, no interval.

        Args:
            test_fn: A test function of the study.
            model: A model label (``"order 1"``); optional when the study has one model.
            lrs: Restrict the fit to these learning rates.

        Raises:
            MonteCarloFloorError: Some point's gap is below 3 standard errors; the message says how many
                paths would lift it above (SE scales as :math:`1/\sqrt{n}`: :math:`n\,(3\,\mathrm{se}/g)^2`).
        """
        return self._fit(test_fn, model, lrs, "order")

    def order(self, test_fn: str, model: str | None = None, *, lrs: Sequence[float] | None = None) -> OrderFit:
        """Deprecated name of :meth:`weak_order` (``order`` also names the SDE model's order); removed in the next
        release."""
        warnings.warn("WeakErrorStudy.order is deprecated and will be removed in the next release; use "
                      "WeakErrorStudy.weak_order (the weak order in the learning rate)", DeprecationWarning,
                      stacklevel=2)
        return self.weak_order(test_fn, model, lrs=lrs)

    def secant(self, test_fn: str, model: str | None = None, *, lrs: Sequence[float] | None = None) -> OrderFit:
        r"""The grid's secant slope: weighted least squares of :math:`\log\hat G` on :math:`\log\eta` with the
        delta-method SEs and the interval ``slope ± 1.96·se·max(1, √(χ²/(m−2)))`` (what :meth:`weak_order`
        reported before it targeted the order). It equals the order only when the points are asymptotic
        (``pre_asymptotic`` false). Same refusals as :meth:`weak_order`."""
        return self._fit(test_fn, model, lrs, "secant")

    def relative(self, test_fn: str) -> pd.DataFrame:
        r"""The SAM-SDE paper's statistic :math:`\max_k|\bar\phi_d - \bar\phi_s| / \mathrm{mean}_k|\bar\phi_d|`
        per (lr, model): columns ``lr, rho, model, relative_error`` (a maximum over times: biased upward in
        Monte Carlo, as the paper's)."""
        t = self.table[self.table["test_function"] == self._test_fn(test_fn)]
        g = t.groupby(["lr", "model"], sort=False)
        out = pd.DataFrame({"rho": g["rho"].first(), "relative_error": g["gap"].apply(lambda s: s.abs().max())
                            / g["discrete_mean"].apply(lambda s: s.abs().mean())})
        return out.reset_index()[["lr", "rho", "model", "relative_error"]]

    @property
    def solver_error(self) -> pd.DataFrame | None:
        """Per (lr, model, test_function): the time of the largest ``|sde(dt) - sde(dt/2)|`` (t > 0), its
        value ``max_abs_diff`` and SE ``diff_se``, the largest |gap| ``max_gap`` and ``ratio`` of the two."""
        if self.solver_table is None:
            return None
        rows = []
        gaps = self.table[self.table["time"] > 0].groupby(["lr", "model", "test_function"], sort=False)["gap"]
        biggest = gaps.apply(lambda s: s.abs().max())
        s = self.solver_table[self.solver_table["time"] > 0]
        for (lr, model, tf), g in s.groupby(["lr", "model", "test_function"], sort=False):
            i = g["diff"].abs().idxmax()
            rows.append({"lr": lr, "rho": g.at[i, "rho"], "model": model, "test_function": tf, "dt": g.at[i, "dt"],
                         "time": g.at[i, "time"], "max_abs_diff": abs(g.at[i, "diff"]), "diff_se": g.at[i, "diff_se"],
                         "max_gap": biggest[(lr, model, tf)]})
        out = pd.DataFrame(rows)
        return out.assign(ratio=out["max_abs_diff"] / out["max_gap"])

    def summary(self) -> str:
        """A printable report: the gap ± SE per (lr, model, test function), the paths that survived, and per model
        the order (which estimate, what it targets, its flags) and the secant slope."""
        pts = self.max_gaps()
        how = ("exact moments; n_paths not used" if self.mode == "exact" else
               f"Monte Carlo, {self.config['n_paths']:,} paths, {'coupled' if self.coupled else 'independent'} runs; "
               "gap: time chosen on one half of the paths, estimated on the other, SE with the selection repeated")
        lines = [f"weak error of {self.config['method']['method']} ({how}), horizon {self.config['horizon']:g}"]
        lines += self._survival_lines()
        if len(self.lrs) < 2:
            lines.append("one learning rate: a slope needs at least two (the gaps below are still valid)")
        for tf in self.test_functions:
            lines.append(f"\n{tf}:")
            for _, r in pts[pts["test_function"] == tf].iterrows():
                lines.append(self._gap_line(r))
            if len(self.lrs) < 2:
                continue
            for m in self.models:
                lines += self._fit_lines(tf, m)
        se = self.solver_error
        if se is not None and np.isfinite(se["ratio"]).any():
            line = (f"\nsolver error, max over time of |sde(dt) - sde(dt/2)|: at most {se['ratio'].max():.2g} "
                    f"× the max gap")
            if self.mode != "exact":
                line += f" (Monte-Carlo noise included: the largest is {(se['max_abs_diff'] / se['diff_se']).max():.1f} SE)"
            lines.append(line)
        return "\n".join(lines)

    def _gap_line(self, r) -> str:
        head = f"  lr={r['lr']:<8.4g} rho={r['rho']:<8.4g} {r['model']:<8} "
        if not math.isfinite(r["gap"]):
            return head + "no gap: no finite estimate (see the surviving paths above)"
        if r["lr"] in self.unstable_lrs:
            return head + f"unstable: the discrete method's moments diverge (gap {r['gap']:.3g} not a weak error)"
        se = "(exact)" if self.mode == "exact" else f"± {r['gap_se']:.1e}"
        flag = "  [below MC floor]" if r["under_floor"] else (
            f"  [{r['gap'] / r['gap_se']:.1f} SE: near the floor]"
            if self.mode != "exact" and r["gap"] < NEAR_FLOOR * r["gap_se"] else "")
        side = "" if not r["direction"] or not math.isfinite(r["direction"]) else (
            ", discrete above SDE" if r["direction"] > 0 else ", discrete below SDE")
        return head + f"max gap {r['gap']:.4e} {se} at t={r['time']:.3g}{side}{flag}"

    def _survival_lines(self) -> list[str]:
        surv = self.survival()
        if not len(surv) or not surv["n_diverged"].any():
            return [] if self.mode == "exact" else ["all paths survived at every lr"]
        out = ["paths that survived (diverged paths are left out of the means):"]
        for lr, g in surv.groupby("lr", sort=False):
            cells = ", ".join(f"{k} {s:,}/{n:,}" for k, s, n in zip(g["kind"], g["n_survived"], g["n_paths"]))
            mark = "  [most paths diverged: left out of the fit]" if g["mostly_diverged"].any() else ""
            out.append(f"  lr={lr:<8.4g} {cells}{mark}")
        return out

    def _fit_lines(self, tf: str, m: str) -> list[str]:
        try:
            fit = self.weak_order(tf, m)
        except ValueError as err:
            return [f"  fit: {m}: no slope: {err}"]
        lines = [f"  fit: {fit}"]
        if fit.fit != "exact":
            lines.append(f"       ({fit.note})")
            local = "; ".join(f"{a:g}→{b:g}: {s:.3f} [{lo:.3f}, {hi:.3f}]" for a, b, s, lo, hi in fit.local_slopes[
                ["lr_high", "lr_low", "slope", "ci_low", "ci_high"]].itertuples(index=False))
            lines.append(f"       local slopes (95% CI): {local}")
            if fit.targets == "order":
                sec = self.secant(tf, m)
                lines.append(f"       secant slope over the grid: {sec.slope:.3f} [{sec.ci_low:.3f}, {sec.ci_high:.3f}]")
        return lines

    def __repr__(self) -> str:
        how = "exact" if self.mode == "exact" else (
            f"monte_carlo, n_paths={self.config['n_paths']}" + (", coupled" if self.coupled else ""))
        lrs = ", ".join(f"{lr:g}" for lr in self.lrs)
        return (f"WeakErrorStudy({self.config['method']['method']}, {how}, lrs=[{lrs}], models={self.models}, "
                f"test_functions={self.test_functions}, horizon={self.config['horizon']:g})")

    def plot(self, test_fns: Sequence[str] | None = None):
        """Log-log figure of the gap against lr (see :func:`sde_sam.weak.figure.plot_study`)."""
        from .figure import plot_study

        return plot_study(self, self.test_functions if test_fns is None else [self._test_fn(t) for t in test_fns])

    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, ``table.csv``, ``cells.csv`` (and the solver tables) to ``directory``."""
        save_study(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> "WeakErrorStudy":
        """Read a study written by :meth:`save`, every float exactly as saved (figures redraw without a rerun)."""
        return cls(**load_frames(directory))
