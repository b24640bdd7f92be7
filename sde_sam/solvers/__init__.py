r"""The integration schemes, as objects passed to :func:`simulate` (MATH §4, §4.1, §5.1).

Each scheme declares its weak (and strong) order; the tests are parametrised over :data:`SOLVERS`. Every scheme
advances the paths through the one engine loop, :func:`sde_sam._engine.drive`; a scheme supplies only the
randomness of a step (``sampler``) and the step itself.

* :class:`EulerMaruyama`: :math:`X_{n+1} = X_n + b(X_n)\,\Delta t + F(X_n)\sqrt{\Delta t}\,\zeta_n`, with the
  expectations over draws formed the model's closed-form, exact or sampled way (:attr:`~sde_sam.sde.SDEModel.stateless_mode`).
* :class:`FusedLinear`: the same step for a linear (Ornstein–Uhlenbeck) model, one fused ``addmm`` per step.
* :class:`TwoDraw`: the two-draw weak scheme (MATH §4.1): two draws of the effective gradient and one scalar per
  path and step, whatever the batch size or noise model.
* :class:`Coupled`: the discrete method and a model's Euler–Maruyama step on shared Gaussian draws (MATH §5.1),
  for coupled weak-error estimates.

:math:`\zeta_n` is standard Gaussian (default) or, with ``increments="two_point"``, ±1 (the simplified weak
Euler scheme of Kloeden & Platen: weak order 1, and random bits are cheaper than Gaussian draws).
:func:`default_solver` picks what the model's :attr:`~sde_sam.sde.SDEModel.expectation_mode` asks for.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import Tensor

from .. import _checks, observables as obs_mod, streams
from ..results import Trajectory
from ..sde import SDEModel
from .coupled import DISCRETE, Coupled
from .schemes import EulerMaruyama, FusedLinear, Solver, TwoDraw

__all__ = ["Solver", "EulerMaruyama", "FusedLinear", "TwoDraw", "Coupled", "SOLVERS", "DISCRETE", "default_solver",
           "simulate"]

INCREMENTS = ("gaussian", "two_point")
BACKENDS = ("native", "torchsde")


def default_solver(sde: SDEModel) -> Solver:
    """What the model's :attr:`~sde_sam.sde.SDEModel.expectation_mode` asks for: :class:`FusedLinear` for
    ``"linear"``, :class:`TwoDraw` for ``"two_draw"``, else :class:`EulerMaruyama`."""
    if sde.expectation_mode == "linear":
        return FusedLinear()
    return TwoDraw() if sde.expectation_mode == "two_draw" else EulerMaruyama()


SOLVERS: tuple[type[Solver], ...] = (EulerMaruyama, FusedLinear, TwoDraw, Coupled)
"""Every scheme, with its claimed orders (the tests' table)."""


def simulate(sde: SDEModel, x0: Tensor, *, t1: float, dt: float, n_paths: int | None = None,
             seed: int | torch.Generator = 0, record_every: int | str = "auto", observables: Sequence = ("loss",),
             chunk_size: int | None = None, max_norm: float = math.inf, progress: bool | None = None,
             increments: str = "gaussian", backend: str = "native", solver: Solver | None = None) -> Trajectory:
    r"""Integrate an SDE model for ``n_paths`` independent paths from ``x0`` to time ``t1``.

    Args:
        sde: From :func:`sde_sam.sde_model`.
        x0: ``(d,)`` or ``(n_paths, d)``; dtype and device must be the problem's. In phase space this is
            :math:`X_0` (:math:`V_0 = 0`).
        t1: Final time on the model's clock: discrete step ``k`` is ``t = k * lr`` (``k * sqrt(lr)`` for the
            phase-space model, :attr:`~sde_sam.sde.SDEModel.step_time`).
        dt: Solver step; ``t1/dt`` must be an integer. Use ``dt < lr`` (default in studies ``lr/10``):
            at ``dt = lr`` Euler–Maruyama of the USAM SDE on a Gaussian quadratic *is* discrete USAM in law.
        n_paths: Number of paths.
        seed: Integer seed or ``torch.Generator``; results do not depend on ``chunk_size``.
        record_every: Record observables every this many solver steps; ``"auto"`` (default): every step where
            recording is cheap, else as often as keeps the full-batch observables under 10% of the run's cost
            (:func:`sde_sam.observables.auto_record_every`); the interval used is ``info["record_every"]``.
        observables: Names (``"loss"``, ``"grad_norm"``, ``"x_norm"``, ``"lambda_max"``) or callables, of the
            parameters :math:`X` (also in phase space).
        chunk_size: Paths per chunk, any positive size, for memory; ``None``: all at once, except on the CPU
            when the paths' state outgrows the cache (:func:`sde_sam.streams.auto_chunk`).
        max_norm: Paths whose state norm exceeds this are flagged diverged (non-finite ones always are).
        progress: Progress bar with an ETA (``None``: on a terminal or in a notebook, once the run is
            projected to take more than 10 s).
        increments: ``"gaussian"`` or ``"two_point"`` (±1, weak order 1).
        backend: ``"native"`` or ``"torchsde"`` (``torchsde.sdeint``, Euler, for cross-checks; one chunk).
        solver: The scheme (:data:`SOLVERS`), e.g. ``EulerMaruyama()``, ``TwoDraw()``, ``Coupled()``;
            ``None``: :func:`default_solver`.

    Returns:
        A :class:`~sde_sam.results.Trajectory` with ``times = k * dt`` at the recorded steps (``x_final`` the
        parameters :math:`X`). With :class:`Coupled`, also the discrete method's values as ``"discrete:<name>"``.

    Example:
        >>> sde = ss.sde_model(prob, ss.USAM(0.05, 0.1), order=1)
        >>> sol = ss.simulate(sde, x0, t1=2.0, dt=0.005, n_paths=10_000, seed=0)
        >>> sol = ss.simulate(sde, x0, t1=2.0, dt=0.005, n_paths=10_000, solver=ss.solvers.EulerMaruyama())
    """
    if not isinstance(sde, SDEModel):
        raise TypeError(f"`sde` must come from sde_sam.sde_model, got {type(sde).__name__}")
    t1, dt = _checks.positive("t1", t1), _checks.positive("dt", dt)
    _checks.step_count("t1", t1, t1 / dt, f"solver steps of dt={dt}")  # t1=1e308: refused, not an overflow
    steps = round(t1 / dt)
    if steps < 1 or abs(steps * dt - t1) > 1e-9 * max(1.0, t1):
        raise ValueError(f"`t1` must be a positive integer multiple of `dt`, got t1={t1}, dt={dt}")
    if increments not in INCREMENTS:
        raise ValueError(f"`increments` must be one of {INCREMENTS}, got increments={increments!r}")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got backend={backend!r}")
    record_every = obs_mod.check_record_every(record_every)
    max_norm = _checks.max_norm(max_norm)
    solver = _resolve_solver(sde, solver, backend=backend, dt=dt, increments=increments)
    if sde.method.scheduled:
        _check_schedule_grid(sde, solver, dt=dt, backend=backend)
    if dt >= sde.step_time:
        what = "lr" if sde.friction is None else "sqrt(lr)"
        warnings.warn(f"dt={dt} >= {what}={sde.step_time}: Euler–Maruyama at dt >= {what} cannot separate the SDE "
                      f"from the discrete method in a weak-error comparison (MATH §4); use dt <= {what}/10",
                      stacklevel=2)
    problem = sde.problem
    x, n = _checks.problem_state(problem, x0, n_paths=n_paths)
    obs = obs_mod.resolve(observables, problem)
    unit = solver.record_unit(sde, dt)
    if record_every == "auto":
        record_every = unit * obs_mod.auto_record_every(obs, solver.step_cost(sde))
    elif record_every % unit:
        raise ValueError(f"`record_every` must be a multiple of {unit} (solver steps per step of {solver.name}), "
                         f"got record_every={record_every}")
    _checks.records(steps=steps, record_every=record_every, n_paths=n, n_observables=len(obs), dtype=x.dtype,
                    argument="t1")
    info = {"kind": "sde", **sde.method.describe(), "rho": sde.method.rho, "model": sde.label,
            "order": sde.order, "diffusion": sde.diffusion, "dt": dt, "increments": increments,
            "seed": seed if isinstance(seed, int) else None, "problem": repr(problem), "solver": solver.name}
    if sde.friction is not None:
        info |= {"momentum_model": "phase_space", "clock": "t = k*sqrt(lr)"}
    seed = streams.resolve_seed(seed)
    if backend == "torchsde":
        return _simulate_torchsde(sde, x, steps=steps, dt=dt, seed=seed, record_every=record_every,
                                  observables=obs, max_norm=max_norm, info=info)
    return solver.integrate(sde, x, steps=steps, dt=dt, seed=seed, record_every=record_every, observables=obs,
                            chunk_size=chunk_size, max_norm=max_norm, progress=progress, increments=increments,
                            info=info)


def _check_schedule_grid(sde: SDEModel, solver: Solver, *, dt: float, backend: str) -> None:
    """A scheduled method's solver grid must not straddle a step of the schedule (MATH §3.6)."""
    ratio = sde.lr / dt
    if abs(ratio - round(ratio)) > 1e-9 * ratio:
        raise ValueError(f"a scheduled lr or rho needs lr/dt to be an integer (solver steps never straddle a step "
                         f"of the schedule, MATH §3.6), got lr={sde.lr}, dt={dt} (lr/dt={ratio:g})")
    if backend == "torchsde" or isinstance(solver, Coupled):
        raise ValueError(f"a scheduled lr or rho is integrated by the native schemes (EulerMaruyama, FusedLinear, "
                         f"TwoDraw), got backend={backend!r}, solver={type(solver).__name__}")


def _resolve_solver(sde: SDEModel, solver, *, backend: str, dt: float, increments: str) -> Solver:
    if solver is None:
        solver = EulerMaruyama() if backend == "torchsde" else default_solver(sde)
    elif not isinstance(solver, Solver):
        raise TypeError(f"`solver` must be a scheme from sde_sam.solvers (an instance, e.g. EulerMaruyama()), got "
                        f"{solver!r}")
    if backend == "torchsde" and type(solver) is not EulerMaruyama:
        raise ValueError(f"backend='torchsde' integrates with torchsde's Euler scheme; solver={solver!r} is for "
                         "the native backend")
    why = solver.unsupported(sde, dt=dt, increments=increments)
    if why is not None:
        raise ValueError(why)
    return solver


def _simulate_torchsde(sde: SDEModel, x: Tensor, *, steps: int, dt: float, seed: int, record_every: int,
                       observables, max_norm: float, info: dict) -> Trajectory:
    import torchsde

    ks = obs_mod.record_times(steps, record_every)
    ts = torch.tensor(ks, dtype=x.dtype, device=x.device) * dt
    bm = torchsde.BrownianInterval(t0=0.0, t1=float(ts[-1]), size=(x.shape[0], sde.noise_dim), dtype=x.dtype,
                                   device=x.device, entropy=seed)
    with torch.no_grad():
        ys = torchsde.sdeint(sde, sde.lift(x), ts, bm=bm, method="euler", dt=dt)
    bad = ~torch.isfinite(ys).all(dim=-1) | (torch.linalg.vector_norm(ys, dim=-1) > max_norm)
    seen = bad.cummax(dim=0).values
    first = torch.where(seen.any(0), seen.float().argmax(0), -1)
    xs = sde.position(ys)
    values = {name: torch.where(seen, math.nan, fn(xs.flatten(0, 1)).view(len(ks), -1)).cpu()
              for name, fn in observables.items()}
    diverged_at = torch.where(first >= 0, ts.double()[first.clamp_min(0)], math.nan).cpu()
    return Trajectory(times=ts.double().cpu(), values=values, x_final=xs[-1].cpu(), diverged=seen[-1].cpu(),
                      diverged_at=diverged_at, guard_count=0, info={**info, "backend": "torchsde"})
