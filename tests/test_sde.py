"""SDE models and the solver against closed forms, finite differences, naive loops and torchsde (MATH §3–4)."""
import dataclasses
import itertools
import math

import pytest
import torch

import sde_sam as ss
from conftest import rows
from sde_sam import autodiff, theory
from sde_sam.drift import model_gradients, usam_minibatch_drift
from sde_sam.solvers import TwoDraw

f64 = torch.float64


def diag_quadratic(lams=(1.0, 4.0), sigma2=0.09):
    return ss.Quadratic(torch.diag(torch.tensor(lams, dtype=f64)), noise_cov=sigma2)


def se_diff(a, b):
    return math.sqrt(a**2 + b**2)


# ---------------------------------------------------------------- closed forms on quadratics (MATH §3.4)
@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.0, 0.2])
def test_usam_sde_mean_matches_ou_formula(rho):
    lams, lr, t1, dt = torch.tensor([1.0, 2.0], dtype=f64), 0.05, 0.5, 2.5e-4
    prob = diag_quadratic(tuple(lams.tolist()))
    method = ss.SGD(lr) if rho == 0 else ss.USAM(lr, rho)
    x0 = torch.tensor([1.0, -1.0], dtype=f64)
    coords = [lambda x: x[:, 0], lambda x: x[:, 1]]
    sol = ss.simulate(ss.sde_model(prob, method, order=1), x0, t1=t1, dt=dt, n_paths=20_000, seed=3,
                      observables=coords, record_every=500)
    a = lams * (1 + rho * lams)
    for i, name in enumerate(sol.values):
        exact = torch.exp(-a[i] * sol.times) * x0[i]
        # Euler's bias of the mean, (1 - a dt)^k vs e^{-a t}: must be well under the Monte-Carlo error.
        em_bias = (exact - (1 - a[i] * dt) ** (sol.times / dt) * x0[i]).abs().max()
        assert em_bias < sol.sem(name)[1:].min()
        assert ((sol.mean(name) - exact).abs()[1:] < 4 * sol.sem(name)[1:]).all()


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.0, 0.2])
def test_usam_sde_stationary_loss(rho):
    lams, lr, sigma2, dt = (1.0, 2.0), 0.05, 0.09, 2e-3
    prob = diag_quadratic(lams, sigma2)
    method = ss.SGD(lr) if rho == 0 else ss.USAM(lr, rho)
    sol = ss.simulate(ss.sde_model(prob, method, order=1), torch.zeros(2, dtype=f64), t1=5.0, dt=dt,
                      n_paths=20_000, seed=4, record_every=2500)
    # Euler's stationary variance is 1/(1 - a dt/2) times the SDE's: that bias must be under the SE.
    a_max = max(lams) * (1 + rho * max(lams))
    assert lr * sigma2 / 4 * (len(lams) + rho * sum(lams)) * a_max * dt / 2 < float(sol.sem("loss")[-1])
    exact = lr * sigma2 / 4 * (len(lams) + rho * sum(lams))
    assert exact == pytest.approx(float(theory.usam_sde_stationary_loss(torch.tensor(lams), lr, rho, sigma2)))
    assert abs(float(sol.mean("loss")[-1]) - exact) < 4 * float(sol.sem("loss")[-1])


# ---------------------------------------------------------------- drift: Taylor orders (MATH §3.1)
def _converged(method):
    """Eigen-SAM with a converged eigenvector (the order in ρ is the model's, not the power iteration's)."""
    if not method.uses_eigenvector:
        return method
    return dataclasses.replace(method, power_iters=200, init_power_iters=200)


# The plain perturbing rows without an oracle (those are tested below, with the oracle's own ε).
@pytest.mark.slow
@pytest.mark.parametrize("template", rows("plain", "perturbs", without=("needs_oracle",)))
def test_taylor_drifts_have_the_right_order_in_rho(template):
    # Teacher-student, B=1: expectations are exact enumerations and the third derivative is non-zero.
    prob = ss.problems.teacher_student(n=12, batch_size=1)
    x = prob.x_init.expand(3, -1) + 0.3 * torch.randn(3, prob.d, dtype=f64, generator=torch.Generator().manual_seed(0))
    errs = {1: [], 2: []}
    for rho in (0.04, 0.02):
        method = _converged(template.with_rho(rho))
        exact = ss.sde_model(prob, method, order="exact").drift(x)
        for r in (1, 2):
            errs[r].append((ss.sde_model(prob, method, order=r).drift(x) - exact).norm())
    # Halving rho divides the order-1 error by 4 (O(rho^2)) and the order-2 error by 8 (O(rho^3)).
    assert math.log2(errs[1][0] / errs[1][1]) == pytest.approx(2.0, abs=0.15)
    assert math.log2(errs[2][0] / errs[2][1]) == pytest.approx(3.0, abs=0.2)


