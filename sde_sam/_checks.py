"""Validation at the public boundary: every message names the argument, shows its value, says what is allowed."""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor


def nonneg(name: str, value: float) -> float:
    """Return ``value`` as a float after checking it is a finite number ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {name}={value!r}")
    return float(value)


def positive(name: str, value: float) -> float:
    """Return ``value`` as a float after checking it is a finite number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {name}={value!r}")
    return float(value)


def positive_int(name: str, value: int, *, minimum: int = 1) -> int:
    """Return ``value`` after checking it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {name}={value!r}")
    return value


def unit_interval(name: str, value: float) -> float:
    """Return ``value`` as a float after checking ``0 <= value <= 1``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {name}={value!r}")
    return float(value)


def state(x0, *, d: int | None, dtype: torch.dtype, device: torch.device, n_paths: int | None) -> tuple[Tensor, int]:
    """Check an initial state and broadcast it to ``(n_paths, d)``.

    ``x0`` is ``(d,)`` (every path starts there) or ``(n_paths, d)``. A dtype or device other than the
    problem's is an error, never a silent cast.

    Returns:
        The ``(n_paths, d)`` initial state (a new tensor) and ``n_paths``.
    """
    if not isinstance(x0, Tensor):
        raise TypeError(f"`x0` must be a torch.Tensor, got {type(x0).__name__}")
    if d is None:  # a problem that learns d from its first state
        if x0.ndim not in (1, 2) or x0.shape[-1] == 0:
            raise ValueError(f"`x0` must have shape (d,) or (n_paths, d), got {tuple(x0.shape)}")
        d = x0.shape[-1]
    if x0.dtype != dtype:
        raise ValueError(f"`x0` has dtype {x0.dtype} but the problem uses {dtype}; convert one of them explicitly")
    if x0.device.type != device.type:
        raise ValueError(f"`x0` is on device {x0.device} but the problem is on {device}")
    if x0.ndim == 1 and x0.shape[0] == d:
        n = 1 if n_paths is None else positive_int("n_paths", n_paths)
        x = x0.expand(n, d).clone()
    elif x0.ndim == 2 and x0.shape[1] == d and (n_paths is None or n_paths == x0.shape[0]):
        n = x0.shape[0]
        x = x0.clone()
    else:
        raise ValueError(
            f"`x0` must have shape (d,) or (n_paths, d) with d={d}"
            + (f" and n_paths={n_paths}" if n_paths is not None else "")
            + f", got {tuple(x0.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("`x0` must be finite, got a tensor with NaN or inf entries")
    return x, n


def problem_state(problem, x0, *, n_paths: int | None) -> tuple[Tensor, int]:
    """:func:`state` against a problem's ``d``, dtype and device; a problem without ``d`` learns it from ``x0``.

    A :class:`~sde_sam.problems.FiniteSum` built without ``d`` gets ``problem.d = x0.shape[-1]`` at its first
    checked state (discrete run, SDE simulation, weak-error study), so later calls are checked against it.
    """
    x, n = state(x0, d=problem.d, dtype=problem.dtype, device=problem.device, n_paths=n_paths)
    if problem.d is None:
        problem.d = x.shape[-1]
    return x, n


def max_norm(value: float) -> float:
    """``math.inf`` (no cap) or a finite number ``> 0``."""
    if value == math.inf and not isinstance(value, bool):
        return math.inf
    return positive("max_norm", value)
