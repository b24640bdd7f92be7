"""Methods (MATH §2): the perturbation table, exact special cases bit for bit, Eigen-SAM's geometry
(MATH §7) and the norm guard."""
from __future__ import annotations

import math

import pytest
import torch

import sde_sam as ss
from conftest import TABLE, methods, rows
from sde_sam import theory
from sde_sam.methods import METHODS, effective_gradient
from sde_sam.problems import teacher_student

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-14)


def _unit(u: torch.Tensor) -> torch.Tensor:
    return u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)


def _random_inputs(n: int = 7, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(n, d, generator=g, dtype=F64)
    full = torch.randn(n, d, generator=g, dtype=F64)
    v = _unit(torch.randn(n, d, generator=g, dtype=F64))
    return grads, full, v


def _table_perturbation(m: ss.Method, g: torch.Tensor, full: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """MATH §2's table, written out independently of the library, one path at a time."""
    rows = []
    for gp, fp, vp in zip(g, full, v):
        norm = gp.norm()
        if isinstance(m, ss.SGD):
            rows.append(torch.zeros_like(gp))
        elif isinstance(m, ss.UnifiedSAM):
            rows.append(m.rho * (1 - m.lam + m.lam / norm) * gp)
        elif isinstance(m, ss.USAM):
            rows.append(m.rho * gp)
        elif isinstance(m, ss.SAM):
            rows.append(m.rho * gp / norm)
        elif isinstance(m, ss.DNSAM):
            rows.append(m.rho * gp / fp.norm())
        elif isinstance(m, ss.EigenSAM):
            gh = gp / norm
            s = 1.0 if float(gp @ vp) >= 0 else -1.0
            rows.append(m.rho * (gh + m.alpha * s * (vp - (gh @ vp) * gh)))
        else:  # a method added since: its row in the method table carries its formula
            formula = next((r.formula for r in TABLE if r.method == m and r.formula is not None), None)
            assert formula is not None, f"no table row for {m}: give its row a `formula`"
            rows.append(formula(m, gp, fp, vp))
    return torch.stack(rows)


def _declared_tags(m: ss.Method) -> set[str]:
    """The tags a row must carry, read from what the method declares and the options it was built with."""
    opts = {"momentum": m.momentum > 0, "nesterov": m.nesterov, "weight_decay": m.weight_decay > 0,
            "micro_batch": getattr(m, "micro_batch", None) is not None,
            "ascent": getattr(m, "ascent_steps", 1) > 1 or getattr(m, "ascent_step_size", None) is not None
            or not getattr(m, "ascent_normalized", True)}
    caps = {"perturbs": m.perturbs, "normalises": m.normalises, "needs_oracle": m.needs_oracle,
            "eigenvector": m.uses_eigenvector,
            "affine": m.affine_noise is not None and not opts["micro_batch"]}
    return {k for k, v in {**opts, **caps}.items() if v} | ({"plain"} if not any(opts.values()) else set())


def test_method_table_covers_every_method_and_its_tags_are_declared():
    assert {type(r.method) for r in TABLE} == set(METHODS.values())
    assert {r.method.name.lower() for r in TABLE} == set(METHODS)
    assert len({r.id for r in TABLE}) == len(TABLE)
    for r in TABLE:
        assert set(r.tags) == _declared_tags(r.method), r.id
        assert r.method.oracles <= ss.methods.ORACLES, r.id


def _quartic(noise_cov=0.0):
    """f(x) = Σ x⁴/4 + x₀x₁ - Σ x²/2: non-quadratic, so ∇f(x + u) and ∇²f(x)u are not trivial."""
    def loss(x):
        return (x**4).sum() / 4 + x[0] * x[1] - (x**2).sum() / 2
    return ss.Objective(loss, 3, noise_cov=noise_cov, dtype=F64)


@pytest.mark.parametrize("noise_cov", [0.0, 0.3])
def test_oracle_perturbations_match_their_definitions(noise_cov):
    prob = _quartic(noise_cov)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, generator=gen, dtype=F64)
    draws = prob.sample_draws((5,), gen)
    g = prob.stochastic_grad(x, draws)
    oracle = dict(hvp=lambda u: prob.stochastic_hvp(x, u, draws), grad_at=lambda y: prob.stochastic_grad(y, draws), x=x)
    rho = 0.3
    two = ss.TwoStepUSAM(0.1, rho).perturbation(g, eps=1e-12, **oracle)
    hess = ss.HessianUSAM(0.1, rho).perturbation(g, eps=1e-12, **oracle)
    for p, (xp, gp, zp) in enumerate(zip(x, g, draws)):
        grad_f = torch.func.grad(prob.loss_fn)
        z = zp if noise_cov else torch.zeros(3, dtype=F64)
        torch.testing.assert_close(two.eps[p], rho * (grad_f(xp + rho * gp) + z), **TIGHT)
        H = torch.func.hessian(prob.loss_fn)(xp)
        torch.testing.assert_close(hess.eps[p], rho * H @ gp, **TIGHT)
    assert not bool(two.guarded.any()) and not bool(hess.guarded.any())


@pytest.mark.parametrize("method, missing", [(ss.TwoStepUSAM(0.1, 0.2), "x"), (ss.HessianUSAM(0.1, 0.2), "hvp")])
def test_oracle_methods_refuse_without_their_oracle(method, missing):
    with pytest.raises(ValueError, match=rf"{method.name}'s perturbation needs `{missing}`"):
        method.perturbation(torch.ones(2, 3, dtype=F64), eps=1e-12)


def test_oracle_rho_zero_is_sgd_bit_for_bit():
    prob, x0 = _quartic(0.2), torch.tensor([0.5, -1.0, 0.3], dtype=F64)
    sgd = _run(prob, ss.SGD(0.1), x0)
    for m in (ss.TwoStepUSAM(0.1, 0.0), ss.HessianUSAM(0.1, 0.0)):
        _same_run(_run(prob, m, x0), sgd)


# -- rho is required (issue: `SAM(0.1)` used to be SGD silently) ---------------------------------------------
@pytest.mark.parametrize("cls", [ss.USAM, ss.SAM, ss.DNSAM, ss.UnifiedSAM, ss.EigenSAM, ss.TwoStepUSAM, ss.HessianUSAM,
                                 ss.ASAM])
def test_rho_is_required_before_use(cls, diag_quadratic):
    template = cls(0.1)  # a template: studies set rho per lr
    assert template.rho is None
    msg = rf"`rho` is required for {cls.name}: pass it, e\.g\. {cls.name}\(lr=0\.1, rho=0\.05\).*got rho=None"
    with pytest.raises(ValueError, match=msg):
        ss.run(diag_quadratic, template, torch.ones(3, dtype=F64), steps=1)
    x = torch.ones(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=msg):
        ss.step(diag_quadratic, template, x, diag_quadratic.sample_draws((2,), torch.Generator()))
    with pytest.raises(ValueError, match=msg):
        template.perturbation(x, eps=1e-12, v=x, full_grad=x, hvp=lambda u: u, grad_at=lambda y: y, x=x)
    assert template.with_rho(0.05).rho == 0.05  # what weak_error(..., rho=...) does


# -- momentum hyper-parameters ------------------------------------------------------------------------------
@pytest.mark.parametrize("make, msg", [
    (lambda: ss.SGD(0.1, momentum=1.0), r"`momentum` must be a number in \[0, 1\), got momentum=1.0"),
    (lambda: ss.SAM(0.1, 0.1, momentum=-0.1), r"`momentum` must be a number in \[0, 1\), got momentum=-0.1"),
    (lambda: ss.USAM(0.1, 0.1, momentum=float("nan")), r"`momentum` must be a number in \[0, 1\), got momentum=nan"),
    (lambda: ss.USAM(0.1, 0.1, momentum=True), r"`momentum` must be a number in \[0, 1\), got momentum=True"),
    (lambda: ss.SGD(0.1, nesterov=True), r"`nesterov=True` needs momentum > 0 \(as torch.optim.SGD\), got momentum=0.0"),
    (lambda: ss.SGD(0.1, momentum=0.9, nesterov=1), r"`nesterov` must be True or False, got nesterov=1"),
    (lambda: ss.SGD(0.1, 0.9), r"positional argument"),  # momentum is keyword-only
])
def test_momentum_validation(make, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        make()


def test_momentum_fields_are_kept_and_described():
    m = ss.EigenSAM(0.1, 0.2, 0.3, momentum=0.9, nesterov=True)
    assert (m.momentum, m.nesterov) == (0.9, True)
    assert m.with_lr(0.05).momentum == 0.9 and m.with_rho(0.1).nesterov
    assert m.describe()["momentum"] == 0.9 and m.describe()["nesterov"] is True
    assert isinstance(ss.SGD(0.1, momentum=0).momentum, float)


def test_perturbation_matches_math_table(method):
    g, full, v = _random_inputs()
    pert = method.perturbation(g, eps=1e-12, full_grad=full, v=v)
    assert pert.eps.shape == g.shape and pert.eps.dtype == F64
    assert pert.guarded.shape == (g.shape[0],) and pert.guarded.dtype == torch.bool and not bool(pert.guarded.any())
    torch.testing.assert_close(pert.eps, _table_perturbation(method, g, full, v), **TIGHT)


@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0])
def test_unified_sam_interpolates(lam):
    g, _, _ = _random_inputs(seed=1)
    got = ss.UnifiedSAM(0.1, 0.3, lam).perturbation(g, eps=1e-12).eps
    usam = ss.USAM(0.1, 0.3).perturbation(g, eps=1e-12).eps
    sam = ss.SAM(0.1, 0.3).perturbation(g, eps=1e-12).eps
    torch.testing.assert_close(got, (1 - lam) * usam + lam * sam, **TIGHT)


