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
