r"""The rows of MATH §2's table (SGD, USAM, SAM, DNSAM, Unified SAM, Eigen-SAM) and ASAM (MATH §2.2), each
defined once by its perturbation and its declarations (:mod:`sde_sam.methods.base`).

Perturbing methods need ``rho``: it has no default. A method built without it (``USAM(0.1)``) is a template
whose radius a study sets per learning rate (:meth:`~sde_sam.methods.base.Method.with_rho`); using it as is
raises a ``ValueError`` naming ``rho`` (``rho=0`` is allowed and makes the method SGD).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .. import _checks
from .base import AffineNoise, Method, Perturbation, Perturbing, guarded_norm, no_guard, require, scale_rows


@dataclass(frozen=True, repr=False)
class SGD(Method):
    r"""Stochastic gradient descent: :math:`\varepsilon = 0`.

    Example:
        >>> SGD(0.1).rho
        0.0
    """

    name: ClassVar[str] = "SGD"
    perturbs: ClassVar[bool] = False

    @property
    def affine_noise(self) -> AffineNoise:
        return AffineNoise("sgd", every_order_on_quadratics=True)

    def jacobian_factor(self) -> list[float]:
        return self._with_decay([1.0, 0.0])

    def with_rho(self, rho: float) -> "Method":
        if rho != 0:
            raise ValueError(f"`rho` must be 0 for SGD, got rho={rho!r}")
        return self

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        return Perturbation(torch.zeros_like(g), no_guard(g))


@dataclass(frozen=True, repr=False)
class USAM(Perturbing):
    r"""Unnormalised SAM: :math:`\varepsilon = \rho\, g_\gamma` (Compagnoni et al.; Andriushchenko & Flammarion).

    Example:
        >>> USAM(lr=0.05, rho=0.1)
        USAM(lr=0.05, eps=None, momentum=0.0, nesterov=False, rho=0.1)
    """

    name: ClassVar[str] = "USAM"

    @property
    def affine_noise(self) -> AffineNoise:
        return AffineNoise("usam", every_order_on_quadratics=True)

    def jacobian_factor(self) -> list[float] | None:
        if self.micro_batch is not None:
            return None
        return self._with_decay([self._radius(), 1.0, 0.0])

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        return Perturbation(scale_rows(g, self._radius()), no_guard(g))


def _project(delta: Tensor, rho: float) -> Tensor:
    r"""Per-path projection onto the ball :math:`\|\delta\|\le\rho`: :math:`\delta\min(1, \rho/\|\delta\|)`."""
    norm = torch.linalg.vector_norm(delta, dim=-1)
    return torch.where(norm > rho, rho / norm, 1.0).unsqueeze(-1) * delta


@dataclass(frozen=True, repr=False)
class SAM(Perturbing):
    r"""SAM: :math:`\varepsilon = \rho\, g_\gamma / \|g_\gamma\|` (Foret et al.), optionally with multi-step ascent.

    **Multi-step ascent** (MATH §2.2; ``tml-epfl/understanding-sam``'s ``perturb_weights_sam``, ``sam_iters = q``):
    :math:`\delta_0 = 0`, :math:`\delta_{i+1} = \Pi_\rho\big(\delta_i + s\,u_i\big)` with
    :math:`u_i = \nabla f_\gamma(x+\delta_i)/\|\nabla f_\gamma(x+\delta_i)\|` (``ascent_normalized=True``) or
    :math:`\nabla f_\gamma(x+\delta_i)` (``False``), :math:`\Pi_\rho` the projection onto :math:`\|\delta\|\le\rho`,
    the same draw throughout; :math:`\varepsilon = \delta_q`. ``ascent_steps=1`` with the default step
    :math:`s=\rho` (normalised) is SAM, bit for bit.

    Attributes:
        ascent_steps: :math:`q \ge 1`.
        ascent_step_size: :math:`s > 0` (``None``: :math:`\rho`).
        ascent_normalized: Normalised ascent steps (default) or raw gradient steps.

    Example:
        >>> SAM(0.1, 0.05, ascent_steps=3).needs_oracle
        True
    """

    ascent_steps: int = field(default=1, kw_only=True)
    ascent_step_size: float | None = field(default=None, kw_only=True)
    ascent_normalized: bool = field(default=True, kw_only=True)
    name: ClassVar[str] = "SAM"
    normalises: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        _checks.positive_int("ascent_steps", self.ascent_steps)
        if self.ascent_step_size is not None:
            self._set("ascent_step_size", _checks.positive("ascent_step_size", self.ascent_step_size))
        if not isinstance(self.ascent_normalized, bool):
            raise ValueError(f"`ascent_normalized` must be True or False, "
                             f"got ascent_normalized={self.ascent_normalized!r}")

    @property
    def _plain(self) -> bool:
        return self.ascent_steps == 1 and self.ascent_step_size is None and self.ascent_normalized

    @property
    def oracles(self) -> frozenset:
        return frozenset() if self.ascent_steps == 1 else frozenset({"grad_at", "x"})

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        rho = self._radius()
        if self._plain:
            norm, fired = guarded_norm(g, eps)
            return Perturbation(scale_rows(g, rho * norm.reciprocal()), fired)
        s = rho if self.ascent_step_size is None else self.ascent_step_size
        fired, delta, gi = no_guard(g), None, g
        for i in range(self.ascent_steps):
            if i > 0:
                gi = require(self, "grad_at", grad_at)(require(self, "x", x) + delta)
            if self.ascent_normalized:
                norm, f = guarded_norm(gi, eps)
                fired = fired | f
                step = scale_rows(gi, s * norm.reciprocal())
            else:
                step = scale_rows(gi, s)
            if delta is None and self.ascent_normalized and s <= rho:
                delta = step  # ||s ĝ|| <= s <= rho: the projection is the identity (and q=1, s=rho is SAM exactly)
            else:
                delta = _project(step if delta is None else delta + step, rho)
        return Perturbation(delta, fired)


@dataclass(frozen=True, repr=False)
class DNSAM(Perturbing):
    r"""Deterministic-normalisation SAM: :math:`\varepsilon = \rho\, g_\gamma / \|\nabla f(x)\|` (Compagnoni et al.).

    Near critical points its SDE models are not to be trusted [measured, not derived]: their drift and diffusion
    scale as :math:`\rho/\|\nabla f\|`, unbounded as :math:`\nabla f\to0`. On the quadratic saddle
    :math:`\tfrac12(x_1^2-x_2^2)` with noise variance 0.01 (where the perturbation's expansion is exact),
    :math:`\eta=0.05`, :math:`T=5`, from :math:`(0.2, 0)`: the fraction of paths with :math:`|x_2|>0.5` is 0.14
    discrete against 0.05 for the order-1 SDE at :math:`\rho=0.1` (SGD: 0.81 and 0.83); on the non-convex model of
    the saddle studies they disagree in either direction (README, saddle attraction and saddle escape).
    """

    name: ClassVar[str] = "DNSAM"
    normalises: ClassVar[bool] = True
    base_oracles: ClassVar[frozenset] = frozenset({"full_grad"})

    @property
    def affine_noise(self) -> AffineNoise:
        return AffineNoise("dnsam")

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        rho = self._radius()
        norm, fired = guarded_norm(require(self, "full_grad", full_grad), eps)
        return Perturbation(scale_rows(g, rho * norm.reciprocal()), fired)


@dataclass(frozen=True, repr=False)
class UnifiedSAM(Perturbing):
    r"""Unified SAM: :math:`\varepsilon = \rho\,(1-\lambda+\lambda/\|g_\gamma\|)\, g_\gamma` (Oikonomou & Loizou).

    ``lam=0`` is USAM and ``lam=1`` is SAM, bit for bit.

    Example:
        >>> UnifiedSAM(0.05, 0.1, 0.5).lam
        0.5
    """

    lam: float = 0.5
    name: ClassVar[str] = "UnifiedSAM"
    normalises: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        self._set("lam", _checks.unit_interval("lam", self.lam))

    @property
    def affine_noise(self) -> AffineNoise | None:
        return AffineNoise("usam", every_order_on_quadratics=True) if self.lam == 0.0 else None

    def jacobian_factor(self) -> list[float] | None:
        return USAM.jacobian_factor(self) if self.lam == 0.0 else None

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        if self.lam == 0.0:  # no norm at all: USAM exactly, and no guard to fire
            return USAM.perturbation(self, g, eps=eps)
        rho = self._radius()
        norm, fired = guarded_norm(g, eps)
        return Perturbation(scale_rows(g, rho * ((1.0 - self.lam) + self.lam * norm.reciprocal())), fired)


@dataclass(frozen=True, repr=False)
class EigenSAM(Perturbing):
    r"""Eigen-SAM (Luo et al., NeurIPS 2024; as in the official code).

    .. math:: \varepsilon = \rho\big(\hat g_\gamma + \alpha\, s\, v_\perp\big),\quad
              s = \mathrm{sign}\langle g_\gamma, v\rangle,\quad
              v_\perp = v - \langle \hat g_\gamma, v\rangle \hat g_\gamma

    not renormalised, so :math:`\|\varepsilon\| = \rho\sqrt{1+\alpha^2(1-c^2)}`, :math:`c = \langle\hat g_\gamma, v\rangle`.
    :math:`v` estimates the top Hessian eigenvector of the current stochastic loss by ``power_iters`` power
    iterations (dominant in magnitude, as the official code), warm-started from the previous ``v`` and
    refreshed every ``refresh_every`` steps; it is computed before the first step with
    ``init_power_iters`` iterations (the official code's first steps are USAM; not copied). ``sign(0)``
    is taken as ``+1``.
    """

    alpha: float = 0.2
    refresh_every: int = field(default=100, kw_only=True)
    power_iters: int = field(default=5, kw_only=True)
    init_power_iters: int = field(default=20, kw_only=True)
    name: ClassVar[str] = "EigenSAM"
    normalises: ClassVar[bool] = True
    base_oracles: ClassVar[frozenset] = frozenset({"eigenvector"})

    def __post_init__(self):
        super().__post_init__()
        self._set("alpha", _checks.nonneg("alpha", self.alpha))
        _checks.positive_int("refresh_every", self.refresh_every)
        _checks.positive_int("power_iters", self.power_iters)
        _checks.positive_int("init_power_iters", self.init_power_iters)

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        rho = self._radius()
        v = require(self, "v", v)
        norm, fired = guarded_norm(g, eps)
        g_hat = g / norm.unsqueeze(-1)
        c = (g_hat * v).sum(dim=-1, keepdim=True)
        sign = torch.where((g * v).sum(dim=-1, keepdim=True) >= 0, 1.0, -1.0).to(g.dtype)
        return Perturbation(rho * (g_hat + self.alpha * sign * (v - c * g_hat)), fired)


@dataclass(frozen=True, repr=False)
class ASAM(Perturbing):
    r"""Adaptive SAM (Kwon et al. 2021; ``davda54/sam`` with ``adaptive=True``), MATH §2.2.

    .. math:: \varepsilon_\gamma(x) = \rho\,\frac{T^2 g_\gamma}{\|T g_\gamma\|},\qquad T = \mathrm{diag}(|x| + c)

    per path, all coordinates together; ``offset`` is :math:`c` (``davda54/sam``: 0; Kwon et al.: a small
    :math:`c > 0` so that zero weights still move). The norm is guarded as everywhere in the toolkit,
    :math:`\max(\|Tg\|, \epsilon)`, where ``davda54/sam`` divides by :math:`\|Tg\| + 10^{-12}`: the two differ by a
    relative :math:`10^{-12}/\|Tg\|` in :math:`\varepsilon` away from the guard.

    Example:
        >>> ASAM(0.1, 0.5, offset=0.01).oracles
        frozenset({'x'})
    """

    offset: float = 0.0
    name: ClassVar[str] = "ASAM"
    normalises: ClassVar[bool] = True
    base_oracles: ClassVar[frozenset] = frozenset({"x"})

    def __post_init__(self):
        super().__post_init__()
        self._set("offset", _checks.nonneg("offset", self.offset))

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        rho = self._radius()
        T = require(self, "x", x).abs()
        if self.offset != 0.0:
            T = T + self.offset
        Tg = T * g
        norm, fired = guarded_norm(Tg, eps)
        return Perturbation(scale_rows(T * Tg, rho * norm.reciprocal()), fired)


def power_iteration(hvp, v: Tensor, iters: int, eps: float) -> Tensor:
    r"""``iters`` steps of :math:`v \leftarrow Hv/\|Hv\|` per path (dominant eigenvector in magnitude).

    Args:
        hvp: ``(n, d) -> (n, d)`` applying each path's Hessian.
        v: Start vectors, ``(n, d)``.
    """
    for _ in range(iters):
        w = hvp(v)
        v = w / guarded_norm(w, eps)[0].unsqueeze(-1)
    return v
