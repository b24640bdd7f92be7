"""The schemes that integrate a model alone: the base :class:`Solver`, Euler–Maruyama, the fused linear step
and the two-draw weak scheme (MATH §4, §4.1). See :mod:`sde_sam.solvers`."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import _engine, observables as obs_mod, phase_space, streams
from ..results import Trajectory
from ..sde import SDEModel


@dataclass(frozen=True)
class Solver:
    """A fixed-step scheme for :func:`simulate`: what it claims (class attributes) and the step it gives the engine.

    Attributes:
        name: Short name (recorded in ``Trajectory.info["solver"]``).
        weak_order: Claimed weak order in ``dt`` (MATH §4); tested over :data:`SOLVERS`.
        strong_order: Claimed strong order, or ``None`` for a weak-only scheme (paths not Brownian-driven).
    """

    name: ClassVar[str] = "solver"
    weak_order: ClassVar[float]
    strong_order: ClassVar[float | None]

    def unsupported(self, sde: SDEModel, *, dt: float, increments: str) -> str | None:
        """Why this scheme cannot integrate ``sde`` at ``dt`` (a sentence), or ``None``."""
        return None

    def sampler(self, sde: SDEModel, increments: str) -> streams.Sampler:
        raise NotImplementedError

    def step(self, sde: SDEModel, dt: float) -> _engine.Step:
        """``step(x, rand, v, k) -> (x_next, v, None)`` for :func:`sde_sam._engine.drive` (no norm guard)."""
        raise NotImplementedError

    def scheduled_step(self, sde: SDEModel, dt: float) -> _engine.Step:
        r""":meth:`step`, or for a scheduled method (MATH §3.6, :mod:`sde_sam.schedules`) the step of the model of
        the current method step :math:`j` (:meth:`SDEModel.at_step`) over its own time :math:`u_j\,\Delta	au`:
        solver step ``k`` lies in method step ``j = k // (lr/dt)`` (the grid is aligned: ``lr/dt`` an integer)."""
        if not sde.method.scheduled:
            return self.step(sde, dt)
        per_step = round(sde.lr / dt)
        steps: dict[int, _engine.Step] = {}

        def identity(x, rand, v, k):
            return x, v, None

        def step(x: Tensor, rand, v, k: int):
            j = k // per_step
            fn = steps.get(j)
            if fn is None:  # one model per method step, built once (chunks reuse it)
                u = sde.time_factor(j)
                fn = steps[j] = identity if u == 0.0 else self.step(sde.at_step(j), u * dt)
            return fn(x, rand, v, k)

        return step

    def step_cost(self, sde: SDEModel) -> float | None:
        """One step per path in per-sample gradient evaluations (for ``record_every="auto"``), or ``None``."""
        base = obs_mod.step_cost(sde.problem, sde.method)
        return None if base is None else float(max(base, getattr(sde.problem, "n", 0) or 0))

    def rows_per_path(self, sde: SDEModel) -> int:
        """Rows of parameters a step evaluates per path (for the engine's cache-sized chunks)."""
        return 1

    def record_unit(self, sde: SDEModel, dt: float) -> int:
        """Solver steps per engine step (``record_every`` counts solver steps and must be a multiple)."""
        return 1

    def integrate(self, sde: SDEModel, x: Tensor, *, steps: int, dt: float, seed: int, record_every: int,
                  observables: dict, chunk_size: int | None, max_norm: float, progress: bool | None,
                  increments: str, info: dict) -> Trajectory:
        """Run the engine from parameters ``x: (n, d)``: in phase space from :math:`(x, 0)`, observables of :math:`X`."""
        init = sde.init_state
        if sde.friction is not None:
            d = x.shape[-1]
            observables = {name: _Part(fn, 0, d) for name, fn in observables.items()}

            def init(z: Tensor, gauss: Tensor | None):
                return sde.init_state(sde.position(z), None if gauss is None else gauss[..., :d])
        traj = _engine.drive(sde.lift(x), steps=steps, record_every=record_every, observables=observables, seed=seed,
                             chunk_size=chunk_size, max_norm=max_norm, progress=progress,
                             sampler=self.sampler(sde, increments), step=self.scheduled_step(sde, dt), init=init,
                             init_gauss=sde.method.uses_eigenvector, rows_per_path=self.rows_per_path(sde), dt=dt,
                             info=info)
        return traj if sde.friction is None else dataclasses.replace(traj, x_final=sde.position(traj.x_final))


