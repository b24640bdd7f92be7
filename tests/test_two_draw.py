"""The two-draw weak scheme (MATH §4.1): its one-step moments and its weak order against enumerated Euler–Maruyama."""
import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sparse
import torch

import sde_sam as ss
from conftest import rows
from sde_sam.drift import model_gradients
from sde_sam.solvers import TwoDraw

f64 = torch.float64
ORDERS = (0, 1, 2, "exact")


# Every row of the method table but m-SAM's (B = 1 below: one micro-batch, the plain method).
METHODS = rows(without=("micro_batch",))


def _increments(sde, x, draws, zeta, v, dt):
    """The scheme's increments ``(P, C, d)`` of ``P`` paths for ``C`` given (γ1, γ2, ζ) each."""
    P, C = x.shape[0], draws.shape[0]
    rep = lambda t: t.repeat_interleave(C, 0)
    b, noise = TwoDraw().terms(sde, rep(x), (draws.repeat(P, *[1] * (draws.ndim - 1)), zeta.repeat(P, 1)),
                               None if v is None else rep(v), dt=dt)
    return (dt * b + math.sqrt(dt) * noise).view(P, C, -1)


def _cov(Z, dim=1):
    Zc = Z - Z.mean(dim, keepdim=True)
    return Zc.transpose(-1, -2) @ Zc / Z.shape[dim]


def _em_moments(sde, x, v, dt):
    """Mean and covariance of the enumerated Euler–Maruyama step, from the model's own drift and factor."""
    P, d = x.shape
    N = sde.noise_dim
    eye = torch.eye(N, dtype=f64).repeat(P, 1)
    rep = lambda t: t.repeat_interleave(N, 0)
    b, noise = sde.terms(rep(x), (None, eye), None if v is None else rep(v), expectation_mode="enumerate")
    F = noise.view(P, N, d).transpose(1, 2)  # column k is F e_k
    return dt * b.view(P, N, d)[:, 0], dt * F @ F.transpose(1, 2)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("index, method", [pytest.param(i, *p.values, id=p.id) for i, p in enumerate(METHODS)])
def test_one_step_moments_equal_the_enumerated_model_exactly(order, index, method):
    # B = 1: (γ1, γ2, ζ = ±1) takes n·n·2 equally likely values, so the scheme's moments are exact sums.
    prob = ss.problems.teacher_student(n=4, d_in=1, width=2, batch_size=1)
    gen = torch.Generator().manual_seed(index)
    x = prob.x_init + 0.5 * torch.randn(3, prob.d, dtype=f64, generator=gen)
    sde = ss.sde_model(prob, method, order=order, expectation="two_draw")
    v = sde.init_state(x, torch.randn(x.shape, dtype=f64, generator=gen))
    dt = method.lr / 7
    combos = list(itertools.product(range(prob.n), range(prob.n), (-1.0, 1.0)))
    draws = torch.tensor([[[i], [j]] for i, j, _ in combos])
    zeta = torch.tensor([[z] for *_, z in combos], dtype=f64)
    inc = _increments(sde, x, draws, zeta, v, dt)
    mean, cov = _em_moments(sde, x, v, dt)
    assert torch.allclose(inc.mean(1), mean, atol=1e-13, rtol=1e-11)
    if order in (0, 1, "exact"):  # exactly Euler–Maruyama's eta*dt*Cov
        assert torch.allclose(_cov(inc), cov, atol=1e-13, rtol=1e-10)
    else:  # dt^2 Cov(G2) + dt(eta - dt) Cov(G1): Euler–Maruyama's up to dt^2 (Cov(G2) - Cov(G1))
        s, n = sde.momentum_scale, prob.n
        xr, vr = x.repeat_interleave(n, 0), v.repeat_interleave(n, 0) if v is not None else None
        _, G2, G1 = model_gradients(prob, method, xr, torch.arange(n)[:, None].repeat(3, 1), order=2,
                                    eps=sde.eps, v=vr)
        C2, C1 = (s**2 * _cov(G.view(3, n, -1)) for G in (G2, G1))
        assert torch.allclose(_cov(inc), dt**2 * C2 + dt * (method.lr - dt) * C1, atol=1e-13, rtol=1e-10)
        assert torch.allclose(cov, method.lr * dt * C1, atol=1e-13, rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2, "exact"])
