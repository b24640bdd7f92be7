r"""Effective gradients of one draw and the drift of the order-r model (MATH §3.1–3.2).

The order-:math:`r` model of a method has drift :math:`b(x) = -\mathbb E_\gamma[G^{(r)}_\gamma(x)]` with

.. math:: G^{(r)}_\gamma(x) = \sum_{j=0}^{r}\frac1{j!}\nabla^{j+1}f_\gamma(x)[\varepsilon_\gamma,\dots,\varepsilon_\gamma],

the Taylor truncation in the perturbation of the per-draw effective gradient
:math:`G_\gamma(x) = \nabla f_\gamma(x+\varepsilon_\gamma(x))` ("exact": no truncation) [derived]. ``r = 1`` gives
the first-order SDEs of Compagnoni et al. (ICML 2023), ``r = 2`` the third-order SDE of Luo et al.
(NeurIPS 2024).
"""
from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import Tensor
from torch.func import grad, vjp, vmap

from . import autodiff
from .methods import Method, perturb, split
from .methods.oracles import Rows
from .problems.base import Problem
from .problems.finite_sum import FiniteSum

ORDERS = (0, 1, 2, "exact")


def check_order(order) -> int | str:
    if order not in ORDERS or isinstance(order, bool):
        raise ValueError(f"`order` must be one of {ORDERS}, got order={order!r}")
    return order


def model_gradients(problem: Problem, method: Method, x: Tensor, draws: Tensor, *, order, eps: float,
                    v: Tensor | None = None, full_grad: Tensor | None = None,
                    drift_every: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-row :math:`g_\gamma = \nabla f_\gamma(x)`, the drift's :math:`G^{(r)}_\gamma(x)` and the diffusion's :math:`G^{(r')}_\gamma(x)`.

    :math:`r' = \min(r, 1)` for the Taylor models and :math:`r' = r` for ``"exact"`` (MATH §3.1). The
    perturbation comes from the one oracle wiring (:func:`sde_sam.methods.perturb`), so every method's models
    of every order follow from its definition: ASAM and multi-step ascent use :math:`\varepsilon` as computed
    (MATH §3.6), m-SAM averages the truncated effective gradients of its micro-batches,
    :math:`G^{(r)}_\gamma = \frac1k\sum_j G^{(r)}_{\gamma^{(j)}}` (MATH §2.2, §3.6). Weight decay adds
    :math:`\lambda x` to the drift's :math:`G^{(r)}` only (exact at every order; the diffusion is unchanged,
    MATH §3.6).

    Cost per row (``from_module`` problems; ``tests/test_autodiff.py``): a perturbation formed from
    :math:`g_\gamma` and per-row tensors only (SAM, USAM, ASAM, DNSAM, Eigen-SAM, ...) takes :math:`g_\gamma`,
    :math:`\varepsilon_\gamma` and :math:`\nabla^2 f_\gamma\varepsilon_\gamma` from one ``vjp`` of the gradient map
    (:func:`sde_sam.autodiff.grad_and_hvp_along`, about two gradients) and, on the rows that need the order-2
    term, those and :math:`\nabla^3 f_\gamma[\varepsilon_\gamma,\varepsilon_\gamma]` from one triple-reverse pass
    (:func:`sde_sam.autodiff.grad_hvp_and_third_along`); other perturbations evaluate :math:`g_\gamma` first. The
    order-2 term is evaluated only on the rows whose drift is asked for (``drift_every``).

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
        drift_every: ``s``: the drift's :math:`G^{(r)}` is returned for rows ``0, s, 2s, ...`` only (the two-draw
            scheme's drift uses the first of each path's two draws); ``N`` must be a multiple of ``s``.

    Returns:
        ``g`` and ``G_noise``, each ``(N, d)``, and ``G``, ``(N / drift_every, d)``.
    """
    if drift_every < 1 or x.shape[0] % drift_every:
        raise ValueError(f"`drift_every` must be a positive divisor of the number of rows {x.shape[0]}, got "
                         f"drift_every={drift_every!r}")
    g, G, G_noise = _model_gradients(problem, method, x, draws, order=order, eps=eps, v=v, full_grad=full_grad,
                                     every=drift_every)
    if method.weight_decay != 0.0:
        G = G.add(x[::drift_every], alpha=method.weight_decay)
    return g, G, G_noise


# Oracles that are per-row tensors: a perturbation needing only these is formed under the path vmap.
_ROW_ORACLES = {"full_grad": "full_grad", "eigenvector": "v", "x": "x"}


def _fused_perturbation(method: Method, eps: float, names: tuple[str, ...]):
    """``direction(g1, *row_tensors1) -> eps1`` for :func:`sde_sam.autodiff.grad_and_hvp_along`: the method's own
    perturbation on a one-row batch, so that its formula is written once."""
    def direction(g1: Tensor, *row1: Tensor) -> Tensor:
        kw = {name: t.unsqueeze(0) for name, t in zip(names, row1)}
        return method.perturbation(g1.unsqueeze(0), eps=eps, **kw).eps.squeeze(0)
    return direction


def _model_gradients(problem, method, x, draws, *, order, eps, v, full_grad, every):
    if not method.perturbs or order == 0:
        g = problem.stochastic_grad(x, draws)
        return g, g[::every], g
    r = split(problem, method, x, draws, v=v, full_grad=full_grad)
    if order == "exact":
        g = problem.stochastic_grad(r.x, r.draws)
        e = perturb(problem, method, r.x, r.draws, g, eps=eps, v=r.v, full_grad=r.full_grad).eps
        G = r.merge(problem.stochastic_grad(r.x + e, r.draws))
        return r.merge(g), G[::every], G
    if order == 1:
        g, G1 = _first_order(problem, method, r, eps)
        return r.merge(g), r.merge(G1)[::every], r.merge(G1)
    # Order 2: the third-derivative term on the drift's rows only (one triple-reverse pass gives g, H eps and the
    # term there); the other rows take the order-1 pass.
    drift_rows, other_rows = _rows(r, every, 0), _rows(r, every, 1)
    g, G1, G = _second_order(problem, method, drift_rows, eps)
    if other_rows is not None:
        g_o, G1_o = _first_order(problem, method, other_rows, eps)
        g, G1 = _interleave(g, g_o, every, r.k), _interleave(G1, G1_o, every, r.k)
    return r.merge(g), r.merge(G), r.merge(G1)


def _first_order(problem, method: Method, r: Rows, eps: float) -> tuple[Tensor, Tensor]:
    r"""Per split row :math:`g` and :math:`G^{(1)} = g + \nabla^2 f_\gamma\,\varepsilon`: from one ``vjp`` when the
    perturbation needs only :math:`g` and per-row tensors, else :math:`g` first and the perturbation's oracles."""
    fn = problem.stochastic_grad_single
    if method.oracles <= set(_ROW_ORACLES):
        r, direction, args = _fused(problem, method, r, eps)
        g, _, h = autodiff.grad_and_hvp_along(fn, r.x, direction, r.draws, direction_args=args)
    else:
        g = problem.stochastic_grad(r.x, r.draws)
        e = perturb(problem, method, r.x, r.draws, g, eps=eps, v=r.v, full_grad=r.full_grad).eps
        g, h = autodiff.taylor_terms(fn, r.x, e, 1, r.draws)
    return g, g + h


