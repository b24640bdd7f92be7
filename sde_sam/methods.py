r"""SGD, USAM, SAM, DNSAM, Unified SAM and Eigen-SAM, each defined once by its perturbation (MATH §2).

Every method is the perturbed stochastic-gradient step

.. math:: x_{k+1} = x_k - \eta\,\nabla f_{\gamma_k}\big(x_k + \varepsilon_{\gamma_k}(x_k)\big)

with the same draw :math:`\gamma_k` at both points. A method here is a frozen dataclass of
hyper-parameters plus :meth:`Method.perturbation`; the discrete step (:mod:`sde_sam.discrete`) and the SDE
models (:mod:`sde_sam.drift`, :mod:`sde_sam.diffusion`) derive from it.

Every division by a norm is guarded, :math:`\|u\| \to \max(\|u\|, \epsilon)`, with ``eps`` a keyword
(default ``1e-12`` in float64, ``1e-7`` otherwise) and the guard's firings counted per path.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from . import _checks


@dataclass(frozen=True)
class Perturbation:
    """A batch of perturbations and where the norm guard fired.

    Attributes:
        eps: ``(n, d)`` perturbation vectors :math:`\\varepsilon_\\gamma(x)`.
        guarded: ``(n,)`` bool, True where a norm was below the guard ``eps`` and was clamped.
    """

    eps: Tensor
    guarded: Tensor


def guarded_norm(u: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    r"""Per-path :math:`\max(\|u\|, \epsilon)` and the mask where the guard fired: ``(n, d) -> (n,), (n,)``."""
    norm = torch.linalg.vector_norm(u, dim=-1)
    return norm.clamp_min(eps), norm < eps


@dataclass(frozen=True)
class Method:
    """Base class: a learning rate and a perturbation. Subclasses are the rows of MATH §2's table.

    Attributes:
        lr: Learning rate :math:`\\eta > 0`.
        eps: Norm guard (``None``: the problem's default, see the module docstring).
    """

    lr: float
    eps: float | None = field(default=None, kw_only=True)

    name: ClassVar[str] = "method"
    #: False for SGD, whose step needs a single gradient.
    perturbs: ClassVar[bool] = True
    #: True when the perturbation needs the full-batch gradient (DNSAM).
    uses_full_grad: ClassVar[bool] = False
    #: True when the perturbation needs the top Hessian eigenvector (Eigen-SAM).
    uses_eigenvector: ClassVar[bool] = False

    def __post_init__(self):
        self._set("lr", _checks.positive("lr", self.lr))
        if self.eps is not None:
            self._set("eps", _checks.positive("eps", self.eps))

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # frozen dataclass: store the validated (float) value

    @property
    def rho(self) -> float:
        return 0.0

    def with_rho(self, rho: float) -> "Method":
        """A copy with perturbation radius ``rho`` (used by studies with ``rho = c * lr**p``)."""
        return dataclasses.replace(self, rho=rho)

    def with_lr(self, lr: float) -> "Method":
        return dataclasses.replace(self, lr=lr)

    def perturbation(self, g: Tensor, *, eps: float, full_grad: Tensor | None = None,
                     v: Tensor | None = None) -> Perturbation:
        """The perturbation :math:`\\varepsilon_\\gamma(x)` from the stochastic gradient ``g: (n, d)``.

        Args:
            g: Stochastic gradients :math:`\\nabla f_\\gamma(x)`, ``(n, d)``.
            eps: Norm guard.
            full_grad: Full-batch gradients :math:`\\nabla f(x)`, if :attr:`uses_full_grad`.
            v: Unit top-eigenvector estimates, ``(n, d)``, if :attr:`uses_eigenvector`.
        """
        raise NotImplementedError

    def describe(self) -> dict:
        """The hyper-parameters as a flat dict (for tables and configs)."""
        return {"method": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


@dataclass(frozen=True)
class SGD(Method):
    r"""Stochastic gradient descent: :math:`\varepsilon = 0`.

    Example:
        >>> SGD(0.1).rho
        0.0
    """

    name: ClassVar[str] = "SGD"
    perturbs: ClassVar[bool] = False

    def with_rho(self, rho: float) -> "Method":
        if rho != 0:
            raise ValueError(f"`rho` must be 0 for SGD, got rho={rho!r}")
        return self

    def perturbation(self, g, *, eps, full_grad=None, v=None):
        return Perturbation(torch.zeros_like(g), torch.zeros(g.shape[0], dtype=torch.bool, device=g.device))


@dataclass(frozen=True)
class _Radius(Method):
    rho: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        self._set("rho", _checks.nonneg("rho", self.rho))


def _scale(g: Tensor, scale: Tensor | float) -> Tensor:
    # One expression shared by USAM, SAM, DNSAM and Unified SAM, so that their special cases agree bit for bit.
    return (scale * g) if isinstance(scale, float) else scale.unsqueeze(-1) * g


@dataclass(frozen=True)
class USAM(_Radius):
    r"""Unnormalised SAM: :math:`\varepsilon = \rho\, g_\gamma` (Compagnoni et al.; Andriushchenko & Flammarion).

    Example:
        >>> USAM(lr=0.05, rho=0.1)
        USAM(lr=0.05, eps=None, rho=0.1)
    """

    name: ClassVar[str] = "USAM"

    def perturbation(self, g, *, eps, full_grad=None, v=None):
        no = torch.zeros(g.shape[0], dtype=torch.bool, device=g.device)
        return Perturbation(_scale(g, self.rho), no)


@dataclass(frozen=True)
class SAM(_Radius):
    r"""SAM: :math:`\varepsilon = \rho\, g_\gamma / \|g_\gamma\|` (Foret et al.)."""

    name: ClassVar[str] = "SAM"

    def perturbation(self, g, *, eps, full_grad=None, v=None):
        norm, fired = guarded_norm(g, eps)
        return Perturbation(_scale(g, self.rho * norm.reciprocal()), fired)


@dataclass(frozen=True)
class DNSAM(_Radius):
    r"""Deterministic-normalisation SAM: :math:`\varepsilon = \rho\, g_\gamma / \|\nabla f(x)\|` (Compagnoni et al.)."""

    name: ClassVar[str] = "DNSAM"
    uses_full_grad: ClassVar[bool] = True

    def perturbation(self, g, *, eps, full_grad=None, v=None):
        norm, fired = guarded_norm(full_grad, eps)
        return Perturbation(_scale(g, self.rho * norm.reciprocal()), fired)


@dataclass(frozen=True)
class UnifiedSAM(_Radius):
    r"""Unified SAM: :math:`\varepsilon = \rho\,(1-\lambda+\lambda/\|g_\gamma\|)\, g_\gamma` (Oikonomou & Loizou).

    ``lam=0`` is USAM and ``lam=1`` is SAM, bit for bit.

    Example:
        >>> UnifiedSAM(0.05, 0.1, 0.5).lam
        0.5
    """

    lam: float = 0.5
    name: ClassVar[str] = "UnifiedSAM"

    def __post_init__(self):
        super().__post_init__()
        self._set("lam", _checks.unit_interval("lam", self.lam))

    def perturbation(self, g, *, eps, full_grad=None, v=None):
        if self.lam == 0.0:  # no norm at all: USAM exactly, and no guard to fire
            return USAM.perturbation(self, g, eps=eps)
        norm, fired = guarded_norm(g, eps)
        return Perturbation(_scale(g, self.rho * ((1.0 - self.lam) + self.lam * norm.reciprocal())), fired)


@dataclass(frozen=True)
class EigenSAM(_Radius):
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
    uses_eigenvector: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        self._set("alpha", _checks.nonneg("alpha", self.alpha))
        _checks.positive_int("refresh_every", self.refresh_every)
        _checks.positive_int("power_iters", self.power_iters)
        _checks.positive_int("init_power_iters", self.init_power_iters)

    def perturbation(self, g, *, eps, full_grad=None, v=None):
        norm, fired = guarded_norm(g, eps)
        g_hat = g / norm.unsqueeze(-1)
        c = (g_hat * v).sum(dim=-1, keepdim=True)
        sign = torch.where((g * v).sum(dim=-1, keepdim=True) >= 0, 1.0, -1.0).to(g.dtype)
        return Perturbation(self.rho * (g_hat + self.alpha * sign * (v - c * g_hat)), fired)


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


METHODS: dict[str, type[Method]] = {m.name.lower(): m for m in (SGD, USAM, SAM, DNSAM, UnifiedSAM, EigenSAM)}
"""Methods by lower-case name (for the CLI and configs)."""
