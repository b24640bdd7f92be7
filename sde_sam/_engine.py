"""The loop shared by discrete runs and SDE solvers: chunks of paths, per-path random streams, streamed
observables, divergence flags and a progress bar. Callers supply only the step."""
from __future__ import annotations

import math
import sys
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import streams
from .observables import Observable, record_times
from .results import Trajectory

Step = Callable[[Tensor, Any, Any, int], tuple[Tensor, Any, Tensor]]
"""``step(x, draw, state, k) -> (x_next, state, guard_fired (n,) bool)``."""


def _steps_per_draw(sampler: streams.Sampler, device: torch.device) -> int:
    # Pre-generate this many steps of draws per call: ~4M numbers per block, at most 64 steps. Depends
    # only on the size of one draw, so the random streams (hence results) never depend on chunking.
    one = sampler((1, 1), torch.Generator(device=device).manual_seed(0))
    numel = sum(t.numel() for t in one) if isinstance(one, tuple) else one.numel()
    return int(min(64, max(1, 2**22 // (streams.BLOCK * numel))))


def drive(x_all: Tensor, *, steps: int, record_every: int, observables: dict[str, Observable], seed: int,
          chunk_size: int | None, max_norm: float, progress: bool | None, sampler: streams.Sampler,
          step: Step, init: Callable[[Tensor, Tensor], Any], dt: float, info: dict) -> Trajectory:
    """Advance every path ``steps`` times and record observables at ``t = k * dt``.

    Args:
        x_all: ``(n_paths, d)`` initial states.
        sampler: Draws one step's randomness for a block of paths (see :class:`streams.PathStreams`).
        init: ``init(x_chunk, gaussian (n, d)) -> state`` for stateful methods (e.g. Eigen-SAM's vector).
        dt: Time per step (``lr`` for discrete runs, the solver step for SDEs).
    """
    n, d = x_all.shape
    ks = record_times(steps, record_every)
    slot = {k: i for i, k in enumerate(ks)}
    values = {name: torch.full((len(ks), n), math.nan, dtype=x_all.dtype) for name in observables}
    diverged = torch.zeros(n, dtype=torch.bool)
    diverged_at = torch.full((n,), math.nan, dtype=torch.float64)
    x_final = torch.empty_like(x_all, device="cpu")
    guard = torch.zeros((), dtype=torch.long, device=x_all.device)
    noise = streams.PathStreams(seed, n, x_all.device)
    init_noise = streams.PathStreams(seed, n, x_all.device, stream=1)
    gauss = lambda shape, g: torch.randn(*shape, d, generator=g, dtype=x_all.dtype, device=x_all.device)
    block = _steps_per_draw(sampler, x_all.device)
    parts = streams.chunks(n, chunk_size)
    show = progress if progress is not None else (steps * n >= 10**7 and sys.stderr.isatty())
    bar = tqdm(total=steps * len(parts), disable=not show, desc=info.get("kind", "run"), unit="step")

    for a, b in parts:
        x = x_all[a:b].clone()
        state = init(x, init_noise.draw(a, b, 1, gauss)[0])
        alive = torch.ones(b - a, dtype=torch.bool, device=x.device)

        def record(k: int) -> None:
            nonlocal x
            bad = ~torch.isfinite(x).all(dim=-1) | (torch.linalg.vector_norm(x, dim=-1) > max_norm)
            newly = bad & alive
            if bool(newly.any()):
                diverged_at[a:b][newly.cpu()] = k * dt
                alive.logical_and_(~bad)
                x = torch.where(alive.unsqueeze(-1), x, math.nan)
            for name, fn in observables.items():
                values[name][slot[k], a:b] = torch.where(alive, fn(x), math.nan).detach().cpu()

        record(0)
        for k0 in range(0, steps, block):
            draws = noise.draw(a, b, block, sampler)
            for j in range(min(block, steps - k0)):
                draw = tuple(t[j] for t in draws) if isinstance(draws, tuple) else draws[j]
                x, state, fired = step(x, draw, state, k0 + j)
                guard += fired.sum()
                if k0 + j + 1 in slot:
                    record(k0 + j + 1)
            bar.update(min(block, steps - k0))
        x_final[a:b] = x.detach().cpu()
        diverged[a:b] = ~alive.cpu()
    bar.close()
    return Trajectory(times=torch.tensor(ks, dtype=torch.float64) * dt, values=values, x_final=x_final,
                      diverged=diverged, diverged_at=diverged_at, guard_count=int(guard), info=info)
