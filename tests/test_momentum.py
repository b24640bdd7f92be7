"""Momentum (MATH §2.1, §3.5): β = 0 is the plain method bit for bit; heavy ball and Nesterov equal
torch.optim.SGD on an nn.Module, plain and as SAM's base step; the public step API and draw replay; the
momentum SDE's closed forms on a noisy quadratic."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import sde_sam as ss
from conftest import methods, rows
from sde_sam.discrete import StepState, initial_state

F64 = torch.float64


def _bounded(x):
    return (1 - torch.cos(x)).sum() + 0.3 * x[0] * x[1] + 0.05 * (x**2).sum()


def _quartic(noise_cov=0.05):
    """A non-quadratic loss with a bounded Hessian (no run blows up)."""
    return ss.Objective(_bounded, 3, noise_cov=noise_cov, dtype=F64)


def _old_step(problem, method, x, draws, eps, v):
    """The step as written before momentum existed (for the bit-for-bit comparison)."""
    g = problem.stochastic_grad(x, draws)
    if not method.perturbs:
        return x - method.lr * g
    full = problem.grad(x) if method.uses_full_grad else None
    oracle = (dict(x=x, hvp=lambda u: problem.stochastic_hvp(x, u, draws),
                   grad_at=lambda y: problem.stochastic_grad(y, draws)) if method.needs_oracle else {})
    pert = method.perturbation(g, eps=eps, full_grad=full, v=v, **oracle)
    return x - method.lr * problem.stochastic_grad(x + pert.eps, draws)


# -- β = 0 is the plain method ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", rows("plain"))  # every method of MATH §2, §2.1, §2.2 without options
def test_momentum_zero_is_the_plain_step_bit_for_bit(method):
    prob = _quartic()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=gen, dtype=F64)
    state = initial_state(prob, method, x, seed=1)
    v = state.v
    explicit = dataclasses.replace(method, momentum=0.0)
    for k in range(6):
        draws = prob.sample_draws((16,), gen)
        if method.uses_eigenvector and k > 0 and k % method.refresh_every == 0:
            v = ss.methods.power_iteration(lambda u: prob.stochastic_hvp(x, u, draws), v, method.power_iters, 1e-12)
        want = _old_step(prob, method, x, draws, 1e-12, v)
        got, state = ss.step(prob, explicit, x, draws, state=state)
        assert torch.equal(got, want), k
        assert state.momentum is None and state.k == k + 1
        x = got


@pytest.mark.slow
def test_momentum_zero_runs_equal_default_runs():
    prob = _quartic()
    x0 = torch.tensor([0.5, -1.0, 0.3], dtype=F64)
    kw = dict(steps=15, n_paths=32, seed=3, record_every=5, observables=("loss", "grad_norm"))
    for m in methods("plain"):
        a = ss.run(prob, m, x0, **kw)
        b = ss.run(prob, dataclasses.replace(m, momentum=0.0, nesterov=False), x0, **kw)
        assert torch.equal(a.x_final, b.x_final), m.name


# -- against torch.optim.SGD on an nn.Module ----------------------------------------------------------------------
class _Flat:
    """An nn.Module's trainable parameters as one flat float64 vector (functional_call over views)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.sizes = [p.numel() for _, p in model.named_parameters()]

    def params(self, x: torch.Tensor) -> dict:
        return {n: t.reshape(s) for n, t, s in zip(self.names, torch.split(x, self.sizes), self.shapes)}

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def sample_loss(self, x: torch.Tensor, sample) -> torch.Tensor:
        xi, yi = sample
        out = functional_call(self.model, self.params(x), (xi.unsqueeze(0),))
        return 0.5 * ((out.squeeze(0) - yi) ** 2).sum()


def _module_problem(seed=0, batch_size=4):
    torch.manual_seed(seed)  # test-local: nn.Linear's initialisation
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(F64)
    g = torch.Generator().manual_seed(seed)
    X, Y = torch.randn(24, 3, generator=g, dtype=F64), torch.randn(24, 2, generator=g, dtype=F64)
    flat = _Flat(model)
    prob = ss.FiniteSum(flat.sample_loss, (X, Y), batch_size=batch_size, d=sum(flat.sizes))
    batches = prob.sample_draws((20, 1), g)  # (steps, n_paths=1, B) indices
    return model, flat, prob, (X, Y), batches


