"""Validation at the public boundary: every error names the argument, and each has a test here."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import sde_sam as ss
from sde_sam.problems import FiniteSum, linear_regression

F64 = torch.float64


@pytest.fixture
def quad() -> ss.Quadratic:
    return ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5, 0.25], dtype=F64)), noise_cov=0.01)


@pytest.fixture
def x0() -> torch.Tensor:
    return torch.ones(3, dtype=F64)


# -- methods ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda: ss.SGD(-0.1), r"`lr` must be a finite number > 0, got lr=-0.1"),
    (lambda: ss.SAM(0.0, 0.1), r"`lr` must be a finite number > 0, got lr=0.0"),
    (lambda: ss.USAM(math.nan, 0.1), r"`lr` must be a finite number > 0, got lr=nan"),
    (lambda: ss.USAM(math.inf, 0.1), r"`lr` must be a finite number > 0, got lr=inf"),
    (lambda: ss.SGD("0.1"), r"`lr` must be a finite number > 0, got lr='0.1'"),
    (lambda: ss.SGD(True), r"`lr` must be a finite number > 0, got lr=True"),
    (lambda: ss.SAM(0.1, -0.1), r"`rho` must be a finite number >= 0, got rho=-0.1"),
    (lambda: ss.USAM(0.1, -1e-9), r"`rho` must be a finite number >= 0, got rho=-1e-09"),
    (lambda: ss.DNSAM(0.1, math.inf), r"`rho` must be a finite number >= 0, got rho=inf"),
    (lambda: ss.EigenSAM(0.1, -0.1), r"`rho` must be a finite number >= 0"),
    (lambda: ss.UnifiedSAM(0.1, 0.1, 1.5), r"`lam` must be in \[0, 1\], got lam=1.5"),
    (lambda: ss.UnifiedSAM(0.1, 0.1, -0.1), r"`lam` must be in \[0, 1\], got lam=-0.1"),
    (lambda: ss.UnifiedSAM(0.1, 0.1, math.nan), r"`lam` must be in \[0, 1\], got lam=nan"),
    (lambda: ss.EigenSAM(0.1, 0.1, -0.2), r"`alpha` must be a finite number >= 0, got alpha=-0.2"),
    (lambda: ss.EigenSAM(0.1, 0.1, refresh_every=0), r"`refresh_every` must be an integer >= 1, got refresh_every=0"),
    (lambda: ss.EigenSAM(0.1, 0.1, power_iters=2.5), r"`power_iters` must be an integer >= 1, got power_iters=2.5"),
    (lambda: ss.EigenSAM(0.1, 0.1, init_power_iters=-1), r"`init_power_iters` must be an integer >= 1"),
    (lambda: ss.SAM(0.1, 0.1, eps=0.0), r"`eps` must be a finite number > 0, got eps=0.0"),
    (lambda: ss.SAM(0.1, 0.1, eps=-1e-12), r"`eps` must be a finite number > 0"),
    (lambda: ss.SGD(0.1).with_rho(0.1), r"`rho` must be 0 for SGD, got rho=0.1"),
    (lambda: ss.SAM(0.1, 0.1).with_rho(-0.1), r"`rho` must be a finite number >= 0, got rho=-0.1"),
])
def test_method_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: ss.USAM(lr=0.1, rh0=0.1), r"unexpected keyword argument 'rh0'"),
    (lambda: ss.SAM(lr=0.1, rho=0.1, lamda=0.5), r"unexpected keyword argument 'lamda'"),
    (lambda: ss.EigenSAM(0.1, 0.1, 0.2, 100), r"positional argument"),  # refresh_every is keyword-only
    (lambda: ss.SGD(0.1, 1e-12), r"positional argument"),  # eps is keyword-only
])
def test_misspelt_or_positional_keywords_are_type_errors(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_methods_are_frozen():
    with pytest.raises(AttributeError, match="rho"):
        ss.SAM(0.1, 0.1).rho = 0.2


# -- problems --------------------------------------------------------------------------------------------------
def test_batch_size_checks():
    with pytest.raises(ValueError, match=r"`batch_size` must be <= n=8 \(the number of samples\), got batch_size=9"):
        linear_regression(n=8, d=2, batch_size=9)
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1, got batch_size=0"):
        linear_regression(n=8, d=2, batch_size=0)
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1, got batch_size=2.0"):
        linear_regression(n=8, d=2, batch_size=2.0)


def test_finite_sum_data_checks():
    loss = lambda x, s: (s * x).sum()  # noqa: E731
    with pytest.raises(TypeError, match=r"`data` must be a tensor or a tuple of tensors"):
        FiniteSum(loss, [[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"`data` must be a tensor or a tuple of tensors"):
        FiniteSum(loss, ())
    with pytest.raises(ValueError, match=r"`data` tensors must share a leading dim n >= 1, got shapes \[\(4, 2\), \(5,\)\]"):
        FiniteSum(loss, (torch.zeros(4, 2), torch.zeros(5)))
    with pytest.raises(ValueError, match=r"`data` tensors must share a leading dim n >= 1"):
        FiniteSum(loss, torch.zeros(0, 2))
    with pytest.raises(ValueError, match=r"`d` must be an integer >= 1, got d=0"):
        FiniteSum(loss, torch.zeros(4, 2), d=0)


@pytest.mark.parametrize("noise_cov, match", [
    (-0.1, r"`noise_cov` must be >= 0, got noise_cov=-0.1"),
    (math.nan, r"`noise_cov` must be finite"),
    (torch.tensor([0.1, -0.2, 0.3]), r"`noise_cov` as a diagonal must be >= 0 entrywise, got min -0.2"),
    (torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]), r"`noise_cov` must be positive semi-definite"),
    (torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), r"positive semi-definite, got an eigenvalue -1"),
    (torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), r"`noise_cov` as a \(d, d\) matrix must be symmetric"),
    (torch.ones(2), r"`noise_cov` must be a float, a \(d,\) diagonal or a \(d, d\) matrix with d=3, got shape \(2,\)"),
    (torch.eye(4), r"with d=3, got shape \(4, 4\)"),
    (torch.ones(3, 3, 3), r"with d=3, got shape \(3, 3, 3\)"),
])
def test_bad_noise_cov(noise_cov, match):
    H = torch.eye(3, dtype=F64)
    if isinstance(noise_cov, torch.Tensor):  # in the problem's dtype (another dtype is its own error)
        noise_cov = noise_cov.to(F64)
    with pytest.raises(ValueError, match=match):
        ss.Quadratic(H, noise_cov=noise_cov)
    with pytest.raises(ValueError, match=match):
        ss.Objective(lambda x: (x**2).sum(), 3, noise_cov=noise_cov, dtype=F64)


@pytest.mark.parametrize("H, match", [
    (torch.tensor([[1.0, 0.3], [0.0, 1.0]], dtype=F64), r"`H` must be symmetric"),
    (torch.ones(2, 3, dtype=F64), r"`H` must be a square \(d, d\) tensor, got torch.Size\(\[2, 3\]\)"),
    (torch.ones(3, dtype=F64), r"`H` must be a square \(d, d\) tensor"),
    (np.eye(2), r"`H` must be a square \(d, d\) tensor, got \(2, 2\)"),
    (torch.eye(2, dtype=torch.int64), r"`H` must be a finite floating tensor, got dtype=torch.int64"),
    (torch.tensor([[1.0, math.inf], [math.inf, 1.0]], dtype=F64), r"`H` must be a finite floating tensor"),
])
def test_bad_quadratic_matrix(H, match):
    with pytest.raises(ValueError, match=match):
        ss.Quadratic(H)


def test_bad_objective_arguments():
    with pytest.raises(ValueError, match=r"`d` must be a positive integer, got d=0"):
        ss.Objective(lambda x: x.sum(), 0)
    with pytest.raises(ValueError, match=r"`d` must be a positive integer, got d=2.0"):
        ss.Objective(lambda x: x.sum(), 2.0)
    with pytest.raises(ValueError, match=r"`dtype` must be a floating dtype, got dtype=torch.int32"):
        ss.Objective(lambda x: x.sum(), 2, dtype=torch.int32)


# -- run -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_x0, match", [
    (torch.ones(4, dtype=F64), r"`x0` must have shape \(d,\) or \(n_paths, d\) with d=3, got \(4,\)"),
    (torch.ones(5, 4, dtype=F64), r"`x0` must have shape \(d,\) or \(n_paths, d\) with d=3, got \(5, 4\)"),
    (torch.ones(2, 5, 3, dtype=F64), r"with d=3, got \(2, 5, 3\)"),
    (torch.tensor(1.0, dtype=F64), r"with d=3, got \(\)"),
    (torch.tensor([1.0, math.nan, 0.0], dtype=F64), r"`x0` must be finite, got a tensor with NaN or inf entries"),
    (torch.tensor([[1.0, 0.0, 0.0], [1.0, -math.inf, 0.0]], dtype=F64), r"`x0` must be finite"),
    (torch.ones(3, dtype=torch.float32), r"`x0` has dtype torch.float32 but the problem uses torch.float64"),
    (torch.ones(3, dtype=torch.int64), r"`x0` has dtype torch.int64 but the problem uses torch.float64"),
])
def test_bad_x0(bad_x0, match, quad):
    with pytest.raises(ValueError, match=match):
        ss.run(quad, ss.SGD(0.1), bad_x0, steps=2)


@pytest.mark.parametrize("bad_x0", [[1.0, 1.0, 1.0], np.ones(3), 1.0], ids=["list", "ndarray", "float"])
def test_x0_must_be_a_tensor(bad_x0, quad):
    with pytest.raises(TypeError, match=r"`x0` must be a torch.Tensor, got " + type(bad_x0).__name__):
        ss.run(quad, ss.SGD(0.1), bad_x0, steps=2)


def test_n_paths_checks(quad, x0):
    with pytest.raises(ValueError, match=r"`x0` must have shape \(d,\) or \(n_paths, d\) with d=3 and n_paths=4, got \(5, 3\)"):
        ss.run(quad, ss.SGD(0.1), torch.ones(5, 3, dtype=F64), steps=2, n_paths=4)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=rf"`n_paths` must be an integer >= 1, got n_paths={bad}"):
            ss.run(quad, ss.SGD(0.1), x0, steps=2, n_paths=bad)


@pytest.mark.parametrize("name, bad", [
    ("steps", 0), ("steps", -1), ("steps", 2.5), ("steps", True),
    ("record_every", 0), ("record_every", 1.5), ("record_every", -2),
])
def test_bad_integer_arguments(name, bad, quad, x0):
    kw = {"steps": 3, name: bad}
    with pytest.raises(ValueError, match=rf"`{name}` must be an integer >= 1(, | or 'auto', )got {name}={re.escape(repr(bad))}"):
        ss.run(quad, ss.SGD(0.1), x0, **kw)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_chunk_size(bad, quad, x0):
    with pytest.raises(ValueError, match=rf"`chunk_size` must be a positive integer or None, got chunk_size={bad!r}"):
        ss.run(quad, ss.SGD(0.1), x0, steps=2, n_paths=10, chunk_size=bad)


@pytest.mark.parametrize("bad, n_paths", [(4096.5, 10), (True, 1)], ids=["float", "bool"])
def test_bad_chunk_size_on_a_small_run(bad, n_paths, quad, x0):
    with pytest.raises(ValueError, match=r"`chunk_size` must be a positive integer or None"):
        ss.run(quad, ss.SGD(0.1), x0, steps=2, n_paths=n_paths, chunk_size=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True, None])
def test_bad_seed(bad, quad, x0):
    with pytest.raises(ValueError, match=rf"`seed` must be an integer >= 0 or a torch.Generator, got seed={bad!r}"):
        ss.run(quad, ss.SGD(0.1), x0, steps=2, seed=bad)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_bad_max_norm(bad, quad, x0):
    with pytest.raises(ValueError, match=rf"`max_norm` must be a finite number > 0, got max_norm={bad!r}"):
        ss.run(quad, ss.SGD(0.1), x0, steps=2, max_norm=bad)


@pytest.mark.parametrize("bad", [math.nan, -math.inf], ids=["nan", "-inf"])
def test_non_finite_max_norm_other_than_inf(bad, quad, x0):
    with pytest.raises(ValueError, match=r"`max_norm`"):
        ss.run(quad, ss.SGD(0.1), x0, steps=2, max_norm=bad)


@pytest.mark.parametrize("bad", ["hessian", "Loss", ["loss", "gradnorm"], [3]])
def test_unknown_observable(bad, quad, x0):
    with pytest.raises(ValueError, match=r"`observables` entries must be one of \('loss', 'grad_norm', 'x_norm', "
                                         r"'lambda_max'[^)]*\) or a callable"):
        ss.run(quad, ss.SGD(0.1), x0, steps=2, observables=bad)


def test_problem_and_method_types(quad, x0):
    with pytest.raises(TypeError, match=r"`problem` must be an sde_sam Problem, got Tensor"):
        ss.run(torch.eye(3, dtype=F64), ss.SGD(0.1), x0, steps=2)
    with pytest.raises(TypeError, match=r"`method` must be an sde_sam Method \(SGD, USAM, SAM, ...\), got str"):
        ss.run(quad, "sam", x0, steps=2)
    with pytest.raises(TypeError, match=r"`method` must be an sde_sam Method .*got type"):
        ss.run(quad, ss.SAM, x0, steps=2)  # the class, not an instance
    with pytest.raises(TypeError, match=r"`problem` must be an sde_sam Problem, got SAM"):
        ss.run(ss.SAM(0.1, 0.1), quad, x0, steps=2)  # swapped


def test_steps_is_keyword_only(quad, x0):
    with pytest.raises(TypeError, match=r"positional argument"):
        ss.run(quad, ss.SGD(0.1), x0, 10)


def test_zero_dim_x0_on_finite_sum_without_d():
    prob = FiniteSum(lambda x, s: (s * x).sum() ** 2, torch.ones(4, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"`x0` must have shape"):
        ss.run(prob, ss.SGD(0.1), torch.tensor(1.0, dtype=F64), steps=2)


def test_validation_happens_before_any_work(quad, x0):
    # A bad argument late in the list must fail fast, not after a long run.
    with pytest.raises(ValueError, match="observables"):
        ss.run(quad, ss.SGD(0.1), x0, steps=10**9, n_paths=10**6, observables=("nope",))