class _Part:
    """An observable of the parameters applied to columns ``a:b`` of a larger state (the phase-space ``(X, V)``,
    the coupled ``(x, X)``), as a contiguous copy; keeps the observable's cost and per-chunk state."""

    def __init__(self, fn, a: int, b: int):
        self.fn, self.a, self.b = fn, a, b
        self.cost = getattr(fn, "cost", 0.0)

    def __call__(self, z: Tensor) -> Tensor:
        return self.fn(z[:, self.a:self.b].contiguous())

    def new_run(self) -> "_Part":
        fresh = getattr(self.fn, "new_run", None)
        return _Part(fresh(), self.a, self.b) if fresh is not None else self


@dataclass(frozen=True)
class EulerMaruyama(Solver):
    r"""Euler–Maruyama, :math:`X' = X + b(X)\,\Delta t + \sqrt{\Delta t}\,F(X)\zeta` (MATH §4), the model's
    expectations formed the closed-form, exact or sampled way. Weak order 1; strong order 1/2 (general noise)."""

    name: ClassVar[str] = "euler_maruyama"
    weak_order: ClassVar[float] = 1.0
    strong_order: ClassVar[float | None] = 0.5

    def sampler(self, sde: SDEModel, increments: str) -> streams.Sampler:
        return sde.sampler(increments, expectation_mode=sde.stateless_mode)

    def step(self, sde: SDEModel, dt: float) -> _engine.Step:
        sqrt_dt = math.sqrt(dt)

        def step(x: Tensor, rand, v, k: int):
            drift, noise = sde.terms(x, rand, v)
            x_next = x + dt * drift + sqrt_dt * noise
            return x_next, sde.update_state(sde.position(x_next), v), None

        return step

    def rows_per_path(self, sde: SDEModel) -> int:
        return (sde.n_draws or 1) if sde.stateless_mode == "sampled" else 1

    def step_cost(self, sde: SDEModel) -> float | None:
        base = obs_mod.step_cost(sde.problem, sde.method)
        if base is not None and sde.stateless_mode == "sampled":
            return base * (sde.n_draws or 1)
        return super().step_cost(sde)


@dataclass(frozen=True)
class FusedLinear(Solver):
    r"""Euler–Maruyama of a linear model :math:`dX = -AX\,dt + F\,dW` (``sde.linear``), fused into one GEMM and one
    GEMM-accumulate per step: :math:`X(I - \Delta t A^\top) + \sqrt{\Delta t}\,\zeta F^\top`. Weak order 1; strong
    order 1 (additive noise)."""

    name: ClassVar[str] = "fused_linear"
    weak_order: ClassVar[float] = 1.0
    strong_order: ClassVar[float | None] = 1.0

    def unsupported(self, sde: SDEModel, *, dt: float, increments: str) -> str | None:
        if sde.linear is None:
            return (f"FusedLinear needs a linear (Ornstein–Uhlenbeck) model, e.g. SGD or USAM on a Quadratic; the "
                    f"{sde.label} model of {sde.method.name} forms its expectations by {sde.stateless_mode!r}: use "
                    "EulerMaruyama()")
        return None

    def sampler(self, sde: SDEModel, increments: str) -> streams.Sampler:
        return sde.sampler(increments, expectation_mode="linear")

    def step(self, sde: SDEModel, dt: float) -> _engine.Step:
        A, F = sde.linear
        M = torch.eye(A.shape[0], dtype=A.dtype, device=A.device) - dt * A.T
        Fs = math.sqrt(dt) * F.T

        def linear_step(x: Tensor, rand, v, k: int):
            return torch.addmm(rand[1] @ Fs, x, M), v, None

        return linear_step


