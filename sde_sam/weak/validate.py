"""The checks and the record of a weak-error study, before any work: arguments (one clear error each), the mode
(exact or Monte Carlo), the coupling's applicability, the config written to the results folder and the problem's
fingerprint that identifies it on resume. Used by :func:`sde_sam.weak_error` and :func:`sde_sam.weak.estimate_cost`
alike, so both refuse the same input the same way."""
from __future__ import annotations

import hashlib
import math
import warnings
from typing import Callable

import numpy as np
import torch

from .. import _checks
from ..methods import check_method
from ..problems.base import Problem
from ..problems.gaussian import Objective
from .cells import model_label
from .exact import EXACT_TEST_FUNCTIONS, _exact_applicable, _warn_unstable

ORDERS = (0, 1, 2, "exact")


def _check_arguments(problem, method, *, lrs, horizon, x0, n_paths, dt_ratio, record_every, sde_order, mode,
                     diffusion, rho, coupling, expectation="auto") -> tuple[list[float], list, float | Callable | None]:
    """Validate at the public boundary; return the lrs as floats, the orders as a list, and rho."""
    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be an sde_sam Problem, got {type(problem).__name__}")
    check_method(method, ready=False).check_problem(problem)  # e.g. micro_batch on a Gaussian-noise problem: before any cell
    lrs = [_checks.positive("lrs", lr) for lr in (lrs if isinstance(lrs, (list, tuple, np.ndarray)) else [lrs])]
    if not lrs or len(set(lrs)) != len(lrs):
        raise ValueError(f"`lrs` must be a non-empty list of distinct learning rates, got lrs={lrs}")
    if _checks.positive("horizon", horizon) < max(lrs) * (1 - 1e-9):
        raise ValueError(f"`horizon` must be >= the largest lr (one step), got horizon={horizon}, lrs={lrs}")
    _checks.positive_int("n_paths", n_paths, minimum=4)
    if _checks.positive_int("dt_ratio", dt_ratio) < 2:
        warnings.warn(f"dt_ratio={dt_ratio}: with dt >= lr Euler–Maruyama of the SDE can coincide with the "
                      "discrete method in law, so the study proves nothing (MATH §4); use dt_ratio >= 2 (default 10)",
                      stacklevel=4)
    if record_every is not None:
        _checks.positive_int("record_every", record_every)
    orders = list(sde_order) if isinstance(sde_order, (list, tuple)) else [sde_order]
    if not orders or any(o not in ORDERS or isinstance(o, bool) for o in orders) or len(set(map(str, orders))) != len(orders):
        raise ValueError(f"`sde_order` must be one of {ORDERS} or a list of distinct ones, got sde_order={sde_order!r}")
    if mode not in ("auto", "exact", "monte_carlo"):
        raise ValueError(f"`mode` must be 'auto', 'exact' or 'monte_carlo', got mode={mode!r}")
    if not isinstance(coupling, bool):
        raise ValueError(f"`coupling` must be True or False, got coupling={coupling!r}")
    if coupling and mode == "exact":
        raise ValueError("`coupling=True` couples Monte-Carlo paths, but mode='exact' has none; use "
                         "mode='monte_carlo' (or 'auto')")
    if diffusion not in ("factor", "paper"):
        raise ValueError(f"`diffusion` must be 'factor' or 'paper', got diffusion={diffusion!r}")
    if rho is not None and not callable(rho):
        rho = _checks.nonneg("rho", rho)
    if getattr(x0, "ndim", None) != 1:
        raise ValueError(f"`x0` must have shape (d,) (one start shared by every path), got {tuple(getattr(x0, 'shape', ()))}")
    d = problem.d if problem.d is not None else x0.shape[-1]
    _checks.state(x0, d=d, dtype=problem.dtype, device=problem.device, n_paths=1)
    # Sizes, before the first cell: step counts (horizon=1e308 is refused, not an overflow), the states and
    # the recordings of the smallest lr (exact mode, possible unless refused here, records every step).
    steps = horizon / min(lrs)
    _checks.step_count("horizon", horizon, steps, f"steps at lr={min(lrs):g}")
    _checks.step_count("dt_ratio", dt_ratio, 2 * steps * dt_ratio, f"solver steps at lr={min(lrs):g} (solver check)")
    exact_possible = mode == "exact" or (mode == "auto" and not coupling and not _exact_applicable(problem, method))
    rows = int(steps) // (record_every or (1 if exact_possible else max(1, math.ceil(steps / 100)))) + 2
    _checks.fits(f"`n_paths`={n_paths} with d={d}: the states (3 x n_paths x d {problem.dtype})",
                 3 * n_paths * d * x0.element_size(), problem.device)
    _checks.fits(f"`horizon`={horizon!r} at lr={min(lrs):g} with n_paths={n_paths}, record_every={record_every}: "
                 f"the recordings ({rows} rows{'' if exact_possible else ' x n_paths'})",
                 rows * (1 if exact_possible else n_paths) * 8.0, "cpu")
    if dt_ratio < 2:  # dt = lr: the two-draw weak scheme (MATH §4.1) needs dt < lr; found here, not in a cell
        from ..expectations import plan

        for order in orders:
            if plan(problem, method, order=order, diffusion=diffusion, expectation=expectation).mode == "two_draw":
                raise ValueError(f"`dt_ratio`={dt_ratio} makes dt = lr, but the {model_label(order)} model of "
                                 f"{method.name} on {problem!r} is integrated by the two-draw weak scheme (MATH "
                                 "§4.1), which needs dt < lr; use dt_ratio >= 2 (default 10), or "
                                 "expectation='enumerate' or an integer K")
    return lrs, orders, rho


