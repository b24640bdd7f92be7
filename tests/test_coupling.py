"""Coupled weak-error estimates (MATH §5.1): the discrete method and its SDE on the same Gaussian draws.

Checked: with f = 0 the coupled paths coincide exactly (the bridge carries -sqrt(lr)·ξ, the minus sign
included); on quadratics both coupled marginals are the exact laws (discrete recursion, Euler–Maruyama
moments), for plain and momentum methods; on a non-quadratic problem the coupled and independent studies
give the same gaps while the coupled SE is >= 10x smaller at the smallest lr; models and problems outside
the coupling are refused with the reason.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

import sde_sam as ss
from conftest import momentum_forms, rows

import sde_sam.weak as wem
import sde_sam.weak.coupling as coupling
F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:lrs=.*a slope needs at least two")



def quartic(x):
    return 0.25 * (x**4).sum() + 0.5 * (x**2).sum()


def em_means(problem, method, x0, table: pd.DataFrame, dt_ratio: int = 10) -> pd.Series:
    """Exact E φ under Euler–Maruyama (dt = lr/dt_ratio) of each row's OU model, momentum scaling included."""
    H, x, out = problem.H.numpy(), x0.numpy(), pd.Series(np.nan, index=table.index)
    s = 1.0 / (1.0 - method.momentum)
    for (lr, rho, model), group in table.groupby(["lr", "rho", "model"]):
        A, Q = wem._linear_model(problem, rho, 0 if model == "order 0" else 1, "factor")
        A, Q = s * A, s**2 * Q
        ks = [int(round(t / lr * dt_ratio)) for t in sorted(group["time"].unique())]
        dt = lr / dt_ratio
        ms, Cs = wem._linear_recursion(np.eye(len(x)) - dt * A, dt * lr * Q, x, ks)
        vals = wem._quad_expectations(["loss", "x_norm_sq"], H, ms, Cs)
        for tf, g in group.groupby("test_function"):
            out[g.index] = vals[tf]
    return out


def test_bridge_makes_paths_identical_without_drift():
    """f = 0: discrete x_k = x0 - lr Σ Z_j and the SDE's X = x0 + sqrt(lr) Σ^{1/2} W coincide when each
    window's increments sum to -sqrt(lr)·ξ_k: the coupling's sign and scale, path by path."""
    prob = ss.Quadratic(torch.zeros(2, 2, dtype=F64), noise_cov=torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64))
    m = ss.SGD(0.05)
    sde = ss.sde_model(prob, m, order=0)
    times, disc, sde_vals, div = coupling.coupled_paths(
        prob, m, sde, torch.tensor([0.3, -0.2], dtype=F64), steps=20, every=5, dt_ratio=7, n_paths=64, seed=1,
        observables=[lambda x: x[:, 0], lambda x: x[:, 1]])
    assert not div.any() and np.allclose(times, [0.0, 0.25, 0.5, 0.75, 1.0])
    for name in disc:
        assert disc[name].std() > 0.05  # the paths do move
        torch.testing.assert_close(disc[name], sde_vals[name], rtol=0, atol=1e-12)


# em_means knows the OU models of SGD and USAM: the plain affine rows that do not normalise.
OU_ROWS = ("plain", "affine")
NOT_OU = ("normalises",)


@pytest.mark.parametrize("method", momentum_forms(*OU_ROWS, without=NOT_OU))  # each plain, heavy ball, Nesterov
def test_coupled_marginals_are_the_exact_laws(quad, x0, method):
    """Every recorded time: the discrete means within 4 SE of the exact recursion (momentum: the 2d system),
    the SDE means within 4 SE of Euler–Maruyama's exact moments; the coupled gap within 4 of its SEs of the
    exact discrete-minus-EM gap, that SE several times below the independent runs' root sum of squares."""
    kw = dict(lrs=[0.1, 0.05], horizon=0.3, x0=x0, test_functions=["loss", "x_norm_sq"], record_every=1,
              sde_order=[0] if method.name == "SGD" else [0, 1])
    ex = wem.weak_error(quad, method, mode="exact", solver_check=False, **kw)
    c = wem.weak_error(quad, method, coupling=True, n_paths=8192, solver_check=False, **kw)
    assert c.mode == "monte_carlo" and c.coupled and c.config["coupling"] is True
    cols = ["lr", "model", "test_function", "time"]
    assert (c.table[cols] == ex.table[cols]).all().all()
    later = c.table["time"] > 0
    assert (((c.table["discrete_mean"] - ex.table["discrete_mean"]) / c.table["discrete_se"])[later].abs() < 4).all()
    em = em_means(quad, method, x0, ex.table)
    assert (((c.table["sde_mean"] - em) / c.table["sde_se"])[later].abs() < 4).all()
    exact_gap = ex.table["discrete_mean"] - em
    assert (((c.table["gap"] - exact_gap) / c.table["gap_se"])[later].abs() < 4).all()
    independent = np.hypot(c.table["discrete_se"], c.table["sde_se"])
    own = c.table["model"] == ("order 0" if method.name == "SGD" else "order 1")  # the model made for the method
    # With momentum the buffer spreads each draw over ~1/(1-β) steps while the SDE takes it in one window:
    # the coupling stays exact in law but is looser.
    gain = 3 if method.momentum == 0 else 1.3
    assert (independent / c.table["gap_se"])[later & own & (c.table["lr"] == 0.05)].min() > gain
    assert (independent / c.table["gap_se"])[later].min() > 1.0  # never worse than independent runs