def test_order1_drift_is_central_difference_in_rho():
    # b(s) = -E_i grad f_i(x + s * g_hat_i), the exact SAM drift at radius s (B=1: exact enumeration).
    prob = ss.problems.teacher_student(n=10, batch_size=1)
    x = prob.x_init.expand(2, -1).clone()
    draws = torch.arange(prob.n)[:, None].repeat(2, 1)
    xr = x.repeat_interleave(prob.n, 0)
    g = prob.stochastic_grad(xr, draws)
    g_hat = g / g.norm(dim=-1, keepdim=True)
    b = lambda s: -prob.stochastic_grad(xr + s * g_hat, draws).view(2, prob.n, -1).mean(1)
    h, rho = 1e-4, 0.05
    central = (b(h) - b(-h)) / (2 * h)  # error O(h^2)
    order1 = ss.sde_model(prob, ss.SAM(0.1, rho), order=1).drift(x)
    assert torch.allclose(order1, b(0.0) + rho * central, atol=1e-8, rtol=0)
    assert not torch.allclose(order1, b(0.0), atol=1e-4)  # the rho-term is really there


def test_autodiff_matches_finite_differences():
    prob = ss.problems.teacher_student(n=8, batch_size=1)
    gen = torch.Generator().manual_seed(1)
    x, u, w = (torch.randn(3, prob.d, dtype=f64, generator=gen) for _ in range(3))
    h = 1e-5
    fd_hvp = (prob.grad(x + h * w) - prob.grad(x - h * w)) / (2 * h)
    assert torch.allclose(prob.hvp(x, w), fd_hvp, atol=1e-7)
    fd_third = (prob.hvp(x + h * u, w) - prob.hvp(x - h * u, w)) / (2 * h)
    assert torch.allclose(autodiff.third_derivative(prob.grad_single, x, u, w), fd_third, atol=1e-6)
    terms = autodiff.taylor_terms(prob.grad_single, x, u, 2)
    assert torch.allclose(terms[2], 0.5 * autodiff.third_derivative(prob.grad_single, x, u, u), atol=1e-12)


# ---------------------------------------------------------------- USAM mini-batch drift (MATH §3.2)
@pytest.mark.parametrize("replacement", [True, False])
def test_usam_minibatch_drift_equals_enumeration_over_batches(replacement):
    n, B, rho = 5, 2, 0.3
    prob = ss.problems.teacher_student(n=n, batch_size=B, replacement=replacement)
    x = prob.x_init.expand(2, -1).clone()
    batches = (itertools.product(range(n), repeat=B) if replacement else itertools.combinations(range(n), B))
    batches = torch.tensor(list(batches))
    N = batches.shape[0]
    xr = x.repeat_interleave(N, 0)
    _, G, _ = model_gradients(prob, ss.USAM(0.1, rho), xr, batches.repeat(2, 1), order=1, eps=1e-12)
    brute = -G.view(2, N, -1).mean(1)
    assert torch.allclose(usam_minibatch_drift(prob, x, rho), brute, atol=1e-12)
    assert torch.allclose(ss.sde_model(prob, ss.USAM(0.1, rho), order=1).drift(x), brute, atol=1e-12)


# ---------------------------------------------------------------- diffusion (MATH §3.3)
def _naive_effective_grad(prob, method, x, i):
    """G^(1)_i = g_i + H_i eps_i by plain autograd, one sample at a time."""
    xi = x.clone().requires_grad_(True)
    li = prob.loss_fn(xi, tuple(t[i] for t in prob.data))
    (g,) = torch.autograd.grad(li, xi, create_graph=True)
    full = prob.grad(x[None]) if method.uses_full_grad else None  # DNSAM's ∇f (a constant of x here)
    eps = method.perturbation(g.detach()[None], eps=1e-12, full_grad=full).eps[0]
    (Heps,) = torch.autograd.grad(g @ eps, xi)
    return g.detach() + Heps


