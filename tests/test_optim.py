"""``ss.optim``: the optimizers take exactly the steps of ``ss.run`` on ``FiniteSum.from_module`` of the same model
with the same mini-batches (every method and option of the conftest table, 10 steps, float64, 1e-12); the state
round-trips through ``state_dict``; an LR scheduler's rates are ``ss.step`` with those rates; bad input errors."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sde_sam as ss
from conftest import TABLE, rows

F64 = torch.float64
N, B, STEPS = 16, 4, 10
X = torch.randn(N, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (N,), generator=torch.Generator().manual_seed(1))
DRAWS = torch.randint(0, N, (STEPS, 1, B), generator=torch.Generator().manual_seed(2))


def make_model(seed: int = 0) -> nn.Module:
    """Four parameter tensors of different shapes: (5, 3), (5,), (3, 5), (3,)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def v0_for(method, d: int):
    return torch.randn(d, dtype=F64, generator=torch.Generator().manual_seed(3)) if method.uses_eigenvector else None


def train(model, method, steps=range(STEPS), opt=None, v0=None):
    """The user's loop: one closure per mini-batch of DRAWS, m-SAM's micro-batches as slices of it."""
    opt = opt or ss.optim.Optimizer(model.parameters(), method, v0=v0)
    losses = []
    for k in steps:
        idx = DRAWS[k, 0]

        def closure(s=slice(None), idx=idx):  # m-SAM: the loss of batch[s]
            return F.cross_entropy(model(X[idx][s]), Y[idx][s])

        losses.append(opt.step(closure, batch_size=B, full_closure=lambda: F.cross_entropy(model(X), Y)))
    return opt, losses


# The table, and m-SAM with micro-batches of 2 (the closure gets slice(0, 2), slice(2, 4)).
@pytest.mark.parametrize("method", rows() + [pytest.param(ss.SAM(0.1, 0.2, micro_batch=2, momentum=0.9),
                                                         id="SAM-m2-heavyball")])
def test_optimizer_equals_run(method):
    model = make_model()
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (X, Y), batch_size=B)
    v0 = v0_for(method, prob.d)
    traj = ss.run(prob, method, prob.x_init, steps=STEPS, n_paths=1, draws=DRAWS, observables=(), v0=v0)
    train(model, method, v0=v0)
    assert torch.allclose(flat(model), traj.x_final[0], rtol=0, atol=1e-12)
    assert (flat(model) - prob.x_init).abs().max() > 1e-3  # it moved
    assert all(p.grad is None for p in model.parameters())  # p.grad is neither read nor written


def test_every_method_is_in_the_table_and_named():
    assert {type(r.method) for r in TABLE} >= set(ss.methods.METHODS.values())
    for cls in ss.methods.METHODS.values():
        opt_cls = getattr(ss.optim, cls.__name__)
        assert issubclass(opt_cls, ss.optim.Optimizer) and opt_cls.__name__ == cls.__name__


def test_named_constructor_is_the_method():
    model = make_model()
    opt = ss.optim.SAM(model.parameters(), lr=0.1, rho=0.2, momentum=0.9, weight_decay=0.05, micro_batch=2)
    assert opt.current_method() == ss.SAM(0.1, 0.2, momentum=0.9, weight_decay=0.05, micro_batch=2)
    eig = ss.optim.EigenSAM(model.parameters(), 0.1, 0.2, 0.3, refresh_every=2, v0=torch.ones(38, dtype=F64))
    assert eig.current_method() == ss.EigenSAM(0.1, 0.2, 0.3, refresh_every=2)


def test_returned_loss_is_the_batch_loss_at_the_point():
    for method in (ss.SAM(0.1, 0.2), ss.SAM(0.1, 0.2, micro_batch=1)):
        model = make_model()
        idx = DRAWS[0, 0]
        before = F.cross_entropy(model(X[idx]), Y[idx]).detach()
        _, losses = train(model, method, steps=[0])
        assert torch.allclose(losses[0], before, rtol=0, atol=1e-12) and not losses[0].requires_grad


def test_eigensam_first_vector_from_the_full_batch_hessian():
    # Without v0: init_power_iters power iterations on the full-batch Hessian from seed's Gaussian start, as
    # ss.discrete.initial_state; then the steps of ss.step.
    method = ss.EigenSAM(0.1, 0.2, 0.3, refresh_every=2, power_iters=3, init_power_iters=5, momentum=0.5)
    model = make_model()
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (X, Y), batch_size=B)
    x = prob.x_init.unsqueeze(0)
    state = ss.discrete.initial_state(prob, method, x, seed=7)
    for k in range(STEPS):
        x, state = ss.step(prob, method, x, DRAWS[k], state=state)
    opt = ss.optim.Optimizer(model.parameters(), method, seed=7)
    train(model, method, opt=opt)
    assert torch.allclose(flat(model), x[0], rtol=0, atol=1e-12)
    v = torch.cat([opt.state[p]["eigenvector"].reshape(-1) for p in model.parameters()])
    assert torch.allclose(v, state.v[0], rtol=0, atol=1e-12) and opt.state[model[0].weight]["step"] == STEPS


