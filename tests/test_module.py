"""Problems built from a user's nn.Module (issue 9): derivatives against autograd on the module itself,
and the torch 2.13 forward-mode regression that made batched HVPs wrong on layer_norm."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jvp, vmap

import sde_sam as ss
from sde_sam import autodiff

F64 = torch.float64


# -- the regression: jvp(vmap(grad f)) is wrong on layer_norm in torch 2.13, vmap(jvp(grad f)) is exact ----------
def _ln_loss(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """A 42-parameter loss whose layer_norm input (W a) and weight (w * sum(W a)) both depend on x."""
    W, w = x[:36].reshape(6, 6), x[36:42]
    h = W @ a
    return F.layer_norm(h, (6,), weight=w * h.sum()).pow(2).sum()


def _ln_grad(x1: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return grad(_ln_loss)(x1, a)


def _autograd_hvp(x1, v1, a):
    y = x1.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_ln_loss(y, a), y, create_graph=True)
    return torch.autograd.grad(g @ v1, y)[0]


def _composite_layer_norm(h, shape, weight):
    c = h - h.mean(-1, keepdim=True)
    return c * torch.rsqrt((c * c).mean(-1, keepdim=True) + 1e-5) * weight


def _composite_ln_grad(x1: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    def loss(y):
        W, w = y[:36].reshape(6, 6), y[36:42]
        h = W @ a
        return _composite_layer_norm(h, (6,), w * h.sum()).pow(2).sum()
    return grad(loss)(x1)


def _points(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, u, w = (torch.randn(n, 42, generator=gen, dtype=F64) for _ in range(3))
    return x, u, w, torch.randn(n, 6, generator=gen, dtype=F64)  # a: a per-path extra argument, like draws


def test_layer_norm_hvp_equals_autograd_per_path():
    x, u, w, a = _points()
    n = x.shape[0]
    ref = torch.stack([_autograd_hvp(x[p], w[p], a[p]) for p in range(n)])
    assert ref.abs().max() > 1.0  # not a vacuous comparison
    torch.testing.assert_close(autodiff.hvp(_ln_grad, x, w, a), ref, rtol=0, atol=1e-10)
    g, h = autodiff.taylor_terms(_ln_grad, x, w, 1, a)
    torch.testing.assert_close(h, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(g, vmap(_ln_grad)(x, a), rtol=0, atol=1e-11)


def test_third_derivative_equals_finite_differences_of_exact_hvps():
    """With layer_norm written out (as from_module does), nabla^3 f[u, w] is right to FD accuracy."""
    x, u, w, a = _points()
    step = 1e-5
    fd = (autodiff.hvp(_ln_grad, x + step * u, w, a) - autodiff.hvp(_ln_grad, x - step * u, w, a)) / (2 * step)
    assert fd.abs().max() > 100.0
    torch.testing.assert_close(autodiff.third_derivative(_composite_ln_grad, x, u, w, a), fd, rtol=0, atol=1e-5)
    torch.testing.assert_close(autodiff.hvp(_composite_ln_grad, x, w, a), autodiff.hvp(_ln_grad, x, w, a),
                               rtol=0, atol=1e-10)
    fd_uu = (autodiff.hvp(_ln_grad, x + step * u, u, a) - autodiff.hvp(_ln_grad, x - step * u, u, a)) / (2 * step)
    terms = autodiff.taylor_terms(_composite_ln_grad, x, u, 2, a)
    torch.testing.assert_close(2 * terms[2], fd_uu, rtol=0, atol=1e-5)
    torch.testing.assert_close(autodiff.taylor_grad(_composite_ln_grad, x, u, 2, a), sum(terms), rtol=0, atol=0)


def test_native_layer_norm_third_derivative_is_wrong_in_this_torch():
    """Documents why from_module writes layer_norm out: torch 2.13's native layer_norm has wrong third
    derivatives under every nesting (jvp-jvp, jvp-vjp, reverse-over-forward). If this fails, torch fixed it."""
    x, u, w, a = _points()
    step = 1e-5
    fd = (autodiff.hvp(_ln_grad, x + step * u, w, a) - autodiff.hvp(_ln_grad, x - step * u, w, a)) / (2 * step)
    err = (autodiff.third_derivative(_ln_grad, x, u, w, a) - fd).abs().max()
    if err < 1e-4:
        pytest.skip("torch's native layer_norm third derivative is right in this version")
    assert err > 1.0


def test_the_other_nesting_is_still_wrong_in_this_torch():
    """Documents why autodiff.py puts vmap outside jvp: if this starts failing, torch fixed the bug."""
    x, _, v, a = _points()
    a = a[0]
    wrong = jvp(vmap(lambda y: _ln_grad(y, a)), (x,), (v,))[1]
    ref = torch.stack([_autograd_hvp(x[p], v[p], a) for p in range(4)])
    if (wrong - ref).abs().max() < 1e-8:
        pytest.skip("torch's jvp(vmap(...)) is exact on layer_norm in this version")
    right = vmap(lambda y, u: jvp(lambda z: _ln_grad(z, a), (y,), (u,))[1])(x, v)
    torch.testing.assert_close(right, ref, rtol=0, atol=1e-10)


# -- from_module: derivatives against autograd on the module itself ------------------------------------------------
def _digits(n: int):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.as_tensor(X[:n], dtype=F64) / 16.0
    return X, torch.as_tensor(y[:n], dtype=torch.long)


class _ConvNet(torch.nn.Module):
    """A conv net on digits reshaped to 8x8 images."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3)
        self.fc = torch.nn.Linear(3 * 6 * 6, 10)

    def forward(self, a):
        h = torch.tanh(self.conv(a.reshape(-1, 1, 8, 8)))
        return self.fc(h.flatten(1))


