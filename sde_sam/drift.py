r"""Effective gradients of one draw and the drift of the order-r model (MATH §3.1–3.2).

The order-:math:`r` model of a method has drift :math:`b(x) = -\mathbb E_\gamma[G^{(r)}_\gamma(x)]` with

.. math:: G^{(r)}_\gamma(x) = \sum_{j=0}^{r}\frac1{j!}\nabla^{j+1}f_\gamma(x)[\varepsilon_\gamma,\dots,\varepsilon_\gamma],

the Taylor truncation in the perturbation of the per-draw effective gradient
:math:`G_\gamma(x) = \nabla f_\gamma(x+\varepsilon_\gamma(x))` ("exact": no truncation) [derived]. ``r = 1`` gives
the first-order SDEs of Compagnoni et al. (ICML 2023), ``r = 2`` the third-order SDE of Luo et al.
(NeurIPS 2024).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from .autodiff import taylor_terms
from .methods import Method
from .problems.base import Problem
from .problems.finite_sum import FiniteSum

ORDERS = (0, 1, 2, "exact")


def check_order(order) -> int | str:
    if order not in ORDERS or isinstance(order, bool):
        raise ValueError(f"`order` must be one of {ORDERS}, got order={order!r}")
    return order


def effective_grads(problem: Problem, method: Method, x: Tensor, draws: Tensor, *, order, eps: float,
                    v: Tensor | None = None, full_grad: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-row :math:`g_\gamma = \nabla f_\gamma(x)`, the drift's :math:`G^{(r)}_\gamma(x)` and the diffusion's :math:`G^{(r')}_\gamma(x)`.

    :math:`r' = \min(r, 1)` for the Taylor models and :math:`r' = r` for ``"exact"`` (MATH §3.1).

    Args:
        problem: Objective and noise model.
        method: The method (its perturbation defines :math:`\varepsilon_\gamma`).
        x: ``(N, d)`` points (one row per (path, draw) pair).
        draws: One draw per row.
        order: 0, 1, 2 or ``"exact"``.
        eps: Norm guard.
        v: ``(N, d)`` unit top-eigenvectors (Eigen-SAM).
        full_grad: ``(N, d)`` full-batch gradients (DNSAM), when the caller has them (the two-draw scheme
            computes them once per path for both draws); ``None``: computed here if the method needs them.

    Methods that declare ``needs_oracle`` (Two-step USAM, Hessian USAM) get ``hvp(u) = ∇²f_γ(x) u`` and
    ``grad_at(y) = ∇f_γ(y)`` for the same draws at the same points, so their models of every order come from
    this same construction.

    Returns:
        ``g``, ``G`` and ``G_noise``, each ``(N, d)``.
    """
    g = problem.stochastic_grad(x, draws)
    if not method.perturbs or order == 0:
        return g, g, g
    if method.uses_full_grad and full_grad is None:
        full_grad = problem.grad(x)
    oracle = {}
    if method.needs_oracle:  # the same draws at the same points (contract of Method.perturbation)
        oracle = dict(hvp=lambda u: problem.stochastic_hvp(x, u, draws),
                      grad_at=lambda y: problem.stochastic_grad(y, draws), x=x)
    e = method.perturbation(g, eps=eps, full_grad=full_grad, v=v, **oracle).eps
    if order == "exact":
        G = problem.stochastic_grad(x + e, draws)
        return g, G, G
    terms = taylor_terms(problem.stochastic_grad_single, x, e, order, draws)
    G1 = terms[0] + terms[1]
    return terms[0], (G1 + terms[2] if order == 2 else G1), G1


def usam_minibatch_drift(problem: FiniteSum, x: Tensor, rho: float) -> Tensor:
    r"""Exact order-1 USAM drift for mini-batches of any size, without sampling (MATH §3.2).

    .. math:: -\big(\nabla f + \rho\,\mathbb E_\gamma h_\gamma\big),\quad
              \mathbb E_\gamma h_\gamma = \nabla^2 f\,\nabla f + \frac{c_B}{B}\Big(\frac1n\sum_i\nabla^2 f_i\nabla f_i
              - \nabla^2 f\,\nabla f\Big)

    with :math:`h_\gamma = \nabla^2 f_\gamma\nabla f_\gamma` and :math:`c_B = 1` with replacement
    (:math:`\frac1B\frac1n\sum_i h_i + (1-\frac1B)\nabla^2 f\nabla f`), :math:`\frac{n-B}{n-1}` without [derived from
    the covariance of sampling].
    """
    g = problem.grad(x)
    Hg = problem.hvp(x, g)

    def own_hvp(y: Tensor, sample) -> Tensor:  # ∇²f_i ∇f_i for one sample
        gi = grad(problem.loss_fn)(y, sample)
        return jvp(lambda z: grad(problem.loss_fn)(z, sample), (y,), (gi,))[1]

    mean_hi = vmap(lambda y: vmap(own_hvp, in_dims=(None, 0))(y, problem.data).mean(0))(x)
    return -(g + rho * (Hg + problem.noise_scale * (mean_hi - Hg)))
