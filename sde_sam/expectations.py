r"""How an SDE model forms the expectations over draws in its drift and diffusion (MATH §3.2, §3.3, §4.1).

The order-:math:`r` model has drift :math:`-\mathbb E_\gamma G^{(r)}_\gamma` and diffusion :math:`\eta\,\mathrm{Cov}_\gamma
G^{(r')}_\gamma`. The ways of forming them, each a ``mode`` of :class:`Plan`:

* ``"linear"`` / ``"affine"``: closed forms when the effective gradient is affine in additive Gaussian noise
  (SGD, USAM, DNSAM up to order 1; every order of USAM on a quadratic, whose model is Ornstein–Uhlenbeck), as
  each method declares it (:attr:`~sde_sam.methods.Method.affine_noise`).
* ``"enumerate"``: an exact sum over the equally likely draws (``B = 1`` finite sums; with
  ``expectation="enumerate"`` also every mini-batch of any size when :math:`n^B` is small, so that m-SAM's drift
  is exact, MATH §3.6), or over the ``n`` per-sample gradients scaled by :math:`c_B/B` for the order-0 model of
  any mini-batch size.
* ``"sampled"``: ``K`` independent draws per evaluation (``expectation=K``), unbiased for any noise model.
* ``"two_draw"``: the two-draw weak scheme of MATH §4.1 — per solver step two independent draws and one
  scalar, whose increment has the mean and covariance of the model's Euler–Maruyama step (exactly for
  :math:`r \le 1`), at a cost independent of ``n`` and ``K``. A property of the *solver step*, not of the
  model: the stateless :meth:`~sde_sam.sde.SDEModel.drift` and :meth:`~sde_sam.sde.SDEModel.diffusion_factor`
  (and torchsde) then use ``stateless``, the exact or sampled way.

``"auto"`` picks a closed form where there is one, else the two-draw scheme where it evaluates fewer
per-sample gradients per path-step than the exact or sampled way (two mini-batches of ``B`` against ``N``
enumerated draws, ``n`` per-sample gradients or ``K`` sampled mini-batches), else that way. The
``"paper"`` diffusion is not a covariance in general (MATH §3.3), so no two-draw increment realises it: it
keeps the exact or sampled way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .methods import Method
from .problems.base import Problem
from .problems.finite_sum import FiniteSum
from .problems.gaussian import Quadratic

EXPECTATIONS = ("auto", "two_draw", "enumerate")
"""Named ways; an integer ``K >= 2`` asks for ``K`` sampled draws per evaluation."""
SAMPLED_DEFAULT = 32
"""Sampled draws per evaluation when no exact way exists and ``K`` is not given."""


def check_expectation(expectation) -> str | int:
    ok = (expectation in EXPECTATIONS if isinstance(expectation, str)
          else isinstance(expectation, int) and not isinstance(expectation, bool) and expectation >= 2)
    if not ok:
        raise ValueError(f"`expectation` must be 'auto', 'two_draw', 'enumerate' or an integer >= 2 (sampled "
                         f"draws), got expectation={expectation!r}")
    return expectation


def affine_coefficient(problem: Problem, method: Method, order) -> str | None:
    """How the effective gradient depends on additive noise Z: 'sgd' (Z), 'usam' ((I+ρH)Z), 'dnsam'; else None.

    Read from the method's declaration (:attr:`~sde_sam.methods.Method.affine_noise`); m-SAM's split draws have
    no affine form (and are refused on Gaussian-noise problems anyway).
    """
    if not method.perturbs or order == 0:
        return "sgd"
    affine = method.affine_noise
    if affine is None or method.micro_batches(problem) > 1:
        return None
    if order == 1:
        return affine.kind
    if isinstance(problem, Quadratic) and affine.every_order_on_quadratics:
        return affine.kind  # on a quadratic every order of USAM is the order-1 model (no third derivative)
    return None


@dataclass(frozen=True)
class Plan:
    """How one model forms its expectations.

    Attributes:
        mode: The solver step's way: ``"linear"``, ``"affine"``, ``"enumerate"``, ``"sampled"`` or ``"two_draw"``.
        stateless: The way of the stateless drift/diffusion (``mode`` unless that is ``"two_draw"``).
        draws_all: ``(N, ...)`` enumerated draws (``"enumerate"``), else ``None``.
        scale: Covariance scale of enumerated per-sample values (:math:`c_B/B`), else 1.
        n_draws: ``K`` of the sampled way, else ``None``.
        usam_drift: The sampled way's drift is the exact mini-batch USAM drift (MATH §3.2).
        deterministic: The diffusion vanishes.
        affine: The affine coefficient (``"linear"``/``"affine"`` modes), else ``None``.
    """

    mode: str
    stateless: str
    draws_all: Tensor | None = None
    scale: float = 1.0
    n_draws: int | None = None
    usam_drift: bool = False
    deterministic: bool = False
    affine: str | None = None


def plan(problem: Problem, method: Method, *, order, diffusion: str, expectation) -> Plan:
    """Choose how the model of ``method`` on ``problem`` forms its expectations (see the module docstring)."""
    method.check_problem(problem)
    draws_all = problem.enumerate_draws()
    if expectation == "enumerate" and draws_all is None and isinstance(problem, FiniteSum):
        draws_all = problem.enumerate_draws(all_batches=True)  # every mini-batch, when n^B is small
    if expectation == "enumerate" and draws_all is None:
        raise ValueError(f"`expectation='enumerate'` needs a finite noise law (a finite sum with few mini-batches, "
                         f"or no noise); {problem!r} has none")
    if expectation == "two_draw" and diffusion == "paper":
        raise ValueError("`expectation='two_draw'` realises a covariance and the 'paper' diffusion is not one "
                         "(MATH §3.3); use diffusion='factor', or expectation='enumerate' or an integer K")
    affine = affine_coefficient(problem, method, order)
    if problem.additive_gaussian and affine is not None and expectation in ("auto", "two_draw"):
        mode = "linear" if isinstance(problem, Quadratic) and affine != "dnsam" else "affine"
        # the closed form; with expectation="two_draw" only the stateless interface keeps it
        return Plan(mode if expectation == "auto" else "two_draw", mode, deterministic=problem.noise_sqrt is None,
                    affine=affine)
    batch = problem.batch_size if isinstance(problem, FiniteSum) else 1
    if draws_all is not None and not isinstance(expectation, int):
        base = Plan("enumerate", "enumerate", draws_all=draws_all, deterministic=draws_all.shape[0] == 1)
        cost = draws_all.shape[0] * (draws_all.shape[1] if draws_all.ndim > 1 and isinstance(problem, FiniteSum) else 1)
    elif isinstance(problem, FiniteSum) and (not method.perturbs or order == 0):
        # Per-sample gradients stand for mini-batches exactly: Cov = (c_B/B) Cov_i (MATH §3.3).
        base = Plan("enumerate", "enumerate", draws_all=torch.arange(problem.n, device=problem.device)[:, None],
                    scale=problem.noise_scale)
        cost = problem.n
    else:
        K = expectation if isinstance(expectation, int) else SAMPLED_DEFAULT
        usam = (not isinstance(expectation, int) and isinstance(problem, FiniteSum) and order == 1
                and affine_coefficient(problem, method, 1) == "usam")
        base = Plan("sampled", "sampled", n_draws=K, usam_drift=usam)
        cost = K * batch
    two = expectation == "two_draw" or (expectation == "auto" and diffusion == "factor" and not base.deterministic
                                        and 2 * batch < cost)
    return Plan("two_draw", base.stateless, base.draws_all, base.scale, base.n_draws, base.usam_drift,
                base.deterministic) if two else base
