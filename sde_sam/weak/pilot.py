r"""The cost of a weak-error study, estimated up front from a short pilot (issue 21).

A Monte-Carlo cell's time is, to first order, a constant (building the model, the generators, the summaries),
plus its lr steps times the cost of one step on all its paths, plus its recorded times times the cost of the
test functions on all its paths [derived: the engine does the same work per step and per record]:

.. math:: T_\text{cell} \approx c + m\,K\,s(N) + R\,r(N), \qquad s(n) \approx s(n_1) + b\,(n - n_1),

with :math:`K` the cell's lr steps (each ``dt_ratio`` solver steps for a model; the solver check, at
``dt/2``, has :math:`m = 2`, else :math:`m = 1`), :math:`R` its recorded times and :math:`N` its paths.

The pilot measures :math:`c`, :math:`s` and :math:`r` once per *engine* — the discrete method and each model
(coupled: each coupled pair) — on the study's own cell code (:func:`~sde_sam.weak.compute.compute_cell` on
a copy of the cell's spec with fewer paths and :data:`PILOT_STEPS` steps): a warm-up run, then runs at
``16, 64, 256, ...`` paths (capped at :math:`N`) until one takes :data:`RUNG_S` seconds and twice the one
before (or :data:`RUNG_MAX_S`), a 1-step run at the last size (the difference gives :math:`s` free of :math:`c`), and the test functions timed on those many
paths. :math:`s(N)` and :math:`r(N)` are extrapolated linearly in paths from the last two sizes (where the
per-path cost is visible above the per-step overhead), then summed over the cells still to compute: cells
already finished in ``results_dir`` are not counted. Exact-mode cells are closed-form moment recursions
(milliseconds at the sizes exact mode serves): no pilot, counted as free.

The pilot costs a few tenths of a second per engine for cheap problems and stays a few percent of a study
worth announcing; it draws from its own generators (as every run does) inside
:func:`torch.random.fork_rng`, so a study's numbers are bit-identical with and without it. The estimate is
the *serial* time in this process; an executor running cells in parallel divides it by its workers.

Example:
    >>> est = ss.weak.estimate_cost(prob, ss.SAM(0.1, rho=0.05), lrs=[0.1, 0.05], horizon=1.0, x0=x0)  # doctest: +SKIP
    >>> est.seconds, est.frame()  # doctest: +SKIP
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import pandas as pd
import torch

from .._engine import PROGRESS_AFTER_S
from ..observables import record_times, resolve
from .cells import CellSpec, observables
from .compute import compute_cell

ANNOUNCE_AFTER_S = PROGRESS_AFTER_S
"""A study estimated above this many seconds is announced before it starts (as the progress bars)."""
PILOT_STEPS = 4
"""Lr steps of each timed pilot run (a model's lr step is ``dt_ratio`` solver steps)."""
FIRST_PATHS = 16
"""Paths of the first rung; each next rung has 4 times as many, up to the cell's."""
RUNG_S = 0.1
"""The ladder of path counts stops at the first rung (after the second) that takes this long and at least
twice the rung before (its time is then mostly per path, so the line through the two extrapolates)."""
RUNG_MAX_S = 1.0
"""... and in any case at the first rung that takes this long (the pilot stays cheap)."""
RECORD_REPEATS = 3
"""The test functions are timed this many times per rung (the least counts: short timings are noisy)."""

clock: Callable[[], float] = time.perf_counter
"""The pilot's clock (a module attribute: tests replace it, e.g. by a count of evaluations)."""


@dataclass(frozen=True)
class CellCost:
    """One cell's estimate: its key, its lr steps and recorded times, and the seconds estimated."""

    kind: str
    lr: float
    rho: float
    steps: int
    records: int
    seconds: float


@dataclass(frozen=True)
class CostEstimate:
    """What a weak-error study is estimated to cost, before it starts (:func:`sde_sam.weak.estimate_cost`).

    Attributes:
        seconds: Estimated serial seconds of the cells still to compute.
        cells: One :class:`CellCost` per cell still to compute, in the study's order.
        finished: Keys ``(kind, lr, rho)`` of the cells already in ``results_dir`` (not counted).
        pilot_seconds: What the pilot itself took.
        how: How it was measured, in words.
    """

    seconds: float
    cells: tuple[CellCost, ...]
    finished: tuple[tuple, ...]
    pilot_seconds: float
    how: str

    def frame(self) -> pd.DataFrame:
        """One row per cell still to compute: kind, lr, rho, steps, records, seconds."""
        cols = ["kind", "lr", "rho", "steps", "records", "seconds"]
        return pd.DataFrame([[getattr(c, k) for k in cols] for c in self.cells], columns=cols)

    def message(self) -> str:
        """The one-line announcement."""
        done = f", {len(self.finished)} already finished" if self.finished else ""
        return (f"weak_error: {len(self.cells)} cells to compute{done}, estimated {format_seconds(self.seconds)} "
                f"(serial; from a {self.pilot_seconds:.1f} s pilot; progress=False silences this, "
                "sde_sam.weak.estimate_cost gives the breakdown)")

    def __str__(self) -> str:
        return self.message()


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"``, ``"2.1 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2g} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class _EngineCost:
    """Fitted costs of one engine at the cells' path count: per cell, per lr step, per recorded time."""

    per_cell: float
    per_step: float
    per_record: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # the clock reads host time: wait for the queued kernels
        torch.cuda.synchronize(device)