def test_one_step_moments_by_sampling_minibatches(order):
    # B = 3 with replacement from n = 5: the model's moments by enumerating all 125 batches; the scheme's
    # from 2e5 sampled (γ1, γ2, ζ). Every mean and covariance entry within 4 standard errors.
    prob = ss.problems.teacher_student(n=5, d_in=1, width=2, batch_size=3)
    method, dt, M = ss.SAM(0.1, 0.3), 0.02, 200_000
    x = prob.x_init[None]
    batches = torch.tensor(list(itertools.product(range(prob.n), repeat=3)))
    _, G, Gn = model_gradients(prob, method, x.expand(len(batches), -1), batches, order=order, eps=1e-12)
    mean = -dt * G.mean(0)
    cov = dt**2 * _cov(G, 0) + dt * (method.lr - dt) * _cov(Gn, 0)
    sde = ss.sde_model(prob, method, order=order)
    assert sde.expectation_mode == "two_draw"
    draws, zeta = sde.sampler()((M,), torch.Generator().manual_seed(0))
    inc = _increments(sde, x, draws, zeta, None, dt)[0]
    se_mean = inc.std(0) / math.sqrt(M)
    assert ((inc.mean(0) - mean).abs() < 4 * se_mean).all()
    ic = inc - mean
    prods = ic[:, :, None] * ic[:, None, :]
    se_cov = prods.std(0) / math.sqrt(M)
    assert ((prods.mean(0) - cov).abs() < 4 * se_cov + 1e-15).all()


@pytest.mark.parametrize("order", [1, "exact"])
def test_one_step_moments_with_gaussian_noise(order):
    # Additive Gaussian noise, SAM (no closed form): the model's moments from 2e5 draws of G_gamma, the
    # scheme's from 2e5 of its increments; within 4 SE of their difference.
    prob = ss.Objective(lambda x: 0.25 * (x**4).sum() + x[0] * x[1], 2, noise_cov=0.3, dtype=f64)
    method, dt, M = ss.SAM(0.1, 0.3), 0.02, 200_000
    x = torch.tensor([[0.7, -0.4]], dtype=f64)
    sde = ss.sde_model(prob, method, order=order)
    assert (sde.expectation_mode, sde.stateless_mode) == ("two_draw", "sampled")
    gen = torch.Generator().manual_seed(1)
    _, G, _ = model_gradients(prob, method, x.expand(M, -1), prob.sample_draws((M,), gen), order=order, eps=1e-12)
    inc = _increments(sde, x, *sde.sampler()((M,), gen), None, dt)[0]
    se = ((inc.var(0) + (dt * G).var(0)) / M).sqrt()
    assert ((inc.mean(0) + dt * G.mean(0)).abs() < 4 * se).all()
    pi = (inc - inc.mean(0))[:, :, None] * (inc - inc.mean(0))[:, None, :]
    pg = method.lr * dt * (G - G.mean(0))[:, :, None] * (G - G.mean(0))[:, None, :]
    se = ((pi.var(0) + pg.var(0)) / M).sqrt()
    assert ((pi.mean(0) - pg.mean(0)).abs() < 4 * se).all()


# ---------------------------------------------------------------- weak order 1 (MATH §4.1)
# Expectations of both chains by the backward Kolmogorov recursion u_k = P u_{k+1} on a fine 1-D grid,
# with P the model's own transition: every branch of the scheme (γ1, γ2, and ζ at 7 Gauss–Hermite nodes)
# and of enumerated Euler–Maruyama (its Gaussian increment at 7 nodes), mapped onto the grid by cubic
# interpolation. No Monte-Carlo error: the gaps are exact up to the grid's O(h^4), estimated by doubling h.
LR, RHO, T, X0 = 0.1, 0.3, 1.0, 1.0
GH_Z, GH_W = np.polynomial.hermite_e.hermegauss(7)
GH_W = GH_W / GH_W.sum()
TEST_FUNCTIONS = {"x": lambda x: x, "x^2": lambda x: x**2, "x^3": lambda x: x**3}


def _nonlinear_finite_sum():
    # f_i(x) = a_i (x - b_i)^2 / 2 + x^4 / 4, n = 4, B = 1: non-quadratic, third derivative 6x. USAM keeps the
    # coefficients smooth in 1-D (SAM's g/|g| jumps where a per-sample gradient vanishes).
    a = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=f64)
    b = torch.tensor([-1.0, 0.5, 1.0, -0.3], dtype=f64)
    return ss.FiniteSum(lambda x, s: 0.5 * s[0] * (x[0] - s[1]) ** 2 + 0.25 * x[0] ** 4, (a, b), d=1)