# The rows whose ε needs only the gradients (no oracle, no eigenvector state), without options.
@pytest.mark.parametrize("method", rows("plain", without=("needs_oracle", "eigenvector")))
def test_factor_diffusion_equals_naive_covariance(method):
    prob = ss.problems.teacher_student(n=9, batch_size=1)
    x = prob.x_init
    G = torch.stack([_naive_effective_grad(prob, method, x, i) for i in range(prob.n)])
    cov = (G - G.mean(0)).T @ (G - G.mean(0)) / prob.n
    F = ss.sde_model(prob, method, order=1).diffusion_factor(x[None])[0]
    assert torch.allclose(F @ F.T, method.lr * cov, atol=1e-12)
    assert torch.linalg.eigvalsh(F @ F.T).min() > -1e-14


def test_additive_usam_factor_is_closed_form():
    H = torch.tensor([[2.0, 0.5], [0.5, -1.0]], dtype=f64)
    Sigma = torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=f64)
    lr, rho = 0.05, 0.4
    prob = ss.Quadratic(H, noise_cov=Sigma)
    F = ss.sde_model(prob, ss.USAM(lr, rho), order=1).diffusion_factor(torch.ones(1, 2, dtype=f64))[0]
    I = torch.eye(2, dtype=f64)
    assert torch.allclose(F @ F.T, lr * (I + rho * H) @ Sigma @ (I + rho * H), atol=1e-14)
    # the same model through autodiff (Objective) rather than closed-form matrices
    obj = ss.Objective(lambda x: 0.5 * x @ H @ x, 2, noise_cov=Sigma, dtype=f64)
    F2 = ss.sde_model(obj, ss.USAM(lr, rho), order=1).diffusion_factor(torch.ones(1, 2, dtype=f64))[0]
    assert torch.allclose(F2 @ F2.T, F @ F.T, atol=1e-14)


def test_paper_diffusion_psd_counterexample_is_clipped_and_reported():
    # MATH §3.3: Sigma = I, H = diag(1, -1), rho = 0.6 -> eigenvalues -0.2 and 2.2.
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, -1.0], dtype=f64)), noise_cov=1.0)
    lr = 0.01
    for problem in (prob, ss.Objective(lambda x: 0.5 * (x[0] ** 2 - x[1] ** 2), 2, noise_cov=1.0, dtype=f64)):
        sde = ss.sde_model(problem, ss.USAM(lr, 0.6), order=1, diffusion="paper")
        F = sde.diffusion_factor(torch.zeros(1, 2, dtype=f64))[0]
        assert torch.allclose(F @ F.T, lr * torch.diag(torch.tensor([2.2, 0.0], dtype=f64)), atol=1e-12)
        assert sde.clip_report.clipped >= 1
        assert sde.clip_report.max_fraction == pytest.approx(0.2 / 2.4)
        assert "clipped" in str(sde.clip_report)


@pytest.mark.slow
def test_sampled_factor_is_unbiased():
    prob = diag_quadratic((1.0, 4.0), 0.5)
    method, x = ss.SAM(0.1, 0.3), torch.tensor([[0.2, -0.1]], dtype=f64)
    sde = ss.sde_model(prob, method, order=1, expectation=8, seed=0)
    covs = torch.stack([(lambda F: F @ F.transpose(1, 2))(sde.diffusion_factor(x))[0] for _ in range(3000)])
    big = ss.sde_model(prob, method, order=1, expectation=400_000, seed=1).diffusion_factor(x)[0]
    target = big @ big.T
    se = covs.std(0) / math.sqrt(covs.shape[0])
    assert ((covs.mean(0) - target).abs() < 4 * se + 1e-4 * target.abs().max()).all()


