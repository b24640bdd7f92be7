"""Eigenvalue filters (Bolte, Le & Pauwels 2025; MATH §2.1, §7): exact on quadratics for every method with and
without momentum over a grid of (lr, rho, beta); the Nesterov filter's Jury derivation; every converged run
of the filters study inside its method's filter, and Two-step/Hessian USAM never at the saddle USAM stops at."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import experiments
import sde_sam as ss
from conftest import methods
from sde_sam import theory

F64 = torch.float64


def _methods(lr: float, rho: float, beta: float, nesterov: bool) -> list[ss.Method]:
    """Every row of the method table that declares a Jacobian factor, at these hyper-parameters, and with weight
    decay (which adds itself to the factor, MATH §2.3)."""
    out = []
    for m in methods():
        if m.jacobian_factor() is None or m.momentum or m.weight_decay or type(m) in {type(o) for o in out}:
            continue
        m = dataclasses.replace(m, lr=lr, momentum=beta, nesterov=nesterov, **({"rho": rho} if m.perturbs else {}))
        out += [m, dataclasses.replace(m, weight_decay=0.3 / lr)]
    assert {type(m) for m in out} == {ss.SGD, ss.USAM, ss.TwoStepUSAM, ss.HessianUSAM}, out
    return out


GRID = [(lr, rho, beta, nest) for lr in (0.1, 0.03) for rho in (0.05, 0.5) for beta in (0.0, 0.5, 0.9)
        for nest in ((False, True) if beta else (False,))]


def _candidates(method: ss.Method, frac: float = 0.05) -> np.ndarray:
    """Eigenvalues just inside and just outside every finite end of the method's filter intervals."""
    out = []
    for lo, hi in theory.filter_intervals(method):
        w = (hi - lo) if math.isfinite(hi - lo) else 2 * abs(lo if math.isfinite(lo) else hi)
        for end, inward in ((lo, 1.0), (hi, -1.0)):
            if math.isfinite(end):
                out += [end + inward * frac * w, end - inward * frac * w]
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("lr, rho, beta, nesterov", GRID)
def test_filters_are_exact_on_quadratics(lr, rho, beta, nesterov):
    """f = ½ Σ λᵢ xᵢ² (full batch, one coordinate per candidate λ): each coordinate of the run converges iff
    λ passes the method's filter, and otherwise grows."""
    for method in _methods(lr, rho, beta, nesterov):
        lams = _candidates(method)
        predicted = theory.method_filter(method, lams)
        assert predicted.any() and (~predicted).any(), method  # both sides are tested
        prob = ss.Quadratic(torch.diag(torch.tensor(lams, dtype=F64)))
        x, state = torch.ones(1, len(lams), dtype=F64), None
        draws = torch.zeros(1, len(lams), dtype=F64)
        for _ in range(800):
            x, state = ss.step(prob, method, x, draws, state=state)
        size = x[0].abs().numpy()
        assert np.isfinite(size).all(), method
        assert (size[predicted] < 1e-2).all(), (method, lams[predicted], size[predicted])
        assert (size[~predicted] > 1e2).all(), (method, lams[~predicted], size[~predicted])


# -- closed forms ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_nesterov_filter_is_the_jury_region(beta):
    """Spectral radius of the linearised Nesterov step [[1-(1+β)ηλ, -ηβ²], [λ, β]] on (x, u) is <= 1 exactly
    on 0 <= λ <= 2(1+β)/((1+2β)η)."""
    lr = 0.1
    edge = 2 * (1 + beta) / ((1 + 2 * beta) * lr)
    for lam in np.linspace(-0.5 * edge, 1.5 * edge, 401):
        J = np.array([[1 - (1 + beta) * lr * lam, -lr * beta**2], [lam, beta]])
        radius = max(abs(np.linalg.eigvals(J)))
        if abs(lam) > 1e-9 and abs(lam - edge) > 1e-9:
            assert (radius <= 1 + 1e-12) == bool(theory.nesterov_filter(lr, beta, lam)), (lam, radius)
    assert theory.nesterov_filter(lr, beta, edge) and not theory.nesterov_filter(lr, beta, edge * (1 + 1e-9))


def test_named_filters_agree_with_method_filter():
    lams = np.linspace(-15, 30, 1001)
    lr, rho, beta = 0.1, 0.3, 0.6
    pairs = [
        (theory.gd_filter(lr, lams), ss.SGD(lr)),
        (theory.heavy_ball_filter(lr, beta, lams), ss.SGD(lr, momentum=beta)),
        (theory.nesterov_filter(lr, beta, lams), ss.SGD(lr, momentum=beta, nesterov=True)),
        (theory.usam_discrete_converges(lr, rho, lams), ss.USAM(lr, rho)),
        (theory.usam_heavy_ball_filter(lr, rho, beta, lams), ss.USAM(lr, rho, momentum=beta)),
        (theory.two_step_usam_filter(lr, rho, lams), ss.TwoStepUSAM(lr, rho)),
        (theory.two_step_usam_filter(lr, rho, lams, beta=beta, nesterov=True), ss.TwoStepUSAM(lr, rho, momentum=beta, nesterov=True)),
        (theory.hessian_usam_filter(lr, rho, lams), ss.HessianUSAM(lr, rho)),
        (theory.hessian_usam_filter(lr, rho, lams, beta=beta), ss.HessianUSAM(lr, rho, momentum=beta)),
        (theory.usam_discrete_converges(lr, rho, lams), ss.UnifiedSAM(lr, rho, 0.0)),
        (theory.gd_filter(lr, lams), ss.SAM(lr, 0.0)),
    ]
    for named, method in pairs:
        assert np.array_equal(named, theory.method_filter(method, lams)), method
        inside = np.zeros_like(lams, dtype=bool)
        for lo, hi in theory.filter_intervals(method):
            inside |= (lams >= lo - 1e-9) & (lams <= hi + 1e-9)
        assert np.array_equal(inside, named), method


