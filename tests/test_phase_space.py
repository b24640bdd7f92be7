"""The phase-space momentum model (MATH §3.5, "When β is close to 1"): its coefficients against hand-written
ones, its integration (every scheme) against exact moments, and — no Monte Carlo — its weak error against
discrete heavy ball on a quadratic, next to the first-order model's.

Exact moments: heavy ball is linear-Gaussian in the pair (x, u), so its mean and covariance follow a 2d-dimensional
recursion (written here, and checked against the library's exact weak-error mode); both models are
Ornstein–Uhlenbeck processes on a quadratic, whose moments at any time are a matrix exponential and a Van Loan
integral of the model's own ``sde.linear``.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import scipy.linalg as sl
import torch

import sde_sam as ss
from conftest import rows
from sde_sam import phase_space
from sde_sam.drift import model_gradients
from sde_sam.solvers import Coupled, EulerMaruyama, FusedLinear, TwoDraw

F64 = torch.float64
import sde_sam.weak as wem
LAMS, SIGMA2, X0 = (1.0, 4.0), 1.0, (1.0, 1.0)


def quad() -> ss.Quadratic:
    return ss.Quadratic(torch.diag(torch.tensor(LAMS, dtype=F64)), noise_cov=SIGMA2)


# -- exact moments ----------------------------------------------------------------------------------------------
def heavy_ball_moments(lr: float, beta: float, rho: float, steps: int):
    """Mean and covariance of x_k, k = 0..steps, of heavy ball on ½xᵀHx with additive N(0, σ²I) noise: USAM's
    effective gradient is A₀x + Bξ, A₀ = H + ρH², B = σ(I + ρH); u' = βu + G, x' = x − ηu' (MATH §2.1)."""
    H = np.diag(LAMS)
    d, eye = len(LAMS), np.eye(len(LAMS))
    A0, B = H + rho * H @ H, math.sqrt(SIGMA2) * (eye + rho * H)
    T = np.block([[eye - lr * A0, -lr * beta * eye], [A0, beta * eye]])
    C = np.vstack([-lr * B, B])
    m, P = np.concatenate([X0, np.zeros(d)]), np.zeros((2 * d, 2 * d))
    out = [(m[:d].copy(), P[:d, :d].copy())]
    for _ in range(steps):
        m, P = T @ m, T @ P @ T.T + C @ C.T
        out.append((m[:d].copy(), P[:d, :d].copy()))
    return out


def ou_moments(A: np.ndarray, F: np.ndarray, z0: np.ndarray, h: float, steps: int, d: int):
    """Exact mean and covariance of the first ``d`` coordinates of dZ = −AZ dt + F dW at t = k h (Van Loan)."""
    n, M, Q = len(z0), -A, F @ F.T
    E = sl.expm(M * h)
    V = sl.expm(np.block([[-M, Q], [np.zeros((n, n)), M.T]]) * h)
    Qh = V[n:, n:].T @ V[:n, n:]
    m, P, out = z0.copy(), np.zeros((n, n)), []
    for _ in range(steps + 1):
        out.append((m[:d].copy(), P[:d, :d].copy()))
        m, P = E @ m, E @ P @ E.T + Qh
    return out


def expected_loss(moments) -> np.ndarray:
    H = np.diag(LAMS)
    return np.array([0.5 * np.trace(H @ (P + np.outer(m, m))) for m, P in moments])


