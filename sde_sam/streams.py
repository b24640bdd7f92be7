"""Per-path random streams, independent of how paths are chunked.

Paths are grouped in fixed blocks; each block owns a ``torch.Generator`` seeded from ``(seed, block)`` by
``numpy.random.SeedSequence``. A chunk of paths is a union of whole blocks, so the random numbers a path
sees depend only on the seed, the number of paths and its index, never on the chunk size.
"""
from __future__ import annotations

import math
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
