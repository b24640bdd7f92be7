r"""Batched derivatives over paths, by ``torch.func``.

Every function here takes an *unbatched* gradient map ``fn(x1: (d,), *args1) -> (d,)`` (one path; ``args1``
are that path's extra arguments, e.g. its draw) and points ``x: (n_paths, d)`` with batched extra arguments
``args`` (leading dim ``n_paths``, tensors or tuples of tensors). The derivatives are taken of the single-path
map and the path ``vmap`` is applied *outside* them: ``vmap(vjp(fn))``, never ``vjp(vmap(fn))``. For
forward mode the two are equal in exact arithmetic, but in torch 2.13 ``jvp(vmap(fn))`` is wrong for
``layer_norm`` when its input and weight both depend on the parameters (errors of order 10² on a 42-parameter
example) while ``vmap(jvp(fn))`` is exact to round-off (``tests/test_module.py``).

**Reverse over reverse.** Hessian-vector products are :math:`H v = \nabla_x\langle v, \nabla f(x)\rangle`, the
``vjp`` of the gradient map (:math:`H` is symmetric), and third derivatives
:math:`\nabla^3 f[u, w] = \nabla_x\langle u, \nabla^2 f(x)\,w\rangle` the ``vjp`` of that. One ``vjp`` of the
gradient map gives the gradient *and* a function of the direction, so a perturbation formed from the gradient
(SAM's :math:`\rho g/\|g\|`) costs no second gradient (:func:`grad_and_hvp_along`). Measured on ``from_module``
problems (16 rows, B = 32, float32, 2 threads): gradient + HVP 1.9-2.0 gradients against 6-7 for the former
forward-over-reverse ``vmap(jvp(grad))``, the order-2 terms 4-12 against 21-26 (``benchmarks/README.md``);
``tests/test_autodiff.py`` holds the new formulas to the former ones and to finite differences.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor
from torch.func import vjp, vmap

SingleGradFn = Callable[..., Tensor]


def _at(fn: SingleGradFn, args1) -> Callable[[Tensor], Tensor]:
    return lambda y: fn(y, *args1)


def _single_hvp(fn: SingleGradFn, x1: Tensor, v1: Tensor, args1) -> Tensor:
    return vjp(_at(fn, args1), x1)[1](v1)[0]


def _single_hvp_and_third(fn: SingleGradFn, x1: Tensor, u1: Tensor, w1: Tensor, args1):
    r"""``(g, H w, ∇³f[u, w])`` at one point: the vjp along ``u`` of :math:`y\mapsto\nabla^2 f(y)\,w`."""
    def hw(y):
        g, pull = vjp(_at(fn, args1), y)
        return pull(w1)[0], g

    h, pull, g = vjp(hw, x1, has_aux=True)
    return g, h, pull(u1)[0]


def hvp(fn: SingleGradFn, x: Tensor, v: Tensor, *args) -> Tensor:
    r"""Per-path Hessian-vector products :math:`\nabla^2 f(x_p)\,v_p` (reverse over reverse).

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

    The ``vjp`` along ``u`` of the HVP along ``w`` (MATH §0; :math:`\nabla^3 f` is symmetric), one path at a
    time under the path ``vmap``. Arguments as in :func:`hvp`; returns ``(n, d)``.
    """
    return vmap(lambda x1, u1, w1, *a1: _single_hvp_and_third(fn, x1, u1, w1, a1)[2])(x, u, w, *args)


def grad_and_hvp_along(fn: SingleGradFn, x: Tensor, direction: Callable[..., Tensor], *args,
                       direction_args: tuple = ()) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per path :math:`g = \nabla f(x)`, :math:`\varepsilon = \mathrm{direction}(g)` and :math:`\nabla^2 f(x)\,\varepsilon`
    from one ``vjp`` of the gradient map: the gradient is evaluated once (the HVP reuses its graph).

    Args:
        fn: Unbatched gradient map ``fn(x1: (d,), *args1) -> (d,)``.
        x: Points, ``(n, d)``.
        direction: ``direction(g1: (d,), *dargs1) -> (d,)``, evaluated under the path ``vmap`` (no host
            synchronisation, no data-dependent Python control flow); ``ε`` is held fixed (not differentiated).
        *args: Extra arguments of ``fn``, batched along ``n``.
        direction_args: Extra arguments of ``direction``, batched along ``n``.

    Returns:
        ``(g, eps, H eps)``, each ``(n, d)``.
    """
    def one(x1, a1, d1):
        g, pull = vjp(_at(fn, a1), x1)
        e = direction(g, *d1)
        return g, e, pull(e)[0]

    return vmap(one)(x, args, direction_args)


def grad_hvp_and_third_along(fn: SingleGradFn, x: Tensor, direction: Callable[..., Tensor], *args,
                             direction_args: tuple = ()) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r""":func:`grad_and_hvp_along` and :math:`\nabla^3 f(x)[\varepsilon, \varepsilon]` from one reverse-over-reverse-over-
    reverse pass: the ``vjp`` along :math:`\varepsilon` of :math:`y \mapsto \nabla^2 f(y)\,\varepsilon`, with
    :math:`\varepsilon` formed inside from :math:`\nabla f(y)` and detached (held fixed at its value at ``x``, as
    the Taylor terms require; ``tests/test_autodiff.py`` checks that the detach reaches every level).

    Arguments as in :func:`grad_and_hvp_along`; returns ``(g, eps, H eps, ∇³f[eps, eps])``, each ``(n, d)``.
    """
    def one(x1, a1, d1):
        def hvp_along(y):
            g, pull = vjp(_at(fn, a1), y)
            e = direction(g, *d1).detach()
            return pull(e)[0], (g, e)

        h, pull, (g, e) = vjp(hvp_along, x1, has_aux=True)
        return g, e, h, pull(e)[0]

    return vmap(one)(x, args, direction_args)


def taylor_terms(fn: SingleGradFn, x: Tensor, eps: Tensor, order: int, *args) -> list[Tensor]:
    r"""The terms :math:`\frac1{j!}\nabla^{j+1} f(x)[\varepsilon^{j}]`, :math:`j = 0..r`, of :func:`taylor_grad`.

    Order 1: one ``vjp`` of the gradient map gives :math:`g` and :math:`H\varepsilon`; order 2: the ``vjp``
    along :math:`\varepsilon` of :math:`y\mapsto H(y)\varepsilon` adds :math:`\nabla^3 f[\varepsilon,\varepsilon]`
    (reverse over reverse over reverse, the fastest exact nesting measured). Arguments as in
    :func:`taylor_grad`; returns ``order + 1`` tensors of shape ``(n, d)``.
    """
    if order == 0:
        return [vmap(fn)(x, *args)]
    if order == 1:
        def first(x1, e1, *a1):
            g, pull = vjp(_at(fn, a1), x1)
            return g, pull(e1)[0]
        return list(vmap(first)(x, eps, *args))
    if order == 2:
        g, h, t = vmap(lambda x1, e1, *a1: _single_hvp_and_third(fn, x1, e1, e1, a1))(x, eps, *args)
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