def loss_gaps(lr: float, beta: float, rho: float, horizon: float = 2.0) -> tuple[float, float]:
    """max_k |E f(x_k) − E f(X)| over k <= horizon/lr of the phase-space model (X at t = k√η) and of the
    first-order model (X at t = kη), each from its own ``sde.linear``."""
    steps = round(horizon / lr)
    method = ss.USAM(lr, rho, momentum=beta) if rho else ss.SGD(lr, momentum=beta)
    disc = expected_loss(heavy_ball_moments(lr, beta, rho, steps))
    gaps = []
    for model, h in (("phase_space", math.sqrt(lr)), ("first_order", lr)):
        sde = ss.sde_model(quad(), method, order=1, momentum_model=model)
        A, F = (t.numpy() for t in sde.linear)
        z0 = np.concatenate([X0, np.zeros(A.shape[0] - len(X0))])
        gaps.append(float(np.abs(disc - expected_loss(ou_moments(A, F, z0, h, steps, len(X0)))).max()))
    return gaps[0], gaps[1]


@pytest.mark.filterwarnings("ignore:lrs=.*a slope needs at least two")
def test_heavy_ball_recursion_matches_the_library_exact_mode():
    lr, beta, steps = 0.05, 0.9, 20
    ours = expected_loss(heavy_ball_moments(lr, beta, 0.2, steps))
    table = wem.weak_error(quad(), ss.USAM(lr, 0.2, momentum=beta), lrs=[lr], horizon=steps * lr,
                           x0=torch.tensor(X0, dtype=F64), mode="exact", test_functions=["loss"], record_every=1,
                           solver_check=False).table
    np.testing.assert_allclose(table["discrete_mean"].to_numpy(), ours, rtol=1e-12, atol=1e-14)


# -- the claim: β = 0.9 at the recipes' learning rates ---------------------------------------------------------
LRS = (0.1, 0.05, 0.025)


def test_phase_space_beats_first_order_and_has_weak_order_one_in_sqrt_lr():
    """Heavy ball (SGD, β = 0.9), η ∈ {0.1, 0.05, 0.025}, exact moments: the phase-space model's loss gap is below
    the first-order model's at every η, and its slope in √η is 1 within 0.1 (least squares over the three, and
    each local slope)."""
    gaps = np.array([loss_gaps(lr, 0.9, 0.0) for lr in LRS])
    h = np.sqrt(LRS)
    slope = np.polyfit(np.log(h), np.log(gaps[:, 0]), 1)[0]
    local = np.diff(np.log(gaps[:, 0])) / np.diff(np.log(h))
    print(f"phase-space gaps {gaps[:, 0]}, first-order gaps {gaps[:, 1]}; slope in sqrt(lr) {slope:.3f}, local {local}")
    assert (gaps[:, 0] < gaps[:, 1]).all(), gaps
    assert abs(slope - 1) < 0.1 and (np.abs(local - 1) < 0.1).all(), (slope, local)


def test_phase_space_with_usam_momentum():
    """USAM (ρ = 0.2) with heavy ball β = 0.9: a stiffer quadratic (H + ρH² up to 7.2, η·7.2 = 0.72 at η = 0.1),
    where the max-over-time gap jumps between oscillation peaks at the largest η: smaller than the first-order
    model's at every η, slope in √η within 0.1 of 1 over five halvings."""
    lrs = (0.1, 0.05, 0.025, 0.0125, 0.00625)
    gaps = np.array([loss_gaps(lr, 0.9, 0.2) for lr in lrs])
    slope = np.polyfit(np.log(np.sqrt(lrs)), np.log(gaps[:, 0]), 1)[0]
    print(f"USAM: phase-space gaps {gaps[:, 0]}, first-order gaps {gaps[:, 1]}; slope in sqrt(lr) {slope:.3f}")
    assert (gaps[:, 0] < gaps[:, 1]).all() and abs(slope - 1) < 0.1, (gaps, slope)


def test_phase_space_regime_gamma_fixed():
    """Its regime, β → 1 with γ² = (1−β)²/η fixed (γ = 1): the phase-space gap still falls like √η, while the
    first-order model's does not fall at all over these η (it needs η/(1−β) = √η/γ small)."""
    lrs = (0.05, 0.025, 0.0125)
    gaps = np.array([loss_gaps(lr, 1 - math.sqrt(lr), 0.0) for lr in lrs])
    local = np.diff(np.log(gaps[:, 0])) / np.diff(np.log(np.sqrt(lrs)))
    print(f"gamma=1: phase-space gaps {gaps[:, 0]} (local slopes {local}), first-order gaps {gaps[:, 1]}")
    assert (np.abs(local - 1) < 0.15).all() and (gaps[:, 0] < gaps[:, 1]).all()
    assert gaps[-1, 1] > gaps[0, 1]  # the first-order gap grows as η shrinks along this path