@pytest.mark.parametrize("method", [r.values[0] for r in rows("momentum")] + [r.values[0] for r in rows("eigenvector")])
def test_state_dict_round_trip_resumes_identically(method):
    whole = make_model()
    v0 = v0_for(method, 38)
    train(whole, method, v0=v0)
    first = make_model()
    opt, _ = train(first, method, steps=range(5), v0=v0)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # data, not code
    resumed = make_model(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = ss.optim.Optimizer(resumed.parameters(), method)
    opt2.load_state_dict(saved["opt"])
    train(resumed, method, steps=range(5, STEPS), opt=opt2)
    assert torch.equal(flat(resumed), flat(whole))


def test_lr_scheduler_is_the_step_with_that_rate():
    method = ss.SAM(0.1, 0.2, momentum=0.9)
    model = make_model()
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (X, Y), batch_size=B)
    opt = ss.optim.Optimizer(model.parameters(), method)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, state = prob.x_init.unsqueeze(0), None
    for k in range(4):
        x, state = ss.step(prob, method.with_lr(0.1 * 0.5**k), x, DRAWS[k], state=state)
    for k in range(4):
        train(model, method, steps=[k], opt=opt)
        sched.step()
    assert torch.allclose(flat(model), x[0], rtol=0, atol=1e-12)


# torch's schedulers on ss.optim, against the ss.schedules shape on the method in ss.run (sde_sam.schedules: step by
# step the same rates); rho constant, or following the rate (follow_lr: rho_k = rho * lr_k / lr, lr the base rate).
SCHEDULES = {
    "cosine": (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS, eta_min=0.1 * 0.1),
               lambda lr: ss.schedules.cosine(lr, horizon=STEPS * lr, final=0.1)),
    "linear": (lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4),
               lambda lr: ss.schedules.linear_warmup(lr, horizon=STEPS * lr, warmup=0.4, start=0.25)),
    "multistep": (lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 7], gamma=0.5),
                  lambda lr: ss.schedules.piecewise(lr, horizon=STEPS * lr, boundaries=(0.3, 0.7),
                                                    factors=(1.0, 0.5, 0.25))),
}
SCHEDULED = [("SGD", None), ("SAM", "constant"), ("SAM", "follow_lr"), ("USAM", "constant"), ("USAM", "follow_lr"),
             ("SAM", "shape")]


def _scheduled(name, rho, lr):
    opts = dict(momentum=0.9, weight_decay=5e-3, nesterov=name == "USAM")
    if name == "SGD":
        return getattr(ss, name)(lr, **opts)
    rhos = {"constant": 0.2, "follow_lr": ss.schedules.follow_lr(0.2),
            "shape": ss.schedules.linear_warmup(0.2, horizon=STEPS * 0.1, warmup=0.5)}  # on the clock k * 0.1
    return getattr(ss, name)(lr, rhos[rho], **opts)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name, rho", SCHEDULED, ids=[f"{n}-{r}" for n, r in SCHEDULED])
def test_torch_lr_scheduler_equals_run_with_the_schedule(schedule, name, rho):
    """A torch scheduler driving the optimizer's lr (rho constant, follow_lr relative to the base rate — the
    group's ``initial_lr`` — or a shape on the base rate's clock) takes the steps of ss.run with the
    corresponding ss.schedules shape on the method: SGD, SAM, USAM with momentum and weight decay, 10 steps."""
    make_torch, make_shape = SCHEDULES[schedule]
    lr = 0.1
    model = make_model()
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (X, Y), batch_size=B)
    traj = ss.run(prob, _scheduled(name, rho, make_shape(lr)), prob.x_init, steps=STEPS, n_paths=1, draws=DRAWS,
                  observables=())
    opt = ss.optim.Optimizer(model.parameters(), _scheduled(name, rho, lr))
    sched = make_torch(opt)
    rates = []
    for k in range(STEPS):
        rates.append(opt.param_groups[0]["lr"])
        train(model, None, steps=[k], opt=opt)
        sched.step()
    assert len(set(rates)) > 2  # the rate did change
    assert torch.allclose(flat(model), traj.x_final[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, rho", SCHEDULED[1:3], ids=["SAM-constant", "SAM-follow_lr"])
def test_schedule_on_the_optimizer_equals_run(name, rho):
    """The ss.schedules shape given to the optimizer itself (no torch scheduler) is the run's too."""
    lr = ss.schedules.cosine(0.1, horizon=STEPS * 0.1, final=0.1)
    model = make_model()
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (X, Y), batch_size=B)
    traj = ss.run(prob, _scheduled(name, rho, lr), prob.x_init, steps=STEPS, n_paths=1, draws=DRAWS, observables=())
    train(model, _scheduled(name, rho, lr))
    assert torch.allclose(flat(model), traj.x_final[0], rtol=0, atol=1e-12)


def test_torch_scheduler_and_a_method_lr_schedule_refused():
    model = make_model()
    opt = ss.optim.SAM(model.parameters(), ss.schedules.cosine(0.1, horizon=1.0), 0.2)
    torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    before = flat(model).clone()
    with pytest.raises(ValueError, match=r"an sde_sam schedule \(lr_schedule=cosine.*and a torch lr_scheduler"):
        opt.step(closure_of(model))
    assert torch.equal(flat(model), before)


def test_trained_point_starts_a_study():
    model = make_model()
    train(model, ss.SAM(0.1, 0.2))
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (X, Y), batch_size=B)
    assert torch.equal(prob.x_init, flat(model))


