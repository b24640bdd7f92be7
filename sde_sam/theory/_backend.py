"""Backend and validation helpers shared by the closed forms (see the package docstring)."""
from __future__ import annotations

import contextlib
import functools
from numbers import Number
from typing import Any, Union

import numpy as np
import torch

ArrayLike = Union[float, np.ndarray, torch.Tensor]


# -- backend and validation helpers ------------------------------------------------------------------
def _backend(*args: Any) -> tuple[Any, list, str]:
    """Convert ``args`` to one backend: ``(xp, arrays, kind)`` with kind in {"torch", "numpy", "scalar"}."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if tensors:
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        device = tensors[0].device
        return torch, [torch.as_tensor(a, dtype=dtype, device=device) for a in args], "torch"
    scalar = all(isinstance(a, (Number, np.generic)) for a in args)
    return np, [np.asarray(a, dtype=np.float64) for a in args], "scalar" if scalar else "numpy"


def _out(value: Any, kind: str) -> Any:
    """Return ``value`` as the kind the caller passed in (see the module docstring)."""
    if kind == "torch":
        return value
    value = np.asarray(value)
    if kind == "scalar" and value.ndim == 0:
        return value.item()
    return value[()]


def _quiet(xp: Any):
    """Silence numpy's divide/invalid warnings where inf and nan are handled explicitly."""
    return np.errstate(divide="ignore", invalid="ignore") if xp is np else contextlib.nullcontext()


def _fmt(v: Any) -> str:
    if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 0:
        v = v.item()
    return f"{v:g}" if isinstance(v, float) else str(v)


def _first_bad(xp: Any, value: Any, ok: Any) -> str:
    """The first entry of ``value`` (broadcast to ``ok``) where ``ok`` is False, formatted."""
    bad = xp.broadcast_to(value, ok.shape)[~ok].reshape(-1)
    return _fmt(bad[0] if bad.shape[0] else value)


def _check(xp: Any, ok: Any, name: str, value: Any, allowed: str, **context: Any) -> None:
    """Raise ``ValueError("`name` must be <allowed>, got name=<value> [(with k=v)]")`` unless ``ok`` holds.

    ``ok`` is a python bool (then ``value`` is shown as is) or a boolean array, and then the first
    offending entry of ``value`` and of each ``context`` array is shown.
    """
    if isinstance(ok, bool):
        if ok:
            return
        raise ValueError(f"`{name}` must be {allowed}, got {name}={_fmt(value)}")
    if bool(xp.all(ok)):
        return
    ctx = ", ".join(f"{k}={_first_bad(xp, v, ok)}" for k, v in context.items())
    raise ValueError(f"`{name}` must be {allowed}, got {name}={_first_bad(xp, value, ok)}" + (f" (with {ctx})" if ctx else ""))


def _lr(xp, lr):
    _check(xp, xp.isfinite(lr) & (lr > 0), "lr", lr, "a finite number > 0")


def _rho(xp, rho):
    _check(xp, xp.isfinite(rho) & (rho >= 0), "rho", rho, "a finite number >= 0")


def _finite(xp, name, value):
    _check(xp, xp.isfinite(value), name, value, "finite")


def _nonneg(xp, name, value, *, finite=True):
    ok = value >= 0
    _check(xp, (xp.isfinite(value) & ok) if finite else ok, name, value, "a finite number >= 0" if finite else ">= 0")


def _below_gd_edge(xp, lr, lam):
    # The SAM 2-cycle of Bartlett, Long & Bousquet exists for 0 < lr*lam < 2 only.
    _check(xp, xp.isfinite(lam) & (lam > 0), "lam", lam, "a finite number > 0")
    _check(xp, lr * lam < 2, "lam", lam, "< 2/lr (the SAM 2-cycle exists only below the GD edge)", lr=lr)
