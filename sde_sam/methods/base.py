r"""The method template (MATH §2, §2.1, §2.3): hyper-parameters, the options every method takes, the base step,
and what each method declares about itself.

Every method is the perturbed stochastic-gradient step

.. math:: x_{k+1} = x_k - \eta\,\nabla f_{\gamma_k}\big(x_k + \varepsilon_{\gamma_k}(x_k)\big)

with the same draw :math:`\gamma_k` at both points. A method is a frozen dataclass of hyper-parameters plus
:meth:`Method.perturbation`; the discrete step (:mod:`sde_sam.discrete`) and the SDE models
(:mod:`sde_sam.drift`, :mod:`sde_sam.diffusion`) derive from it.

**Declarations** (read by the rest of the toolkit instead of testing types):

- :attr:`Method.oracles`: what the perturbation needs besides the stochastic gradient — ``"full_grad"``
  (:math:`\nabla f(x)`), ``"eigenvector"`` (a top-eigenvector estimate), ``"hvp"``/``"grad_at"`` (the same draw's
  Hessian-vector product at ``x`` and gradient elsewhere), ``"x"`` (the point). :mod:`sde_sam.methods.oracles`
  wires them, once, for the discrete step and for every SDE model.
- :attr:`Method.affine_noise`: how the effective gradient depends on additive Gaussian noise :math:`Z`
  (closed-form SDE models, exact moments, coupled estimates).
- :meth:`Method.jacobian_factor`: the linearisation of the effective gradient at a critical point, as the
  polynomial :math:`a(\lambda)` of a Hessian eigenvalue (eigenvalue filters, MATH §7).
- :attr:`Method.perturbs`, :attr:`Method.normalises`: whether there is a perturbation, and whether it divides
  by a norm (so that the guard can fire).

**Options every method takes** (keyword-only): ``momentum``/``nesterov`` (MATH §2.1: as
``torch.optim.SGD(momentum=β, nesterov=..., dampening=0)`` on the effective gradient, per-path buffer
:math:`u_0=0`) and ``weight_decay`` (MATH §2.3: :math:`G \leftarrow G + \lambda x_k` at the unperturbed point,
before momentum, as ``torch.optim.SGD(weight_decay=λ)`` under ``davda54/sam``). Perturbing methods also take
``micro_batch=m`` (m-SAM, MATH §2.2). ``momentum=0`` and ``weight_decay=0`` are the plain method, bit for bit.

The learning rate is read in one place (:meth:`Method.update`) and the radius in one (:meth:`Method.radius`).

Every division by a norm is guarded, :math:`\|u\| \to \max(\|u\|, \epsilon)`, with ``eps`` a keyword
(default ``1e-12`` in float64, ``1e-7`` otherwise) and the guard's firings counted per path.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from numbers import Real
from typing import Callable, ClassVar

import torch
from torch import Tensor

from .. import _checks, schedules

ORACLES = frozenset({"full_grad", "eigenvector", "hvp", "grad_at", "x"})
"""Everything a perturbation may ask for besides the stochastic gradient."""

#: Options added after the first release: shown by ``repr``/``describe`` only when set, so that existing
#: tables and configs stay as they were.
_OPTIONS = {"weight_decay": 0.0, "micro_batch": None, "ascent_steps": 1, "ascent_step_size": None,
            "ascent_normalized": True, "lr_schedule": None, "rho_schedule": None}


@dataclass(frozen=True)
class Perturbation:
    """A batch of perturbations and where the norm guard fired.

    Attributes:
        eps: ``(n, d)`` perturbation vectors :math:`\\varepsilon_\\gamma(x)`.
        guarded: ``(n,)`` bool, True where a norm was below the guard ``eps`` and was clamped.
    """

    eps: Tensor
    guarded: Tensor


@dataclass(frozen=True)
class AffineNoise:
    r"""How a method's effective gradient depends on additive Gaussian gradient noise :math:`Z` (MATH §3.2, §3.4).

    Attributes:
        kind: ``"sgd"`` (:math:`G = \nabla f + Z`), ``"usam"`` (:math:`(I+\rho H)Z` to first order in
            :math:`\rho`) or ``"dnsam"`` (:math:`(I+\rho H/\|\nabla f\|)Z`).
        every_order_on_quadratics: The affine form is exact at every model order on a quadratic (no third
            derivative): USAM's model is then Ornstein–Uhlenbeck.
    """

    kind: str
    every_order_on_quadratics: bool = False


def guarded_norm(u: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    r"""Per-path :math:`\max(\|u\|, \epsilon)` and the mask where the guard fired: ``(n, d) -> (n,), (n,)``."""
    norm = torch.linalg.vector_norm(u, dim=-1)
    return norm.clamp_min(eps), norm < eps


def no_guard(g: Tensor) -> Tensor:
    """The ``(n,)`` all-False guard mask of a perturbation without a norm."""
    return torch.zeros(g.shape[0], dtype=torch.bool, device=g.device)


def scale_rows(g: Tensor, scale: Tensor | float) -> Tensor:
    # One expression shared by USAM, SAM, DNSAM, Unified SAM and ASAM, so that their special cases agree bit for bit.
    return (scale * g) if isinstance(scale, float) else scale.unsqueeze(-1) * g


@dataclass(frozen=True, repr=False)
class Method:
    r"""Base class: a learning rate, a perturbation and the options of every method. Subclasses are the rows of
    MATH §2's table.

    Attributes:
        lr: Learning rate :math:`\eta > 0`; or a schedule (MATH §2.3): a shape on the SDE clock from
            :mod:`sde_sam.schedules` or any callable ``k -> value`` of the step index. A schedule is stored in
            :attr:`lr_schedule` and ``lr`` holds its base value :math:`\eta` (the clock :math:`\tau = k\eta` and the
            value a study shrinks); step ``k`` uses :meth:`lr_at`.
        lr_schedule: The schedule of the learning rate (``None``: constant). Set through ``lr=``.
        eps: Norm guard (``None``: the problem's default, see the module docstring).
        momentum: Momentum :math:`\beta\in[0,1)` on the effective gradient (0: none), as ``torch.optim.SGD``.
        nesterov: Nesterov's form instead of heavy ball (needs ``momentum > 0``, as ``torch.optim.SGD``).
        weight_decay: :math:`\lambda \ge 0`: the base step uses :math:`G + \lambda x_k` (MATH §2.3), as
            ``torch.optim.SGD(weight_decay=λ)``; the perturbation does not see it (for an L2 term it sees, use
            :func:`sde_sam.problems.with_l2`).
    """

    lr: float
    eps: float | None = field(default=None, kw_only=True)
    momentum: float = field(default=0.0, kw_only=True)
    nesterov: bool = field(default=False, kw_only=True)
    weight_decay: float = field(default=0.0, kw_only=True)
    lr_schedule: "schedules.Schedule | schedules.ByStep | None" = field(default=None, kw_only=True)

    name: ClassVar[str] = "method"
    #: False for SGD, whose step needs a single gradient.
    perturbs: ClassVar[bool] = True
    #: True when the perturbation divides by a norm, so the norm guard can fire (SAM, DNSAM, UnifiedSAM, ...).
    normalises: ClassVar[bool] = False
    #: The oracles the class's perturbation always needs (see :attr:`oracles`).
    base_oracles: ClassVar[frozenset] = frozenset()

    def __post_init__(self):
        self._resolve_schedule("lr")
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
        self._set("weight_decay", _checks.nonneg("weight_decay", self.weight_decay))

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # frozen dataclass: store the validated (float) value

    def _resolve_schedule(self, name: str) -> None:
        """``name=`` given a schedule: store it in ``<name>_schedule`` and its base value in ``name``. A copy
        with another base value (``with_lr``, ``with_rho``) rebases the schedule: same shape, new value."""
        base, sched = schedules.resolve(name, getattr(self, name))
        if sched is not None:
            self._set(name, base)
            self._set(f"{name}_schedule", sched)
            return
        sched = getattr(self, f"{name}_schedule")
        if sched is not None and base is not None and base != sched.base:
            self._set(f"{name}_schedule", sched.rebase(base))

    # -- declarations -----------------------------------------------------------------------------------
    @property
    def oracles(self) -> frozenset:
        """What :meth:`perturbation` needs besides the stochastic gradient (a subset of :data:`ORACLES`)."""
        return self.base_oracles

    @property
    def uses_full_grad(self) -> bool:
        """The perturbation needs the full-batch gradient (DNSAM)."""
        return "full_grad" in self.oracles

    @property
    def uses_eigenvector(self) -> bool:
        """The perturbation needs a top Hessian eigenvector estimate, carried as state (Eigen-SAM)."""
        return "eigenvector" in self.oracles

    @property
    def needs_oracle(self) -> bool:
        """The perturbation needs ``hvp``/``grad_at`` of the same draw or the point ``x`` (Two-step USAM, ASAM, ...)."""
        return bool(self.oracles & {"hvp", "grad_at", "x"})

    @property
    def affine_noise(self) -> AffineNoise | None:
        """How the effective gradient depends on additive Gaussian noise (order 1), or ``None`` if not affine."""
        return None

    def jacobian_factor(self) -> list[float] | None:
        r"""Coefficients, highest degree first, of :math:`a(\lambda)`: the eigenvalue of the Jacobian of the base
        step's gradient :math:`G+\lambda_{\rm wd}x` at a critical point along a Hessian eigenvector of eigenvalue
        :math:`\lambda` (MATH §2.1, §7); ``None`` when the step is not differentiable there or its Jacobian is not
        a function of :math:`\lambda` alone. Weight decay adds its :math:`\lambda_{\rm wd}` to the constant term
        (exact on quadratics, whose critical point is the fixed point) [derived]."""
        return None

    def _with_decay(self, coef: list[float]) -> list[float]:
        return coef if self.weight_decay == 0.0 else [*coef[:-1], coef[-1] + self.weight_decay]

    # -- hyper-parameters -------------------------------------------------------------------------------
    @property
    def rho(self) -> float:
        return 0.0

    def radius(self) -> float:
        """The perturbation radius :math:`\\rho` of a step (raises when a perturbing method was built without it)."""
        self.check_ready()
        return self.rho

    def check_ready(self) -> None:
        """Raise a ``ValueError`` naming ``rho`` if a perturbing method was built without it."""

    def check_problem(self, problem) -> None:
        """Raise a ``ValueError`` when an option does not fit ``problem`` (e.g. ``micro_batch``); before any work."""

    def micro_batches(self, problem) -> int:
        """Number :math:`k = B/m` of micro-batches a step splits its draw into (1: none)."""
        return 1

    def with_rho(self, rho: float) -> "Method":
        """A copy with perturbation radius ``rho`` (used by studies with ``rho = c * lr**p``)."""
        return dataclasses.replace(self, rho=rho)

    def with_lr(self, lr: float) -> "Method":
        """A copy with base learning rate ``lr`` (a schedule keeps its shape on the SDE clock)."""
        return dataclasses.replace(self, lr=lr)

    # -- schedules (MATH §2.3) ------------------------------------------------------------------------
    @property
    def scheduled(self) -> bool:
        """True when the learning rate or the radius changes from step to step."""
        return self.lr_schedule is not None or getattr(self, "rho_schedule", None) is not None

    def lr_at(self, k: int) -> float:
        r""":math:`\eta_k`, the learning rate of step ``k = 0, 1, ...``."""
        return self.lr if self.lr_schedule is None else self.lr_schedule.value(k, self.lr)

    def rho_at(self, k: int) -> float:
        r""":math:`\rho_k`, the radius of step ``k`` (0 for SGD)."""
        return self.rho

    def at(self, k: int) -> "Method":
        r"""The constant method of step ``k``: ``lr`` and ``rho`` fixed at :math:`\eta_k`, :math:`\rho_k`, no
        schedule (``self`` when nothing is scheduled). Every step of a scheduled method is this method's step."""
        if not self.scheduled:
            return self
        step = copy.copy(self)  # not dataclasses.replace: eta_k = 0 (a schedule's end) is a valid step
        step._set("lr", self.lr_at(k))
        step._set("lr_schedule", None)
        if hasattr(step, "rho_schedule"):
            step._set("rho", self.rho_at(k))
            step._set("rho_schedule", None)
        return step

    # -- the perturbation and the step ------------------------------------------------------------------
    def perturbation(self, g: Tensor, *, eps: float, full_grad: Tensor | None = None, v: Tensor | None = None,
                     hvp: Callable[[Tensor], Tensor] | None = None,
                     grad_at: Callable[[Tensor], Tensor] | None = None, x: Tensor | None = None) -> Perturbation:
        r"""The perturbation :math:`\varepsilon_\gamma(x)` from the stochastic gradient ``g: (n, d)``.

        Args:
            g: Stochastic gradients :math:`\nabla f_\gamma(x)`, ``(n, d)``.
            eps: Norm guard.
            full_grad: Full-batch gradients :math:`\nabla f(x)`, if ``"full_grad"`` is in :attr:`oracles`.
            v: Unit top-eigenvector estimates, ``(n, d)``, if ``"eigenvector"`` is in :attr:`oracles`.
            hvp: ``u -> ∇²f_γ(x) u`` over ``(n, d)`` for the same draws at the same points, if ``"hvp"``.
            grad_at: ``y -> ∇f_γ(y)`` over ``(n, d)`` for the same draws, if ``"grad_at"``.
            x: The points ``(n, d)`` themselves, if ``"x"``.
        """
        raise NotImplementedError

    def update(self, x: Tensor, G: Tensor, buffer: Tensor | None) -> tuple[Tensor, Tensor | None]:
        r"""The base step from the effective gradient ``G`` (MATH §2.1, §2.3), as ``torch.optim.SGD`` (dampening 0).

        Weight decay first, at the unperturbed point: :math:`G \leftarrow G + \lambda x`. Then without momentum
        :math:`x-\eta G` (``buffer`` ignored, ``None`` returned); with momentum :math:`u'=\beta u+G` and
        :math:`x-\eta u'` (heavy ball) or :math:`x-\eta(G+\beta u')` (Nesterov).

        Args:
            x: ``(n, d)`` points.
            G: ``(n, d)`` effective gradients.
            buffer: ``(n, d)`` momentum buffers :math:`u` (``None``: zeros, the start).

        Returns:
            The next points and the next buffer.
        """
        if self.weight_decay != 0.0:
            G = G.add(x, alpha=self.weight_decay)  # torch.optim.SGD: d_p = d_p.add(p, alpha=weight_decay)
        if self.momentum == 0.0:
            return x - self.lr * G, None
        beta = self.momentum
        u = G if buffer is None else buffer * beta + G  # torch.optim.SGD: buf.mul_(β).add_(G); first buf = G
        return x - self.lr * (G + beta * u if self.nesterov else u), u

    # -- description --------------------------------------------------------------------------------------
    def _shown_fields(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in _OPTIONS or value != _OPTIONS[f.name]:
                yield f.name, value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._shown_fields())})"

    def describe(self) -> dict:
        """The hyper-parameters as a flat dict (for tables and configs); options only when set."""
        return {"method": self.name, **{k: v.describe() if hasattr(v, "describe") else v
                                         for k, v in self._shown_fields()}}


