"""Eigen-SAM: alignment with the top eigenvector; discrete SAM against its SDEs of orders 0, 1, 2. Drawn from
``results/eigen_sam/`` only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sde_sam import plotting as pl

from experiments.figures._common import read_config, read_table


def eigen_sam(results: Path, figs: Path, smooth: int = 5) -> Path:
    cfg = read_config(results, "eigen_sam")
    al = read_table(results, "eigen_sam", "alignment")
    summ = read_table(results, "eigen_sam", "alignment_summary").set_index("method")
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
    return pl.save(fig, figs / "eigen_sam.png")


def sde_orders(results: Path, figs: Path) -> Path:
    cfg = read_config(results, "eigen_sam")
    tab = read_table(results, "eigen_sam", "sde_orders")
    summ = read_table(results, "eigen_sam", "sde_orders_summary")
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
    return pl.save(fig, figs / "sde_orders.png")
