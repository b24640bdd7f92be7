r"""Learning-rate and :math:`\rho` schedules (MATH §2.3, §3.6).

Step :math:`k = 0, 1, \dots` of a scheduled method uses :math:`\eta_k` and :math:`\rho_k`. Two kinds of schedule:

* **Shapes on the SDE clock** — :func:`constant`, :func:`linear_warmup`, :func:`cosine`, :func:`piecewise` —
  :math:`\eta_k = \eta\,u(k\eta/T)` with a shape :math:`u` on :math:`[0, 1]`, the base value :math:`\eta` and the
  horizon :math:`T` (SDE time). The shape is a function of the *nominal* SDE time :math:`\tau_k = k\eta` of step
  :math:`k`, i.e. of the fraction :math:`k/K` of the :math:`K = T/\eta` steps, so that

  - shrinking :math:`\eta` keeps the same curve in :math:`\tau` (what ":math:`\eta\to0`" means with a schedule,
    and what a weak-error study does: :meth:`Schedule.rebase` changes :math:`\eta` and keeps :math:`u, T`), and
  - :func:`cosine` is ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=K, eta_min=final*η)`` step by step,
    :func:`piecewise` is ``MultiStepLR`` and :func:`linear_warmup` is ``LinearLR``.

  Past the horizon the shape keeps its final value.

* **Any callable** ``k -> value`` of the step index (``torch.optim.lr_scheduler`` style), wrapped by
  :func:`by_step`. Fine for discrete runs and SDE models; it cannot be rescaled, so weak-error studies (which
  shrink :math:`\eta`) refuse it.

:math:`\rho` takes the same kinds, plus :func:`follow_lr`: :math:`\rho_k=\rho\,\eta_k/\eta` (:math:`\rho` proportional
to the learning rate, as ``tml-epfl/understanding-sam``'s ``sam_lr_mult``-style runs scale it).

**The SDE of a scheduled method** [derived]. MATH §3.6 writes it on the real clock :math:`t_k=\sum_{j<k}\eta_j`:
:math:`dX_t=-b(X_t;\rho(t))\,dt+\sqrt{\eta(t)}\,\sigma(X_t;\rho(t))\,dW_t`, piecewise constant on
:math:`[t_k, t_{k+1})`. sde_sam integrates the same process on the nominal clock :math:`\tau = k\eta` (the time
change :math:`dt = u\,d\tau`, :math:`u = \eta_k/\eta`):

.. math:: dX_\tau = -u(\tau)\,b\big(X_\tau;\rho(\tau)\big)\,d\tau + \sqrt\eta\,u(\tau)\,\sigma\big(X_\tau;\rho(\tau)\big)\,dW_\tau ,

so discrete runs and SDE paths of a scheduled method are both recorded at :math:`\tau = k\eta` and compare point
by point, and an Euler grid with :math:`\eta/\Delta\tau` an integer never straddles a step of the schedule.

Example:
    >>> lr = cosine(0.1, horizon=2.0)          # η_k = 0.1 · (1 + cos(π k η / 2)) / 2
    >>> method = ss.SAM(lr=lr, rho=follow_lr(0.05), momentum=0.9, weight_decay=5e-4)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Real
from typing import Callable


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {name}={value!r}")
    return float(value)


def _nonneg(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {name}={value!r}")
    return float(value)


@dataclass(frozen=True)
class Schedule:
    r"""A shape on the SDE clock: :math:`v_k = \text{base}\cdot u\big(\min(k\eta/T, 1)\big)`.

    Build it with :func:`constant`, :func:`linear_warmup`, :func:`cosine` or :func:`piecewise`.

    Attributes:
        base: The base value (:math:`\eta` for a learning rate, :math:`\rho` for a radius).
        horizon: :math:`T`, SDE time at which the shape ends.
        kind: ``"constant"``, ``"linear_warmup"``, ``"cosine"`` or ``"piecewise"``.
        params: The shape's parameters (see the builders).
    """

    base: float
    horizon: float
    kind: str
    params: tuple = ()

    def factor(self, k: int, lr: float) -> float:
        r""":math:`u(\min(k\eta/T, 1))` for step ``k`` of a method with base learning rate ``lr`` (:math:`\eta`)."""
        s = min(k * lr / self.horizon, 1.0)
        if self.kind == "constant":
            return 1.0
        if self.kind == "linear_warmup":
            warmup, start = self.params
            return 1.0 if s >= warmup else start + (1.0 - start) * s / warmup
        if self.kind == "cosine":
            (final,) = self.params
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * s))
        boundaries, factors = self.params
        return factors[sum(1 for b in boundaries if s >= b)]

    def value(self, k: int, lr: float) -> float:
        """The scheduled value at step ``k`` (``lr``: the method's base learning rate, the clock)."""
        return self.base * self.factor(k, lr)

    def rebase(self, base: float) -> "Schedule":
        """The same shape and horizon around another base value (a weak-error study's next learning rate)."""
        return dataclasses.replace(self, base=_nonneg("base", base))

    def describe(self) -> str:
        return f"{self.kind}{self.params}(T={self.horizon:g})" if self.params else f"{self.kind}(T={self.horizon:g})"


@dataclass(frozen=True)
class ByStep:
    """A step-indexed schedule ``k -> value`` (``torch.optim.lr_scheduler`` style); see :func:`by_step`.

    Attributes:
        fn: The callable; ``fn(0)`` is the base value.
    """

    fn: Callable[[int], float]

    @property
    def base(self) -> float:
        return float(self.fn(0))

    def value(self, k: int, lr: float) -> float:
        v = self.fn(k)
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v < 0:
            raise ValueError(f"a step-indexed schedule must return finite numbers >= 0, got {v!r} at step k={k}")
        return float(v)

    def rebase(self, base: float):
        raise ValueError("a step-indexed schedule (a callable k -> value) cannot be rescaled to another learning "
                         "rate; weak-error studies need a shape on the SDE clock (sde_sam.schedules.cosine, "
                         "linear_warmup, piecewise, constant)")

    def describe(self) -> str:
        return f"by_step({getattr(self.fn, '__name__', type(self.fn).__name__)})"


@dataclass(frozen=True)
class FollowLR:
    r""":math:`\rho_k = \rho\,\eta_k/\eta`: the radius follows the learning-rate schedule; see :func:`follow_lr`."""

    base: float

    def rebase(self, base: float) -> "FollowLR":
        return FollowLR(_nonneg("rho", base))

    def describe(self) -> str:
        return "follow_lr"


def constant(base: float, *, horizon: float = 1.0) -> Schedule:
    """:math:`v_k = \\text{base}`: a schedule that does nothing (a baseline for the others)."""
    return Schedule(_nonneg("base", base), _positive("horizon", horizon), "constant")


def linear_warmup(base: float, *, horizon: float, warmup: float = 0.1, start: float = 0.0) -> Schedule:
    r"""Linear warm-up over the first fraction ``warmup`` of the horizon, then constant.

    :math:`u(s) = \text{start} + (1-\text{start})\min(s/w, 1)`; ``torch.optim.lr_scheduler.LinearLR(start_factor=start,
    total_iters=w·K)`` step by step.

    Args:
        base: Value after the warm-up.
        horizon: :math:`T` (SDE time of the run).
        warmup: :math:`w\in(0, 1]`, fraction of the horizon.
        start: :math:`u(0)\in[0, 1]`.
    """
    w = _positive("warmup", warmup)
    if w > 1:
        raise ValueError(f"`warmup` is a fraction of the horizon in (0, 1], got warmup={warmup!r}")
    s0 = _nonneg("start", start)
    if s0 > 1:
        raise ValueError(f"`start` must be in [0, 1], got start={start!r}")
    return Schedule(_nonneg("base", base), _positive("horizon", horizon), "linear_warmup", (w, s0))


def cosine(base: float, *, horizon: float, final: float = 0.0) -> Schedule:
    r"""Cosine decay from ``base`` to ``final * base`` over the horizon.

    :math:`u(s) = f + (1-f)\,\tfrac12(1+\cos\pi s)`; ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=K,
    eta_min=f·base)`` step by step, :math:`K = T/\eta`.
    """
    f = _nonneg("final", final)
    if f > 1:
        raise ValueError(f"`final` is a fraction of the base value in [0, 1], got final={final!r}")
    return Schedule(_nonneg("base", base), _positive("horizon", horizon), "cosine", (f,))


def piecewise(base: float, *, horizon: float, boundaries, factors) -> Schedule:
    r"""Piecewise-constant steps: :math:`u(s) = \text{factors}[i]` with :math:`i` the number of boundaries :math:`\le s`.

    ``torch.optim.lr_scheduler.MultiStepLR(milestones=[b·K ...], gamma)`` is ``factors = (1, γ, γ², ...)``.

    Args:
        boundaries: Increasing fractions of the horizon in (0, 1).
        factors: ``len(boundaries) + 1`` multipliers >= 0.
    """
    bs = tuple(float(b) for b in boundaries)
    fs = tuple(_nonneg("factors", f) for f in factors)
    if any(not 0 < b < 1 for b in bs) or any(b2 <= b1 for b1, b2 in zip(bs, bs[1:])):
        raise ValueError(f"`boundaries` must be increasing fractions of the horizon in (0, 1), got {bs}")
    if len(fs) != len(bs) + 1:
        raise ValueError(f"`factors` must have len(boundaries) + 1 = {len(bs) + 1} entries, got {len(fs)}")
    return Schedule(_nonneg("base", base), _positive("horizon", horizon), "piecewise", (bs, fs))


def by_step(fn: Callable[[int], float]) -> ByStep:
    """A step-indexed schedule from any callable ``k -> value`` (``k = 0, 1, ...``); methods wrap bare callables."""
    if not callable(fn):
        raise TypeError(f"`fn` must be callable k -> value, got {type(fn).__name__}")
    return ByStep(fn)


def follow_lr(rho: float) -> FollowLR:
    r""":math:`\rho_k = \rho\,\eta_k/\eta`: a radius proportional to the scheduled learning rate."""
    return FollowLR(_nonneg("rho", rho))


def resolve(name: str, value):
    """``(base, schedule | None)`` from what a method was given as ``lr`` or ``rho`` (number, schedule or callable)."""
    if isinstance(value, (Schedule, ByStep)):
        return value.base, value
    if isinstance(value, FollowLR):
        if name != "rho":
            raise ValueError(f"`follow_lr` is a schedule of rho, not of {name}")
        return value.base, value
    if callable(value) and not isinstance(value, Real):
        sched = by_step(value)
        return sched.base, sched
    return value, None
