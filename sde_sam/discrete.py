r"""Discrete methods: one step with given draws (:func:`step`) and many independent runs at once (:func:`run`)
(MATH §2, §2.1).

**Draws.** A step uses one draw :math:`\gamma` per path, the same at the current and at the perturbed point.
Its format is the problem's (what ``problem.sample_draws((n,), generator)`` returns):

- :class:`~sde_sam.Objective` / :class:`~sde_sam.Quadratic` (additive Gaussian noise): ``(n, d)`` noise vectors
  :math:`Z=\Sigma^{1/2}\xi`, already scaled (with ``noise_cov=0`` they are ignored);
- :class:`~sde_sam.FiniteSum`: ``(n, B)`` ``int64`` sample indices, the mini-batch of each path.

A sequence of draws for :func:`run` has leading dims ``(steps, n_paths)``.

**State.** :class:`StepState` holds what a method carries from step to step: the momentum buffer, the
Eigen-SAM eigenvector and the step count (Eigen-SAM's refresh schedule), plus the last step's guard mask.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from . import _checks, _engine, observables as obs_mod, streams
from .methods import Method, check_method, effective_gradient, power_iteration
from .problems.base import Problem


@dataclass(frozen=True)
class StepState:
    """What a method carries from one step to the next, per path.

    Attributes:
        momentum: ``(n, d)`` momentum buffer :math:`u_k` (MATH §2.1), ``None`` before the first step (zeros) or
            for methods without momentum.
        v: ``(n, d)`` unit Eigen-SAM eigenvector estimates (``None`` for other methods).
        k: Number of steps taken (Eigen-SAM refreshes ``v`` when ``k > 0`` and ``k % refresh_every == 0``).
        guarded: ``(n,)`` bool, where the norm guard fired at the last step (``None`` before the first step).
    """

    momentum: Tensor | None = None
    v: Tensor | None = None
    k: int = 0
    guarded: Tensor | None = None


def effective_grad(problem: Problem, method: Method, x: Tensor, draws, *, eps: float,
                   v: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Deprecated alias of :func:`sde_sam.methods.effective_gradient` (renamed: it collided with
    ``sde_sam.drift.effective_grads``); removed in the next release."""
    warnings.warn("sde_sam.discrete.effective_grad is deprecated; use sde_sam.methods.effective_gradient",
                  DeprecationWarning, stacklevel=2)
    return effective_gradient(problem, method, x, draws, eps=eps, v=v)


def _advance(problem: Problem, method: Method, x: Tensor, draws, state: StepState, eps: float,
             with_loss: bool = False):
    """One step from a valid state (no checks): ``(x_next, state_next)``, and the ``(n,)`` loss of the draw at
    ``x`` with ``with_loss`` (from the step's own first gradient evaluation). A scheduled method takes the step of
    its constant method at step ``state.k`` (MATH §2.3)."""
    method = method.at(state.k)
    v = state.v
    if method.uses_eigenvector and state.k > 0 and state.k % method.refresh_every == 0:
        v = power_iteration(lambda u: problem.stochastic_hvp(x, u, draws), v, method.power_iters, eps)
    G, fired, *loss = effective_gradient(problem, method, x, draws, eps=eps, v=v, with_loss=with_loss)
    x_next, buffer = method.update(x, G, state.momentum)
    state = StepState(momentum=buffer, v=v, k=state.k + 1, guarded=fired)
    return (x_next, state, loss[0]) if with_loss else (x_next, state)


def _eps(problem: Problem, method: Method) -> float:
    return method.eps if method.eps is not None else problem.default_eps()


def _unit_rows(v: Tensor, name: str) -> Tensor:
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    if not bool(torch.isfinite(v).all()) or bool((norm == 0).any()):
        raise ValueError(f"`{name}` must be finite with no zero rows (an eigenvector estimate per path)")
    return v / norm


def initial_state(problem: Problem, method: Method, x: Tensor, *, v0: Tensor | None = None,
                  seed: int = 0) -> StepState:
    r"""The state before the first step: no momentum yet (a zero buffer) and, for Eigen-SAM, its eigenvector.

    Eigen-SAM's ``v`` is ``v0`` (normalised, used as is) or, without it, ``method.init_power_iters`` power
    iterations on the full-batch Hessian at ``x`` from a Gaussian start drawn with ``seed`` (MATH §2: computed
    before the first step).

    Args:
        problem, method: As in :func:`step`.
        x: ``(n, d)`` initial states.
        v0: ``(d,)`` or ``(n, d)`` initial eigenvector (Eigen-SAM only).
        seed: Seed of the random start when ``v0`` is None.
    """
    if not method.uses_eigenvector:
        if v0 is not None:
            raise ValueError(f"`v0` is only for methods with an eigenvector (EigenSAM), got method={method.name}")
        return StepState()
    eps = _eps(problem, method)
    if v0 is not None:
        if not isinstance(v0, Tensor) or v0.dtype != x.dtype or v0.shape not in (x.shape, x.shape[1:]):
            raise ValueError(f"`v0` must be a {x.dtype} tensor of shape {tuple(x.shape[1:])} or {tuple(x.shape)}, "
                             f"got {getattr(v0, 'shape', type(v0).__name__)}")
        return StepState(v=_unit_rows(v0.to(x.device).expand_as(x).clone(), "v0"))
    gen = torch.Generator(device=x.device).manual_seed(seed)
    start = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    return StepState(v=_init_v(problem, method, x, start, eps))


