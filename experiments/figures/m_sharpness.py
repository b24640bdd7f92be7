"""m-sharpness: SAM's final sharpness and loss against the micro-batch size m, discrete and order-1 SDE, beside
the implicit regulariser the SDE predicts. Drawn from ``results/m_sharpness/`` only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import seaborn as sns

from sde_sam import plotting as pl

from experiments.figures._common import read_config, read_table

STYLES = {"discrete": ("k", "-", "o", -0.06), "SDE order 1": (pl.MODEL_COLORS["order 1"], "--", "s", 0.06)}
"""Colour, line style, marker and horizontal offset (in log2 m) per model."""


def _direction(row) -> str:
    """Whether the difference m = B minus m = 1 shows the expected rise, in standard errors (2 SE: resolved)."""
    z = row["diff_in_se"]
    if not np.isfinite(z):
        return "undetermined"
    if abs(z) < 2:
        return f"not resolved ({z:+.1f} SE)"
    return f"{'as expected' if z > 0 else 'opposite'} ({z:+.1f} SE)"


def m_sharpness(results: Path, figs: Path) -> Path:
    cfg = read_config(results, "m_sharpness")
    summ = read_table(results, "m_sharpness", "summary")
    paths = read_table(results, "m_sharpness", "paths")
    tr = read_table(results, "m_sharpness", "trend").set_index(["model", "observable"])
    reg = read_table(results, "m_sharpness", "regulariser")
    ms = sorted(m for m in summ["m"].unique() if m > 0)
    u_ticks = np.log2(ms)
    by_step = read_table(results, "m_sharpness", "trend_by_step")
    fig, axes = pl.figure(1, 5, width=2.9, height=3.0)
    panels = [("lambda_max", r"final sharpness $\lambda_{\max}(\nabla^2 f)$", "sharpness at the end"),
              ("loss", r"final training loss $f(x_T)$", "loss at the end")]
    for ax, (name, ylabel, title) in zip(axes[:2], panels):
        notes = []
        for model, (col, ls, marker, off) in STYLES.items():
            d = summ[(summ["model"] == model) & (summ["m"] > 0)].sort_values("m")
            ax.errorbar(np.log2(d["m"]) + off, d[f"{name}_mean"], yerr=d[f"{name}_se"], color=col, ls=ls,
                        marker=marker, ms=4, capsize=2.5, lw=1.3, label=f"SAM, {model}")
            sgd = summ[(summ["model"] == model) & (summ["m"] < 0)]
            if len(sgd):  # SGD: m does not matter; its mean +- 1 SE as a band across the axis
                mu, se = float(sgd[f"{name}_mean"].iloc[0]), float(sgd[f"{name}_se"].iloc[0])
                ax.axhline(mu, color=col, ls=ls, lw=0.9, alpha=0.6, label=f"SGD ($\\rho=0$), {model}")
                ax.axhspan(mu - se, mu + se, color=col, alpha=0.08, lw=0)
            row = tr.loc[(model, name)]
            notes.append(f"{model}: m={int(row['m_high'])} minus m={int(row['m_low'])}: "
                         f"{row['diff_high_minus_low']:+.3g} ± {row['diff_se']:.2g}\n"
                         f"   slope/doubling {row['slope_per_doubling']:+.3g} ± {row['slope_se']:.2g}")
        ax.set(xlabel="micro-batch size $m$ (log scale)", ylabel=ylabel, title=title)
        ax.set_xticks(u_ticks, [str(m) for m in ms])
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.45 * (hi - lo))  # head room for the note
        pl.annotate(ax, "\n".join(notes), loc="upper right", fontsize=5.2)
    # the implicit regulariser of the SDE's drift (MATH §3.6), at x_0
    sam = reg[reg["m"] > 0].sort_values("m")
    axes[2].errorbar(np.log2(sam["m"]), sam["penalty"], yerr=sam["penalty_se"], color=pl.color("SAM"), marker="o",
                     ms=4, capsize=2.5, label=r"$R_m(x_0)=\rho\,\mathbb{E}_{|\gamma'|=m}\|\nabla f_{\gamma'}(x_0)\|$")
    limit = float(reg.loc[reg["m"] < 0, "penalty"].iloc[0])
    pl.theory_line(axes[2], y=limit, color="0.4", ls="-.", label=r"$m\to\infty$: $\rho\|\nabla f(x_0)\|$")
    axes[2].set(xlabel="micro-batch size $m$ (log scale)", ylabel=r"implicit regulariser $R_m(x_0)$",
                title="SDE drift: $-\\nabla(f+R_m)$ (theory)", yscale="log")
    axes[2].set_xticks(u_ticks, [str(m) for m in ms])
    # sharpness over time (sparse records), discrete solid and SDE dashed, one colour per m
    palette = dict(zip(ms, sns.color_palette("viridis", len(ms))))
    for (model, m), d in paths[(paths["m"] > 0) & ~paths["diverged"]].groupby(["model", "m"], sort=False):
        g = d.groupby("step")["lambda_max"]
        mean, se = g.mean(), g.std(ddof=1) / np.sqrt(g.count())
        pl.mean_band(axes[3], mean.index, mean, se, z=1.0, color=palette[m], ls=STYLES[model][1],
                     marker=STYLES[model][2], label=f"m = {m}" if model == "discrete" else None)
    axes[3].set(xlabel="step $k$", ylabel=r"sharpness $\lambda_{\max}$ (from $x_0$)",
                title="sharpness over training")
    axes[3].legend(loc="upper right", fontsize=6, title="solid: discrete, dashed: SDE", title_fontsize=6)
    # the effect of m over training: sharpness at m = B minus m = 1, +-1 SE (independent cells)
    for model, (col, ls, marker, off) in STYLES.items():
        d = by_step[(by_step["model"] == model) & (by_step["observable"] == "lambda_max")].sort_values("step")
        axes[4].errorbar(d["step"] + 2 * off * d["step"].max() / 10, d["diff_high_minus_low"], yerr=d["diff_se"],
                         color=col, ls=ls, marker=marker, ms=4, capsize=2.5)
    axes[4].axhline(0, color="0.3", lw=0.9)
    m_hi, m_lo = int(by_step["m_high"].iloc[0]), int(by_step["m_low"].iloc[0])
    axes[4].set(xlabel="step $k$", ylabel=rf"$\lambda_{{\max}}$ at $m={m_hi}$ minus at $m={m_lo}$",
                title="effect of m (> 0: as expected)")
    pl.figure_legend(fig, axes[:3], ncol=4)
    d_params = 65 * cfg["hidden"] + 10 * (cfg["hidden"] + 1)
    disc, sde = tr.loc[("discrete", "lambda_max")], tr.loc[("SDE order 1", "lambda_max")]
    loss_d, loss_s = tr.loc[("discrete", "loss")], tr.loc[("SDE order 1", "loss")]
    peak = []
    for model in STYLES:
        d = by_step[(by_step["model"] == model) & (by_step["observable"] == "lambda_max")]
        top = d.loc[d["diff_in_se"].idxmax()]
        peak.append(f"{model} {top['diff_in_se']:+.1f} SE at step {int(top['step'])}")
    pl.caption(fig, f"m-sharpness: SAM with one perturbation per micro-batch of size m (m = B = {cfg['batch_size']} is "
               f"plain SAM) on a torch.nn tanh MLP (64-{cfg['hidden']}-10, d = {d_params:,}) on {cfg['n']} digits, "
               f"cross-entropy, $\\eta={cfg['lr']:g}$, $\\rho={cfg['rho']:g}$, {cfg['steps']} steps, {cfg['n_paths']} "
               f"paths per point (error bars and bands: ±1 SE over paths); discrete runs and the order-1 SDE "
               f"(two-draw scheme, $\\Delta t=\\eta/{cfg['dt_ratio']}$). Theory (MATH §3.6): m-SAM's drift is SAM's "
               f"drift at batch size m, so the regulariser $R_m$ grows as m shrinks and sharpness is expected to "
               f"rise with m. Measured sharpness, m = B minus m = 1: discrete {_direction(disc)}, SDE {_direction(sde)}; "
               f"loss, m = B minus m = 1: discrete {loss_d['diff_high_minus_low']:+.3g} ± {loss_d['diff_se']:.2g}, "
               f"SDE {loss_s['diff_high_minus_low']:+.3g} ± {loss_s['diff_se']:.2g}. Largest sharpness difference during "
               f"training (right): {', '.join(peak)}.")
    return pl.save(fig, figs / "m_sharpness.png")