# -- exact special cases, through full runs ---------------------------------------------------------------
def _noisy_quadratic(spd):
    cov = spd(3, seed=1, lo=0.01, hi=0.1)
    return ss.Quadratic(spd(3, seed=0), noise_cov=cov), torch.tensor([1.0, -0.5, 0.25], dtype=F64)


def _teacher_student():
    prob = teacher_student(n=16, d_in=3, width=2, batch_size=4)
    return prob, prob.x_init


@pytest.fixture(params=["noisy_quadratic", "teacher_student"])
def problem_and_start(request, spd):
    return _noisy_quadratic(spd) if request.param == "noisy_quadratic" else _teacher_student()


def _same_run(a: ss.Trajectory, b: ss.Trajectory) -> None:
    assert torch.equal(a.x_final, b.x_final)
    assert a.values.keys() == b.values.keys()
    for name in a.values:
        assert torch.equal(a.values[name], b.values[name]), name
    assert torch.equal(a.diverged, b.diverged)


def _run(prob, method, x0):
    return ss.run(prob, method, x0, steps=12, n_paths=64, seed=7, record_every=3,
                  observables=("loss", "grad_norm", "x_norm"))


@pytest.mark.parametrize("make", [
    lambda: ss.USAM(0.1, 0.0), lambda: ss.SAM(0.1, 0.0), lambda: ss.DNSAM(0.1, 0.0),
    lambda: ss.UnifiedSAM(0.1, 0.0, 0.0), lambda: ss.UnifiedSAM(0.1, 0.0, 0.6), lambda: ss.UnifiedSAM(0.1, 0.0, 1.0),
    lambda: ss.EigenSAM(0.1, 0.0, 0.2, refresh_every=4, power_iters=2, init_power_iters=3),
], ids=["USAM", "SAM", "DNSAM", "UnifiedSAM-0", "UnifiedSAM-0.6", "UnifiedSAM-1", "EigenSAM"])
def test_rho_zero_is_sgd_bit_for_bit(make, problem_and_start):
    prob, x0 = problem_and_start
    sgd = _run(prob, ss.SGD(0.1), x0)
    other = _run(prob, make(), x0)
    assert not bool(sgd.diverged.any())
    _same_run(other, sgd)