def _second_order(problem, method: Method, r: Rows, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per split row ``g``, ``G^(1)`` and ``G^(2)``: one triple-reverse pass when the perturbation needs only ``g``
    and per-row tensors (``g`` inside it), else ``g`` first and the perturbation's oracles."""
    fn = problem.stochastic_grad_single
    if method.oracles <= set(_ROW_ORACLES):
        r, direction, args = _fused(problem, method, r, eps)
        g, _, h, t = autodiff.grad_hvp_and_third_along(fn, r.x, direction, r.draws, direction_args=args)
        t = 0.5 * t
    else:
        g = problem.stochastic_grad(r.x, r.draws)
        e = perturb(problem, method, r.x, r.draws, g, eps=eps, v=r.v, full_grad=r.full_grad).eps
        g, h, t = autodiff.taylor_terms(fn, r.x, e, 2, r.draws)
    G1 = g + h
    return g, G1, G1 + t


def _fused(problem, method: Method, r: Rows, eps: float):
    """The rows (DNSAM's full-batch gradient added if missing), the per-row ``direction`` and its arguments."""
    if "full_grad" in method.oracles and r.full_grad is None:
        r = dataclasses.replace(r, full_grad=problem.grad(r.x))
    row = {"full_grad": r.full_grad, "v": r.v, "x": r.x}
    names = tuple(_ROW_ORACLES[o] for o in sorted(method.oracles))
    return r, _fused_perturbation(method, eps, names), tuple(row[n] for n in names)


def _pick(t, every: int, k: int, which: int):
    """Of split rows grouped as ``(rows / (every k), every, k)``: the first of each group of ``every``
    (``which=0``) or the others (``which=1``), micro-batch rows kept together."""
    if t is None:
        return None
    if isinstance(t, tuple):
        return tuple(_pick(u, every, k, which) for u in t)
    u = t.unflatten(0, (-1, every, k))
    return (u[:, :1] if which == 0 else u[:, 1:]).flatten(0, 2)


def _rows(r: Rows, every: int, which: int) -> Rows | None:
    if every == 1:
        return r if which == 0 else None
    p = lambda t: _pick(t, every, r.k, which)  # noqa: E731
    return dataclasses.replace(r, x=p(r.x), draws=p(r.draws), v=p(r.v), full_grad=p(r.full_grad))


def _interleave(first: Tensor, others: Tensor, every: int, k: int) -> Tensor:
    """Inverse of :func:`_pick`: the rows in their original order."""
    return torch.cat([first.unflatten(0, (-1, 1, k)), others.unflatten(0, (-1, every - 1, k))], dim=1).flatten(0, 2)


def effective_grads(problem: Problem, method: Method, x: Tensor, draws: Tensor, *, order, eps: float,
                    v: Tensor | None = None, full_grad: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Deprecated alias of :func:`model_gradients` (renamed: it collided with ``sde_sam.discrete.effective_grad``);
    removed in the next release."""
    warnings.warn("sde_sam.drift.effective_grads is deprecated; use sde_sam.drift.model_gradients",
                  DeprecationWarning, stacklevel=2)
    return model_gradients(problem, method, x, draws, order=order, eps=eps, v=v, full_grad=full_grad)


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

    def own_hvp(y: Tensor, sample) -> Tensor:  # ∇²f_i ∇f_i for one sample: g_i and its HVP from one vjp
        gi, pull = vjp(lambda z: grad(problem.loss_fn)(z, sample), y)
        return pull(gi)[0]

    mean_hi = vmap(lambda y: vmap(own_hvp, in_dims=(None, 0))(y, problem.data).mean(0))(x)
    return -(g + rho * (Hg + problem.noise_scale * (mean_hi - Hg)))