def _torch_loss(model, data, idx):
    X, Y = data
    return (0.5 * ((model(X[idx]) - Y[idx]) ** 2).sum(-1)).mean()


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_sgd_momentum_equals_torch_optim_sgd(beta, nesterov):
    model, flat, prob, data, batches = _module_problem()
    method = ss.SGD(0.05, momentum=beta, nesterov=nesterov)
    x, state = flat.flat().unsqueeze(0), None
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=beta, nesterov=nesterov)
    for k in range(20):
        opt.zero_grad()
        _torch_loss(model, data, batches[k, 0]).backward()
        opt.step()
        x, state = ss.step(prob, method, x, batches[k], state=state)
        torch.testing.assert_close(x[0], flat.flat(), rtol=0, atol=1e-12)
    assert float((x[0] - _module_problem()[1].flat()).norm()) > 0.1  # the runs moved


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
@pytest.mark.parametrize("kind", ["SAM", "USAM"])
def test_sam_momentum_equals_hand_written_sam_on_torch_sgd(kind, nesterov):
    """SAM written as practitioners do: ascend to w + ε, take the gradient there, restore w, let
    torch.optim.SGD(momentum, nesterov) step with that gradient."""
    rho, beta, lr = 0.05, 0.8, 0.05
    model, flat, prob, data, batches = _module_problem(seed=1)
    method = getattr(ss, kind)(lr, rho, momentum=beta, nesterov=nesterov)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=beta, nesterov=nesterov)
    params = list(model.parameters())
    x, state = flat.flat().unsqueeze(0), None
    for k in range(20):
        idx = batches[k, 0]
        grads = torch.autograd.grad(_torch_loss(model, data, idx), params)
        norm = torch.sqrt(sum((gr**2).sum() for gr in grads))
        scale = rho / norm if kind == "SAM" else rho
        with torch.no_grad():
            eps = [scale * gr for gr in grads]
            for p, e in zip(params, eps):
                p.add_(e)
        opt.zero_grad()
        _torch_loss(model, data, idx).backward()
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        opt.step()
        x, state = ss.step(prob, method, x, batches[k], state=state)
        torch.testing.assert_close(x[0], flat.flat(), rtol=0, atol=1e-12)


# -- the public step API ----------------------------------------------------------------------------------------
def test_step_loop_reproduces_run_with_its_draws():
    prob = _quartic()
    method = ss.USAM(0.05, 0.2, momentum=0.9, nesterov=True)
    x0 = torch.tensor([0.5, -1.0, 0.3], dtype=F64)
    try:
        traj = ss.run(prob, method, x0, steps=12, n_paths=8, seed=4, keep_draws=True)
    except TypeError as err:  # the engine's replay interface (helper A2) not landed yet
        pytest.xfail(f"engine without draws/keep_draws: {err}")
    x, state = x0.expand(8, 3).clone(), None
    for k in range(12):
        x, state = ss.step(prob, method, x, traj.draws[k], state=state)
    assert torch.equal(x, traj.x_final)
    again = ss.run(prob, method, x0, steps=12, n_paths=8, seed=99, draws=traj.draws)
    assert torch.equal(again.x_final, traj.x_final)


def test_eigen_sam_accepts_an_initial_eigenvector(spd):
    H = spd(3, seed=4, lo=0.5, hi=4.0)
    v1 = torch.linalg.eigh(H).eigenvectors[:, -1]
    prob = ss.Quadratic(H, noise_cov=0.01)
    method = ss.EigenSAM(0.05, 0.1, 0.5, refresh_every=1000, momentum=0.5)
    x0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = ss.run(prob, method, x0, steps=5, seed=1, v0=v1)  # (d,): broadcast to every path
    b = ss.run(prob, method, x0, steps=5, seed=1, v0=v1.expand(6, 3).clone())
    assert torch.equal(a.x_final, b.x_final)
    x, state = x0.clone(), StepState(v=v1.expand(6, 3).clone())
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x, state = ss.step(prob, method, x, prob.sample_draws((6,), gen), state=state)
    assert torch.equal(state.v, v1.expand(6, 3))  # no refresh within refresh_every
    assert state.momentum.shape == (6, 3) and state.guarded.shape == (6,)


