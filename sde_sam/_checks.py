"""Validation at the public boundary: every message names the argument, shows its value, says what is allowed."""
from __future__ import annotations

import math
import os
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
        # The initial states, the final states and a chunk's working copy: three (n_paths, d) tensors.
        fits(f"`n_paths`={n} with d={d}: the states (3 x n_paths x d {dtype})", 3 * n * d * _itemsize(dtype), device)
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


# -- memory: refuse up front what cannot fit, with the estimate in the message ----------------------------------
MAX_STEPS = 2**53
"""Steps of one run at most: step counts and the times ``k * dt`` stay exact in float64 (and a run this long
would never finish anyway)."""


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def memory_total(device: torch.device | str) -> int:
    """Bytes of memory of ``device``: the physical memory of this machine (CPU) or of the GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): no refusal
        return 2**63


def _size(nbytes: float) -> str:
    if not math.isfinite(nbytes) or nbytes >= 1024**6:
        return f"{nbytes:.3g} bytes"
    for unit, scale in (("EiB", 1024**6), ("PiB", 1024**5), ("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes / 1024:.3g} KiB"


def fits(what: str, nbytes: float, device: torch.device | str) -> None:
    """Refuse, before any work, an allocation larger than the whole memory of ``device``.

    Args:
        what: What needs the memory, starting with the argument that sets it (``"`n_paths`=... : the states"``).
        nbytes: The estimate (a lower bound: only the largest buffers are counted).
        device: Where it would live.

    Raises:
        ValueError: ``what`` with the estimate and the memory there is.
    """
    total = memory_total(device)
    if nbytes > total:
        raise ValueError(f"{what} need about {_size(nbytes)}, more than the {_size(total)} of memory on "
                         f"{torch.device(device).type}; use smaller sizes")


def step_count(name: str, value: float, steps: float, unit: str) -> None:
    """Refuse a step count that is not finite or above :data:`MAX_STEPS` (e.g. ``horizon=1e308``)."""
    if not math.isfinite(steps) or steps > MAX_STEPS:
        raise ValueError(f"`{name}`={value!r} means {steps:.3g} {unit}, more than the {MAX_STEPS:.3g} (2**53) a run "
                         f"can take; use a smaller `{name}`")


def records(*, steps: int, record_every: int, n_paths: int, n_observables: int, dtype: torch.dtype,
            argument: str = "steps") -> None:
    """Refuse recordings that cannot fit: ``n_observables`` host tensors of ``(steps / record_every + 2, n_paths)``
    (``argument``: what sets ``steps``, named in the message)."""
    if argument == "steps":
        step_count("steps", steps, steps, "steps")
    rows = steps // record_every + 2
    fits(f"`{argument}`: {steps} steps recorded every {record_every} for n_paths={n_paths} and {n_observables} "
         f"observable(s): the recordings ({rows} x n_paths {dtype} per observable)",
         float(rows) * n_paths * max(n_observables, 1) * _itemsize(dtype), "cpu")


# -- draws given to ss.step / ss.run(draws=) ----------------------------------------------------------------------
def draws(problem, value, *, lead: tuple[int, ...], name: str = "draws") -> None:
    """Check draws given to :func:`sde_sam.step` (``lead=(n,)``) or :func:`sde_sam.run` (``lead=(steps, n)``)
    against the problem's format: what ``problem.sample_draws`` makes (shape, dtype), and for mini-batch indices
    (:class:`~sde_sam.FiniteSum`) the batch size and the range ``0..n-1`` (one host synchronisation).

    Raises:
        ValueError: The wrong property, the expected format and what was given.
    """
    sample = problem.sample_draws((1,), torch.Generator(device=problem.device).manual_seed(0))
    want = sample if isinstance(sample, tuple) else (sample,)
    got = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    kind = "noise vectors" if want[0].dtype.is_floating_point else "mini-batch indices"
    if isinstance(value, (tuple, list)) != isinstance(sample, tuple) or len(got) != len(want) \
            or not all(isinstance(t, Tensor) for t in got):
        raise TypeError(f"`{name}` must be {'a tuple of tensors' if isinstance(sample, tuple) else 'a tensor'} "
                        f"as problem.sample_draws makes ({kind}), got {type(value).__name__}")
    for t, w in zip(got, want):
        shape = (*lead, *w.shape[1:])
        if tuple(t.shape) != shape:
            dims = f"(steps, n_paths) = {lead}" if len(lead) == 2 else f"n = {lead[0]}"
            raise ValueError(f"`{name}` must have leading dims {dims} and {tuple(w.shape[1:])} per draw ({kind}): "
                             f"shape {shape}, got shape {tuple(t.shape)}")
        if t.dtype != w.dtype:
            raise ValueError(f"`{name}` must have dtype {w.dtype} ({kind}), got {t.dtype}")
    n = getattr(problem, "n", None)
    if kind == "mini-batch indices" and n is not None and got[0].numel() \
            and bool(((got[0] < 0) | (got[0] >= n)).any()):
        raise ValueError(f"`{name}` must be sample indices in 0..{n - 1} (n={n}), got values in "
                         f"{int(got[0].min())}..{int(got[0].max())}")


def run_inputs(problem, given, *, steps: int, n_paths: int, every: int, n_obs: int, keep: bool) -> None:
    """What :func:`sde_sam.run` checks once ``n_paths`` is known: the recordings and kept draws fit in memory,
    and given draws (``draws=``) have the problem's format with leading dims ``(steps, n_paths)``."""
    records(steps=steps, record_every=every, n_paths=n_paths, n_observables=n_obs, dtype=problem.dtype)
    if keep:
        one = problem.sample_draws((1,), torch.Generator(device=problem.device).manual_seed(0))
        per = sum(t.numel() * t.element_size() for t in (one if isinstance(one, tuple) else (one,)))
        fits(f"`keep_draws`=True with steps={steps} and n_paths={n_paths}: the kept draws", float(steps) * n_paths * per,
             "cpu")
    if given is not None:
        draws(problem, given, lead=(steps, n_paths))