@dataclass(frozen=True)
class TwoDraw(Solver):
    r"""The two-draw weak scheme (MATH §4.1) [derived]: per step and path two independent draws
    :math:`\gamma_1,\gamma_2` and a scalar :math:`\zeta` (standard Gaussian, or ±1 with ``increments="two_point"``),

    .. math:: X' = X - \Delta t\,G^{(r)}_{\gamma_1}(X) + \sqrt{\tfrac{\Delta t(\eta-\Delta t)}{2}}\,
              \big(G^{(r')}_{\gamma_1}(X) - G^{(r')}_{\gamma_2}(X)\big)\,\zeta

    (times :math:`1/(1-\beta)` in the first-order momentum model). Mean :math:`-\Delta t\,\mathbb E G^{(r)}`,
    covariance :math:`\Delta t^2\mathrm{Cov}\,G^{(r)} + \Delta t(\eta-\Delta t)\mathrm{Cov}\,G^{(r')}`: exactly the
    Euler–Maruyama step's :math:`\eta\Delta t\,\mathrm{Cov}\,G^{(r')}` for :math:`r\le1`, within :math:`O(\Delta t^2)`
    for :math:`r=2`; weak order 1 at two evaluations of :math:`G` per path-step for any batch size or noise model.
    A **weak** scheme (paths are not Brownian-driven); needs :math:`\Delta t<\eta`. In phase space the same
    increment drives :math:`V` with :math:`\sqrt\eta` in place of :math:`\eta` (its noise :math:`\eta^{1/4}\mathrm{Cov}^{1/2}`
    gives :math:`\sqrt\eta\,\Delta t\,\mathrm{Cov}` per step) and :math:`-\gamma V` added to the drift.
    """

    name: ClassVar[str] = "two_draw"
    weak_order: ClassVar[float] = 1.0
    strong_order: ClassVar[float | None] = None

    def unsupported(self, sde: SDEModel, *, dt: float, increments: str) -> str | None:
        if sde.diffusion == "paper":
            return ("TwoDraw realises a covariance and the 'paper' diffusion is not one (MATH §3.3); use "
                    "diffusion='factor', or EulerMaruyama()")
        if dt >= sde.step_time:
            what = "lr" if sde.friction is None else "sqrt(lr)"
            return (f"the two-draw weak scheme (MATH §4.1) needs dt < {what}, got dt={dt}, {what}={sde.step_time}; "
                    "use a smaller dt, or sde_model(..., expectation='enumerate' or an integer K)")
        return None

    def sampler(self, sde: SDEModel, increments: str) -> streams.Sampler:
        return sde.sampler(increments, expectation_mode="two_draw")

    def terms(self, sde: SDEModel, x: Tensor, rand, v: Tensor | None, *, dt: float) -> tuple[Tensor, Tensor]:
        """Drift and noise of the state ``x: (n, D)``: the increment is ``dt * drift + sqrt(dt) * noise``."""
        if not 0 < dt < sde.step_time:
            raise ValueError(f"the two-draw scheme needs 0 < dt < {sde.step_time} (lr, or sqrt(lr) in phase "
                             f"space), got dt={dt}")
        draws, zeta = rand
        _, G, Gn = sde.draw_values(sde.position(x), draws, v, "two_draw", drift_draws=1)
        drift, noise = -G[:, 0], math.sqrt((sde.step_time - dt) / 2) * (Gn[:, 0] - Gn[:, 1]) * zeta
        if sde.friction is not None:
            return phase_space.terms(x, drift, noise, sde.friction)
        s = sde.momentum_scale
        return (drift, noise) if s == 1.0 else (s * drift, s * noise)

    def step(self, sde: SDEModel, dt: float) -> _engine.Step:
        sqrt_dt = math.sqrt(dt)

        def step(x: Tensor, rand, v, k: int):
            drift, noise = self.terms(sde, x, rand, v, dt=dt)
            x_next = x + dt * drift + sqrt_dt * noise
            return x_next, sde.update_state(sde.position(x_next), v), None

        return step

    def rows_per_path(self, sde: SDEModel) -> int:
        return 2

    def step_cost(self, sde: SDEModel) -> float | None:
        base = obs_mod.step_cost(sde.problem, sde.method)
        return None if base is None else base * 2 * (2 if sde.order == 2 else 1)


