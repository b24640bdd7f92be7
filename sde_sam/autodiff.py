"""Batched derivatives over paths, by ``torch.func``.

Every function here takes an *unbatched* gradient map ``fn(x1: (d,), *args1) -> (d,)`` (one path; ``args1``
are that path's extra arguments, e.g. its draw) and points ``x: (n_paths, d)`` with batched extra arguments
``args`` (leading dim ``n_paths``, tensors or tuples of tensors). The forward-mode derivatives are taken of
the single-path map and the path ``vmap`` is applied *outside* them: ``vmap(jvp(fn))``, never
``jvp(vmap(fn))``. The two are equal in exact arithmetic, but in torch 2.13 the second is wrong for
``layer_norm`` when its input and weight both depend on the parameters (errors of order 10² on a
42-parameter example) while the first is exact to round-off (``tests/test_module.py``).
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor
from torch.func import jvp, vmap

SingleGradFn = Callable[..., Tensor]


def _single_hvp(fn: SingleGradFn, x1: Tensor, v1: Tensor, args1) -> Tensor:
    return jvp(lambda y: fn(y, *args1), (x1,), (v1,))[1]


def hvp(fn: SingleGradFn, x: Tensor, v: Tensor, *args) -> Tensor:
    r"""Per-path Hessian-vector products :math:`\nabla^2 f(x_p)\,v_p` (forward-over-reverse).

    Args:
        fn: Unbatched gradient map ``fn(x1: (d,), *args1) -> (d,)``.
        x: Points, ``(n, d)``.
        v: Directions, ``(n, d)``.
        *args: Extra arguments of ``fn``, batched along a leading dim ``n`` (e.g. one draw per path).

    Returns:
        ``(n, d)``.
    """
    return vmap(lambda x1, v1, *a1: _single_hvp(fn, x1, v1, a1))(x, v, *args)


def third_derivative(fn: SingleGradFn, x: Tensor, u: Tensor, w: Tensor, *args) -> Tensor:
    r"""Per-path :math:`\nabla^3 f(x)[u, w] = \nabla_x\langle u, \nabla^2 f(x)\, w\rangle` (u, w held fixed).

    Computed as the directional derivative along ``u`` of the HVP along ``w`` (MATH §0), one path at a time
    under the path ``vmap``. Arguments as in :func:`hvp`; returns ``(n, d)``.
    """
    def one(x1, u1, w1, *a1):
        return jvp(lambda y: _single_hvp(fn, y, w1, a1), (x1,), (u1,))[1]

    return vmap(one)(x, u, w, *args)


def taylor_terms(fn: SingleGradFn, x: Tensor, eps: Tensor, order: int, *args) -> list[Tensor]:
    r"""The terms :math:`\frac1{j!}\nabla^{j+1} f(x)[\varepsilon^{j}]`, :math:`j = 0..r`, of :func:`taylor_grad`.

    Arguments as in :func:`taylor_grad`; returns ``order + 1`` tensors of shape ``(n, d)``.
    """
    if order == 0:
        return [vmap(fn)(x, *args)]
    if order == 1:
        def first(x1, e1, *a1):
            return jvp(lambda y: fn(y, *a1), (x1,), (e1,))
        return list(vmap(first)(x, eps, *args))
    if order == 2:
        def second(x1, e1, *a1):
            # One nested jvp gives the first three derivatives along eps: d/ds of (g(x+s eps), H(x+s eps) eps).
            return jvp(lambda y: jvp(lambda z: fn(z, *a1), (y,), (e1,)), (x1,), (e1,))
        (g, h), (_, t) = vmap(second)(x, eps, *args)
        return [g, h, 0.5 * t]
    raise ValueError(f"`order` must be 0, 1 or 2, got order={order!r}")


def taylor_grad(fn: SingleGradFn, x: Tensor, eps: Tensor, order: int, *args) -> Tensor:
    r"""Taylor truncation in ``eps`` of :math:`\nabla f(x+\varepsilon)` (MATH §3.1).

    .. math:: G^{(r)}(x) = \sum_{j=0}^{r} \frac{1}{j!}\,\nabla^{j+1} f(x)[\varepsilon, \dots, \varepsilon]

    ``eps`` is held fixed (it was evaluated at ``x``). Orders 0, 1, 2 are supported.

    Args:
        fn: Unbatched gradient map ``fn(x1: (d,), *args1) -> (d,)`` (e.g. ``problem.stochastic_grad_single``).
        x: Points, ``(n, d)``.
        eps: Perturbations, ``(n, d)``.
        order: Truncation order ``r`` in ``{0, 1, 2}``.
        *args: Extra arguments of ``fn``, batched along a leading dim ``n`` (e.g. the draws).

    Returns:
        ``(n, d)``.

    Example:
        >>> prob = sde_sam.Quadratic(torch.eye(2))
        >>> taylor_grad(prob.grad_single, torch.ones(3, 2), torch.ones(3, 2), 1).shape
        torch.Size([3, 2])
    """
    return sum(taylor_terms(fn, x, eps, order, *args))