# ---------------------------------------------------------------- solver vs torchsde
@pytest.mark.slow
def test_native_solver_agrees_with_torchsde():
    prob = ss.problems.linear_regression(n=16, d=2, batch_size=1)
    sde = ss.sde_model(prob, ss.SAM(0.1, 0.2), order=1)
    # native: the two-draw weak scheme (MATH §4.1); torchsde: the stateless exact enumeration
    assert (sde.expectation_mode, sde.stateless_mode) == ("two_draw", "enumerate")
    x0 = torch.tensor([1.0, -1.0], dtype=f64)
    kw = dict(t1=0.5, dt=0.01, n_paths=4000, record_every=50, observables=[lambda x: x[:, 0], lambda x: x[:, 1]])
    a = ss.simulate(sde, x0, seed=0, **kw)
    b = ss.simulate(sde, x0, seed=1, backend="torchsde", **kw)
    for name in a.values:
        assert abs(float(a.mean(name)[-1] - b.mean(name)[-1])) < 4 * se_diff(float(a.sem(name)[-1]), float(b.sem(name)[-1]))
    xa, xb = a.x_final, b.x_final
    for i, j in [(0, 0), (0, 1), (1, 1)]:
        pa = (xa[:, i] - xa[:, i].mean()) * (xa[:, j] - xa[:, j].mean())
        pb = (xb[:, i] - xb[:, i].mean()) * (xb[:, j] - xb[:, j].mean())
        se = se_diff(float(pa.std()) / math.sqrt(len(pa)), float(pb.std()) / math.sqrt(len(pb)))
        assert abs(float(pa.mean() - pb.mean())) < 4 * se


def test_linear_fast_path_equals_autodiff_path():
    H = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=f64)
    quad = ss.Quadratic(H, noise_cov=0.2)
    obj = ss.Objective(lambda x: 0.5 * x @ H @ x, 2, noise_cov=0.2, dtype=f64)
    x0 = torch.tensor([1.0, 2.0], dtype=f64)
    kw = dict(t1=0.2, dt=0.005, n_paths=300, seed=5)
    a = ss.simulate(ss.sde_model(quad, ss.USAM(0.05, 0.3)), x0, **kw)
    b = ss.simulate(ss.sde_model(obj, ss.USAM(0.05, 0.3)), x0, **kw)
    assert ss.sde_model(quad, ss.USAM(0.05, 0.3)).linear is not None
    assert torch.allclose(a.x_final, b.x_final, atol=1e-12)


def test_simulate_is_independent_of_chunk_size_and_reproducible():
    prob = diag_quadratic()
    sde = ss.sde_model(prob, ss.SAM(0.05, 0.1), order=1, expectation=4)
    x0 = torch.ones(2, dtype=f64)
    kw = dict(t1=0.05, dt=0.005, n_paths=2500, seed=7)
    a = ss.simulate(sde, x0, **kw)
    b = ss.simulate(sde, x0, chunk_size=1024, **kw)
    c = ss.simulate(sde, x0, **kw)
    assert torch.equal(a.x_final, b.x_final) and torch.equal(a.x_final, c.x_final)


def test_two_point_increments_have_the_same_mean():
    prob = diag_quadratic((1.0, 2.0), 1.0)
    sde = ss.sde_model(prob, ss.USAM(0.1, 0.2), order=1)
    kw = dict(t1=1.0, dt=0.01, n_paths=20_000, record_every=100)
    a = ss.simulate(sde, torch.ones(2, dtype=f64), seed=0, **kw)
    b = ss.simulate(sde, torch.ones(2, dtype=f64), seed=1, increments="two_point", **kw)
    assert abs(float(a.mean("loss")[-1] - b.mean("loss")[-1])) < 4 * se_diff(float(a.sem("loss")[-1]), float(b.sem("loss")[-1]))


# ---------------------------------------------------------------- saddles (MATH §7)
@pytest.mark.slow
@pytest.mark.parametrize("method_cls", [ss.SAM, ss.DNSAM])
@pytest.mark.parametrize("start, attracted", [((0.3, 0.2), True), ((0.3, 0.6), False)])
def test_sam_and_dnsam_flows_at_a_saddle(method_cls, start, attracted):
    prob = ss.saddle((1.0, -1.0))  # noise off
    sde = ss.sde_model(prob, method_cls(0.01, 0.5), order=1)
    assert sde.deterministic
    sol = ss.simulate(sde, torch.tensor(start, dtype=f64), t1=3.0, dt=1e-3, observables=["x_norm"], record_every=3000)
    final = float(sol.mean("x_norm")[-1])
    assert (final < 0.01) if attracted else (final > 1.0)


@pytest.mark.parametrize("rho, attracted", [(1.5, True), (0.5, False)])
def test_usam_flow_attracted_iff_rho_above_one(rho, attracted):
    sde = ss.sde_model(ss.saddle((1.0, -1.0)), ss.USAM(0.1, rho), order=1)
    sol = ss.simulate(sde, torch.tensor([0.3, 0.2], dtype=f64), t1=20.0, dt=0.01, observables=["x_norm"],
                      record_every=2000)
    assert (float(sol.mean("x_norm")[-1]) < 1e-3) if attracted else (float(sol.mean("x_norm")[-1]) > 1.0)
    assert theory.usam_flow_contracts(rho, -1.0) == attracted


