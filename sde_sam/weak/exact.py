r"""Exact moments of linear-Gaussian cases (MATH §3.4, §3.5): SGD and USAM (with or without momentum) on a
quadratic. The discrete method is linear in its state (``x``, or ``(x, u)`` with a momentum buffer), so its
mean and covariance follow a recursion; the SDE is Ornstein–Uhlenbeck, with closed-form mean and Lyapunov
covariance. Quadratic test functions then have exact expectations: no Monte-Carlo error at all."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..methods import Method
from ..observables import record_times
from ..problems.base import Problem
from ..problems.gaussian import Quadratic
from .cells import frame

EXACT_TEST_FUNCTIONS = ("loss", "x_norm_sq")
"""Test functions with closed-form Gaussian expectations (quadratic in x), available in exact mode."""


# -- exact moments (linear-Gaussian cases, MATH §3.4) -------------------------------------------------------
def _exact_applicable(problem: Problem, method: Method) -> str | None:
    """``None`` if exact moments apply, else why not."""
    if not isinstance(problem, Quadratic):
        return f"the problem is a {type(problem).__name__}, not a Quadratic with additive Gaussian noise"
    affine = method.affine_noise  # the method's declaration (sde_sam.methods.base.AffineNoise)
    if affine is None or affine.kind not in ("sgd", "usam") or not affine.every_order_on_quadratics:
        return (f"the method is {method.name}, not SGD or USAM (with or without momentum), whose step is "
                "linear on a quadratic")
    return None


def _warn_unstable(problem: Quadratic, method: Method, lrs, rho) -> None:
    """Discrete USAM on a quadratic diverges when some lr·λ(1+ρλ) leaves [0, 2] (MATH §7); with momentum β
    the bound is 2(1+β) (heavy ball) or 2(1+β)/(1+2β) (Nesterov)."""
    lam = torch.linalg.eigvalsh(0.5 * (problem.H + problem.H.T)).double()
    b = method.momentum
    edge = 2 * (1 + b) / (1 + 2 * b) if method.nesterov else 2 * (1 + b)
    for lr in lrs:
        r = method.rho if rho is None else (rho(lr) if callable(rho) else rho)
        a = lr * lam * (1 + r * lam)
        if bool((a > edge).any()):
            warnings.warn(f"discrete {method.name} is unstable at lr={lr:g}, rho={r:g}: lr·λ(1+ρλ) = "
                          f"{float(a.max()):.3g} > {edge:.3g}, its moments diverge; the study marks the lr unstable and "
                          "leaves it out of the fit", stacklevel=3)


def _linear_model(problem: Quadratic, rho: float, order, diffusion: str) -> tuple[np.ndarray, np.ndarray]:
    r"""``(A, Q)`` of the OU model :math:`dX = -AX\,dt + \sqrt\eta\,Q^{1/2}dW` of USAM (SGD: ρ = 0).

    Order 0: :math:`A = H`, :math:`Q = \Sigma`. Orders 1, 2 and exact coincide on quadratics (no third
    derivative): :math:`A = H(I+\rho H)`, :math:`Q = (I+\rho H)\Sigma(I+\rho H)` (``factor``) or
    :math:`\Sigma+\rho(\Sigma H+H\Sigma)` clipped to PSD (``paper``, orders 1 and 2).
    """
    H = problem.H.detach().cpu().double().numpy()
    H = 0.5 * (H + H.T)
    S = problem.noise_cov.detach().cpu().double().numpy()
    if order == 0:
        return H, S
    P = np.eye(len(H)) + rho * H
    if diffusion == "paper" and order != "exact":
        w, V = np.linalg.eigh(S + rho * (S @ H + H @ S))
        return H @ P, (V * w.clip(min=0)) @ V.T
    return H @ P, P @ S @ P


def _quad_expectations(names: Sequence[str], H: np.ndarray, m: np.ndarray, C: np.ndarray) -> dict[str, np.ndarray]:
    """E φ for Gaussian N(m, C) batches ``m: (T, d)``, ``C: (T, d, d)``: loss ½tr(H(C+mmᵀ)), ‖x‖² = tr C + ‖m‖²."""
    out = {}
    for name in names:
        if name == "loss":
            out[name] = 0.5 * (np.einsum("ij,tji->t", H, C) + np.einsum("ti,ij,tj->t", m, H, m))
        else:
            out[name] = np.einsum("tii->t", C) + (m * m).sum(-1)
    return out


def _linear_recursion(M, N, x0: np.ndarray, ks: Sequence[int], C0: np.ndarray | None = None):
    """Moments of :math:`x_{k+1} = M_kx_k + \\text{noise}` (noise covariance ``N_k``) at the steps ``ks``.

    ``M``, ``N``: matrices (constant coefficients) or callables ``k -> matrix`` (a schedule: piecewise-constant
    coefficients, MATH §3.6). ``C0``: the initial covariance (default 0)."""
    m, C = x0.copy(), np.zeros((len(x0), len(x0))) if C0 is None else C0
    want, ms, Cs = set(ks), [], []
    for k in range(ks[-1] + 1):
        if k in want:
            ms.append(m.copy()), Cs.append(C.copy())
        Mk, Nk = (M(k), N(k)) if callable(M) else (M, N)
        m, C = Mk @ m, Mk @ C @ Mk.T + Nk
    return np.array(ms), np.array(Cs)


def _ou_step(A: np.ndarray, Q: np.ndarray, lr: float, tau: float) -> tuple[np.ndarray, np.ndarray]:
    r"""``(E, N)`` of the exact OU transition over time ``tau``: :math:`X(\tau) = EX(0) + \text{noise}`, Cov ``N``
    (:func:`_ou_moments` from zero, A symmetric)."""
    a, V = np.linalg.eigh(A)
    E = (V * np.exp(-a * tau)) @ V.T
    _, C = _ou_moments(A, Q, lr, np.zeros(len(A)), np.array([tau]))
    return E, C[0]


def _ou_moments(A: np.ndarray, Q: np.ndarray, lr: float, x0: np.ndarray, times: np.ndarray):
    r"""Exact OU moments: mean :math:`e^{-At}x_0`, covariance :math:`\int_0^t e^{-As}\eta Q e^{-As}ds`
    (A symmetric: in its eigenbasis entry ij is :math:`\eta\tilde Q_{ij}(1-e^{-(a_i+a_j)t})/(a_i+a_j)`)."""
    a, V = np.linalg.eigh(A)
    Qt = V.T @ Q @ V
    s = a[:, None] + a[None, :]
    st = s[None] * times[:, None, None]
    phi = np.where(np.abs(st) > 1e-12, -np.expm1(-st) / np.where(s == 0, 1.0, s)[None], times[:, None, None])
    C = V[None] @ (lr * Qt[None] * phi) @ V.T[None]
    m = (np.exp(-a[None] * times[:, None]) * (V.T @ x0)[None]) @ V.T
    return m, C




def _discrete_system(A: np.ndarray, Q: np.ndarray, lr: float, beta: float, nesterov: bool):
    r"""``(M, N)`` of the discrete method's linear recursion :math:`s_{k+1} = Ms_k + \text{noise}`, Cov ``N``.

    Without momentum :math:`s = x`, :math:`x' = x - \eta(Ax + PZ)`, Cov(PZ) = Q. With momentum :math:`s = (x, u)`:
    heavy ball :math:`u' = \beta u + Ax + PZ`, :math:`x' = x - \eta u'`; Nesterov
    :math:`x' = x - \eta((1+\beta)(Ax + PZ) + \beta^2 u)` (MATH §2.1, §3.5).
    """
    eye = np.eye(len(A))
    if beta == 0.0:
        return eye - lr * A, lr**2 * Q
    c = lr * (1 + beta) if nesterov else lr  # how much of G enters x'
    bu = lr * beta**2 if nesterov else lr * beta  # how much of the old buffer enters x'
    M = np.block([[eye - c * A, -bu * eye], [A, beta * eye]])
    N = np.block([[c**2 * Q, -c * Q], [-c * Q, Q]])
    return M, N


def _cell_grid(spec):
    """What every exact cell starts from: ``H``, ``x0``, the base lr, test functions, ``d``, the recorded steps
    and times, and zero standard errors."""
    problem, x0 = spec.problem, spec.x0
    H = 0.5 * (problem.H + problem.H.T).detach().cpu().double().numpy()
    ks = record_times(spec.steps, spec.every)
    return (H, x0.detach().cpu().double().numpy(), spec.method.lr, list(spec.tfs), x0.shape[0], ks,
            np.array(ks) * spec.method.lr, {"se": np.zeros(len(ks))})


def exact_cell(spec) -> pd.DataFrame:
    """The exact expectations of one cell: the discrete method, a model, or (solver check) the exact
    difference of Euler–Maruyama's moments at ``dt`` and ``dt/2``."""
    problem, m = spec.problem, spec.method
    if m.scheduled:
        return _scheduled_cell(spec)
    H, x, lr, names, d, ks, times, zeros = _cell_grid(spec)
    if spec.kind == "discrete":
        A, Q = _linear_model(problem, m.rho, 1, "factor")  # USAM's step: x - lr (A x + P Z), Cov(P Z) = Q
        A = A + m.weight_decay * np.eye(d)  # weight decay: G + λx (MATH §2.3)
        M, N = _discrete_system(A, Q, lr, m.momentum, m.nesterov)
        s0 = np.concatenate([x, np.zeros(len(M) - d)])
        ms, Cs = _linear_recursion(M, N, s0, ks)
        vals = _quad_expectations(names, H, ms[:, :d], Cs[:, :d, :d])
        radius = float(np.abs(np.linalg.eigvals(M)).max())
        if radius > 1.0 + 1e-12:  # the method's moments grow geometrically: said in the cell, the table is unchanged
            return frame(times, {k: {"mean": v, **zeros} for k, v in vals.items()}, unstable=radius)
        return frame(times, {k: {"mean": v, **zeros} for k, v in vals.items()})
    A, Q = _linear_model(problem, m.rho, spec.order, spec.diffusion)
    A = A + m.weight_decay * np.eye(d)  # drift −λX at every order (MATH §3.6)
    scale = 1.0 / (1.0 - m.momentum)  # momentum: the plain model at the effective rate lr/(1-β) (MATH §3.5)
    A, Q = scale * A, scale**2 * Q
    if spec.solver:  # Euler–Maruyama's own moments at dt and dt/2: the solver error, exactly
        em = []
        for r in (spec.dt_ratio, 2 * spec.dt_ratio):
            ms, Cs = _linear_recursion(np.eye(d) - lr / r * A, lr**2 / r * Q, x,
                                       record_times(spec.steps * r, spec.every * r))
            em.append(_quad_expectations(names, H, ms, Cs))
        return frame(times, {k: {"mean": em[0][k] - em[1][k], **zeros} for k in names})
    ms, Cs = _ou_moments(A, Q, lr, x, times)
    return frame(times, {k: {"mean": v, **zeros} for k, v in _quad_expectations(names, H, ms, Cs).items()})


