r"""Larger models through ``FiniteSum.from_module`` (issue 21 item 3): the digits conv net (d ≈ 10⁵) and the
pre-LayerNorm attention block of :mod:`sde_sam.problems.nets`.

* Exactness: Hessian-vector products and third derivatives :math:`\nabla^3 f[u, w]` of the problems' single-path
  gradient maps against central finite differences of the *gradient* (independent of how ``autodiff`` nests its
  derivatives), and HVPs against torch's reverse-over-reverse autograd on the module itself.
* Chunking: ``ss.run`` (SAM), order-1 and order-2 SDEs and ``lambda_max`` give the same results with
  ``chunk_size < n_paths`` as in one chunk — bit for bit for iterates and losses (the engine's per-path streams),
  to rounding for ``lambda_max`` (its batched Lanczos products may take other kernels for other numbers of rows).
* Memory (slow): the peak resident memory of a child process does not grow with ``n_paths`` at a fixed
  ``chunk_size`` beyond the stored per-path state.

Finite-difference tolerances [derived]: a central difference of step ``h`` has error
:math:`c h^2 + O(h^4)` plus rounding :math:`\lesssim \kappa\,\epsilon\,G/h^k` (``k = 1`` for the first, ``2`` for
the mixed second difference; :math:`G` the gradient's scale, :math:`\epsilon` the unit roundoff, :math:`\kappa`
a conditioning allowance). Richardson: :math:`\mathrm{fd}_h - \mathrm{fd}_{2h} = -3ch^2 + \dots`, so
``|fd_h - fd_2h|`` bounds the truncation error of ``fd_h`` three times over; the tolerance is that plus the
rounding bound, and is asserted to be small next to the quantity compared (the test has teeth).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

import sde_sam as ss
from sde_sam import autodiff
from sde_sam.problems import attention_block, digits_conv
from sde_sam.problems.nets import AttentionBlock, DigitsConvNet

F64 = torch.float64
EPS64 = torch.finfo(F64).eps
KAPPA = 1e4  # rounding allowance: sums over up to ~10^5 terms, activations of order 1


@pytest.fixture(scope="module")
def nets():
    return {"conv": digits_conv(8, batch_size=4), "attention": attention_block(8, batch_size=4)}


def _points(prob, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = prob.x_init + 0.05 * torch.randn(n, prob.d, generator=gen, dtype=F64)
    u, w = (torch.randn(n, prob.d, generator=gen, dtype=F64) / prob.d ** 0.5 for _ in range(2))
    return x, u, w, prob.sample_draws((n,), gen)


def _grads(prob, x, draws):
    """The mini-batch gradient at many points ``x: (k, n, d)`` sharing the ``n`` draws, in one batched call."""
    k, n, d = x.shape
    out = vmap(prob.stochastic_grad_single)(x.reshape(k * n, d), draws.repeat(k, 1))
    return out.reshape(k, n, d)


# -- the problems themselves ---------------------------------------------------------------------------------------
def test_parameter_counts_match_the_docstrings_and_the_modules(nets):
    conv = nets["conv"]
    assert conv.d == 101_626 == sum(p.numel() for p in conv.to_module(conv.x_init).parameters())
    c1, c2, h = 32, 64, 80
    assert conv.d == 10 * c1 + (9 * c1 + 1) * c2 + (16 * c2 + 1) * h + 10 * (h + 1)
    att = nets["attention"]
    L, w, m, k = 8, 16, 32, 4
    assert att.d == 2_452 == L * w + 6 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * m + m) + (m * w + w) + (w * k + k)
    assert isinstance(conv.to_module(conv.x_init), DigitsConvNet)
    assert isinstance(att.to_module(att.x_init), AttentionBlock)


def test_seeded_without_touching_the_global_generator():
    state = torch.get_rng_state()
    a, b = attention_block(16, seed=3), attention_block(16, seed=3)
    c = digits_conv(8, channels=(2, 3), hidden=5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x_init, b.x_init) and torch.equal(a.data[0], b.data[0]) and torch.equal(a.data[1], b.data[1])
    assert not torch.equal(attention_block(16, seed=4).x_init, a.x_init)
    assert c.x_init.dtype == F64 and digits_conv(8, channels=(2, 3), hidden=5, dtype=torch.float32).dtype == torch.float32


def test_teacher_targets():
    prob = attention_block(256)
    labels = prob.data[1]
    assert labels.dtype == torch.long and int(labels.min()) >= 0 and int(labels.max()) < 4
    assert int(torch.bincount(labels, minlength=4).min()) > 10  # every class occurs: a non-trivial task
    teacher = AttentionBlock(length=8, width=16, heads=2, mlp=32, outputs=4, seed=1, dtype=F64)
    assert torch.equal(teacher(prob.data[0]).argmax(-1), labels)
    reg = attention_block(32, loss="mse", classes=3)
    assert reg.data[1].shape == (32, 3) and reg.data[1].dtype == F64
    onehot = digits_conv(8, channels=(2, 3), hidden=5, loss="mse")
    assert torch.equal(onehot.data[1].sum(-1), torch.ones(8, dtype=F64))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"`loss` must be one of \('cross_entropy', 'mse'\), got loss='hinge'"):
        digits_conv(8, loss="hinge")
    with pytest.raises(ValueError, match=r"`channels` must be a pair of positive ints \(c1, c2\), got channels=\(4,\)"):
        digits_conv(8, channels=(4,))
    with pytest.raises(ValueError, match=r"`channels` must be an integer >= 1, got channels=0"):
        digits_conv(8, channels=(4, 0))
    with pytest.raises(ValueError, match=r"`hidden` must be an integer >= 1, got hidden=2.5"):
        digits_conv(8, hidden=2.5)
    with pytest.raises(ValueError, match=r"`width` must be divisible by `heads`, got width=16, heads=3"):
        attention_block(8, heads=3)
    with pytest.raises(ValueError, match=r"`classes` must be >= 2 with loss='cross_entropy', got classes=1"):
        attention_block(8, classes=1)
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1, got batch_size=0"):
        attention_block(8, batch_size=0)
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 1, got n=0"):
        attention_block(0)
    with pytest.raises(ValueError, match=r"`dtype` must be a floating torch.dtype, got dtype=torch.int64"):
        attention_block(8, dtype=torch.int64)


# -- exactness: derivatives against finite differences of the gradient ----------------------------------------------
@pytest.mark.parametrize("name", ["conv", "attention"])
def test_hvp_matches_finite_differences_and_autograd(nets, name):
    prob = nets[name]
    x, _, w, draws = _points(prob)
    hv = autodiff.hvp(prob.stochastic_grad_single, x, w, draws)
    h = 1e-4
    shifts = torch.tensor([h, -h, 2 * h, -2 * h], dtype=F64)[:, None, None]
    g = _grads(prob, x + shifts * w, draws)
    fd_h, fd_2h = (g[0] - g[1]) / (2 * h), (g[2] - g[3]) / (4 * h)
    scale = float(_grads(prob, x[None], draws).abs().max())
    tol = float((fd_h - fd_2h).abs().max()) + KAPPA * EPS64 * scale / h
    ref = float(hv.abs().max())
    assert tol < 1e-5 * ref, (tol, ref)  # the comparison is sharp
    torch.testing.assert_close(hv, fd_h, rtol=0, atol=tol)
    # Reverse-over-reverse autograd on the module itself, path by path (no torch.func at all).
    a, t = prob.data
    for p in range(x.shape[0]):
        model = prob.to_module(x[p])
        params = list(model.parameters())
        idx = draws[p]
        (gr,) = [torch.cat([q.reshape(-1) for q in torch.autograd.grad(F.cross_entropy(model(a[idx]), t[idx]),
                                                                        params, create_graph=True)])]
        ref_p = torch.cat([q.reshape(-1) for q in torch.autograd.grad(gr @ w[p], params)])
        torch.testing.assert_close(hv[p], ref_p, rtol=0, atol=1e-10 * ref)


@pytest.mark.parametrize("name", ["conv", "attention"])
def test_third_derivative_matches_finite_differences(nets, name):
    r"""∇³f[u, w] against the mixed central difference
    :math:`[g(x+hu+hw) - g(x+hu-hw) - g(x-hu+hw) + g(x-hu-hw)]/(4h^2)` of the gradient (error O(h²))."""
    prob = nets[name]
    x, u, w, draws = _points(prob, seed=1)
    third = autodiff.third_derivative(prob.stochastic_grad_single, x, u, w, draws)
    h = 1e-3
    corners = [(s, r) for s in (1, -1) for r in (1, -1)]
    pts = torch.stack([x + k * h * (s * u + r * w) for k in (1, 2) for s, r in corners])
    g = _grads(prob, pts, draws)
    fd_h = (g[0] - g[1] - g[2] + g[3]) / (4 * h * h)
    fd_2h = (g[4] - g[5] - g[6] + g[7]) / (16 * h * h)
    scale = float(_grads(prob, x[None], draws).abs().max())
    tol = float((fd_h - fd_2h).abs().max()) + KAPPA * EPS64 * scale / h ** 2
    ref = float(third.abs().max())
    assert tol < 1e-3 * ref, (tol, ref)
    torch.testing.assert_close(third, fd_h, rtol=0, atol=tol)
    # Symmetric in (u, w), as a third derivative is.
    torch.testing.assert_close(autodiff.third_derivative(prob.stochastic_grad_single, x, w, u, draws), third,
                               rtol=0, atol=1e-10 * ref)


# -- chunking over paths: the same results ----------------------------------------------------------------------------
def _runs(prob, kind: str, chunk_size):
    method = ss.SAM(0.05, 0.05)
    kw = dict(n_paths=3, seed=7, record_every=1, chunk_size=chunk_size, progress=False)
    if kind == "run":
        return ss.run(prob, method, prob.x_init, steps=2, observables=("loss",), **kw)
    if kind.startswith("lambda_max"):  # the fast form with 3 Lanczos iterations, the slow one by name (20)
        obs = "lambda_max" if kind == "lambda_max_by_name" else ss.observables.lambda_max(iters=3)
        return ss.run(prob, method, prob.x_init, steps=1, observables=(obs,), **kw)
    sde = ss.sde_model(prob, method, order=int(kind[-1]))
    return ss.simulate(sde, prob.x_init, t1=0.05, dt=0.025, observables=("loss",), **kw)


@pytest.mark.parametrize("kind", ["run", "sde1", "sde2", "lambda_max",
                                  pytest.param("lambda_max_by_name", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["conv", "attention"])
def test_chunked_over_paths_equals_one_chunk(nets, name, kind):
    prob = nets[name]
    whole, chunked = _runs(prob, kind, None), _runs(prob, kind, 2)
    x = whole.x_final
    assert not bool(whole.diverged.any())
    assert bool((x != prob.x_init).any(dim=-1).all())  # every path moved
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])  # with its own draws
    assert torch.equal(chunked.x_final, x)
    for key, values in whole.values.items():
        if key.startswith("lambda_max"):  # the same to rounding (Lanczos' batched products: other kernels, other rows)
            assert bool((values > 0).all())
            torch.testing.assert_close(chunked.values[key], values, rtol=1e-12, atol=0)
        else:
            assert torch.equal(chunked.values[key], values), key


# -- memory: bounded by chunk_size -------------------------------------------------------------------------------
_PEAK = textwrap.dedent("""
    import json, sys, torch
    import sde_sam as ss
    from sde_sam.problems import attention_block, digits_conv
    torch.set_num_threads(1)
    net, kind, n_paths, chunk, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    dtype = getattr(torch, dtype)
    prob = digits_conv(64, dtype=dtype) if net == "conv" else attention_block(64, dtype=dtype)
    method = ss.SAM(0.05, 0.05)
    kw = dict(n_paths=n_paths, seed=0, chunk_size=chunk, progress=False, record_every=1)
    # The high-water mark of the run alone: imports and data loading may peak higher than the run (they did on
    # a fresh CI install, hiding every difference), so reset VmHWM here (Linux: clear_refs 5) and read it after.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    # The loss recorded in groups of up to 2**14 path-samples (the default groups fewer paths on a CPU, to fit the
    # cache): a chunk's recording then holds all its paths' activations, the memory chunk_size has to bound.
    loss = ss.observables.loss(chunk=2**14)
    if kind == "run":
        traj = ss.run(prob, method, prob.x_init, steps=2, observables=(loss,), **kw)
    elif kind == "lambda_max":
        traj = ss.run(prob, method, prob.x_init, steps=1, observables=("lambda_max",), **kw)
    else:
        traj = ss.simulate(ss.sde_model(prob, method, order=int(kind[-1])), prob.x_init, t1=0.05, dt=0.025,
                           observables=(loss,), **kw)
    assert not bool(traj.diverged.any())
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"peak_kib": hwm, "d": prob.d}))
""")


def peak_memory(net: str, kind: str, n_paths: int, chunk_size: int, dtype: str = "float64") -> dict:
    """Peak resident memory (KiB, Linux ``VmHWM`` reset after set-up) of a fresh interpreter running one ``kind``
    of run."""
    out = subprocess.run([sys.executable, "-c", _PEAK, net, kind, str(n_paths), str(chunk_size), dtype],
                         capture_output=True, text=True, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak resident memory")
@pytest.mark.parametrize("kind", ["run", "sde2"])
def test_memory_is_bounded_by_chunk_size(kind):
    """Conv net (d = 101,626, float64), chunk_size=2: 16 paths peak no higher than 2 paths plus the extra paths'
    stored state, at most 8 copies of d numbers each (x0 expanded, the iterate, x_final, ...; measured: 3-4)
    plus 30 MB for allocator noise. The allowance has teeth: one chunk of 16 paths needs more than it."""
    small, chunked, whole = (peak_memory("conv", kind, n, c) for n, c in ((2, 2), (16, 2), (16, 16)))
    allowance = 14 * 8 * small["d"] * 8 / 1024  # KiB
    growth = chunked["peak_kib"] - small["peak_kib"]
    assert growth <= allowance + 30 * 1024, (small, chunked)
    assert whole["peak_kib"] - chunked["peak_kib"] > allowance, (chunked, whole)
