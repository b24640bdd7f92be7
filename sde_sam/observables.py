"""Per-path observables recorded along trajectories: names or callables ``(n_paths, d) -> (n_paths,)``."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .problems.base import Problem

Observable = Callable[[Tensor], Tensor]
BUILTIN = ("loss", "grad_norm", "x_norm", "lambda_max")


def resolve(observables: Sequence[str | Observable] | str, problem: Problem) -> dict[str, Observable]:
    """Map each requested observable to a per-path function.

    Built-in names: ``"loss"`` (:math:`f(x)`), ``"grad_norm"`` (:math:`\\|\\nabla f(x)\\|`), ``"x_norm"``
    (:math:`\\|x\\|`), ``"lambda_max"`` (algebraic top Hessian eigenvalue, by Lanczos). A callable is named
    by its ``__name__``.
    """
    if isinstance(observables, str) or callable(observables):
        observables = [observables]
    out: dict[str, Observable] = {}
    for obs in observables:
        if callable(obs):
            name = getattr(obs, "__name__", "observable")
            if name == "<lambda>" or name in out:  # anonymous or repeated names get their position
                name = f"{name.strip('<>')}_{len(out)}"
            out[name] = obs
        elif obs == "loss":
            out[obs] = problem.loss
        elif obs == "grad_norm":
            out[obs] = lambda x: torch.linalg.vector_norm(problem.grad(x), dim=-1)
        elif obs == "x_norm":
            out[obs] = lambda x: torch.linalg.vector_norm(x, dim=-1)
        elif obs == "lambda_max":
            from .spectrum import top_eigenpair
            out[obs] = lambda x: top_eigenpair(problem, x).value
        else:
            raise ValueError(f"`observables` entries must be one of {BUILTIN} or a callable "
                             f"(n_paths, d) -> (n_paths,), got {obs!r}")
    return out


def record_times(steps: int, record_every: int) -> list[int]:
    """Step indices at which observables are recorded: ``0, r, 2r, ...`` and always the last step."""
    ks = list(range(0, steps + 1, record_every))
    return ks if ks[-1] == steps else ks + [steps]
