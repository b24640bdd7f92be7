"""Top of the Hessian spectrum per path (MATH §6): Lanczos and shifted power iteration vs eigh."""
from __future__ import annotations

import math

import pytest
import torch

from sde_sam.spectrum import Eigenpair, alignment, top_eigenpair, top_eigenpair_hvp

F64 = torch.float64
METHODS = ["lanczos", "power"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batched_hvp(H: torch.Tensor):
    return lambda v: torch.einsum("nij,nj->ni", H, v)


def _random_symmetric(n: int, d: int, seed: int) -> torch.Tensor:
    M = torch.randn(n, d, d, generator=_gen(seed), dtype=F64)
    return (M + M.mT) / 2


def _with_spectrum(spectra: torch.Tensor, seed: int) -> torch.Tensor:
    """Per-path ``Q diag(spectrum) Q^T`` with a random rotation per path: ``(n, d) -> (n, d, d)``."""
    n, d = spectra.shape
    Q = torch.linalg.qr(torch.randn(n, d, d, generator=_gen(seed), dtype=F64))[0]
    return Q @ torch.diag_embed(spectra) @ Q.mT


# Per path: PSD, indefinite, dominated by a negative eigenvalue, negative definite, separated gaps so that
# power iteration converges in a few hundred steps.
SPECTRA = torch.tensor([
    [5.0, 2.0, 1.0, 0.5, 0.1, 0.0],
    [4.0, 1.5, 0.0, -0.5, -1.0, -2.0],
    [3.0, 1.0, 0.0, -1.0, -2.0, -9.0],
    [-0.5, -1.0, -2.0, -3.0, -4.0, -12.0],
], dtype=F64)


def _check_pair(pair: Eigenpair, H: torch.Tensor, *, atol: float) -> None:
    evals, evecs = torch.linalg.eigh(H)
    torch.testing.assert_close(pair.value, evals[:, -1], rtol=0, atol=atol)
    torch.testing.assert_close(pair.rayleigh, evals[:, -1], rtol=0, atol=atol)
    torch.testing.assert_close(pair.vector.norm(dim=-1), torch.ones(H.shape[0], dtype=F64))
    cos = (pair.vector * evecs[..., -1]).sum(-1).abs()  # the eigenvector up to sign
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=math.sqrt(atol))


@pytest.mark.parametrize("method, iters", [("lanczos", 6), ("power", 400)])
def test_controlled_spectra_per_path(method, iters):
    H = _with_spectrum(SPECTRA, seed=1)
    v0 = torch.randn(4, 6, generator=_gen(2), dtype=F64)
    pair = top_eigenpair_hvp(_batched_hvp(H), v0, method=method, iters=iters)
    assert pair.value.shape == (4,) and pair.vector.shape == (4, 6) and pair.rayleigh.shape == (4,)
    _check_pair(pair, H, atol=1e-10)
    assert pair.value[2] > 0 > pair.value[3]  # algebraic top, not the magnitude-largest -9 or -12


@pytest.mark.parametrize("d", [8, 20])
def test_lanczos_random_symmetric_matrices(d):
    H = _random_symmetric(16, d, seed=3)
    v0 = torch.randn(16, d, generator=_gen(4), dtype=F64)
    pair = top_eigenpair_hvp(_batched_hvp(H), v0, iters=d)  # a full Krylov space: exact
    _check_pair(pair, H, atol=1e-9)


