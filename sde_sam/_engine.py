"""The loop shared by discrete runs and SDE solvers: chunks of paths, per-path random streams, streamed
observables, divergence flags and a progress bar. Callers supply only the step.

Performance (measured in ``benchmarks/README.md``): the draws of a chunk are pre-generated for a block of
steps at once, one task per 1024-path random stream, on a small pool of single-threaded workers (a CPU
generator is serial, so this is what lets random-number generation use every core), and copied into one
buffer that is reused from block to block (``torch.cat`` along the path axis is several times slower than
slice copies, and a fresh buffer of this size pays a page fault per 4 KiB). Each stream makes exactly the
calls it made before, so the numbers, hence results, are unchanged and independent of the chunk size. The
per-step loop does only what a step asks for: steps without a norm guard return ``None`` instead of a mask;
the divergence check at a recording is one row sum (exact tests only on the rows it flags) and skips the
norm when ``max_norm`` is infinite.
"""
from __future__ import annotations

import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import streams
from .observables import Observable, record_times
from .results import Trajectory

Step = Callable[[Tensor, Any, Any, int], tuple[Tensor, Any, "Tensor | None"]]
"""``step(x, draw, state, k) -> (x_next, state, guard_fired)``: ``(n,)`` bool, or ``None`` (no guard)."""

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)
_POOL_LOCK = threading.Lock()


def _openmp() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _pool() -> ThreadPoolExecutor | None:
    """A process-wide pool with one worker per intra-op thread, or ``None`` when there is one thread.

    Follows ``torch.set_num_threads``; a forked child (whose copy of the pool has no threads) gets its own.
    With OpenMP (the CPU wheels), each worker is made single-threaded: otherwise every worker would start
    its own OpenMP team for the sampler's elementwise ops and GEMMs, and those teams' spinning threads slow
    down the main thread's GEMMs on a machine with few cores (measured: 10-30% on 2 cores).
    """
    global _POOL
    workers = torch.get_num_threads()
    if workers < 2:
        return None
    with _POOL_LOCK:
        if _POOL is None or _POOL[:2] != (os.getpid(), workers):
            if _POOL is not None and _POOL[0] == os.getpid():
                _POOL[2].shutdown(wait=False)
            serial = _openmp()
            ready = threading.Barrier(workers + 1)

            def init() -> None:
                try:
                    if serial:
                        torch.get_num_threads()  # this thread's lazy OpenMP initialisation happens now
                        torch.set_num_threads(1)  # per-thread OpenMP/MKL setting (and the global default ...)
                except Exception:  # a worker that keeps its threads is only slower
                    pass
                finally:
                    ready.wait()

            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sde_sam-rng", initializer=init)
            for _ in range(workers):  # start every worker now (each blocks in `init` until all are set)
                pool.submit(int)
            try:
                ready.wait(timeout=60)
            except threading.BrokenBarrierError:
                pool.shutdown(wait=False)
                return None
            finally:
                if serial:
                    torch.set_num_threads(workers)  # (... which is restored here, once every worker is set)
            _POOL = (os.getpid(), workers, pool)
        return _POOL[2]


def _layout(sampler: streams.Sampler, device: torch.device):
    """Trailing shape and dtype of each tensor one step's draw is made of (from a throwaway generator),
    and whether the draw is a tuple."""
    one = sampler((1, 1), torch.Generator(device=device).manual_seed(0))
    as_tuple = isinstance(one, tuple)
    return [(tuple(t.shape[2:]), t.dtype) for t in (one if as_tuple else (one,))], as_tuple


