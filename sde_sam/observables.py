"""Per-path observables recorded along trajectories: names or callables ``(n_paths, d) -> (n_paths,)``.

A recorded value that is non-finite flags its path as diverged (``Trajectory.diverged_reason`` is then
``"observable:<name>"``), exactly as a non-finite iterate does: an overflowing loss is a diverged run.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .problems.base import Problem

Observable = Callable[[Tensor], Tensor]
BUILTIN = ("loss", "grad_norm", "x_norm", "lambda_max")


class Checked:
    """An observable whose every value is checked: a tensor of shape ``(n_paths,)`` on the state's device,
    real, of the state's floating dtype (or an integer or bool dtype: never a silent narrowing cast). Checks are on metadata only (no device synchronisation)."""

    def __init__(self, name: str, fn: Observable):
        self.name, self.fn = name, fn

    def __call__(self, x: Tensor) -> Tensor:
        value = self.fn(x)
        if not isinstance(value, Tensor):
            raise ValueError(f"observable {self.name!r} must return a tensor of shape (n_paths,) = ({x.shape[0]},), "
                             f"got {type(value).__name__}")
        if tuple(value.shape) != (x.shape[0],):
            raise ValueError(f"observable {self.name!r} must return shape (n_paths,) = ({x.shape[0]},), "
                             f"got {tuple(value.shape)}")
        if value.device != x.device:
            raise ValueError(f"observable {self.name!r} must return a tensor on the state's device {x.device}, "
                             f"got {value.device}")
        if value.is_complex() or (value.is_floating_point() and value.dtype != x.dtype):
            raise ValueError(f"observable {self.name!r} must return the state's dtype {x.dtype} (or an integer or "
                             f"bool dtype), got {value.dtype}")
        return value

    def __repr__(self) -> str:
        return f"Checked({self.name!r})"


class _Loss:
    def __init__(self, problem: Problem):
        self.problem = problem

    def __call__(self, x: Tensor) -> Tensor:
        return self.problem.loss(x)


class _GradNorm(_Loss):
    def __call__(self, x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(self.problem.grad(x), dim=-1)


class _LambdaMax(_Loss):
    def __call__(self, x: Tensor) -> Tensor:
        from .spectrum import top_eigenpair

        return top_eigenpair(self.problem, x).value


def x_norm(x: Tensor) -> Tensor:
    r""":math:`\|x\|` per path."""
    return torch.linalg.vector_norm(x, dim=-1)


def resolve(observables: Sequence[str | Observable] | str, problem: Problem) -> dict[str, Observable]:
    """Map each requested observable to a per-path function.

    Built-in names: ``"loss"`` (:math:`f(x)`), ``"grad_norm"`` (:math:`\\|\\nabla f(x)\\|`), ``"x_norm"``
    (:math:`\\|x\\|`), ``"lambda_max"`` (algebraic top Hessian eigenvalue, by Lanczos). A callable is named
    by its ``__name__`` (anonymous or repeated names get their position) and must return a tensor of shape
    ``(n_paths,)`` on the state's device, of its dtype (or integer/bool); otherwise recording raises a ``ValueError`` naming it.
    """
    if isinstance(observables, str) or callable(observables):
        observables = [observables]
    out: dict[str, Observable] = {}
    for obs in observables:
        if callable(obs):
            name = getattr(obs, "__name__", None) or type(obs).__name__
            if name == "<lambda>" or name in out:  # anonymous or repeated names get their position
                name = f"{name.strip('<>')}_{len(out)}"
            out[name] = Checked(name, obs)
        elif obs == "loss":
            out[obs] = Checked(obs, _Loss(problem))
        elif obs == "grad_norm":
            out[obs] = Checked(obs, _GradNorm(problem))
        elif obs == "x_norm":
            out[obs] = x_norm
        elif obs == "lambda_max":
            out[obs] = Checked(obs, _LambdaMax(problem))
        else:
            raise ValueError(f"`observables` entries must be one of {BUILTIN} or a callable "
                             f"(n_paths, d) -> (n_paths,), got {obs!r}")
    return out


def record_times(steps: int, record_every: int) -> list[int]:
    """Step indices at which observables are recorded: ``0, r, 2r, ...`` and always the last step."""
    ks = list(range(0, steps + 1, record_every))
    return ks if ks[-1] == steps else ks + [steps]