@pytest.mark.parametrize("call, err, msg", [
    (lambda p, x, d: ss.step(p, ss.SGD(0.1), x[0], d), ValueError, r"`x` must be a tensor of shape \(n, d\) with d=3"),
    (lambda p, x, d: ss.step(p, ss.SGD(0.1), x, d[:2]), ValueError, r"`draws` must have leading dim n=4"),
    (lambda p, x, d: ss.step(p, ss.SGD(0.1), x, d, state=(None,)), TypeError, r"`state` must be a StepState"),
    (lambda p, x, d: ss.step(x, ss.SGD(0.1), x, d), TypeError, r"`problem` must be an sde_sam Problem"),
    (lambda p, x, d: ss.run(p, ss.SGD(0.1), x, steps=2, v0=x), ValueError, r"`v0` is only for methods with an eigenvector"),
    (lambda p, x, d: ss.run(p, ss.EigenSAM(0.1, 0.1), x, steps=2, v0=torch.zeros(3, dtype=F64)), ValueError,
     r"`v0` must be finite with no zero rows"),
    (lambda p, x, d: ss.run(p, ss.EigenSAM(0.1, 0.1), x, steps=2, v0=torch.ones(2, dtype=F64)), ValueError,
     r"`v0` must be a torch.float64 tensor of shape \(3,\) or \(4, 3\)"),
    (lambda p, x, d: ss.run(p, ss.SGD(0.1), x, steps=2, keep_draws=1), ValueError, r"`keep_draws` must be True or False"),
])
def test_step_and_run_validation(call, err, msg):
    prob = _quartic()
    x = torch.ones(4, 3, dtype=F64)
    with pytest.raises(err, match=msg):
        call(prob, x, prob.sample_draws((4,), torch.Generator()))


# -- the momentum SDE (MATH §3.5) -----------------------------------------------------------------------------------
def _momentum_sde_landed() -> bool:
    sde = ss.sde_model(ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.01), ss.USAM(0.05, 0.1, momentum=0.5))
    x = torch.ones(1, 2, dtype=F64)
    plain = ss.sde_model(ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.01), ss.USAM(0.05, 0.1))
    return bool(torch.allclose(sde.drift(x), 2.0 * plain.drift(x)))


@pytest.mark.slow
@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
def test_momentum_sde_mean_and_stationary_loss(nesterov):
    """USAM with momentum on f = ½ xᵀ diag(λ) x, Σ = σ² I: E X_t = e^{-At} x₀ with A = H(I+ρH)/(1-β), and the
    stationary loss ησ²(d + ρ tr H) / (4(1-β)) (MATH §3.5), within 4 SE plus Euler's O(dt) bias."""
    if not _momentum_sde_landed():
        pytest.xfail("the momentum SDE scaling (helper A1, sde.py) has not landed")
    lams, sigma2, lr, rho, beta = torch.tensor([1.0, 0.5], dtype=F64), 0.04, 0.05, 0.1, 0.5
    prob = ss.Quadratic(torch.diag(lams), noise_cov=sigma2)
    sde = ss.sde_model(prob, ss.USAM(lr, rho, momentum=beta, nesterov=nesterov), order=1)
    x0 = torch.tensor([1.0, -1.0], dtype=F64)
    a = lams * (1 + rho * lams) / (1 - beta)
    dt, t1, n = lr / 20, 8.0, 20_000

    def coord(i):
        def f(x):
            return x[:, i]
        f.__name__ = f"x{i}"
        return f

    sol = ss.simulate(sde, x0, t1=t1, dt=dt, n_paths=n, seed=5, record_every=round(1.0 / dt),
                      observables=("loss", coord(0), coord(1)))
    at1 = 1  # t = 1.0
    for i in range(2):
        mean, se = sol.mean(f"x{i}")[at1], sol.sem(f"x{i}")[at1]
        exact = math.exp(-float(a[i])) * float(x0[i])
        assert abs(float(mean) - exact) < 4 * float(se) + 2 * dt * float(a[i]) * abs(exact), (i, mean, exact)
    stationary = lr * sigma2 * (2 + rho * float(lams.sum())) / (4 * (1 - beta))
    late = sol.values["loss"][-3:].mean(0)  # t = 6, 7, 8: e^{-2 a_min t} < 1e-5
    mean, se = float(late.mean()), float(late.std() / math.sqrt(n))
    # Euler–Maruyama's stationary variance of an OU component is exact·(1 - a dt/2)^{-1}: allow that bias.
    assert abs(mean - stationary) < 4 * se + float(a.max()) * dt / 2 * stationary, (mean, stationary, se)
