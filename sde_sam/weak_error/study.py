"""The study object: the tidy table, the selection-free gaps, the fitted orders, the summary, the figure."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import estimators as est
from .estimators import FLOOR, OrderFit
from .storage import load_frames, save_study


@dataclass(repr=False)
class WeakErrorStudy:
    """The outcome of :func:`~sde_sam.weak_error.weak_error`.

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
        both ways round; see :mod:`sde_sam.weak_error.estimators`) in ``gap`` with ``gap_se``; ``time`` and
        ``time_b`` the times chosen on each half; ``under_floor`` when ``gap < 3·gap_se``. Exact: the
        largest |gap| and its time. Also ``abs_gap = |gap|``, ``direction`` (sign of discrete − SDE at
        ``time``) and ``naive_max`` (the biased :math:`\\max_k|\\hat g_k|` on all paths, for reference).
        """
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
            row.update(direction=float(np.sign(gap[k])), naive_max=float(np.nanmax(np.abs(gap))))
            rows.append(row)
        out = pd.DataFrame(rows)
        out["abs_gap"] = out["gap"].abs()
        out["under_floor"] = False if self.mode == "exact" else ~(out["gap"] >= FLOOR * out["gap_se"])
        return out[["lr", "model", "test_function", "rho", "time", "time_b", "gap", "gap_se", "abs_gap",
                    "under_floor", "direction", "naive_max"]]

    def order(self, test_fn: str, model: str | None = None, *, lrs: Sequence[float] | None = None) -> OrderFit:
        r"""Fit the weak order: slope of :math:`\log\hat G` against :math:`\log\eta` (MATH §5).

        Monte Carlo: weighted least squares with the delta-method SEs and the 95% interval
        ``slope ± 1.96·se·max(1, √(χ²/(m−2)))`` (see :mod:`sde_sam.weak_error.estimators`). Exact: OLS through
        the exact points, local slopes between consecutive lrs, no interval.

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
        if self.mode == "exact" and (pts["abs_gap"] == 0).any():
            raise ValueError(f"the gap of {model} on {test_fn} is exactly 0 at lr="
                             f"{pts.loc[pts['abs_gap'] == 0, 'lr'].tolist()}: no order to fit")
        if self.mode != "exact" and pts["under_floor"].any():
            raise est.floor_error(pts, test_fn, model, int(self.config["n_paths"]))
        x, y = np.log(pts["lr"].to_numpy()), np.log(pts["gap"].to_numpy())
        if self.mode == "exact":
            fit, kind = est.fit_exact(x, y), "exact"
        else:
            fit, kind = est.fit_wls(x, y, (pts["gap_se"] / pts["gap"]).to_numpy()), "wls"
        return OrderFit(test_fn, model, fit=kind, points=pts, **fit)

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
        """A printable report: the gap ± SE per (lr, model, test function) and the fitted orders."""
        pts = self.max_gaps()
        how = ("exact moments; n_paths not used" if self.mode == "exact" else
               f"Monte Carlo, {self.config['n_paths']:,} paths, {'coupled' if self.coupled else 'independent'} runs; "
               "gap: time chosen on one half of the paths, estimated on the other")
        lines = [f"weak error of {self.config['method']['method']} ({how}), horizon {self.config['horizon']:g}"]
        if len(self.lrs) < 2:
            lines.append("one learning rate: a slope needs at least two (the gaps below are still valid)")
        for tf in self.test_functions:
            lines.append(f"\n{tf}:")
            for _, r in pts[pts["test_function"] == tf].iterrows():
                se = "(exact)" if self.mode == "exact" else f"± {r['gap_se']:.1e}"
                flag = "  [below MC floor]" if r["under_floor"] else ""
                side = "" if r["direction"] == 0 else (", discrete above SDE" if r["direction"] > 0
                                                       else ", discrete below SDE")
                lines.append(f"  lr={r['lr']:<8.4g} rho={r['rho']:<8.4g} {r['model']:<8} "
                             f"max gap {r['gap']:.4e} {se} at t={r['time']:.3g}{side}{flag}")
            if len(self.lrs) < 2:
                continue
            for m in self.models:
                try:
                    lines.append(f"  fit: {self.order(tf, m)}")
                except ValueError as err:
                    lines.append(f"  fit: {m}: no slope: {err}")
        se = self.solver_error
        if se is not None:
            line = (f"\nsolver error, max over time of |sde(dt) - sde(dt/2)|: at most {se['ratio'].max():.2g} "
                    f"× the max gap")
            if self.mode != "exact":
                line += f" (Monte-Carlo noise included: the largest is {(se['max_abs_diff'] / se['diff_se']).max():.1f} SE)"
            lines.append(line)
        return "\n".join(lines)

    def __repr__(self) -> str:
        how = "exact" if self.mode == "exact" else (
            f"monte_carlo, n_paths={self.config['n_paths']}" + (", coupled" if self.coupled else ""))
        lrs = ", ".join(f"{lr:g}" for lr in self.lrs)
        return (f"WeakErrorStudy({self.config['method']['method']}, {how}, lrs=[{lrs}], models={self.models}, "
                f"test_functions={self.test_functions}, horizon={self.config['horizon']:g})")

    def plot(self, test_fns: Sequence[str] | None = None):
        """Log-log figure of the gap against lr (see :func:`sde_sam.weak_error.figure.plot_study`)."""
        from .figure import plot_study

        return plot_study(self, self.test_functions if test_fns is None else [self._test_fn(t) for t in test_fns])

    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, ``table.csv``, ``cells.csv`` (and the solver tables) to ``directory``."""
        save_study(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> "WeakErrorStudy":
        """Read a study written by :meth:`save`, every float exactly as saved (figures redraw without a rerun)."""
        return cls(**load_frames(directory))
