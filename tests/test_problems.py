"""Problems (MATH §1): finite-sum derivatives against naive autograd loops, mini-batch sampling laws and
the exact mini-batch covariance, and the law of additive Gaussian gradient noise."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import sde_sam as ss
from sde_sam.problems import linear_regression, matrix_sensing, mlp, teacher_student

F64 = torch.float64
TIGHT = dict(rtol=1e-11, atol=1e-12)  # float64 round-off only: different summation orders


# -- naive references: one path and one sample at a time, plain torch.autograd ---------------------------
def _sample(data, i: int):
    return data[i] if isinstance(data, torch.Tensor) else tuple(t[i] for t in data)


def _naive_sample_grad(prob, x: torch.Tensor, i: int) -> torch.Tensor:
    xp = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(prob.loss_fn(xp, _sample(prob.data, i)), xp)
    return g


def _naive_batch_loss(prob, xp: torch.Tensor, idx) -> torch.Tensor:
    return sum(prob.loss_fn(xp, _sample(prob.data, int(i))) for i in idx) / len(idx)


def _naive_grad(prob, x: torch.Tensor, idx) -> torch.Tensor:
    xp = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_naive_batch_loss(prob, xp, idx), xp)
    return g


def _naive_hvp(prob, x: torch.Tensor, v: torch.Tensor, idx) -> torch.Tensor:
    xp = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_naive_batch_loss(prob, xp, idx), xp, create_graph=True)
    (hv,) = torch.autograd.grad(g @ v, xp)
    return hv


FINITE_SUMS = {
    "linear_regression": lambda: linear_regression(n=8, d=3, batch_size=3),
    "teacher_student": lambda: teacher_student(n=8, d_in=3, width=2, batch_size=3),
    "mlp": lambda: mlp(n=8, d_in=3, hidden=4, classes=3, batch_size=3, dtype=F64),
    "matrix_sensing": lambda: matrix_sensing(n=8, dim=3, rank=2, batch_size=3),
}


@pytest.fixture(params=list(FINITE_SUMS), ids=str)
def finite_sum(request):
    return FINITE_SUMS[request.param]()


def _points(prob, n_paths: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return prob.x_init + 0.3 * torch.randn(n_paths, prob.d, generator=g, dtype=F64)


def test_finite_sum_derivatives_match_naive_autograd(finite_sum):
    prob, n_paths = finite_sum, 3
    g = torch.Generator().manual_seed(1)
    x = _points(prob, n_paths, seed=2)
    v = torch.randn(n_paths, prob.d, generator=g, dtype=F64)
    draws = prob.sample_draws((n_paths,), g)
    every = range(prob.n)

    per_sample = prob.per_sample_grads(x)
    assert per_sample.shape == (n_paths, prob.n, prob.d)
    naive = torch.stack([torch.stack([_naive_sample_grad(prob, x[p], i) for i in every]) for p in range(n_paths)])
    torch.testing.assert_close(per_sample, naive, **TIGHT)

    loss = torch.stack([_naive_batch_loss(prob, x[p], every) for p in range(n_paths)])
    torch.testing.assert_close(prob.loss(x), loss, **TIGHT)
    cases = {
        "grad": (prob.grad(x), [_naive_grad(prob, x[p], every) for p in range(n_paths)]),
        "hvp": (prob.hvp(x, v), [_naive_hvp(prob, x[p], v[p], every) for p in range(n_paths)]),
        "stochastic_grad": (prob.stochastic_grad(x, draws),
                            [_naive_grad(prob, x[p], draws[p]) for p in range(n_paths)]),
        "stochastic_hvp": (prob.stochastic_hvp(x, v, draws),
                           [_naive_hvp(prob, x[p], v[p], draws[p]) for p in range(n_paths)]),
    }
    for name, (got, expected) in cases.items():
        torch.testing.assert_close(got, torch.stack(expected), **TIGHT, msg=lambda m: f"{name}: {m}")


def test_sampling_without_replacement_gives_distinct_indices():
    prob = linear_regression(n=10, d=2, batch_size=6, replacement=False)
    draws = prob.sample_draws((50, 40), torch.Generator().manual_seed(0))
    assert draws.shape == (50, 40, 6)
    assert int(draws.min()) >= 0 and int(draws.max()) < prob.n
    ordered = draws.sort(dim=-1).values
    assert bool((ordered[..., 1:] > ordered[..., :-1]).all())
    # Full batch without replacement is every sample exactly once.
    full = linear_regression(n=10, d=2, batch_size=10, replacement=False)
    every = full.sample_draws((7,), torch.Generator().manual_seed(1)).sort(dim=-1).values
    assert torch.equal(every, torch.arange(10).expand(7, 10))


def test_sampling_with_replacement_is_uniform():
    prob = linear_regression(n=5, d=2, batch_size=4)
    draws = prob.sample_draws((20_000,), torch.Generator().manual_seed(0)).flatten()
    counts = torch.bincount(draws, minlength=prob.n).to(F64)
    p = 1 / prob.n
    se = math.sqrt(draws.numel() * p * (1 - p))
    assert bool(((counts - draws.numel() * p).abs() < 4 * se).all()), counts


@pytest.mark.parametrize("replacement", [True, False], ids=["with", "without"])
def test_minibatch_gradient_is_unbiased(replacement):
    prob = teacher_student(n=12, d_in=3, width=2, batch_size=4, replacement=replacement)
    n_draws = 20_000
    x = prob.x_init.expand(n_draws, prob.d)
    grads = prob.stochastic_grad(x, prob.sample_draws((n_draws,), torch.Generator().manual_seed(3)))
    full = prob.grad(prob.x_init[None])[0]
    se = grads.std(dim=0) / math.sqrt(n_draws)
    assert bool(((grads.mean(dim=0) - full).abs() < 4 * se).all()), (grads.mean(dim=0) - full) / se


def _minibatch_cov(prob, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The full gradient and (c_B / B) · (1/n) Σ_i (∇f_i − ∇f)(∇f_i − ∇f)ᵀ of MATH §1."""
    per = prob.per_sample_grads(x[None])[0]
    centred = per - per.mean(dim=0)
    c_b = 1.0 if prob.replacement else (prob.n - prob.batch_size) / (prob.n - 1)
    return per.mean(dim=0), c_b / prob.batch_size * centred.T @ centred / prob.n


