r"""The cost of a weak-error study, estimated up front from a short pilot (issue 21).

A Monte-Carlo cell's time is, to first order, a constant (building the model, the generators, the summaries),
plus its lr steps times the cost of one step on all its paths, plus its recorded times times the cost of the
test functions on all its paths [derived: the engine does the same work per step and per record]:

.. math:: T_\text{cell} \approx c(N) + m\,K\,s(N) + R\,r(N),

with :math:`K` the cell's lr steps (each ``dt_ratio`` solver steps for a model; the solver check, at
``dt/2``, has :math:`m = 2`, else :math:`m = 1`), :math:`R` its recorded times, :math:`N` its paths, and
:math:`c, s, r` affine in the paths (a per-run cost may grow with them too: the random streams of a block).

The pilot measures :math:`c`, :math:`s` and :math:`r` once per *engine* — the discrete method and each model
(coupled: each coupled pair) — on the study's own cell code (:func:`~sde_sam.weak.compute.compute_cell`'s, on
a copy of the cell's spec with fewer paths and steps): a warm-up run, then runs of one lr step at
``16, 128, 1024, ...`` paths (capped at :math:`N`) until one takes :data:`RUNG_S` seconds and twice the one
before (its time is then mostly per path), or :data:`RUNG_MAX_S`; at the last size a longer run too,
spanning :data:`SPAN_STEPS` solver steps (at most the engine's longest cell and :data:`PILOT_SHARE` of its work; the difference gives :math:`s` free
of :math:`c`, with the engine's noise drawn in blocks of up to 64 steps counted), at the size before a 2-step run, and the test functions timed
alone (:math:`r`). :math:`c, s, r`
are extrapolated linearly in paths from those two sizes to :math:`N` and summed over the cells still to
compute: cells already finished in ``results_dir`` are not counted. Runs are timed in CPU seconds (:data:`clock`)
and the result scaled by the pilot's overall wall / CPU time, so that a load spike during one short run does
not multiply the estimate. When the 1-step runs alone (each lr step
costed as a whole 1-step run: an overestimate) put the study below :data:`QUICK_S` seconds, that is the
estimate and the longer runs are skipped. Exact-mode cells are closed-form moment
recursions (milliseconds at the sizes exact mode serves): no pilot, counted as free.

The pilot costs a fraction of a second per engine for cheap problems and a few percent of a study worth
announcing (plus, the first time in a process, the warm-up the study's first cell would otherwise pay); it
draws from its own generators (as every run does) inside :func:`torch.random.fork_rng`, so a study's numbers
are bit-identical with and without it. The estimate is the *serial* time in this process; an executor running
cells in parallel divides it by its workers. Accuracy: within 15% on three studies of 36-61 s
(``benchmarks/bench_pilot.py``, ``benchmarks/README.md``).

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
from .cells import CellSpec, _mc_cell, observables
from .coupling import coupled_cell

ANNOUNCE_AFTER_S = PROGRESS_AFTER_S
"""A study estimated above this many seconds is announced before it starts (as the progress bars)."""
SPAN_STEPS = 64
"""Solver steps the long pilot run spans (at most as many lr steps as the engine's longest cell): the engine
draws the noise in blocks of up to 64 steps, so a shorter run would miss that cost of a longer cell."""
FIRST_PATHS = 16
"""Paths of the first rung; each next rung has :data:`RUNG_FACTOR` times as many, up to the cell's."""
RUNG_FACTOR = 8
PILOT_SHARE = 0.04
"""... and at most this share of the engine's work (lr steps x paths over its cells, a solver check counted
twice), so that the pilot stays a few percent of a small study too (at the price of the noise blocks)."""
RUNG_S = 0.1
"""The ladder of path counts stops at the first rung (after the second) that takes this long and at least
twice the rung before (its time is then mostly per path, so the line through the two extrapolates)."""
RUNG_MAX_S = 0.5
"""... and in any case at the first rung that takes this long (the pilot stays cheap)."""
RECORD_REPEATS = 3
"""The test functions are timed up to this many times per rung (the least counts: short timings are noisy)
while the repeats have taken less than :data:`RECORD_S` seconds."""
RECORD_S = 0.02
QUICK_S = ANNOUNCE_AFTER_S / 4
"""A study that the 1-step runs alone put below this many seconds is not refined (their upper bound is its
estimate): the pilot stays a small share of small studies, and no estimate near the announcement is crude."""

clock: Callable[[], float] = time.process_time
"""What the pilot times a run with (a module attribute: tests replace it, e.g. by a count of evaluations):
this process's CPU time, which a load spike from other processes does not inflate (a short run's wall time
can double under one). On a GPU the wall clock (the host waits for the kernels)."""
wall: Callable[[], float] = time.perf_counter
"""The wall clock: over the whole pilot, wall / CPU time scales the estimate (the share of the cores this
process gets, and its threads: the engine draws noise on several)."""


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


def _pilot_cell(spec: CellSpec):
    """A Monte-Carlo cell's own code (:func:`~sde_sam.weak.compute.compute_cell`'s dispatch), bound at import:
    a test that replaces ``cells._mc_cell`` to count or fail the study's cells does not see the pilot's runs."""
    return coupled_cell(spec) if spec.coupled else _mc_cell(spec)


_run_cell: Callable[[CellSpec], object] = _pilot_cell
"""What the pilot times (a module attribute: tests replace it by a cost model)."""


def _timed(device: torch.device, fn: Callable[[], object], tally: list[float]) -> float:
    """Seconds of ``fn()`` by :data:`clock` (CPU; wall on a GPU); adds (wall, that) to ``tally``."""
    cpu = clock if device.type == "cpu" else wall
    _sync(device)
    w0, t0 = wall(), cpu()
    fn()
    _sync(device)
    t, w = cpu() - t0, wall() - w0
    tally[0] += w
    tally[1] += t
    return t


def _time_run(spec: CellSpec, n: int, steps: int, tally: list[float]) -> float:
    """Seconds of the cell's own code on ``n`` paths for ``steps`` lr steps, recording at 0 and the end."""
    return _timed(spec.x0.device, lambda: _run_cell(replace(spec, n_paths=n, steps=steps, every=steps)), tally)


def _time_records(spec: CellSpec, n: int, tally: list[float]) -> float:
    """Seconds of one recorded time: the test functions on ``n`` paths (twice when coupled: both sides)."""
    fns = resolve(observables(spec.problem, spec.tfs), spec.problem)
    x = spec.x0.expand(n, -1).clone()
    best, spent = math.inf, 0.0
    for _ in range(RECORD_REPEATS):
        t = _timed(x.device, lambda: [fn(x) for fn in fns.values()], tally)
        best, spent = min(best, t), spent + t
        if spent >= RECORD_S:
            break
    return best * (2 if spec.coupled else 1)


def _ladder(spec: CellSpec, tally: list[float]) -> list[tuple[int, float, float]]:
    """``(n, t1, r)`` per rung: a 1-step run and one recorded time at ``n`` paths, ``n = 16, 128, ...`` until a
    run takes RUNG_S seconds and twice the one before (its time is then mostly per path), or RUNG_MAX_S."""
    big = spec.n_paths
    _time_run(spec, min(big, FIRST_PATHS), 1, [0.0, 0.0])  # warm-up (untallied): lazy imports, first allocations
    rungs, n = [], min(big, FIRST_PATHS)
    while True:
        rungs.append((n, _time_run(spec, n, 1, tally), _time_records(spec, n, tally)))
        t = rungs[-1][1]
        if n >= big or t >= RUNG_MAX_S or (len(rungs) >= 2 and t >= RUNG_S and t >= 2 * rungs[-2][1]):
            return rungs
        n = min(big, RUNG_FACTOR * n)


def _line(points: list[tuple[int, Sequence[float]]], big: int) -> list[float]:
    """Each value on the line through the last two ``(n, values)`` at ``big`` paths, never below zero."""
    if len(points) == 1:
        return list(points[0][1])
    (n_lo, lo), (n_hi, hi) = points[-2:]
    return [max(0.0, h + (h - l) * (big - n_hi) / (n_hi - n_lo)) for l, h in zip(lo, hi)]


def _bound(spec: CellSpec, rungs) -> _EngineCost:
    """An upper bound from the ladder alone: every lr step costed as a whole 1-step run (its constant, a block
    of noise and two records included)."""
    t1, r = _line([(n, (t, rr)) for n, t, rr in rungs[-2:]], spec.n_paths)
    return _EngineCost(0.0, t1, r)


def _refine(spec: CellSpec, rungs, long: int, work: float, tally: list[float]) -> _EngineCost:
    """:math:`c, s, r` at ``spec.n_paths`` (module docstring): a long run at the last rung's size (``long`` lr
    steps at most, and at most PILOT_SHARE of ``work``, the engine's lr steps x paths), 2 steps at the one
    before; linear in paths through the two sizes."""
    long = max(2, min(long, int(PILOT_SHARE * work / rungs[-1][0])))
    steps = [2, long][-len(rungs[-2:]):]
    fits = [_split(n, t, r, _time_run(spec, n, k, tally), k) for (n, t, r), k in zip(rungs[-2:], steps)]
    # A per-run cost may grow with the paths too (e.g. the random streams of a block of steps): c, s and r
    # are each extrapolated.
    return _EngineCost(*_line([(n, rest) for n, *rest in fits], spec.n_paths))


def _split(n: int, t_one: float, r: float, t_long: float, long: int) -> tuple[int, float, float, float]:
    """``(n, c, s, r)`` at ``n`` paths from runs of one and ``long`` lr steps (two records each): per step the
    difference (the constant and the records cancel); a noisy difference at or below zero falls back on the
    whole long run per step (an upper bound)."""
    s = (t_long - t_one) / (long - 1) if t_long > t_one else t_long / long
    return n, max(0.0, t_one - s - 2 * r), s, r


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
    engines = {}  # engine -> the spec it is measured on: the model itself (a solver check is 2 x its steps)
    for spec in specs:
        engines.setdefault(_engine(spec), replace(spec, kind=spec.label))
    device = specs[0].x0.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the study's own cells warn, once, about what matters
        tally = [0.0, 0.0]  # wall, timed seconds
        ladders = {e: _ladder(spec, tally) for e, spec in engines.items()}
        costs = {e: _bound(engines[e], rungs) for e, rungs in ladders.items()}
        cells = _cell_costs(specs, costs)
        refined = sum(c.seconds for c in cells) * tally[0] / max(tally[1], 1e-300) >= QUICK_S
        if refined:  # a study that may be worth announcing: the long runs
            for e, spec in engines.items():
                mine = [s for s in specs if _engine(s) == e]
                per_lr = 1 if spec.kind == "discrete" else spec.dt_ratio
                long = max(2, min(max(s.steps for s in mine), 1 + -(-SPAN_STEPS // per_lr)))
                work = sum((2 if s.solver else 1) * s.steps * s.n_paths for s in mine)
                costs[e] = _refine(spec, ladders[e], long, work, tally)
    share = tally[0] / tally[1] if tally[1] > 0 else 1.0
    costs = {e: _EngineCost(*(share * v for v in (c.per_cell, c.per_step, c.per_record))) for e, c in costs.items()}
    cells = _cell_costs(specs, costs)
    how = (f"pilot per engine ({', '.join(costs)}): runs of 1 lr step at {FIRST_PATHS}, "
           f"{RUNG_FACTOR * FIRST_PATHS}, ... paths until one takes {RUNG_S} s and twice the one before, "
           + (f"then runs spanning up to {SPAN_STEPS} solver steps at the last size (2 steps at the one before); "
              "extrapolated linearly in paths, steps, records and cells" if refined else
              f"which put the study below {QUICK_S} s: their overestimate (each lr step costed as a whole "
              "1-step run), not refined")
           + f"; CPU seconds x {share:.2f}, the pilot's wall / CPU time")
    return CostEstimate(float(sum(c.seconds for c in cells)), tuple(cells), finished, time.perf_counter() - t0, how)


def _cell_costs(specs: Sequence[CellSpec], costs: dict[str, _EngineCost]) -> list[CellCost]:
    out = []
    for s in specs:
        e, records = costs[_engine(s)], len(record_times(s.steps, s.every))
        seconds = e.per_cell + (2 if s.solver else 1) * s.steps * e.per_step + records * e.per_record
        out.append(CellCost(s.kind, s.method.lr, s.method.rho, s.steps, records, seconds))
    return out


def announce(estimate: CostEstimate) -> None:
    """Say, on one line of stderr (where the progress bars go), what a study worth announcing will cost."""
    if estimate.seconds > ANNOUNCE_AFTER_S:
        from tqdm.auto import tqdm

        tqdm.write(estimate.message(), file=sys.stderr)