def _transition(grid, targets, weights):
    M, nb = targets.shape
    h = grid[1] - grid[0]
    t = (np.clip(targets.reshape(-1), grid[0], grid[-1]) - grid[0]) / h
    i = np.clip(np.floor(t).astype(int), 1, M - 3)
    s = t - i
    w = np.stack([-s * (s - 1) * (s - 2) / 6, (s + 1) * (s - 1) * (s - 2) / 2,
                  -(s + 1) * s * (s - 2) / 2, (s + 1) * s * (s - 1) / 6], -1)
    w = w * np.tile(weights, M)[:, None]
    cols = np.stack([i - 1, i, i + 1, i + 2], -1)
    return sparse.csr_matrix((w.ravel(), (np.repeat(np.arange(M), nb * 4), cols.ravel())), shape=(M, M))


def _expectations(P, grid, steps):
    u = np.stack([phi(grid) for phi in TEST_FUNCTIONS.values()], -1)
    for _ in range(steps):
        u = P @ u
    return np.array([np.interp(X0, grid, u[:, j]) for j in range(u.shape[1])])


def _gaps(order, dts, h):
    """``(len(dts), 3)``: E phi(X_T) of the two-draw scheme minus that of enumerated Euler–Maruyama."""
    prob = _nonlinear_finite_sum()
    sde = ss.sde_model(prob, ss.USAM(LR, RHO), order=order, expectation="two_draw")
    grid = np.arange(-3.0, 3.0 + h / 2, h)
    X = torch.tensor(grid, dtype=f64)[:, None]
    pairs = torch.tensor(list(itertools.product(range(prob.n), repeat=2)))[:, :, None]  # (γ1, γ2)
    z, w = torch.tensor(GH_Z), np.outer(np.full(len(pairs), 1 / len(pairs)), GH_W).ravel()
    drift, sigma = sde.drift(X), sde.diffusion_factor(X).norm(dim=(-2, -1))[:, None]
    out = []
    for dt in dts:
        # The scheme is affine in ζ: one evaluation at ζ = 1 per (γ1, γ2) gives every node's branch.
        b, noise = (t.view(len(grid), len(pairs)) for t in
                    TwoDraw().terms(sde, X.repeat_interleave(len(pairs), 0), (pairs.repeat(len(grid), 1, 1),
                                    torch.ones(len(grid) * len(pairs), 1, dtype=f64)), None, dt=dt))
        targets = X[:, :, None] + dt * b[:, :, None] + math.sqrt(dt) * noise[:, :, None] * z
        two_draw = _expectations(_transition(grid, targets.flatten(1).numpy(), w), grid, round(T / dt))
        targets = X + dt * drift + math.sqrt(dt) * sigma * z
        em = _expectations(_transition(grid, targets.numpy(), GH_W), grid, round(T / dt))
        out.append(two_draw - em)
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("order", ORDERS)
def test_weak_error_against_enumerated_euler_maruyama_is_first_order(order):
    dts = LR / np.array([20, 40, 80, 160])
    gaps = _gaps(order, dts, 0.005)
    grid_err = np.abs(_gaps(order, dts[-1:], 0.01)[0] - gaps[-1]) / 15  # Richardson: the error is O(h^4)
    names = list(TEST_FUNCTIONS)
    for j, name in enumerate(names):
        y, X = np.log(np.abs(gaps[:, j])), np.stack([np.ones(len(dts)), np.log(dts)], -1)
        coef, res, *_ = np.linalg.lstsq(X, y, rcond=None)
        se = math.sqrt(res[0] / (len(dts) - 2) * np.linalg.inv(X.T @ X)[1, 1])
        slope, half = coef[1], 4.303 * se  # t_{0.975, 2}; the residual is O(dt^2) curvature, not noise
        local = np.log2(np.abs(gaps[-2, j] / gaps[-1, j]))
        print(f"order {order}, E {name}: gaps {gaps[:, j]}, slope {slope:.3f} [{slope - half:.3f}, "
              f"{slope + half:.3f}], last local slope {local:.3f}, grid error {grid_err[j]:.1e}")
        if name == "x^2" and order == 0:
            continue  # its O(dt) constant is ~0 (gaps ~1e-8, at the grid's resolution): nothing to fit
        assert grid_err[j] < 0.05 * abs(gaps[-1, j])  # the smallest gap is resolved by the grid
        assert slope - half < 1 + 0.1 and slope + half > 1 - 0.1 and abs(local - 1) < 0.1


