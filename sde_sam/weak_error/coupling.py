r"""Coupled weak-error estimates: the discrete method and its SDE driven by the same Gaussian draws (MATH §5.1).

With additive Gaussian gradient noise :math:`Z_k = \Sigma^{1/2}\xi_k` and a model whose diffusion is a
:math:`d\times d` factor acting on the same Gaussian (SGD, USAM, DNSAM, Unified SAM with :math:`\lambda=0`,
their momentum forms; the SGD SDE of any method), the SDE's Euler sub-steps over :math:`[k\eta, (k+1)\eta]`
take increments that sum to :math:`-\sqrt\eta\,\xi_k` — **minus**, because the discrete noise enters the step as
:math:`-\eta Z_k`: :math:`r` i.i.d. standard Gaussians, their mean subtracted, plus :math:`-\xi_k/\sqrt r` (in
units of :math:`\sqrt{\Delta t}`; a Brownian bridge, so the SDE path keeps exactly its own law). Each path's
SDE sample is then close to its discrete sample, and the gap is the mean of the per-path differences
:math:`\phi(x_k) - \phi(X_{k\eta})` with their own SE, which shrinks with the gap instead of staying at
:math:`\sqrt2\,\mathrm{sd}(\phi)/\sqrt N` [derived]. Both marginals are exactly those of the uncoupled study, so
the gap estimated is the same; only its noise changes.

Example:
    >>> study = ss.weak_error(prob, ss.USAM(0.1, rho=0.1), lrs=[0.01, 0.005], horizon=0.5, x0=x0,
    ...                       coupling=True)  # doctest: +SKIP
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..methods import Method, effective_gradient
from ..observables import record_times, resolve
from ..problems.base import Problem


def coupling_unsupported(problem: Problem, method: Method, sde, *, diffusion: str, increments: str) -> str | None:
    """Why the coupling does not apply (a sentence), or ``None`` when it does."""
    if not problem.additive_gaussian:
        return (f"the problem is a {type(problem).__name__}: its gradient noise is not additive Gaussian, so the "
                "discrete step has no Gaussian draw ξ to share with the SDE")
    if method.affine_noise is None:  # the method's declaration (sde_sam.methods.base.AffineNoise)
        return (f"the method is {method.name}: its effective gradient is not affine in the Gaussian noise (only "
                "SGD, USAM, DNSAM and Unified SAM with lam=0, with or without momentum, are), so the same ξ "
                "does not drive its step and its SDE alike (MATH §5.1)")
    if sde.mode not in ("linear", "affine"):
        return (f"the {sde.label} model of {method.name} on this problem takes its expectations by "
                f"{sde.mode!r}: its diffusion is not a d×d factor acting on the same Gaussian (MATH §5.1)")
    if diffusion != "factor":
        return ("diffusion='paper' uses an eigen-factor of the clipped matrix, not (I+ρH)Σ^{1/2}: the same ξ "
                "would drive a rotated noise; use diffusion='factor'")
    if increments != "gaussian":
        return "the Brownian bridge needs Gaussian increments; use increments='gaussian'"
    return None


def _discrete_step(problem: Problem, method: Method, x: Tensor, Z: Tensor, buffer: Tensor | None, eps: float):
    """One step of the method with the given noise ``Z`` (MATH §2, §2.1): the effective gradient and the
    update :func:`sde_sam.run` uses, so the discrete side is the method's own step."""
    G, _ = effective_gradient(problem, method, x, Z, eps=eps)
    return method.update(x, G, buffer)


