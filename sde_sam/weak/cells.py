"""The cells of a weak-error study: one independent piece of work per (kind, lr), computed from its own spec
and seed (so any executor may run it, in any order), and the per-time summaries it returns.

A Monte-Carlo piece is summarised per test function and recorded time by the mean and SE over all kept
paths and over each half of the paths (paths ``[0, n/2)`` and ``[n/2, n)``): the halves are what the
selection-free max-over-time gap needs (:mod:`.estimators`)."""
from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..discrete import run
from ..methods import Method
from ..observables import record_times
from ..problems.base import Problem

DEFAULT_TEST_FUNCTIONS = ("loss", "x_norm_sq", "grad_norm_plus_x_norm")
BUILTIN_TEST_FUNCTIONS = DEFAULT_TEST_FUNCTIONS + ("grad_norm", "x_norm", "lambda_max")
HALF_COLUMNS = ["mean", "se", "mean_a", "se_a", "mean_b", "se_b"]


def model_label(order) -> str:
    """The model's name in tables: ``"order 0"``, ``"order 1"``, ``"order 2"`` or ``"exact"``."""
    return "exact" if order == "exact" else f"order {order}"


@dataclass(frozen=True)
class CellSpec:
    """Everything one cell needs (picklable when the problem and test functions are).

    ``kind`` is ``"discrete"``, a model label (``"order 1"``) or ``"solver " + label``; ``method`` carries the
    cell's lr and rho; ``tfs`` maps test-function names to a built-in name or a callable.
    """

    kind: str
    mode: str
    coupled: bool
    method: Method
    steps: int
    every: int
    order: object
    problem: Problem
    x0: torch.Tensor
    tfs: dict
    n_paths: int
    seed: int
    dt_ratio: int
    diffusion: str
    expectation: object
    increments: str
    chunk_size: int | None
    max_norm: float

    @property
    def key(self) -> tuple:
        return (self.kind, self.method.lr, self.method.rho)

    @property
    def label(self) -> str:
        return self.kind.removeprefix("solver ")

    @property
    def solver(self) -> bool:
        return self.kind.startswith("solver ")


