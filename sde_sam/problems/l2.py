r"""An L2 term in the objective, for any problem (MATH §2.3):
:math:`f_\gamma \leftarrow f_\gamma + \frac\lambda2\|x\|^2`.

This is ``tml-epfl/understanding-sam``'s ``l2_reg``: a change of problem, not of method, so the perturbation
sees :math:`\lambda x` too and every model of every method applies to the new objective unchanged (MATH §3.6).
Weight decay in the base step, which the perturbation does not see, is the method option ``weight_decay``.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from .. import _checks
from .base import Problem
from .finite_sum import FiniteSum
from .gaussian import Objective, Quadratic, QuadraticLoss


class L2SampleLoss:
    r"""``(x1, sample) -> loss_fn(x1, sample) + λ/2‖x1‖²``: every per-sample loss carries the term, so every
    mini-batch mean does (a class, not a closure: it pickles)."""

    def __init__(self, loss_fn, lam: float):
        self.loss_fn, self.lam = loss_fn, lam

    def __call__(self, x1: Tensor, sample) -> Tensor:
        return self.loss_fn(x1, sample) + 0.5 * self.lam * (x1 * x1).sum()


class L2Loss:
    r"""``x1 -> loss_fn(x1) + λ/2‖x1‖²`` (a class, not a closure: it pickles)."""

    def __init__(self, loss_fn, lam: float):
        self.loss_fn, self.lam = loss_fn, lam

    def __call__(self, x1: Tensor) -> Tensor:
        return self.loss_fn(x1) + 0.5 * self.lam * (x1 * x1).sum()


class L2Problem(Problem):
    r"""Any other :class:`~sde_sam.Problem` plus :math:`\frac\lambda2\|x\|^2`, by delegation (same draws and noise)."""

    def __init__(self, base: Problem, lam: float):
        self.base, self.lam = base, lam
        self.d, self.dtype, self.device = base.d, base.dtype, base.device
        self.additive_gaussian = base.additive_gaussian

    def loss(self, x):
        return self.base.loss(x) + 0.5 * self.lam * (x * x).sum(dim=-1)

    def grad(self, x):
        return self.base.grad(x) + self.lam * x

    def grad_single(self, x1):
        return self.base.grad_single(x1) + self.lam * x1

    def hvp(self, x, v):
        return self.base.hvp(x, v) + self.lam * v

    def sample_draws(self, shape, generator):
        return self.base.sample_draws(shape, generator)

    def stochastic_grad(self, x, draws):
        return self.base.stochastic_grad(x, draws) + self.lam * x

    def stochastic_grad_single(self, x1, draw1):
        return self.base.stochastic_grad_single(x1, draw1) + self.lam * x1

    def stochastic_hvp(self, x, v, draws):
        return self.base.stochastic_hvp(x, v, draws) + self.lam * v

    def stochastic_loss_and_grad(self, x, draws):
        loss, g = self.base.stochastic_loss_and_grad(x, draws)
        return loss + 0.5 * self.lam * (x * x).sum(dim=-1), g + self.lam * x

    def enumerate_draws(self):
        return self.base.enumerate_draws()

    def default_eps(self):
        return self.base.default_eps()

    def __repr__(self) -> str:
        return f"with_l2({self.base!r}, {self.lam!r})"


def with_l2(problem: Problem, lam: float) -> Problem:
    r"""``problem`` with :math:`\frac\lambda2\|x\|^2` added to its objective and to every stochastic loss (MATH §2.3).

    The result is a problem of the same kind, so everything that holds for the kind still does: a
    :class:`~sde_sam.Quadratic` stays one (:math:`H + \lambda I`, the same noise factor: closed-form models and
    exact moments), a :class:`~sde_sam.FiniteSum` (``nn.Module`` ones included) gets the term in every per-sample
    loss (same data, same draws), an :class:`~sde_sam.Objective` in its loss; any other problem is wrapped. The
    original is not changed; the result pickles when the original does.

    Args:
        problem: Any problem.
        lam: :math:`\lambda \ge 0` (``l2_reg`` of ``tml-epfl/understanding-sam``).

    Returns:
        The regularised problem (``lam = 0``: an unchanged copy).

    Example:
        >>> prob = with_l2(Quadratic(torch.eye(2), noise_cov=0.01), 0.5)
        >>> prob.H
        tensor([[1.5000, 0.0000],
                [0.0000, 1.5000]])
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be an sde_sam Problem, got {type(problem).__name__}")
    lam = _checks.nonneg("lam", lam)
    out = copy.copy(problem)  # shares tensors and data, which are never changed in place
    if isinstance(problem, Quadratic):
        out.H = problem.H + lam * torch.eye(problem.d, dtype=problem.dtype, device=problem.device)
        out.loss_fn = QuadraticLoss(out.H)
    elif isinstance(problem, FiniteSum):
        out.loss_fn = L2SampleLoss(problem.loss_fn, lam)
    elif isinstance(problem, Objective):
        out.loss_fn = L2Loss(problem.loss_fn, lam)
    else:
        return L2Problem(problem, lam)
    return out