def _steps_per_draw(layout: list[tuple[tuple[int, ...], torch.dtype]]) -> int:
    # Pre-generate this many steps of draws per call: ~4M numbers per stream block, at most 64 steps. Depends
    # only on the size of one draw, so the random streams (hence results) never depend on chunking.
    numel = sum(math.prod(shape) for shape, _ in layout)
    return int(min(64, max(1, 2**22 // (streams.BLOCK * numel))))


def _draw(noise: streams.PathStreams, a: int, b: int, n_steps: int, sampler: streams.Sampler,
          buffers: tuple[Tensor, ...], as_tuple: bool):
    """Draws of paths ``a:b`` for ``n_steps`` steps, ``(n_steps, b-a, ...)``, the same numbers as
    ``noise.draw(a, b, ...)``: every stream block makes the same call on its own generator, only the
    blocks run on several threads (CPU; GPUs already run asynchronously) and write into ``buffers``
    (reused from block to block: a fresh buffer of this size costs a page fault per 4 KiB)."""
    blocks = [(lo, hi) for lo, hi in noise.blocks if lo >= a and hi <= b]
    if len(blocks) == 1:
        return noise.draw(a, b, n_steps, sampler)
    device = buffers[0].device
    out = tuple(buf[:, : b - a] for buf in buffers)  # per step still contiguous (leading rows)

    def fill(lo: int, hi: int) -> None:
        part = noise.draw(lo, hi, n_steps, sampler)
        for dst, src in zip(out, part if as_tuple else (part,)):
            dst[:, lo - a:hi - a].copy_(src)  # several times faster than torch.cat along dim 1

    pool = _pool() if device.type == "cpu" else None
    if pool is None:
        for lo, hi in blocks:
            fill(lo, hi)
    else:
        for future in [pool.submit(fill, lo, hi) for lo, hi in blocks]:
            future.result()
    return out if as_tuple else out[0]


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
    device = x_all.device
    ks = record_times(steps, record_every)
    slot = {k: i for i, k in enumerate(ks)}
    values = {name: torch.full((len(ks), n), math.nan, dtype=x_all.dtype) for name in observables}
    diverged = torch.zeros(n, dtype=torch.bool)
    diverged_at = torch.full((n,), math.nan, dtype=torch.float64)
    x_final = torch.empty_like(x_all, device="cpu")
    guard = torch.zeros((), dtype=torch.long, device=device)
    noise = streams.PathStreams(seed, n, device)
    init_noise = streams.PathStreams(seed, n, device, stream=1)
    gauss = lambda shape, g: torch.randn(*shape, d, generator=g, dtype=x_all.dtype, device=device)
    layout, as_tuple = _layout(sampler, device)
    block = _steps_per_draw(layout)
    check_norm = math.isfinite(max_norm)
    parts = streams.chunks(n, chunk_size)
    show = progress if progress is not None else (steps * n >= 10**7 and sys.stderr.isatty())
    bar = tqdm(total=steps * len(parts), disable=not show, desc=info.get("kind", "run"), unit="step")

    width = max(b - a for a, b in parts)
    buffers = (tuple(torch.empty(block, width, *shape, dtype=dtype, device=device) for shape, dtype in layout)
               if width > streams.BLOCK else ())
    for a, b in parts:
        x = x_all[a:b].clone()
        state = init(x, init_noise.draw(a, b, 1, gauss)[0])
        alive = torch.ones(b - a, dtype=torch.bool, device=device)

        def record(k: int) -> None:
            nonlocal x
            # A row with a NaN or an inf has a non-finite sum; the sum is one cheap reduction, where
            # isfinite(x).all(-1) costs several passes. Flagged rows are then tested exactly (a finite row
            # whose sum overflows is not diverged unless its norm exceeds max_norm).
            newly = alive & ~torch.isfinite(x.sum(dim=-1))
            if check_norm:
                newly |= alive & (torch.linalg.vector_norm(x, dim=-1) > max_norm)
            if bool(newly.any()):
                rows = newly.nonzero().squeeze(-1)
                exact = ~torch.isfinite(x[rows]).all(dim=-1)
                if check_norm:
                    exact |= torch.linalg.vector_norm(x[rows], dim=-1) > max_norm
                newly[rows] = exact
                diverged_at[a:b][newly.cpu()] = k * dt
                alive.logical_and_(~newly)
                x = torch.where(alive.unsqueeze(-1), x, math.nan)
            for name, fn in observables.items():
                values[name][slot[k], a:b] = torch.where(alive, fn(x), math.nan).detach().cpu()

        record(0)
        for k0 in range(0, steps, block):
            draws = _draw(noise, a, b, block, sampler, buffers, as_tuple)
            todo = min(block, steps - k0)
            # One unbind per block instead of an index per step (and per tensor of a tuple draw).
            per_step = zip(*(t.unbind(0) for t in draws)) if as_tuple else draws.unbind(0)
            for k, draw in zip(range(k0 + 1, k0 + todo + 1), per_step):
                x, state, fired = step(x, draw, state, k - 1)
                if fired is not None:
                    guard += fired.sum()
                if k in slot:
                    record(k)
            del draws, per_step  # free the block before the next one is generated
            bar.update(todo)
        x_final[a:b] = x.detach().cpu()
        diverged[a:b] = ~alive.cpu()
    bar.close()
    return Trajectory(times=torch.tensor(ks, dtype=torch.float64) * dt, values=values, x_final=x_final,
                      diverged=diverged, diverged_at=diverged_at, guard_count=int(guard), info=info)