# -- test functions (module level, so that cells pickle) ----------------------------------------------------
def x_norm_sq(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\|x\|^2` per path."""
    return (x * x).sum(dim=-1)


class GradNormPlusXNorm:
    r""":math:`\|\nabla f(x)\| + \|x\|` per path (the SAM-SDE paper's test function)."""

    __name__ = "grad_norm_plus_x_norm"

    def __init__(self, problem: Problem):
        self.problem = problem

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(self.problem.grad(x), dim=-1) + torch.linalg.vector_norm(x, dim=-1)


def test_function_specs(test_functions) -> dict[str, str | Callable]:
    """Name -> a built-in name or a callable ``(n, d) -> (n,)`` (named by ``__name__``), validated."""
    out: dict[str, str | Callable] = {}
    for tf in DEFAULT_TEST_FUNCTIONS if test_functions is None else test_functions:
        if callable(tf):
            name = getattr(tf, "__name__", "phi")
            out[f"phi{len(out)}" if name == "<lambda>" or name in out else name] = tf
        elif isinstance(tf, str) and tf in BUILTIN_TEST_FUNCTIONS:
            out[tf] = tf
        else:
            raise ValueError(f"`test_functions` entries must be one of {BUILTIN_TEST_FUNCTIONS} "
                             f"or a callable (n_paths, d) -> (n_paths,), got {tf!r}")
    if not out:
        raise ValueError("`test_functions` must name at least one test function")
    return out


def observables(problem: Problem, tfs: dict) -> list:
    """What :func:`sde_sam.run` / :func:`sde_sam.simulate` record, in the order of ``tfs``."""
    own = {"x_norm_sq": x_norm_sq, "grad_norm_plus_x_norm": GradNormPlusXNorm(problem)}
    return [own.get(v, v) if isinstance(v, str) else v for v in tfs.values()]


# -- seeds and summaries ------------------------------------------------------------------------------------
def cell_seed(seed: int, lr: float, kind: str) -> int:
    """Independent stream per (lr, kind), from the lr's value (not its index): cells do not depend on
    which other lrs are in the study, nor on each other."""
    bits = struct.unpack("<Q", struct.pack("<d", float(lr)))[0]
    code = int(hashlib.sha256(kind.encode()).hexdigest()[:8], 16)
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(bits, code))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(2))


def summarize(values: torch.Tensor, keep: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean and SE per row of ``values: (R, n)`` over the kept paths, overall and per half of the paths."""
    n = values.shape[1]
    half = torch.arange(n) < n // 2
    out = {}
    for suffix, mask in (("", keep), ("_a", keep & half), ("_b", keep & ~half)):
        v = values[:, mask].double()
        m = v.shape[1]
        out["mean" + suffix] = v.mean(dim=1).numpy() if m else np.full(values.shape[0], math.nan)
        out["se" + suffix] = (v.std(dim=1) / math.sqrt(m)).numpy() if m > 1 else np.full(values.shape[0], math.nan)
    return out


def frame(times, columns: dict[str, dict[str, np.ndarray]], **scalars) -> pd.DataFrame:
    """Tidy per-time frame: ``test_function, time`` and one column per summary (``columns[tf][name]``)."""
    rows = [pd.DataFrame({"test_function": tf, "time": np.asarray(times, dtype=float),
                          **{k: np.asarray(v, dtype=float) for k, v in cols.items()}})
            for tf, cols in columns.items()]
    return pd.concat(rows, ignore_index=True).assign(**scalars)


def check_times(times: np.ndarray, spec: CellSpec, what: str) -> None:
    expected = np.array(record_times(spec.steps, spec.every)) * spec.method.lr
    if len(times) != len(expected) or not np.allclose(times, expected, rtol=1e-9, atol=0):
        raise RuntimeError(f"{what} recorded at times {list(times)[:4]}..., expected t = k*lr = "
                           f"{expected.tolist()[:4]}...; cannot compare with the discrete method")


# -- the cells ----------------------------------------------------------------------------------------------
def _mc_cell(spec: CellSpec) -> pd.DataFrame:
    """A discrete run, a model at ``dt = lr/dt_ratio``, or (solver check) the model at ``dt/2``, each from
    its own seed."""
    m = spec.method
    common = dict(n_paths=spec.n_paths, observables=observables(spec.problem, spec.tfs),
                  chunk_size=spec.chunk_size, max_norm=spec.max_norm, progress=False)
    seed = cell_seed(spec.seed, m.lr, spec.kind)
    if spec.kind == "discrete":
        traj = run(spec.problem, m, spec.x0, steps=spec.steps, record_every=spec.every, seed=seed, **common)
    else:
        from .. import sde_model, simulate  # the SDE layer, imported when first needed

        sde = sde_model(spec.problem, m, order=spec.order, diffusion=spec.diffusion, expectation=spec.expectation)
        r = spec.dt_ratio * (2 if spec.solver else 1)
        traj = simulate(sde, spec.x0, t1=spec.steps * m.lr, dt=m.lr / r, record_every=spec.every * r,
                        seed=seed, increments=spec.increments, **common)
    check_times(traj.times.numpy(), spec, spec.kind)
    keep = ~traj.diverged
    cols = {tf: summarize(traj.values[name], keep) for tf, name in zip(spec.tfs, traj.values)}
    return frame(traj.times.numpy(), cols, n_diverged=traj.n_diverged)


def cell_specs(grid, labels: dict, mode: str, coupled: bool, solver_check: bool, opts: dict) -> list[CellSpec]:
    """The cells, in order: per lr the discrete run (uncoupled), then each model and its solver check."""
    out: list[CellSpec] = []
    for m, steps, every in grid:
        kinds = [] if coupled and mode != "exact" else [("discrete", None)]
        for label, order in labels.items():
            kinds += [(label, order)] + ([("solver " + label, order)] if solver_check else [])
        out += [CellSpec(kind=k, mode=mode, coupled=coupled, method=m, steps=steps, every=every, order=o, **opts)
                for k, o in kinds]
    return out

