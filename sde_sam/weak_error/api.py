r"""Weak-error studies: how far a discrete method and its SDE models are apart in law (MATH §5).

For each learning rate :math:`\eta` of a grid (with :math:`\rho` fixed or a function of :math:`\eta`), the
study estimates :math:`\mathbb E\phi(x_k)` for the discrete method and :math:`\mathbb E\phi(X_{k\eta})` for
each SDE model at common times :math:`t = k\eta\le T`, with standard errors, and fits the weak order from

.. math:: \max_{k\le T/\eta}\big|\mathbb E\phi(x_k) - \mathbb E\phi(X_{k\eta})\big| \approx C\,\eta^{\alpha}.

Two modes. *Exact* (linear-Gaussian cases: SGD or USAM on a :class:`~sde_sam.Quadratic`): the discrete mean
and covariance recursions and the Ornstein–Uhlenbeck mean and Lyapunov covariance (MATH §3.4) give the
expectations of quadratic test functions with no Monte-Carlo error. *Monte Carlo*: :func:`sde_sam.run`
for the method and :func:`sde_sam.simulate` for each model, independent seeds, the SDE integrated with
:math:`\Delta t = \eta/\texttt{dt\_ratio}` (MATH §4: :math:`\Delta t\ge\eta` proves nothing).

Example:
    >>> prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)), noise_cov=1.0)
    >>> study = ss.weak_error(prob, ss.USAM(0.1, rho=0.1), lrs=[0.1, 0.05, 0.025], horizon=1.0,
    ...                       x0=torch.ones(2, dtype=torch.float64), sde_order=[0, 1])
    >>> study.order("loss", model="order 1").slope  # doctest: +SKIP
    1.0...
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import _checks
from ..methods import Method
from ..problems.base import Problem
from ..problems.gaussian import Objective
from . import cells
from .cells import _test_functions, model_label
from .exact import EXACT_TEST_FUNCTIONS, _exact_applicable, _exact_cell, _warn_unstable
from .storage import _Store
from .study import WeakErrorStudy

ORDERS = (0, 1, 2, "exact")
COLUMNS = ["lr", "rho", "model", "test_function", "time", "discrete_mean", "discrete_se",
           "sde_mean", "sde_se", "gap", "gap_se"]


# -- the study ---------------------------------------------------------------------------------------------
def weak_error(problem: Problem, method: Method, *, lrs: Sequence[float], horizon: float, x0: torch.Tensor,
               n_paths: int = 20_000, seed: int = 0, test_functions: Sequence | None = None,
               sde_order=1, rho: float | Callable[[float], float] | None = None, dt_ratio: int = 10,
               mode: str = "auto", record_every: int | None = None, diffusion: str = "factor",
               expectation: str = "auto", increments: str = "gaussian", solver_check: bool = True,
               chunk_size: int | None = None, max_norm: float = math.inf,
               results_dir: str | Path | None = None, progress: bool | None = None) -> WeakErrorStudy:
    r"""Weak error of ``method`` against its SDE models over a grid of learning rates (MATH §5).

    For each ``lr`` the method runs ``floor(horizon / lr)`` steps; each model is integrated by
    Euler–Maruyama with ``dt = lr / dt_ratio``; both record the test functions every ``record_every``
    steps (the SDE every ``record_every * dt_ratio`` solver steps), so they meet at the same times
    :math:`t = k\eta`.

    Args:
        problem: The objective and noise model.
        method: The discrete method; its ``lr`` (and ``rho``, see below) are replaced per grid point.
        lrs: Learning rates.
        horizon: Time horizon :math:`T` on the SDE scale.
        x0: ``(d,)`` start shared by every path, in the problem's dtype.
        n_paths: Paths per simulation (Monte Carlo).
        seed: Seed; each (lr, piece) gets an independent stream derived from it and the lr's value.
        test_functions: Names (``"loss"``, ``"x_norm_sq"``, ``"grad_norm_plus_x_norm"``, ``"grad_norm"``,
            ``"x_norm"``, ``"lambda_max"``) or callables ``(n_paths, d) -> (n_paths,)`` named by ``__name__``.
            Default: loss, :math:`\|x\|^2` and :math:`\|\nabla f\| + \|x\|` (the SAM-SDE paper's).
        sde_order: ``0``, ``1``, ``2``, ``"exact"``, or a list of them, compared in one study.
        rho: ``None`` (the method's), a float, or a callable ``lr -> rho`` (e.g. ``lambda lr: lr**0.5``).
        dt_ratio: ``lr / dt`` (integer; below 2 warns: :math:`\Delta t\ge\eta` proves nothing, MATH §4).
        mode: ``"auto"`` (exact when SGD/USAM on a :class:`~sde_sam.Quadratic`), ``"exact"`` or ``"monte_carlo"``.
        record_every: Discrete steps between compared times (default: every step in exact mode, about 100
            times per run in Monte Carlo).
        diffusion, expectation, increments: Passed to :func:`sde_sam.sde_model` / :func:`sde_sam.simulate`.
        solver_check: Also integrate each model at ``dt / 2`` and report the difference (``solver_error``).
        chunk_size, max_norm: Passed to the runners.
        results_dir: Save each finished cell there (CSV, with ``config.json``) and resume from it.
        progress: Progress bar over cells (``None``: on a terminal, in Monte-Carlo mode).

    Returns:
        A :class:`WeakErrorStudy`.

    Example:
        >>> study = ss.weak_error(prob, ss.USAM(0.1, rho=0.1), lrs=[0.1, 0.05], horizon=1.0, x0=x0,
        ...                       rho=lambda lr: lr**0.5, sde_order=[0, 1])  # doctest: +SKIP
        >>> study.order("loss", "order 0").slope  # doctest: +SKIP
        0.5...
    """
    lrs, orders, rho = _check_arguments(problem, method, lrs=lrs, horizon=horizon, x0=x0, n_paths=n_paths,
                                        dt_ratio=dt_ratio, record_every=record_every, sde_order=sde_order,
                                        mode=mode, diffusion=diffusion, rho=rho)
    mode, tfs = _resolve_mode(problem, method, mode, _test_functions(problem, test_functions), lrs, rho)
    grid = []
    for lr in lrs:
        m = method.with_lr(lr) if rho is None else method.with_lr(lr).with_rho(float(rho(lr)) if callable(rho) else rho)
        steps = int(math.floor(horizon / lr + 1e-9))
        every = record_every or (1 if mode == "exact" else max(1, -(-steps // 100)))
        grid.append((lr, m, steps, min(every, steps)))
    labels = {model_label(o): o for o in orders}
    config = {"mode": mode, "method": {**method.describe(), "method": method.name}, "problem": _fingerprint(problem, x0),
              "x0": x0.detach().cpu().double().tolist(), "horizon": float(horizon), "lrs": lrs,
              "rho_spec": _describe_rho(lrs, [m.rho for _, m, *_ in grid]), "models": list(labels),
              "test_functions": list(tfs), "n_paths": n_paths if mode == "monte_carlo" else None,
              "seed": seed, "dt_ratio": dt_ratio, "record_every": record_every, "diffusion": diffusion,
              "expectation": expectation, "increments": increments, "solver_check": bool(solver_check),
              "max_norm": max_norm if math.isfinite(max_norm) else None}
    for key in ("lr", "rho"):  # per cell, not per study
        config["method"].pop(key, None)

    # The cells, in order: each lr's discrete run, then each model and its solver check.
    jobs = []
    for lr, m, steps, every in grid:
        jobs.append(("discrete", m, steps, every, None))
        for label, order in labels.items():
            jobs += [(label, m, steps, every, order)] + ([("solver " + label, m, steps, every, order)] if solver_check else [])
    opts = dict(problem=problem, x0=x0, tfs=tfs, n_paths=n_paths, seed=seed, dt_ratio=dt_ratio,
                diffusion=diffusion, expectation=expectation, increments=increments, chunk_size=chunk_size,
                max_norm=max_norm)
    show = progress if progress is not None else (mode == "monte_carlo" and sys.stderr.isatty())
    done, cell_rows = _run_cells(jobs, _exact_cell if mode == "exact" else cells._mc_cell, opts,
                             _Store(results_dir, config), show, n_paths if mode == "monte_carlo" else None)
    table, solver = _assemble(grid, labels, done, solver_check, dt_ratio)
    study = WeakErrorStudy(table=table, solver_error=solver, cells=pd.DataFrame(cell_rows), config=config, mode=mode)
    if results_dir is not None:
        study.save(results_dir)
    return study


def _check_arguments(problem, method, *, lrs, horizon, x0, n_paths, dt_ratio, record_every, sde_order, mode,
                     diffusion, rho) -> tuple[list[float], list, float | Callable | None]:
    """Validate at the public boundary; return the lrs as floats, the orders as a list, and rho."""
    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be an sde_sam Problem, got {type(problem).__name__}")
    if not isinstance(method, Method):
        raise TypeError(f"`method` must be an sde_sam Method (SGD, USAM, SAM, ...), got {type(method).__name__}")
    lrs = [_checks.positive("lrs", lr) for lr in (lrs if isinstance(lrs, (list, tuple, np.ndarray)) else [lrs])]
    if not lrs or len(set(lrs)) != len(lrs):
        raise ValueError(f"`lrs` must be a non-empty list of distinct learning rates, got lrs={lrs}")
    if _checks.positive("horizon", horizon) < max(lrs) * (1 - 1e-9):
        raise ValueError(f"`horizon` must be >= the largest lr (one step), got horizon={horizon}, lrs={lrs}")
    _checks.positive_int("n_paths", n_paths, minimum=2)
    if _checks.positive_int("dt_ratio", dt_ratio) < 2:
        warnings.warn(f"dt_ratio={dt_ratio}: with dt >= lr Euler–Maruyama of the SDE can coincide with the "
                      "discrete method in law, so the study proves nothing (MATH §4); use dt_ratio >= 2 (default 10)",
                      stacklevel=3)
    if record_every is not None:
        _checks.positive_int("record_every", record_every)
    orders = list(sde_order) if isinstance(sde_order, (list, tuple)) else [sde_order]
    if not orders or any(o not in ORDERS or isinstance(o, bool) for o in orders) or len(set(map(str, orders))) != len(orders):
        raise ValueError(f"`sde_order` must be one of {ORDERS} or a list of distinct ones, got sde_order={sde_order!r}")
    if mode not in ("auto", "exact", "monte_carlo"):
        raise ValueError(f"`mode` must be 'auto', 'exact' or 'monte_carlo', got mode={mode!r}")
    if diffusion not in ("factor", "paper"):
        raise ValueError(f"`diffusion` must be 'factor' or 'paper', got diffusion={diffusion!r}")
    if rho is not None and not callable(rho):
        rho = _checks.nonneg("rho", rho)
    if getattr(x0, "ndim", None) != 1:
        raise ValueError(f"`x0` must have shape (d,) (one start shared by every path), got {tuple(getattr(x0, 'shape', ()))}")
    d = problem.d if problem.d is not None else x0.shape[-1]
    _checks.state(x0, d=d, dtype=problem.dtype, device=problem.device, n_paths=1)
    return lrs, orders, rho


def _resolve_mode(problem, method, mode: str, tfs: dict, lrs, rho) -> tuple[str, dict]:
    """``"exact"`` or ``"monte_carlo"``, and the test functions that mode can evaluate."""
    why_not = _exact_applicable(problem, method)
    if mode == "exact" and why_not:
        raise ValueError(f"`mode='exact'` needs a linear-Gaussian case, but {why_not}")
    mode = ("monte_carlo" if why_not else "exact") if mode == "auto" else mode
    if mode == "monte_carlo":
        return mode, tfs
    _warn_unstable(problem, method, lrs, rho)
    dropped = [k for k in tfs if k not in EXACT_TEST_FUNCTIONS]
    if dropped:
        warnings.warn(f"exact mode has closed forms only for {EXACT_TEST_FUNCTIONS}; dropping test "
                      f"functions {dropped} (use mode='monte_carlo' to keep them)", stacklevel=3)
    tfs = {k: v for k, v in tfs.items() if k in EXACT_TEST_FUNCTIONS}
    if not tfs:
        raise ValueError(f"no test function left for exact mode; it supports {EXACT_TEST_FUNCTIONS}")
    return mode, tfs


def _run_cells(jobs, compute, opts: dict, store: "_Store", show: bool, n_paths: int | None):
    """Load or compute every cell in order (saving each as it finishes); a progress bar over cells."""
    done, cells = {}, []
    for kind, m, steps, every, order in tqdm(jobs, disable=not show, desc="weak error", unit="cell"):
        key = (kind, m.lr, m.rho)
        frame, source, t0 = store.get(key), "loaded", time.perf_counter()
        if frame is None:
            frame, source = compute(kind, m, steps, every, order, done, **opts), "computed"
            store.put(key, frame)
        done[key] = frame
        n_div = int(frame["n_diverged"].iloc[0]) if "n_diverged" in frame else 0
        if n_div and source == "computed":
            warnings.warn(f"{kind} at lr={m.lr:g}: {n_div} of {n_paths} paths diverged and are left out", stacklevel=3)
        cells.append({"kind": kind, "lr": m.lr, "rho": m.rho, "n_paths": n_paths, "n_diverged": n_div,
                      "seconds": time.perf_counter() - t0, "source": source})
    return done, cells


def _describe_rho(lrs: list[float], rhos: list[float]) -> str:
    """``"rho = 0.1"``, ``"rho = 0.5·lr^0.5"`` when the values follow a power law, else the list."""
    if len(set(rhos)) == 1:
        return f"rho = {rhos[0]:g}"
    if min(rhos) > 0 and len(lrs) > 1:
        p = math.log(rhos[0] / rhos[-1]) / math.log(lrs[0] / lrs[-1])
        c = rhos[0] / lrs[0] ** p
        if all(math.isclose(r, c * lr**p, rel_tol=1e-6) for lr, r in zip(lrs, rhos)):
            return f"rho = {c:.3g}·lr^{p:.3g}"
    return "rho = " + ", ".join(f"{r:.3g}" for r in rhos)


def _fingerprint(problem: Problem, x0: torch.Tensor) -> dict:
    """What identifies the problem for resuming: its repr and a hash of f, ∇f (and Σ) at two points."""
    probe = x0 + 0.1 * torch.arange(1, x0.shape[0] + 1, dtype=x0.dtype, device=x0.device).cos()
    xs = torch.stack([x0, probe])
    parts = [problem.loss(xs), problem.grad(xs)]
    if isinstance(problem, Objective):
        parts.append(problem.noise_cov)
    digest = hashlib.sha256(b"".join(p.detach().cpu().double().numpy().tobytes() for p in parts)).hexdigest()
    return {"repr": repr(problem), "hash": digest[:16]}




def _assemble(grid, labels, done, solver_check: bool, dt_ratio: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The tidy table (discrete cell against each model cell, aligned on time) and the solver table."""
    rows, solver = [], []
    for lr, m, _, _ in grid:
        disc = done[("discrete", lr, m.rho)]
        for label in labels:
            sde = done[(label, lr, m.rho)]
            if len(sde) != len(disc) or not np.allclose(sde["time"], disc["time"], rtol=1e-9, atol=0):
                raise RuntimeError(f"discrete and {label} records at lr={lr} are not at the same times")
            gap = disc["mean"].to_numpy() - sde["mean"].to_numpy()
            rows.append(pd.DataFrame({
                "lr": lr, "rho": m.rho, "model": label, "test_function": disc["test_function"],
                "time": disc["time"], "discrete_mean": disc["mean"], "discrete_se": disc["se"],
                "sde_mean": sde["mean"].to_numpy(), "sde_se": sde["se"].to_numpy(), "gap": gap,
                "gap_se": np.hypot(disc["se"].to_numpy(), sde["se"].to_numpy())}))
            if solver_check:
                diff = done[("solver " + label, lr, m.rho)].assign(abs_gap=np.abs(gap))
                for tf, g in diff.groupby("test_function", sort=False):
                    i = g["mean"].abs().idxmax()
                    solver.append({"lr": lr, "rho": m.rho, "model": label, "test_function": tf,
                                   "dt": lr / dt_ratio, "max_abs_diff": abs(g.at[i, "mean"]),
                                   "diff_se": g.at[i, "se"], "max_gap": g["abs_gap"].max()})
    table = pd.concat(rows, ignore_index=True)[COLUMNS]
    if not solver_check:
        return table, None
    solver = pd.DataFrame(solver)
    return table, solver.assign(ratio=solver["max_abs_diff"] / solver["max_gap"])