# -- the coefficients -------------------------------------------------------------------------------------------
def test_linear_coefficients_are_the_underdamped_ou():
    lr, beta, rho = 0.05, 0.9, 0.2
    sde = ss.sde_model(quad(), ss.USAM(lr, rho, momentum=beta), momentum_model="phase_space")
    H, eye, zero = torch.diag(torch.tensor(LAMS, dtype=F64)), torch.eye(2, dtype=F64), torch.zeros(2, 2, dtype=F64)
    gamma = (1 - beta) / math.sqrt(lr)
    A = torch.cat([torch.cat([zero, -eye], 1), torch.cat([H + rho * H @ H, gamma * eye], 1)])
    F = torch.cat([zero, lr**0.25 * math.sqrt(SIGMA2) * (eye + rho * H)])
    torch.testing.assert_close(sde.linear[0], A, rtol=0, atol=1e-14)
    torch.testing.assert_close(sde.linear[1], F, rtol=0, atol=1e-14)
    assert sde.friction == pytest.approx(gamma) and sde.step_time == pytest.approx(math.sqrt(lr))
    assert sde.momentum_scale == 1.0 and sde.label == "order 1 phase space"


@pytest.mark.parametrize("method", rows("momentum"))  # every momentum row of the method table
def test_drift_and_factor_are_the_plain_models_on_v(method):
    """dX = V, dV = −γV + b(X), factor (0; η^{-1/4} F(X)) with (b, F) the β = 0 model's (enumerated, B = 1)."""
    prob = ss.problems.teacher_student(n=4, d_in=1, width=2, batch_size=1)
    gen = torch.Generator().manual_seed(0)
    X = prob.x_init + 0.3 * torch.randn(3, prob.d, dtype=F64, generator=gen)
    V = 0.5 * torch.randn(3, prob.d, dtype=F64, generator=gen)
    kw = dict(order=1, expectation="enumerate")
    sde = ss.sde_model(prob, method, momentum_model="phase_space", **kw)
    # Nesterov: to this order the same SDE as heavy ball (MATH §3.5).
    plain = ss.sde_model(prob, dataclasses.replace(method, momentum=0.0, nesterov=False), **kw)
    gamma = (1 - method.momentum) / math.sqrt(method.lr)
    z = torch.cat([X, V], -1)
    b, want = sde.drift(z), plain.drift(X)  # Eigen-SAM: both models' own generators start alike (seed=0)
    torch.testing.assert_close(b, torch.cat([V, want - gamma * V], -1), rtol=0, atol=1e-13)
    Fz, F = sde.diffusion_factor(z), plain.diffusion_factor(X)
    assert Fz.shape == (3, 2 * prob.d, F.shape[-1]) and Fz[:, : prob.d].abs().max() == 0
    torch.testing.assert_close(Fz[:, prob.d:], method.lr**-0.25 * F, rtol=0, atol=1e-13)


