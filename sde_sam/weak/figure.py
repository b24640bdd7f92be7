"""The weak-error figure: gap against learning rate, log-log, with fits, reference slopes and the floor."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .estimators import MonteCarloFloorError


PHI_LABELS = {"loss": r"$f(x)$", "x_norm_sq": r"$\|x\|^2$", "grad_norm_plus_x_norm": r"$\|\nabla f(x)\| + \|x\|$",
              "grad_norm": r"$\|\nabla f(x)\|$", "x_norm": r"$\|x\|$", "lambda_max": r"$\lambda_{\max}(\nabla^2 f(x))$"}


def _mathtext(spec: str) -> str:
    """``"rho = 0.5·lr^0.5"`` -> ``"$\\rho = 0.5\\,\\eta^{0.5}$"`` (mathtext, not text carets)."""
    body = spec.replace("·", r"\,").replace("rho", r"\rho").replace("lr", r"\eta")
    return "$" + re.sub(r"\^([0-9.]+)", r"^{\1}", body) + "$"


def _title(study) -> str:
    cfg = study.config
    problem = cfg["problem"]["repr"].split("(")[0]
    d = len(cfg["x0"])
    method = cfg["method"]["method"]
    beta = cfg["method"].get("momentum", 0.0) or 0.0
    if beta:
        method += f" (momentum {beta:g}{', Nesterov' if cfg['method'].get('nesterov') else ''})"
    how = ("exact moments" if study.mode == "exact" else
           f"Monte Carlo, {cfg['n_paths']:,} paths{', coupled' if study.coupled else ''}")
    return (f"Weak error of {method} against its SDE models on {problem} (d = {d})\n"
            f"{_mathtext(cfg.get('rho_spec', 'rho = 0'))}, horizon $T = {cfg['horizon']:g}$; {how}")


def plot_study(study, test_fns: Sequence[str]):
    """Log-log figure of the gap against lr, one panel per test function, one hue per model: SE error bars,
    the fitted curves (:meth:`OrderFit.curve`; an inconclusive interval dotted, a pre-asymptotic or near-floor fit
    marked in the legend), lrs where most paths diverged left out, the reference slopes 1 and 1/2 drawn below the data,
    points under the Monte-Carlo floor circled (one legend entry), the legend below the axes, outside the data.

    Returns:
        A :class:`matplotlib.figure.Figure` (not registered with pyplot: save it with ``savefig``).
    """
    import matplotlib.figure
    import matplotlib.ticker
    import seaborn as sns
    from matplotlib.lines import Line2D

    pts = study.max_gaps()
    surv = study.survival()
    diverged = surv.loc[surv["mostly_diverged"], "lr"].unique().tolist()
    models = study.models
    palette = dict(zip(models, sns.color_palette("colorblind", len(models))))
    fig = matplotlib.figure.Figure(figsize=(4.4 * len(test_fns) + 0.4, 5.6), layout="constrained")
    axes = fig.subplots(1, len(test_fns), squeeze=False)[0]
    for ax, tf in zip(axes, test_fns):
        any_floor = False
        sub = pts[pts["test_function"] == tf]
        shown = sub[(sub["gap"] > 0) & ~sub["lr"].isin(diverged)]  # a NaN gap or a diverged lr is not drawn
        lr = np.geomspace(sub["lr"].min(), sub["lr"].max(), 50)
        handles = []
        for m in models:
            ms = shown[shown["model"] == m]
            ax.errorbar(ms["lr"], ms["gap"], yerr=ms["gap_se"], fmt="o", ms=5, color=palette[m], capsize=3, zorder=3)
            low = ms[ms["under_floor"]]
            if len(low):
                any_floor = True
                ax.scatter(low["lr"], low["gap"], s=110, facecolors="none", edgecolors="k", zorder=4)
            try:
                fit = study.weak_order(tf, m)
                if fit.fit == "exact":
                    label = f"{m}: slope {fit.slope:.2f} (exact)"
                else:
                    what = "order" if fit.targets == "order" else "secant slope"
                    label = f"{m}: {what} {fit.slope:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]"
                    label += " inconclusive" if fit.inconclusive else ""
                    label += " pre-asymptotic" if fit.pre_asymptotic else ""
                    label += " near MC floor" if fit.near_floor else ""
                ax.plot(lr, fit.curve(lr), color=palette[m], ls=":" if fit.inconclusive else "-")
            except ValueError as err:
                label = f"{m}: no slope ({'MC floor' if isinstance(err, MonteCarloFloorError) else 'not fitted'})"
            handles.append(Line2D([], [], color=palette[m], marker="o", label=label))
        if len(shown):  # reference slopes, fanning out leftwards from below the lowest point at the largest lr
            top = shown[shown["lr"] == shown["lr"].max()]
            anchor = 0.5 * (top if len(top) else shown)["gap"].min()
            for p, ls in ((1.0, "-"), (0.5, "--")):
                ax.plot(lr, anchor * (lr / lr.max()) ** p, color="0.55", ls=ls, lw=1, zorder=1)
        handles += [Line2D([], [], color="0.55", ls="-", lw=1, label="slope 1"),
                    Line2D([], [], color="0.55", ls="--", lw=1, label="slope 1/2")]
        if any_floor:
            handles.append(Line2D([], [], ls="", marker="o", ms=10, mfc="none", mec="k", label="below MC floor"))
        ylabel = (r"$|\mathrm{E}\,\phi(x_k) - \mathrm{E}\,\phi(X_{k\eta})|$ at the chosen $k$" if study.mode != "exact"
                  else r"$\max_k\,|\mathrm{E}\,\phi(x_k) - \mathrm{E}\,\phi(X_{k\eta})|$")
        ax.set(xscale="log", yscale="log", xlabel=r"learning rate $\eta$", ylabel=ylabel,
               title=r"$\phi(x)$ = " + PHI_LABELS.get(tf, tf.replace("_", " ")))
        if not len(shown):  # every lr diverged or no positive gap: an empty, labelled panel, not a log-scale error
            ax.set_ylim(1e-3, 1.0)
            ax.text(0.5, 0.5, "no positive finite gap to draw\n(see the summary: survival counts)",
                    transform=ax.transAxes, ha="center", va="center", fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(sorted(sub["lr"].unique())))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.suptitle(_title(study), fontsize=10)
    return fig