@pytest.mark.parametrize("replacement", [True, False], ids=["with", "without"])
def test_minibatch_covariance_exact_by_enumeration(replacement):
    # Every ordered batch is equally likely: with replacement all n^B tuples, without all n!/(n-B)! arrangements.
    prob = linear_regression(n=6, d=3, batch_size=4, replacement=replacement)
    x = prob.x_init + 0.5
    every = range(prob.n)
    batches = torch.tensor(list(itertools.product(every, repeat=4) if replacement
                                else itertools.permutations(every, 4)))
    grads = prob.stochastic_grad(x.expand(len(batches), prob.d), batches)
    mean, cov = _minibatch_cov(prob, x)
    centred = grads - mean
    torch.testing.assert_close(grads.mean(dim=0), mean, **TIGHT)
    torch.testing.assert_close(centred.T @ centred / len(batches), cov, **TIGHT)
    assert prob.noise_scale == pytest.approx((1.0 if replacement else 2 / 5) / 4, rel=1e-15)


@pytest.mark.parametrize("replacement", [True, False], ids=["with", "without"])
def test_minibatch_covariance_of_sampled_draws(replacement):
    # The sampler's law, not only the batch-gradient formula: entrywise |Ĉ − C| < 4 SE with the mean known.
    prob = linear_regression(n=7, d=3, batch_size=4, replacement=replacement)
    x = prob.x_init + 0.5
    n_draws = 20_000
    grads = prob.stochastic_grad(x.expand(n_draws, prob.d),
                                 prob.sample_draws((n_draws,), torch.Generator().manual_seed(5)))
    mean, cov = _minibatch_cov(prob, x)
    products = (grads - mean)[:, :, None] * (grads - mean)[:, None, :]
    se = products.std(dim=0) / math.sqrt(n_draws)
    z = (products.mean(dim=0) - cov) / se
    assert bool((z.abs() < 4).all()), z