@pytest.mark.parametrize("lam, twin", [(0.0, ss.USAM(0.1, 0.3)), (1.0, ss.SAM(0.1, 0.3))], ids=["USAM", "SAM"])
def test_unified_sam_endpoints_bit_for_bit(lam, twin, problem_and_start):
    prob, x0 = problem_and_start
    a, b = _run(prob, ss.UnifiedSAM(0.1, 0.3, lam), x0), _run(prob, twin, x0)
    assert not torch.equal(a.x_final, _run(prob, ss.SGD(0.1), x0).x_final)  # the comparison has teeth
    _same_run(a, b)
    assert a.guard_count == b.guard_count


# -- Eigen-SAM geometry (MATH §7) --------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.2, 1.5])
def test_eigen_sam_norm_and_alignment(alpha):
    rho, n, d = 0.3, 200, 5
    g, _, v = _random_inputs(n=n, d=d, seed=2)
    g[:20] = v[:20] * torch.linspace(-2, 2, 20, dtype=F64)[:, None]  # c = ±1 exactly-ish, and c < 0
    eps = ss.EigenSAM(0.1, rho, alpha).perturbation(g, eps=1e-12, v=v).eps
    c = (_unit(g) * v).sum(dim=-1)
    torch.testing.assert_close(torch.linalg.vector_norm(eps, dim=-1), rho * torch.sqrt(1 + alpha**2 * (1 - c**2)),
                               **TIGHT)
    cos = (_unit(eps) * v).sum(dim=-1).abs()
    torch.testing.assert_close(cos, (c.abs() + alpha * (1 - c**2)) / torch.sqrt(1 + alpha**2 * (1 - c**2)), **TIGHT)


