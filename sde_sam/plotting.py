"""Seaborn helpers for the paper figures: one style, one colour per method, theory lines and bands.

Small pure functions on matplotlib ``Figure``/``Axes`` objects; nothing here touches pyplot's global
state, so figures can be drawn in tests and scripts alike.

Example:
    >>> from sde_sam import plotting
    >>> fig, axes = plotting.figure(1, 2)
    >>> plotting.band(axes[0], [0, 1, 2], [1, 2, 3], [0.5, 1.5, 2.5], [1.5, 2.5, 3.5], label="SAM")
    >>> plotting.theory_line(axes[0], y=2.0, label=r"$2/\\eta$")
    >>> plotting.save(fig, "demo.png")  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.figure
import numpy as np
import seaborn as sns

_PALETTE = sns.color_palette("colorblind", 10)
METHOD_COLORS = {
    "SGD": _PALETTE[7], "GD": _PALETTE[7],
    "USAM": _PALETTE[1], "SAM": _PALETTE[0], "DNSAM": _PALETTE[2],
    "UnifiedSAM": _PALETTE[4], "EigenSAM": _PALETTE[3],
}
"""One colour per method, the same in every figure."""

MODEL_COLORS = {"order 0": "#882e72", "order 1": _PALETTE[0], "order 2": _PALETTE[3], "exact": "0.2"}
"""One colour per SDE model order (weak-error and SDE-comparison figures)."""

MODEL_STYLES = {"discrete": "-", "sde": "--", "order 0": ":", "order 1": "--", "order 2": "-."}
"""Line style per kind of trajectory: the discrete method solid, SDE models dashed/dotted."""

THEORY_COLOR = "0.15"


def style(font_scale: float = 0.9) -> None:
    """The house style: seaborn ``paper`` context, white grid, colour-blind palette."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=font_scale,
                  rc={"axes.titlesize": 9, "legend.fontsize": 7, "legend.framealpha": 0.85,
                      "savefig.dpi": 160, "figure.dpi": 100, "lines.linewidth": 1.4})


def color(name: str, default=None):
    """The method's colour (``METHOD_COLORS``), else ``default`` or a neutral grey."""
    return METHOD_COLORS.get(name, default if default is not None else "0.4")


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 3.4, height: float = 2.8, **subplot_kw):
    """A constrained-layout ``Figure`` (not registered with pyplot) and a 2-D array of axes reshaped to
    ``(nrows, ncols)``; a single row or column comes back 1-D, a single panel as one ``Axes`` in an array."""
    fig = matplotlib.figure.Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    if nrows == 1 or ncols == 1:
        axes = axes.reshape(-1)
    return fig, axes


def visible_length(text: str) -> int:
    r"""About how many characters ``text`` shows once mathtext is rendered: a ``\command`` counts as one
    character, and ``$``, braces, ``^`` and ``_`` as none (``$\frac{1}{2}x^2$`` counts 5)."""
    import re

    text = re.sub(r"\\[A-Za-z]+", "x", text)
    return len(re.sub(r"[${}^_\\]", "", text))


