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

    def _scaled(self, name: str) -> tuple[Tensor, Tensor]:
        """The kept values divided by a power of two per recording, and that power ``(R, 1)``.

        Dividing by :math:`2^e` is exact, so mean and standard deviation computed on the scaled values and
        scaled back are the plain ones bit for bit, except that squares of values near the float64 limit
        (``1e293``: their squares overflow) no longer turn a finite spread into ``inf``.
        """
        kept = self._kept(name)
        top = kept.abs().amax(dim=1, keepdim=True) if kept.shape[1] else torch.ones(kept.shape[0], 1, dtype=kept.dtype)
        usable = torch.isfinite(top) & (top > 0)
        # 2**(e-1) with top = m 2**e, m in [0.5, 1): scaled values within [-2, 2), and 2**1023 itself is finite
        scale = torch.ldexp(torch.ones_like(top), torch.frexp(torch.where(usable, top, 1.0)).exponent - 1)
        return kept / scale, scale

    def mean(self, name: str) -> Tensor:
        """``(R,)`` mean over non-diverged paths (NaN when every path diverged)."""
        scaled, scale = self._scaled(name)
        if scaled.shape[1] == 0:
            return torch.full((scaled.shape[0],), math.nan, dtype=scaled.dtype)
        return scaled.mean(dim=1) * scale[:, 0]

    def var(self, name: str) -> Tensor:
        """``(R,)`` unbiased variance over non-diverged paths (NaN with fewer than two; may overflow to ``inf``
        where the spread's square does)."""
        scaled, scale = self._scaled(name)
        if scaled.shape[1] < 2:
            return torch.full((scaled.shape[0],), math.nan, dtype=scaled.dtype)
        return scaled.var(dim=1) * scale[:, 0] * scale[:, 0]

    def _std(self, name: str) -> Tensor:
        scaled, scale = self._scaled(name)
        if scaled.shape[1] < 2:
            return torch.full((scaled.shape[0],), math.nan, dtype=scaled.dtype)
        return scaled.std(dim=1) * scale[:, 0]

    def sem(self, name: str) -> Tensor:
        """``(R,)`` standard error of :meth:`mean` (NaN with fewer than two surviving paths); finite for values
        up to the float64 limit (computed on power-of-two-scaled values, see :meth:`_scaled`)."""
        n = self.n_paths - self.n_diverged
        return self._std(name) / math.sqrt(n) if n > 1 else self._std(name)

    def to_frame(self) -> pd.DataFrame:
        """Tidy summary: one row per (observable, time) with mean, sem, n_paths (surviving), n_diverged.

        With every path diverged the rows are still there: mean and sem NaN, ``n_paths`` 0 and the count.
        """
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
        """Read a file written by :meth:`save` (``weights_only=True``: no arbitrary code is unpickled).

        Every field is checked (type, shape, agreement on ``n_paths`` and the number of recordings); a file that
        holds plain data but not such a trajectory is a ``ValueError`` naming the file and the field (objects
        other than plain data are refused by torch: ``pickle.UnpicklingError``).
        """
        path = Path(path)
        data = torch.load(path, weights_only=True)  # refuses anything but tensors and plain containers
        return cls(**_checked_fields(data, path))

    def __repr__(self) -> str:
        why = f" {self.divergence_counts}" if self.n_diverged else ""
        return (f"Trajectory({self.info.get('kind', '?')}, n_paths={self.n_paths}, n_diverged={self.n_diverged}{why}, "
                f"records={len(self.times)}, t1={float(self.times[-1]):.4g}, observables={self.observables})")


def _checked_fields(data, path: Path) -> dict:
    """The fields of a loaded trajectory file after checking their types and shapes (see :meth:`Trajectory.load`)."""
    def bad(field: str, want: str, got) -> ValueError:
        shown = (f"{type(got).__name__} of shape {tuple(got.shape)}, dtype {got.dtype}" if isinstance(got, Tensor)
                 else type(got).__name__)
        return ValueError(f"{path} is not a valid trajectory file: `{field}` must be {want}, got {shown}")

    if not isinstance(data, dict):
        raise bad("<file>", "a dict of the Trajectory fields", data)
    names = set(Trajectory.__dataclass_fields__)
    required = {"times", "values", "x_final", "diverged", "diverged_at"}
    unknown, missing = sorted(set(data) - names), sorted(required - set(data))
    if unknown or missing:
        raise ValueError(f"{path} is not a valid trajectory file: " + "; ".join(
            ([f"unknown fields {unknown}"] if unknown else []) + ([f"missing fields {missing}"] if missing else [])))
    times, values, x_final, diverged, at = (data[k] for k in ("times", "values", "x_final", "diverged", "diverged_at"))
    if not isinstance(diverged, Tensor) or diverged.ndim != 1 or diverged.dtype != torch.bool:
        raise bad("diverged", "a 1-d bool tensor (one flag per path)", diverged)
    n = diverged.shape[0]
    if not isinstance(times, Tensor) or times.ndim != 1 or not times.dtype.is_floating_point:
        raise bad("times", "a 1-d floating tensor", times)
    if not isinstance(x_final, Tensor) or x_final.ndim != 2 or x_final.shape[0] != n \
            or not x_final.dtype.is_floating_point:
        raise bad("x_final", f"a floating (n_paths, d) tensor with n_paths={n}", x_final)
    if not isinstance(at, Tensor) or tuple(at.shape) != (n,) or not at.dtype.is_floating_point:
        raise bad("diverged_at", f"a floating ({n},) tensor", at)
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise bad("values", "a dict from observable names to tensors", values)
    for key, v in values.items():
        if not isinstance(v, Tensor) or tuple(v.shape) != (times.shape[0], n) or not v.dtype.is_floating_point:
            raise bad(f"values[{key!r}]", f"a floating (records, n_paths) = ({times.shape[0]}, {n}) tensor", v)
    guard = data.get("guard_count", 0)
    if isinstance(guard, bool) or not isinstance(guard, int) or guard < 0:
        raise bad("guard_count", "an integer >= 0", guard)
    if not isinstance(data.get("info", {}), dict):
        raise bad("info", "a dict", data["info"])
    draws = data.get("draws")
    if draws is not None and not isinstance(draws, Tensor) and not (
            isinstance(draws, (tuple, list)) and all(isinstance(t, Tensor) for t in draws)):
        raise bad("draws", "None, a tensor or a tuple of tensors", draws)
    reasons = data.get("diverged_reason")
    if reasons is not None and (not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons)):
        raise bad("diverged_reason", "a list of strings (one per path)", reasons)
    return {**data, "draws": tuple(draws) if isinstance(draws, list) else draws}


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
