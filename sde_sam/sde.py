r"""SDE models of the methods, torchsde-compatible (MATH §3).

.. math:: dX_t = b(X_t)\,dt + F(X_t)\,dW_t,\qquad b = -\tfrac{1}{1-\beta}\mathbb E_\gamma G^{(r)}_\gamma,\quad
          FF^\top = \tfrac{\eta}{(1-\beta)^2}\,\mathrm{Cov}_\gamma\big(G^{(r')}_\gamma\big)

(:math:`\beta` the method's momentum, 0 for the plain methods), or, with ``momentum_model="phase_space"``, the
underdamped Langevin model of :mod:`sde_sam.phase_space` on the state :math:`(X, V)` (MATH §3.5). How the
expectations over draws are formed is chosen by :func:`sde_sam.expectations.plan`: closed forms, exact
enumeration, ``K`` sampled draws, or — the default for mini-batch and non-affine Gaussian models — two draws
per solver step (:class:`sde_sam.solvers.TwoDraw`, MATH §4.1). A model does not integrate itself: the schemes
are in :mod:`sde_sam.solvers`.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from . import diffusion as diff
from . import expectations, phase_space
from .drift import check_order, model_gradients, usam_minibatch_drift
from .methods import Method, check_method, power_iteration
from .problems.base import Problem

DIFFUSIONS = ("factor", "paper")


class SDEModel:
    r"""The order-``r`` SDE model of a method on a problem. Build it with :func:`sde_model`.

    Implements torchsde's interface (``f``, ``g``, ``noise_type="general"``, ``sde_type="ito"``) and the
    native solver's (``sampler``, ``terms``, ``init_state``, ``update_state``).

    **Momentum** (MATH §3.5) [derived]. ``momentum_model="first_order"`` (default): for a method with
    ``momentum=β`` (heavy ball or Nesterov) the model is the plain one at the effective rate :math:`\eta/(1-\beta)`:
    drift and diffusion factor both scaled by :math:`1/(1-\beta)` (on quadratics :math:`A/(1-\beta)`,
    :math:`F/(1-\beta)`). The discrete buffer starts at 0, so its first :math:`\sim 1/(1-\beta)` steps move slower: an
    initial layer of duration :math:`O(\eta/(1-\beta))` whose effect on the weak error is :math:`O(\eta)`, with a
    constant growing in :math:`1/(1-\beta)`. For :math:`\eta/(1-\beta)\ll1`. ``momentum_model="phase_space"``: the
    state is :math:`(X, V)` (``(n, 2d)``), :math:`dX=V\,dt`, :math:`dV=-\gamma V\,dt+b(X)\,dt+\eta^{1/4}\mathrm{Cov}^{1/2}dW`,
    :math:`\gamma=(1-\beta)/\sqrt\eta`, :math:`V_0=0`, on its own clock :math:`t=k\sqrt\eta`
    (:mod:`sde_sam.phase_space`). For :math:`\beta\to1` with :math:`(1-\beta)^2/\eta` fixed.

    The stateless :meth:`drift`, :meth:`diffusion_factor` and torchsde's ``f``/``g`` form the expectations the
    closed-form, exact or sampled way (:attr:`stateless_mode`), also when the default solver step takes two
    draws (:attr:`expectation_mode` ``"two_draw"``; the scheme is :class:`sde_sam.solvers.TwoDraw`).

    Attributes:
        problem, method, order, diffusion: What it models.
        lr: Learning rate :math:`\eta` (the diffusion carries :math:`\sqrt\eta`).
        expectation_mode: How a solver step forms expectations over draws by default: ``"linear"``, ``"affine"``,
            ``"enumerate"``, ``"sampled"`` or ``"two_draw"`` (``mode``, its old name, is deprecated).
        stateless_mode: The same for the stateless :meth:`drift`/:meth:`diffusion_factor` (never ``"two_draw"``).
        momentum_model: ``"first_order"`` or ``"phase_space"``.
        momentum_scale: :math:`1/(1-\beta)` (first-order model); 1 in phase space.
        friction: :math:`\gamma=(1-\beta)/\sqrt\eta` in phase space, else ``None``.
        step_time: Time of one discrete step on the model's clock: :math:`\eta`, or :math:`\sqrt\eta` in phase space.
        noise_dim: Dimension ``m`` of the Brownian motion of :meth:`diffusion_factor` (``d`` for ``"paper"``).
        linear: ``(A, F)`` when the model is linear, :math:`dX = -AX\,dt + F\,dW` with constant ``F: (D, m)`` (``D``
            the state dimension, :meth:`state_dim`); else ``None`` (:class:`sde_sam.solvers.FusedLinear` needs it).
        deterministic: True when the diffusion vanishes (full-batch methods).
        clip_report: :class:`~sde_sam.diffusion.ClipReport` of the ``paper`` form.
    """

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, problem: Problem, method: Method, *, order, diffusion: str, expectation, seed: int,
                 momentum_model: str = "first_order"):
        self.problem, self.method, self.order, self.diffusion = problem, method, order, diffusion
        self._options = dict(order=order, diffusion=diffusion, expectation=expectation, seed=seed,
                             momentum_model=momentum_model)
        self.lr = method.lr
        self.eps = method.eps if method.eps is not None else problem.default_eps()
        self.momentum_model = momentum_model
        if momentum_model == "phase_space":  # MATH §3.5: the plain model's drift, in dV
            self.momentum_scale, self.step_time = 1.0, math.sqrt(self.lr)
            self.friction: float | None = phase_space.friction(self.lr, method.momentum)
        else:
            self.momentum_scale, self.step_time, self.friction = 1.0 / (1.0 - method.momentum), self.lr, None
        self.clip_report = diff.ClipReport()
        self._gen = torch.Generator(device=problem.device).manual_seed(seed)
        self._v_cache: Tensor | None = None
        self._plan = expectations.plan(problem, method, order=order, diffusion=diffusion, expectation=expectation)
        self.expectation_mode, self.stateless_mode = self._plan.mode, self._plan.stateless
        self.deterministic = self._plan.deterministic
        self.n_draws = self._plan.n_draws
        self.linear = None
        if self.stateless_mode == "linear":
            A, F = self._linear()
            self.linear = (A, F) if self.friction is None else phase_space.linear(
                A, phase_space.noise_scale(self.lr) * F, self.friction)

    # -- schedules (MATH §3.6): the model of each step ----------------------------------------------
    def at_step(self, k: int) -> "SDEModel":
        r"""The model of step ``k`` of a scheduled method: the constant method :math:`(\eta_k, \rho_k)`'s model.

        On the nominal clock :math:`\tau = k\eta` a solver step :math:`\Delta\tau` of a scheduled method is a step
        :math:`u_k\Delta\tau` (:math:`u_k = \eta_k/\eta`, :meth:`time_factor`) of this model on its own clock: drift
        :math:`u_k b_k` and noise :math:`\sqrt\eta\,u_k\sigma_k = \sqrt{u_k}\,(\sqrt{\eta_k}\sigma_k)` per unit
        :math:`\tau` (:mod:`sde_sam.schedules`) [derived]. ``self`` when nothing is scheduled."""
        if not self.method.scheduled:
            return self
        return SDEModel(self.problem, self.method.at(k), **self._options)

    def time_factor(self, k: int) -> float:
        r""":math:`u_k = \eta_k/\eta`: the model's time per unit of nominal time during step ``k`` (1 unscheduled)."""
        return self.method.lr_at(k) / self.lr

    @property
    def mode(self) -> str:
        """Deprecated name of :attr:`expectation_mode` (it collided with ``weak_error``'s ``mode``)."""
        warnings.warn("`SDEModel.mode` is deprecated and will be removed in the next release; use "
                      "`SDEModel.expectation_mode`", DeprecationWarning, stacklevel=2)
        return self.expectation_mode

    # -- the state: X, or (X, V) in phase space ------------------------------------------------------
    def state_dim(self, d: int) -> int:
        """Dimension of the state for parameters of dimension ``d``: ``d``, or ``2d`` in phase space."""
        return d if self.friction is None else 2 * d

    def lift(self, x: Tensor) -> Tensor:
        """The initial state from parameters ``(n, d)``: ``x`` itself, or :math:`(x, 0)` in phase space."""
        return x if self.friction is None else phase_space.lift(x)

    def position(self, z: Tensor) -> Tensor:
        """The parameters :math:`X` of a state: ``z`` itself, or its first half in phase space."""
        return z if self.friction is None else phase_space.position(z)

    def _linear(self) -> tuple[Tensor, Tensor]:
        """``(A, F)`` of the Ornstein–Uhlenbeck model on a quadratic (MATH §3.4, §3.5)."""
        p, s = self.problem, self.momentum_scale
        c = 0.0 if self._plan.affine == "sgd" else self.method.rho
        eye = torch.eye(p.d, dtype=p.dtype, device=p.device)
        if self.deterministic:
            F = torch.zeros(p.d, 1, dtype=p.dtype, device=p.device)
        elif self.diffusion == "paper":  # constant matrix on a quadratic: clip once
            M = p.noise_cov + c * (p.H @ p.noise_cov + p.noise_cov @ p.H)
            F = diff.clipped_factor(M[None], lr=self.lr, report=self.clip_report)[0]
        else:
            F = math.sqrt(self.lr) * (eye + c * p.H) @ p.noise_sqrt
        A = p.H + c * p.H @ p.H
        if self.method.weight_decay != 0.0:  # weight decay: drift −λX (MATH §3.6)
            A = A + self.method.weight_decay * eye
        return s * A, s * F

    @property
    def noise_dim(self) -> int:
        """Dimension of the Brownian motion of the stateless factor (``problem.d`` may be learnt from ``x0``)."""
        if self.deterministic:
            return 1
        if self.stateless_mode in ("linear", "affine") or self.diffusion == "paper":
            return self.problem.d
        return self._plan.draws_all.shape[0] if self.stateless_mode == "enumerate" else self.n_draws

    @property
    def label(self) -> str:
        base = f"order {self.order}" if self.order != "exact" else "exact"
        return base if self.friction is None else base + " phase space"

    def __repr__(self) -> str:
        phase = ", momentum_model='phase_space'" if self.friction is not None else ""
        return (f"SDEModel({self.method!r}, order={self.order!r}, diffusion={self.diffusion!r}, "
                f"expectation_mode={self.expectation_mode!r}{phase}, noise_dim={self.noise_dim})")

    # -- randomness of one step ----------------------------------------------------------------------
    def sampler(self, increments: str = "gaussian", *, expectation_mode: str | None = None, mode: str | None = None):
        """``sampler(shape, generator) -> (draws, zeta)``: one solver step's randomness for a block of paths.

        ``zeta: shape + (m,)`` are standard Gaussian or, for ``increments="two_point"``, ±1 with equal
        probability (the simplified weak Euler scheme, MATH §4); ``m = 1`` for two draws per step, else
        :attr:`noise_dim`. ``draws`` are ``shape + (2, ...)`` (``"two_draw"``) or ``shape + (K, ...)`` (sampled)
        draws, else an empty tensor. ``expectation_mode`` defaults to :attr:`expectation_mode` (``mode``: its
        deprecated name).
        """
        p = self.problem
        mode = expectation_mode or _deprecated_mode(mode) or self.expectation_mode
        m = 1 if mode == "two_draw" else self.noise_dim
        k = 2 if mode == "two_draw" else self.n_draws if mode == "sampled" else None

        def sample(shape, gen):
            if increments == "two_point":
                from .streams import random_signs  # 64 signs per random 64-bit word (same law as before)
                zeta = random_signs((*shape, m), gen, dtype=p.dtype, device=p.device)
            else:
                zeta = torch.randn(*shape, m, generator=gen, dtype=p.dtype, device=p.device)
            draws = p.sample_draws((*shape, k), gen) if k else torch.empty(*shape, 0, device=p.device)
            return draws, zeta

        return sample

    # -- Eigen-SAM's eigenvector, carried by the solver as state --------------------------------------
    def init_state(self, x: Tensor, gauss: Tensor) -> Tensor | None:
        """Eigen-SAM's vector at parameters ``x: (n, d)`` from a Gaussian ``(n, d)`` (``None`` for other methods)."""
        if not self.method.uses_eigenvector:
            return None
        v = gauss / torch.linalg.vector_norm(gauss, dim=-1, keepdim=True)
        return power_iteration(lambda u: self.problem.hvp(x, u), v, self.method.init_power_iters, self.eps)

    def update_state(self, x: Tensor, v: Tensor | None) -> Tensor | None:
        """Warm-started power iterations on the full-batch Hessian at the current state (MATH §3.1)."""
        if v is None:
            return None
        return power_iteration(lambda u: self.problem.hvp(x, u), v, self.method.power_iters, self.eps)

    # -- drift and noise -----------------------------------------------------------------------------
    def draw_values(self, x: Tensor, draws: Tensor | None, v: Tensor | None, mode: str, *,
                    drift_draws: int | None = None):
        """``(g, G, G_noise)``, each ``(n, N, d)``, over the enumerated, sampled or two draws of each path at
        parameters ``x: (n, d)``: the stochastic gradient, the order-``r`` and the order-``r'`` effective
        gradients of each draw (``mode``: ``"enumerate"``, else the given ``draws``). ``drift_draws=1``: ``G``
        only for each path's first draw, ``(n, 1, d)`` (the two-draw scheme's drift; saves the order-2 term on
        the others)."""
        n, d = x.shape
        if mode == "enumerate":
            N = self._plan.draws_all.shape[0]
            flat = self._plan.draws_all.repeat(n, *([1] * (self._plan.draws_all.ndim - 1)))
        else:
            N = draws.shape[1]
            flat = draws.flatten(0, 1)
        xr = x.repeat_interleave(N, dim=0)
        vr = v.repeat_interleave(N, dim=0) if v is not None else None
        # DNSAM's full-batch gradient: once per path, shared by its draws.
        full = self.problem.grad(x).repeat_interleave(N, dim=0) if self.method.uses_full_grad else None
        if drift_draws not in (None, 1):
            raise ValueError(f"`drift_draws` must be None or 1, got drift_draws={drift_draws!r}")
        vals = model_gradients(self.problem, self.method, xr, flat, order=self.order, eps=self.eps, v=vr,
                               full_grad=full, drift_every=N if drift_draws == 1 else 1)
        return tuple(t.view(n, -1, d) for t in vals)

    def _affine_c(self, x: Tensor) -> Tensor | float:
        if self._plan.affine == "sgd":
            return 0.0
        if self._plan.affine == "usam":
            return self.method.rho
        norm = torch.linalg.vector_norm(self.problem.grad(x), dim=-1).clamp_min(self.eps)
        return (self.method.rho / norm).unsqueeze(-1)

    def _affine_matrix(self, x: Tensor, c) -> Tensor:
        """Paper-form matrix :math:`\\Sigma + c(H\\Sigma + \\Sigma H)` for affine noise, ``(n, d, d)``."""
        Sigma = self.problem.noise_cov
        n, d = x.shape
        HS = self.problem.hvp(x.repeat_interleave(d, 0), Sigma.T.repeat(n, 1)).view(n, d, d).transpose(1, 2)
        c = c if isinstance(c, float) else c.unsqueeze(-1)
        return Sigma + c * (HS + HS.transpose(1, 2))

    def terms(self, x: Tensor, rand, v: Tensor | None, *, expectation_mode: str | None = None,
              mode: str | None = None) -> tuple[Tensor, Tensor]:
        """Drift ``b`` and noise ``N`` of the state ``x: (n, D)``, both ``(n, D)``, with the Euler–Maruyama
        increment :math:`b\\,\\Delta t + \\sqrt{\\Delta t}\\,N` (``N = F(x)\\zeta``).

        ``rand = (draws, zeta)`` comes from :meth:`sampler` of the same ``expectation_mode`` (default
        :attr:`stateless_mode`: the Euler–Maruyama way; two draws per step are :class:`sde_sam.solvers.TwoDraw`'s;
        ``mode``: its deprecated name).
        """
        mode = expectation_mode or _deprecated_mode(mode) or self.stateless_mode
        if mode == "two_draw":
            raise ValueError("two draws per step are a scheme, not a model's terms: use sde_sam.solvers.TwoDraw "
                             "(MATH §4.1)")
        drift, noise = self._terms(self.position(x), rand, v, mode)
        if self.friction is not None:
            return phase_space.terms(x, drift, phase_space.noise_scale(self.lr) * noise, self.friction)
        s = self.momentum_scale
        return (drift, noise) if s == 1.0 else (s * drift, s * noise)

    def _terms(self, x: Tensor, rand, v: Tensor | None, mode: str) -> tuple[Tensor, Tensor]:
        draws, zeta = rand
        p = self.problem
        if mode in ("linear", "affine"):
            g = p.grad(x)
            c = self._affine_c(x)
            drift = -g if isinstance(c, float) and c == 0.0 else -(g + c * p.hvp(x, g))
            if self.method.weight_decay != 0.0:  # weight decay: drift −λX at every order (MATH §3.6)
                drift = drift - self.method.weight_decay * x
            if self.deterministic:
                return drift, torch.zeros_like(x)
            if self.diffusion == "paper":
                F = diff.clipped_factor(self._affine_matrix(x, c), lr=self.lr, report=self.clip_report)
                return drift, (F @ zeta.unsqueeze(-1)).squeeze(-1)
            z = zeta @ p.noise_sqrt.T
            noise = z if isinstance(c, float) and c == 0.0 else z + c * p.hvp(x, z)
            return drift, math.sqrt(self.lr) * noise
        g, G, Gn = self.draw_values(x, draws, v, mode)
        drift = usam_minibatch_drift(p, x, self.method.rho) if self._plan.usam_drift else -G.mean(dim=1)
        if self._plan.usam_drift and self.method.weight_decay != 0.0:  # closed form: −λX too (MATH §3.6)
            drift = drift - self.method.weight_decay * x
        if self.deterministic:
            return drift, torch.zeros_like(x)
        return drift, (self._factor(g, Gn, mode) @ zeta[..., : self.noise_dim].unsqueeze(-1)).squeeze(-1)

    def _factor(self, g: Tensor, Gn: Tensor, mode: str) -> Tensor:
        exact = mode == "enumerate"
        if self.diffusion == "paper":
            M = diff.paper_matrix(g, Gn, exact=exact, scale=self._plan.scale)
            return diff.clipped_factor(M, lr=self.lr, report=self.clip_report)
        return diff.centred_factor(Gn, lr=self.lr, exact=exact, scale=self._plan.scale)

    # -- the stateless public interface (and torchsde's) ---------------------------------------------
    def _stateless(self, x: Tensor):
        mode = self.stateless_mode
        draws = self.sampler(expectation_mode=mode)((x.shape[0],), self._gen)[0] if mode == "sampled" else None
        v = None
        if self.method.uses_eigenvector:  # warm start from the last call when shapes match
            if self._v_cache is None or self._v_cache.shape != x.shape:
                gauss = torch.randn(x.shape, generator=self._gen, dtype=x.dtype, device=x.device)
                v = self.init_state(x, gauss)
            else:
                v = self.update_state(x, self._v_cache)
            self._v_cache = v
        return draws, v

    def drift(self, x: Tensor) -> Tensor:
        """:math:`b(x) = -\\mathbb E_\\gamma G^{(r)}_\\gamma(x)/(1-\\beta)`: ``(n, d) -> (n, d)``; in phase space
        :math:`(V, -\\gamma V - \\mathbb E_\\gamma G^{(r)}_\\gamma(X))`: ``(n, 2d) -> (n, 2d)``."""
        draws, v = self._stateless(self.position(x))
        zeta = torch.zeros(x.shape[0], self.noise_dim, dtype=x.dtype, device=x.device)
        return self.terms(x, (draws, zeta), v)[0]

    def diffusion_factor(self, x: Tensor) -> Tensor:
        """:math:`F(x)` with :math:`FF^\\top = \\eta\\,\\mathrm{Cov}/(1-\\beta)^2` (or the clipped paper matrix): ``(n, d, m)``;
        in phase space :math:`(0;\\ \\eta^{1/4}\\mathrm{Cov}^{1/2})`: ``(n, 2d, m)``."""
        n, D = x.shape
        if self.deterministic:
            return x.new_zeros(n, D, 1)
        if self.linear is not None:
            return self.linear[1].expand(n, D, self.noise_dim)
        F = self._factor_at(self.position(x))
        return F if self.friction is None else phase_space.factor(phase_space.noise_scale(self.lr) * F)

    def _factor_at(self, x: Tensor) -> Tensor:
        """The (first-order) factor at parameters ``x: (n, d)``, ``(n, d, m)``."""
        n, d = x.shape
        s = self.momentum_scale
        if self.stateless_mode == "affine":
            c = self._affine_c(x)
            if self.diffusion == "paper":
                return s * diff.clipped_factor(self._affine_matrix(x, c), lr=self.lr, report=self.clip_report)
            S = self.problem.noise_sqrt
            HS = self.problem.hvp(x.repeat_interleave(d, 0), S.T.repeat(n, 1)).view(n, d, d).transpose(1, 2)
            c = c if isinstance(c, float) else c.unsqueeze(-1)
            return s * math.sqrt(self.lr) * (S + c * HS)
        draws, v = self._stateless(x)
        g, _, Gn = self.draw_values(x, draws, v, self.stateless_mode)
        return s * self._factor(g, Gn, self.stateless_mode)

    def f(self, t, y: Tensor) -> Tensor:
        """torchsde drift."""
        return self.drift(y)

    def g(self, t, y: Tensor) -> Tensor:
        """torchsde diffusion, ``(n, d, m)`` (general noise)."""
        return self.diffusion_factor(y)


