"""Draw every paper figure from saved results only (``results/<study>/*.csv``), one PNG per figure.

    python paper_figs/make_figures.py [--results results] [--figs paper_figs] [--only study ...]

A study whose results are missing is skipped with a message; nothing is recomputed here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from sde_sam import plotting as pl
from sde_sam import theory

HERE = Path(__file__).resolve().parent


def _read(results: Path, study: str, name: str) -> pd.DataFrame:
    return pd.read_csv(results / study / f"{name}.csv")


def _config(results: Path, study: str) -> dict:
    return json.loads((results / study / "config.json").read_text())["config"]


# -- 1. saddle attraction ----------------------------------------------------------------------------------
def fig_saddle_attraction(results: Path, figs: Path) -> list[Path]:
    cfg = _config(results, "saddle_attraction")
    dist = _read(results, "saddle_attraction", "distance")
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
    return [pl.save(fig, figs / "saddle_attraction.png")]


def fig_saddle_escape(results: Path, figs: Path) -> list[Path]:
    from matplotlib import patheffects

    cfg = _config(results, "saddle_attraction")
    esc = _read(results, "saddle_attraction", "escape")
    kinds = [k for k in ("discrete", "sde") if k in set(esc["kind"])]
    methods = list(dict.fromkeys(esc["method"]))
    fig, axes = pl.figure(len(kinds), len(methods), width=3.0, height=2.3, sharex=True, sharey=True)
    axes = np.asarray(axes).reshape(len(kinds), len(methods))
    all_lrs, all_rhos = sorted(esc["lr"].unique()), sorted(esc["rho"].unique())  # one grid for every row
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
            for k, lr in enumerate(all_lrs):  # learning rates this row did not simulate: hatched, not blank
                if lr not in set(sub["lr"]):
                    ax.axhspan(lr_edges[k], lr_edges[k + 1], facecolor="0.93", edgecolor="0.7", hatch="///", lw=0,
                               label="not simulated (SDE paths are costlier)")
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
    return [pl.save(fig, figs / "saddle_escape.png")]


# -- 2. edge of stability ----------------------------------------------------------------------------------
def fig_edge_of_stability(results: Path, figs: Path) -> list[Path]:
    cfg = _config(results, "edge_of_stability")
    tr = _read(results, "edge_of_stability", "trajectory")
    summ = _read(results, "edge_of_stability", "summary").set_index("method")
    methods = list(dict.fromkeys(tr["method"]))
    fig, axes = pl.figure(2, len(methods), width=3.3, height=2.5, sharex=True)
    for j, method in enumerate(methods):
        d = tr[tr["method"] == method]
        ax = axes[0, j]
        ax.plot(d["step"], d["lambda_max"], color=pl.color(method), label=r"$\lambda_{\max}(\nabla^2 f(x_k))$")
        pl.theory_line(ax, y=d["gd_edge"].iloc[0], label=r"GD edge $2/\eta$", color="0.5")
        if method == "USAM":
            pl.theory_line(ax, y=d["usam_edge"].iloc[0], label=r"USAM edge: $\eta\lambda(1+\rho\lambda)=2$")
        if method == "SAM":
            pl.theory_line(ax, x=d["step"], y=d["sam_edge"], label=r"SAM edge at $\|\nabla f(x_k)\|$")
        s = summ.loc[method]
        late = s["late_from_step"]
        ax.axvspan(late, d["step"].max(), color="0.85", alpha=0.5, lw=0, zorder=0)
        edge_name = {"GD": r"$2/\eta$", "USAM": r"USAM edge $\lambda^\star$",
                     "SAM": r"mean SAM edge"}.get(method, s["edge_name"])
        pl.annotate(ax, f"shaded: last {100 * cfg['late_fraction']:.0f}% of steps\n"
                        f"mean $\\lambda_{{\\max}}$ = {s['lambda_late_mean']:.3f}\n"
                        f"{edge_name} = {s['edge_late_mean']:.3f}\n"
                        f"difference {s['rel_error_pct']:+.2f}%",
                    loc="center right" if method == "SAM" else "lower right")
        ax.set(ylabel=r"sharpness $\lambda_{\max}$", title=f"{method} ($\\eta={cfg['lr']:g}$"
               + (f", $\\rho={s['rho']:g}$)" if method != "GD" else ")"))
        lo, hi = min(d["lambda_max"].min(), d["gd_edge"].min()), max(d["lambda_max"].max(), d["gd_edge"].max())
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.45 * (hi - lo))  # the legend above the curves
        ax.legend(loc="upper left", fontsize=6, ncol=1)
        ax = axes[1, j]
        ax.plot(d["step"], d["grad_norm"], color=pl.color(method), label=r"$\|\nabla f(x_k)\|$")
        ax.plot(d["step"], d["loss"], color=pl.color(method), ls=":", label=r"loss $f(x_k)$")
        ax.set(yscale="log", xlabel="step $k$", ylabel="gradient norm / loss")
        ax.legend(loc="upper right", fontsize=6)
    pl.caption(fig, f"Edge of stability, full batch, two-layer tanh network (width {cfg['width']}, "
               f"d = {cfg['width'] * (cfg['d_in'] + 1)}) fitting a teacher with squared loss from a small init: the "
               f"sharpness rises, then stays at each method's edge: GD at $2/\\eta$, USAM at $\\lambda^\\star$ with "
               f"$\\eta\\lambda^\\star(1+\\rho\\lambda^\\star)=2$, SAM on the gradient-norm-dependent SAM edge "
               f"(Long & Bartlett), below $2/\\eta$.")
    return [pl.save(fig, figs / "edge_of_stability.png")]


# -- 3. SAM on quadratics ----------------------------------------------------------------------------------
def fig_sam_quadratic(results: Path, figs: Path) -> list[Path]:
    cyc = _read(results, "sam_quadratic", "cycle")
    trace = _read(results, "sam_quadratic", "cycle_trace")
    drift = _read(results, "sam_quadratic", "drift")
    summ = _read(results, "sam_quadratic", "drift_summary")
    fig, axes = pl.figure(2, 2, width=3.7, height=2.7)
    ax = axes[0, 0]
    a = trace["amp_theory"].iloc[0]
    ax.plot(trace["step"], trace["along"], color=pl.color("SAM"), marker=".", ms=3, lw=0.8,
            label=r"$\langle x_k, v_1\rangle$")
    ax.plot(trace["step"], trace["across"], color="0.5", lw=0.8, label=r"$\|x_k - \langle x_k,v_1\rangle v_1\|$")
    pl.theory_line(ax, y=a, label=r"$\pm a^\star=\pm\frac{\eta\rho\lambda_1}{2-\eta\lambda_1}$")
    pl.theory_line(ax, y=-a)
    ax.set(xlabel="step $k$", ylabel="coordinate",
           title=rf"one run: $\eta\lambda_1={trace['lr'].iloc[0] * trace['lam1'].iloc[0]:g}$, "
                 rf"$\rho={trace['rho'].iloc[0]:g}$")
    ax.legend(fontsize=6, loc="upper right")
    ax = axes[0, 1]
    palette = dict(zip(sorted(cyc["lr_lam1"].unique()), pl.sns.color_palette("rocket", cyc["lr_lam1"].nunique())))
    markers = dict(zip(sorted(cyc["lr"].unique()), "osD^v"))
    for (c, lr), d in cyc.groupby(["lr_lam1", "lr"]):
        ax.errorbar(d["amp_theory"], d["amp_median"],
                    yerr=[d["amp_median"] - d["amp_min"], d["amp_max"] - d["amp_median"]], fmt=markers[lr],
                    color=palette[c], ms=4, mfc="none", capsize=2, label=rf"$\eta\lambda_1={c:g}$" if lr == cyc["lr"].min() else None)
    lim = np.array([cyc["amp_theory"].min() / 1.5, cyc["amp_theory"].max() * 1.5])
    pl.theory_line(ax, x=lim, y=lim, label="theory $a^\\star$ (slope 1)")
    ax.set(xscale="log", yscale="log", xlabel=r"predicted amplitude $a^\star$",
           ylabel=r"measured $|\langle x_k,v_1\rangle|$ (end)",
           title=f"{len(cyc)} cells, {int(cyc['n_starts'].iloc[0])} random starts each")
    pl.annotate(ax, f"max |rel. error| = {cyc['max_abs_rel_error'].max():.1e}\n"
                    f"starts within 1%: {100 * cyc['frac_within_1pct'].mean():.0f}%\n"
                    f"markers: $\\eta$ = " + ", ".join(f"{lr:g} ({m})" for lr, m in markers.items()),
                loc="lower right")
    ax.legend(fontsize=6, loc="upper left")
    ax = axes[1, 0]
    rho_colors = dict(zip(sorted(drift["rho"].unique()), pl.sns.color_palette("crest", drift["rho"].nunique())))
    for rho, d in drift.groupby("rho"):
        ax.plot(d["step"], d["lam1"], lw=2.2, label=rf"SAM, $\rho={rho:g}$", color=rho_colors[rho], alpha=0.8)
        ax.plot(d["step"], d["lam1_pred"], ls="--", color="k", lw=0.9)
    ax.plot([], [], ls="--", color="k", lw=0.9, label="GD on $\\lambda_1$, step $2\\eta\\rho^2/(2-\\eta\\lambda_1)^2$")
    ax.set(xlabel="step $k$", ylabel=r"$\lambda_1$ at the cycle centre ($1+y_k^2$)",
           title=rf"centre drift on $f=\frac{{1}}{{2}}(1+y^2)x^2$, $\eta={drift['lr'].iloc[0]:g}$")
    ax.legend(fontsize=6)
    ax = axes[1, 1]
    for rho, d in drift.groupby("rho"):
        d = d[d["rate_ratio"].notna() & (d["y"].abs() > 1e-4)]
        ax.plot(d["step"], d["rate_ratio"], color=rho_colors[rho], label=rf"$\rho={rho:g}$: median {summ.set_index('rho').loc[rho, 'rate_ratio_median']:.4f}")
    pl.theory_line(ax, y=1.0, label="prediction [derived]")
    ax.set(xlabel="step $k$", ylabel=r"measured / predicted $\Delta y_k$",
           title="local drift rate, measured over predicted")
    ax.legend(fontsize=6)
    pl.caption(fig, "Full-batch SAM on quadratics converges to the 2-cycle $\\pm a^\\star v_1$ (Bartlett, Long & "
               "Bousquet): measured amplitudes equal theory to rounding over the whole $(\\eta,\\rho,\\lambda_1)$ grid "
               "(the amplitude depends on $\\eta$ and $\\lambda_1$ only through $\\eta\\lambda_1$, so cells overlap). "
               "Off quadratics the cycle centre descends $\\lambda_1$; the derived rate $2\\eta\\rho^2/(2-\\eta\\lambda_1)^2$ "
               f"matches: measured/predicted has median {summ['rate_ratio_median'].min():.4f} to "
               f"{summ['rate_ratio_median'].max():.4f} and stays within {100 * (summ['rate_ratio_max'].max() - 1):.1f}% "
               "(the excess grows with $\\rho$: higher-order terms).")
    return [pl.save(fig, figs / "sam_quadratic.png")]


# -- 4. normalisation ----------------------------------------------------------------------------------------
def fig_normalization(results: Path, figs: Path) -> list[Path]:
    cfg = _config(results, "normalization")
    div = _read(results, "normalization", "divergence")
    rhos = sorted(div["rho"].unique())
    fig, axes = pl.figure(2, len(rhos), width=3.0, height=2.4, sharex=True)
    axes = np.asarray(axes).reshape(2, len(rhos))
    for j, rho in enumerate(rhos):
        sub = div[div["rho"] == rho]
        thr, gd = sub["usam_threshold"].iloc[0], sub["gd_threshold"].iloc[0]
        for method, d in sub.groupby("method", sort=False):
            axes[0, j].errorbar(d["lr"], d["frac_diverged"], yerr=1.96 * d["se"], color=pl.color(method),
                                marker="o", ms=2.5, lw=1.1, capsize=1.5, label=method,
                                ls={"SGD": ":", "SAM": "--"}.get(method, "-"))
            ok = d[d["final_norm_median"].notna()]
            pl.band(axes[1, j], ok["lr"], ok["final_norm_median"], ok["final_norm_q10"], ok["final_norm_q90"],
                    color=pl.color(method), label=method, marker="o", ls={"SGD": ":", "SAM": "--"}.get(method, "-"))
        lr = np.linspace(sub["lr"].min(), 0.985 * gd, 100)
        pl.theory_line(axes[1, j], x=lr, y=theory.sam_cycle_amplitude(lr, rho, cfg["L"]), color=pl.color("SAM"),
                       ls="-", lw=0.8, label=r"SAM 2-cycle $a^\star=\eta\rho L/(2-\eta L)$ (no noise)")
        for ax in axes[:, j]:
            pl.theory_line(ax, x=thr, color=pl.color("USAM"), label=rf"USAM: $2/(L+\rho L^2)={thr:.3g}$")
            pl.theory_line(ax, x=gd, color="0.3", ls=":", label=rf"GD/SAM: $2/L={gd:.3g}$")
        axes[0, j].set(title=rf"$\rho={rho:g}$", ylabel="fraction of runs diverged" if j == 0 else None,
                       ylim=(-0.05, 1.05))
        axes[1, j].set(yscale="log", xlabel=r"learning rate $\eta$",
                       ylabel=r"final $\|x\|$ (bounded runs)" if j == 0 else None)
        axes[0, j].legend(fontsize=5.5, loc="center left")
        axes[1, j].legend(fontsize=5.5, loc="upper left", handles=axes[1, j].get_legend_handles_labels()[0][-3:-2])
    pl.caption(fig, f"Normalisation matters (Dai, Ahn & Sra): on $f=\\frac{{1}}{{2}}x^\\top Hx$, $H=\\mathrm{{diag}}(L,L/4)$, "
               f"$L={cfg['L']:g}$, noise $\\sigma^2={cfg['noise_cov']:g}$, {cfg['n_paths']} runs of {cfg['steps']} steps "
               f"per point: USAM diverges past $\\eta=2/(L+\\rho L^2)$, a threshold that shrinks with $\\rho$, while "
               f"SAM stays bounded up to the GD threshold $2/L$ for every $\\rho$ (SGD, grey, lies under SAM). Bottom: median "
               f"final norm of the bounded runs, band 10-90%; SAM sits on its 2-cycle $a^\\star$ once that exceeds the noise.")
    return [pl.save(fig, figs / "normalization.png")]


# -- 5. Eigen-SAM and the SDE orders --------------------------------------------------------------------------
def fig_eigen_sam(results: Path, figs: Path, smooth: int = 5) -> list[Path]:
    cfg = _config(results, "eigen_sam")
    al = _read(results, "eigen_sam", "alignment")
    summ = _read(results, "eigen_sam", "alignment_summary").set_index("method")
    d_params = int(summ["d"].iloc[0])
    fig, axes = pl.figure(1, 3, width=3.3, height=2.8)
    labels = {"SGD": r"SGD (its direction $\hat g_\gamma$)", "SAM": "SAM",
              "EigenSAM": rf"Eigen-SAM ($\alpha={cfg['alpha']:g}$)"}

    def run_mean(series):  # running mean over `smooth` records: the per-step alignment is very noisy
        return series.rolling(smooth, center=True, min_periods=1).mean()

    for method, d in al.groupby("method", sort=False):
        col = pl.color(method)
        pl.mean_band(axes[0], d["step"], run_mean(d["alignment_mean"]), run_mean(d["alignment_sem"]) / np.sqrt(smooth),
                     color=col, label=labels[method])
        pl.mean_band(axes[1], d["step"], d["lambda_max_mean"], d["lambda_max_sem"], color=col, label=labels[method])
        pl.mean_band(axes[2], d["step"], d["loss_mean"], d["loss_sem"], color=col, label=labels[method])
        if method == "EigenSAM":
            axes[0].plot(d["step"], run_mean(d["alignment_exact_v_mean"]), color=col, ls="--", lw=1,
                         label=r"Eigen-SAM if its $v$ were exactly $v_1$ (theory)")
            axes[0].plot(d["step"], run_mean(d["v_alignment_mean"]), color=col, ls=":", lw=1,
                         label=r"$|\cos(v, v_1)|$: Eigen-SAM's eigenvector estimate")
    pl.theory_line(axes[0], y=np.sqrt(2 / (np.pi * d_params)), color="0.5", ls="-.",
                   label=rf"random direction in $d={d_params}$: $\sqrt{{2/(\pi d)}}$")
    axes[0].set(xlabel="step $k$", ylabel=r"$|\cos(\varepsilon_k, v_1)|$", ylim=(0, 1),
                title="alignment of the perturbation with $v_1$")
    axes[1].set(xlabel="step $k$", ylabel=r"sharpness $\lambda_{\max}$", title="sharpness")
    axes[2].set(xlabel="step $k$", ylabel="loss $f(x_k)$", yscale="log", title="training loss")
    late = "\n".join(f"{m}: {summ.loc[m, 'lambda_max']:.3f}" for m in summ.index)
    lo, hi = al["lambda_max_mean"].min(), al["lambda_max_mean"].max()
    axes[1].set_ylim(lo - 0.9 * (hi - lo), hi + 0.05 * (hi - lo))  # room for the note below the curves
    pl.annotate(axes[1], f"mean over 2nd half:\n{late}", loc="lower right")
    pl.figure_legend(fig, axes, ncol=3)
    pl.caption(fig, f"Eigen-SAM (Luo et al.): mini-batch (B={cfg['batch_size']}) training of a teacher-student tanh "
               f"network, d={d_params}, $\\eta={cfg['lr']:g}$, $\\rho={cfg['rho']:g}$, mean over {cfg['n_paths']} runs "
               f"(bands: 95% CI; alignment: running mean over {smooth} records). SAM's perturbation is only weakly "
               f"aligned with the top Hessian eigenvector $v_1$ (no better than the gradient itself); Eigen-SAM raises "
               f"the alignment, limited by its noisy mini-batch estimate of $v_1$, and ends at a lower sharpness.")
    return [pl.save(fig, figs / "eigen_sam.png")]


def fig_sde_orders(results: Path, figs: Path) -> list[Path]:
    cfg = _config(results, "eigen_sam")
    tab = _read(results, "eigen_sam", "sde_orders")
    summ = _read(results, "eigen_sam", "sde_orders_summary")
    obs = [("loss", r"loss $\mathbb{E} f$", "log"), ("grad_norm", r"$\mathbb{E}\|\nabla f\|$", "log"),
           ("lambda_max", r"$\mathbb{E}\lambda_{\max}$", "linear")]
    fig, axes = pl.figure(1, 3, width=3.3, height=2.7)
    colors = {"discrete SAM": "k", **{f"SDE {k}": v for k, v in pl.MODEL_COLORS.items()}}
    styles = {"discrete SAM": "-", "SDE order 0": ":", "SDE order 1": "--", "SDE order 2": "-."}
    for ax, (name, label, scale) in zip(axes, obs):
        sub = tab[tab["observable"] == name]
        for model, d in sub.groupby("model", sort=False):
            pl.mean_band(ax, d["time"], d["mean"], d["sem"], color=colors.get(model), ls=styles.get(model, "-"),
                         label=model, lw=1.8 if model == "discrete SAM" else 1.2)
        note = "\n".join(f"{r.model}: max gap {r.max_abs_gap:.3g} ({r.max_gap_in_se:.1f} SE)"
                         for r in summ[summ["observable"] == name].itertuples())
        pl.annotate(ax, note, loc="upper right", fontsize=5.5)
        ax.set(xlabel=r"time $t=k\eta$", ylabel=label, yscale=scale)
        if scale == "linear":  # head room for the note
            lo, hi = sub["mean"].min(), sub["mean"].max()
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.5 * (hi - lo))
    pl.figure_legend(fig, axes, ncol=4)
    pl.caption(fig, f"Discrete SAM against its SDE models on a teacher-student tanh network (n={cfg['sde_n']}, B=1, "
               f"exact expectations), $\\eta={cfg['sde_lr']:g}$, $\\rho={cfg['sde_rho']:g}$, {cfg['sde_paths']} paths "
               f"each (bands: 95% CI). The third-order (order-2) SDE of Luo et al. tracks SAM's sharpness "
               f"regularisation; the first-order SDE lags, the SGD SDE misses it.")
    return [pl.save(fig, figs / "sde_orders.png")]


def _slope_range(fits: pd.DataFrame, test_function: str, model: str) -> str:
    f = fits[(fits["test_function"] == test_function) & (fits["model"] == model)]["slope"].dropna()
    return f"{f.min():.2f} to {f.max():.2f}" if len(f) else "n/a"


def _floor_note(fits: pd.DataFrame, test_function: str) -> str:
    f = fits[(fits["test_function"] == test_function) & ~fits["fit"].isin(["wls", "ols", "exact"])]
    if not len(f):
        return ""
    which = ", ".join(f"{r.method} {r.model}" for r in f.itertuples())
    return f" Hollow points ({which}): under the Monte-Carlo floor, not fitted."


# -- 6. weak error ---------------------------------------------------------------------------------------------
def fig_weak_error(results: Path, figs: Path, test_function: str = "loss") -> list[Path]:
    cfg = _config(results, "weak_error_all")
    gaps = _read(results, "weak_error_all", "max_gaps")
    fits = _read(results, "weak_error_all", "fits")
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
               f"(½ asymptotically)." + _floor_note(fits, test_function))
    return [pl.save(fig, figs / "weak_error.png")]


# -- eigenvalue filters (Bolte, Le & Pauwels) --------------------------------------------------------------
_FILTER_LABELS = {"GD": "GD", "HB": "heavy ball", "Nesterov": "Nesterov", "USAM": "USAM", "USAM+HB": "USAM\n+ heavy ball",
                  "TwoStepUSAM": "Two-step\nUSAM", "HessianUSAM": "Hessian\nUSAM"}
_FILTER_COLORS = dict(zip(("GD", "HB", "Nesterov", "USAM", "USAM+HB", "TwoStepUSAM", "HessianUSAM"),
                          ("#7f7f7f", "#1f77b4", "#17becf", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd")))
_STATUS_COLORS = {"minimum": "#4c9a2a", "saddle": "#d1495b", "not converged": "0.75", "diverged": "0.35"}


def fig_eigenvalue_filters(results: Path, figs: Path) -> list[Path]:
    cfg = _config(results, "eigenvalue_filters")
    runs = _read(results, "eigenvalue_filters", "runs")
    summ = _read(results, "eigenvalue_filters", "summary")
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
    return [pl.save(fig, figs / "eigenvalue_filters.png")]


_PROBLEM_TITLES = {"hyperbola": r"$f(x,y)=\frac{1}{2}(xy-1)^2$ (minima: $xy=1$)",
                   "factorization": r"$f(U,V)=\frac{1}{2}\|UV^\top-M\|_F^2$, $U,V\in\mathbb{R}^{2\times2}$"}


# -- own model: an nn.Module MLP on real digits (experiments/own_model.py) -----------------------------------
def fig_own_model(results: Path, figs: Path) -> list[Path]:
    cfg = _config(results, "own_model")
    tr = _read(results, "own_model", "trajectory")
    summ = _read(results, "own_model", "summary").set_index("method")
    methods = list(dict.fromkeys(tr["method"]))
    fig, (ax, ax_loss) = pl.figure(1, 2, width=3.6, height=3.2)
    notes = []
    for method in methods:
        d, s = tr[tr["method"] == method], summ.loc[method]
        c = pl.color(method)
        rho = "" if method == "GD" else f", $\\rho={s['rho']:g}$"
        ax.plot(d["step"], d["lambda_max"], color=c, label=f"{method}{rho}: " + r"$\lambda_{\max}(\nabla^2 f)$")
        edge = {"GD": d["gd_edge"], "USAM": d["usam_edge"], "SAM": d["sam_edge"]}[method]
        edge_label = {"GD": r"GD edge $2/\eta$", "USAM": r"USAM edge: $\eta\lambda(1+\rho\lambda)=2$",
                      "SAM": r"SAM edge at $\|\nabla f(x_k)\|$"}[method]
        pl.theory_line(ax, x=d["step"], y=edge, color=c, label=edge_label, lw=1.3)
        ax_loss.plot(d["step"], d["loss"], color=c, label=method)
        notes.append(f"{method}: {s['lambda_late_mean']:.3f} vs {s['edge_late_mean']:.3f} ({s['rel_error_pct']:+.1f}%)")
    late = summ["late_from_step"].min()
    ax.axvspan(late, tr["step"].max(), color="0.85", alpha=0.5, lw=0, zorder=0)
    pl.annotate(ax, "shaded: last {:.0f}% of steps\nmean $\\lambda_{{\\max}}$ vs edge:\n".format(
        100 * cfg["late_fraction"]) + "\n".join(notes), loc="upper right")
    ax.set(xlabel="step $k$", ylabel=r"sharpness $\lambda_{\max}$",
           title=f"sharpness and stability edges ($\\eta={cfg['lr']:g}$)")
    ax.set_ylim(0, 2.3 * float(tr["gd_edge"].iloc[0]))  # room for the note above the curves
    ax_loss.set(yscale="log", xlabel="step $k$", ylabel="training loss $f(x_k)$", title="loss (full batch)")
    ax_loss.legend(loc="upper right", fontsize=7)
    pl.figure_legend(fig, [ax], ncol=3)
    d_params = 65 * cfg["hidden"] + 10 * (cfg["hidden"] + 1)
    pl.caption(fig, f"Your own model: a torch.nn tanh MLP (64-{cfg['hidden']}-10, d = {d_params:,}) on {cfg['n']} "
               "scikit-learn digits with squared loss, through ss.Objective.from_module; full-batch GD, USAM and SAM "
               "from a scaled-down init. Each sharpness (Lanczos on exact HVPs) rises to its method's edge and stays "
               "there: GD at $2/\\eta$, USAM at $\\lambda^\\star$, SAM on the gradient-norm-dependent SAM edge.")
    return [pl.save(fig, figs / "own_model.png")]


def _rect(pos: float, edge: float, color):
    from matplotlib.patches import Rectangle
    return Rectangle((pos - 0.4, 0), 0.8, edge, color=color, alpha=0.18, lw=0, zorder=0)


FIGURES: dict[str, list[Callable[[Path, Path], list[Path]]]] = {
    "saddle_attraction": [fig_saddle_attraction, fig_saddle_escape],
    "edge_of_stability": [fig_edge_of_stability],
    "sam_quadratic": [fig_sam_quadratic],
    "normalization": [fig_normalization],
    "eigen_sam": [fig_eigen_sam, fig_sde_orders],
    "weak_error_all": [fig_weak_error],
    "eigenvalue_filters": [fig_eigenvalue_filters],
    "own_model": [fig_own_model],
}
"""Study -> the functions drawing its figures."""


def make_figures(results: str | Path = "results", figs: str | Path = HERE, only=None) -> list[Path]:
    """Draw the figures of every study (or ``only`` those) whose results exist; return the PNG paths."""
    results, figs = Path(results), Path(figs)
    pl.style()
    written = []
    for study, funcs in FIGURES.items():
        if only and study not in only:
            continue
        if not (results / study / "config.json").exists():
            print(f"[make_figures] no results for {study} in {results}: skipped", file=sys.stderr)
            continue
        for func in funcs:
            for path in func(results, figs):
                print(f"[make_figures] {path}")
                written.append(path)
    return written


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
    parser.add_argument("--figs", type=Path, default=HERE, help="where the PNGs go (default: paper_figs/)")
    parser.add_argument("--only", nargs="*", choices=sorted(FIGURES), help="only these studies")
    args = parser.parse_args(argv)
    return make_figures(args.results, args.figs, args.only)


if __name__ == "__main__":
    main()
