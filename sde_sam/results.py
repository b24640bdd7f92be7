"""Result objects: :class:`Trajectory` for discrete runs and SDE solutions alike."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor


@dataclass
class Trajectory:
    """Per-path observables of many independent runs, on the SDE time scale :math:`t = k\\,\\eta`.

    Paths that turned non-finite, left ``max_norm`` or whose recorded observable was non-finite are flagged
    in :attr:`diverged` (the reason in :attr:`diverged_reason`) and left out of every statistic;
    :attr:`n_diverged` says how many.

    Attributes:
        times: ``(R,)`` recording times.
        values: Observable name -> ``(R, n_paths)`` per-path values (NaN after a path diverged).
        x_final: ``(n_paths, d)`` final states.
        diverged: ``(n_paths,)`` bool.
        diverged_at: ``(n_paths,)`` first recording time at which the path was seen diverged (NaN if never).
        guard_count: How many times (path-steps) a norm guard fired.
        info: What produced it (kind, method, hyper-parameters, model, seed, ...).
        draws: The draws the run used, leading dims ``(steps, n_paths)`` (a tensor, or a tuple of tensors as
            the sampler makes them), on the CPU; only with ``keep_draws=True`` (else ``None``). Pass them as
            ``draws=`` to replay the run.
        diverged_reason: Per path, why it was flagged, at the first recording where it was seen: ``""`` (not
            diverged), ``"state"`` (a non-finite iterate, or one so large that the sum of its coordinates
            overflows), ``"max_norm"`` (``||x|| > max_norm``) or ``"observable:<name>"`` (that recorded
            observable was non-finite, e.g. an overflowing loss, while the iterate was not); the first of these
            in that order. :attr:`divergence_counts` tallies them.

    Example:
        >>> traj.mean("loss"), traj.sem("loss")  # doctest: +SKIP
    """

    times: Tensor
    values: dict[str, Tensor]
    x_final: Tensor
    diverged: Tensor
    diverged_at: Tensor
    guard_count: int = 0
    info: dict = field(default_factory=dict)
    draws: Tensor | tuple[Tensor, ...] | None = None
    diverged_reason: list[str] | None = None

    def __post_init__(self) -> None:
        if self.diverged_reason is None:  # made without reasons (e.g. the torchsde backend)
            self.diverged_reason = ["unknown" if bad else "" for bad in self.diverged.tolist()]
        if len(self.diverged_reason) != self.n_paths:
            raise ValueError(f"`diverged_reason` must have one entry per path ({self.n_paths}), "
                             f"got {len(self.diverged_reason)}")

    @property
    def n_paths(self) -> int:
        return int(self.diverged.shape[0])

    @property
    def n_diverged(self) -> int:
        return int(self.diverged.sum())

    @property
    def observables(self) -> list[str]:
        return list(self.values)

    def _kept(self, name: str) -> Tensor:
        if name not in self.values:
            raise KeyError(f"observable {name!r} was not recorded; recorded: {self.observables}")
        return self.values[name][:, ~self.diverged]

    def mean(self, name: str) -> Tensor:
        """``(R,)`` mean over non-diverged paths."""
        return self._kept(name).mean(dim=1)

    def var(self, name: str) -> Tensor:
        """``(R,)`` unbiased variance over non-diverged paths."""
        return self._kept(name).var(dim=1)

    def sem(self, name: str) -> Tensor:
        """``(R,)`` standard error of :meth:`mean`."""
        kept = self._kept(name)
        n = kept.shape[1]
        return kept.std(dim=1) / math.sqrt(n) if n > 1 else torch.full_like(kept[:, 0], math.nan)

    def to_frame(self) -> pd.DataFrame:
        """Tidy summary: one row per (observable, time) with mean, sem, n_paths, n_diverged."""
        rows = []
        for name in self.values:
            m, s = self.mean(name).tolist(), self.sem(name).tolist()
            for t, mi, si in zip(self.times.tolist(), m, s):
                rows.append({"observable": name, "time": t, "mean": mi, "sem": si,
                             "n_paths": self.n_paths - self.n_diverged, "n_diverged": self.n_diverged})
        frame = pd.DataFrame(rows)
        for key in ("kind", "method", "model", "lr", "rho"):
            if key in self.info:
                frame[key] = self.info[key]
        return frame

    @property
    def divergence_counts(self) -> dict[str, int]:
        """How many paths diverged for each reason, e.g. ``{"state": 3, "observable:loss": 1}``."""
        counts: dict[str, int] = {}
        for reason in self.diverged_reason:
            if reason:
                counts[reason] = counts.get(reason, 0) + 1
        return counts

    def save(self, path: str | Path) -> None:
        """Save to a ``.pt`` file that :meth:`load` reads with ``torch.load(..., weights_only=True)``.

        Only tensors (moved to the CPU), dicts, lists, tuples, strings, numbers, booleans and ``None`` are
        written; any other value in :attr:`info` is stored as its ``repr``.
        """
        torch.save({k: _plain(getattr(self, k)) for k in self.__dataclass_fields__}, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        """Read a file written by :meth:`save` (``weights_only=True``: no arbitrary code is unpickled)."""
        return cls(**torch.load(Path(path), weights_only=True))

    def __repr__(self) -> str:
        why = f" {self.divergence_counts}" if self.n_diverged else ""
        return (f"Trajectory({self.info.get('kind', '?')}, n_paths={self.n_paths}, n_diverged={self.n_diverged}{why}, "
                f"records={len(self.times)}, t1={float(self.times[-1]):.4g}, observables={self.observables})")


def _plain(obj):
    """``obj`` with only what ``torch.load(weights_only=True)`` accepts: CPU tensors, containers, scalars."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {(k if isinstance(k, (str, int, float, bool)) else repr(k)): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj) if type(obj) in (list, tuple) else [_plain(v) for v in obj]
    if obj is None:
        return None
    for kind in (bool, int, float, str):  # also their subclasses (numpy floats, enums): as the plain type
        if isinstance(obj, kind):
            return kind(obj)
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy scalars
        return _plain(obj.item())
    return repr(obj)
