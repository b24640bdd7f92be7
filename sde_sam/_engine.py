"""The loop shared by discrete runs and SDE solvers: chunks of paths, per-path random streams, streamed
observables, divergence flags and a progress bar. Callers supply only the step.

Performance (measured in ``benchmarks/README.md``): the draws of a chunk are pre-generated for a block of
steps at once, one task per 1024-path random stream, on a small pool of single-threaded workers (a CPU
generator is serial, so this is what lets random-number generation use every core), and copied into one
buffer that is reused from block to block (``torch.cat`` along the path axis is several times slower than
slice copies, and a fresh buffer of this size pays a page fault per 4 KiB). Each stream makes exactly the
calls it made before, so the numbers, hence results, are unchanged and independent of the chunk size.

No host synchronisation inside the step loop (:func:`_advance`; a test patches the synchronising calls to
fail): guard firings are counted per path on the device, and a recording writes the row sums ``x @ 1``
(non-finite iff the state is), the norms (only when ``max_norm`` is finite) and the observables into one
preallocated device buffer. Once per block of steps the buffer is copied to the host, where divergence is
decided (a non-finite row sum, a norm above ``max_norm`` or a non-finite observable, in that order of
reasons) and the values of diverged paths are set to NaN from the recording where they were first seen on.
A diverged path keeps being stepped (masking it would cost a pass over the state at every recording) and is
set to NaN in ``x_final``; its guard firings count up to that recording, as before.

Given draws (``draws=``) replace the generated ones block by block; ``keep_draws=True`` copies the draws
used to the host once per block.

Chunks of any size: a chunk that is not a union of whole 1024-path stream blocks draws the blocks it overlaps
whole, from fresh generators, and keeps its rows (:class:`streams.RowStreams`): the same numbers per path.
Recording on a schedule (``record_every="auto"``, :func:`observables.auto_record_every`) bounds what full-batch
observables cost; stateful observables (the warm-started ``lambda_max``) get a fresh copy per chunk
(``new_run()``). A progress bar with an ETA appears by default (on a terminal or in a notebook) once the
work is projected to take more than :data:`PROGRESS_AFTER_S` seconds.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import streams
from .observables import BatchLoss, Observable, auto_record_every, record_times
from .results import Trajectory

Step = Callable[[Tensor, Any, Any, int], "tuple[Tensor, Any, Tensor | None] | tuple[Tensor, Any, Tensor | None, Tensor]"]
r"""``step(x, draw, state, k) -> (x_next, state, guard_fired)`` with ``guard_fired`` an ``(n,)`` bool tensor or
``None`` (no guard); or ``(x_next, state, guard_fired, batch_loss)`` where ``batch_loss`` is the ``(n,)`` loss
:math:`f_\gamma(x)` of the draw the step used at the point it started from (what it computed anyway, e.g. the
value returned with the stochastic gradient): the ``"batch_loss"`` observable records it at no extra cost."""

PROGRESS_AFTER_S = 10.0
"""Default progress bar: shown once the projected run time exceeds this many seconds."""

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


class _Records:
    """One chunk's recordings: written into a preallocated device buffer inside the step loop (no host
    synchronisation), checked for divergence and copied to the host once per block of steps (:meth:`flush`).

    Buffer channels per recording: 0 the row sums ``x @ 1`` (non-finite iff the state is non-finite, or so
    large that its coordinates' sum overflows), then the norms ``||x||`` when ``max_norm`` is finite, then one
    channel per observable. A path is diverged at the first recording where a channel is non-finite (or the
    norm exceeds ``max_norm``); the first such channel is its reason.
    """

    def __init__(self, observables: dict[str, Observable], *, cap: int, m: int, dtype: torch.dtype,
                 device: torch.device, max_norm: float):
        # A fresh copy of each stateful observable per chunk (e.g. lambda_max's warm start).
        self.fns = [fn.new_run() if hasattr(fn, "new_run") else fn for fn in observables.values()]
        self.batch = [i for i, fn in enumerate(self.fns) if isinstance(fn, BatchLoss)]  # filled from the step
        self.max_norm = max_norm
        self.check_norm = math.isfinite(max_norm)
        self.first_obs = 2 if self.check_norm else 1
        self.buf = torch.empty(cap, self.first_obs + len(self.fns), m, dtype=dtype, device=device)
        self.ones: Tensor | None = None  # (d,) ones for the row sums, made at the first recording
        self.guard_buf = torch.zeros(cap, m, dtype=torch.int32, device=device)
        self.guard_acc = torch.zeros(m, dtype=torch.int32, device=device)  # norm-guard firings per path so far
        self.guarded = False
        self.rows: list[int] = []  # recording slot of each buffer row in use
        # Per path, on the device: the slot at which it was seen diverged (-1: never), why (channel + 1), and
        # its guard firings up to then.
        self.first = torch.full((m,), -1, dtype=torch.long, device=device)
        self.reason = torch.zeros(m, dtype=torch.long, device=device)
        self.guard_at = torch.zeros(m, dtype=torch.int32, device=device)
        self.dead = torch.zeros(0, dtype=torch.long, device=device)  # indices of the diverged paths

    # -- inside the step loop -----------------------------------------------------------------------------
    def count(self, fired: Tensor) -> None:
        self.guard_acc.add_(fired)
        self.guarded = True

    def record(self, x: Tensor, slot: int, batch_loss: Tensor | None = None) -> None:
        j = len(self.rows)
        self.rows.append(slot)
        row = self.buf[j]
        if self.ones is None:
            self.ones = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
        torch.mv(x.detach(), self.ones, out=row[0])  # a GEMV: faster than x.sum(-1), same overflow behaviour
        if self.check_norm:
            torch.linalg.vector_norm(x.detach(), dim=-1, out=row[1])
        for c, fn in enumerate(self.fns, start=self.first_obs):
            if isinstance(fn, BatchLoss):
                # Before the first step there is no draw: 0 here (not flagged), NaN once checked (flush).
                row[c].copy_(batch_loss.detach()) if batch_loss is not None else row[c].zero_()
            else:
                row[c].copy_(fn(x).detach())
        if self.guarded:
            self.guard_buf[j].copy_(self.guard_acc)

    # -- between blocks (one host synchronisation per block) ------------------------------------------------
    def flush(self, values: list[Tensor], a: int, b: int) -> None:
        """Check the recordings held since the last flush and write them into ``values[i][:, a:b]`` (host).

        One pass finds the suspect paths (a non-finite sum over all their recordings, or a norm above
        ``max_norm``); only those are checked exactly (``isfinite`` over the whole buffer costs ~15x more).
        """
        if not self.rows:
            return
        r, s0 = len(self.rows), self.rows[0]
        buf = self.buf[:r]
        suspect = ~torch.isfinite(buf.sum(dim=(0, 1)))
        if self.check_norm:
            suspect |= buf[:, 1].amax(dim=0) > self.max_norm
        cols = (suspect & (self.first < 0)).nonzero().squeeze(-1)
        if cols.numel():
            sub = buf[:, :, cols]
            ok = torch.isfinite(sub)
            if self.check_norm:
                ok[:, 1] &= sub[:, 1] <= self.max_norm
            bad = ~ok.all(dim=1)  # (r, k)
            hit = bad.any(dim=0)  # False where only the sum overflowed
            cols, bad, ok = cols[hit], bad[:, hit], ok[:, :, hit]
            at = bad.byte().argmax(dim=0)  # first bad recording of each newly diverged path
            self.first[cols] = s0 + at
            self.reason[cols] = (~ok[at, :, torch.arange(len(cols), device=at.device)]).byte().argmax(dim=-1) + 1
            if self.guarded:
                self.guard_at[cols] = self.guard_buf[at, cols]
            self.dead = torch.cat([self.dead, cols])
        kept = buf[:, self.first_obs:]
        if self.dead.numel():  # NaN from the recording where a path was first seen diverged on
            slots = torch.arange(s0, s0 + r, device=buf.device).unsqueeze(1)
            gone = kept[:, :, self.dead]
            kept[:, :, self.dead] = gone.masked_fill((slots >= self.first[self.dead]).unsqueeze(1), math.nan)
        kept = kept.cpu()  # the one copy per block
        if s0 == 0:
            for i in self.batch:
                kept[0, i] = math.nan  # the batch loss is undefined before the first step
        for i, out in enumerate(values):
            out[s0:s0 + r, a:b] = kept[:, i]
        self.rows.clear()

    def finish(self, observables: dict[str, Observable]) -> tuple[Tensor, int, Tensor, list[str]]:
        """At the end of the chunk, on the host: ``alive (m,)``, guard firings (those of a diverged path count
        up to the recording at which it was seen diverged), first slots ``(m,)`` and reasons."""
        alive = self.first < 0
        fired = torch.where(alive, self.guard_acc, self.guard_at).sum() if self.guarded else torch.zeros(())
        names = ["", "state"] + (["max_norm"] if self.check_norm else []) + [f"observable:{n}" for n in observables]
        return alive.cpu(), int(fired), self.first.cpu(), [names[c] for c in self.reason.tolist()]


def _advance(x: Tensor, state, per_step, k_first: int, step: Step, records: _Records, slot: dict[int, int]):
    """Steps ``k_first, k_first + 1, ...`` over one block's draws. No host synchronisation here: guard
    firings are counted and observables written on the device (tests patch the synchronising calls)."""
    for k, draw in enumerate(per_step, start=k_first):
        out = step(x, draw, state, k - 1)
        x, state, fired = out[:3]
        if records.batch and len(out) < 4:  # at the first step, not the first recording
            raise ValueError("the 'batch_loss' observable needs a step that reports the loss of its draw "
                             "(returns (x_next, state, guard, batch_loss)); this one does not")
        if fired is not None:
            records.count(fired)
        i = slot.get(k)
        if i is not None:
            records.record(x, i, out[3] if len(out) > 3 else None)
    return x, state


def _given_draws(draws, layout, as_tuple: bool, steps: int, n: int) -> tuple[Tensor, ...]:
    """Validate a draw sequence to replay: as the sampler makes it, with leading dims ``(steps, n_paths)``."""
    parts = tuple(draws) if isinstance(draws, (tuple, list)) else (draws,)
    kind = f"a tuple of {len(layout)} tensors" if as_tuple else "a tensor"
    if isinstance(draws, (tuple, list)) != as_tuple or len(parts) != len(layout):
        raise ValueError(f"`draws` must be {kind} (as the problem's sampler makes them), got {type(draws).__name__}"
                         + (f" of length {len(parts)}" if isinstance(draws, (tuple, list)) else ""))
    for t, (shape, dtype) in zip(parts, layout):
        want = (steps, n, *shape)
        if not isinstance(t, Tensor) or tuple(t.shape) != want or t.dtype != dtype:
            got = (f"shape {tuple(t.shape)}, dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__)
            raise ValueError(f"`draws` must have leading dims (steps, n_paths) = ({steps}, {n}): shape {want}, "
                             f"dtype {dtype}, got {got}")
    return parts


class _Progress:
    """A tqdm bar over path-chunk steps: always (``True``), never (``False``) or, by default (``None``), on a
    terminal or in a notebook once the run is projected to take more than :data:`PROGRESS_AFTER_S` seconds
    (checked after each block of steps; the bar then starts where the run is, with its ETA)."""

    def __init__(self, total: int, show: bool | None, desc: str):
        self.total, self.show, self.desc, self.done = total, show, desc, 0
        self.t0 = time.perf_counter()
        self.bar = self._open() if show else None

    def _open(self):
        return tqdm(total=self.total, initial=self.done, desc=self.desc, unit="step", dynamic_ncols=True)

    @staticmethod
    def _interactive() -> bool:
        return sys.stderr.isatty() or "ipykernel" in sys.modules

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.show is None and self.done < self.total:
            elapsed = time.perf_counter() - self.t0
            if elapsed * self.total / self.done > PROGRESS_AFTER_S and self._interactive():
                self.bar = self._open()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def drive(x_all: Tensor, *, steps: int, record_every: "int | str", observables: dict[str, Observable], seed: int,
          chunk_size: int | None, max_norm: float, progress: bool | None, sampler: streams.Sampler,
          step: Step, init: Callable[[Tensor, Tensor], Any], dt: float, info: dict,
          draws: "Tensor | tuple[Tensor, ...] | None" = None, keep_draws: bool = False,
          step_cost: float | None = None, init_gauss: bool = True, rows_per_path: int = 1) -> Trajectory:
    """Advance every path ``steps`` times and record observables at ``t = k * dt``.

    Args:
        x_all: ``(n_paths, d)`` initial states.
        record_every: Steps between recordings, or ``"auto"``: :func:`observables.auto_record_every` from the
            observables' costs and ``step_cost``. The interval used is ``info["record_every"]``.
        chunk_size: Paths per chunk, any positive size; ``None``: :func:`streams.auto_chunk` (one chunk unless, on
            a CPU, the state outgrows the cache). Results do not depend on it.
        sampler: Draws one step's randomness for a block of paths (see :class:`streams.PathStreams`).
        init: ``init(x_chunk, gaussian (n, d)) -> state`` for stateful methods (e.g. Eigen-SAM's vector).
        init_gauss: Whether ``init`` uses its Gaussian; ``False``: it gets ``None`` and none is drawn (its own
            stream, so the steps' numbers are the same either way; an ``(n, d)`` draw costs more than a step of
            a large model).
        rows_per_path: Rows a step evaluates per path (e.g. 2 for the two-draw scheme), for the automatic chunks.
        dt: Time per step (``lr`` for discrete runs, the solver step for SDEs).
        draws: A draw sequence to replay instead of generating one: what ``sampler`` makes, with leading
            dims ``(steps, n_paths)`` (a tensor, or a tuple of tensors when the sampler returns a tuple), on
            any device. ``seed`` still sets the initial state of stateful methods.
        keep_draws: Return the draws used as :attr:`Trajectory.draws`, on the CPU. Memory: ``steps * n_paths``
            times the size of one draw (e.g. ``4 * steps * n_paths * d`` bytes for float32 Gaussian noise).
        step_cost: One step's cost per path in per-sample gradient evaluations (``observables.step_cost``),
            for ``record_every="auto"``; ``None``: unknown (then every step is recorded).
    """
    n, d = x_all.shape
    device = x_all.device
    if record_every == "auto":
        record_every = auto_record_every(observables, step_cost)
    info = {**info, "record_every": record_every}
    ks = record_times(steps, record_every)
    slot = {k: i for i, k in enumerate(ks)}
    values = [torch.full((len(ks), n), math.nan, dtype=x_all.dtype) for _ in observables]
    diverged = torch.zeros(n, dtype=torch.bool)
    first_seen = torch.full((n,), -1, dtype=torch.long)
    reasons: list[str] = []
    x_final = torch.empty_like(x_all, device="cpu")
    guard = 0
    noise = streams.PathStreams(seed, n, device)
    init_noise = streams.PathStreams(seed, n, device, stream=1)
    gauss = lambda shape, g: torch.randn(*shape, d, generator=g, dtype=x_all.dtype, device=device)
    layout, as_tuple = _layout(sampler, device)
    given = None if draws is None else _given_draws(draws, layout, as_tuple, steps, n)
    kept = tuple(torch.empty(steps, n, *shape, dtype=dtype) for shape, dtype in layout) if keep_draws else None
    block = _steps_per_draw(layout)
    if chunk_size is None:
        chunk_size = streams.auto_chunk(n, d * rows_per_path, x_all.element_size(), device,
                                        sum(math.prod(s) for s, _ in layout))
    parts = streams.exact_chunks(n, chunk_size)
    bar = _Progress(steps * len(parts), progress, info.get("kind", "run"))

    width = max(b - a for a, b in parts)
    buffers = (tuple(torch.empty(block, width, *shape, dtype=dtype, device=device) for shape, dtype in layout)
               if width > streams.BLOCK and given is None else ())
    cap = min(len(ks), block + 1)  # recordings between two flushes, at most
    for a, b in parts:
        x = x_all[a:b].clone()
        whole = streams.aligned(n, a, b)  # else: the overlapped blocks' streams, drawn whole, rows kept
        rows = None if whole else streams.RowStreams(seed, n, a, b, device)
        if not init_gauss:
            start = (None,)
        elif whole:
            start = init_noise.draw(a, b, 1, gauss)
        else:
            start = streams.RowStreams(seed, n, a, b, device, stream=1).draw(1, gauss)
        state = init(x, start[0])
        records = _Records(observables, cap=cap, m=b - a, dtype=x_all.dtype, device=device, max_norm=max_norm)
        records.record(x, 0)
        for k0 in range(0, steps, block):
            todo = min(block, steps - k0)
            if given is None:
                blk = _draw(noise, a, b, block, sampler, buffers, as_tuple) if whole else rows.draw(block, sampler)
                blk = blk if as_tuple else (blk,)
            else:
                blk = tuple(t[k0:k0 + todo, a:b].to(device) for t in given)
            if kept is not None:
                for dst, src in zip(kept, blk):
                    dst[k0:k0 + todo, a:b].copy_(src[:todo])
            # One unbind per block instead of an index per step (and per tensor of a tuple draw).
            per_step = zip(*(t[:todo].unbind(0) for t in blk)) if as_tuple else blk[0][:todo].unbind(0)
            x, state = _advance(x, state, per_step, k0 + 1, step, records, slot)
            del blk, per_step  # free the block before the next one is generated
            records.flush(values, a, b)
            bar.update(todo)
        alive, fired, first_seen[a:b], why = records.finish(observables)
        guard += fired
        reasons += why
        x_final[a:b] = x.detach().cpu()
        x_final[a:b][~alive] = math.nan
        diverged[a:b] = ~alive
    bar.close()
    times = torch.tensor(ks, dtype=torch.float64) * dt
    diverged_at = torch.where(diverged, times[first_seen.clamp_min(0)], math.nan)
    if kept is not None:
        kept = kept if as_tuple else kept[0]
    return Trajectory(times=times, values=dict(zip(observables, values)), x_final=x_final, diverged=diverged,
                      diverged_at=diverged_at, guard_count=guard, info=info, draws=kept,
                      diverged_reason=reasons)