def test_lanczos_few_iterations_converge_on_separated_top():
    # d = 200 >> iters = 20. H = R diag(lams) R with a Householder reflection R = I - 2uu^T per path, so
    # the reference eigenpair is known without a dense eigensolver: (10, R e_0).
    n, d = 3, 200
    lams = torch.cat([torch.full((n, 1), 10.0, dtype=F64), torch.rand(n, d - 1, generator=_gen(5), dtype=F64) * 4 - 2], -1)
    u = torch.randn(n, d, generator=_gen(6), dtype=F64)
    u = u / u.norm(dim=-1, keepdim=True)
    R = torch.eye(d, dtype=F64) - 2 * u.unsqueeze(-1) * u.unsqueeze(-2)
    H = R @ torch.diag_embed(lams) @ R
    pair = top_eigenpair_hvp(_batched_hvp(H), torch.randn(n, d, generator=_gen(7), dtype=F64), iters=20)
    torch.testing.assert_close(pair.value, torch.full((n,), 10.0, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(pair.rayleigh, pair.value, rtol=0, atol=1e-10)
    cos = (pair.vector * R[:, :, 0]).sum(-1).abs()
    torch.testing.assert_close(cos, torch.ones(n, dtype=F64), rtol=0, atol=1e-6)


def test_power_negative_dominated_random_matrices():
    # Random symmetric minus a large multiple of a rank-one projector: the most negative eigenvalue dominates.
    H = _random_symmetric(5, 6, seed=8)
    u = torch.randn(5, 6, generator=_gen(9), dtype=F64)
    u = u / u.norm(dim=-1, keepdim=True)
    H = H - 30 * u.unsqueeze(-1) * u.unsqueeze(-2)
    evals = torch.linalg.eigvalsh(H)
    assert (evals[:, 0].abs() > evals[:, -1].abs()).all()
    for method, iters in [("lanczos", 6), ("power", 3000)]:
        pair = top_eigenpair_hvp(_batched_hvp(H), torch.randn(5, 6, generator=_gen(10), dtype=F64), method=method, iters=iters)
        torch.testing.assert_close(pair.value, evals[:, -1], rtol=0, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_paths_are_independent(method):
    H = _with_spectrum(SPECTRA, seed=11)
    v0 = torch.randn(4, 6, generator=_gen(12), dtype=F64)
    batch = top_eigenpair_hvp(_batched_hvp(H), v0, method=method, iters=300)
    for p in range(4):
        single = top_eigenpair_hvp(_batched_hvp(H[p : p + 1]), v0[p : p + 1], method=method, iters=300)
        torch.testing.assert_close(single.value, batch.value[p : p + 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_identity_breakdown_no_nan(method):
    H = torch.eye(5, dtype=F64).expand(3, 5, 5) * torch.tensor([1.0, -2.0, 0.0], dtype=F64).view(3, 1, 1)
    pair = top_eigenpair_hvp(_batched_hvp(H), torch.randn(3, 5, generator=_gen(13), dtype=F64), method=method, iters=10)
    assert torch.isfinite(pair.vector).all() and torch.isfinite(pair.value).all()
    torch.testing.assert_close(pair.value, torch.tensor([1.0, -2.0, 0.0], dtype=F64))
    torch.testing.assert_close(pair.vector.norm(dim=-1), torch.ones(3, dtype=F64))


def test_lanczos_exact_eigenvector_start_still_finds_the_top():
    # v0 an exact eigenvector of a lower eigenvalue: breakdown at the first step, then a restart.
    spectra = torch.tensor([[3.0, 1.0, -1.0, -4.0], [2.0, 0.0, -1.0, -1.0]], dtype=F64)
    H = torch.diag_embed(spectra)
    v0 = torch.zeros(2, 4, dtype=F64)
    v0[0, 3] = 1.0
    v0[1, 1] = 2.0
    pair = top_eigenpair_hvp(_batched_hvp(H), v0, iters=20)
    torch.testing.assert_close(pair.value, torch.tensor([3.0, 2.0], dtype=F64))
    torch.testing.assert_close(pair.vector.abs(), torch.eye(4, dtype=F64)[[0, 0]])


def test_lanczos_invariant_subspace_when_space_is_exhausted():
    # d = 2 with a 3-term budget: capped at d; H with a repeated eigenvalue breaks down at once.
    H = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]], dtype=F64)
    pair = top_eigenpair_hvp(_batched_hvp(H), torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64), iters=3)
    torch.testing.assert_close(pair.value, torch.tensor([2.0, 1.0], dtype=F64))


@pytest.mark.parametrize("method", METHODS)
def test_eigenvector_start_and_zero_start_no_nan(method):
    H = torch.diag_embed(torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64))
    v0 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)  # top eigenvector; a zero row
    pair = top_eigenpair_hvp(_batched_hvp(H), v0, method=method, iters=5)
    assert torch.isfinite(pair.vector).all()
    torch.testing.assert_close(pair.value, torch.tensor([3.0, 0.0], dtype=F64))


def test_float32():
    H = _with_spectrum(SPECTRA, seed=14).float()
    pair = top_eigenpair_hvp(_batched_hvp(H), torch.randn(4, 6, generator=_gen(15)), iters=6)
    assert pair.value.dtype == torch.float32
    torch.testing.assert_close(pair.value, SPECTRA[:, 0].float(), rtol=0, atol=1e-4)


class _QuadraticProblem:
    """Minimal problem: f_p(x) = ½ xᵀ H_p x, per path, through the hvp interface only."""

    def __init__(self, H):
        self.H = H

    def hvp(self, x, v):
        assert x.shape == v.shape
        return torch.einsum("nij,nj->ni", self.H, v)