def test_two_draw_increment_has_the_phase_space_moments():
    """B = 1, n = 4: (γ1, γ2, ζ = ±1) enumerated. The V-increment's mean is dt(−γV − E G) and its covariance
    dt√η Cov G — Euler–Maruyama's with the diffusion η^{1/4}Cov^{1/2}; X moves by dt·V exactly."""
    prob = ss.problems.teacher_student(n=4, d_in=1, width=2, batch_size=1)
    method, dt = ss.SAM(0.1, 0.3, momentum=0.9), 0.01
    sde = ss.sde_model(prob, method, momentum_model="phase_space", expectation="two_draw")
    gen = torch.Generator().manual_seed(1)
    X = prob.x_init + 0.3 * torch.randn(1, prob.d, dtype=F64, generator=gen)
    V = 0.5 * torch.randn(1, prob.d, dtype=F64, generator=gen)
    combos = list(itertools.product(range(prob.n), range(prob.n), (-1.0, 1.0)))
    draws = torch.tensor([[[i], [j]] for i, j, _ in combos])
    zeta = torch.tensor([[s] for *_, s in combos], dtype=F64)
    z = torch.cat([X, V], -1).expand(len(combos), -1)
    b, noise = TwoDraw().terms(sde, z, (draws, zeta), None, dt=dt)
    inc = dt * b + math.sqrt(dt) * noise
    d = prob.d
    torch.testing.assert_close(inc[:, :d], (dt * V).expand(len(combos), -1), rtol=0, atol=1e-15)
    _, G, _ = model_gradients(prob, dataclasses.replace(method, momentum=0.0), X.expand(prob.n, -1),
                              torch.arange(prob.n)[:, None], order=1, eps=1e-12)
    gamma = (1 - 0.9) / math.sqrt(0.1)
    torch.testing.assert_close(inc[:, d:].mean(0), dt * (-gamma * V[0] - G.mean(0)), rtol=1e-11, atol=1e-14)
    cov = lambda Y: (Y - Y.mean(0)).T @ (Y - Y.mean(0)) / Y.shape[0]  # noqa: E731
    torch.testing.assert_close(cov(inc[:, d:]), dt * math.sqrt(0.1) * cov(G), rtol=1e-10, atol=1e-15)


# -- integration: every scheme, the clock, x_final ---------------------------------------------------------------
def em_moments(sde, x0: np.ndarray, dt: float, steps: int):
    """Exact moments of Euler–Maruyama (step dt) of the model's linear SDE, at every step."""
    A, F = (t.numpy() for t in sde.linear)
    M = np.eye(A.shape[0]) - dt * A
    m, P, out = np.concatenate([x0, np.zeros(A.shape[0] - len(x0))]), np.zeros(A.shape), []
    for _ in range(steps + 1):
        out.append((m[: len(x0)].copy(), P[: len(x0), : len(x0)].copy()))
        m, P = M @ m, M @ P @ M.T + dt * F @ F.T
    return out


@pytest.mark.parametrize("solver", [FusedLinear(), EulerMaruyama(), TwoDraw()], ids=lambda s: s.name)
def test_simulated_phase_space_matches_its_euler_moments(solver):
    """USAM, β = 0.9, η = 0.05 on the quadratic: E x_1, E f at t = k√η within 4 SE of Euler's exact moments
    (every scheme has Euler's first two moments here); times on the model's own clock; x_final is X."""
    lr, n = 0.05, 4000
    sde = ss.sde_model(quad(), ss.USAM(lr, 0.2, momentum=0.9), momentum_model="phase_space",
                       expectation="two_draw" if isinstance(solver, TwoDraw) else "auto")
    h = math.sqrt(lr)
    dt, steps = h / 10, 80  # 8 discrete steps
    sol = ss.simulate(sde, torch.tensor(X0, dtype=F64), t1=steps * dt, dt=dt, n_paths=n, seed=2, record_every=10,
                      observables=("loss", lambda x: x[:, 0]), solver=solver)
    torch.testing.assert_close(sol.times, torch.arange(9, dtype=F64) * dt * 10, rtol=1e-12, atol=0)
    torch.testing.assert_close(phase_space.discrete_times(sol.times, lr), torch.arange(9, dtype=F64) * lr,
                               rtol=1e-12, atol=1e-15)
    assert sol.x_final.shape == (n, 2) and sol.info["clock"] == "t = k*sqrt(lr)"
    exact = em_moments(sde, np.array(X0), dt, steps)[::10]
    loss = expected_loss(exact)
    for name, want in (("loss", loss), ("lambda_1", np.array([m[0] for m, _ in exact]))):
        z = (sol.mean(name).numpy() - want)[1:] / sol.sem(name).numpy()[1:]
        assert np.abs(z).max() < 4, (name, z)
    torch.testing.assert_close(sol.values["lambda_1"][-1], sol.x_final[:, 0])


