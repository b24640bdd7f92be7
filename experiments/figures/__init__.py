"""Draw every figure from saved results only (``results/<study>/*.csv``), one PNG per figure.

    python -m experiments.figures [--results results] [--figs DIR] [--only study ...]

The figures of a study are declared in :mod:`experiments.registry`; figure ``<figure>`` of study ``<name>``
is drawn by the function ``experiments.figures.<name>.<figure>(results, figs)``, which returns the path of
``figs/<figure>.png``. A study whose results are missing is skipped with a message; nothing is recomputed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from experiments.registry import NAMES, STUDIES


def make_figures(results: str | Path = "results", figs: str | Path | None = None,
                 only: Sequence[str] | None = None) -> list[Path]:
    """Draw the figures of every registered study (or ``only`` those) whose results exist in ``results``;
    return the PNG paths. ``figs`` defaults to ``results/figs``."""
    from sde_sam import plotting as pl

    results = Path(results)
    figs = results / "figs" if figs is None else Path(figs)
    unknown = sorted(set(only or ()) - set(NAMES))
    if unknown:
        raise ValueError(f"`only` must name studies of {NAMES}, got {unknown}")
    pl.style()
    written = []
    for study in STUDIES:
        if only and study.name not in only:
            continue
        if not (results / study.name / "config.json").exists():
            print(f"[figures] no results for {study.name} in {results}: skipped", file=sys.stderr)
            continue
        for path in study.draw(results, figs):
            print(f"[figures] {path}")
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None, *, default_figs: Path | None = None,
         prog: str = "python -m experiments.figures") -> list[Path]:
    """The command line: ``--results``, ``--figs`` (default ``default_figs``, else ``<results>/figs``),
    ``--only``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
    parser.add_argument("--figs", type=Path, default=default_figs,
                        help=f"where the PNGs go (default: {default_figs or 'RESULTS/figs'})")
    parser.add_argument("--only", nargs="*", choices=NAMES, help="only these studies")
    args = parser.parse_args(argv)
    return make_figures(args.results, args.figs, args.only)