def _init_v(problem: Problem, method: Method, x: Tensor, gauss: Tensor, eps: float) -> Tensor:
    v = gauss / torch.linalg.vector_norm(gauss, dim=-1, keepdim=True)
    return power_iteration(lambda u: problem.hvp(x, u), v, method.init_power_iters, eps)


def _check_problem_method(problem, method) -> None:
    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be an sde_sam Problem, got {type(problem).__name__}")
    check_method(method).check_problem(problem)


def step(problem: Problem, method: Method, x: Tensor, draws, *, state: StepState | None = None,
         eps: float | None = None) -> tuple[Tensor, StepState]:
    r"""One step of ``method`` for every path with the given draws (MATH §2, §2.1).

    .. math:: G_k=\nabla f_{\gamma_k}\big(x_k+\varepsilon_{\gamma_k}(x_k)\big),\qquad
              x_{k+1}=x_k-\eta G_k\ \ \text{(or with momentum, see :meth:`Method.update`)}

    Exactly the step :func:`run` takes, so a loop of ``step`` over the draws of ``run(..., keep_draws=True)``
    reproduces the run.

    Args:
        problem: The objective and noise model.
        method: The method.
        x: ``(n, d)`` current states, in the problem's dtype.
        draws: One draw per path, in the problem's format (module docstring): ``(n, d)`` Gaussian noise
            vectors or ``(n, B)`` int64 mini-batch indices.
        state: The previous step's state; ``None``: :func:`initial_state` (for Eigen-SAM a seeded random start).
        eps: Norm guard (default: the method's, else the problem's).

    Returns:
        The ``(n, d)`` next states and the next :class:`StepState`.

    Example:
        >>> prob = ss.Quadratic(torch.eye(2, dtype=torch.float64), noise_cov=0.01)
        >>> x = torch.ones(4, 2, dtype=torch.float64)
        >>> draws = prob.sample_draws((4,), torch.Generator().manual_seed(0))
        >>> x1, state = ss.step(prob, ss.SAM(0.1, 0.05, momentum=0.9), x, draws)
        >>> x2, state = ss.step(prob, ss.SAM(0.1, 0.05, momentum=0.9), x1, draws, state=state)
    """
    _check_problem_method(problem, method)
    if not isinstance(x, Tensor) or x.ndim != 2 or (problem.d is not None and x.shape[1] != problem.d):
        raise ValueError(f"`x` must be a tensor of shape (n, d) with d={problem.d}, got {getattr(x, 'shape', x)!r}")
    lead = draws[0].shape[:1] if isinstance(draws, tuple) else getattr(draws, "shape", (None,))[:1]
    if tuple(lead) != (x.shape[0],):
        raise ValueError(f"`draws` must have leading dim n={x.shape[0]} (one draw per path), got {tuple(lead)}")
    _checks.draws(problem, draws, lead=(x.shape[0],))  # the problem's format: shape, dtype, index range
    if state is None:
        state = initial_state(problem, method, x)
    elif not isinstance(state, StepState):
        raise TypeError(f"`state` must be a StepState or None, got {type(state).__name__}")
    return _advance(problem, method, x, draws, state, _eps(problem, method) if eps is None else eps)