def test_euler_terms_equal_the_fused_linear_step():
    """The generic path (closed-form affine terms, wrapped to (X, V)) and the fused OU step of the assembled
    block matrices agree to rounding on the same draws."""
    sde = ss.sde_model(quad(), ss.USAM(0.05, 0.2, momentum=0.9), momentum_model="phase_space")
    kw = dict(t1=0.2, dt=0.01, n_paths=64, seed=5, observables=("loss",))
    a = ss.simulate(sde, torch.tensor(X0, dtype=F64), solver=FusedLinear(), **kw)
    b = ss.simulate(sde, torch.tensor(X0, dtype=F64), solver=EulerMaruyama(), **kw)
    torch.testing.assert_close(a.x_final, b.x_final, rtol=0, atol=1e-12)
    assert a.x_final.std() > 0.01


def test_eigen_sam_and_torchsde_run_on_the_state():
    prob = ss.problems.teacher_student(n=6, d_in=1, width=2, batch_size=2)
    sde = ss.sde_model(prob, ss.EigenSAM(0.1, 0.1, 0.3, momentum=0.9), momentum_model="phase_space")
    sol = ss.simulate(sde, prob.x_init, t1=0.1, dt=0.02, n_paths=6, seed=0, observables=("loss", "grad_norm"))
    assert sol.x_final.shape == (6, prob.d) and torch.isfinite(sol.values["loss"]).all()
    q = ss.sde_model(quad(), ss.USAM(0.05, 0.2, momentum=0.9), momentum_model="phase_space")
    ts = ss.simulate(q, torch.tensor(X0, dtype=F64), t1=0.1, dt=0.01, n_paths=8, backend="torchsde")
    assert ts.x_final.shape == (8, 2) and torch.isfinite(ts.values["loss"]).all()
    assert q.f(0.0, torch.ones(3, 4, dtype=F64)).shape == (3, 4) and q.g(0.0, torch.ones(3, 4, dtype=F64)).shape == (3, 4, 2)


def test_clock_conversions_round_trip():
    t = torch.tensor([0.0, 0.3, 1.2], dtype=F64)
    torch.testing.assert_close(phase_space.model_times(phase_space.discrete_times(t, 0.04), 0.04), t)
    torch.testing.assert_close(phase_space.discrete_times(t, 0.04), 0.2 * t)


# -- refusals -----------------------------------------------------------------------------------------------------
def test_refusals():
    with pytest.raises(ValueError, match=r"`momentum_model` must be one of \('first_order', 'phase_space'\), got "
                                         r"momentum_model='second'"):
        ss.sde_model(quad(), ss.SGD(0.1, momentum=0.9), momentum_model="second")
    sde = ss.sde_model(quad(), ss.SGD(0.1, momentum=0.9), momentum_model="phase_space")
    with pytest.raises(ValueError, match="the coupling drives the first-order model"):
        ss.simulate(sde, torch.tensor(X0, dtype=F64), t1=0.2, dt=0.01, solver=Coupled())
    with pytest.raises(ValueError, match=r"needs dt < sqrt\(lr\)"):
        ss.simulate(sde, torch.tensor(X0, dtype=F64), t1=0.4, dt=0.4, solver=TwoDraw())
    with pytest.warns(UserWarning, match=r"dt >= sqrt\(lr\)"):
        ss.simulate(sde, torch.tensor(X0, dtype=F64), t1=0.4, dt=0.4, n_paths=4)
