r"""Batched Euler–Maruyama for the SDE models, all paths at once (MATH §4).

.. math:: X_{n+1} = X_n + b(X_n)\,\Delta t + F(X_n)\sqrt{\Delta t}\,\zeta_n

with :math:`\zeta_n` standard Gaussian (default) or, for weak-error work, two-point :math:`\pm1` increments
(the simplified weak Euler scheme of Kloeden & Platen: weak order 1, and random bits are cheaper than
Gaussian draws). Linear models (Ornstein–Uhlenbeck) take a fused fast path: one ``addmm`` per step.
Models whose step is the two-draw weak scheme (MATH §4.1, :class:`~sde_sam.sde.SDEModel`) take the same
update with the scheme's drift and noise terms: a weak scheme (the paths are not Brownian-driven), which
needs ``dt < lr``.
"""
from __future__ import annotations

import math
import warnings
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from . import _checks, _engine, observables as obs_mod, streams
from .results import Trajectory
from .sde import SDEModel

INCREMENTS = ("gaussian", "two_point")
BACKENDS = ("native", "torchsde")


class EulerMaruyama:
    """The native scheme, with its claimed orders (tests are parametrised over them)."""

    weak_order: ClassVar[float] = 1.0
    strong_order: ClassVar[float] = 0.5  # general (non-commutative) noise

    @staticmethod
    def step(sde: SDEModel, dt: float):
        """A step ``(x, rand, v, k) -> (x_next, v, None)`` for :func:`sde_sam._engine.drive` (no norm guard)."""
        sqrt_dt = math.sqrt(dt)
        if sde.mode == "linear":
            A, F = sde.linear
            M = torch.eye(A.shape[0], dtype=A.dtype, device=A.device) - dt * A.T
            Fs = sqrt_dt * F.T

            def linear_step(x: Tensor, rand, v, k: int):
                # x (I - dt A^T) + sqrt(dt) zeta F^T, fused into one GEMM plus one GEMM-accumulate.
                return torch.addmm(rand[1] @ Fs, x, M), v, None

            return linear_step

        def step(x: Tensor, rand, v, k: int):
            drift, noise = sde.terms(x, rand, v, dt=dt)
            x_next = x + dt * drift + sqrt_dt * noise
            return x_next, sde.update_state(x_next, v), None

        return step


