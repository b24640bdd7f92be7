r"""The oracle wiring, written once: what a method's perturbation needs (its declared
:attr:`~sde_sam.methods.base.Method.oracles`) built from a problem and the draws, and m-SAM's split of each draw
into micro-batches (MATH §2, §2.2). The discrete step (:func:`effective_gradient`) and every SDE model
(:func:`sde_sam.drift.model_gradients`) go through :func:`perturb` and :func:`split`."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Method, Perturbation


def perturb(problem, method: Method, x: Tensor, draws, g: Tensor, *, eps: float, v: Tensor | None = None,
            full_grad: Tensor | None = None) -> Perturbation:
    r""":math:`\varepsilon_\gamma(x)` for every row, with exactly the oracles ``method.oracles`` declares.

    ``hvp`` and ``grad_at`` use the same draws at the same points (the contract of ``Method.perturbation``);
    ``full_grad`` is computed here unless the caller has it (the two-draw scheme shares it between draws).

    Args:
        problem: Objective and noise model.
        method: The method.
        x: ``(N, d)`` points; ``draws``: one draw per row; ``g``: ``(N, d)`` stochastic gradients at ``x``.
        eps: Norm guard.
        v: ``(N, d)`` unit eigenvector estimates (Eigen-SAM).
        full_grad: ``(N, d)`` full-batch gradients, if known.
    """
    need = method.oracles
    kw = {}
    if "full_grad" in need:
        kw["full_grad"] = problem.grad(x) if full_grad is None else full_grad
    if "eigenvector" in need:
        kw["v"] = v
    if "hvp" in need:
        kw["hvp"] = lambda u: problem.stochastic_hvp(x, u, draws)
    if "grad_at" in need:
        kw["grad_at"] = lambda y: problem.stochastic_grad(y, draws)
    if "x" in need:
        kw["x"] = x
    return method.perturbation(g, eps=eps, **kw)


@dataclass(frozen=True)
class Rows:
    """The rows a step evaluates: one per (path, micro-batch), micro-batches in order within a path.

    Attributes:
        x, draws, v, full_grad: Per row (``v``/``full_grad`` may be ``None``).
        k: Micro-batches per path (1: no split; then the rows are the caller's own tensors).
    """

    x: Tensor
    draws: object
    v: Tensor | None
    full_grad: Tensor | None
    k: int

    def merge(self, t: Tensor) -> Tensor:
        r"""Per-path mean over the micro-batches, :math:`\frac1k\sum_j t_j`: ``(N k, ...) -> (N, ...)``."""
        return t if self.k == 1 else t.unflatten(0, (-1, self.k)).mean(dim=1)

    def merge_mask(self, m: Tensor) -> Tensor:
        return m if self.k == 1 else m.view(-1, self.k).any(dim=1)


def split(problem, method: Method, x: Tensor, draws, *, v: Tensor | None = None,
          full_grad: Tensor | None = None) -> Rows:
    r"""m-SAM (MATH §2.2): each ``(B,)`` draw becomes :math:`k = B/m` micro-batches of size :math:`m`, in order.

    Per-path quantities (the point, Eigen-SAM's ``v``, DNSAM's full-batch gradient) are shared by the
    micro-batches of the path. Without ``micro_batch`` (or with ``m = B``, or :math:`\rho = 0`) nothing is split.
    """
    k = method.micro_batches(problem) if method.perturbs else 1
    if k == 1:
        return Rows(x, draws, v, full_grad, 1)
    rep = lambda t: None if t is None else t.repeat_interleave(k, dim=0)  # noqa: E731
    if "full_grad" in method.oracles and full_grad is None:
        full_grad = problem.grad(x)  # of the whole path, once
    return Rows(rep(x), draws.reshape(draws.shape[0] * k, -1), rep(v), rep(full_grad), k)


def effective_gradient(problem, method: Method, x: Tensor, draws, *, eps: float, v: Tensor | None = None,
                       full_grad: Tensor | None = None, with_loss: bool = False):
    r"""The effective gradient of every path, :math:`G_\gamma(x)=\nabla f_\gamma(x+\varepsilon_\gamma(x))` (MATH §2),
    or m-SAM's mean over micro-batches :math:`\frac1k\sum_j\nabla f_{\gamma^{(j)}}(x+\varepsilon_{\gamma^{(j)}}(x))`
    (MATH §2.2). Weight decay is not in it: the base step adds it (:meth:`Method.update`).

    Args:
        problem: The objective and noise model.
        method: The method.
        x: ``(n, d)`` current states.
        draws: One draw per path (leading dim ``n``), used at both the current and the perturbed point.
        eps: Norm guard.
        v: ``(n, d)`` unit eigenvector estimates (Eigen-SAM only).
        full_grad: ``(n, d)`` full-batch gradients, if known (DNSAM).

        with_loss: Also return the ``(n,)`` loss of each path's draw at ``x`` (m-SAM: the mean over its
            micro-batches, the loss of the whole draw), from the same evaluation as the first gradient.

    Returns:
        ``(n, d)`` effective gradients and the ``(n,)`` mask where the norm guard fired (and the ``(n,)`` draw
        losses with ``with_loss``).
    """
    if not method.perturbs:
        no = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if with_loss:
            loss, g = problem.stochastic_loss_and_grad(x, draws)
            return g, no, loss
        return problem.stochastic_grad(x, draws), no
    r = split(problem, method, x, draws, v=v, full_grad=full_grad)
    if with_loss:
        loss, g = problem.stochastic_loss_and_grad(r.x, r.draws)
    else:
        g = problem.stochastic_grad(r.x, r.draws)
    pert = perturb(problem, method, r.x, r.draws, g, eps=eps, v=r.v, full_grad=r.full_grad)
    G, fired = r.merge(problem.stochastic_grad(r.x + pert.eps, r.draws)), r.merge_mask(pert.guarded)
    return (G, fired, r.merge(loss)) if with_loss else (G, fired)