@pytest.mark.parametrize("method", METHODS)
def test_top_eigenpair_wrapper(method):
    H = _with_spectrum(SPECTRA, seed=16)
    x = torch.randn(4, 6, generator=_gen(17), dtype=F64)
    problem = _QuadraticProblem(H)
    pair = top_eigenpair(problem, x, method=method, iters=6 if method == "lanczos" else 400)
    _check_pair(pair, H, atol=1e-9)
    value, vector = pair  # unpacks as (value, vector)
    assert value is pair.value and vector is pair.vector
    again = top_eigenpair(problem, x, method=method, iters=6 if method == "lanczos" else 400)
    assert torch.equal(again.vector, pair.vector)  # seeded start: reproducible
    warm = top_eigenpair(problem, x, method=method, iters=2, v0=pair.vector)
    torch.testing.assert_close(warm.value, pair.value, rtol=0, atol=1e-9)


def test_top_eigenpair_single_point():
    problem = _QuadraticProblem(_with_spectrum(SPECTRA[:1], seed=18))
    pair = top_eigenpair(problem, torch.zeros(6, dtype=F64), iters=6)
    assert pair.value.shape == () and pair.vector.shape == (6,)
    assert pair.value.item() == pytest.approx(5.0, abs=1e-10)


def test_alignment():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0], [-2.0, 0.0]], dtype=F64)
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [5.0, 0.0]], dtype=F64)
    torch.testing.assert_close(alignment(a, v), torch.tensor([0.6, 0.0, 0.0, 1.0], dtype=F64))
    assert alignment(a[0], v[0]).shape == ()
    r = torch.randn(50, 7, generator=_gen(19), dtype=F64)
    s = torch.randn(50, 7, generator=_gen(20), dtype=F64)
    cos = torch.nn.functional.cosine_similarity(r, s, dim=-1).abs()
    torch.testing.assert_close(alignment(r, s), cos)


# -- validation ------------------------------------------------------------------------------------------
def _ok_hvp(v):
    return 2 * v


@pytest.mark.parametrize("kwargs, match", [
    (dict(v0=torch.ones(3, dtype=F64)), r"`v0` must be a floating tensor of shape \(n_paths, d\)"),
    (dict(v0=torch.ones(2, 3, dtype=torch.int64)), r"`v0` must be a floating tensor"),
    (dict(v0=torch.full((2, 3), math.nan, dtype=F64)), r"`v0` must be finite"),
    (dict(method="arnoldi"), r"`method` must be 'lanczos' or 'power', got method='arnoldi'"),
    (dict(iters=0), r"`iters` must be an integer >= 1, got iters=0"),
    (dict(iters=2.5), r"`iters` must be an integer >= 1, got iters=2.5"),
    (dict(eps=-1.0), r"`eps` must be > 0 or None, got eps=-1.0"),
    (dict(hvp=lambda v: v[:, :2]), r"`hvp` must map \(n, d\) to \(n, d\), got \(2, 3\) -> \(2, 2\)"),
])
def test_top_eigenpair_hvp_errors(kwargs, match):
    args = dict(hvp=_ok_hvp, v0=torch.ones(2, 3, dtype=F64))
    args.update(kwargs)
    hvp, v0 = args.pop("hvp"), args.pop("v0")
    with pytest.raises(ValueError, match=match):
        top_eigenpair_hvp(hvp, v0, **args)


def test_top_eigenpair_errors():
    problem = _QuadraticProblem(torch.eye(3, dtype=F64).expand(2, 3, 3))
    with pytest.raises(ValueError, match=r"`x` must be a floating tensor of shape \(d,\) or \(n_paths, d\)"):
        top_eigenpair(problem, torch.zeros(2, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"`v0` must match `x` in shape, dtype and device"):
        top_eigenpair(problem, torch.zeros(2, 3, dtype=F64), v0=torch.ones(2, 3, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"`a` and `v` must share the last dimension d, got \(3,\) and \(2,\)"):
        alignment(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match=r"`eps` must be > 0 or None, got eps=0"):
        alignment(torch.ones(3), torch.ones(3), eps=0)


def test_dtype_device_and_dimension_checks_name_x():
    import sde_sam as ss

    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, -2.0], dtype=F64)), noise_cov=0.0)
    with pytest.raises(ValueError, match=r"`x` has dtype torch.float32 but the problem uses torch.float64"):
        ss.top_eigenpair(prob, torch.ones(2))
    with pytest.raises(ValueError, match=r"`x` must have shape \(d,\) or \(n_paths, d\) with d=2, got \(4, 3\)"):
        ss.top_eigenpair(prob, torch.ones(4, 3, dtype=F64))
    assert ss.top_eigenpair(prob, torch.ones(2, dtype=F64), iters=2).value.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"`a` and `v` must be floating tensors of the same dtype, "
                                          r"got torch.float32 and torch.float64"):
        alignment(torch.ones(3), torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match=r"`a` and `v` must be floating tensors of the same dtype, got torch.int64"):
        alignment(torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"`a` and `v` must be tensors, got list and Tensor"):
        alignment([1.0, 0.0], torch.ones(2))