def test_eigen_sam_initial_vector_is_top_eigenvector(spd):
    # One full-batch step x1 = x0 − η H (x0 + ε) reveals ε; with v the top eigenvector it must be the table's
    # ε, and its alignment with v the theory's (MATH §7). v is computed before the first step.
    H = spd(3, seed=4, lo=0.5, hi=4.0)
    v1 = torch.linalg.eigh(H).eigenvectors[:, -1]
    prob = ss.Quadratic(H, noise_cov=0.0)
    method = ss.EigenSAM(0.05, 0.1, 0.5, init_power_iters=100)  # (2.25/4)^100 ~ 1e-25
    x0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    traj = ss.run(prob, method, x0, steps=1, seed=0)
    eps = torch.linalg.solve(H, (x0 - traj.x_final).T).T / method.lr - x0
    expected = _table_perturbation(method, x0 @ H, x0 @ H, v1.expand_as(x0))
    torch.testing.assert_close(eps, expected, rtol=1e-9, atol=1e-11)
    c = (_unit(x0 @ H) * v1).sum(dim=-1)
    cos = (_unit(eps) * v1).sum(dim=-1).abs()
    a = method.alpha
    torch.testing.assert_close(cos, (c.abs() + a * (1 - c**2)) / torch.sqrt(1 + a**2 * (1 - c**2)), rtol=1e-9, atol=1e-11)


# -- the norm guard -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method_at_min", rows("plain", "normalises"))  # every method that divides by a norm
def test_guard_fires_at_the_minimum_without_nan(method_at_min, diag_quadratic):
    prob = ss.Quadratic(diag_quadratic.H, noise_cov=0.0)
    steps, n = 5, 4
    traj = ss.run(prob, method_at_min, torch.zeros(3, dtype=F64), steps=steps, n_paths=n,
                  observables=("loss", "grad_norm"))
    assert traj.guard_count > 0
    assert bool(torch.isfinite(traj.x_final).all()) and traj.n_diverged == 0
    assert all(bool(torch.isfinite(v).all()) for v in traj.values.values())
    if not method_at_min.uses_eigenvector:  # ε = 0 there: the iterate stays at the minimum
        assert traj.guard_count == steps * n
        assert torch.equal(traj.x_final, torch.zeros(n, 3, dtype=F64))
    # Away from the minimum the guard stays silent.
    away = ss.run(prob, method_at_min, torch.ones(3, dtype=F64), steps=steps, n_paths=n)
    assert away.guard_count == 0


def test_guard_mask_and_eps_keyword():
    g = torch.tensor([[0.0, 0.0], [1e-9, 0.0], [3.0, 4.0]], dtype=F64)
    pert = ss.SAM(0.1, 0.5).perturbation(g, eps=1e-6)
    assert pert.guarded.tolist() == [True, True, False]
    torch.testing.assert_close(pert.eps, torch.tensor([[0.0, 0.0], [0.5e-3, 0.0], [0.3, 0.4]], dtype=F64), **TIGHT)
    # The documented default guard: 1e-12 in float64, 1e-7 in float32.
    assert ss.Quadratic(torch.eye(2, dtype=F64)).default_eps() == 1e-12
    assert ss.Quadratic(torch.eye(2, dtype=torch.float32)).default_eps() == 1e-7
    fired = ss.run(ss.Quadratic(torch.eye(2, dtype=F64)), ss.SAM(0.1, 0.05, eps=1.0),
                   torch.full((2,), 0.1, dtype=F64), steps=3)
    assert fired.guard_count == 3  # ||g|| = 0.14 < eps = 1: a user-set eps is honoured