def test_filter_intervals_closed_forms():
    assert theory.filter_intervals(ss.SGD(0.1)) == [(0.0, 20.0)]
    [(lo, hi)] = theory.filter_intervals(ss.SGD(0.1, momentum=0.5, nesterov=True))
    assert lo == 0 and hi == pytest.approx(15.0, rel=1e-12)
    (a, b), (c, e) = theory.filter_intervals(ss.USAM(0.01, 0.1))  # MATH §8: USAM edge 40
    assert (b, c) == (pytest.approx(-10.0, rel=1e-12), 0.0) and e == pytest.approx(40.0, rel=1e-12)
    assert a == pytest.approx((-1 - math.sqrt(1 + 8 * 0.1 / 0.01)) / 0.2, rel=1e-12)
    for m in (ss.TwoStepUSAM(0.1, 1.5), ss.HessianUSAM(0.1, 1.5)):  # no negative curvature passes
        [(lo, hi)] = theory.filter_intervals(m)
        assert lo == 0.0 and float(theory.jacobian_eigenvalue(m, hi)) == pytest.approx(20.0, rel=1e-10)
    assert theory.method_filter(ss.USAM(0.1, 1.5), -1.0) and not theory.method_filter(ss.TwoStepUSAM(0.1, 1.5), -1.0)
    assert not theory.method_filter(ss.HessianUSAM(0.1, 1.5), -1.0)


def test_method_filter_tolerance_and_backends():
    m = ss.SGD(0.1)
    assert not theory.method_filter(m, -1e-9) and theory.method_filter(m, -1e-9, tol=1e-6)
    assert not theory.method_filter(m, 20.001) and theory.method_filter(m, 20.001, tol=1e-4)
    t = theory.method_filter(m, torch.tensor([1.0, 30.0], dtype=F64))
    assert isinstance(t, torch.Tensor) and t.tolist() == [True, False]
    assert float(theory.jacobian_eigenvalue(ss.HessianUSAM(0.1, 0.5), 2.0)) == 2.0 * (1 + 0.5 * 4)


@pytest.mark.parametrize("call, msg", [
    (lambda: theory.method_filter(ss.SAM(0.1, 0.1), 1.0), r"`method` must be SGD, USAM .* SAM's normalised perturbation"),
    (lambda: theory.jacobian_eigenvalue(ss.EigenSAM(0.1, 0.1), 1.0), r"EigenSAM's normalised perturbation"),
    (lambda: theory.method_filter(ss.USAM(0.1), 1.0), r"`rho` is required for USAM"),
    (lambda: theory.method_filter(ss.SGD(0.1), 1.0, tol=1.5), r"`tol` must be a number in \[0, 1\), got tol=1.5"),
    (lambda: theory.nesterov_filter(0.1, 1.0, 1.0), r"`beta` must be in \[0, 1\), got beta=1"),
    (lambda: theory.two_step_usam_filter(0.1, -0.1, 1.0), r"`rho` must be a finite number >= 0, got rho=-0.1"),
    (lambda: theory.hessian_usam_filter(0.0, 0.1, 1.0), r"`lr` must be a finite number > 0, got lr=0"),
    (lambda: theory.momentum_edge(0.1, 0.5, nesterov="yes"), r"`nesterov` must be True or False"),
    (lambda: theory.jacobian_eigenvalue(ss.SGD(0.1), math.nan), r"`lam` must be finite, got lam=nan"),
])
def test_filter_validation(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


# -- the study ----------------------------------------------------------------------------------------------------
def _study():
    return experiments.get("eigenvalue_filters").module


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    module = _study()
    cfg = module.Config(n_starts=40, steps=1500, saddle_steps=2000)
    out = module.run(cfg, tmp_path_factory.mktemp("results"))
    import pandas as pd
    return pd.read_csv(out / "runs.csv"), pd.read_csv(out / "summary.csv"), cfg


@pytest.mark.slow
def test_every_converged_run_lies_inside_its_filter(study_runs):
    runs, summary, cfg = study_runs
    conv = runs[runs["status"].isin(["minimum", "saddle"])]
    assert len(conv) > 0.5 * len(runs[runs["study"] == "filter"])  # most runs converge; the rest are counted
    assert (conv["inside_filter"] == 1).all(), conv[conv["inside_filter"] != 1]
    assert (summary["n_runs"] == summary[["n_minimum", "n_saddle", "n_not_converged", "n_diverged"]].sum(axis=1)).all()
    # the filters bind: the sharpest converged runs come close to each method's edge, on the hyperbola
    hyp = summary[(summary["problem"] == "hyperbola") & (summary["study"] == "filter")]
    assert (hyp["lambda_max_max"] > 0.6 * hyp["lambda_edge"]).all(), hyp


def test_variants_never_stop_at_the_saddle_usam_stops_at(study_runs):
    runs, summary, cfg = study_runs
    sad = summary[summary["study"] == "saddle"].set_index(["problem", "method"])
    for problem in cfg.problems:
        assert sad.loc[(problem, "USAM"), "frac_saddle"] > 0.9
        assert sad.loc[(problem, "TwoStepUSAM"), "n_saddle"] == 0
        assert sad.loc[(problem, "HessianUSAM"), "n_saddle"] == 0
        assert sad.loc[(problem, "HessianUSAM"), "n_minimum"] > 0.9 * sad.loc[(problem, "HessianUSAM"), "n_runs"]
