"""The schemes as objects (sde_sam.solvers): one table of solvers and their claimed orders, each claim measured;
the default choice is today's, bit for bit; the coupled sampler's two sides have their exact laws; refusals.

Weak orders without Monte Carlo: on a 1-D Ornstein–Uhlenbeck model every scheme's step is x' = m x + ν with ν
independent of x, so its one-step moments (m from the step at zero randomness, E ν and E ν² by Gauss–Hermite
quadrature over every random scalar the step draws, exact for these polynomials) give E X_T and E X_T² exactly,
against the SDE's closed form.
"""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

import sde_sam as ss
from sde_sam.solvers import DISCRETE, SOLVERS, Coupled, EulerMaruyama, FusedLinear, TwoDraw, default_solver

F64 = torch.float64
LAM, SIGMA2, LR, RHO, T, X0 = 1.5, 0.5, 0.1, 0.2, 1.0, 1.0
TABLE = [EulerMaruyama(), FusedLinear(), TwoDraw(), Coupled()]


def test_the_table_covers_every_scheme_and_their_claims():
    assert {type(s) for s in TABLE} == set(SOLVERS)
    for s in TABLE:
        assert s.weak_order == 1.0 and isinstance(s.name, str)
        assert s.strong_order in (None, 0.5, 1.0)
    assert TwoDraw.strong_order is None  # a weak scheme: its paths are not Brownian-driven


def ou_model(solver) -> ss.SDEModel:
    prob = ss.Quadratic(torch.tensor([[LAM]], dtype=F64), noise_cov=SIGMA2)
    return ss.sde_model(prob, ss.USAM(LR, RHO), expectation="two_draw" if isinstance(solver, TwoDraw) else "auto")


def one_step_moments(solver, sde, dt: float) -> tuple[float, float, float]:
    """``(m, E ν, E ν²)`` of the scheme's step x' = m x + ν on the 1-D model (Gauss–Hermite, 3 nodes a scalar)."""
    base = solver._base(sde) if isinstance(solver, Coupled) else solver  # Coupled's model side: see below
    step = base.step(sde, dt)
    draws, zeta = base.sampler(sde, "gaussian")((1,), torch.Generator().manual_seed(0))
    k, m = (draws.shape[1] if draws.ndim == 3 else 0), zeta.shape[-1]
    nodes, weights = np.polynomial.hermite_e.hermegauss(3)
    weights = weights / weights.sum()
    combos = list(itertools.product(range(3), repeat=k + m))
    xi = torch.tensor([[nodes[i] for i in c] for c in combos], dtype=F64)
    w = torch.tensor([math.prod(weights[i] for i in c) for c in combos], dtype=F64)
    S = sde.problem.noise_sqrt
    draws_b = (xi[:, :k, None] @ S.T) if k else torch.empty(len(combos), 0)
    rand = (draws_b, xi[:, k:])
    zero = (torch.zeros_like(draws_b), torch.zeros_like(xi[:, k:]))
    one = torch.ones(1, 1, dtype=F64)
    mult = float(step(one, (zero[0][:1], zero[1][:1]), None, 0)[0] - step(0 * one, (zero[0][:1], zero[1][:1]), None, 0)[0])
    nu = step(torch.zeros(len(combos), 1, dtype=F64), rand, None, 0)[0][:, 0]
    return mult, float((w * nu).sum()), float((w * nu**2).sum())


@pytest.mark.parametrize("solver", TABLE, ids=lambda s: s.name)
def test_claimed_weak_order_exactly_on_an_ou_model(solver):
    sde = ou_model(solver)
    A, F = (float(t) for t in sde.linear)
    exact = X0**2 * math.exp(-2 * A * T) + F**2 / (2 * A) * (1 - math.exp(-2 * A * T))
    dts = LR / np.array([5, 10, 20, 40])
    errs = []
    for dt in dts:
        mult, mean, second = one_step_moments(solver, sde, dt)
        assert abs(mean) < 1e-15  # the increments are centred
        m1, m2 = X0, X0**2
        for _ in range(round(T / dt)):
            m1, m2 = mult * m1, mult**2 * m2 + second
        errs.append(abs(m2 - exact))
    local = np.diff(np.log(errs)) / np.diff(np.log(dts))
    assert np.abs(local - solver.weak_order).max() < 0.1, (errs, local)


@pytest.mark.parametrize("solver", [s for s in TABLE if s.strong_order is not None and not isinstance(s, Coupled)],
                         ids=lambda s: s.name)
