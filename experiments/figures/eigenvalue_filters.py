"""Eigenvalue filters (Bolte, Le & Pauwels): limits of converged runs, and runs started near a saddle. Drawn from
``results/eigenvalue_filters/`` only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sde_sam import plotting as pl

from experiments.figures._common import read_config, read_table


_FILTER_LABELS = {"GD": "GD", "HB": "heavy ball", "Nesterov": "Nesterov", "USAM": "USAM", "USAM+HB": "USAM\n+ heavy ball",
                  "TwoStepUSAM": "Two-step\nUSAM", "HessianUSAM": "Hessian\nUSAM"}
_FILTER_COLORS = dict(zip(("GD", "HB", "Nesterov", "USAM", "USAM+HB", "TwoStepUSAM", "HessianUSAM"),
                          ("#7f7f7f", "#1f77b4", "#17becf", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd")))
_STATUS_COLORS = {"minimum": "#4c9a2a", "saddle": "#d1495b", "not converged": "0.75", "diverged": "0.35"}


def eigenvalue_filters(results: Path, figs: Path) -> Path:
    cfg = read_config(results, "eigenvalue_filters")
    runs = read_table(results, "eigenvalue_filters", "runs")
    summ = read_table(results, "eigenvalue_filters", "summary")
    problems = list(dict.fromkeys(runs["problem"]))
    fig, axes = pl.figure(1, len(problems) + 1, width=4.6, height=3.6)
    rng = np.random.default_rng(0)
    for j, problem in enumerate(problems):
        ax = axes[j]
        d = runs[(runs["problem"] == problem) & (runs["study"] == "filter")]
        methods = list(dict.fromkeys(d["method"]))
        offset = 0
        if problem == "hyperbola":  # where gradient flow from the same starts would land: x²-y² is conserved
            s0 = d[d["method"] == methods[0]]
            gf = np.sqrt((s0["x_start"] ** 2 - s0["y_start"] ** 2) ** 2 + 4)
            ax.scatter(rng.uniform(-0.25, 0.25, len(gf)), gf, s=3, color="0.55", alpha=0.5, lw=0)
            offset = 1
        for i, method in enumerate(methods):
            pos = i + offset
            m = d[d["method"] == method]
            conv = m[m["status"].isin(["minimum", "saddle"])]
            edge = float(m["lambda_edge"].iloc[0])
            col = _FILTER_COLORS.get(method, "k")
            ax.add_patch(_rect(pos, edge, col))
            ax.plot([pos - 0.4, pos + 0.4], [edge, edge], color="k", lw=1.2)
            ax.scatter(pos + rng.uniform(-0.25, 0.25, len(conv)), conv["lambda_max"], s=3, color=col, lw=0, alpha=0.8)
            bad = int((conv["inside_filter"] == 0).sum())
            ax.text(pos, 0.02, f"{len(conv)}/{len(m)}" + (f"\n{bad} out" if bad else ""), transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=6)
        labels = (["gradient\nflow"] if offset else []) + [_FILTER_LABELS.get(mm, mm) for mm in methods]
        ax.set_xticks(range(len(labels)), labels, fontsize=6.5, rotation=0)
        top = max(d["lambda_max"].max(), d["lambda_edge"].max()) * 1.08
        ax.set(ylim=(0, top), xlim=(-0.6, len(labels) - 0.4), ylabel=r"top Hessian eigenvalue $\lambda_{\max}$ at the limit",
               title=_PROBLEM_TITLES.get(problem, problem)
               + f"\n$\\eta={cfg['lr']:g}$, $\\rho={cfg['rho']:g}$, $\\beta={cfg['beta']:g}$, {len(d) // len(methods)} starts")
        ax.grid(axis="x", visible=False)
    ax = axes[-1]
    sad = summ[summ["study"] == "saddle"]
    ylabels, left = [], None
    for k, (_, row) in enumerate(sad.iterrows()):
        y = len(sad) - 1 - k
        left = 0.0
        for status, col_name in (("minimum", "n_minimum"), ("saddle", "n_saddle"),
                                 ("not converged", "n_not_converged"), ("diverged", "n_diverged")):
            frac = row[col_name] / row["n_runs"]
            ax.barh(y, frac, left=left, color=_STATUS_COLORS[status], label=status if k == 0 else None, height=0.7)
            if frac >= 0.08:
                ax.text(left + frac / 2, y, f"{100 * frac:.0f}%", ha="center", va="center", fontsize=6,
                        color="white" if status in ("saddle", "diverged", "minimum") else "k")
            left += frac
        ylabels.append(f"{row['problem']}: {_FILTER_LABELS.get(row['method'], row['method']).replace(chr(10), ' ')}")
    ax.set_yticks(range(len(sad)), ylabels[::-1], fontsize=6.5)
    ax.set(xlim=(0, 1), xlabel="fraction of runs",
           title=f"Starts within {cfg['saddle_radius']:g} of the saddle\n$\\eta={cfg['saddle_lr']:g}$, "
                 f"$\\rho={cfg['saddle_rho']:g}$ ($\\rho|\\lambda|>1$ for every $\\lambda<0$ there)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4, fontsize=6.5, frameon=False)
    ax.grid(axis="y", visible=False)
    n_out = int(summ.loc[summ["study"] == "filter", "n_outside_filter"].sum())
    usam_sad = sad[sad["method"] == "USAM"]["frac_saddle"]
    var_sad = sad[sad["method"] != "USAM"]["frac_saddle"]
    pl.caption(fig, "Eigenvalue filters at convergence (Bolte, Le & Pauwels 2025), full batch. Left: top Hessian eigenvalue "
               "at each converged run (dots; converged/total below, diverged runs counted, not drawn) against its method's "
               f"filter $0\\leq a(\\lambda)\\leq B$ (shaded; black: its edge); grey: where gradient flow from the same "
               f"starts lands. Runs outside their filter: {n_out}. Right: from starts near the strict saddle, USAM stops "
               f"there in {100 * usam_sad.min():.0f}% of runs, Two-step and Hessian USAM in {100 * var_sad.max():.0f}%.")
    return pl.save(fig, figs / "eigenvalue_filters.png")


_PROBLEM_TITLES = {"hyperbola": r"$f(x,y)=\frac{1}{2}(xy-1)^2$ (minima: $xy=1$)",
                   "factorization": r"$f(U,V)=\frac{1}{2}\|UV^\top-M\|_F^2$, $U,V\in\mathbb{R}^{2\times2}$"}


def _rect(pos: float, edge: float, color):
    from matplotlib.patches import Rectangle
    return Rectangle((pos - 0.4, 0), 0.8, edge, color=color, alpha=0.18, lw=0, zorder=0)