# -- bad input -----------------------------------------------------------------------------------------------
def closure_of(model, idx=DRAWS[0, 0]):
    return lambda s=slice(None): F.cross_entropy(model(X[idx][s]), Y[idx][s])


@pytest.mark.parametrize("build, err, match", [
    (lambda m: ss.optim.Optimizer(m.parameters(), "SAM"), TypeError, "`method` must be an sde_sam Method"),
    (lambda m: ss.optim.SAM(m.parameters(), 0.1), ValueError, "`rho` is required"),
    (lambda m: ss.optim.SAM(m.parameters(), 0.1, rh0=0.05), TypeError, "rh0"),
    (lambda m: ss.optim.SAM(m.parameters(), -0.1, 0.05), ValueError, "lr"),
    (lambda m: ss.optim.SAM([{"params": [m[0].weight]}, {"params": [m[2].weight]}], 0.1, 0.05), ValueError,
     "one parameter group"),
    (lambda m: ss.optim.SAM([m[0].weight, m[2].weight.detach().float().requires_grad_()], 0.1, 0.05), ValueError,
     "one floating dtype"),
    (lambda m: ss.optim.SAM([m[0].weight, m[0].bias.detach()], 0.1, 0.05), ValueError,
     "requires_grad=False at index 1"),
    (lambda m: ss.optim.SAM(m.parameters(), 0.1, 0.05, seed=1), ValueError, "`seed` is only for"),
    (lambda m: ss.optim.SAM(m.parameters(), 0.1, 0.05, v0=torch.ones(38, dtype=F64)), ValueError, "`v0` is only for"),
    (lambda m: ss.optim.EigenSAM(m.parameters(), 0.1, 0.05, v0=torch.ones(5, dtype=F64)), ValueError, "`v0` must be"),
    (lambda m: ss.optim.EigenSAM(m.parameters(), 0.1, 0.05, seed=1.5), ValueError, "`seed` must be an int"),
])
def test_bad_construction(build, err, match):
    with pytest.raises(err, match=match):
        build(make_model())


@pytest.mark.parametrize("method, step, err, match", [
    (ss.SAM(0.1, 0.2, micro_batch=2), lambda o, m: o.step(closure_of(m)), ValueError, "needs the mini-batch size"),
    (ss.SAM(0.1, 0.2, micro_batch=3), lambda o, m: o.step(closure_of(m), batch_size=B), ValueError,
     "must divide the batch size B=4"),
    (ss.SAM(0.1, 0.2), lambda o, m: o.step(closure_of(m), batch_size=0), ValueError, "`batch_size` must be a positive"),
    (ss.SAM(0.1, 0.2), lambda o, m: o.step("loss"), TypeError, "`closure` must be callable"),
    (ss.SAM(0.1, 0.2), lambda o, m: o.step(closure_of(m), full_closure=1.0), TypeError, "`full_closure` must be"),
    (ss.DNSAM(0.1, 0.2), lambda o, m: o.step(closure_of(m)), ValueError, "full_closure=None"),
    (ss.EigenSAM(0.1, 0.2), lambda o, m: o.step(closure_of(m)), ValueError, "full_closure=None"),
    (ss.SAM(0.1, 0.2), lambda o, m: o.step(lambda: 1.0), ValueError, "scalar tensor"),
    (ss.SAM(0.1, 0.2), lambda o, m: o.step(lambda: F.cross_entropy(m(X), Y, reduction="none")), ValueError,
     r"shape \(16,\)"),
    (ss.SAM(0.1, 0.2), lambda o, m: o.step(_backward_closure(m)), ValueError, "without calling backward"),
])
def test_bad_step_leaves_the_parameters(method, step, err, match):
    model = make_model()
    opt = ss.optim.Optimizer(model.parameters(), method)
    before = flat(model).clone()
    with pytest.raises(err, match=match):
        step(opt, model)
    assert torch.equal(flat(model), before) and not opt.state


def _backward_closure(model):
    def closure():
        loss = F.cross_entropy(model(X), Y)
        loss.backward()
        return loss
    return closure


def test_bad_state_dict_and_scheduled_rate():
    model = make_model()
    opt, _ = train(model, ss.SAM(0.1, 0.2), steps=[0])
    other = ss.optim.Optimizer(model.parameters(), ss.UnifiedSAM(0.1, 0.2, 0.5))
    with pytest.raises(ValueError, match="not of a UnifiedSAM optimizer"):
        other.load_state_dict(opt.state_dict())
    opt.param_groups[0]["lr"] = -1.0  # what a broken scheduler would set: the method's own check
    with pytest.raises(ValueError, match="lr"):
        opt.step(closure_of(model))
