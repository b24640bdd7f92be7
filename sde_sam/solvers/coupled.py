"""The coupled sampler (MATH §5.1): the discrete method and its model on shared Gaussian draws, through the one
engine loop. See :mod:`sde_sam.solvers`."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import _engine, streams
from ..methods import effective_gradient
from ..results import Trajectory
from ..sde import SDEModel
from .schemes import EulerMaruyama, FusedLinear, Solver, _Part

DISCRETE = "discrete:"
"""Prefix of the discrete side's observables in a :class:`Coupled` trajectory."""


@dataclass(frozen=True)
class Coupled(Solver):
    r"""The coupled sampler (MATH §5.1) [derived]: the discrete method and Euler–Maruyama of its model on shared
    Gaussian draws, for coupled weak-error estimates.

    Per discrete step :math:`k` (one engine step, ``r = lr/dt`` solver steps): draw :math:`\xi_k`, step the method with
    :math:`Z_k=\Sigma^{1/2}\xi_k` (its own update, momentum included), and take the model's ``r`` Euler sub-steps with
    increments that sum to :math:`-\sqrt\eta\,\xi_k` — ``r`` standard Gaussians, their mean subtracted, plus
    :math:`-\xi_k/\sqrt r` (units of :math:`\sqrt{\Delta t}`; a Brownian bridge, so the model keeps exactly its own
    law; **minus** because the discrete noise enters as :math:`-\eta Z_k`). The state is :math:`(x, X)`; the
    trajectory records each observable of :math:`X` under its name and of :math:`x` as ``"discrete:<name>"``, at
    :math:`t=k\eta`; a path diverged in either is diverged. The model's side is ``base`` (default
    :class:`FusedLinear` for a linear model, else :class:`EulerMaruyama`): weak order 1, strong 1/2.

    Applies to additive Gaussian noise and a model whose diffusion is a :math:`d\times d` factor acting on that
    Gaussian (``expectation_mode`` ``"linear"``/``"affine"``, ``diffusion="factor"``, Gaussian increments). Its
    draws come from one generator seeded with ``seed``, in the order the coupled tables were first made with
    (:math:`\xi_k`, then the ``r`` bridge increments): coupled results are those of earlier releases, and the
    run is one chunk.
    """

    base: Solver | None = None
    name: ClassVar[str] = "coupled"
    weak_order: ClassVar[float] = 1.0
    strong_order: ClassVar[float | None] = 0.5

    def unsupported(self, sde: SDEModel, *, dt: float, increments: str) -> str | None:
        p = sde.problem
        if not p.additive_gaussian:
            return (f"the problem is a {type(p).__name__}: its gradient noise is not additive Gaussian, so the "
                    "discrete step has no Gaussian draw ξ to share with the SDE")
        if sde.friction is not None:
            return "the coupling drives the first-order model (t = k·lr); the phase-space model has its own clock"
        if sde.expectation_mode not in ("linear", "affine"):
            return (f"the {sde.label} model of {sde.method.name} on this problem takes its expectations by "
                    f"{sde.expectation_mode!r}: its diffusion is not a d×d factor acting on the same Gaussian (MATH §5.1)")
        if sde.diffusion != "factor":
            return ("diffusion='paper' uses an eigen-factor of the clipped matrix, not (I+ρH)Σ^{1/2}: the same ξ "
                    "would drive a rotated noise; use diffusion='factor'")
        if increments != "gaussian":
            return "the Brownian bridge needs Gaussian increments; use increments='gaussian'"
        r = round(sde.lr / dt)
        if r < 1 or abs(r * dt - sde.lr) > 1e-9 * sde.lr:
            return f"the coupling needs lr/dt to be an integer (sub-steps per discrete step), got lr={sde.lr}, dt={dt}"
        if self.base is not None and type(self.base) not in (EulerMaruyama, FusedLinear):
            return f"`base` must be EulerMaruyama() or FusedLinear(), got {self.base!r}"
        return None if self.base is None else self.base.unsupported(sde, dt=dt, increments=increments)

    def record_unit(self, sde: SDEModel, dt: float) -> int:
        return round(sde.lr / dt)

    def step_cost(self, sde: SDEModel) -> float | None:
        return None  # record_every="auto": every discrete step

    def _base(self, sde: SDEModel) -> Solver:
        return self.base or (FusedLinear() if sde.linear is not None else EulerMaruyama())

    def integrate(self, sde: SDEModel, x: Tensor, *, steps: int, dt: float, seed: int, record_every: int,
                  observables: dict, chunk_size: int | None, max_norm: float, progress: bool | None,
                  increments: str, info: dict) -> Trajectory:
        n, d = x.shape
        if chunk_size is not None and chunk_size < n:
            raise ValueError(f"the coupled sampler draws every path from one stream (MATH §5.1): it runs in one "
                             f"chunk, got chunk_size={chunk_size} < n_paths={n}")
        r = self.record_unit(sde, dt)
        obs = {name: _Part(fn, d, 2 * d) for name, fn in observables.items()}
        obs |= {DISCRETE + name: _Part(fn, 0, d) for name, fn in observables.items()}
        if math.isfinite(max_norm):  # either side above max_norm: NaN, so the engine flags the path
            obs["_max_norm"] = lambda z: torch.where(
                torch.linalg.vector_norm(z.view(n_rows := z.shape[0], 2, d), dim=-1).amax(-1) > max_norm,
                math.nan, 0.0).to(z.dtype)
        traj = _engine.drive(torch.cat([x, x], dim=-1), steps=steps // r, record_every=record_every // r,
                             observables=obs, seed=seed, chunk_size=x.shape[0], max_norm=math.inf, progress=progress,
                             sampler=_placeholder(x), step=self._window(sde, r, seed), init=lambda z, g: None,
                             init_gauss=False, dt=sde.lr, info=info)
        values = {k: v for k, v in traj.values.items() if k != "_max_norm"}
        reasons = ["max_norm" if w == "observable:_max_norm" else w for w in traj.diverged_reason]
        return dataclasses.replace(traj, values=values, x_final=traj.x_final[:, d:], diverged_reason=reasons)

    def _window(self, sde: SDEModel, r: int, seed: int) -> _engine.Step:
        """One discrete step and ``r`` model sub-steps on the same draw (state ``(x, X)``, buffer as state)."""
        p, method = sde.problem, sde.method
        d, S, m = p.d, p.noise_sqrt, sde.noise_dim
        sub = self._base(sde).step(sde, sde.lr / r)
        gen = torch.Generator(device=p.device).manual_seed(seed)
        sqrt_r = math.sqrt(r)

        def window(z: Tensor, _, buffer, k: int):
            x, X = z[:, :d].contiguous(), z[:, d:].contiguous()
            xi = torch.randn(x.shape[0], d, generator=gen, dtype=x.dtype, device=x.device)
            G, _ = effective_gradient(p, method, x, torch.zeros_like(xi) if S is None else xi @ S.T, eps=sde.eps)
            x, buffer = method.update(x, G, buffer)
            # The bridge: r sub-step increments (units of sqrt(dt)) that sum to -sqrt(r)·ξ, i.e. W = -sqrt(lr)·ξ.
            zeta = torch.randn(r, x.shape[0], d, generator=gen, dtype=x.dtype, device=x.device)
            zeta = zeta - zeta.mean(dim=0, keepdim=True) - xi / sqrt_r
            for j in range(r):
                X = sub(X, (None, zeta[j][:, :m]), None, j)[0]
            return torch.cat([x, X], dim=-1), buffer, None

        return window


def _placeholder(x: Tensor) -> streams.Sampler:
    """The engine's per-path draws are not used by :class:`Coupled` (it draws inside its step): one byte per step."""
    return lambda shape, gen: torch.zeros(*shape, 1, dtype=torch.uint8, device=x.device)