def _scheduled_cell(spec) -> pd.DataFrame:
    r"""Exact moments of a scheduled method (MATH §3.6): piecewise-constant coefficients, step by step.

    The discrete side takes step :math:`k`'s linear system at :math:`(\eta_k, \rho_k)`. The model on the nominal
    clock (:mod:`sde_sam.schedules`) is, over :math:`[k\eta, (k+1)\eta)`, the OU process with drift matrix
    :math:`u_kA_k` and noise :math:`\sqrt\eta\,u_kQ_k^{1/2}` (:math:`u_k=\eta_k/\eta`): its exact transition over
    one step is a matrix exponential and a Lyapunov integral (:func:`_ou_step`); the solver check takes
    Euler–Maruyama's sub-steps of those coefficients."""
    problem, m = spec.problem, spec.method
    H, x, lr, names, d, ks, times, zeros = _cell_grid(spec)
    wd = m.weight_decay * np.eye(d)
    order = 1 if spec.kind == "discrete" else spec.order
    diffusion = "factor" if spec.kind == "discrete" else spec.diffusion
    coef = {}

    def model(k: int):  # (A_k, Q_k) of step k's constant method, weight decay included
        if k not in coef:
            A, Q = _linear_model(problem, m.rho_at(k), order, diffusion)
            coef[k] = (A + wd, Q)
        return coef[k]

    if spec.kind == "discrete":
        systems = {}

        def system(k):
            if k not in systems:
                systems[k] = _discrete_system(*model(k), m.lr_at(k), m.momentum, m.nesterov)
            return systems[k]

        n_state = len(system(0)[0])
        s0 = np.concatenate([x, np.zeros(n_state - d)])
        ms, Cs = _linear_recursion(lambda k: system(k)[0], lambda k: system(k)[1], s0, ks)
        vals = _quad_expectations(names, H, ms[:, :d], Cs[:, :d, :d])
        return frame(times, {k: {"mean": v, **zeros} for k, v in vals.items()})
    scale = 1.0 / (1.0 - m.momentum)

    def scaled(k: int):  # the nominal-clock coefficients of step k
        u = m.lr_at(k) / lr
        A, Q = model(k)
        return u * scale * A, (u * scale) ** 2 * Q

    if spec.solver:
        em = []
        for r in (spec.dt_ratio, 2 * spec.dt_ratio):
            step = lambda i: (np.eye(d) - lr / r * scaled(i // r)[0], lr**2 / r * scaled(i // r)[1])  # noqa: E731
            ms, Cs = _linear_recursion(lambda i: step(i)[0], lambda i: step(i)[1], x,
                                       record_times(spec.steps * r, spec.every * r))
            em.append(_quad_expectations(names, H, ms, Cs))
        return frame(times, {k: {"mean": em[0][k] - em[1][k], **zeros} for k in names})
    steps = {}

    def transition(k: int):
        if k not in steps:
            steps[k] = _ou_step(*scaled(k), lr, lr)
        return steps[k]

    ms, Cs = _linear_recursion(lambda k: transition(k)[0], lambda k: transition(k)[1], x, ks)
    return frame(times, {k: {"mean": v, **zeros} for k, v in _quad_expectations(names, H, ms, Cs).items()})
