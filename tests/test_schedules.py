"""Schedules (MATH §2.3): the ready-made shapes against torch.optim.lr_scheduler step by step, and bad input."""
from __future__ import annotations

import math

import pytest
import torch

from sde_sam import schedules


def _torch_lrs(make_scheduler, lr: float, steps: int) -> list[float]:
    """The learning rates torch's scheduler gives steps 0..steps-1 (one optimizer step per scheduler step)."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("final", [0.0, 0.1])
def test_cosine_is_cosine_annealing_lr(final):
    lr, horizon = 0.05, 2.0
    K = round(horizon / lr)
    want = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=K, eta_min=final * lr), lr, K)
    s = schedules.cosine(lr, horizon=horizon, final=final)
    got = [s.value(k, lr) for k in range(K)]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-12


def test_linear_warmup_is_linear_lr():
    lr, horizon, K = 0.1, 4.0, 40
    want = _torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=10), lr, K)
    s = schedules.linear_warmup(lr, horizon=horizon, warmup=0.25, start=0.25)
    got = [s.value(k, lr) for k in range(K)]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-12


def test_piecewise_is_multistep_lr():
    lr, horizon, K = 0.1, 4.0, 40
    want = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[20, 30], gamma=0.1), lr, K)
    s = schedules.piecewise(lr, horizon=horizon, boundaries=(0.5, 0.75), factors=(1.0, 0.1, 0.01))
    got = [s.value(k, lr) for k in range(K)]
    assert max(abs(a - b) / b for a, b in zip(got, want)) < 1e-12


def test_shape_fixed_on_the_sde_clock_when_lr_shrinks():
    """Rebasing keeps u(τ): the value at nominal time τ = kη is η·u(τ/T) for every η."""
    s = schedules.cosine(0.1, horizon=1.0)
    for lr in (0.1, 0.05, 0.025):
        r = s.rebase(lr)
        k = round(0.5 / lr)  # τ = 0.5
        assert r.value(k, lr) == pytest.approx(lr * 0.5, rel=1e-12)
    assert s.value(10**6, 0.1) == 0.0  # past the horizon: the final value


def test_constant_and_by_step():
    assert schedules.constant(0.3).value(7, 0.1) == 0.3
    s = schedules.by_step(lambda k: 0.1 * 0.5 ** k)
    assert s.base == 0.1 and s.value(3, 0.1) == pytest.approx(0.0125)
    with pytest.raises(ValueError, match="cannot be rescaled"):
        s.rebase(0.05)
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        schedules.by_step(lambda k: -1.0).value(0, 0.1)


def test_resolve():
    assert schedules.resolve("lr", 0.1) == (0.1, None)
    base, sched = schedules.resolve("lr", lambda k: 0.2)
    assert base == 0.2 and isinstance(sched, schedules.ByStep)
    assert schedules.resolve("rho", schedules.follow_lr(0.05))[0] == 0.05
    with pytest.raises(ValueError, match="schedule of rho"):
        schedules.resolve("lr", schedules.follow_lr(0.05))


@pytest.mark.parametrize("call, match", [
    (lambda: schedules.cosine(0.1, horizon=0.0), "`horizon` must be a finite number > 0"),
    (lambda: schedules.cosine(0.1, horizon=1.0, final=2.0), "`final` is a fraction"),
    (lambda: schedules.cosine(-0.1, horizon=1.0), "`base` must be a finite number >= 0"),
    (lambda: schedules.linear_warmup(0.1, horizon=1.0, warmup=0.0), "`warmup` must be a finite number > 0"),
    (lambda: schedules.linear_warmup(0.1, horizon=1.0, warmup=1.5), "`warmup` is a fraction"),
    (lambda: schedules.linear_warmup(0.1, horizon=1.0, start=2.0), "`start` must be in"),
    (lambda: schedules.piecewise(0.1, horizon=1.0, boundaries=(0.5, 0.4), factors=(1, 1, 1)), "increasing"),
    (lambda: schedules.piecewise(0.1, horizon=1.0, boundaries=(0.5,), factors=(1,)), "len\\(boundaries\\) \\+ 1"),
    (lambda: schedules.follow_lr(math.nan), "`rho` must be"),
    (lambda: schedules.by_step(3.0), "`fn` must be callable"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# -- scheduled methods: discrete, SDE and exact moments ---------------------------------------------------------
import numpy as np  # noqa: E402

import sde_sam as ss  # noqa: E402
from sde_sam.weak import exact as exact_mod  # noqa: E402

F64 = torch.float64
H2 = torch.diag(torch.tensor([1.0, 4.0], dtype=F64))


def test_method_with_schedules_rebases_and_fixes_each_step():
    m = ss.SAM(lr=schedules.cosine(0.1, horizon=1.0), rho=schedules.follow_lr(0.05), momentum=0.9)
    assert m.lr == 0.1 and m.rho == 0.05 and m.scheduled
    step = m.at(5)  # tau = 0.5: half way down the cosine
    assert not step.scheduled and step.lr == pytest.approx(0.05) and step.rho == pytest.approx(0.025)
    half = m.with_lr(0.05)  # same shape on the SDE clock: tau = 0.5 is now step 10
    assert half.at(10).lr == pytest.approx(0.025) and half.lr_schedule.horizon == 1.0
    assert ss.SAM(0.1, 0.05).at(3) == ss.SAM(0.1, 0.05)  # nothing scheduled: the method itself
    with pytest.raises(ValueError, match="cannot be rescaled"):
        ss.SGD(lambda k: 0.1).with_lr(0.05)
    assert m.describe()["lr_schedule"].startswith("cosine")


def test_scheduled_usam_matches_torch_sgd_with_cosine_annealing():
    """USAM with momentum, Nesterov and weight decay under CosineAnnealingLR, by hand on a parameter, vs ss.run."""
    lr, rho, K = 0.1, 0.2, 30
    prob = ss.Quadratic(H2, noise_cov=0.04)
    draws = prob.sample_draws((K, 1), torch.Generator().manual_seed(3))
    x0 = torch.tensor([1.0, -0.5], dtype=F64)
    method = ss.USAM(lr=schedules.cosine(lr, horizon=K * lr, final=0.1), rho=schedules.follow_lr(rho),
                     momentum=0.9, nesterov=True, weight_decay=0.01)
    traj = ss.run(prob, method, x0, steps=K, n_paths=1, draws=draws, record_every=K)
    p = torch.nn.Parameter(x0.clone())
    opt = torch.optim.SGD([p], lr=lr, momentum=0.9, nesterov=True, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=K, eta_min=0.1 * lr)
    for k in range(K):
        with torch.no_grad():
            z = draws[k, 0]
            g = H2 @ p + z
            rho_k = rho * opt.param_groups[0]["lr"] / lr
            p.grad = H2 @ (p + rho_k * g) + z
        opt.step()
        sched.step()
    assert (traj.x_final[0] - p.detach()).abs().max() < 1e-12


def test_eigen_sam_recipe_matches_its_loop_for_200_steps():
    """The EigenSAM recipe (momentum 0.9, weight decay 5e-4, cosine, refresh 100, 5 power iterations) by hand."""
    lr, rho, alpha, K = 0.05, 0.05, 0.2, 200
    H = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=F64))
    prob = ss.Quadratic(H, noise_cov=0.01)
    draws = prob.sample_draws((K, 1), torch.Generator().manual_seed(0))
    x0 = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    v0 = torch.tensor([0.3, 0.9, 0.1], dtype=F64)
    method = ss.EigenSAM(lr=schedules.cosine(lr, horizon=K * lr), rho=rho, alpha=alpha, momentum=0.9,
                         weight_decay=5e-4, refresh_every=100, power_iters=5)
    traj = ss.run(prob, method, x0, steps=K, n_paths=1, draws=draws, record_every=K, v0=v0)
    p = torch.nn.Parameter(x0.clone())
    opt = torch.optim.SGD([p], lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=K)
    v = v0 / v0.norm()
    for k in range(K):
        with torch.no_grad():
            if k > 0 and k % 100 == 0:
                for _ in range(5):  # power iteration on the (stochastic = full) Hessian, warm-started
                    v = H @ v
                    v = v / v.norm()
            z = draws[k, 0]
            g = H @ p + z
            gh = g / g.norm()
            c = gh @ v
            s = 1.0 if g @ v >= 0 else -1.0
            eps = rho * (gh + alpha * s * (v - c * gh))
            p.grad = H @ (p + eps) + z
        opt.step()
        sched.step()
    assert (traj.x_final[0] - p.detach()).abs().max() < 1e-10


def test_scheduled_sde_is_euler_on_the_nominal_clock():
    """Noise-free USAM under a piecewise lr and rho: simulate equals Euler with u_k A(rho_k) by hand."""
    lr, T, r = 0.1, 2.0, 4
    prob = ss.Quadratic(H2, noise_cov=0.0)
    lr_s = schedules.piecewise(lr, horizon=T, boundaries=(0.5,), factors=(1.0, 0.25))
    method = ss.USAM(lr=lr_s, rho=schedules.linear_warmup(0.2, horizon=T, warmup=0.5))
    x0 = torch.tensor([1.0, 1.0], dtype=F64)
    sol = ss.simulate(ss.sde_model(prob, method, order=1), x0, t1=T, dt=lr / r, n_paths=1, record_every=r)
    x = x0.clone()
    for i in range(round(T / lr) * r):
        k = i // r
        u, rho_k = method.lr_at(k) / lr, method.rho_at(k)
        x = x - (lr / r) * u * (H2 @ (x + rho_k * (H2 @ x)))
    assert (sol.x_final[0] - x).abs().max() < 1e-12
    with pytest.raises(ValueError, match="lr/dt to be an integer"):
        ss.simulate(ss.sde_model(prob, method, order=1), x0, t1=T, dt=0.04, n_paths=1)
    with pytest.raises(ValueError, match="momentum_model='first_order'"):
        ss.sde_model(prob, ss.SGD(lr_s, momentum=0.9), momentum_model="phase_space")


def _usam_cosine():
    return ss.USAM(lr=schedules.cosine(0.1, horizon=2.0), rho=0.1, weight_decay=0.1)


@pytest.mark.slow
def test_exact_mode_with_a_cosine_schedule_is_order_one():
    """MATH §3.6: piecewise-constant coefficients; exact local slopes within 0.1 of 1 at small lrs."""
    prob = ss.Quadratic(H2, noise_cov=0.09)
    study = ss.weak_error(prob, _usam_cosine(), lrs=[0.01, 0.005, 0.0025, 0.00125], horizon=2.0,
                          x0=torch.ones(2, dtype=F64), rho=lambda lr: 0.5 * lr**0.5, sde_order=1,
                          test_functions=["loss"])
    gaps = study.table.groupby("lr")["gap"].apply(lambda g: g.abs().max()).sort_index(ascending=False).to_numpy()
    lrs = np.array([0.01, 0.005, 0.0025, 0.00125])
    local = np.diff(np.log(gaps)) / np.diff(np.log(lrs))
    assert np.all(np.abs(local - 1.0) < 0.1), local


def test_exact_scheduled_moments_agree_with_monte_carlo():
    """The exact cell's discrete moments vs ss.run, and Euler's exact moments vs ss.simulate: within 4 SE."""
    prob = ss.Quadratic(H2, noise_cov=0.09)
    method, x0, lr, r, n = _usam_cosine(), torch.ones(2, dtype=F64), 0.1, 5, 20_000
    K = 20
    traj = ss.run(prob, method, x0, steps=K, n_paths=n, seed=0, record_every=1)
    Hn = H2.numpy()

    def exact_discrete(k):
        A, Q = exact_mod._linear_model(prob, method.rho_at(k), 1, "factor")
        return exact_mod._discrete_system(A + 0.1 * np.eye(2), Q, method.lr_at(k), 0.0, False)

    ms, Cs = exact_mod._linear_recursion(lambda k: exact_discrete(k)[0], lambda k: exact_discrete(k)[1],
                                         x0.numpy(), list(range(K + 1)))
    want = exact_mod._quad_expectations(["loss"], Hn, ms, Cs)["loss"]
    z = (traj.mean("loss").numpy() - want) / np.maximum(traj.sem("loss").numpy(), 1e-300)
    assert np.abs(z[1:]).max() < 4, z
    sol = ss.simulate(ss.sde_model(prob, method, order=1), x0, t1=K * lr, dt=lr / r, n_paths=n, seed=1,
                      record_every=r)

    def em(i):
        k = i // r
        u = method.lr_at(k) / lr
        A, Q = exact_mod._linear_model(prob, method.rho_at(k), 1, "factor")
        return np.eye(2) - lr / r * u * (A + 0.1 * np.eye(2)), lr**2 / r * u**2 * Q

    ms, Cs = exact_mod._linear_recursion(lambda i: em(i)[0], lambda i: em(i)[1], x0.numpy(),
                                         list(range(0, K * r + 1, r)))
    want = exact_mod._quad_expectations(["loss"], Hn, ms, Cs)["loss"]
    z = (sol.mean("loss").numpy() - want) / np.maximum(sol.sem("loss").numpy(), 1e-300)
    assert np.abs(z[1:]).max() < 4, z


def test_weak_error_refuses_a_step_indexed_schedule():
    prob = ss.Quadratic(H2, noise_cov=0.09)
    with pytest.raises(ValueError, match="cannot be rescaled"):
        ss.weak_error(prob, ss.USAM(lr=lambda k: 0.1, rho=0.1), lrs=[0.1, 0.05], horizon=1.0,
                      x0=torch.ones(2, dtype=F64))
