"""The options of issue 18 against the public SAM codes, each peer's algorithm written by hand below as a plain
PyTorch loop over an ``nn.Module`` from its published description (MATH §2.2, §2.3), float64:

- ``davda54/sam``: ``SAM(params, base_optimizer, rho, adaptive)`` — first step
  :math:`e_w = (T^2)\\,g\\,\\rho/(\\|Tg\\|+10^{-12})` with :math:`T=|w|` (``adaptive=True``) or :math:`T=1`, the norm over all
  parameters together; second step: restore :math:`w` and take the base optimizer's step with the gradient from
  the perturbed point; here the base is ``torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`` (Nesterov too);
- ``tml-epfl/understanding-sam``: m-SAM by gradient accumulation (``acc_steps = B/m``: each micro-batch, in
  order, gets its own SAM perturbation; gradients averaged), ``l2_reg`` in the loss, and
  ``perturb_weights_sam``'s multi-step ascent (``sam_iters``) projected onto the ρ-ball;

then m-SAM's SDE (MATH §3.6: the drift of the base method at batch size m, by exact enumeration) and weight
decay's −λX in the drift of every model order.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import sde_sam as ss
from conftest import by_id, rows
from sde_sam import drift as drift_mod
from sde_sam import discrete
from sde_sam.methods import effective_gradient
from sde_sam.problems import FiniteSum, linear_regression, teacher_student, with_l2

F64 = torch.float64
STEPS, N, B = 10, 24, 8


# -- a small module and fixed mini-batches ---------------------------------------------------------------------
def _module() -> nn.Module:
    with torch.random.fork_rng():  # the test's own seed; the global stream is left as it was
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 5, generator=g, dtype=F64), torch.randint(3, (N,), generator=g)


def _batches(batch_size: int = B) -> torch.Tensor:
    """``(STEPS, 1, B)`` mini-batch indices (with replacement), one path."""
    return torch.randint(N, (STEPS, 1, batch_size), generator=torch.Generator().manual_seed(2))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _ours(method, *, l2: float = 0.0) -> torch.Tensor:
    prob = FiniteSum.from_module(_module(), F.cross_entropy, _data(), batch_size=B)
    prob = with_l2(prob, l2) if l2 else prob
    traj = ss.run(prob, method, prob.x_init, steps=STEPS, n_paths=1, draws=_batches(), observables=("loss",))
    assert traj.n_diverged == 0
    return traj.x_final[0]


def _loss(model, idx, l2: float = 0.0):
    a, t = _data()
    loss = F.cross_entropy(model(a[idx]), t[idx])
    if l2:  # tml-epfl's l2_reg, in the objective: the perturbation sees it
        loss = loss + 0.5 * l2 * sum((p * p).sum() for p in model.parameters())
    return loss


def _grads(model, idx, l2: float = 0.0) -> list[torch.Tensor]:
    return list(torch.autograd.grad(_loss(model, idx, l2), list(model.parameters())))


# -- davda54/sam: SAM(adaptive=...) over torch.optim.SGD ---------------------------------------------------------
def _davda54(rho: float, *, adaptive: bool, lr: float, momentum: float, nesterov: bool, weight_decay: float,
             guard: float = 1e-12):
    model = _module()
    params = list(model.parameters())
    base = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    for k in range(STEPS):
        idx = _batches()[k, 0]
        g = _grads(model, idx)
        with torch.no_grad():  # first_step
            scaled = [(p.abs() if adaptive else 1.0) * gp for p, gp in zip(params, g)]
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
            scale = rho / (grad_norm + guard)  # davda54/sam: + 1e-12
            e_w = [(p.pow(2) if adaptive else 1.0) * gp * scale for p, gp in zip(params, g)]
            for p, e in zip(params, e_w):
                p.add_(e)
        g_adv = _grads(model, idx)
        with torch.no_grad():  # second_step: back to w, then the base optimizer with the perturbed gradient
            for p, e, ga in zip(params, e_w, g_adv):
                p.sub_(e)
                p.grad = ga
        base.step()
    return _flat(model)


@pytest.mark.parametrize("adaptive, nesterov", [(True, False), (True, True), (False, True)],
                         ids=["ASAM-heavyball", "ASAM-nesterov", "SAM-nesterov"])
def test_asam_and_sam_equal_davda54_with_sgd_momentum_and_weight_decay(adaptive, nesterov):
    lr, rho, kw = 0.1, 0.5, dict(momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
    peer = _davda54(rho, adaptive=adaptive, lr=lr, **kw)
    ours = _ours(ss.ASAM(lr, rho, **kw) if adaptive else ss.SAM(lr, rho, **kw))
    x_init = FiniteSum.from_module(_module(), F.cross_entropy, _data(), batch_size=B).x_init
    assert (peer - x_init).abs().max() > 1e-2  # the runs moved
    # The guards differ (ours max(‖Tg‖, 1e-12), davda54's ‖Tg‖ + 1e-12): a relative 1e-12/‖Tg‖ in ε, which leaves
    # ~5e-13 here after 10 steps; without either guard the two agree to rounding, so that is the whole difference.
    assert (ours - peer).abs().max() <= 1e-12, (ours - peer).abs().max()
    unguarded = _davda54(rho, adaptive=adaptive, lr=lr, guard=0.0, **kw)
    ours_unguarded = _ours(ss.ASAM(lr, rho, eps=1e-300, **kw) if adaptive else ss.SAM(lr, rho, eps=1e-300, **kw))
    assert (ours_unguarded - unguarded).abs().max() <= 1e-14, (ours_unguarded - unguarded).abs().max()
    # The comparison has teeth: plain SAM (adaptive) / no weight decay end elsewhere.
    other = ss.SAM(lr, rho, **kw) if adaptive else ss.SAM(lr, rho, momentum=0.9, nesterov=nesterov)
    assert (_ours(other) - peer).abs().max() > 1e-6


# -- tml-epfl/understanding-sam: m-SAM by gradient accumulation, l2_reg, multi-step ascent -------------------------
def _project(delta: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    norm = torch.linalg.vector_norm(torch.cat([d.reshape(-1) for d in delta]))
    return [d * (rho / norm) for d in delta] if norm > rho else delta


def _perturb_weights_sam(model, idx, rho: float, *, iters: int, step: float, normalize: bool, l2: float):
    """δ₀ = 0; δ ← Π_ρ(δ + s·∇/‖∇‖) (or s·∇) with ∇ the gradient at w + δ on the same batch; returns δ."""
    params = list(model.parameters())
    delta = [torch.zeros_like(p) for p in params]
    for _ in range(iters):
        with torch.no_grad():
            for p, d in zip(params, delta):
                p.add_(d)
        g = _grads(model, idx, l2)
        with torch.no_grad():
            for p, d in zip(params, delta):
                p.sub_(d)
            norm = torch.linalg.vector_norm(torch.cat([gp.reshape(-1) for gp in g]))
            delta = _project([d + step * (gp / norm if normalize else gp) for d, gp in zip(delta, g)], rho)
    return delta


def _tml_epfl(rho: float, *, lr: float, acc_steps: int, l2: float, momentum: float, iters: int = 1,
              step: float | None = None, normalize: bool = True):
    model = _module()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    m = B // acc_steps
    for k in range(STEPS):
        batch = _batches()[k, 0]
        acc = [torch.zeros_like(p) for p in params]
        for j in range(acc_steps):  # the micro-batches, in order
            idx = batch[j * m:(j + 1) * m]
            delta = _perturb_weights_sam(model, idx, rho, iters=iters, step=rho if step is None else step,
                                         normalize=normalize, l2=l2)
            with torch.no_grad():
                for p, d in zip(params, delta):
                    p.add_(d)
            g = _grads(model, idx, l2)
            with torch.no_grad():
                for p, d, a, gp in zip(params, delta, acc, g):
                    p.sub_(d)
                    a.add_(gp / acc_steps)  # loss / acc_steps, accumulated
        for p, a in zip(params, acc):
            p.grad = a
        opt.step()
    return _flat(model)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_m_sam_equals_the_accumulation_loop_with_l2(m):
    lr, rho, l2 = 0.1, 0.3, 1e-2
    peer = _tml_epfl(rho, lr=lr, acc_steps=B // m, l2=l2, momentum=0.9)
    ours = _ours(ss.SAM(lr, rho, micro_batch=m, momentum=0.9), l2=l2)
    assert (ours - peer).abs().max() <= 1e-12, (ours - peer).abs().max()
    # teeth: plain SAM (m = B) ends elsewhere, and so does the loop without the L2 term
    assert (_ours(ss.SAM(lr, rho, momentum=0.9), l2=l2) - peer).abs().max() > 1e-6
    assert (_ours(ss.SAM(lr, rho, micro_batch=m, momentum=0.9)) - peer).abs().max() > 1e-6


@pytest.mark.parametrize("q", [1, 3])
@pytest.mark.parametrize("half", [False, True], ids=["s=rho", "s=rho/2"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalised", "raw"])
def test_multi_step_ascent_equals_perturb_weights_sam(q, half, normalize):
    lr, rho = 0.1, 0.3
    s = rho / 2 if half else rho
    peer = _tml_epfl(rho, lr=lr, acc_steps=1, l2=0.0, momentum=0.0, iters=q, step=s, normalize=normalize)
    ours = _ours(ss.SAM(lr, rho, ascent_steps=q, ascent_step_size=s, ascent_normalized=normalize))
    assert (ours - peer).abs().max() <= 1e-12, (ours - peer).abs().max()
    if (q, half, normalize) != (1, False, True):  # teeth: not plain SAM
        assert (_ours(ss.SAM(lr, rho)) - peer).abs().max() > 1e-8


def test_one_ascent_step_of_size_rho_is_sam_and_m_equal_b_is_the_base_method_bit_for_bit():
    sam = _ours(ss.SAM(0.1, 0.3, momentum=0.9))
    assert torch.equal(_ours(ss.SAM(0.1, 0.3, momentum=0.9, ascent_steps=1, ascent_step_size=0.3)), sam)
    import dataclasses
    # Four rows of the method table, covering momentum, weight decay, the full-batch norm and the eigenvector state
    # (all 16 perturbing rows would take 4x as long in the fast lane).
    for method in (p.values[0] for p in by_id("SAM-heavyball", "ASAM-wd-heavyball", "DNSAM", "EigenSAM")):
        assert torch.equal(_ours(dataclasses.replace(method, micro_batch=B)), _ours(method)), method.name


# -- m-SAM's SDE: the base method's drift at batch size m (MATH §3.6), by exact enumeration ----------------------
def _with_batch(prob: FiniteSum, batch_size: int) -> FiniteSum:
    return FiniteSum(prob.loss_fn, prob.data, batch_size=batch_size, d=prob.d)


@pytest.mark.parametrize("make, B_, m", [
    (lambda: ss.SAM(0.1, 0.3), 2, 1), (lambda: ss.SAM(0.1, 0.3), 4, 2), (lambda: ss.USAM(0.1, 0.3), 2, 1),
    (lambda: ss.ASAM(0.1, 0.3, offset=0.1), 2, 1), (lambda: ss.SAM(0.1, 0.3, ascent_steps=2), 2, 1),
])
@pytest.mark.parametrize("order", [1, 2, "exact"])
def test_m_sam_drift_is_the_base_drift_at_batch_size_m(make, B_, m, order):
    base = teacher_student(n=4, d_in=2, width=2, batch_size=1)
    x = base.x_init + 0.3 * torch.randn(4, base.d, generator=torch.Generator().manual_seed(0), dtype=F64)
    method = make()
    msam = ss.sde_model(_with_batch(base, B_), dataclasses_replace(method, micro_batch=m), order=order,
                        expectation="enumerate")
    at_m = ss.sde_model(_with_batch(base, m), method, order=order, expectation="enumerate")
    assert msam.stateless_mode == "enumerate" and msam._plan.draws_all.shape == (4**B_, B_)
    b, b_m = msam.drift(x), at_m.drift(x)
    assert (b - b_m).abs().max() <= 1e-12, (b - b_m).abs().max()
    # ... and the covariance of batch size m divided by k = B/m (MATH §3.6)
    Fm, F_m = msam.diffusion_factor(x), at_m.diffusion_factor(x)
    cov, cov_m = Fm @ Fm.transpose(1, 2), F_m @ F_m.transpose(1, 2)
    torch.testing.assert_close(cov, cov_m * m / B_, rtol=1e-10, atol=1e-14)
    # teeth: the plain method at batch size B has another drift
    plain = ss.sde_model(_with_batch(base, B_), method, order=order, expectation="enumerate")
    assert (plain.drift(x) - b).abs().max() > 1e-6


def dataclasses_replace(method, **kw):
    import dataclasses
    return dataclasses.replace(method, **kw)


# -- weight decay: −λX in the drift of every order, diffusion unchanged (MATH §3.6) ------------------------------
def _quartic(x):
    return (1 - torch.cos(x)).sum() + 0.3 * x[0] * x[1]


WD_PROBLEMS = {
    "quadratic": lambda: ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5, -0.2], dtype=F64)), noise_cov=0.04),
    "objective": lambda: ss.Objective(_quartic, 3, noise_cov=0.04, dtype=F64),
    "finite_sum_B1": lambda: linear_regression(n=6, d=3, batch_size=1),
    "finite_sum_B2": lambda: teacher_student(n=6, d_in=1, width=1, batch_size=2),
}


@pytest.mark.parametrize("problem", list(WD_PROBLEMS))
@pytest.mark.parametrize("method", rows(without=("weight_decay", "micro_batch")))  # the test adds the decay
@pytest.mark.parametrize("order", [0, 1, 2, "exact"])
def test_weight_decay_adds_exactly_minus_lambda_x_to_every_order(problem, method, order):
    prob, lam = WD_PROBLEMS[problem](), 0.37
    x = 0.5 + torch.randn(5, prob.d, generator=torch.Generator().manual_seed(3), dtype=F64)
    plain = ss.sde_model(prob, method, order=order, seed=4)
    decayed = ss.sde_model(prob, dataclasses_replace(method, weight_decay=lam), order=order, seed=4)
    assert plain.stateless_mode == decayed.stateless_mode
    b0 = plain.drift(x)  # sampled expectations: the same seed gives both models the same draws
    diff = decayed.drift(x) - b0
    want = -lam * x / (1 - method.momentum)
    assert (diff - want).abs().max() <= 1e-12 * (1 + b0.abs().max()), (diff - want).abs().max()
    assert torch.equal(decayed.diffusion_factor(x), plain.diffusion_factor(x))
    if plain.linear is not None:  # the closed form: A + λI (times 1/(1-β))
        torch.testing.assert_close(decayed.linear[0] - plain.linear[0],
                                   lam / (1 - method.momentum) * torch.eye(prob.d, dtype=F64), rtol=0, atol=1e-15)


def test_weight_decay_in_the_per_draw_values_and_exact_mode():
    """The two-draw scheme and every sampled or enumerated model take G (drift) and G_noise (diffusion) per draw
    from drift.model_gradients: weight decay is λx in G only, m-SAM included."""
    prob = teacher_student(n=6, d_in=1, width=1, batch_size=2)
    x = torch.randn(4, prob.d, generator=torch.Generator().manual_seed(0), dtype=F64)
    draws = prob.sample_draws((4,), torch.Generator().manual_seed(1))
    for method in (ss.SAM(0.1, 0.2), ss.USAM(0.1, 0.2, micro_batch=1)):
        for order in (0, 1, 2, "exact"):
            g0, G0, N0 = drift_mod.model_gradients(prob, method, x, draws, order=order, eps=1e-12)
            g1, G1, N1 = drift_mod.model_gradients(prob, dataclasses_replace(method, weight_decay=0.5), x, draws,
                                                   order=order, eps=1e-12)
            torch.testing.assert_close(G1 - G0, 0.5 * x, rtol=0, atol=1e-14)
            assert torch.equal(g0, g1) and torch.equal(N0, N1)
    from sde_sam.weak.exact import _exact_applicable
    quad = WD_PROBLEMS["quadratic"]()
    method = ss.USAM(0.1, 0.2, weight_decay=0.3, momentum=0.5)
    assert _exact_applicable(quad, method) is None  # A + λI: still linear-Gaussian (MATH §3.6)
    x0 = torch.ones(quad.d, dtype=F64)
    kw = dict(lrs=[0.1, 0.05], horizon=1.0, x0=x0, sde_order=1, test_functions=["loss"], solver_check=False)
    exact = ss.weak_error(quad, method, **kw).table
    # the model side: the same as the step-by-step (scheduled-cell) recursion with a constant schedule
    const = ss.weak_error(quad, dataclasses_replace(method, lr=ss.schedules.constant(0.1)), **kw).table
    np.testing.assert_allclose(exact["sde_mean"], const["sde_mean"], rtol=1e-9, atol=0)
    np.testing.assert_allclose(exact["discrete_mean"], const["discrete_mean"], rtol=1e-12, atol=0)
    # the discrete side against Monte Carlo: within 4 SE at every recorded time
    traj = ss.run(quad, method, x0, steps=10, n_paths=20_000, seed=0, record_every=1)
    want = exact[exact["lr"] == 0.1].sort_values("time")["discrete_mean"].to_numpy()
    z = (traj.mean("loss").numpy() - want) / np.maximum(traj.sem("loss").numpy(), 1e-300)
    assert np.abs(z[1:]).max() < 4, z


# -- with_l2: the objective changes for any problem, and the perturbation sees it --------------------------------
L2_PROBLEMS = {
    "quadratic": WD_PROBLEMS["quadratic"],
    "objective": WD_PROBLEMS["objective"],
    "finite_sum": WD_PROBLEMS["finite_sum_B2"],
    "module": lambda: FiniteSum.from_module(_module(), F.cross_entropy, _data(), batch_size=4),
}


@pytest.mark.parametrize("name", list(L2_PROBLEMS))
def test_with_l2_adds_the_term_everywhere(name):
    base, lam = L2_PROBLEMS[name](), 0.2
    prob = with_l2(base, lam)
    assert type(prob) is type(base) and prob is not base
    g = torch.Generator().manual_seed(0)
    x, v = (torch.randn(3, base.d, generator=g, dtype=F64) for _ in range(2))
    draws = base.sample_draws((3,), g)
    close = dict(rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(prob.loss(x), base.loss(x) + 0.5 * lam * (x * x).sum(-1), **close)
    torch.testing.assert_close(prob.grad(x), base.grad(x) + lam * x, **close)
    torch.testing.assert_close(prob.hvp(x, v), base.hvp(x, v) + lam * v, **close)
    torch.testing.assert_close(prob.stochastic_grad(x, draws), base.stochastic_grad(x, draws) + lam * x, **close)
    torch.testing.assert_close(prob.stochastic_hvp(x, v, draws), base.stochastic_hvp(x, v, draws) + lam * v, **close)
    # The perturbation sees λx (l2_reg), unlike weight_decay: SAM's effective gradient on the new objective.
    G, _ = effective_gradient(prob, ss.SAM(0.1, 0.3), x, draws, eps=1e-12)
    gl = base.stochastic_grad(x, draws) + lam * x
    y = x + 0.3 * gl / torch.linalg.vector_norm(gl, dim=-1, keepdim=True)
    torch.testing.assert_close(G, base.stochastic_grad(y, draws) + lam * y, **close)


def test_with_l2_wraps_any_other_problem_and_validates():
    class Plain(ss.Objective):  # a problem kind with_l2 does not know: a wrapper delegating to it
        pass

    base = WD_PROBLEMS["objective"]()
    wrapped = ss.problems.l2.L2Problem(base, 0.2)
    x = torch.ones(2, 3, dtype=F64)
    torch.testing.assert_close(wrapped.grad(x), base.grad(x) + 0.2 * x, rtol=1e-14, atol=1e-14)
    assert wrapped.additive_gaussian and wrapped.enumerate_draws() is None and "with_l2" in repr(wrapped)
    with pytest.raises(ValueError, match=r"`lam` must be a finite number >= 0, got lam=-0.1"):
        with_l2(base, -0.1)
    with pytest.raises(TypeError, match=r"`problem` must be an sde_sam Problem, got str"):
        with_l2("quadratic", 0.1)


# -- enumerating every mini-batch ----------------------------------------------------------------------------------
@pytest.mark.parametrize("replacement, count", [(True, 27), (False, 6)])
def test_enumerate_every_mini_batch(replacement, count):
    prob = linear_regression(n=3, d=2, batch_size=3 if replacement else 2, replacement=replacement)
    assert prob.enumerate_draws() is None  # "auto" never enumerates mini-batches: existing models unchanged
    draws = prob.enumerate_draws(all_batches=True)
    assert draws.shape == (count, prob.batch_size) and draws.dtype == torch.int64
    assert len({tuple(r) for r in draws.tolist()}) == count
    if not replacement:
        assert all(len(set(r)) == 2 for r in draws.tolist())
    with pytest.raises(ValueError, match=r"would enumerate 27 mini-batches \(n=3, batch_size=3, replacement=True\); "
                                         r"at most max_batches=10 are allowed"):
        linear_regression(n=3, d=2, batch_size=3).enumerate_draws(all_batches=True, max_batches=10)
    with pytest.raises(ValueError, match=r"would enumerate 4096000000 mini-batches"):
        ss.sde_model(linear_regression(n=40, d=2, batch_size=6), ss.SAM(0.1, 0.1), expectation="enumerate")


# -- the renamed helpers keep working for one release --------------------------------------------------------------
def test_old_helper_names_warn_and_agree():
    prob = teacher_student(n=6, d_in=1, width=1, batch_size=2)
    x = torch.randn(3, prob.d, generator=torch.Generator().manual_seed(0), dtype=F64)
    draws = prob.sample_draws((3,), torch.Generator().manual_seed(1))
    method = ss.SAM(0.1, 0.2)
    with pytest.warns(DeprecationWarning, match=r"effective_grad is deprecated; use sde_sam.methods.effective_gradient"):
        old = discrete.effective_grad(prob, method, x, draws, eps=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(old, effective_gradient(prob, method, x, draws, eps=1e-12)))
    with pytest.warns(DeprecationWarning, match=r"effective_grads is deprecated; use sde_sam.drift.model_gradients"):
        old = drift_mod.effective_grads(prob, method, x, draws, order=1, eps=1e-12)
    new = drift_mod.model_gradients(prob, method, x, draws, order=1, eps=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(old, new))
    with warnings.catch_warnings():  # the library itself uses the new names
        warnings.simplefilter("error", DeprecationWarning)
        ss.sde_model(prob, method, order=1, expectation=4).drift(x)
        ss.run(prob, method, prob.x_init, steps=2, n_paths=2)
    assert copy.copy(method) == method


def test_two_draw_scheme_covers_m_sam():
    """One two-draw step (MATH §4.1) of m-SAM's order-1 model from one point: mean x + dt·b and covariance
    dt·F Fᵀ, with b and F from the exact enumeration of every mini-batch (4 SE; float64, 40 000 paths)."""
    base = teacher_student(n=4, d_in=2, width=2, batch_size=1)
    prob = _with_batch(base, 4)
    method, dt, n = ss.SAM(0.1, 0.3, micro_batch=2), 0.02, 40_000
    x0 = base.x_init + 0.2
    two = ss.sde_model(prob, method, order=1, expectation="two_draw")
    exact = ss.sde_model(prob, method, order=1, expectation="enumerate")
    assert two.expectation_mode == "two_draw"
    X = ss.simulate(two, x0, t1=dt, dt=dt, n_paths=n, seed=5, observables=()).x_final
    b, Fx = exact.drift(x0[None])[0], exact.diffusion_factor(x0[None])[0]
    se = X.std(dim=0) / n**0.5
    assert ((X.mean(dim=0) - (x0 + dt * b)).abs() < 4 * se).all(), ((X.mean(dim=0) - x0 - dt * b) / se)
    # the step really moves by the drift: many SE away from x0
    assert ((dt * b).abs() / se).max() > 20
    var, want = X.var(dim=0), dt * (Fx * Fx).sum(-1)
    assert ((var - want).abs() < 0.06 * want + 1e-18).all(), var / want