def _time_run(spec: CellSpec, n: int, steps: int) -> float:
    """Seconds of the cell's own code on ``n`` paths for ``steps`` lr steps, recording at 0 and the end."""
    _sync(spec.x0.device)
    t0 = clock()
    compute_cell(replace(spec, n_paths=n, steps=steps, every=steps))
    _sync(spec.x0.device)
    return clock() - t0


def _time_records(spec: CellSpec, n: int) -> float:
    """Seconds of one recorded time: the test functions on ``n`` paths (twice when coupled: both sides)."""
    fns = resolve(observables(spec.problem, spec.tfs), spec.problem)
    x = spec.x0.expand(n, -1).clone()
    best = math.inf
    for _ in range(RECORD_REPEATS):
        _sync(x.device)
        t0 = clock()
        for fn in fns.values():
            fn(x)
        _sync(x.device)
        best = min(best, clock() - t0)
    return best * (2 if spec.coupled else 1)


def _engine_cost(spec: CellSpec) -> _EngineCost:
    """The ladder of runs on one engine (module docstring) and the linear extrapolation to ``spec.n_paths``."""
    big = spec.n_paths
    _time_run(spec, min(big, FIRST_PATHS), 1)  # warm-up: lazy imports, first allocations, caches
    rungs, n = [], min(big, FIRST_PATHS)
    while True:
        rungs.append((n, _time_run(spec, n, PILOT_STEPS), _time_records(spec, n)))
        t = rungs[-1][1]
        if n >= big or t >= RUNG_MAX_S or (len(rungs) >= 2 and t >= RUNG_S and t >= 2 * rungs[-2][1]):
            break
        n = min(big, 4 * n)
    n_hi, t_hi, r_hi = rungs[-1]
    t_one = _time_run(spec, n_hi, 1)
    # Per step from PILOT_STEPS steps against one (the constant and the two records cancel); a noisy
    # difference at or below zero falls back on the whole run per step (an upper bound).
    s_hi = (t_hi - t_one) / (PILOT_STEPS - 1) if t_hi > t_one else t_hi / PILOT_STEPS
    per_cell = max(0.0, t_one - s_hi - 2 * r_hi)
    if len(rungs) == 1:
        return _EngineCost(per_cell, s_hi, r_hi)
    n_lo, t_lo, r_lo = rungs[-2]
    slope_s = max(0.0, (t_hi - t_lo - 2 * (r_hi - r_lo)) / (PILOT_STEPS * (n_hi - n_lo)))
    slope_r = max(0.0, (r_hi - r_lo) / (n_hi - n_lo))
    return _EngineCost(per_cell, s_hi + slope_s * (big - n_hi), r_hi + slope_r * (big - n_hi))


def _engine(spec: CellSpec) -> str:
    """Cells on the same engine cost the same per step: the discrete run, or a model and its solver check."""
    return spec.label


def estimate_cells(specs: Sequence[CellSpec], *, finished: Sequence[tuple] = ()) -> CostEstimate:
    """Estimate the cells ``specs`` (those still to compute) from a pilot per engine (module docstring).

    Args:
        specs: The cells to compute, all of one study.
        finished: Keys of the study's cells already computed (reported, not counted).

    Returns:
        A :class:`CostEstimate`.
    """
    t0 = time.perf_counter()
    finished = tuple(finished)
    if not specs:
        return CostEstimate(0.0, (), finished, 0.0, "nothing to compute")
    if specs[0].mode == "exact":
        cells = tuple(CellCost(s.kind, s.method.lr, s.method.rho, s.steps, len(record_times(s.steps, s.every)), 0.0)
                      for s in specs)
        return CostEstimate(0.0, cells, finished, 0.0, "exact mode: closed-form moment recursions, counted as "
                            "free (no pilot)")
    costs: dict[str, _EngineCost] = {}
    device = specs[0].x0.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the study's own cells warn, once, about what matters
        for spec in specs:
            if _engine(spec) not in costs:  # measured on the model itself (a solver check is 2 x its steps)
                costs[_engine(spec)] = _engine_cost(replace(spec, kind=spec.label))
    cells = []
    for s in specs:
        e, records = costs[_engine(s)], len(record_times(s.steps, s.every))
        seconds = e.per_cell + (2 if s.solver else 1) * s.steps * e.per_step + records * e.per_record
        cells.append(CellCost(s.kind, s.method.lr, s.method.rho, s.steps, records, seconds))
    how = (f"pilot per engine ({', '.join(costs)}): {PILOT_STEPS} lr steps at {FIRST_PATHS}, "
           f"{4 * FIRST_PATHS}, ... paths until a run takes {RUNG_S} s, extrapolated linearly in paths, steps, "
           "records and cells")
    return CostEstimate(float(sum(c.seconds for c in cells)), tuple(cells), finished, time.perf_counter() - t0, how)


def announce(estimate: CostEstimate) -> None:
    """Say, on one line of stderr (where the progress bars go), what a study worth announcing will cost."""
    if estimate.seconds > ANNOUNCE_AFTER_S:
        from tqdm.auto import tqdm

        tqdm.write(estimate.message(), file=sys.stderr)