# -- additive Gaussian noise (MATH §1, model 2) ---------------------------------------------------------
def _gaussian_covs(d: int):
    b = torch.randn(d, d, generator=torch.Generator().manual_seed(7), dtype=F64)
    singular = torch.outer(b[0], b[0])  # rank one: PSD but not PD, allowed
    return {
        "scalar": (0.09, 0.09 * torch.eye(d, dtype=F64)),
        "diagonal": (torch.tensor([0.5, 0.1, 2.0], dtype=F64), torch.diag(torch.tensor([0.5, 0.1, 2.0], dtype=F64))),
        "full": (b @ b.T / d, b @ b.T / d),
        "singular": (singular, singular),
    }


@pytest.mark.parametrize("kind", ["scalar", "diagonal", "full", "singular"])
def test_gaussian_noise_covariance(kind, spd):
    d, n_draws = 3, 20_000
    noise_cov, cov = _gaussian_covs(d)[kind]
    prob = ss.Quadratic(spd(d), noise_cov=noise_cov)
    if kind != "scalar":  # the scalar case's precision: test_scalar_noise_cov_keeps_float64_precision
        torch.testing.assert_close(prob.noise_cov, cov, **TIGHT)
    draws = prob.sample_draws((n_draws,), torch.Generator().manual_seed(11))
    assert draws.shape == (n_draws, d) and draws.dtype == F64
    se_mean = cov.diagonal().sqrt() / math.sqrt(n_draws)
    assert bool((draws.mean(dim=0).abs() <= 4 * se_mean + 1e-15).all())
    products = draws[:, :, None] * draws[:, None, :]  # the mean is known to be 0
    se = products.std(dim=0) / math.sqrt(n_draws)
    assert bool(((products.mean(dim=0) - cov).abs() <= 4 * se + 1e-15).all()), (products.mean(dim=0) - cov) / se
    # The draw is the gradient noise, added to the exact gradient.
    x = torch.randn(n_draws, d, generator=torch.Generator().manual_seed(12), dtype=F64)
    torch.testing.assert_close(prob.stochastic_grad(x, draws), prob.grad(x) + draws, rtol=0, atol=0)


