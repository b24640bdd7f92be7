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

    Paths that turned non-finite (or left ``max_norm``) are flagged in :attr:`diverged` and left out of
    every statistic; :attr:`n_diverged` says how many.

    Attributes:
        times: ``(R,)`` recording times.
        values: Observable name -> ``(R, n_paths)`` per-path values (NaN after a path diverged).
        x_final: ``(n_paths, d)`` final states.
        diverged: ``(n_paths,)`` bool.
        diverged_at: ``(n_paths,)`` first recording time at which the path was seen diverged (NaN if never).
        guard_count: How many times (path-steps) a norm guard fired.
        info: What produced it (kind, method, hyper-parameters, model, seed, ...).

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

    def save(self, path: str | Path) -> None:
        """Save to a ``.pt`` file (tensors on CPU)."""
        torch.save({k: getattr(self, k) for k in self.__dataclass_fields__}, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        return cls(**torch.load(Path(path), weights_only=False))

    def __repr__(self) -> str:
        return (f"Trajectory({self.info.get('kind', '?')}, n_paths={self.n_paths}, n_diverged={self.n_diverged}, "
                f"records={len(self.times)}, t1={float(self.times[-1]):.4g}, observables={self.observables})")