@pytest.mark.slow
def test_coupled_and_independent_agree_on_a_quartic_with_10x_smaller_se():
    """MATH §5.1's probe, smaller: USAM on f = x⁴/4 + x²/2 (an ss.Objective, autodiff derivatives), σ = 0.5,
    ρ = 0.5·√η, φ = x², equal paths: the same gaps within their SEs, and at the smallest lr the coupled SE is
    >= 10x smaller."""
    prob = ss.Objective(quartic, 1, noise_cov=0.25, dtype=F64)
    kw = dict(lrs=[0.1, 0.05, 0.025], horizon=0.5, x0=torch.ones(1, dtype=F64), n_paths=4096, seed=2,
              rho=lambda lr: 0.5 * lr**0.5, test_functions=["x_norm_sq"], solver_check=False, progress=False)
    u = wem.weak_error(prob, ss.USAM(0.1, rho=0.1), **kw)
    c = wem.weak_error(prob, ss.USAM(0.1, rho=0.1), coupling=True, **kw)
    later = u.table["time"] > 0
    z = (u.table["gap"] - c.table["gap"]) / np.hypot(u.table["gap_se"], c.table["gap_se"])
    assert z[later].abs().max() < 4
    gu, gc = u.max_gaps(), c.max_gaps()
    assert ((gu["gap"] - gc["gap"]).abs() < 3 * np.hypot(gu["gap_se"], gc["gap_se"])).all()
    ratio = (gu["gap_se"] / gc["gap_se"]).to_numpy()
    assert ratio[-1] >= 10, ratio
    fit = c.weak_order("x_norm_sq")
    assert fit.ci_low > 0.5 and not fit.inconclusive, fit


@pytest.mark.slow
def test_coupled_order_at_ten_times_smaller_lrs():
    """The README demo (USAM on diag(1, 4), Σ = I, ρ = 0.5·√η, T = 1/2) at lrs 10x below the CLI's: coupled,
    4,096 paths, every point above the floor; order 1's CI excludes 1/2, order 0's slope is near 1/2."""
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 4.0], dtype=F64)), noise_cov=1.0)
    study = wem.weak_error(prob, ss.USAM(0.1, rho=0.1), lrs=[0.01, 0.005, 0.0025, 0.00125], horizon=0.5,
                           x0=torch.full((2,), 0.5, dtype=F64), n_paths=4096, rho=lambda lr: 0.5 * lr**0.5,
                           sde_order=[0, 1], test_functions=["loss"], coupling=True, solver_check=False,
                           progress=False)
    one, zero = study.weak_order("loss", "order 1"), study.weak_order("loss", "order 0")
    assert one.ci_low > 0.5 and abs(one.slope - 1) < 0.25, one
    assert abs(zero.slope - 0.5) < 0.15, zero


# -- what the coupling does not accept ------------------------------------------------------------------------
@pytest.mark.parametrize("method", rows(without=("affine", "micro_batch")))  # micro-batches: no FiniteSum here
def test_coupling_refuses_every_method_not_affine_in_the_noise(quad, x0, method):
    kw = dict(lrs=[0.1, 0.05], horizon=0.2, x0=x0, n_paths=16, test_functions=["loss"], coupling=True)
    with pytest.raises(ValueError, match=f"the method is {method.name}: its effective gradient is not affine"):
        wem.weak_error(quad, method, **kw)