@pytest.mark.parametrize("rho", [1, 0], ids=["int-1", "int-0"])
def test_integer_rho_is_accepted(rho, diag_quadratic):
    x0 = torch.ones(3, dtype=F64)
    a = ss.run(diag_quadratic, ss.USAM(0.1, rho), x0, steps=3, n_paths=4)
    b = ss.run(diag_quadratic, ss.USAM(0.1, float(rho)), x0, steps=3, n_paths=4)
    assert torch.equal(a.x_final, b.x_final)


def test_normalises_declares_exactly_the_guarded_methods(diag_quadratic):
    """A method that divides by no norm never fires the guard (run skips its mask); the others can."""
    assert {m.name for m in METHODS.values() if m.normalises} == {"SAM", "DNSAM", "UnifiedSAM", "EigenSAM", "ASAM"}
    prob = ss.Quadratic(diag_quadratic.H, noise_cov=0.0)
    for m in methods("plain", without=("normalises",)):
        traj = ss.run(prob, m, torch.zeros(3, dtype=F64), steps=3, n_paths=2)
        assert traj.guard_count == 0 and torch.equal(traj.x_final, torch.zeros(2, 3, dtype=F64))


# -- ASAM's perturbation (MATH §2.2), per path by hand ----------------------------------------------------------
@pytest.mark.parametrize("offset", [0.0, 0.01])
def test_asam_perturbation_matches_its_definition(offset):
    g, x, _ = _random_inputs(seed=5)
    x[0, 1] = 0.0  # a zero weight: moves only with an offset
    pert = ss.ASAM(0.1, 0.3, offset=offset).perturbation(g, eps=1e-12, x=x)
    for p in range(g.shape[0]):
        T = torch.diag(x[p].abs() + offset)
        want = 0.3 * T @ T @ g[p] / torch.linalg.vector_norm(T @ g[p])
        torch.testing.assert_close(pert.eps[p], want, **TIGHT)
    assert (pert.eps[0, 1] == 0) == (offset == 0) and not bool(pert.guarded.any())
    # scale invariance: x -> a x, g -> g / a (a loss invariant under the rescaling) leaves a x + ε(a x) = a(x + ε(x))
    a = torch.rand(g.shape, generator=torch.Generator().manual_seed(2), dtype=F64) + 0.5
    scaled = ss.ASAM(0.1, 0.3).perturbation(g / a, eps=1e-12, x=a * x).eps
    torch.testing.assert_close(scaled, a * ss.ASAM(0.1, 0.3).perturbation(g, eps=1e-12, x=x).eps, **TIGHT)


# -- generic tests over the whole method table ------------------------------------------------------------------
def _base_problems(method):
    """A Gaussian-noise problem (unless the row is mini-batch only) and a mini-batch one."""
    out = [_teacher_student()]
    if getattr(method, "micro_batch", None) is None:
        out.insert(0, (_quartic(0.2), torch.tensor([0.5, -1.0, 0.3], dtype=F64)))
    return out


@pytest.mark.parametrize("method", rows("perturbs"))
def test_every_method_at_rho_zero_is_sgd_bit_for_bit(method):
    """Any perturbation with every option, at rho = 0, is SGD with the same momentum and weight decay."""
    sgd = ss.SGD(method.lr, momentum=method.momentum, nesterov=method.nesterov, weight_decay=method.weight_decay)
    for prob, x0 in _base_problems(method):
        base = _run(prob, sgd, x0)
        assert not bool(base.diverged.any())
        _same_run(_run(prob, method.with_rho(0.0), x0), base)


@pytest.mark.slow
@pytest.mark.parametrize("method", rows())
def test_every_method_sde_of_every_order_has_the_right_shapes(method):
    for prob, x0 in _base_problems(method):
        x = x0 + 0.1 * torch.randn(3, prob.d, generator=torch.Generator().manual_seed(0), dtype=F64)
        for order in (0, 1, 2, "exact"):
            sde = ss.sde_model(prob, method, order=order, expectation=4 if not prob.additive_gaussian else "auto")
            b, F = sde.drift(x), sde.diffusion_factor(x)
            assert b.shape == (3, prob.d) and F.shape == (3, prob.d, sde.noise_dim), (order, sde)
            assert bool(torch.isfinite(b).all()) and bool(torch.isfinite(F).all()), (order, sde)


