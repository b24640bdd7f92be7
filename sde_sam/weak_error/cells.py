"""Monte-Carlo cells of a weak-error study: test functions, per-cell seeds, one run per cell."""
from __future__ import annotations

import hashlib
import struct
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..discrete import run
from ..observables import record_times
from ..problems.base import Problem
from .storage import frame

DEFAULT_TEST_FUNCTIONS = ("loss", "x_norm_sq", "grad_norm_plus_x_norm")


def model_label(order) -> str:
    """The model's name in tables: ``"order 0"``, ``"order 1"``, ``"order 2"`` or ``"exact"``."""
    return "exact" if order == "exact" else f"order {order}"


# -- test functions ----------------------------------------------------------------------------------------
def _test_functions(problem: Problem, test_functions) -> dict[str, str | Callable]:
    """Name -> observable (a built-in name or a named callable ``(n, d) -> (n,)``)."""
    def x_norm_sq(x):
        return (x * x).sum(dim=-1)

    def grad_norm_plus_x_norm(x):
        return torch.linalg.vector_norm(problem.grad(x), dim=-1) + torch.linalg.vector_norm(x, dim=-1)

    own = {"x_norm_sq": x_norm_sq, "grad_norm_plus_x_norm": grad_norm_plus_x_norm}
    out: dict[str, str | Callable] = {}
    for tf in DEFAULT_TEST_FUNCTIONS if test_functions is None else test_functions:
        if callable(tf):
            out[getattr(tf, "__name__", f"phi{len(out)}")] = tf
        elif isinstance(tf, str) and tf in own:
            out[tf] = own[tf]
        elif tf in ("loss", "grad_norm", "x_norm", "lambda_max"):
            out[tf] = tf
        else:
            raise ValueError(f"`test_functions` entries must be one of {DEFAULT_TEST_FUNCTIONS + ('grad_norm', 'x_norm', 'lambda_max')} "
                             f"or a callable (n_paths, d) -> (n_paths,), got {tf!r}")
    if not out:
        raise ValueError("`test_functions` must name at least one test function")
    return out



def _seed(seed: int, lr: float, kind: str) -> int:
    """Independent stream per (lr, piece), from the lr's value (not its index): cells do not depend on
    which other lrs are in the study."""
    bits = struct.unpack("<Q", struct.pack("<d", float(lr)))[0]
    code = int(hashlib.sha256(kind.encode()).hexdigest()[:8], 16)
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(bits, code))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(2))


def _mc_frame(traj, names: Sequence[str]) -> pd.DataFrame:
    out = frame(traj.times.numpy(), {k: traj.mean(k).numpy() for k in names}, {k: traj.sem(k).numpy() for k in names})
    return out.assign(n_diverged=traj.n_diverged)




def _mc_cell(kind, m, steps, every, order, done, *, problem, x0, tfs, n_paths, seed, dt_ratio, diffusion,
             expectation, increments, chunk_size, max_norm) -> pd.DataFrame:
    names, obs = list(tfs), list(tfs.values())
    common = dict(n_paths=n_paths, observables=obs, chunk_size=chunk_size, max_norm=max_norm, progress=False)
    if kind == "discrete":
        traj = run(problem, m, x0, steps=steps, record_every=every, seed=_seed(seed, m.lr, kind), **common)
        return _mc_frame(traj, names)
    from .. import sde_model, simulate  # the SDE layer, imported when first needed

    label = model_label(order)
    sde = sde_model(problem, m, order=order, diffusion=diffusion, expectation=expectation)
    r = dt_ratio * (2 if kind.startswith("solver") else 1)
    traj = simulate(sde, x0, t1=steps * m.lr, dt=m.lr / r, record_every=every * r, seed=_seed(seed, m.lr, label),
                    increments=increments, **common)
    expected = np.array(record_times(steps, every)) * m.lr
    if len(traj.times) != len(expected) or not np.allclose(traj.times.numpy(), expected, rtol=1e-9, atol=0):
        raise RuntimeError(f"simulate recorded at times {traj.times.tolist()[:4]}..., expected t = k*lr = "
                           f"{expected.tolist()[:4]}...; cannot compare with the discrete method")
    frame = _mc_frame(traj, names)
    if not kind.startswith("solver"):
        return frame
    full = done[(label, m.lr, m.rho)]  # same seed at dt: its cell was computed (or loaded) just before
    return frame.assign(mean=full["mean"].to_numpy() - frame["mean"].to_numpy(),
                        se=np.hypot(full["se"].to_numpy(), frame["se"].to_numpy()))