class _DirectNorms(torch.nn.Module):
    """Calls torch.layer_norm and torch.instance_norm directly (not through torch.nn.functional), with learned
    affine parameters: the exact-formula substitution must reach this level too (issue 19)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 6)
        self.ln_w, self.ln_b = torch.nn.Parameter(1 + 0.3 * torch.randn(6)), torch.nn.Parameter(0.1 * torch.randn(6))
        self.in_w, self.in_b = torch.nn.Parameter(1 + 0.3 * torch.randn(2)), torch.nn.Parameter(0.1 * torch.randn(2))
        self.fc2 = torch.nn.Linear(6, 10)

    def forward(self, a):
        h = torch.layer_norm(self.fc1(a), (6,), self.ln_w, self.ln_b, 1e-5)
        h = torch.instance_norm(h.reshape(-1, 2, 3), self.in_w, self.in_b, None, None, True, 0.1, 1e-5, False)
        return self.fc2(torch.tanh(h.reshape(-1, 6)))


class _ViaFunctional(_DirectNorms):
    """The same model through torch.nn.functional (the level substituted before)."""

    def forward(self, a):
        h = F.layer_norm(self.fc1(a), (6,), self.ln_w, self.ln_b, 1e-5)
        h = F.instance_norm(h.reshape(-1, 2, 3), weight=self.in_w, bias=self.in_b, eps=1e-5)
        return self.fc2(torch.tanh(h.reshape(-1, 6)))


def _module(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    models = {
        "direct_norms": _DirectNorms,
        "via_functional": _ViaFunctional,
        "linear": lambda: nn.Linear(64, 10),
        "tanh_mlp": lambda: nn.Sequential(nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10)),
        "layernorm_mlp": lambda: nn.Sequential(nn.Linear(64, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 10)),
        "conv": _ConvNet,
        "eval_batchnorm_mlp": lambda: nn.Sequential(nn.Linear(64, 6), nn.BatchNorm1d(6), nn.Tanh(),
                                                    nn.Linear(6, 10)).eval(),
    }
    model = models[name]().double()
    if name == "eval_batchnorm_mlp":  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


MODULES = ["linear", "tanh_mlp", "layernorm_mlp", "conv", "eval_batchnorm_mlp", "direct_norms"]


def _at(model: torch.nn.Module, x1: torch.Tensor) -> torch.nn.Module:
    """The model with flat parameters x1 loaded by torch's own utility (independent of from_module)."""
    import copy
    m = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(x1.detach().clone(), m.parameters())
    return m


def _ref_grad_hvp(model, x1, v1, a, t):
    m = _at(model, x1)
    params = list(m.parameters())
    loss = F.cross_entropy(m(a), t)
    g = torch.cat([q.reshape(-1) for q in torch.autograd.grad(loss, params, create_graph=True)])
    hv = torch.cat([q.reshape(-1) for q in torch.autograd.grad(g @ v1, params)])
    return loss.detach(), g.detach(), hv


