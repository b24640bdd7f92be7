r"""Saddle attraction: the distance to the saddle over time, and the escape probability over $(\rho,\eta)$. Drawn
from ``results/saddle_attraction/`` only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sde_sam import plotting as pl

from experiments.figures._common import read_config, read_table


def saddle_attraction(results: Path, figs: Path) -> Path:
    cfg = read_config(results, "saddle_attraction")
    dist = read_table(results, "saddle_attraction", "distance")
    problems = list(dict.fromkeys(dist["problem"]))
    rhos = sorted(dist["rho"].unique())
    names = {"quadratic": r"quadratic saddle $\frac{1}{2}(x_1^2-x_2^2)$",
             "nonconvex": r"non-convex $\frac{1}{2}(x_1^2-x_2^2)+\frac{x_2^4}{4s^2}$"}
    fig, axes = pl.figure(len(problems), len(rhos), width=3.6, height=2.7, sharey="row")
    axes = np.asarray(axes).reshape(len(problems), len(rhos))
    for i, prob in enumerate(problems):
        for j, rho in enumerate(rhos):
            ax = axes[i, j]
            sub = dist[(dist["problem"] == prob) & (dist["rho"] == rho)]
            for (method, kind), d in sub.groupby(["method", "kind"], sort=False):
                pl.band(ax, d["time"], d["q50"], d["q25"], d["q75"], color=pl.color(method),
                        ls=pl.MODEL_STYLES[kind], label=f"{method} ({'order-1 SDE' if kind == 'sde' else 'discrete'})",
                        alpha=0.12 if kind == "sde" else 0.2)
            pl.theory_line(ax, y=rho, ls=":", label=r"$\|Hx\|=\rho|\lambda|$: SAM/DNSAM flow attracts below")
            if prob == "nonconvex":
                pl.theory_line(ax, y=cfg["well"], label=r"the minima, $|x_2|=s$", color="0.55", ls="-.")
            ax.set(yscale="log", xlabel=r"time $t=k\eta$" if i == len(problems) - 1 else None,
                   ylabel=r"distance to saddle $\|x_t\|$" if j == 0 else None,
                   title=rf"{names.get(prob, prob)}, $\rho={rho:g}$" + "\n"
                         + rf"(USAM flow {'attracted' if rho > 1 else 'repelled'}: $\rho|\lambda|{'>' if rho > 1 else '<'}1$)")
    pl.figure_legend(fig, axes)
    pl.caption(fig, f"Saddle attraction: median distance to the saddle (bands: interquartile range), discrete "
               f"(solid) vs order-1 SDE (dashed), $\\sigma^2={cfg['noise_cov']:g}$, $\\eta={cfg['lr']:g}$, "
               f"$x_0={tuple(cfg['x0'])}$; bottom: minima at $|x_2|=s={cfg['well']:g}$.")
    return pl.save(fig, figs / "saddle_attraction.png")


def saddle_escape(results: Path, figs: Path) -> Path:
    from matplotlib import patheffects

    cfg = read_config(results, "saddle_attraction")
    esc = read_table(results, "saddle_attraction", "escape")
    kinds = [k for k in ("discrete", "sde") if k in set(esc["kind"])]
    methods = list(dict.fromkeys(esc["method"]))
    fig, axes = pl.figure(len(kinds), len(methods), width=3.0, height=2.3, sharex=True, sharey=True)
    axes = np.asarray(axes).reshape(len(kinds), len(methods))
    all_lrs, all_rhos = sorted(esc["lr"].unique()), sorted(esc["rho"].unique())  # one grid, both rows
    lr_edges = pl.log_edges(all_lrs)
    g_x0, g_noise = float(esc["grad_norm_x0"].iloc[0]), float(esc["grad_norm_noise"].iloc[0])
    outline = [patheffects.withStroke(linewidth=1.2, foreground="black")]
    mesh = None
    for i, kind in enumerate(kinds):
        for j, method in enumerate(methods):
            ax = axes[i, j]
            sub = esc[(esc["kind"] == kind) & (esc["method"] == method)]
            grid = sub.pivot_table(index="lr", columns="rho", values="p_escape", dropna=False)
            grid = grid.reindex(index=all_lrs, columns=all_rhos)
            mesh = ax.pcolormesh(pl.log_edges(all_rhos), lr_edges, np.ma.masked_invalid(grid.to_numpy()),
                                 cmap="viridis", vmin=0, vmax=1, shading="flat")
            annotate_cells = grid.shape[1] <= 6  # numbers only where they fit
            for (lr, rho), p in (sub.set_index(["lr", "rho"])["p_escape"].items() if annotate_cells else ()):
                ax.text(rho, lr, f"{p:.2f}" if np.isfinite(p) else "div", ha="center", va="center", fontsize=5.5,
                        color="white", path_effects=outline)
            if method == "USAM":
                pl.theory_line(ax, x=1.0, color="red", ls="--", lw=1.3, label=r"USAM flow: $\rho|\lambda|=1$")
                lrs = np.geomspace(grid.index.min() * 0.8, grid.index.max() * 1.25, 50)
                upper = 1 + 2 / lrs  # discrete: 0 <= rho - 1 <= 2/lr along lambda = -1
                if upper.min() < grid.columns.max():
                    pl.theory_line(ax, x=upper, y=lrs, color="red", ls=":", label=r"discrete USAM: $\rho=1+2/\eta$")
            if method in ("SAM", "DNSAM"):
                pl.theory_line(ax, x=g_x0, color="magenta", ls="--", lw=1.3,
                               label=rf"SAM/DNSAM flow at start: $\rho|\lambda|=\|Hx_0\|={g_x0:g}$")
                pl.theory_line(ax, x=g_noise, color="orange", ls="--", lw=1.3,
                               label=rf"at the noise level: $\rho|\lambda|=\mathbb{{E}}\|\nabla f_\gamma(0)\|={g_noise:.3g}$")
            ax.set(xscale="log", yscale="log", xlabel=r"radius $\rho$" if i == len(kinds) - 1 else None,
                   ylabel=r"learning rate $\eta$" if j == 0 else None,
                   title=f"{method}, {'discrete' if kind == 'discrete' else 'order-1 SDE'}")
            ax.grid(False)
    fig.colorbar(mesh, ax=axes, shrink=0.8, label=r"P(escaped): $|x_2(T)|>s/2$")
    pl.figure_legend(fig, axes, ncol=2)
    pl.caption(fig, f"Saddle escape on the non-convex model $f=\\frac{{1}}{{2}}(x_1^2-x_2^2)+x_2^4/(4s^2)$, "
               f"$s={cfg['well']:g}$: fraction of runs with $|x_2(T)|>s/2$ at $T={cfg['grid_horizon']:g}$ "
               f"($\\sigma^2={cfg['noise_cov']:g}$, $x_0={tuple(cfg['x0'])}$), discrete methods (top) and their "
               f"order-1 SDEs (bottom) over the same $(\\rho,\\eta)$ grid; lines: the theory's boundaries.")
    return pl.save(fig, figs / "saddle_escape.png")