def simulate(sde: SDEModel, x0: Tensor, *, t1: float, dt: float, n_paths: int | None = None,
             seed: int | torch.Generator = 0, record_every: int | str = "auto", observables: Sequence = ("loss",),
             chunk_size: int | None = None, max_norm: float = math.inf, progress: bool | None = None,
             increments: str = "gaussian", backend: str = "native") -> Trajectory:
    r"""Integrate an SDE model for ``n_paths`` independent paths from ``x0`` to time ``t1``.

    Args:
        sde: From :func:`sde_sam.sde_model`.
        x0: ``(d,)`` or ``(n_paths, d)``; dtype and device must be the problem's.
        t1: Final time (SDE scale: discrete step ``k`` of the method is ``t = k * lr``).
        dt: Solver step; ``t1/dt`` must be an integer. Use ``dt < lr`` (default in studies ``lr/10``):
            at ``dt = lr`` Euler–Maruyama of the USAM SDE on a Gaussian quadratic *is* discrete USAM in law.
        n_paths: Number of paths.
        seed: Integer seed or ``torch.Generator``; results do not depend on ``chunk_size``.
        record_every: Record observables every this many solver steps; ``"auto"`` (default): every step where
            recording is cheap, else as often as keeps the full-batch observables under 10% of the run's cost
            (:func:`sde_sam.observables.auto_record_every`); the interval used is ``info["record_every"]``.
        observables: Names (``"loss"``, ``"grad_norm"``, ``"x_norm"``, ``"lambda_max"``) or callables.
        chunk_size: Paths per chunk, any positive size, for memory.
        max_norm: Paths whose norm exceeds this are flagged diverged (non-finite ones always are).
        progress: Progress bar with an ETA (``None``: on a terminal or in a notebook, once the run is
            projected to take more than 10 s).
        increments: ``"gaussian"`` or ``"two_point"`` (±1, weak order 1).
        backend: ``"native"`` or ``"torchsde"`` (``torchsde.sdeint``, Euler, for cross-checks; one chunk).

    Returns:
        A :class:`~sde_sam.results.Trajectory` with ``times = k * dt`` at the recorded steps.

    Example:
        >>> sde = ss.sde_model(prob, ss.USAM(0.05, 0.1), order=1)
        >>> sol = ss.simulate(sde, x0, t1=2.0, dt=0.005, n_paths=10_000, seed=0)
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
    if sde.mode == "two_draw" and dt >= sde.lr:
        raise ValueError(f"the two-draw weak scheme (MATH §4.1) needs dt < lr, got dt={dt}, lr={sde.lr}; use a "
                         "smaller dt, or sde_model(..., expectation='enumerate' or an integer K)")
    if dt >= sde.lr:
        warnings.warn(f"dt={dt} >= lr={sde.lr}: Euler–Maruyama at dt >= lr cannot separate the SDE from the "
                      "discrete method in a weak-error comparison (MATH §4); use dt <= lr/10", stacklevel=2)
    problem = sde.problem
    x, n = _checks.problem_state(problem, x0, n_paths=n_paths)
    obs = obs_mod.resolve(observables, problem)
    if record_every == "auto":
        record_every = obs_mod.auto_record_every(obs, obs_mod.sde_step_cost(sde))
    _checks.records(steps=steps, record_every=record_every, n_paths=n, n_observables=len(obs), dtype=x.dtype,
                    argument="t1")
    info = {"kind": "sde", **sde.method.describe(), "rho": sde.method.rho, "model": sde.label,
            "order": sde.order, "diffusion": sde.diffusion, "dt": dt, "increments": increments,
            "seed": seed if isinstance(seed, int) else None, "problem": repr(problem)}
    seed = streams.resolve_seed(seed)
    if backend == "torchsde":
        return _simulate_torchsde(sde, x, steps=steps, dt=dt, seed=seed, record_every=record_every,
                                  observables=obs, max_norm=max_norm, info=info)
    return _engine.drive(x, steps=steps, record_every=record_every, observables=obs, seed=seed,
                         chunk_size=chunk_size, max_norm=max_norm, progress=progress,
                         sampler=sde.sampler(increments), step=EulerMaruyama.step(sde, dt),
                         init=sde.init_state, dt=dt, info=info)


def _simulate_torchsde(sde: SDEModel, x: Tensor, *, steps: int, dt: float, seed: int, record_every: int,
                       observables, max_norm: float, info: dict) -> Trajectory:
    import torchsde

    ks = obs_mod.record_times(steps, record_every)
    ts = torch.tensor(ks, dtype=x.dtype, device=x.device) * dt
    bm = torchsde.BrownianInterval(t0=0.0, t1=float(ts[-1]), size=(x.shape[0], sde.noise_dim), dtype=x.dtype,
                                   device=x.device, entropy=seed)
    with torch.no_grad():
        ys = torchsde.sdeint(sde, x, ts, bm=bm, method="euler", dt=dt)
    bad = ~torch.isfinite(ys).all(dim=-1) | (torch.linalg.vector_norm(ys, dim=-1) > max_norm)
    seen = bad.cummax(dim=0).values
    first = torch.where(seen.any(0), seen.float().argmax(0), -1)
    values = {name: torch.where(seen, math.nan, fn(ys.flatten(0, 1)).view(len(ks), -1)).cpu()
              for name, fn in observables.items()}
    diverged_at = torch.where(first >= 0, ts.double()[first.clamp_min(0)], math.nan).cpu()
    return Trajectory(times=ts.double().cpu(), values=values, x_final=ys[-1].cpu(), diverged=seen[-1].cpu(),
                      diverged_at=diverged_at, guard_count=0, info={**info, "backend": "torchsde"})
