"""One cell of a weak-error study, in any process: exact moments, a coupled pair, or a Monte-Carlo run.

The dispatch sits above the three kinds of cell (:mod:`.exact`, :mod:`.coupling`, :mod:`.cells`), which
import only :mod:`.cells`' specs and frames: no import circle inside :mod:`sde_sam.weak`."""
from __future__ import annotations

import time

import pandas as pd

from . import cells
from .cells import CellSpec
from .coupling import coupled_cell
from .exact import exact_cell


def compute_cell(spec: CellSpec) -> tuple[pd.DataFrame, float]:
    """Run one cell (any process): its per-time frame and the seconds it took."""
    t0 = time.perf_counter()
    if spec.mode == "exact":
        out = exact_cell(spec)
    elif spec.coupled:
        out = coupled_cell(spec)
    else:
        out = cells._mc_cell(spec)  # through the module: tests may replace it
    return out, time.perf_counter() - t0
