r"""SDE models of the methods, torchsde-compatible (MATH §3).

.. math:: dX_t = b(X_t)\,dt + F(X_t)\,dW_t,\qquad b = -\mathbb E_\gamma G^{(r)}_\gamma,\quad
          FF^\top = \eta\,\mathrm{Cov}_\gamma\big(G^{(r')}_\gamma\big)

The expectation over draws is, in order of preference ("auto"): a closed form when the effective gradient
is affine in additive Gaussian noise (SGD, USAM, DNSAM up to order 1; any order of USAM on a quadratic,
whose model is then linear, an Ornstein–Uhlenbeck process); an exact enumeration of the draws (``B = 1``
finite sums; per-sample values scaled by :math:`c_B/B` for the order-0 model); the exact mini-batch drift
of USAM (MATH §3.2) with sampled diffusion; else ``n_draws`` sampled draws per evaluation, the same draws
for the drift's mean and the diffusion's centred values (their errors are uncorrelated).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import diffusion as diff
from .drift import check_order, effective_grads, usam_minibatch_drift
from .methods import DNSAM, USAM, Method, UnifiedSAM, power_iteration
from .problems.base import Problem
from .problems.finite_sum import FiniteSum
from .problems.gaussian import Quadratic

DIFFUSIONS = ("factor", "paper")


def _affine_coefficient(method: Method, order) -> str | None:
    """How the effective gradient depends on additive noise Z: 'sgd' (Z), 'usam' ((I+ρH)Z), 'dnsam'; else None."""
    if not method.perturbs or order == 0:
        return "sgd"
    if order == 1 and (isinstance(method, USAM) or (isinstance(method, UnifiedSAM) and method.lam == 0)):
        return "usam"
    if order == 1 and isinstance(method, DNSAM):
        return "dnsam"
    return None


class SDEModel:
    """The order-``r`` SDE model of a method on a problem. Build it with :func:`sde_model`.

    Implements torchsde's interface (``f``, ``g``, ``noise_type="general"``, ``sde_type="ito"``) and the
    native solver's (``sampler``, ``terms``, ``init_state``, ``update_state``).

    Attributes:
        problem, method, order, diffusion: What it models.
        lr: Learning rate :math:`\\eta` (the diffusion carries :math:`\\sqrt\\eta`).
        mode: How expectations over draws are taken: ``"linear"``, ``"affine"``, ``"enumerate"`` or ``"sampled"``.
        noise_dim: Dimension ``m`` of the Brownian motion.
        linear: ``(A, F)`` when the model is linear, :math:`dX = -AX\\,dt + F\\,dW` with constant ``F: (d, m)``; else ``None``.
        deterministic: True when the diffusion vanishes (full-batch methods).
        clip_report: :class:`~sde_sam.diffusion.ClipReport` of the ``paper`` form.
    """

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, problem: Problem, method: Method, *, order, diffusion: str, expectation, seed: int):
        self.problem, self.method, self.order, self.diffusion = problem, method, order, diffusion
        self.lr = method.lr
        self.eps = method.eps if method.eps is not None else problem.default_eps()
        self.clip_report = diff.ClipReport()
        self._gen = torch.Generator(device=problem.device).manual_seed(seed)
        self._v_cache: Tensor | None = None
        self._scale, self._usam_drift, self.linear = 1.0, False, None
        self.deterministic = False
        affine = _affine_coefficient(method, order)
        if isinstance(problem, Quadratic) and affine is None and method.perturbs and (
                isinstance(method, USAM) or (isinstance(method, UnifiedSAM) and method.lam == 0)):
            affine = "usam"  # on a quadratic every order of USAM is the order-1 model (no third derivative)
        draws_all = problem.enumerate_draws()
        if expectation != "auto" and not (isinstance(expectation, int) and expectation >= 2) and expectation != "enumerate":
            raise ValueError(f"`expectation` must be 'auto', 'enumerate' or an integer >= 2 (sampled draws), "
                             f"got expectation={expectation!r}")
        if expectation == "enumerate" and draws_all is None:
            raise ValueError(f"`expectation='enumerate'` needs a finite noise law (B=1 finite sum or no noise); "
                             f"{problem!r} has none")
        if problem.additive_gaussian and affine is not None and expectation == "auto":
            self.mode, self._coef = "affine", affine
            self.deterministic = problem.noise_sqrt is None
            self.noise_dim = problem.d
            if isinstance(problem, Quadratic) and affine != "dnsam":
                self.mode = "linear"
                c = 0.0 if affine == "sgd" else method.rho
                eye = torch.eye(problem.d, dtype=problem.dtype, device=problem.device)
                S = problem.noise_sqrt if problem.noise_sqrt is not None else torch.zeros_like(eye)
                if diffusion == "paper":  # constant matrix on a quadratic: clip once
                    M = problem.noise_cov + c * (problem.H @ problem.noise_cov + problem.noise_cov @ problem.H)
                    F = diff.clipped_factor(M[None], lr=self.lr, report=self.clip_report)[0]
                else:
                    F = math.sqrt(self.lr) * (eye + c * problem.H) @ S
                if self.deterministic:
                    F = torch.zeros(problem.d, 1, dtype=problem.dtype, device=problem.device)
                self.linear = (problem.H + c * problem.H @ problem.H, F)
        elif draws_all is not None and expectation in ("auto", "enumerate"):
            self.mode, self._draws_all, self.noise_dim = "enumerate", draws_all, draws_all.shape[0]
            self.deterministic = draws_all.shape[0] == 1
        elif isinstance(problem, FiniteSum) and not method.perturbs or (isinstance(problem, FiniteSum) and order == 0):
            # Per-sample gradients stand for mini-batches exactly: Cov = (c_B/B) Cov_i (MATH §3.3).
            self.mode, self._draws_all = "enumerate", torch.arange(problem.n, device=problem.device)[:, None]
            self.noise_dim, self._scale = problem.n, problem.noise_scale
        else:
            self.mode = "sampled"
            self.n_draws = expectation if isinstance(expectation, int) else 32
            self.noise_dim = self.n_draws
            self._usam_drift = (expectation == "auto" and isinstance(problem, FiniteSum) and order == 1
                                and _affine_coefficient(method, 1) == "usam")
        if self.deterministic:
            self.noise_dim = 1

    @property
    def label(self) -> str:
        return f"order {self.order}" if self.order != "exact" else "exact"

    def __repr__(self) -> str:
        return (f"SDEModel({self.method!r}, order={self.order!r}, diffusion={self.diffusion!r}, mode={self.mode!r}, "
                f"noise_dim={self.noise_dim})")

    # -- randomness of one step ----------------------------------------------------------------------
    def sampler(self, increments: str = "gaussian"):
        """``sampler(shape, generator) -> (draws, zeta)``: one solver step's randomness for a block of paths.

        ``zeta: shape + (noise_dim,)`` are standard Gaussian or, for ``increments="two_point"``, ±1 with
        equal probability (the simplified weak Euler scheme, MATH §4). ``draws`` are the sampled draws
        (``shape + (n_draws, ...)``) in ``"sampled"`` mode, else an empty tensor.
        """
        p, m = self.problem, self.noise_dim

        def sample(shape, gen):
            if increments == "two_point":
                zeta = torch.randint(0, 2, (*shape, m), generator=gen, device=p.device).to(p.dtype).mul_(2).sub_(1)
            else:
                zeta = torch.randn(*shape, m, generator=gen, dtype=p.dtype, device=p.device)
            draws = (p.sample_draws((*shape, self.n_draws), gen) if self.mode == "sampled"
                     else torch.empty(*shape, 0, device=p.device))
            return draws, zeta

        return sample

    # -- Eigen-SAM's eigenvector, carried by the solver as state --------------------------------------
    def init_state(self, x: Tensor, gauss: Tensor) -> Tensor | None:
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
    def _draw_values(self, x: Tensor, draws: Tensor | None, v: Tensor | None):
        """``(g, G, G_noise)`` each ``(n, N, d)`` over the enumerated or sampled draws."""
        n, d = x.shape
        if self.mode == "enumerate":
            N = self._draws_all.shape[0]
            flat = self._draws_all.repeat(n, *([1] * (self._draws_all.ndim - 1)))
        else:
            N = draws.shape[1]
            flat = draws.flatten(0, 1)
        xr = x.repeat_interleave(N, dim=0)
        vr = v.repeat_interleave(N, dim=0) if v is not None else None
        vals = effective_grads(self.problem, self.method, xr, flat, order=self.order, eps=self.eps, v=vr)
        return tuple(t.view(n, N, d) for t in vals)

    def _affine_c(self, x: Tensor) -> Tensor | float:
        if self._coef == "sgd":
            return 0.0
        if self._coef == "usam":
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

    def terms(self, x: Tensor, rand, v: Tensor | None) -> tuple[Tensor, Tensor]:
        """Drift ``b(x)`` and noise ``F(x) zeta`` for one step, both ``(n, d)``; ``rand`` from :meth:`sampler`."""
        draws, zeta = rand
        p = self.problem
        if self.mode in ("linear", "affine"):
            g = p.grad(x)
            c = self._affine_c(x)
            drift = -g if isinstance(c, float) and c == 0.0 else -(g + c * p.hvp(x, g))
            if self.deterministic:
                return drift, torch.zeros_like(x)
            if self.diffusion == "paper":
                F = diff.clipped_factor(self._affine_matrix(x, c), lr=self.lr, report=self.clip_report)
                return drift, (F @ zeta.unsqueeze(-1)).squeeze(-1)
            z = zeta @ p.noise_sqrt.T
            noise = z if isinstance(c, float) and c == 0.0 else z + c * p.hvp(x, z)
            return drift, math.sqrt(self.lr) * noise
        g, G, Gn = self._draw_values(x, draws, v)
        drift = usam_minibatch_drift(p, x, self.method.rho) if self._usam_drift else -G.mean(dim=1)
        if self.deterministic:
            return drift, torch.zeros_like(x)
        exact = self.mode == "enumerate"
        if self.diffusion == "paper":
            M = diff.paper_matrix(g, Gn, exact=exact, scale=self._scale)
            F = diff.clipped_factor(M, lr=self.lr, report=self.clip_report)
        else:
            F = diff.centred_factor(Gn, lr=self.lr, exact=exact, scale=self._scale)
        return drift, (F @ zeta[..., : F.shape[-1]].unsqueeze(-1)).squeeze(-1)

    # -- the stateless public interface (and torchsde's) ---------------------------------------------
    def _stateless(self, x: Tensor):
        draws = self.sampler()((x.shape[0],), self._gen)[0] if self.mode == "sampled" else None
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
        """:math:`b(x) = -\\mathbb E_\\gamma G^{(r)}_\\gamma(x)`: ``(n, d) -> (n, d)``."""
        draws, v = self._stateless(x)
        zeta = torch.zeros(x.shape[0], self.noise_dim, dtype=x.dtype, device=x.device)
        return self.terms(x, (draws, zeta), v)[0]

    def diffusion_factor(self, x: Tensor) -> Tensor:
        """:math:`F(x)` with :math:`FF^\\top = \\eta\\,\\mathrm{Cov}` (or the clipped paper matrix): ``(n, d, m)``."""
        n, d = x.shape
        if self.deterministic:
            return x.new_zeros(n, d, 1)
        if self.linear is not None:
            return self.linear[1].expand(n, d, self.noise_dim)
        if self.mode in ("linear", "affine"):
            c = self._affine_c(x)
            if self.diffusion == "paper":
                return diff.clipped_factor(self._affine_matrix(x, c), lr=self.lr, report=self.clip_report)
            S = self.problem.noise_sqrt
            HS = self.problem.hvp(x.repeat_interleave(d, 0), S.T.repeat(n, 1)).view(n, d, d).transpose(1, 2)
            c = c if isinstance(c, float) else c.unsqueeze(-1)
            return math.sqrt(self.lr) * (S + c * HS)
        draws, v = self._stateless(x)
        g, _, Gn = self._draw_values(x, draws, v)
        exact = self.mode == "enumerate"
        if self.diffusion == "paper":
            return diff.clipped_factor(diff.paper_matrix(g, Gn, exact=exact, scale=self._scale), lr=self.lr,
                                       report=self.clip_report)
        return diff.centred_factor(Gn, lr=self.lr, exact=exact, scale=self._scale)

    def f(self, t, y: Tensor) -> Tensor:
        """torchsde drift."""
        return self.drift(y)

    def g(self, t, y: Tensor) -> Tensor:
        """torchsde diffusion, ``(n, d, m)`` (general noise)."""
        F = self.diffusion_factor(y)
        if F.shape[-1] < self.noise_dim:  # paper form is (d, d); pad to the declared noise dimension
            F = torch.nn.functional.pad(F, (0, self.noise_dim - F.shape[-1]))
        return F


def sde_model(problem: Problem, method: Method, *, order=1, diffusion: str = "factor", expectation="auto",
              seed: int = 0) -> SDEModel:
    r"""The SDE model of ``method`` on ``problem`` (MATH §3).

    Args:
        problem: Objective and noise model.
        method: Any of the six methods.
        order: ``0`` (the SGD SDE, the same for every method), ``1`` (first-order SDEs, Compagnoni et al.),
            ``2`` (third-order SDE, Luo et al.; adds :math:`\tfrac12\mathbb E\nabla^3 f_\gamma[\varepsilon,\varepsilon]`)
            or ``"exact"`` (drift :math:`\mathbb E G_\gamma`, no truncation; valid for any :math:`\rho`).
        diffusion: ``"factor"`` (PSD, default) or ``"paper"`` (as written, eigen-clipped; see :mod:`sde_sam.diffusion`).
        expectation: ``"auto"``, ``"enumerate"`` or an integer ``K >= 2`` of sampled draws per evaluation.
        seed: Seed of the model's own generator, used only by the stateless :meth:`SDEModel.drift`,
            :meth:`SDEModel.diffusion_factor` (and torchsde) when draws are sampled.

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
    if not isinstance(method, Method):
        raise TypeError(f"`method` must be an sde_sam Method, got {type(method).__name__}")
    check_order(order)
    if diffusion not in DIFFUSIONS:
        raise ValueError(f"`diffusion` must be one of {DIFFUSIONS}, got diffusion={diffusion!r}")
    if problem.d is None:
        raise ValueError("the problem's `d` is unknown; pass d=... to FiniteSum to build its SDE model")
    return SDEModel(problem, method, order=order, diffusion=diffusion, expectation=expectation, seed=seed)
