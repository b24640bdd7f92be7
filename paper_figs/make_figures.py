"""Redraw the committed figures in ``paper_figs/`` from saved results only (``results/<study>/*.csv``).

    python paper_figs/make_figures.py [--results results] [--figs paper_figs] [--only study ...]

The same as ``python -m experiments.figures --figs paper_figs``: the studies and their figures are declared
in :mod:`experiments.registry`, the drawing in :mod:`experiments.figures` (importable once the checkout is
installed: ``pip install -e .``). ``paper_figs/PROVENANCE.md`` records the run behind the committed PNGs.
"""
from __future__ import annotations

from pathlib import Path

from experiments.figures import make_figures  # noqa: F401  (re-exported: make_figures(results, figs, only))
from experiments.figures import main as _main

HERE = Path(__file__).resolve().parent


def main(argv=None) -> list[Path]:
    return _main(argv, default_figs=HERE, prog="python paper_figs/make_figures.py")


if __name__ == "__main__":
    main()
