"""Edge of stability: sharpness of full-batch GD, USAM and SAM against their edges. Drawn from
``results/edge_of_stability/`` only.
"""
from __future__ import annotations

from pathlib import Path

from sde_sam import plotting as pl

from experiments.figures._common import read_config, read_table


def edge_of_stability(results: Path, figs: Path) -> Path:
    cfg = read_config(results, "edge_of_stability")
    tr = read_table(results, "edge_of_stability", "trajectory")
    summ = read_table(results, "edge_of_stability", "summary").set_index("method")
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
    return pl.save(fig, figs / "edge_of_stability.png")