@pytest.mark.parametrize("method", rows())
def test_every_method_declared_jacobian_factor_is_its_linearisation(method):
    """On f = ½ Σ λᵢ xᵢ² (full batch) the base step's gradient G(x) + wd·x is linear for the methods that declare a
    factor: its i-th diagonal entry is a(λᵢ). The others must refuse (a normalised step has no Jacobian at 0)."""
    lams = torch.tensor([-1.5, -0.3, 0.4, 2.0, 5.0], dtype=F64)
    coef = method.jacobian_factor()
    if coef is None:
        with pytest.raises(ValueError, match=r"no eigenvalue filter of this form"):
            theory.jacobian_eigenvalue(method, 1.0)
        return
    prob = ss.Quadratic(torch.diag(lams))
    x = 1e-3 * torch.eye(len(lams), dtype=F64)  # linear: any scale; one basis vector per row
    G, _ = effective_gradient(prob, method, x, torch.zeros_like(x), eps=1e-12)
    measured = torch.diagonal(G + method.weight_decay * x) / 1e-3
    torch.testing.assert_close(measured, theory.jacobian_eigenvalue(method, lams), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", rows())
def test_every_method_repr_round_trips_and_describes_its_options(method):
    assert eval(repr(method), {**vars(ss), **vars(ss.methods), "inf": math.inf}) == method
    described = method.describe()
    assert described["method"] == method.name and described["lr"] == method.lr
    for option, default in (("weight_decay", 0.0), ("micro_batch", None), ("ascent_steps", 1)):
        assert (option in described) == (getattr(method, option, default) != default), option


def test_old_reprs_and_descriptions_are_unchanged():
    assert repr(ss.USAM(0.05, 0.1)) == "USAM(lr=0.05, eps=None, momentum=0.0, nesterov=False, rho=0.1)"
    assert set(ss.SAM(0.05, 0.1).describe()) == {"method", "lr", "eps", "momentum", "nesterov", "rho"}


# -- validation of the new options ------------------------------------------------------------------------------
@pytest.mark.parametrize("make, msg", [
    (lambda: ss.SGD(0.1, weight_decay=-1e-4), r"`weight_decay` must be a finite number >= 0, got weight_decay=-0.0001"),
    (lambda: ss.SAM(0.1, 0.1, micro_batch=0), r"`micro_batch` must be an integer >= 1, got micro_batch=0"),
    (lambda: ss.USAM(0.1, 0.1, micro_batch=2.0), r"`micro_batch` must be an integer >= 1, got micro_batch=2.0"),
    (lambda: ss.SAM(0.1, 0.1, ascent_steps=0), r"`ascent_steps` must be an integer >= 1, got ascent_steps=0"),
    (lambda: ss.SAM(0.1, 0.1, ascent_step_size=0.0), r"`ascent_step_size` must be a finite number > 0, got ascent_step_size=0.0"),
    (lambda: ss.SAM(0.1, 0.1, ascent_normalized=1), r"`ascent_normalized` must be True or False, got ascent_normalized=1"),
    (lambda: ss.ASAM(0.1, 0.1, offset=-0.1), r"`offset` must be a finite number >= 0, got offset=-0.1"),
    (lambda: ss.SGD(0.1, micro_batch=2), r"unexpected keyword argument 'micro_batch'"),
    (lambda: ss.USAM(0.1, 0.1, ascent_steps=2), r"unexpected keyword argument 'ascent_steps'"),
])
def test_option_validation(make, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        make()


def test_micro_batch_refused_where_it_does_not_fit(diag_quadratic):
    x0 = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match=r"`micro_batch` \(m-SAM\) needs a mini-batch problem \(a FiniteSum\).*"
                                         r"Quadratic has additive Gaussian gradient noise, got micro_batch=1"):
        ss.run(diag_quadratic, ss.SAM(0.1, 0.1, micro_batch=1), x0, steps=1)
    with pytest.raises(ValueError, match=r"`micro_batch` \(m-SAM\) needs a mini-batch problem"):
        ss.sde_model(diag_quadratic, ss.USAM(0.1, 0.1, micro_batch=1))
    prob = teacher_student(n=16, d_in=3, width=2, batch_size=4)
    for call in (lambda: ss.run(prob, ss.SAM(0.1, 0.1, micro_batch=3), prob.x_init, steps=1),
                 lambda: ss.step(prob, ss.SAM(0.1, 0.1, micro_batch=3), prob.x_init[None],
                                 prob.sample_draws((1,), torch.Generator())),
                 lambda: ss.sde_model(prob, ss.SAM(0.1, 0.1, micro_batch=3))):
        with pytest.raises(ValueError, match=r"`micro_batch` must divide the batch size B=4 .*got micro_batch=3"):
            call()
