"""Shared, generic fixtures. Statistical tests work in float64 with fixed seeds; nothing here changes
torch's default dtype or global RNG, so test modules stay independent of each other.

One global setting: torch runs single-threaded in the tests. Test tensors are tiny, and on a busy 2-core
machine two spinning OpenMP threads make a (20000, 2) matmul ~60x slower; results do not depend on it."""
from __future__ import annotations

import pytest
import torch

import sde_sam as ss

F64 = torch.float64
torch.set_num_threads(1)

# One row per method of MATH §2, with non-trivial hyper-parameters. Tests that hold "for every method"
# parametrize over this table; test_methods checks that it covers `sde_sam.methods.METHODS`.
METHOD_ROWS = [
    ss.SGD(0.1),
    ss.USAM(0.1, 0.2),
    ss.SAM(0.1, 0.2),
    ss.DNSAM(0.1, 0.2),
    ss.UnifiedSAM(0.1, 0.2, 0.3),
    ss.EigenSAM(0.1, 0.2, 0.3, refresh_every=2, power_iters=3, init_power_iters=5),
]


@pytest.fixture(params=METHOD_ROWS, ids=lambda m: m.name)
def method(request) -> ss.Method:
    """Every row of the method table, one test each."""
    return request.param


@pytest.fixture
def method_rows() -> list[ss.Method]:
    return list(METHOD_ROWS)


@pytest.fixture
def spd():
    """Factory: a random symmetric positive-definite float64 ``(d, d)`` matrix with eigenvalues in [lo, hi]."""

    def make(d: int, *, seed: int = 0, lo: float = 0.3, hi: float = 2.0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
        evals = torch.linspace(hi, lo, d, dtype=F64)
        m = (q * evals) @ q.T
        return 0.5 * (m + m.T)

    return make


@pytest.fixture
def diag_quadratic() -> ss.Quadratic:
    """f = ½ xᵀ diag(1, 0.5, 0.25) x with isotropic gradient noise Σ = 0.01 I, float64."""
    return ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5, 0.25], dtype=F64)), noise_cov=0.01)


@pytest.fixture
def gen():
    """A fresh seeded CPU generator."""
    return torch.Generator().manual_seed(1234)