@dataclass(frozen=True, repr=False)
class Perturbing(Method):
    r"""A method with a perturbation radius :math:`\rho` and the m-SAM option.

    Attributes:
        rho: Radius :math:`\rho \ge 0` (``None``: a template whose radius a study sets, :meth:`with_rho`); or a
            schedule (:mod:`sde_sam.schedules`, e.g. ``follow_lr(ρ)`` for :math:`\rho_k=\rho\,\eta_k/\eta`), stored
            in :attr:`rho_schedule` with its base value in ``rho``; step ``k`` uses :meth:`rho_at`.
        micro_batch: m-SAM (MATH §2.2): split each mini-batch of size :math:`B`, in order, into :math:`B/m`
            micro-batches of size ``m``, each with its own perturbation, and average their effective gradients.
            Mini-batch problems only; ``m`` must divide :math:`B`; ``None`` (or ``m = B``) is the plain method.
    """

    rho: float | None = None
    micro_batch: int | None = field(default=None, kw_only=True)
    rho_schedule: "schedules.Schedule | schedules.ByStep | schedules.FollowLR | None" = field(default=None,
                                                                                            kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        self._resolve_schedule("rho")
        if self.rho is not None:
            self._set("rho", _checks.nonneg("rho", self.rho))
        if self.micro_batch is not None:
            _checks.positive_int("micro_batch", self.micro_batch)

    def check_ready(self) -> None:
        if self.rho is None:
            raise ValueError(f"`rho` is required for {self.name}: pass it, e.g. {self.name}(lr={self.lr:g}, rho=0.05) "
                             f"(rho=0 makes it SGD), got rho=None")

    def check_problem(self, problem) -> None:
        if self.micro_batch is None:
            return
        from ..problems.finite_sum import FiniteSum

        if not isinstance(problem, FiniteSum):
            noise = "additive Gaussian" if problem.additive_gaussian else "no mini-batch"
            raise ValueError(f"`micro_batch` (m-SAM) needs a mini-batch problem (a FiniteSum), whose draws can be "
                             f"split; {type(problem).__name__} has {noise} gradient noise, "
                             f"got micro_batch={self.micro_batch}")
        B = problem.batch_size
        if B % self.micro_batch:
            raise ValueError(f"`micro_batch` must divide the batch size B={B} (one perturbation per micro-batch of "
                             f"size m), got micro_batch={self.micro_batch}")

    def rho_at(self, k: int) -> float:
        sched = self.rho_schedule
        if sched is None or self.rho is None:
            return self.rho
        if isinstance(sched, schedules.FollowLR):
            return self.rho * self.lr_at(k) / self.lr
        return sched.value(k, self.lr)

    def micro_batches(self, problem) -> int:
        # With rho = 0 there is no perturbation, so the split would change nothing but the rounding: not split.
        if self.micro_batch is None or self.rho == 0.0:
            return 1
        return problem.batch_size // self.micro_batch

    def _radius(self) -> float:
        return self.radius()


def check_method(method, *, ready: bool = True) -> Method:
    """The public boundary's check: ``method`` is an sde_sam :class:`Method` built with everything it needs
    (``ready=False``: a template whose radius a study sets per learning rate is fine)."""
    if not isinstance(method, Method):
        raise TypeError(f"`method` must be an sde_sam Method (SGD, USAM, SAM, ...), got {type(method).__name__}")
    if ready:
        method.check_ready()
    return method


def require(method: Method, name: str, value):
    """``value``, or a ``ValueError`` saying that ``method``'s perturbation needs the oracle ``name``."""
    if value is None:
        raise ValueError(f"{method.name}'s perturbation needs `{name}` (the caller passes what `oracles` "
                         f"declares), got {name}=None")
    return value