# ---------------------------------------------------------------- choice and validation
@pytest.mark.parametrize("problem, method, kwargs, mode", [
    ("quadratic", ss.USAM(0.1, 0.2), {}, "linear"),
    ("objective", ss.USAM(0.1, 0.2), {}, "affine"),
    ("objective", ss.SAM(0.1, 0.2), {}, "two_draw"),
    ("objective", ss.SAM(0.1, 0.2), dict(expectation=8), "sampled"),
    ("quadratic", ss.USAM(0.1, 0.2), dict(expectation="two_draw"), "two_draw"),
    ("b1", ss.SAM(0.1, 0.2), {}, "two_draw"),
    ("b1", ss.SAM(0.1, 0.2), dict(expectation="enumerate"), "enumerate"),
    ("b1", ss.SAM(0.1, 0.2), dict(diffusion="paper"), "enumerate"),
    ("b1_n2", ss.SAM(0.1, 0.2), {}, "enumerate"),
    ("b4", ss.SAM(0.1, 0.2), {}, "two_draw"),
    ("b4", ss.SGD(0.1), {}, "two_draw"),
    ("b4_n6", ss.SGD(0.1), {}, "enumerate"),
    ("full", ss.SAM(0.1, 0.2), {}, "enumerate"),
    ("b1", ss.SAM(0.1, 0.2, momentum=0.5), dict(order=2), "two_draw"),
])
def test_auto_picks_the_cheapest_way(problem, method, kwargs, mode):
    probs = {"quadratic": lambda: ss.Quadratic(torch.eye(2, dtype=f64), noise_cov=0.1),
             "objective": lambda: ss.Objective(lambda x: (x**4).sum(), 2, noise_cov=0.1, dtype=f64),
             "b1": lambda: ss.problems.teacher_student(n=8, d_in=1, width=2),
             "b1_n2": lambda: ss.problems.teacher_student(n=2, d_in=1, width=2),
             "b4": lambda: ss.problems.teacher_student(n=16, d_in=1, width=2, batch_size=4),
             "b4_n6": lambda: ss.problems.teacher_student(n=6, d_in=1, width=2, batch_size=4),
             "full": lambda: ss.problems.teacher_student(n=6, d_in=1, width=2, batch_size=6, replacement=False)}
    assert ss.sde_model(probs[problem](), method, **kwargs).expectation_mode == mode


def test_two_draw_needs_dt_below_lr_and_the_factor_form():
    prob = ss.problems.teacher_student(n=8, d_in=1, width=2)
    sde = ss.sde_model(prob, ss.SAM(0.1, 0.2))
    with pytest.raises(ValueError, match="two-draw weak scheme .* needs dt < lr"):
        ss.simulate(sde, prob.x_init, t1=0.2, dt=0.1)
    with pytest.raises(ValueError, match="'paper' diffusion is not one"):
        ss.sde_model(prob, ss.SAM(0.1, 0.2), expectation="two_draw", diffusion="paper")
    with pytest.raises(ValueError, match=r"needs 0 < dt < 0.1 \(lr"):
        TwoDraw().terms(sde, prob.x_init[None], sde.sampler()((1,), torch.Generator()), None, dt=0.1)
    with pytest.raises(ValueError, match="two draws per step are a scheme"):
        sde.terms(prob.x_init[None], sde.sampler()((1,), torch.Generator()), None, expectation_mode="two_draw")


def test_two_draw_is_reproducible_and_chunk_independent():
    prob = ss.problems.teacher_student(n=8, d_in=1, width=2, batch_size=2)
    sde = ss.sde_model(prob, ss.SAM(0.1, 0.2), order=1)
    kw = dict(t1=0.1, dt=0.01, n_paths=2100, seed=3)
    a = ss.simulate(sde, prob.x_init, **kw)
    b = ss.simulate(sde, prob.x_init, chunk_size=1024, **kw)
    assert torch.equal(a.x_final, b.x_final) and torch.isfinite(a.x_final).all()
    assert a.info["model"] == "order 1"