def wrap(text: str, width: int = 140) -> str:
    """Wrap ``text`` to lines of about ``width`` visible characters (:func:`visible_length`) without breaking
    inside ``$...$`` math."""
    words, merged = text.split(" "), []
    for word in words:
        if merged and merged[-1].count("$") % 2 == 1:  # still inside a math span: keep it whole
            merged[-1] += " " + word
        else:
            merged.append(word)
    lines, line = [], ""
    for word in merged:
        if line and visible_length(line) + 1 + visible_length(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join(lines + [line] if line else lines)


def caption(fig, text: str, width: int | None = None) -> None:
    """A caption-length title above the panels, wrapped to ``width`` characters (default: what fits the
    figure's width at the caption's font size), math spans kept whole."""
    width = width or int(fig.get_figwidth() * 15)  # visible characters per inch of figure at fontsize 8.5
    fig.suptitle(wrap(text, width), fontsize=8.5, ha="center")


def figure_legend(fig, axes, *, loc: str = "outside lower center", fontsize: float = 7, ncol: int = 3):
    """One legend for the whole figure from the labelled artists of all ``axes`` (duplicates dropped)."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles and not lab.startswith("_"):
                handles[lab] = h
                labels.append(lab)
    return fig.legend([handles[lab] for lab in labels], labels, loc=loc, fontsize=fontsize, ncol=ncol)


def band(ax, x: Sequence[float], mid: Sequence[float], lo: Sequence[float] | None = None,
         hi: Sequence[float] | None = None, *, color=None, label: str | None = None, ls: str = "-",
         alpha: float = 0.18, lw: float | None = None, marker: str | None = None):
    """A line with a shaded band between ``lo`` and ``hi`` (confidence interval or quantile range)."""
    line, = ax.plot(x, mid, color=color, ls=ls, label=label, lw=lw, marker=marker, ms=3)
    if lo is not None and hi is not None:
        ax.fill_between(np.asarray(x, dtype=float), np.asarray(lo, dtype=float), np.asarray(hi, dtype=float),
                        color=line.get_color(), alpha=alpha, lw=0)
    return line


def mean_band(ax, x, mean, sem, *, z: float = 1.96, **kwargs):
    """:func:`band` with a ``z``-standard-error confidence band (95% by default)."""
    mean, sem = np.asarray(mean, dtype=float), np.asarray(sem, dtype=float)
    sem = np.nan_to_num(sem)
    return band(ax, x, mean, mean - z * sem, mean + z * sem, **kwargs)


def theory_line(ax, *, x=None, y=None, label: str | None = None, color=THEORY_COLOR, ls: str = "--",
                lw: float = 1.1, alpha: float = 0.9, zorder: float = 1.5):
    """A theoretical value beside the measurement.

    ``y`` alone: a horizontal line at ``y``; ``x`` alone: a vertical line at ``x``; both (arrays): a curve.
    """
    if x is not None and y is not None:
        return ax.plot(x, y, color=color, ls=ls, lw=lw, label=label, alpha=alpha, zorder=zorder)[0]
    if y is not None:
        return ax.axhline(y, color=color, ls=ls, lw=lw, label=label, alpha=alpha, zorder=zorder)
    if x is not None:
        return ax.axvline(x, color=color, ls=ls, lw=lw, label=label, alpha=alpha, zorder=zorder)
    raise ValueError("`theory_line` needs `x`, `y` or both")


def slope_guide(ax, x: Sequence[float], anchor: tuple[float, float], slope: float, *, label: str | None = None,
                ls: str = "-", color="0.55"):
    """A reference power law ``y = y0 (x/x0)^slope`` through ``anchor = (x0, y0)`` on log-log axes."""
    x = np.asarray(x, dtype=float)
    x0, y0 = anchor
    return ax.plot(x, y0 * (x / x0) ** slope, color=color, ls=ls, lw=1.0, label=label, zorder=1)[0]


def annotate(ax, text: str, *, loc: str = "upper right", fontsize: float = 6.5) -> None:
    """A small boxed note inside the axes (e.g. measured vs. predicted numbers)."""
    pos = {"upper right": (0.97, 0.96, "right", "top"), "upper left": (0.03, 0.96, "left", "top"),
           "lower right": (0.97, 0.04, "right", "bottom"), "lower left": (0.03, 0.04, "left", "bottom"),
           "center right": (0.97, 0.5, "right", "center")}[loc]
    ax.text(pos[0], pos[1], text, transform=ax.transAxes, ha=pos[2], va=pos[3], fontsize=fontsize,
            bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.7", "alpha": 0.9})


def log_edges(values: Sequence[float]) -> np.ndarray:
    """Cell edges for a heatmap over (possibly uneven) positive grid values on a log axis: geometric midpoints,
    with the outer edges mirrored."""
    v = np.log(np.asarray(sorted(values), dtype=float))
    if len(v) == 1:
        return np.exp(np.array([v[0] - 0.5, v[0] + 0.5]))
    mids = (v[1:] + v[:-1]) / 2
    return np.exp(np.concatenate([[v[0] - (mids[0] - v[0])], mids, [v[-1] + (v[-1] - mids[-1])]]))


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=160)
    return path
