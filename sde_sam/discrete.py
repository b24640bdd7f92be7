"""Many independent runs of a discrete method at once (MATH §2)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from . import _checks, _engine, observables as obs_mod, streams
from .methods import Method, power_iteration
from .problems.base import Problem


def step(problem: Problem, method: Method, x: Tensor, draws: Tensor, *, eps: float,
         v: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""One step of ``method`` for every path: :math:`x - \eta\,\nabla f_\gamma(x + \varepsilon_\gamma(x))`.

    Args:
        problem: The objective and noise model.
        method: The method.
        x: ``(n, d)`` current states.
        draws: One draw per path (leading dim ``n``), used at both the current and the perturbed point.
        eps: Norm guard.
        v: ``(n, d)`` unit eigenvector estimates (Eigen-SAM only).

    Returns:
        ``(n, d)`` next states and the ``(n,)`` mask where the norm guard fired.
    """
    g = problem.stochastic_grad(x, draws)
    if not method.perturbs:
        return x - method.lr * g, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    full = problem.grad(x) if method.uses_full_grad else None
    pert = method.perturbation(g, eps=eps, full_grad=full, v=v)
    return x - method.lr * problem.stochastic_grad(x + pert.eps, draws), pert.guarded


def run(problem: Problem, method: Method, x0: Tensor, *, steps: int, n_paths: int | None = None,
        seed: int | torch.Generator = 0, record_every: int = 1,
        observables: Sequence = ("loss",), chunk_size: int | None = None, max_norm: float = math.inf,
        progress: bool | None = None):
    r"""Run ``n_paths`` independent copies of a discrete method as one batched tensor program.

    Path ``p`` draws its mini-batches (or Gaussian noise) from its own random stream, so results are
    reproducible from ``seed`` and do not depend on ``chunk_size``. Observables are evaluated at steps
    ``0, record_every, ...`` (and the last) and stored on the SDE time scale :math:`t = k\eta`.

    Args:
        problem: Objective and gradient-noise model.
        method: ``SGD``, ``USAM``, ``SAM``, ``DNSAM``, ``UnifiedSAM`` or ``EigenSAM``.
        x0: ``(d,)`` (shared start) or ``(n_paths, d)``; dtype and device must be the problem's.
        steps: Number of steps.
        n_paths: Number of runs (default: ``x0.shape[0]`` or 1).
        seed: Integer seed or ``torch.Generator``.
        record_every: Record observables every this many steps.
        observables: Names (``"loss"``, ``"grad_norm"``, ``"x_norm"``, ``"lambda_max"``) or callables.
        chunk_size: Paths per chunk (rounded to a multiple of 1024), for memory; ``None``: all at once.
        max_norm: A path whose ``||x||`` exceeds this is flagged diverged (non-finite paths always are).
        progress: Show a progress bar (``None``: for long runs on a terminal).

    Returns:
        A :class:`~sde_sam.results.Trajectory`.

    Example:
        >>> prob = ss.Quadratic(torch.eye(2, dtype=torch.float64), noise_cov=0.01)
        >>> traj = ss.run(prob, ss.SAM(0.1, 0.05), torch.ones(2, dtype=torch.float64), steps=50, n_paths=1000)
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be an sde_sam Problem, got {type(problem).__name__}")
    if not isinstance(method, Method):
        raise TypeError(f"`method` must be an sde_sam Method (SGD, USAM, SAM, ...), got {type(method).__name__}")
    _checks.positive_int("steps", steps)
    _checks.positive_int("record_every", record_every)
    max_norm = _checks.max_norm(max_norm)
    x, n = _checks.state(x0, d=problem.d, dtype=problem.dtype, device=problem.device, n_paths=n_paths)
    eps = method.eps if method.eps is not None else problem.default_eps()
    obs = obs_mod.resolve(observables, problem)

    def init(xc: Tensor, gauss: Tensor):
        if not method.uses_eigenvector:
            return None
        # Eigen-SAM: v before the first step, from a random start, on the full-batch Hessian.
        v = gauss / torch.linalg.vector_norm(gauss, dim=-1, keepdim=True)
        return power_iteration(lambda u: problem.hvp(xc, u), v, method.init_power_iters, eps)

    def advance(xc: Tensor, draws: Tensor, v, k: int):
        if method.uses_eigenvector and k > 0 and k % method.refresh_every == 0:
            v = power_iteration(lambda u: problem.stochastic_hvp(xc, u, draws), v, method.power_iters, eps)
        x_next, fired = step(problem, method, xc, draws, eps=eps, v=v)
        return x_next, v, fired

    info = {"kind": "discrete", **method.describe(), "rho": method.rho, "seed": seed if isinstance(seed, int) else None,
            "problem": repr(problem), "steps": steps}
    return _engine.drive(x, steps=steps, record_every=record_every, observables=obs,
                         seed=streams.resolve_seed(seed), chunk_size=chunk_size, max_norm=max_norm,
                         progress=progress, sampler=problem.sample_draws, step=advance, init=init,
                         dt=method.lr, info=info)
