"""Shared, generic fixtures. Statistical tests work in float64 with fixed seeds; nothing here changes
torch's default dtype or global RNG, so test modules stay independent of each other.

One global setting: torch runs single-threaded in the tests. Test tensors are tiny, and on a busy 2-core
machine two spinning OpenMP threads make a (20000, 2) matmul ~60x slower; results do not depend on it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import sde_sam as ss

F64 = torch.float64
torch.set_num_threads(1)

# -- the method table: every method and option, once -------------------------------------------------------
# One row per method of MATH §2 (non-trivial hyper-parameters), its momentum forms and the options of issue 18,
# each with tags. Tests that hold "for every method" parametrize over `rows(...)`; test_methods checks that the
# table covers `sde_sam.methods.METHODS` and that each row's tags agree with what the method declares.
# Tags: plain (no option set), perturbs, normalises, affine (closed-form Gaussian models), needs_oracle,
# eigenvector, momentum, nesterov, weight_decay, micro_batch (mini-batch problems only), ascent.
@dataclass(frozen=True)
class Row:
    method: ss.Method
    tags: frozenset
    id: str
    formula: Callable | None = None  # a new method's ε, one path, written independently: (m, g, full_grad, v) -> ε


def _row(method: ss.Method, *tags: str, id: str | None = None, formula: Callable | None = None) -> Row:
    return Row(method, frozenset(tags), id or method.name, formula)


TABLE = [
    _row(ss.SGD(0.1), "plain", "affine"),
    _row(ss.USAM(0.1, 0.2), "plain", "perturbs", "affine"),
    _row(ss.SAM(0.1, 0.2), "plain", "perturbs", "normalises"),
    _row(ss.DNSAM(0.1, 0.2), "plain", "perturbs", "normalises", "affine"),
    _row(ss.UnifiedSAM(0.1, 0.2, 0.3), "plain", "perturbs", "normalises"),
    _row(ss.EigenSAM(0.1, 0.2, 0.3, refresh_every=2, power_iters=3, init_power_iters=5),
         "plain", "perturbs", "normalises", "eigenvector"),
    _row(ss.TwoStepUSAM(0.1, 0.2), "plain", "perturbs", "needs_oracle"),
    _row(ss.HessianUSAM(0.1, 0.2), "plain", "perturbs", "needs_oracle"),
    _row(ss.ASAM(0.1, 0.2, offset=0.01), "plain", "perturbs", "normalises", "needs_oracle"),
    # momentum
    _row(ss.SAM(0.1, 0.2, momentum=0.9), "perturbs", "normalises", "momentum", id="SAM-heavyball"),
    _row(ss.USAM(0.1, 0.2, momentum=0.5, nesterov=True), "perturbs", "affine", "momentum", "nesterov",
         id="USAM-nesterov"),
    _row(ss.EigenSAM(0.1, 0.2, 0.3, refresh_every=2, power_iters=3, momentum=0.7, nesterov=True),
         "perturbs", "normalises", "eigenvector", "momentum", "nesterov", id="EigenSAM-nesterov"),
    # weight decay (MATH §2.3), with and without momentum
    _row(ss.SGD(0.1, weight_decay=0.05, momentum=0.9, nesterov=True), "affine", "weight_decay", "momentum",
         "nesterov", id="SGD-wd-nesterov"),
    _row(ss.USAM(0.1, 0.2, weight_decay=0.05), "perturbs", "affine", "weight_decay", id="USAM-wd"),
    _row(ss.ASAM(0.1, 0.2, weight_decay=5e-4, momentum=0.9), "perturbs", "normalises", "needs_oracle",
         "weight_decay", "momentum", id="ASAM-wd-heavyball"),
    # multi-step ascent (MATH §2.2)
    _row(ss.SAM(0.1, 0.2, ascent_steps=3, ascent_step_size=0.1), "perturbs", "normalises", "needs_oracle",
         "ascent", id="SAM-ascent3"),
    _row(ss.SAM(0.1, 0.2, ascent_steps=2, ascent_normalized=False, momentum=0.5), "perturbs", "normalises",
         "needs_oracle", "ascent", "momentum", id="SAM-ascent2-raw-heavyball"),
    # m-SAM (MATH §2.2): mini-batch problems only
    _row(ss.SAM(0.1, 0.2, micro_batch=1), "perturbs", "normalises", "micro_batch", id="SAM-m1"),
    _row(ss.USAM(0.1, 0.2, micro_batch=1, weight_decay=0.05), "perturbs", "micro_batch", "weight_decay",
         id="USAM-m1-wd"),
    _row(ss.DNSAM(0.1, 0.2, micro_batch=1), "perturbs", "normalises", "micro_batch", id="DNSAM-m1"),
    _row(ss.EigenSAM(0.1, 0.2, 0.3, refresh_every=2, power_iters=3, init_power_iters=5, micro_batch=1),
         "perturbs", "normalises", "eigenvector", "micro_batch", id="EigenSAM-m1"),
    _row(ss.HessianUSAM(0.1, 0.2, micro_batch=1), "perturbs", "needs_oracle", "micro_batch", id="HessianUSAM-m1"),
    _row(ss.ASAM(0.1, 0.2, micro_batch=1),
         "perturbs", "normalises", "needs_oracle", "micro_batch", id="ASAM-m1"),
    _row(ss.SAM(0.1, 0.2, micro_batch=1, ascent_steps=2), "perturbs", "normalises", "needs_oracle", "ascent",
         "micro_batch", id="SAM-m1-ascent2"),
]


def rows(*having: str, without: tuple[str, ...] = ()) -> list:
    """``pytest.param`` of every row with all tags in ``having`` and none in ``without``, id'd by the row."""
    return [pytest.param(r.method, id=r.id) for r in TABLE
            if set(having) <= r.tags and not (set(without) & r.tags)]