# ---------------------------------------------------------------- interface
def test_torchsde_interface_and_shapes():
    prob = ss.problems.teacher_student(n=6, batch_size=1)
    sde = ss.sde_model(prob, ss.USAM(0.05, 0.1), order=2)
    x = prob.x_init.expand(4, -1).clone()
    assert (sde.noise_type, sde.sde_type) == ("general", "ito")
    assert sde.f(0.0, x).shape == (4, prob.d)
    assert sde.g(0.0, x).shape == (4, prob.d, sde.noise_dim)


def test_dt_not_below_lr_warns():
    sde = ss.sde_model(diag_quadratic(), ss.USAM(0.05, 0.1))
    with pytest.warns(UserWarning, match="dt >= lr"):
        ss.simulate(sde, torch.ones(2, dtype=f64), t1=0.1, dt=0.05)


@pytest.mark.parametrize("kwargs, match", [
    (dict(order=3), "`order` must be one of"),
    (dict(diffusion="sqrt"), "`diffusion` must be one of"),
    (dict(expectation=1), "`expectation` must be"),
    (dict(expectation="enumerate"), "needs a finite noise law"),
])
def test_sde_model_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ss.sde_model(diag_quadratic(), ss.SAM(0.05, 0.1), **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(t1=1.0, dt=0.3), "integer multiple of `dt`"),
    (dict(t1=-1.0, dt=0.01), "`t1` must be"),
    (dict(t1=1.0, dt=0.01, increments="uniform"), "`increments` must be one of"),
    (dict(t1=1.0, dt=0.01, backend="jax"), "`backend` must be one of"),
])
def test_simulate_validation(kwargs, match):
    sde = ss.sde_model(diag_quadratic(), ss.USAM(0.05, 0.1))
    with pytest.raises(ValueError, match=match):
        ss.simulate(sde, torch.ones(2, dtype=f64), **kwargs)
    with pytest.raises(TypeError, match="`sde` must come from"):
        ss.simulate("sde", torch.ones(2, dtype=f64), t1=1.0, dt=0.01)


# ---------------------------------------------------------------- paper form with d > draws (regression)
@pytest.mark.parametrize("batch_size, expectation", [(1, "auto"), (2, 4)])
def test_paper_diffusion_noise_dimension_is_d_when_d_exceeds_the_draws(batch_size, expectation):
    # d = 6 > n = 3 enumerated samples (B = 1), or > K = 4 sampled batches: the paper factor is (d, d).
    prob = ss.problems.teacher_student(n=3, d_in=2, width=2, batch_size=batch_size)
    sde = ss.sde_model(prob, ss.SAM(0.1, 0.2), order=1, diffusion="paper", expectation=expectation)
    assert sde.noise_dim == prob.d == 6 and sde.expectation_mode in ("enumerate", "sampled")
    x = prob.x_init.expand(3, -1).clone()
    assert sde.g(0.0, x).shape == (3, prob.d, prob.d)
    sol = ss.simulate(sde, prob.x_init, t1=0.05, dt=0.01, n_paths=8, seed=0)
    assert torch.isfinite(sol.x_final).all() and not sol.x_final.eq(prob.x_init).all()


# ---------------------------------------------------------------- momentum models (MATH §3.5)
@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_model_is_the_plain_model_at_rate_lr_over_one_minus_beta(nesterov):
    beta = 0.75
    prob = ss.problems.teacher_student(n=6, d_in=1, width=2)
    x = prob.x_init.expand(2, -1).clone()
    for order in (1, "exact"):
        plain = ss.sde_model(prob, ss.SAM(0.1, 0.2), order=order)
        mom = ss.sde_model(prob, ss.SAM(0.1, 0.2, momentum=beta, nesterov=nesterov), order=order)
        assert torch.allclose(mom.drift(x), plain.drift(x) / (1 - beta), atol=1e-14)
        assert torch.allclose(mom.diffusion_factor(x), plain.diffusion_factor(x) / (1 - beta), atol=1e-14)
    # Quadratic, USAM: OU with A = H(I + rho H)/(1-beta), F = sqrt(lr)(I + rho H) Sigma^1/2 /(1-beta), and
    # stationary loss lr sigma^2 (d + rho tr H) / (4 (1-beta)) (Lyapunov, diagonal H).
    lams, lr, rho, sigma2 = torch.tensor([1.0, 3.0], dtype=f64), 0.05, 0.2, 0.09
    sde = ss.sde_model(diag_quadratic(tuple(lams.tolist()), sigma2), ss.USAM(lr, rho, momentum=beta, nesterov=nesterov))
    A, F = sde.linear
    assert torch.allclose(A, torch.diag(lams * (1 + rho * lams)) / (1 - beta), atol=1e-14)
    C = torch.diag(F @ F.T) / (2 * torch.diag(A))
    assert float(0.5 * (lams * C).sum()) == pytest.approx(lr * sigma2 * (2 + rho * float(lams.sum())) / (4 * (1 - beta)))


