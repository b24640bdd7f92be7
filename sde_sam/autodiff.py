"""Batched derivatives over paths, by ``torch.func``.

Every function here takes a *batched gradient map* ``grad_fn: (n_paths, d) -> (n_paths, d)`` in which row
``p`` of the output depends only on row ``p`` of the input (paths never interact). Its Jacobian is then
block-diagonal, so one forward-mode ``jvp`` with a per-path tangent ``v: (n_paths, d)`` returns every path's
Hessian-vector product at once, and a ``jvp`` of that returns third derivatives contracted twice.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor
from torch.func import jvp

GradFn = Callable[[Tensor], Tensor]


def hvp(grad_fn: GradFn, x: Tensor, v: Tensor) -> Tensor:
    r"""Per-path Hessian-vector products :math:`\nabla^2 f(x_p)\,v_p` (forward-over-reverse).

    Args:
        grad_fn: Batched gradient map ``(n, d) -> (n, d)``.
        x: Points, ``(n, d)``.
        v: Directions, ``(n, d)``.

    Returns:
        ``(n, d)``.
    """
    return jvp(grad_fn, (x,), (v,))[1]


def third_derivative(grad_fn: GradFn, x: Tensor, u: Tensor, w: Tensor) -> Tensor:
    r"""Per-path :math:`\nabla^3 f(x)[u, w] = \nabla_x\langle u, \nabla^2 f(x)\, w\rangle` (u, w held fixed).

    Computed as the directional derivative along ``u`` of the HVP along ``w`` (MATH §0).
    """
    return jvp(lambda y: hvp(grad_fn, y, w), (x,), (u,))[1]


def taylor_terms(grad_fn: GradFn, x: Tensor, eps: Tensor, order: int) -> list[Tensor]:
    r"""The terms :math:`\frac1{j!}\nabla^{j+1} f(x)[\varepsilon^{j}]`, :math:`j = 0..r`, of :func:`taylor_grad`."""
    if order == 0:
        return [grad_fn(x)]
    if order == 1:
        return list(jvp(grad_fn, (x,), (eps,)))
    if order == 2:
        # One nested jvp gives the first three derivatives along eps: d/ds of (g(x+s eps), H(x+s eps) eps).
        (g, h), (_, t) = jvp(lambda y: jvp(grad_fn, (y,), (eps,)), (x,), (eps,))
        return [g, h, 0.5 * t]
    raise ValueError(f"`order` must be 0, 1 or 2, got order={order!r}")


def taylor_grad(grad_fn: GradFn, x: Tensor, eps: Tensor, order: int) -> Tensor:
    r"""Taylor truncation in ``eps`` of :math:`\nabla f(x+\varepsilon)` (MATH §3.1).

    .. math:: G^{(r)}(x) = \sum_{j=0}^{r} \frac{1}{j!}\,\nabla^{j+1} f(x)[\varepsilon, \dots, \varepsilon]

    ``eps`` is held fixed (it was evaluated at ``x``). Orders 0, 1, 2 are supported.

    Args:
        grad_fn: Batched gradient map ``(n, d) -> (n, d)``.
        x: Points, ``(n, d)``.
        eps: Perturbations, ``(n, d)``.
        order: Truncation order ``r`` in ``{0, 1, 2}``.

    Returns:
        ``(n, d)``.
    """
    return sum(taylor_terms(grad_fn, x, eps, order))
