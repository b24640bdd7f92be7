r"""Weak-error studies: how far a discrete method and its SDE models are apart in law (MATH §5).

For each learning rate :math:`\eta` of a grid (with :math:`\rho` fixed or a function of :math:`\eta`), the
study estimates :math:`\mathbb E\phi(x_k)` for the discrete method and :math:`\mathbb E\phi(X_{k\eta})` for
each SDE model at common times :math:`t = k\eta\le T`, with standard errors, and fits the weak order from

.. math:: \max_{k\le T/\eta}\big|\mathbb E\phi(x_k) - \mathbb E\phi(X_{k\eta})\big| \approx C\,\eta^{\alpha}.

Three ways to estimate. *Exact* (linear-Gaussian cases: SGD or USAM, with or without momentum, on a
:class:`~sde_sam.Quadratic`): mean and covariance recursions and Ornstein–Uhlenbeck moments (MATH §3.4,
§3.5), no Monte-Carlo error. *Monte Carlo*: :func:`sde_sam.run` for the method and :func:`sde_sam.simulate`
for each model, independent seeds, the SDE integrated with :math:`\Delta t = \eta/\texttt{dt\_ratio}`
(MATH §4: :math:`\Delta t\ge\eta` proves nothing). *Coupled* (``coupling=True``, MATH §5.1): both driven by
the same Gaussian draws, so the gap's SE shrinks with the gap. The max-over-time gap is chosen on one half
of the paths and estimated on the other (:mod:`.estimators`), so it is not biased by the maximum.

Every cell (a discrete run, a model, a solver check, per lr) computes from its own spec and seed, through
:func:`sde_sam.executors.run_cells` (``executor=``); this process alone writes ``results_dir``, one file per
cell as it completes, and a rerun computes only the missing cells.

Example:
    >>> prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)), noise_cov=1.0)
    >>> study = ss.weak_error(prob, ss.USAM(0.1, rho=0.1), lrs=[0.1, 0.05, 0.025], horizon=1.0,
    ...                       x0=torch.ones(2, dtype=torch.float64), sde_order=[0, 1])
    >>> study.weak_order("loss", model="order 1").slope  # doctest: +SKIP
    1.0...
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from ..executors import run_cells
from ..methods import Method
from ..problems.base import Problem
from .cells import CellSpec, cell_specs, model_label, test_function_specs
from .compute import compute_cell
from . import pilot as _pilot
from . import storage
from .validate import _check_arguments, _check_coupling, _config, _resolve_mode
from .study import WeakErrorStudy

COLUMNS = ["lr", "rho", "model", "test_function", "time", "discrete_mean", "discrete_se",
           "sde_mean", "sde_se", "gap", "gap_se", "gap_a", "gap_se_a", "gap_b", "gap_se_b"]
DEFAULT_N_PATHS = 20_000


def weak_error(problem: Problem, method: Method, *, lrs: Sequence[float], horizon: float, x0: torch.Tensor,
               n_paths: int = DEFAULT_N_PATHS, seed: int = 0, test_functions: Sequence | None = None,
               sde_order=1, rho: float | Callable[[float], float] | None = None, dt_ratio: int = 10,
               mode: str = "auto", coupling: bool = False, record_every: int | None = None,
               diffusion: str = "factor", expectation: Any = "auto", increments: str = "gaussian",
               solver_check: bool = True, chunk_size: int | None = None, max_norm: float = math.inf,
               results_dir: str | Path | None = None, executor: Any = None,
               progress: bool | None = None, pilot: bool = True) -> WeakErrorStudy:
    r"""Weak error of ``method`` against its SDE models over a grid of learning rates (MATH §5).

    For each ``lr`` the method runs ``floor(horizon / lr)`` steps; each model is integrated by
    Euler–Maruyama with ``dt = lr / dt_ratio``; both record the test functions every ``record_every``
    steps (the SDE every ``record_every * dt_ratio`` solver steps), so they meet at the same times
    :math:`t = k\eta`.

    Args:
        problem: The objective and noise model.
        method: The discrete method; its ``lr`` (and ``rho``, see below) are replaced per grid point. Momentum
            methods are compared with the momentum SDE (MATH §3.5).
        lrs: Learning rates (a slope needs at least two).
        horizon: Time horizon :math:`T` on the SDE scale.
        x0: ``(d,)`` start shared by every path, in the problem's dtype.
        n_paths: Paths per simulation (Monte Carlo; at least 4, split in two halves). Exact mode ignores it.
        seed: Seed; each cell gets an independent stream derived from it, the lr's value and the cell's kind.
        test_functions: Names (``"loss"``, ``"x_norm_sq"``, ``"grad_norm_plus_x_norm"``, ``"grad_norm"``,
            ``"x_norm"``, ``"lambda_max"``) or callables ``(n_paths, d) -> (n_paths,)`` named by ``__name__``.
            Default: loss, :math:`\|x\|^2` and :math:`\|\nabla f\| + \|x\|` (the SAM-SDE paper's).
        sde_order: ``0``, ``1``, ``2``, ``"exact"``, or a list of them, compared in one study.
        rho: ``None`` (the method's), a float, or a callable ``lr -> rho`` (e.g. ``lambda lr: lr**0.5``).
        dt_ratio: ``lr / dt`` (integer; below 2 warns: :math:`\Delta t\ge\eta` proves nothing, MATH §4).
        mode: ``"auto"`` (exact when SGD/USAM on a :class:`~sde_sam.Quadratic` and not coupled), ``"exact"``
            or ``"monte_carlo"``.
        coupling: Drive the discrete method and each model by the same Gaussian draws (MATH §5.1): additive
            Gaussian noise and SGD, USAM, DNSAM or Unified SAM with ``lam=0`` (and their momentum forms) with
            an affine model; anything else is a ``ValueError`` saying why.
        record_every: Discrete steps between compared times (default: every step in exact mode, about 100
            times per run in Monte Carlo).
        diffusion, expectation, increments: Passed to :func:`sde_sam.sde_model` / :func:`sde_sam.simulate`.
        solver_check: Also integrate each model at ``dt / 2`` and report the difference (``solver_error``).
        chunk_size, max_norm: Passed to the runners.
        results_dir: Save each finished cell there (CSV, with ``config.json``) and resume from it.
        executor: ``None`` (cells one after another here) or any ``concurrent.futures``-style executor, e.g.
            :class:`sde_sam.executors.RayExecutor` (see :func:`sde_sam.executors.run_cells`).
        progress: Progress bar over cells (``None``: on a terminal, in Monte-Carlo mode).
        pilot: Estimate the cost of the cells still to compute from a short pilot before starting (Monte
            Carlo; :func:`estimate_cost`, :mod:`.pilot`): each cell's estimate is in ``study.cells``
            (``estimated_seconds``, beside the measured ``seconds``), and an estimate above 10 s is announced
            on one line of stderr unless ``progress=False``. It does not change the study's numbers.

    Returns:
        A :class:`WeakErrorStudy`.

    Example:
        >>> study = ss.weak_error(prob, ss.USAM(0.1, rho=0.1), lrs=[0.1, 0.05], horizon=1.0, x0=x0,
        ...                       rho=lambda lr: lr**0.5, sde_order=[0, 1])  # doctest: +SKIP
        >>> study.weak_order("loss", "order 0").slope  # doctest: +SKIP
        0.5...
    """
    plan = _plan(problem, method, lrs=lrs, horizon=horizon, x0=x0, n_paths=n_paths, seed=seed,
                 test_functions=test_functions, sde_order=sde_order, rho=rho, dt_ratio=dt_ratio, mode=mode,
                 coupling=coupling, record_every=record_every, diffusion=diffusion, expectation=expectation,
                 increments=increments, solver_check=solver_check, chunk_size=chunk_size, max_norm=max_norm)
    mode, grid, labels, coupled, config, specs = plan
    if not isinstance(pilot, bool):
        raise ValueError(f"`pilot` must be True or False, got pilot={pilot!r}")
    show = progress if progress is not None else None if mode == "monte_carlo" else False
    store = storage.open_cells(results_dir, config)
    done, cell_rows = _run(specs, store, config, executor, show, n_paths if mode != "exact" else None,
                           pilot=pilot and mode == "monte_carlo", announce=progress is not False)
    table, solver = _assemble(grid, labels, done, mode, coupled, solver_check, dt_ratio)
    study = WeakErrorStudy(table=table, solver_table=solver, cells=pd.DataFrame(cell_rows), config=config, mode=mode)
    if results_dir is not None:
        study.save(results_dir)
    return study


class _Plan(NamedTuple):
    """A study's cells and settings, before any cell runs (:func:`weak_error`, :func:`estimate_cost`)."""

    mode: str
    grid: list
    labels: dict
    coupled: bool
    config: dict
    specs: list[CellSpec]


def _plan(problem, method, *, lrs, horizon, x0, n_paths, seed, test_functions, sde_order, rho, dt_ratio, mode,
          coupling, record_every, diffusion, expectation, increments, solver_check, chunk_size,
          max_norm) -> _Plan:
    """Validate the arguments (warnings point at the caller of :func:`weak_error`) and list the cells."""
    lrs, orders, rho = _check_arguments(problem, method, lrs=lrs, horizon=horizon, x0=x0, n_paths=n_paths,
                                        dt_ratio=dt_ratio, record_every=record_every, sde_order=sde_order,
                                        mode=mode, diffusion=diffusion, rho=rho, coupling=coupling,
                                        expectation=expectation)
    mode, tfs = _resolve_mode(problem, method, mode, test_function_specs(test_functions), lrs, rho, coupling)
    if mode == "exact" and n_paths != DEFAULT_N_PATHS:
        warnings.warn(f"exact mode computes the moments in closed form and ignores n_paths={n_paths}; pass "
                      "mode='monte_carlo' to simulate paths", stacklevel=3)
    if len(lrs) < 2:
        warnings.warn(f"lrs={lrs}: a slope needs at least two learning rates; the study gives the gaps only",
                      stacklevel=3)
    grid = []
    for lr in lrs:
        m = method.with_lr(lr) if rho is None else method.with_lr(lr).with_rho(float(rho(lr)) if callable(rho) else rho)
        steps = int(math.floor(horizon / lr + 1e-9))
        every = record_every or (1 if mode == "exact" else max(1, -(-steps // 100)))
        grid.append((m, steps, min(every, steps)))
    labels = {model_label(o): o for o in orders}
    coupled = coupling and mode != "exact"
    if coupled:
        _check_coupling(problem, grid, labels, diffusion, expectation, increments)
    config = _config(problem, method, x0, mode, horizon, lrs, grid, labels, tfs, n_paths, seed, dt_ratio,
                     record_every, diffusion, expectation, increments, solver_check, max_norm, coupled)
    opts = dict(problem=problem, x0=x0, tfs=tfs, n_paths=n_paths, seed=seed, dt_ratio=dt_ratio,
                diffusion=diffusion, expectation=expectation, increments=increments, chunk_size=chunk_size,
                max_norm=max_norm)
    specs = cell_specs(grid, labels, mode, coupled, solver_check, opts)
    return _Plan(mode, grid, labels, coupled, config, specs)


def estimate_cost(problem: Problem, method: Method, *, lrs: Sequence[float], horizon: float, x0: torch.Tensor,
                  n_paths: int = DEFAULT_N_PATHS, seed: int = 0, test_functions: Sequence | None = None,
                  sde_order=1, rho: float | Callable[[float], float] | None = None, dt_ratio: int = 10,
                  mode: str = "auto", coupling: bool = False, record_every: int | None = None,
                  diffusion: str = "factor", expectation: Any = "auto", increments: str = "gaussian",
                  solver_check: bool = True, chunk_size: int | None = None, max_norm: float = math.inf,
                  results_dir: str | Path | None = None) -> _pilot.CostEstimate:
    """What :func:`weak_error` with these arguments would cost, from a short pilot (:mod:`.pilot`).

    The arguments are :func:`weak_error`'s (less ``executor``, ``progress`` and ``pilot``), validated the same
    way. Cells already finished in ``results_dir`` are listed, not counted; nothing is written there. The
    estimate is the serial time in this process (an executor divides it by its workers); exact mode needs
    no pilot (closed forms, counted as free).

    Returns:
        A :class:`~sde_sam.weak.pilot.CostEstimate`: ``seconds``, one :class:`~sde_sam.weak.pilot.CellCost` per
        cell (``frame()`` as a table), the finished cells, the pilot's own seconds and how it was measured.

    Example:
        >>> est = ss.weak.estimate_cost(prob, ss.SAM(0.1, rho=0.05), lrs=[0.1, 0.05], horizon=1.0, x0=x0)  # doctest: +SKIP
        >>> print(est)  # doctest: +SKIP
        weak_error: 10 cells to compute, estimated 3.5 min (serial; from a 1.2 s pilot; ...)
    """
    mode, _, _, _, config, specs = _plan(
        problem, method, lrs=lrs, horizon=horizon, x0=x0, n_paths=n_paths, seed=seed, test_functions=test_functions,
        sde_order=sde_order, rho=rho, dt_ratio=dt_ratio, mode=mode, coupling=coupling, record_every=record_every,
        diffusion=diffusion, expectation=expectation, increments=increments, solver_check=solver_check,
        chunk_size=chunk_size, max_norm=max_norm)
    store = None  # read only: a study's results_dir is written by weak_error alone
    if results_dir is not None and (Path(results_dir) / "cells").is_dir():
        from .._io import CellStore

        store = CellStore(Path(results_dir) / "cells")
    finished = [s.key for s in specs if storage.load_cell(store, s.key, config) is not None]
    return _pilot.estimate_cells([s for s in specs if s.key not in finished], finished=finished)


def _cell(spec: CellSpec):
    """The cell function handed to the executor (module level: it pickles)."""
    return compute_cell(spec)


def _run(specs: list[CellSpec], store, config: dict, executor, show, n_paths: int | None, *, pilot: bool = False,
         announce: bool = False):
    """Load the saved cells (each checked against the settings it records), estimate the missing ones from a
    pilot (``pilot``; announced when worth it), run them through ``run_cells`` (saving each as it completes)."""
    done, source, seconds = {}, {}, {}
    for spec in specs:
        frame = storage.load_cell(store, spec.key, config)
        if frame is not None:
            done[spec.key], source[spec.key], seconds[spec.key] = frame, "loaded", 0.0
    estimated = {}
    if pilot:
        try:
            estimate = _pilot.estimate_cells([s for s in specs if s.key not in done], finished=list(done))
        except Exception as err:  # the cells report their own failures (CellErrors), as without a pilot
            warnings.warn(f"the cost pilot failed ({type(err).__name__}: {err}); the study runs without an estimate",
                          stacklevel=3)
        else:
            estimated = {(c.kind, c.lr, c.rho): c.seconds for c in estimate.cells}
            if announce:
                _pilot.announce(estimate)

    def finished(key, result) -> None:  # in this process only: the one writer of results_dir
        frame, secs = result
        storage.save_cell(store, key, config, frame)
        done[key], source[key], seconds[key] = frame, "computed", secs

    todo = [(s.key, s) for s in specs if s.key not in done]
    run_cells(todo, _cell, executor=executor, on_result=finished, progress=show, desc="weak error")
    rows = []
    for spec in specs:
        frame = done[spec.key]
        n_div = int(frame["n_diverged"].iloc[0]) if "n_diverged" in frame else 0
        if n_div and source[spec.key] == "computed":
            warnings.warn(f"{spec.kind} at lr={spec.method.lr:g}: {n_div} of {n_paths} paths diverged and are "
                          "left out", stacklevel=3)
        rows.append({"kind": spec.kind, "lr": spec.method.lr, "rho": spec.method.rho, "n_paths": n_paths,
                     "n_diverged": n_div, "seconds": seconds[spec.key], "source": source[spec.key],
                     "estimated_seconds": estimated.get(spec.key, math.nan)})
    return done, rows


def _pair(disc: pd.DataFrame, sde: pd.DataFrame, exact: bool) -> dict:
    """Table columns from independent discrete and SDE cells (halves: NaN in exact mode)."""
    if len(sde) != len(disc) or not np.allclose(sde["time"], disc["time"], rtol=1e-9, atol=0):
        raise RuntimeError("discrete and SDE records are not at the same times")
    d, s = (lambda c: disc[c].to_numpy()), (lambda c: sde[c].to_numpy())
    out = {"discrete_mean": d("mean"), "discrete_se": d("se"), "sde_mean": s("mean"), "sde_se": s("se"),
           "gap": d("mean") - s("mean"), "gap_se": np.hypot(d("se"), s("se"))}
    for h in ("a", "b"):
        out[f"gap_{h}"] = np.full(len(disc), np.nan) if exact else d(f"mean_{h}") - s(f"mean_{h}")
        out[f"gap_se_{h}"] = np.full(len(disc), np.nan) if exact else np.hypot(d(f"se_{h}"), s(f"se_{h}"))
    return out


def _assemble(grid, labels, done, mode: str, coupled: bool, solver_check: bool, dt_ratio: int):
    """The tidy table and the per-time solver table, combining independent cells (only here)."""
    rows, solver = [], []
    for m, _, _ in grid:
        lr = m.lr
        for label in labels:
            cell = done[(label, lr, m.rho)]
            cols = ({c: cell[c].to_numpy() for c in COLUMNS[5:]} if coupled
                    else _pair(done[("discrete", lr, m.rho)], cell, mode == "exact"))
            times = (cell if coupled else done[("discrete", lr, m.rho)])["time"].to_numpy()  # t = k·lr exactly
            head = {"lr": lr, "rho": m.rho, "model": label, "test_function": cell["test_function"].to_numpy(),
                    "time": times}
            rows.append(pd.DataFrame({**head, **cols}))
            if not solver_check:
                continue
            half = done[("solver " + label, lr, m.rho)]
            if mode == "exact":  # the cell holds the exact difference of EM's moments at dt and dt/2
                diff, se = half["mean"].to_numpy(), np.zeros(len(half))
            elif coupled:  # gap(dt/2) - gap(dt) = sde(dt) - sde(dt/2), two independent coupled estimates
                diff, se = half["gap"].to_numpy() - cell["gap"].to_numpy(), np.hypot(half["gap_se"], cell["gap_se"])
            else:  # independent seeds
                diff, se = cell["mean"].to_numpy() - half["mean"].to_numpy(), np.hypot(cell["se"], half["se"])
            solver.append(pd.DataFrame({**head, "dt": lr / dt_ratio, "diff": diff, "diff_se": np.asarray(se)}))
    table = pd.concat(rows, ignore_index=True)[COLUMNS]
    # Exact mode: lrs where the discrete recursion's spectral radius exceeds 1 (the cell says so); the table's
    # columns stay what they are, the study reads the list (summary: "unstable", left out of the fit).
    unstable = [m.lr for m, _, _ in grid if mode == "exact" and "unstable" in done[("discrete", m.lr, m.rho)]]
    if unstable:
        table.attrs["unstable_lrs"] = unstable
    return table, (pd.concat(solver, ignore_index=True) if solver_check else None)