def test_momentum_two_draw_step_is_scaled():
    prob = ss.problems.teacher_student(n=6, d_in=1, width=2)
    x = prob.x_init.expand(2, -1).clone()
    rand = ss.sde_model(prob, ss.SAM(0.1, 0.2)).sampler()((2,), torch.Generator().manual_seed(0))
    plain = TwoDraw().terms(ss.sde_model(prob, ss.SAM(0.1, 0.2)), x, rand, None, dt=0.01)
    mom = TwoDraw().terms(ss.sde_model(prob, ss.SAM(0.1, 0.2, momentum=0.5)), x, rand, None, dt=0.01)
    for a, b in zip(mom, plain):
        assert torch.allclose(a, 2 * b, atol=1e-14)


# ---------------------------------------------------------------- methods with an oracle (contract 1)
# Every oracle row without options that change the drift's form (momentum, weight decay, micro-batches).
@pytest.mark.parametrize("template", rows("needs_oracle", without=("momentum", "weight_decay", "micro_batch")))
def test_oracle_methods_models_have_the_right_order_in_rho(template):
    # Hessian USAM's eps = rho H g is larger than rho |g| here: smaller rho to be in the asymptotic range.
    rhos = {"TwoStepUSAM": (0.04, 0.02)}.get(template.name, (0.01, 0.005))
    prob = ss.problems.teacher_student(n=8, batch_size=1)
    x = prob.x_init.expand(2, -1) + 0.3 * torch.randn(2, prob.d, dtype=f64, generator=torch.Generator().manual_seed(0))
    errs = {1: [], 2: []}
    for rho in rhos:
        exact = ss.sde_model(prob, template.with_rho(rho), order="exact").drift(x)
        for r in (1, 2):
            errs[r].append((ss.sde_model(prob, template.with_rho(rho), order=r).drift(x) - exact).norm())
    # eps = O(rho): order-1 error O(rho^2), order-2 error O(rho^3)
    assert math.log2(errs[1][0] / errs[1][1]) == pytest.approx(2.0, abs=0.3)
    assert math.log2(errs[2][0] / errs[2][1]) == pytest.approx(3.0, abs=0.3)
    # the exact drift is -E grad f_i(x + eps_i(x)) with the method's own perturbation
    n = prob.n
    xr, draws = x.repeat_interleave(n, 0), torch.arange(n)[:, None].repeat(2, 1)
    m = template.with_rho(0.02)
    g = prob.stochastic_grad(xr, draws)
    eps = m.perturbation(g, eps=1e-12, x=xr, hvp=lambda u: prob.stochastic_hvp(xr, u, draws),
                         grad_at=lambda y: prob.stochastic_grad(y, draws)).eps
    brute = -prob.stochastic_grad(xr + eps, draws).view(2, n, -1).mean(1)
    assert torch.allclose(ss.sde_model(prob, m, order="exact").drift(x), brute, atol=1e-13)


def test_finite_sum_without_d_simulates():
    data = torch.randn(8, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    prob = ss.FiniteSum(lambda x, s: 0.5 * (s @ x) ** 2 + 0.25 * (x**4).sum(), data, batch_size=2)
    assert prob.d is None
    sde = ss.sde_model(prob, ss.SAM(0.1, 0.2), order=1)
    sol = ss.simulate(sde, torch.ones(3, dtype=f64), t1=0.05, dt=0.01, n_paths=4, seed=0)
    assert prob.d == 3 and torch.isfinite(sol.x_final).all()