def _deprecated_mode(mode: str | None) -> str | None:
    if mode is not None:
        warnings.warn("the `mode=` argument is deprecated and will be removed in the next release; use "
                      "`expectation_mode=`", DeprecationWarning, stacklevel=3)
    return mode


def sde_model(problem: Problem, method: Method, *, order=1, diffusion: str = "factor", expectation="auto",
              seed: int = 0, momentum_model: str = "first_order") -> SDEModel:
    r"""The SDE model of ``method`` on ``problem`` (MATH §3; momentum methods MATH §3.5).

    Args:
        problem: Objective and noise model. A problem without ``d`` (a ``FiniteSum`` built without it) learns
            ``d`` from the first ``x0`` it meets.
        method: Any method; with ``momentum_model="first_order"`` its ``momentum`` rescales the model to the
            effective rate :math:`\eta/(1-\beta)`.
        order: ``0`` (the SGD SDE, the same for every method), ``1`` (first-order SDEs, Compagnoni et al.),
            ``2`` (third-order SDE, Luo et al.; adds :math:`\tfrac12\mathbb E\nabla^3 f_\gamma[\varepsilon,\varepsilon]`)
            or ``"exact"`` (drift :math:`\mathbb E G_\gamma`, no truncation; valid for any :math:`\rho`).
        diffusion: ``"factor"`` (PSD, default) or ``"paper"`` (as written, eigen-clipped; see :mod:`sde_sam.diffusion`).
        expectation: How expectations over draws are formed (:mod:`sde_sam.expectations`): ``"auto"``
            (closed form, else the two-draw weak scheme of MATH §4.1 where it is cheaper, else exact
            enumeration or ``K = 32`` sampled draws), ``"two_draw"``, ``"enumerate"`` (exact; finite noise laws)
            or an integer ``K >= 2`` of sampled draws per evaluation. The two-draw scheme needs ``dt < lr``.
        seed: Seed of the model's own generator, used only by the stateless :meth:`SDEModel.drift`,
            :meth:`SDEModel.diffusion_factor` (and torchsde) when draws are sampled.
        momentum_model: How momentum (MATH §3.5) is modelled. ``"first_order"`` (default): the plain model at the
            rate :math:`\eta/(1-\beta)`, state ``X``, clock :math:`t=k\eta`; for :math:`\eta/(1-\beta)\ll1`.
            ``"phase_space"``: underdamped Langevin on :math:`(X, V)` with friction :math:`\gamma=(1-\beta)/\sqrt\eta`,
            :math:`V_0=0`, clock :math:`t=k\sqrt\eta` (:mod:`sde_sam.phase_space`); for :math:`\beta` close to 1
            (:math:`(1-\beta)^2/\eta` of order 1, e.g. :math:`\beta=0.9` at :math:`\eta\approx0.05`–0.1). Its
            ``x0`` is :math:`X_0`; :func:`sde_sam.simulate` starts :math:`V` at 0, records observables of :math:`X` at
            :math:`t=k\sqrt\eta` and returns :math:`X` as ``x_final``.

    Returns:
        An :class:`SDEModel`.

    Example:
        >>> sde = sde_model(Quadratic(torch.eye(2), noise_cov=0.01), USAM(0.05, 0.1), order=1)
        >>> sde.drift(torch.ones(4, 2)).shape, sde.diffusion_factor(torch.ones(4, 2)).shape
        (torch.Size([4, 2]), torch.Size([4, 2, 2]))

    The paper SDEs keep :math:`O(\rho)` terms and are meant for :math:`\rho = O(\sqrt\eta)`; the third-order
    model keeps :math:`O(\rho^2)` (natural scaling :math:`\rho = O(\eta^{1/3})`) [derived].
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be an sde_sam Problem, got {type(problem).__name__}")
    check_method(method, ready=False)
    check_order(order)
    if diffusion not in DIFFUSIONS:
        raise ValueError(f"`diffusion` must be one of {DIFFUSIONS}, got diffusion={diffusion!r}")
    expectations.check_expectation(expectation)
    phase_space.check_momentum_model(momentum_model)
    method.check_ready()
    if method.scheduled and momentum_model == "phase_space":
        raise ValueError("a scheduled lr or rho needs momentum_model='first_order': the phase-space model's clock "
                         "t = k*sqrt(lr) and friction (1-beta)/sqrt(lr) assume a constant lr")
    return SDEModel(problem, method, order=order, diffusion=diffusion, expectation=expectation, seed=seed,
                    momentum_model=momentum_model)
