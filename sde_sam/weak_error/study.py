"""The study object: the tidy table, the max-over-time gaps, the fitted orders, the summary and figure."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .estimators import FLOOR, MonteCarloFloorError, OrderFit, _fit_line


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

