"""Weak error of every method against its SDEs: max-over-time gaps and fitted slopes. Drawn from
``results/weak_error_all/`` only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sde_sam import plotting as pl

from experiments.figures._common import read_config, read_table


def _slope_range(fits: pd.DataFrame, test_function: str, model: str) -> str:
    f = fits[(fits["test_function"] == test_function) & (fits["model"] == model)]["slope"].dropna()
    return f"{f.min():.2f} to {f.max():.2f}" if len(f) else "n/a"


def _floor_note(gaps: pd.DataFrame, test_function: str) -> str:
    """Which (method, model) have points under the Monte-Carlo floor, read from the points themselves (the fits'
    labels name the estimator, e.g. "corrected", and say nothing about the floor)."""
    g = gaps[(gaps["test_function"] == test_function) & (gaps["mode"] != "exact") & gaps["under_floor"].astype(bool)]
    if not len(g):
        return ""
    which = ", ".join(f"{m} {model} at lr = {', '.join(f'{lr:g}' for lr in d['lr'])}"
                      for (m, model), d in g.groupby(["method", "model"], sort=False))
    return f" Hollow points ({which}): under the Monte-Carlo floor, not fitted."


# -- 6. weak error ---------------------------------------------------------------------------------------------
def weak_error(results: Path, figs: Path, test_function: str = "loss") -> Path:
    cfg = read_config(results, "weak_error_all")
    gaps = read_table(results, "weak_error_all", "max_gaps")
    fits = read_table(results, "weak_error_all", "fits")
    methods = list(dict.fromkeys(gaps["method"]))
    ncols = min(3, len(methods))
    nrows = -(-len(methods) // ncols)
    fig, axes = pl.figure(nrows, ncols, width=2.9, height=2.5, sharex=True)
    axes = np.asarray(axes).reshape(-1)
    model_colors = pl.MODEL_COLORS
    from matplotlib.ticker import NullFormatter

    for ax, method in zip(axes, methods):
        sub = gaps[(gaps["method"] == method) & (gaps["test_function"] == test_function)]
        mode = sub["mode"].iloc[0]
        lr = np.geomspace(sub["lr"].min(), sub["lr"].max(), 20)
        notes = []
        for model, d in sub.groupby("model", sort=False):
            col = model_colors.get(model, "0.3")
            floor = d["under_floor"].astype(bool) & (mode != "exact")
            ax.errorbar(d["lr"], d["abs_gap"], yerr=1.96 * d["gap_se"], fmt="none", ecolor=col, capsize=2)
            ax.plot(d["lr"][~floor], d["abs_gap"][~floor], "o", color=col, ms=4)
            ax.plot(d["lr"][floor], d["abs_gap"][floor], "o", mfc="white", mec=col, ms=4,
                    label="below the Monte-Carlo floor (< 3 SE): not fitted" if floor.any() else None)
            f = fits[(fits["method"] == method) & (fits["model"] == model) & (fits["test_function"] == test_function)]
            if len(f) and np.isfinite(f["slope"].iloc[0]):
                f = f.iloc[0]
                x0 = np.exp(np.log(d["lr"]).mean())
                y0 = np.exp(f["intercept"]) * x0 ** f["slope"]  # the fitted line through log-mean lr
                pl.slope_guide(ax, lr, (x0, y0), f["slope"], color=col, label=f"SDE {model}: fitted line")
                ci = ("(exact)" if f["fit"] == "exact" or not np.isfinite(f["ci_low"])
                      else f"[{f['ci_low']:.2f}, {f['ci_high']:.2f}]" if f["n_lrs"] > 2 else "(2 points)")
                notes.append(f"{model}: slope {f['slope']:.2f} {ci}")
            else:
                notes.append(f"{model}: slope refused (MC floor)")
        top = sub[sub["lr"] == sub["lr"].max()]["abs_gap"].max()
        pl.slope_guide(ax, lr, (lr.max(), top * 1.6), 1.0, ls="-", label="reference slope 1", color="0.7")
        pl.slope_guide(ax, lr, (lr.max(), top * 1.6), 0.5, ls=":", label="reference slope 1/2", color="0.7")
        pl.annotate(ax, "\n".join(notes), loc="upper left", fontsize=6)
        ax.set(xscale="log", yscale="log", title=f"{method} ({'exact moments' if mode == 'exact' else 'Monte Carlo'})",
               xlabel=r"learning rate $\eta$",
               ylabel=r"$\max_k|\mathbb{E}f(x_k)-\mathbb{E}f(X_{k\eta})|$")
        lo, hi = sub["abs_gap"].min(), max(top * 1.6, sub["abs_gap"].max())
        ax.set_ylim(lo / 1.8, hi * 3.5)  # head room for the slope note
        ax.set_xticks(sorted(sub["lr"].unique()), [f"{v:g}" for v in sorted(sub["lr"].unique())])
        ax.xaxis.set_minor_formatter(NullFormatter())
    pl.figure_legend(fig, axes, ncol=3)
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    pl.caption(fig, f"Weak error of every method against its order-0 and order-1 SDEs on the quadratic "
               f"$f=\\frac{{1}}{{2}}x^\\top Hx$, $H=\\mathrm{{diag}}{tuple(cfg['eigenvalues'])}$, $\\sigma^2={cfg['noise_cov']:g}$, "
               f"$\\rho={cfg['rho_coef']:g}\\sqrt{{\\eta}}$, $T={cfg['horizon']:g}$, {cfg['n_paths']} paths per Monte-Carlo "
               f"point (bars: 95% CI; SGD and USAM exact). First-order SDEs: slopes "
               f"{_slope_range(fits, test_function, 'order 1')}; the SGD SDE: {_slope_range(fits, test_function, 'order 0')} "
               f"(½ asymptotically)." + _floor_note(gaps, test_function))
    return pl.save(fig, figs / "weak_error.png")
