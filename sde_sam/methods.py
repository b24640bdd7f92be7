r"""SGD, USAM, SAM, DNSAM, Unified SAM, Eigen-SAM, Two-step USAM and Hessian USAM, each defined once by its
perturbation (MATH §2, §2.1), all with optional heavy-ball or Nesterov momentum.

Every method is the perturbed stochastic-gradient step

.. math:: x_{k+1} = x_k - \eta\,\nabla f_{\gamma_k}\big(x_k + \varepsilon_{\gamma_k}(x_k)\big)

with the same draw :math:`\gamma_k` at both points. A method here is a frozen dataclass of
hyper-parameters plus :meth:`Method.perturbation`; the discrete step (:mod:`sde_sam.discrete`) and the SDE
models (:mod:`sde_sam.drift`, :mod:`sde_sam.diffusion`) derive from it.

Momentum (MATH §2.1) acts on the effective gradient :math:`G_k=\nabla f_{\gamma_k}(x_k+\varepsilon_{\gamma_k}(x_k))`
exactly as ``torch.optim.SGD(momentum=β, nesterov=..., dampening=0)`` does on a gradient, with a per-path buffer
:math:`u_0=0`: heavy ball :math:`u_{k+1}=\beta u_k+G_k,\ x_{k+1}=x_k-\eta u_{k+1}`; Nesterov
:math:`x_{k+1}=x_k-\eta(G_k+\beta u_{k+1})`. ``momentum=0`` is the plain method, bit for bit.

Perturbing methods need ``rho``: it has no default. A method built without it (``USAM(0.1)``) is a template
whose radius a study sets per learning rate (:meth:`Method.with_rho`); using it as is raises a ``ValueError``
naming ``rho`` (``rho=0`` is allowed and makes the method SGD).

Every division by a norm is guarded, :math:`\|u\| \to \max(\|u\|, \epsilon)`, with ``eps`` a keyword
(default ``1e-12`` in float64, ``1e-7`` otherwise) and the guard's firings counted per path.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from numbers import Real
from typing import Callable, ClassVar

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
    r"""Base class: a learning rate, a perturbation and optional momentum. Subclasses are the rows of MATH §2's table.

    Attributes:
        lr: Learning rate :math:`\eta > 0`.
        eps: Norm guard (``None``: the problem's default, see the module docstring).
        momentum: Momentum :math:`\beta\in[0,1)` on the effective gradient (0: none), as ``torch.optim.SGD``.
        nesterov: Nesterov's form instead of heavy ball (needs ``momentum > 0``, as ``torch.optim.SGD``).
    """

    lr: float
    eps: float | None = field(default=None, kw_only=True)
    momentum: float = field(default=0.0, kw_only=True)
    nesterov: bool = field(default=False, kw_only=True)

    name: ClassVar[str] = "method"
    #: False for SGD, whose step needs a single gradient.
    perturbs: ClassVar[bool] = True
    #: True when the perturbation needs the full-batch gradient (DNSAM).
    uses_full_grad: ClassVar[bool] = False
    #: True when the perturbation needs the top Hessian eigenvector (Eigen-SAM).
    uses_eigenvector: ClassVar[bool] = False
    #: True when the perturbation needs ``hvp``/``grad_at`` of the same draw (Two-step USAM, Hessian USAM).
    needs_oracle: ClassVar[bool] = False
    #: True when the perturbation divides by a norm, so the norm guard can fire (SAM, DNSAM, UnifiedSAM, EigenSAM).
    normalises: ClassVar[bool] = False

    def __post_init__(self):
        self._set("lr", _checks.positive("lr", self.lr))
        if self.eps is not None:
            self._set("eps", _checks.positive("eps", self.eps))
        m = self.momentum
        if isinstance(m, bool) or not isinstance(m, Real) or not (0.0 <= m < 1.0):
            raise ValueError(f"`momentum` must be a number in [0, 1), got momentum={m!r}")
        self._set("momentum", float(m))
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"`nesterov` must be True or False, got nesterov={self.nesterov!r}")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("`nesterov=True` needs momentum > 0 (as torch.optim.SGD), got momentum=0.0")

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # frozen dataclass: store the validated (float) value

    @property
    def rho(self) -> float:
        return 0.0

    def check_ready(self) -> None:
        """Raise a ``ValueError`` naming ``rho`` if a perturbing method was built without it."""

    def with_rho(self, rho: float) -> "Method":
        """A copy with perturbation radius ``rho`` (used by studies with ``rho = c * lr**p``)."""
        return dataclasses.replace(self, rho=rho)

    def with_lr(self, lr: float) -> "Method":
        return dataclasses.replace(self, lr=lr)

    def perturbation(self, g: Tensor, *, eps: float, full_grad: Tensor | None = None, v: Tensor | None = None,
                     hvp: Callable[[Tensor], Tensor] | None = None,
                     grad_at: Callable[[Tensor], Tensor] | None = None, x: Tensor | None = None) -> Perturbation:
        r"""The perturbation :math:`\varepsilon_\gamma(x)` from the stochastic gradient ``g: (n, d)``.

        Args:
            g: Stochastic gradients :math:`\nabla f_\gamma(x)`, ``(n, d)``.
            eps: Norm guard.
            full_grad: Full-batch gradients :math:`\nabla f(x)`, if :attr:`uses_full_grad`.
            v: Unit top-eigenvector estimates, ``(n, d)``, if :attr:`uses_eigenvector`.
            hvp: ``u -> ∇²f_γ(x) u`` over ``(n, d)`` for the same draws at the same points, if :attr:`needs_oracle`.
            grad_at: ``y -> ∇f_γ(y)`` over ``(n, d)`` for the same draws, if :attr:`needs_oracle`.
            x: The points ``(n, d)`` themselves (Two-step USAM evaluates ``grad_at(x + ρ g)``).
        """
        raise NotImplementedError

    def update(self, x: Tensor, G: Tensor, buffer: Tensor | None) -> tuple[Tensor, Tensor | None]:
        r"""The step from the effective gradient ``G`` (MATH §2.1), as ``torch.optim.SGD`` with dampening 0.

        Without momentum :math:`x-\eta G` (``buffer`` ignored, ``None`` returned). With momentum
        :math:`u'=\beta u+G` and :math:`x-\eta u'` (heavy ball) or :math:`x-\eta(G+\beta u')` (Nesterov).

        Args:
            x: ``(n, d)`` points.
            G: ``(n, d)`` effective gradients.
            buffer: ``(n, d)`` momentum buffers :math:`u` (``None``: zeros, the start).

        Returns:
            The next points and the next buffer.
        """
        if self.momentum == 0.0:
            return x - self.lr * G, None
        beta = self.momentum
        u = G if buffer is None else buffer * beta + G  # torch.optim.SGD: buf.mul_(β).add_(G); first buf = G
        return x - self.lr * (G + beta * u if self.nesterov else u), u

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

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        return Perturbation(torch.zeros_like(g), torch.zeros(g.shape[0], dtype=torch.bool, device=g.device))


@dataclass(frozen=True)
class _Radius(Method):
    rho: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.rho is not None:
            self._set("rho", _checks.nonneg("rho", self.rho))

    def check_ready(self) -> None:
        if self.rho is None:
            raise ValueError(f"`rho` is required for {self.name}: pass it, e.g. {self.name}(lr={self.lr:g}, rho=0.05) "
                             f"(rho=0 makes it SGD), got rho=None")

    def _radius(self) -> float:
        self.check_ready()
        return self.rho


def _scale(g: Tensor, scale: Tensor | float) -> Tensor:
    # One expression shared by USAM, SAM, DNSAM and Unified SAM, so that their special cases agree bit for bit.
    return (scale * g) if isinstance(scale, float) else scale.unsqueeze(-1) * g


@dataclass(frozen=True)
class USAM(_Radius):
    r"""Unnormalised SAM: :math:`\varepsilon = \rho\, g_\gamma` (Compagnoni et al.; Andriushchenko & Flammarion).

    Example:
        >>> USAM(lr=0.05, rho=0.1)
        USAM(lr=0.05, eps=None, momentum=0.0, nesterov=False, rho=0.1)
    """

    name: ClassVar[str] = "USAM"

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        no = torch.zeros(g.shape[0], dtype=torch.bool, device=g.device)
        return Perturbation(_scale(g, self._radius()), no)


@dataclass(frozen=True)
class SAM(_Radius):
    r"""SAM: :math:`\varepsilon = \rho\, g_\gamma / \|g_\gamma\|` (Foret et al.)."""

    name: ClassVar[str] = "SAM"
    normalises: ClassVar[bool] = True

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        norm, fired = guarded_norm(g, eps)
        return Perturbation(_scale(g, self._radius() * norm.reciprocal()), fired)


@dataclass(frozen=True)
class DNSAM(_Radius):
    r"""Deterministic-normalisation SAM: :math:`\varepsilon = \rho\, g_\gamma / \|\nabla f(x)\|` (Compagnoni et al.)."""

    name: ClassVar[str] = "DNSAM"
    normalises: ClassVar[bool] = True
    uses_full_grad: ClassVar[bool] = True

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        norm, fired = guarded_norm(full_grad, eps)
        return Perturbation(_scale(g, self._radius() * norm.reciprocal()), fired)


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
    normalises: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        self._set("lam", _checks.unit_interval("lam", self.lam))

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        if self.lam == 0.0:  # no norm at all: USAM exactly, and no guard to fire
            return USAM.perturbation(self, g, eps=eps)
        norm, fired = guarded_norm(g, eps)
        return Perturbation(_scale(g, self._radius() * ((1.0 - self.lam) + self.lam * norm.reciprocal())), fired)


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
    normalises: ClassVar[bool] = True
    uses_eigenvector: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        self._set("alpha", _checks.nonneg("alpha", self.alpha))
        _checks.positive_int("refresh_every", self.refresh_every)
        _checks.positive_int("power_iters", self.power_iters)
        _checks.positive_int("init_power_iters", self.init_power_iters)

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        norm, fired = guarded_norm(g, eps)
        g_hat = g / norm.unsqueeze(-1)
        c = (g_hat * v).sum(dim=-1, keepdim=True)
        sign = torch.where((g * v).sum(dim=-1, keepdim=True) >= 0, 1.0, -1.0).to(g.dtype)
        return Perturbation(self._radius() * (g_hat + self.alpha * sign * (v - c * g_hat)), fired)


def _oracle(method: Method, name: str, value):
    if value is None:
        raise ValueError(f"{method.name}'s perturbation needs `{name}` (the caller passes it when "
                         f"`needs_oracle` is True), got {name}=None")
    return value


@dataclass(frozen=True)
class TwoStepUSAM(_Radius):
    r"""Two-step USAM ("USAM2", Bolte, Le & Pauwels 2025): the USAM ascent taken twice, with the same draw.

    .. math:: \varepsilon_\gamma(x) = \rho\,\nabla f_\gamma\big(x + \rho\,\nabla f_\gamma(x)\big)

    Three gradients per step. At a critical point the effective gradient's Jacobian is
    :math:`H(I+\rho H+\rho^2H^2)`; :math:`1+\rho\lambda+\rho^2\lambda^2>0`, so its eigenvalue filter
    (:func:`sde_sam.theory.two_step_usam_filter`) excludes negative curvature, unlike USAM's.
    Provenance: **[reconstructed]** (MATH §2.1) — the paper's text could not be read here; its public reviews
    describe both variants as USAM variants whose filters exclude negative curvature, which this has.

    Example:
        >>> TwoStepUSAM(lr=0.05, rho=0.1).needs_oracle
        True
    """

    name: ClassVar[str] = "TwoStepUSAM"
    needs_oracle: ClassVar[bool] = True

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        rho = self._radius()
        y = _oracle(self, "x", x) + _scale(g, rho)
        no = torch.zeros(g.shape[0], dtype=torch.bool, device=g.device)
        return Perturbation(_scale(_oracle(self, "grad_at", grad_at)(y), rho), no)


@dataclass(frozen=True)
class HessianUSAM(_Radius):
    r"""Hessian USAM ("HUSAM", Bolte, Le & Pauwels 2025): the perturbation is one Hessian-vector product.

    .. math:: \varepsilon_\gamma(x) = \rho\,\nabla^2 f_\gamma(x)\,\nabla f_\gamma(x)

    Two gradients and one HVP per step. At a critical point the effective gradient's Jacobian is
    :math:`H(I+\rho H^2)`, whose factor :math:`1+\rho\lambda^2>0` makes its eigenvalue filter
    (:func:`sde_sam.theory.hessian_usam_filter`: :math:`0\le\lambda(1+\rho\lambda^2)\le2/\eta`) exclude
    negative curvature. Provenance: **[reconstructed]** (MATH §2.1); a public review of the paper compares its
    filter with the USAM edge :math:`\lambda+\rho\lambda^2` and notes "a factor of :math:`\lambda` in the term
    linear in :math:`\rho`", consistent with :math:`\lambda+\rho\lambda^3` here.

    Example:
        >>> HessianUSAM(lr=0.05, rho=0.1).rho
        0.1
    """

    name: ClassVar[str] = "HessianUSAM"
    needs_oracle: ClassVar[bool] = True

    def perturbation(self, g, *, eps, full_grad=None, v=None, hvp=None, grad_at=None, x=None):
        rho = self._radius()
        no = torch.zeros(g.shape[0], dtype=torch.bool, device=g.device)
        return Perturbation(_scale(_oracle(self, "hvp", hvp)(g), rho), no)


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


METHODS: dict[str, type[Method]] = {m.name.lower(): m for m in (SGD, USAM, SAM, DNSAM, UnifiedSAM, EigenSAM,
                                                               TwoStepUSAM, HessianUSAM)}
"""Methods by lower-case name (for the CLI and configs)."""
