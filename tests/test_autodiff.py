"""Reverse-over-reverse derivatives (sde_sam.autodiff) against the former forward-over-reverse formulas and
against central finite differences of the gradient, in float64, on nn.Modules with LayerNorm and a conv net;
and the drift's one-vjp path (g, eps, H eps together; the order-2 term on the drift's rows only) against the
former evaluation order."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vmap

import sde_sam as ss
from sde_sam import autodiff
from sde_sam.drift import model_gradients
from sde_sam.methods import perturb, split

F64 = torch.float64


# -- the former formulas (forward over reverse), written out here as the reference -----------------------------
def _old_hvp(fn, x, v, *args):
    return vmap(lambda x1, v1, *a1: jvp(lambda y: fn(y, *a1), (x1,), (v1,))[1])(x, v, *args)


def _old_third(fn, x, u, w, *args):
    def one(x1, u1, w1, *a1):
        hw = lambda y: jvp(lambda z: fn(z, *a1), (y,), (w1,))[1]  # noqa: E731
        return jvp(hw, (x1,), (u1,))[1]
    return vmap(one)(x, u, w, *args)


def _old_taylor2(fn, x, e, *args):
    def one(x1, e1, *a1):
        return jvp(lambda y: jvp(lambda z: fn(z, *a1), (y,), (e1,)), (x1,), (e1,))
    (g, h), (_, t) = vmap(one)(x, e, *args)
    return [g, h, 0.5 * t]


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -- models: LayerNorm MLP and a conv net with LayerNorm (as bench_module.py's), through from_module ---------------
class _LNMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(64, 12), nn.LayerNorm(12), nn.Linear(12, 10)

    def forward(self, a):
        return self.fc2(torch.tanh(self.ln(self.fc1(a))))


def _conv():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3), nn.Tanh(), nn.Flatten(),
                         nn.LayerNorm(64), nn.Linear(64, 10))


def _problem(name: str):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    a, t = torch.as_tensor(X[:40], dtype=F64) / 16.0, torch.as_tensor(y[:40], dtype=torch.long)
    torch.manual_seed(0)
    model = (_LNMLP() if name == "ln_mlp" else _conv()).double()
    if name == "conv":
        a = a.reshape(-1, 1, 8, 8)
    return ss.FiniteSum.from_module(model, F.cross_entropy, (a, t), batch_size=8)


def _point(prob, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = prob.x_init + 0.3 * torch.randn(n, prob.d, generator=gen, dtype=F64)
    u, w = (torch.randn(n, prob.d, generator=gen, dtype=F64) for _ in range(2))
    return x, u, w, prob.sample_draws((n,), gen)


def _fd_hvp(prob, x, v, draws, h=2e-4):
    """Richardson-extrapolated central differences of the gradient: error O(h^4) + O(rounding / h) (measured on
    these models: 1e-12 relative at h = 1.5e-4, 1e-9 at h = 1e-3)."""
    def central(s):
        return (prob.stochastic_grad(x + s * v, draws) - prob.stochastic_grad(x - s * v, draws)) / (2 * s)
    return (4 * central(h / 2) - central(h)) / 3


def _fd_third(prob, x, u, w, draws, h=3e-4):
    """Richardson-extrapolated mixed central second differences of the gradient along u and w: error O(h^4) +
    O(rounding / h^2), smallest near h = 3e-4 on these models (1.3e-10 to 1.7e-9 relative by direction; 1e-8 at
    h = 1e-3), so the exact formulas are held to it at 1e-8 and to each other at 1e-10."""
    def mixed(s):
        g = lambda y: prob.stochastic_grad(y, draws)  # noqa: E731
        return (g(x + s * u + s * w) - g(x + s * u - s * w) - g(x - s * u + s * w) + g(x - s * u - s * w)) / (4 * s * s)
    return (4 * mixed(h / 2) - mixed(h)) / 3


MODELS = ["ln_mlp", "conv"]


@pytest.mark.parametrize("name", MODELS)
def test_hvp_equals_forward_over_reverse_and_finite_differences(name):
    prob = _problem(name)
    x, _, w, draws = _point(prob)
    fn = prob.stochastic_grad_single
    new = autodiff.hvp(fn, x, w, draws)
    assert new.abs().max() > 0.1  # not a vacuous comparison
    assert _rel(new, _old_hvp(fn, x, w, draws)) < 1e-10
    assert _rel(new, _fd_hvp(prob, x, w, draws)) < 1e-10
    g, h = autodiff.taylor_terms(fn, x, w, 1, draws)
    assert _rel(h, new) < 1e-12 and _rel(g, prob.stochastic_grad(x, draws)) < 1e-12
    torch.testing.assert_close(prob.stochastic_hvp(x, w, draws), new, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_third_derivative_equals_forward_over_reverse_and_finite_differences(name):
    prob = _problem(name)
    x, u, w, draws = _point(prob, seed=1)
    fn = prob.stochastic_grad_single
    new = autodiff.third_derivative(fn, x, u, w, draws)
    assert new.abs().max() > 0.1
    assert _rel(new, _old_third(fn, x, u, w, draws)) < 1e-10
    assert _rel(new, _fd_third(prob, x, u, w, draws)) < 1e-8  # the FD's own floor: 1e-10..2e-9 (_fd_third)
    # symmetric in (u, w), as the vjp formula assumes
    assert _rel(autodiff.third_derivative(fn, x, w, u, draws), new) < 1e-12


@pytest.mark.parametrize("name", MODELS)
def test_taylor_terms_of_order_two_equal_the_nested_jvp(name):
    prob = _problem(name)
    x, u, _, draws = _point(prob, seed=2)
    fn = prob.stochastic_grad_single
    new, old = autodiff.taylor_terms(fn, x, u, 2, draws), _old_taylor2(fn, x, u, draws)
    for a, b in zip(new, old):
        assert _rel(a, b) < 1e-10
    assert _rel(2 * new[2], _fd_third(prob, x, u, u, draws)) < 1e-8
    torch.testing.assert_close(autodiff.taylor_grad(fn, x, u, 2, draws), sum(new), rtol=0, atol=0)


def test_grad_and_hvp_along_evaluates_the_direction_at_the_gradient():
    prob = _problem("ln_mlp")
    x, _, w, draws = _point(prob, seed=3)
    fn = prob.stochastic_grad_single
    direction = lambda g1, w1: 0.05 * g1 / torch.linalg.vector_norm(g1) + w1  # noqa: E731
    g, e, h = autodiff.grad_and_hvp_along(fn, x, direction, draws, direction_args=(w,))
    g_ref = prob.stochastic_grad(x, draws)
    e_ref = 0.05 * g_ref / torch.linalg.vector_norm(g_ref, dim=-1, keepdim=True) + w
    assert _rel(g, g_ref) < 1e-12 and _rel(e, e_ref) < 1e-12
    assert _rel(h, _old_hvp(fn, x, e_ref, draws)) < 1e-10


def test_grad_hvp_and_third_along_holds_the_direction_fixed():
    """eps is formed from the gradient inside the triple-reverse pass and detached: the third derivative is
    nabla^3 f[eps, eps] with eps held fixed (without the detach it would also differentiate eps(y))."""
    prob = _problem("conv")
    x, _, w, draws = _point(prob, seed=10)
    fn = prob.stochastic_grad_single
    direction = lambda g1, w1: 0.05 * g1 / torch.linalg.vector_norm(g1) + w1  # noqa: E731
    g, e, h, t = autodiff.grad_hvp_and_third_along(fn, x, direction, draws, direction_args=(w,))
    g_ref = prob.stochastic_grad(x, draws)
    e_ref = 0.05 * g_ref / torch.linalg.vector_norm(g_ref, dim=-1, keepdim=True) + w
    old = _old_taylor2(fn, x, e_ref, draws)
    assert _rel(g, g_ref) < 1e-12 and _rel(e, e_ref) < 1e-12
    assert _rel(h, old[1]) < 1e-10 and _rel(0.5 * t, old[2]) < 1e-10
    assert _rel(t, _fd_third(prob, x, e_ref, e_ref, draws)) < 1e-8


# -- the drift's evaluation order: one vjp per row, the order-2 term on the drift's rows ---------------------------
def _old_model_gradients(prob, method, x, draws, order, eps):
    """The former evaluation order: g, then eps from the oracle wiring, then the forward-over-reverse terms."""
    r = split(prob, method, x, draws)
    g = prob.stochastic_grad(r.x, r.draws)
    e = perturb(prob, method, r.x, r.draws, g, eps=eps, v=r.v, full_grad=r.full_grad).eps
    if order == 1:
        fn = prob.stochastic_grad_single
        terms = vmap(lambda x1, e1, a1: jvp(lambda y: fn(y, a1), (x1,), (e1,)))(r.x, e, r.draws)
        terms = list(terms)
    else:
        terms = _old_taylor2(prob.stochastic_grad_single, r.x, e, r.draws)
    G1 = terms[0] + terms[1]
    G = G1 + terms[2] if order == 2 else G1
    G = r.merge(G)
    G = G + method.weight_decay * x if method.weight_decay else G
    return r.merge(terms[0]), G, r.merge(G1)


METHODS = {
    "sam": ss.SAM(0.05, 0.3),
    "sam_micro_decay": ss.SAM(0.05, 0.3, micro_batch=4, weight_decay=0.01),
    "usam": ss.USAM(0.05, 0.3),
    "dnsam": ss.DNSAM(0.05, 0.3),
    "asam": ss.ASAM(0.05, 0.3, offset=0.01),
    "unified": ss.UnifiedSAM(0.05, 0.3, lam=0.5),
    "two_ascent_steps": ss.SAM(0.05, 0.3, ascent_steps=2),  # grad_at: the perturbation outside the vmap
    "husam": ss.HessianUSAM(0.05, 0.3),  # hvp oracle
}


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("key", sorted(METHODS))
def test_model_gradients_equal_the_former_evaluation_order(key, order):
    prob = _problem("ln_mlp")
    method = METHODS[key]
    x, _, _, _ = _point(prob, n=4, seed=4)
    draws = prob.sample_draws((4,), torch.Generator().manual_seed(5))
    old = _old_model_gradients(prob, method, x, draws, order, 1e-12)
    new = model_gradients(prob, method, x, draws, order=order, eps=1e-12)
    for a, b in zip(new, old):
        assert a.shape == b.shape and _rel(a, b) < 1e-10
    # the drift on every s-th row only (s = 2: the two-draw scheme's): those rows, the rest as before, to rounding
    for s in (2, 4):
        g, G, Gn = model_gradients(prob, method, x, draws, order=order, eps=1e-12, drift_every=s)
        assert G.shape == (4 // s, prob.d)
        assert _rel(G, new[1][::s]) < 1e-12 and _rel(Gn, new[2]) < 1e-12 and _rel(g, new[0]) < 1e-12


def test_eigen_sam_model_gradients_equal_the_former_evaluation_order():
    prob = _problem("conv")
    method = ss.EigenSAM(0.05, 0.3, alpha=0.5)
    x, _, v, draws = _point(prob, n=4, seed=6)
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    r = split(prob, method, x, draws, v=v)
    g = prob.stochastic_grad(r.x, r.draws)
    e = perturb(prob, method, r.x, r.draws, g, eps=1e-12, v=r.v).eps
    ref = g + _old_hvp(prob.stochastic_grad_single, x, e, draws)
    _, G, Gn = model_gradients(prob, method, x, draws, order=1, eps=1e-12, v=v)
    assert _rel(G, ref) < 1e-10 and _rel(Gn, ref) < 1e-10


def test_two_draw_order_two_step_uses_the_order_two_term_of_the_first_draw():
    """TwoDraw's drift is G^(2) of draw 1, its noise G^(1) of draws 1 and 2: as the full per-draw values give."""
    prob = _problem("ln_mlp")
    sde = ss.sde_model(prob, ss.SAM(0.05, 0.3), order=2)
    x, _, _, _ = _point(prob, n=3, seed=7)
    draws = prob.sample_draws((3, 2), torch.Generator().manual_seed(8))
    zeta = torch.randn(3, 1, generator=torch.Generator().manual_seed(9), dtype=F64)
    drift, noise = ss.solvers.TwoDraw().terms(sde, x, (draws, zeta), None, dt=0.02)
    _, G, Gn = sde.draw_values(x, draws, None, "two_draw")
    assert _rel(drift, -G[:, 0]) < 1e-12
    assert _rel(noise, (0.03 / 2) ** 0.5 * (Gn[:, 0] - Gn[:, 1]) * zeta) < 1e-12


def test_bad_drift_every_and_drift_draws():
    prob = _problem("ln_mlp")
    x, _, _, draws = _point(prob)
    with pytest.raises(ValueError, match=r"`drift_every` must be a positive divisor of the number of rows 3, got "
                                         r"drift_every=2"):
        model_gradients(prob, ss.SAM(0.05, 0.3), x, draws, order=1, eps=1e-12, drift_every=2)
    with pytest.raises(ValueError, match=r"`drift_every` must be a positive divisor .* got drift_every=0"):
        model_gradients(prob, ss.SAM(0.05, 0.3), x, draws, order=1, eps=1e-12, drift_every=0)
    sde = ss.sde_model(prob, ss.SAM(0.05, 0.3), order=1)
    with pytest.raises(ValueError, match=r"`drift_draws` must be None or 1, got drift_draws=2"):
        sde.draw_values(x, draws[:, None], None, "two_draw", drift_draws=2)