@pytest.mark.parametrize("name", MODULES)
def test_from_module_matches_autograd_on_the_module(name):
    model = _module(name)
    a, t = _digits(12)
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (a, t), batch_size=4)
    d = sum(p.numel() for p in model.parameters())
    assert prob.d == d and prob.dtype == F64
    gen = torch.Generator().manual_seed(1)
    x = prob.x_init + 0.3 * torch.randn(2, d, generator=gen, dtype=F64)
    v = torch.randn(2, d, generator=gen, dtype=F64)
    draws = prob.sample_draws((2,), gen)
    tol = dict(rtol=0, atol=1e-12)
    for p in range(2):
        loss, g, hv = _ref_grad_hvp(model, x[p], v[p], a, t)
        torch.testing.assert_close(prob.loss(x)[p], loss, **tol)
        torch.testing.assert_close(prob.grad(x)[p], g, **tol)
        torch.testing.assert_close(prob.hvp(x, v)[p], hv, **tol)
        idx = draws[p]
        _, gb, hvb = _ref_grad_hvp(model, x[p], v[p], a[idx], t[idx])
        torch.testing.assert_close(prob.stochastic_grad(x, draws)[p], gb, **tol)
        torch.testing.assert_close(prob.stochastic_hvp(x, v, draws)[p], hvb, **tol)
        per_sample = torch.stack([_ref_grad_hvp(model, x[p], v[p], a[i:i + 1], t[i:i + 1])[1] for i in range(12)])
        torch.testing.assert_close(prob.per_sample_grads(x)[p], per_sample, **tol)
    # Single-path maps, as the drift and autodiff use them.
    torch.testing.assert_close(prob.grad_single(x[0]), prob.grad(x)[0], **tol)
    torch.testing.assert_close(prob.stochastic_grad_single(x[1], draws[1]), prob.stochastic_grad(x, draws)[1], **tol)
    # to_module(x_init) is the module: the same outputs, bit for bit.
    assert torch.equal(prob.to_module(prob.x_init)(a), model(a))
    named = prob.unflatten(x[0])
    assert list(named) == [n for n, _ in model.named_parameters()]
    assert all(named[n].shape == q.shape for n, q in model.named_parameters())
    assert torch.equal(torch.nn.utils.parameters_to_vector(prob.to_module(x[0]).parameters()), x[0])


@pytest.mark.parametrize("name", ["layernorm_mlp", "eval_batchnorm_mlp", "direct_norms"])
def test_from_module_third_derivatives_match_finite_differences(name):
    """Order-2 drifts need nabla^3 f[u, w]; normalisation layers are written out so it is right."""
    model = _module(name)
    a, t = _digits(12)
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (a, t), batch_size=4)
    gen = torch.Generator().manual_seed(2)
    x = prob.x_init + 0.3 * torch.randn(2, prob.d, generator=gen, dtype=F64)
    u, w = (torch.randn(2, prob.d, generator=gen, dtype=F64) for _ in range(2))
    h = 1e-5
    fd = (prob.hvp(x + h * u, w) - prob.hvp(x - h * u, w)) / (2 * h)
    third = autodiff.third_derivative(prob.grad_single, x, u, w)
    torch.testing.assert_close(third, fd, rtol=0, atol=1e-6 * max(1.0, float(fd.abs().max())))


def test_objective_from_module_matches_autograd():
    model = _module("layernorm_mlp")
    a, t = _digits(12)
    prob = ss.Objective.from_module(model, F.cross_entropy, (a, t), noise_cov=0.01)
    gen = torch.Generator().manual_seed(3)
    x = prob.x_init + 0.3 * torch.randn(2, prob.d, generator=gen, dtype=F64)
    v = torch.randn(2, prob.d, generator=gen, dtype=F64)
    for p in range(2):
        loss, g, hv = _ref_grad_hvp(model, x[p], v[p], a, t)
        torch.testing.assert_close(prob.loss(x)[p], loss, rtol=0, atol=1e-12)
        torch.testing.assert_close(prob.grad(x)[p], g, rtol=0, atol=1e-12)
        torch.testing.assert_close(prob.hvp(x, v)[p], hv, rtol=0, atol=1e-12)
    draws = prob.sample_draws((2,), gen)
    torch.testing.assert_close(prob.stochastic_grad(x, draws), prob.grad(x) + draws, rtol=0, atol=0)
    assert torch.equal(prob.to_module(prob.x_init)(a), model(a))


