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

import pandas as pd
from torch import Tensor

from ..methods import Method
from ..problems.base import Problem
from ..solvers import DISCRETE, Coupled, simulate
from .cells import cell_seed, check_times, frame, observables, summarize


def coupling_unsupported(problem: Problem, method: Method, sde, *, diffusion: str, increments: str) -> str | None:
    """Why the coupling does not apply (a sentence), or ``None`` when it does. ``diffusion`` is the model's.

    The model's side is :meth:`sde_sam.solvers.Coupled.unsupported` (one place for it); the study adds the
    method's: only a method whose effective gradient is affine in the noise shares its draw usefully.
    """
    why = Coupled().unsupported(sde, dt=sde.lr, increments=increments)  # dt = lr: any dt_ratio divides it
    if not problem.additive_gaussian:
        return why
    if method.affine_noise is None:  # the method's declaration (sde_sam.methods.base.AffineNoise)
        return (f"the method is {method.name}: its effective gradient is not affine in the Gaussian noise (only "
                "SGD, USAM, DNSAM and Unified SAM with lam=0, with or without momentum, are), so the same ξ "
                "does not drive its step and its SDE alike (MATH §5.1)")
    return why


def coupled_paths(problem: Problem, method: Method, sde, x0: Tensor, *, steps: int, every: int, dt_ratio: int,
                  n_paths: int, seed: int, observables: list, max_norm: float = math.inf):
    """Run the discrete method and Euler–Maruyama of ``sde`` (``dt = lr/dt_ratio``) on shared draws: the
    :class:`~sde_sam.solvers.Coupled` scheme through :func:`sde_sam.simulate` (the one engine loop).

    Returns:
        ``times (R,)``, per-path values ``{name: (R, n)}`` of the discrete method and of the SDE (same
        names), and the ``(n,)`` mask of paths that diverged in either (left out of every statistic).
    """
    lr = method.lr
    traj = simulate(sde, x0, t1=steps * lr, dt=lr / dt_ratio, n_paths=n_paths, seed=seed,
                    record_every=every * dt_ratio, observables=observables, max_norm=max_norm, progress=False,
                    solver=Coupled())
    sde_vals = {k: v for k, v in traj.values.items() if not k.startswith(DISCRETE)}
    disc = {k: traj.values[DISCRETE + k] for k in sde_vals}
    return traj.times.numpy(), disc, sde_vals, traj.diverged


def coupled_cell(spec) -> pd.DataFrame:
    """One coupled cell: discrete method and model (at ``dt``, or ``dt/2`` for the solver check) on shared
    draws; per time, both means, the mean per-path difference and its SE, overall and per half."""
    from .. import sde_model

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
