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