@pytest.fixture
def float32_default():
    """Run with torch's stock default dtype (float32), whatever other modules set, and restore it after."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("noise_cov", [0.09, [0.09, 0.5, 0.1]], ids=["float", "list"])
def test_noise_cov_keeps_float64_precision(noise_cov, float32_default):
    prob = ss.Quadratic(torch.eye(3, dtype=F64), noise_cov=noise_cov)
    expected = torch.diag(torch.tensor(noise_cov, dtype=F64).expand(3))
    torch.testing.assert_close(prob.noise_cov, expected, rtol=1e-14, atol=0)


def test_objective_gaussian_noise_and_autodiff(spd):
    d, n_draws = 3, 20_000
    cov = spd(d, seed=3, lo=0.05, hi=0.5)
    prob = ss.Objective(lambda x: (x**4).sum() - (x**2).sum(), d, noise_cov=cov, dtype=F64)
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(prob.grad(x), 4 * x**3 - 2 * x, **TIGHT)
    v = torch.randn(5, d, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(prob.hvp(x, v), (12 * x**2 - 2) * v, **TIGHT)
    torch.testing.assert_close(prob.stochastic_hvp(x, v, prob.sample_draws((5,), torch.Generator())),
                               (12 * x**2 - 2) * v, **TIGHT)
    draws = prob.sample_draws((n_draws,), torch.Generator().manual_seed(2))
    products = draws[:, :, None] * draws[:, None, :]
    se = products.std(dim=0) / math.sqrt(n_draws)
    assert bool(((products.mean(dim=0) - cov).abs() < 4 * se).all())


def test_quadratic_closed_forms_match_autodiff(spd):
    d = 4
    H = spd(d, seed=5, lo=-1.0, hi=2.0)  # indefinite: a saddle
    quad = ss.Quadratic(H, noise_cov=0.0)
    generic = ss.Objective(lambda x: 0.5 * x @ (H @ x), d, dtype=F64)
    x = torch.randn(6, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    v = torch.randn(6, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(quad.loss(x), generic.loss(x), **TIGHT)
    torch.testing.assert_close(quad.grad(x), generic.grad(x), **TIGHT)
    torch.testing.assert_close(quad.hvp(x, v), generic.hvp(x, v), **TIGHT)
    # Noise-free: the stochastic gradient is the gradient, whatever the draw.
    draws = quad.sample_draws((6,), torch.Generator().manual_seed(2))
    assert torch.equal(quad.stochastic_grad(x, draws), quad.grad(x))
    assert quad.enumerate_draws().shape == (1, d)


def test_enumerate_draws_for_single_sample_batches():
    prob = linear_regression(n=5, d=2, batch_size=1)
    assert torch.equal(prob.enumerate_draws(), torch.arange(5)[:, None])
    assert linear_regression(n=5, d=2, batch_size=2).enumerate_draws() is None
    assert ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.1).enumerate_draws() is None


# -- single-path maps and d inferred from x0 (issue 9) ------------------------------------------------------------
def test_single_path_maps_equal_the_batched_ones(finite_sum, spd):
    problems = [finite_sum, ss.Quadratic(spd(3, seed=1), noise_cov=0.04),
                ss.Objective(lambda x: (x**4).sum() - (x**2).sum(), 3, noise_cov=0.01, dtype=F64)]
    for prob in problems:
        g = torch.Generator().manual_seed(4)
        x = torch.randn(3, prob.d, generator=g, dtype=F64)
        draws = prob.sample_draws((3,), g)
        for p in range(3):
            torch.testing.assert_close(prob.grad_single(x[p]), prob.grad(x)[p], **TIGHT)
            torch.testing.assert_close(prob.stochastic_grad_single(x[p], draws[p]),
                                       prob.stochastic_grad(x, draws)[p], **TIGHT)


def _quartic_sample_loss(x, s):
    return ((s * x) ** 4).sum() + 0.5 * (x * x).sum()


def test_finite_sum_without_d_learns_it_from_x0():
    data = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    prob = ss.FiniteSum(_quartic_sample_loss, data, batch_size=2)
    assert prob.d is None
    sde = ss.sde_model(prob, ss.USAM(0.05, 0.1), order=1)
    x0 = torch.full((3,), 0.3, dtype=F64)
    sol = ss.simulate(sde, x0, t1=0.05, dt=0.005, n_paths=4, seed=0)
    assert prob.d == 3 and sol.x_final.shape == (4, 3) and bool(torch.isfinite(sol.x_final).all())
    paper = ss.FiniteSum(_quartic_sample_loss, data, batch_size=2)
    ss.simulate(ss.sde_model(paper, ss.USAM(0.05, 0.1), order=1, diffusion="paper"), x0, t1=0.02, dt=0.005,
                n_paths=2, seed=0)
    assert paper.d == 3
    fresh = ss.FiniteSum(_quartic_sample_loss, data, batch_size=2)
    assert ss.run(fresh, ss.SAM(0.05, 0.1), x0, steps=3, n_paths=2, seed=0).x_final.shape == (2, 3)
    assert fresh.d == 3
    with pytest.raises(ValueError, match=r"`x0` must have shape \(d,\) or \(n_paths, d\) with d=3"):
        ss.run(fresh, ss.SGD(0.05), torch.zeros(4, dtype=F64), steps=1)