def methods(*having: str, without: tuple[str, ...] = ()) -> list[ss.Method]:
    """The methods of :func:`rows`."""
    return [p.values[0] for p in rows(*having, without=without)]


def momentum_forms(*having: str, without: tuple[str, ...] = (), beta: float = 0.5,
                   forms: tuple[str, ...] = ("plain", "hb", "nesterov")) -> list:
    """``pytest.param`` of each row of :func:`rows` in each momentum form: ``plain`` (the row), ``hb`` (heavy
    ball at ``beta``), ``nesterov``; id'd ``"<row>"``, ``"<row>-hb"``, ``"<row>-nesterov"``."""
    options = {"plain": {}, "hb": dict(momentum=beta), "nesterov": dict(momentum=beta, nesterov=True)}
    return [pytest.param(dataclasses.replace(p.values[0], **options[f]), id=p.id + ("" if f == "plain" else f"-{f}"))
            for p in rows(*having, without=without) for f in forms]


def by_id(*ids: str) -> list:
    """``pytest.param`` of the rows named ``ids`` (a test that needs a few particular rows, not a tag)."""
    found = {r.id: r for r in TABLE}
    missing = [i for i in ids if i not in found]
    if missing:
        raise KeyError(f"no rows {missing} in the method table; rows: {sorted(found)}")
    return [pytest.param(found[i].method, id=i) for i in ids]


# The six rows of MATH §2's table without oracles (other test files extend it with their own rows).
METHOD_ROWS = methods("plain", without=("needs_oracle",))


@pytest.fixture(params=METHOD_ROWS, ids=lambda m: m.name)
def method(request) -> ss.Method:
    """Every row of MATH §2's table without oracles, one test each."""
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


# -- the weak-error demo problem (test_weak_error, test_coupling, test_weak_error_pilot; files may override) --------
@pytest.fixture
def quad() -> ss.Quadratic:
    """f = ½ xᵀ diag(1, 4) x with Σ = I (the CLI demo problem)."""
    return ss.Quadratic(torch.diag(torch.tensor([1.0, 4.0], dtype=F64)), noise_cov=1.0)


@pytest.fixture
def x0() -> torch.Tensor:
    return torch.full((2,), 0.5, dtype=F64)