def test_integer_labels_and_mse_targets():
    a, t = _digits(10)
    assert t.dtype == torch.long
    model = _module("tanh_mlp")
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (a, t), batch_size=2)
    assert torch.isfinite(prob.loss(prob.x_init[None])).all()
    # Regression targets with a float loss: F.mse_loss, outputs (1, 10) against targets (1, 10).
    onehot = F.one_hot(t, 10).to(F64)
    reg = ss.FiniteSum.from_module(model, F.mse_loss, (a, onehot), batch_size=2)
    torch.testing.assert_close(reg.loss(reg.x_init[None])[0], F.mse_loss(model(a), onehot).detach(), rtol=0, atol=1e-14)


def test_frozen_parameters_and_buffers_are_constants():
    model = _module("eval_batchnorm_mlp")
    model[0].weight.requires_grad_(False)
    a, t = _digits(8)
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (a, t), batch_size=2)
    assert prob.d == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert "0.weight" not in prob.unflatten(prob.x_init)
    assert torch.equal(prob.to_module(prob.x_init)(a), model(a))
    model[1].running_mean.add_(1.0)  # the problem holds a copy: later changes to the model do not leak in
    assert not torch.equal(prob.to_module(prob.x_init)(a), model(a))


# -- refusals -------------------------------------------------------------------------------------------------------
def test_train_mode_batchnorm_and_dropout_are_refused():
    nn = torch.nn
    a, t = _digits(8)
    bn = nn.Sequential(nn.Linear(64, 6), nn.BatchNorm1d(6), nn.Linear(6, 10)).double()
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm1d\) is in train mode.*model\.eval\(\)"):
        ss.FiniteSum.from_module(bn, F.cross_entropy, (a, t), batch_size=2)
    drop = nn.Sequential(nn.Linear(64, 6), nn.Dropout(0.1), nn.Linear(6, 10)).double()
    with pytest.raises(ValueError, match=r"layer '1' \(Dropout\) is in train mode.*remove the layer"):
        ss.Objective.from_module(drop, F.cross_entropy, (a, t))
    ss.FiniteSum.from_module(drop.eval(), F.cross_entropy, (a, t), batch_size=2)  # eval mode is fine


class _RandomForward(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, a):
        return F.dropout(self.fc(a), 0.5, training=True)


def test_sum_reduction_random_models_and_bad_arguments_are_refused():
    a, t = _digits(8)
    model = _module("linear")
    with pytest.raises(ValueError, match=r"must average over the batch \(reduction='mean'\)"):
        ss.FiniteSum.from_module(model, lambda o, y: F.cross_entropy(o, y, reduction="sum"), (a, t), batch_size=2)
    with pytest.raises(ValueError, match=r"must return a scalar"):
        ss.FiniteSum.from_module(model, lambda o, y: F.cross_entropy(o, y, reduction="none"), (a, t), batch_size=2)
    with pytest.raises(ValueError, match=r"output is random"):
        ss.FiniteSum.from_module(_RandomForward().double(), F.cross_entropy, (a, t), batch_size=2)
    with pytest.raises(ValueError, match=r"`data\[0\]` has dtype torch.float32 but the model's parameters are torch.float64"):
        ss.FiniteSum.from_module(model, F.cross_entropy, (a.float(), t), batch_size=2)
    with pytest.raises(TypeError, match=r"`data` must be a tuple \(inputs, targets\)"):
        ss.FiniteSum.from_module(model, F.cross_entropy, a, batch_size=2)
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module"):
        ss.FiniteSum.from_module(lambda z: z, F.cross_entropy, (a, t), batch_size=2)
    with pytest.raises(ValueError, match=r"no trainable parameters"):
        ss.FiniteSum.from_module(model.requires_grad_(False), F.cross_entropy, (a, t), batch_size=2)
    prob = ss.FiniteSum.from_module(_module("linear"), F.cross_entropy, (a, t), batch_size=2)
    with pytest.raises(ValueError, match=r"`x` must have shape \(d,\) with d=650"):
        prob.to_module(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"`x` must have last dim d=650"):
        prob.unflatten(torch.zeros(3, dtype=F64))