def run(problem: Problem, method: Method, x0: Tensor, *, steps: int, n_paths: int | None = None,
        seed: int | torch.Generator = 0, record_every: int | str = "auto",
        observables: Sequence = ("loss",), chunk_size: int | None = None, max_norm: float = math.inf,
        progress: bool | None = None, draws=None, keep_draws: bool = False, v0: Tensor | None = None):
    r"""Run ``n_paths`` independent copies of a discrete method as one batched tensor program.

    Path ``p`` draws its mini-batches (or Gaussian noise) from its own random stream, so results are
    reproducible from ``seed`` and do not depend on ``chunk_size``. Observables are evaluated at steps
    ``0, record_every, ...`` (and the last) and stored on the SDE time scale :math:`t = k\eta`. Methods with
    momentum keep a per-path buffer starting at 0 (MATH §2.1).

    Args:
        problem: Objective and gradient-noise model.
        method: Any :class:`~sde_sam.Method` (``SGD``, ``USAM``, ``SAM``, ..., with or without momentum).
        x0: ``(d,)`` (shared start) or ``(n_paths, d)``; dtype and device must be the problem's.
        steps: Number of steps.
        n_paths: Number of runs (default: ``x0.shape[0]`` or 1).
        seed: Integer seed or ``torch.Generator``.
        record_every: Record observables every this many steps; ``"auto"`` (default): every step where
            recording is cheap, else as often as keeps the full-batch observables under 10% of the run's cost
            (:func:`sde_sam.observables.auto_record_every`); the interval used is ``info["record_every"]``.
        observables: Names (``"loss"``, ``"grad_norm"``, ``"x_norm"``, ``"lambda_max"``) or callables.
        chunk_size: Paths per chunk, any positive size, for memory; ``None``: all at once, except on the CPU
            when the paths' ``(n_paths, d)`` state outgrows the cache (then cache-sized chunks,
            :func:`sde_sam.streams.auto_chunk`: 1.7-2.7x faster at d >= 77k).
        max_norm: A path whose ``||x||`` exceeds this is flagged diverged (non-finite paths always are).
        progress: Show a progress bar with an ETA (``None``: on a terminal or in a notebook, once the run is
            projected to take more than 10 s).
        draws: A given draw sequence to replay instead of sampling, leading dims ``(steps, n_paths)``, in the
            problem's format (module docstring).
        keep_draws: Return the draws used as ``Trajectory.draws`` (CPU; memory ``steps * n_paths`` draws:
            ``d`` floats each for Gaussian noise, ``B`` int64 for mini-batches).
        v0: Eigen-SAM only: the initial eigenvector, ``(d,)`` or ``(n_paths, d)``, used as is (normalised);
            default ``method.init_power_iters`` power iterations from a random start.

    Returns:
        A :class:`~sde_sam.results.Trajectory`.

    Example:
        >>> prob = ss.Quadratic(torch.eye(2, dtype=torch.float64), noise_cov=0.01)
        >>> traj = ss.run(prob, ss.SAM(0.1, 0.05), torch.ones(2, dtype=torch.float64), steps=50, n_paths=1000)
    """
    _check_problem_method(problem, method)
    _checks.positive_int("steps", steps)
    record_every = obs_mod.check_record_every(record_every)
    if not isinstance(keep_draws, bool):
        raise ValueError(f"`keep_draws` must be True or False, got keep_draws={keep_draws!r}")
    max_norm = _checks.max_norm(max_norm)
    x, n = _checks.problem_state(problem, x0, n_paths=n_paths)
    eps = _eps(problem, method)
    obs = obs_mod.resolve(observables, problem)
    if record_every == "auto":
        record_every = obs_mod.auto_record_every(obs, obs_mod.step_cost(problem, method))
    _checks.run_inputs(problem, draws, steps=steps, n_paths=n, every=record_every, n_obs=len(obs), keep=keep_draws)
    v_given = None if v0 is None else initial_state(problem, method, x, v0=v0).v
    offset = [0]  # the engine initialises chunks in order; v0's rows follow them

    def init(xc: Tensor, gauss: Tensor) -> StepState:
        a = offset[0]
        offset[0] += xc.shape[0]
        if not method.uses_eigenvector:
            return StepState()
        if v_given is not None:
            return StepState(v=v_given[a:a + xc.shape[0]])
        # Eigen-SAM: v before the first step, from a random start, on the full-batch Hessian.
        return StepState(v=_init_v(problem, method, xc, gauss, eps))

    batch_loss = "batch_loss" in obs  # the step reports its draw's loss (the engine's 4-tuple contract)

    def advance(xc: Tensor, draw, state: StepState, k: int):
        x_next, state, *loss = _advance(problem, method, xc, draw, state, eps, with_loss=batch_loss)
        # A method without a norm never fires the guard: no mask for the engine to count.
        return (x_next, state, state.guarded if method.normalises else None, *loss)

    info = {"kind": "discrete", **method.describe(), "rho": method.rho, "seed": seed if isinstance(seed, int) else None,
            "problem": repr(problem), "steps": steps}
    replay = {}
    if draws is not None or keep_draws:  # the engine's replay interface (sde_sam._engine.drive)
        replay = {"draws": draws, "keep_draws": keep_draws}
    return _engine.drive(x, steps=steps, record_every=record_every, observables=obs,
                         seed=streams.resolve_seed(seed), chunk_size=chunk_size,
                         max_norm=max_norm, progress=progress, sampler=problem.sample_draws, step=advance, init=init,
                         init_gauss=method.uses_eigenvector and v_given is None, dt=method.lr, info=info, **replay)