def test_claimed_strong_order_on_an_ou_model(solver):
    """RMS distance to a fine Euler solution on the same Brownian path (T/1024), at dt = T/8 ... T/64: the
    observed order is at least the claimed one (additive noise: Euler–Maruyama reaches 1 here, above its
    general-noise claim of 1/2)."""
    sde, n, fine = ou_model(solver), 4000, 1024
    xi = torch.randn(n, fine, dtype=F64, generator=torch.Generator().manual_seed(3))

    def path(q: int) -> torch.Tensor:  # q fine increments per step
        step, x = solver.step(sde, T * q / fine), torch.full((n, 1), X0, dtype=F64)
        zeta = xi.view(n, fine // q, q).sum(-1) / math.sqrt(q)
        for j in range(fine // q):
            x = step(x, (torch.empty(n, 0), zeta[:, j:j + 1]), None, j)[0]
        return x

    ref = path(1)
    qs = [128, 64, 32, 16]
    errs = [float(((path(q) - ref) ** 2).mean().sqrt()) for q in qs]
    slopes = np.diff(np.log(errs)) / np.diff(np.log(qs))
    assert slopes.min() > solver.strong_order - 0.1, (errs, slopes)


# -- the coupled sampler --------------------------------------------------------------------------------------
def test_coupled_sides_have_their_exact_laws():
    """Coupled through simulate: the model's side has Euler's exact moments (the bridge keeps the law of r i.i.d.
    increments), the discrete side the discrete recursion's (each within 4 SE), at t = k·lr; the per-path gap's SE
    is far below the independent one; x_final is the model's side."""
    solver = Coupled()
    sde, n, r = ou_model(solver), 20_000, 10
    steps = round(T / LR)
    sol = ss.simulate(sde, torch.tensor([X0], dtype=F64), t1=T, dt=LR / r, n_paths=n, seed=4, record_every=r,
                      observables=(lambda x: x[:, 0], lambda x: x[:, 0] ** 2), solver=solver)
    torch.testing.assert_close(sol.times, torch.arange(steps + 1, dtype=F64) * LR)
    assert list(sol.values) == ["lambda_0", "lambda_1", DISCRETE + "lambda_0", DISCRETE + "lambda_1"]
    torch.testing.assert_close(sol.values["lambda_0"][-1], sol.x_final[:, 0])
    A, F = (float(t) for t in sde.linear)
    a, b = LAM * (1 + RHO * LAM), (1 + RHO * LAM) ** 2 * SIGMA2  # discrete: x' = (1 - lr a) x - lr sqrt(b) ξ
    dt = LR / r
    em, disc = [(X0, X0**2)], [(X0, X0**2)]
    for _ in range(steps):
        m1, m2 = em[-1]
        for _ in range(r):
            m1, m2 = (1 - A * dt) * m1, (1 - A * dt) ** 2 * m2 + dt * F**2
        em.append((m1, m2))
        d1, d2 = disc[-1]
        disc.append(((1 - LR * a) * d1, (1 - LR * a) ** 2 * d2 + LR**2 * b))
    for side, want in (("", em), (DISCRETE, disc)):
        for j, name in enumerate(("lambda_0", "lambda_1")):
            exact = torch.tensor([w[j] for w in want], dtype=F64)
            z = (sol.mean(side + name) - exact)[1:] / sol.sem(side + name)[1:]
            assert z.abs().max() < 4, (side, name, z)
    gap = sol.values["lambda_1"] - sol.values[DISCRETE + "lambda_1"]
    independent = torch.hypot(sol.sem("lambda_1"), sol.sem(DISCRETE + "lambda_1"))
    assert (gap.std(1)[1:] / math.sqrt(n) < independent[1:] / 3).all()


def test_coupled_paths_coincide_without_drift():
    """f = 0 on a 2-D problem with correlated noise: the discrete and model sides are equal path by path."""
    prob = ss.Quadratic(torch.zeros(2, 2, dtype=F64), noise_cov=torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64))
    sde = ss.sde_model(prob, ss.SGD(0.05), order=0)
    sol = ss.simulate(sde, torch.tensor([0.3, -0.2], dtype=F64), t1=0.5, dt=0.05 / 7, n_paths=64, seed=1,
                      record_every=7, observables=("x_norm",), solver=Coupled(base=EulerMaruyama()))
    torch.testing.assert_close(sol.values["x_norm"], sol.values[DISCRETE + "x_norm"], rtol=0, atol=1e-12)
    assert sol.values["x_norm"].std() > 0.05


# -- the default choice is today's, bit for bit ----------------------------------------------------------------
def _models():
    quad = ss.Quadratic(torch.diag(torch.tensor([1.0, 4.0], dtype=F64)), noise_cov=0.5)
    obj = ss.Objective(lambda x: 0.25 * (x**4).sum() + 0.5 * (x**2).sum(), 2, noise_cov=0.25, dtype=F64)
    fs = ss.problems.teacher_student(n=4, d_in=1, width=2, batch_size=1)
    return [(ss.sde_model(quad, ss.USAM(0.1, 0.2)), FusedLinear, torch.ones(2, dtype=F64)),
            (ss.sde_model(obj, ss.DNSAM(0.1, 0.2)), EulerMaruyama, torch.ones(2, dtype=F64)),
            (ss.sde_model(obj, ss.SAM(0.1, 0.2, momentum=0.5)), TwoDraw, torch.ones(2, dtype=F64)),
            (ss.sde_model(fs, ss.SAM(0.1, 0.2), expectation="enumerate"), EulerMaruyama, fs.x_init),
            (ss.sde_model(fs, ss.SAM(0.1, 0.2), expectation=4), EulerMaruyama, fs.x_init)]


@pytest.mark.parametrize("index", range(5))
def test_default_solver_is_the_previous_choice_bit_for_bit(index):
    sde, kind, x0 = _models()[index]
    assert type(default_solver(sde)) is kind
    kw = dict(t1=0.1, dt=0.01, n_paths=40, seed=2, observables=("loss",))
    a = ss.simulate(sde, x0, **kw)
    b = ss.simulate(sde, x0, solver=kind(), **kw)
    assert torch.equal(a.x_final, b.x_final) and torch.equal(a.values["loss"], b.values["loss"])
    assert a.info["solver"] == kind.name


def test_euler_on_a_linear_model_equals_the_fused_step_to_rounding():
    sde, _, x0 = _models()[0]
    kw = dict(t1=0.2, dt=0.01, n_paths=64, seed=5)
    a, b = (ss.simulate(sde, x0, solver=s, **kw) for s in (FusedLinear(), EulerMaruyama()))
    torch.testing.assert_close(a.x_final, b.x_final, rtol=0, atol=1e-13)
    assert a.x_final.std() > 0.01  # the paths moved


def test_mode_is_deprecated_for_expectation_mode():
    sde = _models()[2][0]
    with pytest.warns(DeprecationWarning, match="use `SDEModel.expectation_mode`"):
        assert sde.mode == sde.expectation_mode == "two_draw"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*SDEModel.mode")  # simulate never reads the deprecated name
        ss.simulate(sde, torch.ones(2, dtype=F64), t1=0.02, dt=0.01, n_paths=4)
    fs = _models()[3][0]
    with pytest.warns(DeprecationWarning, match="the `mode=` argument is deprecated"):
        old = fs.sampler(mode="enumerate")((2,), torch.Generator().manual_seed(0))
    new = fs.sampler(expectation_mode="enumerate")((2,), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(old, new))
    x = fs.problem.x_init.expand(2, -1)
    with pytest.warns(DeprecationWarning, match="use `expectation_mode=`"):
        b_old = fs.terms(x, new, None, mode="enumerate")
    assert all(torch.equal(a, b) for a, b in zip(b_old, fs.terms(x, new, None, expectation_mode="enumerate")))


# -- refusals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index, solver, kwargs, err, match", [
    (0, "euler", {}, TypeError, r"`solver` must be a scheme from sde_sam.solvers \(an instance"),
    (0, EulerMaruyama, {}, TypeError, r"`solver` must be a scheme"),
    (1, FusedLinear(), {}, ValueError, r"FusedLinear needs a linear \(Ornstein–Uhlenbeck\) model"),
    (2, TwoDraw(), dict(dt=0.1, t1=0.2), ValueError, r"two-draw weak scheme \(MATH §4.1\) needs dt < lr, got dt=0.1"),
    (0, TwoDraw(), dict(backend="torchsde"), ValueError, r"backend='torchsde' integrates with torchsde's Euler"),
    (0, Coupled(), dict(increments="two_point"), ValueError, r"the Brownian bridge needs Gaussian increments"),
    (0, Coupled(), dict(dt=0.03, t1=0.03), ValueError, r"lr/dt to be an integer \(sub-steps per discrete step\), got lr=0.1, dt=0.03"),
    (0, Coupled(), dict(record_every=3), ValueError, r"`record_every` must be a multiple of 10"),
    (0, Coupled(), dict(n_paths=2048, chunk_size=1024), ValueError, r"runs in one chunk, got chunk_size=1024"),
    (0, Coupled(base=TwoDraw()), {}, ValueError, r"`base` must be EulerMaruyama\(\) or FusedLinear\(\)"),
    (1, Coupled(base=FusedLinear()), {}, ValueError, r"FusedLinear needs a linear"),
    (2, Coupled(), {}, ValueError, r"takes its expectations by 'two_draw'"),
    (3, Coupled(), {}, ValueError, r"FiniteSum: its gradient noise is not additive Gaussian"),
])
def test_refusals(index, solver, kwargs, err, match):
    sde, _, x0 = _models()[index]
    kw = dict(t1=0.1, dt=0.01, n_paths=8) | kwargs
    with pytest.raises(err, match=match):
        ss.simulate(sde, x0, solver=solver, **kw)


def test_paper_diffusion_refuses_two_draw():
    obj = ss.Objective(lambda x: 0.25 * (x**4).sum(), 2, noise_cov=0.25, dtype=F64)
    sde = ss.sde_model(obj, ss.SAM(0.1, 0.2), diffusion="paper")
    with pytest.raises(ValueError, match=r"TwoDraw realises a covariance and the 'paper' diffusion is not one"):
        ss.simulate(sde, torch.ones(2, dtype=F64), t1=0.1, dt=0.01, n_paths=4, solver=TwoDraw())