# -- SAM on the module by hand (torch.optim.SGD as the base step) equals the flat problem's steps --------------
def _sam_by_hand(model, a, t, batches, *, lr, rho, momentum):
    import copy
    m = copy.deepcopy(model)
    params = list(m.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    for idx in batches:
        grads = torch.autograd.grad(F.cross_entropy(m(a[idx]), t[idx]), params)
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        e = [rho * g / norm for g in grads]
        with torch.no_grad():
            for q, ei in zip(params, e):
                q.add_(ei)
        grads2 = torch.autograd.grad(F.cross_entropy(m(a[idx]), t[idx]), params)
        with torch.no_grad():
            for q, ei in zip(params, e):
                q.sub_(ei)
        for q, g2 in zip(params, grads2):
            q.grad = g2
        opt.step()
    return torch.nn.utils.parameters_to_vector(m.parameters()).detach()


def _flat_sam_by_hand(prob, x, batches, *, lr, rho, momentum):
    buf = torch.zeros_like(x)
    for k, idx in enumerate(batches):
        draws = idx[None]
        g = prob.stochastic_grad(x, draws)
        G = prob.stochastic_grad(x + rho * g / g.norm(dim=-1, keepdim=True), draws)
        buf = G if k == 0 else momentum * buf + G
        x = x - lr * buf
    return x


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sam_with_torch_sgd_on_the_module_equals_the_flat_problem(momentum):
    model = _module("layernorm_mlp")
    a, t = _digits(40)
    prob = ss.FiniteSum.from_module(model, F.cross_entropy, (a, t), batch_size=8)
    batches = prob.sample_draws((10,), torch.Generator().manual_seed(5))  # fixed mini-batches, (10, 8)
    lr, rho = 0.1, 0.05
    ref = _sam_by_hand(model, a, t, batches, lr=lr, rho=rho, momentum=momentum)
    flat = _flat_sam_by_hand(prob, prob.x_init[None], batches, lr=lr, rho=rho, momentum=momentum)[0]
    torch.testing.assert_close(flat, ref, rtol=0, atol=1e-10)
    if not hasattr(ss, "step"):
        pytest.skip("ss.step not available yet")
    method = ss.SAM(lr, rho, momentum=momentum)
    x, state = prob.x_init[None].clone(), None
    for idx in batches:
        x, state = ss.step(prob, method, x, idx[None], state=state)
    torch.testing.assert_close(x[0], ref, rtol=0, atol=1e-10)
    run = ss.run(prob, method, prob.x_init, steps=10, n_paths=1, seed=0, draws=batches[:, None])
    torch.testing.assert_close(run.x_final[0], ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("loss_fn", [F.mse_loss, F.huber_loss, F.smooth_l1_loss], ids=lambda f: f.__name__)
def test_squared_and_huber_losses_have_exact_hvps(loss_fn):
    """torch 2.13's mse_loss / huber_loss fail under forward-over-reverse; from_module writes them out."""
    model = _module("tanh_mlp")
    a, t = _digits(12)
    targets = 2.0 * F.one_hot(t, 10).to(F64)
    prob = ss.FiniteSum.from_module(model, loss_fn, (a, targets), batch_size=3)
    gen = torch.Generator().manual_seed(6)
    x = prob.x_init + 0.3 * torch.randn(2, prob.d, generator=gen, dtype=F64)
    v = torch.randn(2, prob.d, generator=gen, dtype=F64)
    for p in range(2):
        m = _at(model, x[p])
        params = list(m.parameters())
        loss = loss_fn(m(a), targets)
        g = torch.cat([q.reshape(-1) for q in torch.autograd.grad(loss, params, create_graph=True)])
        hv = torch.cat([q.reshape(-1) for q in torch.autograd.grad(g @ v[p], params)])
        torch.testing.assert_close(prob.loss(x)[p], loss.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(prob.grad(x)[p], g.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(prob.hvp(x, v)[p], hv, rtol=0, atol=1e-12)


def test_torch_level_norms_give_the_order_2_drift_of_the_functional_ones():
    """A model calling torch.layer_norm / torch.instance_norm directly has the order-2 drift of the same model
    written with torch.nn.functional (the level substituted before); unsubstituted it was ~3% off (issue 19)."""
    a, t = _digits(12)
    direct, functional = _module("direct_norms"), _module("via_functional")
    functional.load_state_dict(direct.state_dict())
    probs = [ss.FiniteSum.from_module(m, F.cross_entropy, (a, t), batch_size=1) for m in (direct, functional)]
    gen = torch.Generator().manual_seed(3)
    x = probs[0].x_init + 0.3 * torch.randn(3, probs[0].d, generator=gen, dtype=F64)
    method = ss.SAM(0.1, 0.2)
    drifts = [ss.sde_model(p, method, order=2, expectation="enumerate").drift(x) for p in probs]
    torch.testing.assert_close(drifts[0], drifts[1], rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # and the values are torch's own (the fused kernels, outside the substitution)
        torch.testing.assert_close(probs[0].loss(probs[0].x_init[None])[0], F.cross_entropy(direct(a), t),
                                   rtol=0, atol=1e-12)


def _weighted_mse(outputs, targets):
    """torch's weighted MSE: mean reduction divides by the sum of the weights."""
    return F.mse_loss(outputs, targets, weight=1.0 + targets.abs())


def test_weighted_mse_loss_equals_torch():
    """The substituted F.mse_loss(weight=) divides by the sum of the weights as torch does (it divided by the
    element count: the objective was rescaled by mean(weight), issue 19); gradients and HVPs are torch's."""
    model = _module("tanh_mlp")
    a, t = _digits(12)
    gen = torch.Generator().manual_seed(7)
    targets = torch.randn(12, 10, generator=gen, dtype=F64)  # per-sample weight sums differ
    prob = ss.FiniteSum.from_module(model, _weighted_mse, (a, targets), batch_size=3)
    x = prob.x_init + 0.3 * torch.randn(2, prob.d, generator=gen, dtype=F64)
    v = torch.randn(2, prob.d, generator=gen, dtype=F64)
    for p in range(2):
        m = _at(model, x[p])
        params = list(m.parameters())
        # f = mean of per-sample losses, each torch's F.mse_loss on a batch of one (no substitution here).
        loss = torch.stack([_weighted_mse(m(a[i:i + 1]), targets[i:i + 1]) for i in range(12)]).mean()
        g = torch.cat([q.reshape(-1) for q in torch.autograd.grad(loss, params, create_graph=True)])
        hv = torch.cat([q.reshape(-1) for q in torch.autograd.grad(g @ v[p], params)])
        torch.testing.assert_close(prob.loss(x)[p], loss.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(prob.grad(x)[p], g.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(prob.hvp(x, v)[p], hv, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs, reduction", [({}, "mean"), ({}, "sum"), ({}, "none"), ({"weight": True}, "mean"),
                                                ({"weight": True}, "sum"), ({"weight": True}, "none")])
@pytest.mark.parametrize("loss_fn", [F.mse_loss, F.huber_loss], ids=lambda f: f.__name__)
def test_substituted_losses_equal_torch_values(loss_fn, kwargs, reduction):
    from sde_sam.problems.module import _ExactFormulas

    gen = torch.Generator().manual_seed(8)
    y, t, w = (torch.randn(4, 3, generator=gen, dtype=F64) for _ in range(3))
    kw = {"reduction": reduction, **({"weight": w.abs()} if kwargs else {})}
    with _ExactFormulas():
        mine = loss_fn(y, t, **kw)
    torch.testing.assert_close(mine, loss_fn(y, t, **kw), rtol=1e-15, atol=0)


@pytest.mark.parametrize("call, error, match", [
    (lambda y, t: F.mse_loss(y, t, weight=torch.ones(3, dtype=F64)), ValueError, "Weights and input must have the same size"),
    (lambda y, t: F.huber_loss(y, t, weight=torch.ones(4, 1, dtype=F64)), ValueError, "Weights and input must have the same size"),
    (lambda y, t: F.mse_loss(y, t, reduction="avg"), ValueError, "avg is not a valid value for reduction"),
])
def test_substituted_losses_refuse_what_torch_refuses(call, error, match):
    from sde_sam.problems.module import _ExactFormulas

    y, t = torch.zeros(4, 3, dtype=F64), torch.ones(4, 3, dtype=F64)
    with pytest.raises(error, match=match):
        call(y, t)  # torch itself
    with pytest.raises(error, match=match), _ExactFormulas():
        call(y, t)


# -- the docs example (docs/own_model.md) runs as written ----------------------------------------------------------
def test_docs_own_model_example_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "own_model.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) == 6  # the import and five lines
    scope: dict = {}
    exec(compile(code, "docs/own_model.md", "exec"), scope)
    prob, traj, trained = scope["prob"], scope["traj"], scope["trained"]
    assert traj.n_diverged == 0 and float(traj.mean("loss")[-1]) < float(traj.mean("loss")[0])
    inputs = scope["inputs"]
    assert torch.equal(trained(inputs), prob.to_module(traj.x_final[0])(inputs))
    # The SDE line of the page, shortened.
    sde = ss.sde_model(prob, ss.SAM(0.1, 0.05), order=1)
    sol = ss.simulate(sde, prob.x_init, t1=0.05, dt=0.01, n_paths=4, seed=0)
    assert sol.x_final.shape == (4, prob.d) and sol.n_diverged == 0