@pytest.mark.parametrize("method, kwargs, match", [
    (ss.USAM(0.1, rho=0.1), dict(diffusion="paper"), "diffusion='paper' uses an eigen-factor"),
    (ss.USAM(0.1, rho=0.1), dict(increments="two_point"), "needs Gaussian increments"),
    (ss.USAM(0.1, rho=0.1), dict(mode="exact"), "mode='exact' has none"),
    (ss.USAM(0.1, rho=0.1), dict(coupling="yes"), "`coupling` must be True or False"),
])
def test_coupling_refusals(quad, x0, method, kwargs, match):
    kw = dict(lrs=[0.1, 0.05], horizon=0.2, x0=x0, n_paths=16, test_functions=["loss"], coupling=True) | kwargs
    with pytest.raises(ValueError, match=match):
        wem.weak_error(quad, method, **kw)


def test_coupling_refuses_models_and_problems_without_a_shared_gaussian():
    prob = ss.Objective(quartic, 1, noise_cov=0.25, dtype=F64)
    with pytest.raises(ValueError, match="order 2 model of USAM on this problem takes its expectations by"):
        wem.weak_error(prob, ss.USAM(0.1, rho=0.1), lrs=[0.1], horizon=0.2, x0=torch.ones(1, dtype=F64),
                       n_paths=16, sde_order=2, coupling=True)
    fs = ss.problems.linear_regression()
    with pytest.raises(ValueError, match="FiniteSum: its gradient noise is not additive Gaussian"):
        wem.weak_error(fs, ss.SGD(0.1), lrs=[0.1], horizon=0.2, x0=torch.zeros(fs.d, dtype=fs.dtype), n_paths=16,
                       coupling=True)


def test_coupled_solver_check_and_resume(quad, x0, tmp_path):
    """Coupled cells are independent too: the solver check is the difference of two coupled gaps (dt/2 and
    dt, own seeds) with its SE; a saved coupled study reloads bit for bit and a rerun loads every cell."""
    kw = dict(lrs=[0.1, 0.05], horizon=0.3, x0=x0, n_paths=2048, test_functions=["loss"], rho=0.1, coupling=True)
    study = wem.weak_error(quad, ss.USAM(0.1), results_dir=tmp_path, **kw)
    st = study.solver_table
    assert set(st.columns) >= {"lr", "model", "time", "diff", "diff_se", "dt"} and (st["diff_se"][st["time"] > 0] > 0).all()
    ex = wem.weak_error(quad, ss.USAM(0.1), lrs=[0.1, 0.05], horizon=0.3, x0=x0, test_functions=["loss"], rho=0.1)
    z = (st["diff"] - ex.solver_table["diff"]) / st["diff_se"]
    assert z[st["time"] > 0].abs().max() < 4
    again = wem.weak_error(quad, ss.USAM(0.1), results_dir=tmp_path, **kw)
    assert (again.cells["source"] == "loaded").all()
    pd.testing.assert_frame_equal(again.table, study.table, check_exact=True)
    loaded = wem.WeakErrorStudy.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.table, study.table, check_exact=True)
    assert "coupled" in repr(loaded) and "coupled" in loaded.summary()
    with pytest.raises(ValueError, match=r"differs in \['coupling', "), pytest.warns(UserWarning, match="ignores n_paths"):
        wem.weak_error(quad, ss.USAM(0.1), results_dir=tmp_path, **(kw | dict(coupling=False)))


@pytest.mark.slow
@pytest.mark.parametrize("method", momentum_forms(*OU_ROWS, without=NOT_OU, forms=("hb",)))
def test_momentum_order_with_ci_matches_exact(method):
    """Heavy ball against the momentum SDE (MATH §3.5), coupled Monte Carlo at lrs 0.01-0.0025: the 95% CI of
    the fitted order holds the exact slope over the same lrs (0.86-0.88 here: the buffer's initial layer
    makes the approach to 1 slow; the exact local slopes, tested in test_weak_error, rise to 0.94) and
    excludes 1/2."""
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5], dtype=F64)), noise_cov=1.0)
    kw = dict(lrs=[0.01, 0.005, 0.0025], horizon=1.0, x0=torch.ones(2, dtype=F64), test_functions=["loss"],
              solver_check=False)
    fit = wem.weak_error(prob, method, coupling=True, n_paths=4096, **kw).weak_order("loss")
    exact = wem.weak_error(prob, method, **kw).weak_order("loss")
    assert fit.ci_low <= exact.slope <= fit.ci_high and fit.ci_low > 0.5, (fit, exact)