def coupled_paths(problem: Problem, method: Method, sde, x0: Tensor, *, steps: int, every: int, dt_ratio: int,
                  n_paths: int, seed: int, observables: list, max_norm: float = math.inf):
    """Run the discrete method and Euler–Maruyama of ``sde`` (``dt = lr/dt_ratio``) on shared draws.

    Returns:
        ``times (R,)``, per-path values ``{name: (R, n)}`` of the discrete method and of the SDE (same
        names), and the ``(n,)`` mask of paths that diverged in either (left out of every statistic).
    """
    d, dtype, device = x0.shape[-1], x0.dtype, x0.device
    gen = torch.Generator(device=device).manual_seed(seed)
    obs = resolve(observables, problem)
    ks = record_times(steps, every)
    slot = {k: i for i, k in enumerate(ks)}
    vals = [{name: torch.full((len(ks), n_paths), math.nan, dtype=dtype) for name in obs} for _ in range(2)]
    alive = torch.ones(n_paths, dtype=torch.bool, device=device)
    x = x0.expand(n_paths, d).clone()
    X, buffer = x.clone(), None
    eps = method.eps if method.eps is not None else problem.default_eps()
    S = problem.noise_sqrt
    lr, r = method.lr, dt_ratio
    dt = lr / r
    sqrt_dt, sqrt_r = math.sqrt(dt), math.sqrt(r)

    def record(k: int) -> None:
        nonlocal x, X
        bad = ~(torch.isfinite(x).all(-1) & torch.isfinite(X).all(-1))
        if math.isfinite(max_norm):
            bad |= (torch.linalg.vector_norm(x, dim=-1) > max_norm) | (torch.linalg.vector_norm(X, dim=-1) > max_norm)
        alive.logical_and_(~bad)
        x, X = (torch.where(alive.unsqueeze(-1), y, math.nan) for y in (x, X))
        for out, y in zip(vals, (x, X)):
            for name, fn in obs.items():
                out[name][slot[k]] = torch.where(alive, fn(y), math.nan).detach().cpu()

    if sde.linear is not None:  # Ornstein–Uhlenbeck: X (I - dt Aᵀ) + sqrt(dt) ζ Fᵀ, one fused GEMM pair
        A, F = sde.linear
        M, Fs = torch.eye(d, dtype=dtype, device=device) - dt * A.T, sqrt_dt * F.T

        def step(X: Tensor, z: Tensor) -> Tensor:
            return torch.addmm(z[:, : Fs.shape[0]] @ Fs, X, M)
    else:
        def step(X: Tensor, z: Tensor) -> Tensor:
            drift, noise = sde.terms(X, (None, z), None)
            return X + dt * drift + sqrt_dt * noise

    record(0)
    for k in range(steps):
        xi = torch.randn(n_paths, d, generator=gen, dtype=dtype, device=device)
        Z = torch.zeros_like(xi) if S is None else xi @ S.T
        x, buffer = _discrete_step(problem, method, x, Z, buffer, eps)
        # The bridge: r sub-step increments (units of sqrt(dt)) that sum to -sqrt(r)·ξ, i.e. W = -sqrt(lr)·ξ.
        zeta = torch.randn(r, n_paths, d, generator=gen, dtype=dtype, device=device)
        zeta = zeta - zeta.mean(dim=0, keepdim=True) - xi / sqrt_r
        for j in range(r):
            X = step(X, zeta[j])
        if k + 1 in slot:
            record(k + 1)
    return np.array(ks) * lr, vals[0], vals[1], ~alive.cpu()


def coupled_cell(spec) -> pd.DataFrame:
    """One coupled cell: discrete method and model (at ``dt``, or ``dt/2`` for the solver check) on shared
    draws; per time, both means, the mean per-path difference and its SE, overall and per half."""
    from .. import sde_model
    from .cells import cell_seed, check_times, frame, observables, summarize

    m = spec.method
    sde = sde_model(spec.problem, m, order=spec.order, diffusion=spec.diffusion, expectation=spec.expectation)
    r = spec.dt_ratio * (2 if spec.solver else 1)
    times, disc, sde_vals, diverged = coupled_paths(
        spec.problem, m, sde, spec.x0, steps=spec.steps, every=spec.every, dt_ratio=r, n_paths=spec.n_paths,
        seed=cell_seed(spec.seed, m.lr, spec.kind), observables=observables(spec.problem, spec.tfs),
        max_norm=spec.max_norm)
    check_times(times, spec, spec.kind)
    keep, cols = ~diverged, {}
    for tf, name in zip(spec.tfs, disc):
        a, b = summarize(disc[name], keep), summarize(sde_vals[name], keep)
        g = summarize(disc[name] - sde_vals[name], keep)
        cols[tf] = {"discrete_mean": a["mean"], "discrete_se": a["se"], "sde_mean": b["mean"], "sde_se": b["se"],
                    **{("gap" + k[4:] if k.startswith("mean") else "gap_se" + k[2:]): v for k, v in g.items()}}
    return frame(times, cols, n_diverged=int(diverged.sum()))