def _resolve_mode(problem, method, mode: str, tfs: dict, lrs, rho, coupling: bool) -> tuple[str, dict]:
    """``"exact"`` or ``"monte_carlo"``, and the test functions that mode can evaluate."""
    why_not = _exact_applicable(problem, method)
    if mode == "exact" and why_not:
        raise ValueError(f"`mode='exact'` needs a linear-Gaussian case, but {why_not}")
    if mode == "auto":
        mode = "monte_carlo" if why_not or coupling else "exact"
    if mode == "monte_carlo":
        return mode, tfs
    _warn_unstable(problem, method, lrs, rho)
    dropped = [k for k in tfs if k not in EXACT_TEST_FUNCTIONS]
    if dropped:
        warnings.warn(f"exact mode has closed forms only for {EXACT_TEST_FUNCTIONS}; dropping test "
                      f"functions {dropped} (use mode='monte_carlo' to keep them)", stacklevel=4)
    tfs = {k: v for k, v in tfs.items() if k in EXACT_TEST_FUNCTIONS}
    if not tfs:
        raise ValueError(f"no test function left for exact mode; it supports {EXACT_TEST_FUNCTIONS}")
    return mode, tfs


def _check_coupling(problem, grid, labels, diffusion, expectation, increments) -> None:
    """Every (lr, model) must admit the coupling; else a ``ValueError`` that says why (MATH §5.1)."""
    from .. import sde_model
    from .coupling import coupling_unsupported

    m = grid[0][0]
    for label, order in labels.items():
        sde = sde_model(problem, m, order=order, diffusion=diffusion, expectation=expectation)
        why = coupling_unsupported(problem, m, sde, diffusion=diffusion, increments=increments)
        if why:
            raise ValueError(f"`coupling=True` does not apply to the {label} model: {why}")


def _config(problem, method, x0, mode, horizon, lrs, grid, labels, tfs, n_paths, seed, dt_ratio, record_every,
            diffusion, expectation, increments, solver_check, max_norm, coupled) -> dict:
    config = {"mode": mode, "method": {**method.describe(), "method": method.name},
              "problem": _fingerprint(problem, x0), "x0": x0.detach().cpu().double().tolist(),
              "horizon": float(horizon), "lrs": lrs, "rho_spec": _describe_rho(lrs, [m.rho for m, *_ in grid]),
              "models": list(labels), "test_functions": list(tfs),
              "n_paths": n_paths if mode == "monte_carlo" else None, "seed": seed, "dt_ratio": dt_ratio,
              "record_every": record_every, "diffusion": diffusion, "expectation": expectation,
              "increments": increments, "solver_check": bool(solver_check), "coupling": coupled,
              "max_norm": max_norm if math.isfinite(max_norm) else None}
    for key in ("lr", "rho"):  # per cell, not per study
        config["method"].pop(key, None)
    return config


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
