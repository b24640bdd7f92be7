"""Your own model: sharpness of an nn.Module MLP on digits against each method's edge. Drawn from
``results/own_model/`` only.
"""
from __future__ import annotations

from pathlib import Path

from sde_sam import plotting as pl

from experiments.figures._common import read_config, read_table


def own_model(results: Path, figs: Path) -> Path:
    cfg = read_config(results, "own_model")
    tr = read_table(results, "own_model", "trajectory")
    summ = read_table(results, "own_model", "summary").set_index("method")
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
    return pl.save(fig, figs / "own_model.png")
