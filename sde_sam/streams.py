"""Per-path random streams, independent of how paths are chunked.

Paths are grouped in fixed blocks of :data:`BLOCK` = 1024 (paths ``1024 b .. 1024 b + m_b - 1`` form block ``b``,
``m_b = min(1024, n_paths - 1024 b)``); each block owns a ``torch.Generator`` seeded from ``(seed, stream, b)``
by ``numpy.random.SeedSequence`` (``stream`` 0: the draws; 1: the Gaussian start of Eigen-SAM's eigenvector).
The run draws the randomness of a block for ``S`` steps at once as one ``(S, m_b, ...)`` call of the sampler
on that generator, block after block of steps, where ``S`` depends only on the size of one draw
(``sde_sam._engine._steps_per_draw``: at most 64).

**What a path's random numbers depend on, exactly.** The numbers path ``p`` sees at step ``k`` are a function
of: the integer seed (a ``torch.Generator`` passed as ``seed`` is turned into one by a single draw from it);
the stream; its block ``b = p // 1024``; the size ``m_b`` of that block and its position ``p - 1024 b`` in it;
the problem's (or SDE model's) sampler, i.e. the kind, shape and dtype of one draw (which also set ``S``); the
device and the torch version (the generator's algorithm). They do **not** depend on ``chunk_size``, on the
number of steps (a run of ``k`` steps sees the first ``k`` steps of a longer run's draws), nor on the other
blocks. Consequences:

- Paths in *full* blocks are prefix-consistent: the first 1024 paths of a 2048-path run are the 1024-path run,
  and the first 1024 paths of a 1030-path run are those too.
- Paths in the last, partial block are not: its generator fills an ``(S, m_b, ...)`` array, so the number a
  path gets depends on ``m_b``. A 16-path run is **not** the first 16 paths of a 256-path run (nor of a
  1030-path run's last block); it is an independent sample of the same law.
- The weak-error studies derive a separate integer seed per cell from ``(seed, lr, cell kind)``
  (:func:`sde_sam.weak.cells.cell_seed`), so a cell's paths do not depend on the other cells either.

These default streams are what every saved result was computed with; they are kept bit for bit.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

BLOCK = 1024
"""Paths per random stream; chunk sizes are rounded to a multiple of it."""

Sampler = Callable[[tuple[int, ...], torch.Generator], "Tensor | tuple[Tensor, ...]"]
"""``sampler(shape, generator)`` returns draws (a tensor or a tuple of tensors) with leading dims ``shape``."""


def resolve_seed(seed: int | torch.Generator) -> int:
    """An integer seed from an int or a ``torch.Generator`` (which is advanced by one draw)."""
    if isinstance(seed, torch.Generator):
        return int(torch.randint(2**62, (1,), generator=seed, device=seed.device).item())
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0 or a torch.Generator, got seed={seed!r}")
    return int(seed)


class PathStreams:
    """Random streams for ``n_paths`` paths in blocks of :data:`BLOCK`.

    Args:
        seed: Integer seed (see :func:`resolve_seed`).
        n_paths: Number of paths.
        device: Device the generators live on.
        stream: Distinguishes independent uses of the same seed (e.g. draws vs. initial vectors).
    """

    def __init__(self, seed: int, n_paths: int, device: torch.device, *, stream: int = 0):
        self.n_paths = n_paths
        self.blocks = [(b, min(b + BLOCK, n_paths)) for b in range(0, n_paths, BLOCK)]
        entropy = np.random.SeedSequence(entropy=seed, spawn_key=(stream,))
        self._gens = []
        for child in entropy.spawn(len(self.blocks)):
            g = torch.Generator(device=device)
            g.manual_seed(int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
            self._gens.append(g)

    def draw(self, start: int, stop: int, n_steps: int, sampler: Sampler):
        """Draws for paths ``start:stop`` (block-aligned) and ``n_steps`` steps: ``(n_steps, stop-start, ...)``."""
        parts = []
        for i, (a, b) in enumerate(self.blocks):
            if a >= start and b <= stop:
                parts.append(sampler((n_steps, b - a), self._gens[i]))
            elif a < stop and b > start:
                raise ValueError(f"paths {start}:{stop} are not aligned to random-stream blocks of {BLOCK}")
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], tuple):  # several kinds of randomness per step, e.g. (draws, increments)
            return tuple(torch.cat(p, dim=1) for p in zip(*parts))
        return torch.cat(parts, dim=1)


def chunks(n_paths: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """Block-aligned ``(start, stop)`` chunks covering ``n_paths`` (``None``: one chunk)."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be a positive integer or None, got chunk_size={chunk_size!r}")
    if chunk_size is None or chunk_size >= n_paths:
        return [(0, n_paths)]
    size = max(BLOCK, chunk_size // BLOCK * BLOCK)
    return [(a, min(a + size, n_paths)) for a in range(0, n_paths, size)]


# -- chunks of any size ----------------------------------------------------------------------------------------
def exact_chunks(n_paths: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` chunks of exactly ``chunk_size`` paths (the last one shorter), not rounded to blocks.

    A chunk that is not block-aligned gets its numbers from :class:`RowStreams` (the same numbers as
    :class:`PathStreams`), so results still do not depend on the chunk size.
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be a positive integer or None, got chunk_size={chunk_size!r}")
    if chunk_size is None or chunk_size >= n_paths:
        return [(0, n_paths)]
    return [(a, min(a + chunk_size, n_paths)) for a in range(0, n_paths, chunk_size)]


CACHE_SHARE = 0.6
"""Automatic chunks on the CPU: one chunk's ``(paths, d)`` state is at most this share of the last-level
cache (measured, 2 cores, 32 MiB L3: a SAM step of 64 paths of a 307k-parameter MLP in float32 took 654 ms in one
chunk of 79 MB and 243 ms in chunks of 20 MB; of a 77k one in float64, 259 and 149 ms; ``benchmarks/README.md``)."""


@functools.cache
def _last_level_cache_bytes() -> int:
    """The largest CPU cache reported by Linux's sysfs (the last level), else 32 MiB."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if unit > 1 else text
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes, default=32 * 2**20)


def cache_budget() -> float:
    """Bytes a chunk's working set may take: :data:`CACHE_SHARE` of the last-level cache."""
    return CACHE_SHARE * _last_level_cache_bytes()


def auto_chunk(n_paths: int, d: int, itemsize: int, device: torch.device, draw_numel: int) -> int | None:
    """Automatic ``chunk_size`` (``None``): paths per chunk so that a chunk's ``(paths, d)`` state fits :data:`CACHE_SHARE` of
    the CPU's last-level cache, in equal chunks; ``None`` (one chunk) when it already does, on a GPU, or when a
    path's draw is not small against ``d`` (a chunk inside a random-stream block draws the whole block). ``d``
    counts every row a step evaluates per path (the two-draw scheme: ``2 d``; measured on the 77k MLP in float64,
    64 paths: 421 ms per SDE step in chunks of 32, 304 ms in chunks of 16)."""
    if device.type != "cpu" or 8 * draw_numel > d:
        return None
    k = math.ceil(n_paths * d * itemsize / cache_budget())
    return None if k <= 1 else math.ceil(n_paths / k)


def aligned(n_paths: int, start: int, stop: int) -> bool:
    """Whether paths ``start:stop`` are a union of whole random-stream blocks."""
    return start % BLOCK == 0 and (stop % BLOCK == 0 or stop == n_paths)


def block_generator(seed: int, n_paths: int, block: int, device: torch.device, *, stream: int = 0) -> torch.Generator:
    """A fresh generator in the initial state of block ``block``'s stream of ``PathStreams(seed, n_paths, device,
    stream=stream)`` (numpy's ``spawn`` gives child ``i`` the spawn key ``(stream, i)``)."""
    child = np.random.SeedSequence(entropy=seed, spawn_key=(stream, block))
    g = torch.Generator(device=device)
    g.manual_seed(int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return g


class RowStreams:
    """The streams of paths ``start:stop`` for a chunk that need not be block-aligned.

    Holds fresh generators of the blocks that overlap the rows (in their initial states, whichever chunk used
    them before), draws every such block whole, exactly as :class:`PathStreams` does, and keeps the rows asked
    for: the same numbers for every path, at the price of drawing up to two partial blocks in full (for chunks
    smaller than a block, ``BLOCK / chunk_size`` times the random numbers actually used).
    """

    def __init__(self, seed: int, n_paths: int, start: int, stop: int, device: torch.device, *, stream: int = 0):
        self.start, self.stop = start, stop
        first, last = start // BLOCK, (stop - 1) // BLOCK
        self.blocks = [(i * BLOCK, min((i + 1) * BLOCK, n_paths)) for i in range(first, last + 1)]
        self._gens = [block_generator(seed, n_paths, i, device, stream=stream) for i in range(first, last + 1)]

    def draw(self, n_steps: int, sampler: Sampler):
        """Draws of rows ``start:stop`` for ``n_steps`` steps: ``(n_steps, stop-start, ...)``."""
        parts = []
        for (a, b), g in zip(self.blocks, self._gens):
            whole = sampler((n_steps, b - a), g)
            lo, hi = max(self.start, a) - a, min(self.stop, b) - a
            parts.append(tuple(t[:, lo:hi] for t in whole) if isinstance(whole, tuple) else whole[:, lo:hi])
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p, dim=1) for p in zip(*parts))
        return torch.cat(parts, dim=1)


# -- random signs from random bits -----------------------------------------------------------------------------
_SIGN_TABLES: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _sign_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(256, 8)``: row ``b`` holds ``1 - 2 * bit_i(b)``, the signs of the 8 bits of byte ``b``."""
    key = (dtype, torch.device(device))
    if key not in _SIGN_TABLES:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        _SIGN_TABLES[key] = (1 - 2 * bits).to(dtype=dtype, device=device)
    return _SIGN_TABLES[key]


def random_signs(shape: tuple[int, ...], generator: torch.Generator, *, dtype: torch.dtype,
                 device: torch.device | str) -> Tensor:
    r"""Independent :math:`\pm1` with probability 1/2 each, of shape ``shape``: 64 signs per random 64-bit word.

    The words are drawn with ``generator`` (``random_`` over the whole int64 range: uniform to within
    :math:`2^{-64}`), viewed as bytes, and each byte's 8 bits become 8 signs by one table lookup
    (``index_select`` of a ``(256, 8)`` table), about 25x cheaper than ``torch.randn`` on a CPU core.
    """
    numel = math.prod(shape)
    words = torch.empty((numel + 63) // 64, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1, generator=generator)
    signs = _sign_table(dtype, words.device).index_select(0, words.view(torch.uint8).int())
    return signs.view(-1)[:numel].view(shape)
