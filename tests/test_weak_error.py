"""Weak-error studies (MATH §5): exact moments first (no Monte-Carlo noise, tight bands), then Monte Carlo
against them within 4 SE, the Monte-Carlo floor, resuming, and a non-quadratic finite sum (slow)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.linalg import expm

import sde_sam as ss
import sde_sam.weak as wem
from conftest import by_id, momentum_forms
MonteCarloFloorError, WeakErrorStudy, weak_error = wem.MonteCarloFloorError, wem.WeakErrorStudy, wem.weak_error
import sde_sam.weak.cells as cells_mod

F64 = torch.float64
# Several tests use one lr on purpose; the up-front warning has its own test (pytest.warns still sees it).
pytestmark = pytest.mark.filterwarnings("ignore:lrs=.*a slope needs at least two")



def exact_study(problem, x0, **kw) -> WeakErrorStudy:
    kw.setdefault("test_functions", ["loss", "x_norm_sq"])
    return weak_error(problem, ss.USAM(0.1, rho=0.1), x0=x0, mode="exact", **kw)


# -- exact moments ------------------------------------------------------------------------------------------
def test_ou_moments_match_van_loan(spd):
    """Mean e^{-At}x0 and the Lyapunov covariance from the Van Loan block exponential (scipy)."""
    A, G = spd(3, seed=1).numpy(), np.random.default_rng(0).normal(size=(3, 3))
    Q, lr, x = G @ G.T, 0.05, np.array([1.0, -2.0, 0.5])
    times = np.array([0.0, 0.3, 1.7])
    m, C = wem._ou_moments(A, Q, lr, x, times)
    for t, mt, Ct in zip(times, m, C):
        block = expm(np.block([[A, lr * Q], [np.zeros((3, 3)), -A.T]]) * t)
        phi = block[3:, 3:].T  # e^{-At}
        np.testing.assert_allclose(mt, phi @ x, atol=1e-12)
        np.testing.assert_allclose(Ct, phi @ block[:3, 3:], atol=1e-12)


def test_ou_moments_with_a_zero_and_negative_eigenvalue():
    """A saddle direction (a < 0) grows; a = 0 gives the Brownian covariance η q t."""
    A, Q = np.diag([0.0, -0.5]), np.eye(2)
    m, C = wem._ou_moments(A, Q, 0.1, np.array([1.0, 1.0]), np.array([2.0]))
    np.testing.assert_allclose(m[0], [1.0, math.exp(1.0)])
    np.testing.assert_allclose(np.diag(C[0]), [0.1 * 2.0, 0.1 * np.expm1(2.0)], rtol=1e-12)


def test_exact_mode_matches_math_closed_forms(quad, x0):
    """MATH §3.4: E f(x_k) and E f(X_t) for diagonal H and Σ = σ² I, at every compared time."""
    lr, rho, lam = 0.05, 0.2, np.array([1.0, 4.0])
    with pytest.warns(UserWarning, match="a slope needs at least two learning rates"):
        study = exact_study(quad, x0, lrs=[lr], horizon=1.0, rho=rho, sde_order=1)
    t = study.table[study.table["test_function"] == "loss"]
    a, x = lam * (1 + rho * lam), x0.numpy()
    k = np.rint(t["time"].to_numpy() / lr)[:, None]
    q = (1 - lr * a) ** 2
    disc = 0.5 * (lam * (q**k * x**2 + lr**2 * (1 + rho * lam) ** 2 * (1 - q**k) / (1 - q))).sum(1)
    s = t["time"].to_numpy()[:, None]
    sde = (0.5 * lam * x**2 * np.exp(-2 * a * s) + lr / 4 * (1 + rho * lam) * (1 - np.exp(-2 * a * s))).sum(1)
    np.testing.assert_allclose(t["discrete_mean"], disc, rtol=1e-12)
    np.testing.assert_allclose(t["sde_mean"], sde, rtol=1e-12)
    assert (t["discrete_se"] == 0).all() and (t["gap_se"] == 0).all()


def test_exact_order_one_slope_with_fixed_rho(quad, x0):
    study = exact_study(quad, x0, lrs=[0.04, 0.02, 0.01, 0.005], horizon=1.0, rho=0.1, sde_order=1)
    for tf in ("loss", "x_norm_sq"):
        fit = study.weak_order(tf)
        assert abs(fit.slope - 1) < 0.1, fit
        # Exact points have no noise: no CI, and local slopes between consecutive lrs tending to 1.
        assert fit.fit == "exact" and math.isnan(fit.ci_low) and math.isnan(fit.ci_high) and not fit.inconclusive
        local = fit.local_slopes["slope"].to_numpy()
        assert len(local) == 3 and (np.abs(local - 1) < 0.1).all()
        assert abs(local[-1] - 1) <= abs(local[0] - 1)
        assert "no CI; local slopes" in str(fit)
    assert study.mode == "exact" and study.config["n_paths"] is None


def test_exact_sqrt_rho_separates_order_zero_from_order_one(quad, x0):
    """ρ = √η: the order-0 (SGD) SDE misses the O(ρ) drift ρH²x, so its weak order drops to 1/2."""
    study = exact_study(quad, x0, lrs=[0.04, 0.02, 0.01, 0.005], horizon=1.0, rho=lambda lr: lr**0.5,
                        sde_order=[0, 1])
    for tf in ("loss", "x_norm_sq"):
        assert abs(study.weak_order(tf, "order 0").slope - 0.5) < 0.1
        # Order 1 is exact in ρ here, its gap is η·C(ρ(η)) with C decreasing as ρ = √η shrinks: slope
        # a little above 1 at these η (1.15), tending to 1.
        assert 1.0 <= study.weak_order(tf, "order 1").slope < 1.2
    rhos = study.table.groupby("lr")["rho"].first()
    np.testing.assert_allclose(rhos.to_numpy(), rhos.index.to_numpy() ** 0.5)


def test_orders_one_two_and_exact_coincide_on_quadratics(quad, x0):
    study = exact_study(quad, x0, lrs=[0.05, 0.025], horizon=0.5, sde_order=[1, 2, "exact"])
    t = study.table
    for model in ("order 2", "exact"):
        np.testing.assert_array_equal(t[t["model"] == model]["gap"].to_numpy(), t[t["model"] == "order 1"]["gap"].to_numpy())


def test_exact_solver_error_is_small_and_halves(quad, x0):
    """Euler–Maruyama's own error (dt = lr/10 vs lr/20) is far below the gap, and first order in dt."""
    a = exact_study(quad, x0, lrs=[0.05, 0.025], horizon=0.5, dt_ratio=10)
    b = exact_study(quad, x0, lrs=[0.05, 0.025], horizon=0.5, dt_ratio=20)
    assert (a.solver_error["ratio"] < 0.1).all()
    ratio = a.solver_error["max_abs_diff"].to_numpy() / b.solver_error["max_abs_diff"].to_numpy()
    np.testing.assert_allclose(ratio, 2.0, rtol=0.1)


def test_exact_paper_diffusion_differs_by_rho_squared(quad, x0):
    """Σ + ρ(ΣH + HΣ) vs (I+ρH)Σ(I+ρH): they differ by ρ²HΣH, so the gaps differ by O(ρ²η)."""
    kw = dict(lrs=[0.05], horizon=0.5, rho=0.1)
    factor, paper = exact_study(quad, x0, **kw), exact_study(quad, x0, diffusion="paper", **kw)
    diff = (factor.table["sde_mean"] - paper.table["sde_mean"]).abs().max()
    assert 0 < diff < 0.1**2 * 0.05 * 16


def test_exact_mode_drops_non_quadratic_test_functions(quad, x0):
    with pytest.warns(UserWarning, match="dropping test functions"):
        study = weak_error(quad, ss.USAM(0.1, rho=0.1), lrs=[0.1, 0.05], horizon=0.5, x0=x0)
    assert study.mode == "exact" and study.test_functions == ["loss", "x_norm_sq"]


def test_exact_mode_warns_when_the_method_is_unstable(quad, x0):
    with pytest.warns(UserWarning, match="unstable at lr=0.5"):
        exact_study(quad, x0, lrs=[0.5, 0.1], horizon=1.0)


# -- Monte Carlo --------------------------------------------------------------------------------------------
def test_monte_carlo_agrees_with_exact_within_4_se(quad, x0):
    """Every point, both lrs and models: the discrete means within 4 SE of the exact recursion; the SDE
    means within 4 SE of the exact moments of Euler–Maruyama at the same dt (its bias is reported apart,
    in `solver_error`); the gaps within 4 SE plus that bias."""
    kw = dict(lrs=[0.1, 0.05], horizon=0.3, x0=x0, rho=lambda lr: 0.5 * lr**0.5, sde_order=[0, 1],
              test_functions=["loss", "x_norm_sq"], record_every=1)
    ex = weak_error(quad, ss.USAM(0.1), mode="exact", **kw)
    mc = weak_error(quad, ss.USAM(0.1), mode="monte_carlo", n_paths=20_000, solver_check=False, **kw)
    cols = ["lr", "model", "test_function", "time"]
    assert mc.mode == "monte_carlo" and (mc.table[cols] == ex.table[cols]).all().all()
    later = mc.table["time"] > 0
    z = (mc.table["discrete_mean"] - ex.table["discrete_mean"]) / mc.table["discrete_se"]
    assert z[later].abs().max() < 4
    em = _euler_maruyama_means(quad, x0, ex.table, dt_ratio=10)
    assert ((mc.table["sde_mean"] - em) / mc.table["sde_se"])[later].abs().max() < 4
    bias = (em - ex.table["sde_mean"]).abs()
    assert ((mc.table["gap"] - ex.table["gap"]).abs() <= 4 * mc.table["gap_se"] + bias)[later].all()
    assert (mc.table["gap"].abs() > 3 * mc.table["gap_se"])[later & (mc.table["model"] == "order 0")].mean() > 0.9


def _euler_maruyama_means(problem, x0, table: pd.DataFrame, dt_ratio: int) -> pd.Series:
    """Exact E φ under Euler–Maruyama of each row's OU model at dt = lr / dt_ratio (moment recursions)."""
    H, x, out = problem.H.numpy(), x0.numpy(), pd.Series(np.nan, index=table.index)
    for (lr, rho, model), rows in table.groupby(["lr", "rho", "model"]):
        A, Q = wem._linear_model(problem, rho, 0 if model == "order 0" else 1, "factor")
        ks = [int(round(t / lr * dt_ratio)) for t in sorted(rows["time"].unique())]
        dt = lr / dt_ratio
        ms, Cs = wem._linear_recursion(np.eye(2) - dt * A, dt * lr * Q, x, ks)
        vals = wem._quad_expectations(["loss", "x_norm_sq"], H, ms, Cs)
        for tf, g in rows.groupby("test_function"):
            out[g.index] = vals[tf]
    return out


def test_floor_refusal_says_how_many_paths(quad, x0):
    study = weak_error(quad, ss.USAM(0.1, rho=0.1), lrs=[0.1, 0.05, 0.025], horizon=0.3, x0=x0, n_paths=100,
                       mode="monte_carlo", test_functions=["loss"], solver_check=False)
    with pytest.raises(MonteCarloFloorError, match=r"below 3 standard errors .* about [\d,]+ paths") as info:
        study.weak_order("loss")
    pts = info.value.points
    bad = pts[pts["under_floor"]]
    assert len(bad) >= 1 and (bad["abs_gap"] < 3 * bad["gap_se"]).all()
    expected = math.ceil(100 * ((3 * bad["gap_se"] / bad["abs_gap"]) ** 2).max())
    assert info.value.paths_needed == expected > 100
    assert f"{expected:,}" in str(info.value)
    assert "no slope" in study.summary() or "refusing" in study.summary()


def test_seeds_follow_the_lr_value_not_its_position(quad, x0):
    kw = dict(horizon=0.2, x0=x0, n_paths=1024, mode="monte_carlo", test_functions=["loss"], solver_check=False)
    both = weak_error(quad, ss.USAM(0.1, rho=0.1), lrs=[0.1, 0.05], **kw).table
    one = weak_error(quad, ss.USAM(0.1, rho=0.1), lrs=[0.05], **kw).table
    pd.testing.assert_frame_equal(both[both["lr"] == 0.05].reset_index(drop=True), one)


class _Interrupt(Exception):
    pass


def test_interrupted_study_resumes_to_the_same_table(quad, x0, tmp_path, monkeypatch):
    """Cells that fail are reported by key (CellErrors) after the others finished and were saved; a rerun
    computes only the missing cells, and the study, saved and loaded, is bit-identical."""
    from sde_sam.executors import CellErrors

    kw = dict(lrs=[0.1, 0.05], horizon=0.2, x0=x0, n_paths=1024, mode="monte_carlo", sde_order=[0, 1],
              test_functions=["loss", "grad_norm_plus_x_norm"], rho=0.1)
    reference = weak_error(quad, ss.USAM(0.1), **kw)
    calls, real = [], cells_mod._mc_cell

    def flaky(spec):
        if len(calls) == 4:
            raise _Interrupt(spec.kind)
        calls.append(spec.kind)
        return real(spec)

    monkeypatch.setattr(cells_mod, "_mc_cell", flaky)
    with pytest.raises(CellErrors, match="_Interrupt") as info:
        weak_error(quad, ss.USAM(0.1), results_dir=tmp_path, **kw)
    assert len(info.value.errors) == 6
    assert len(list((tmp_path / "cells").glob("*.csv"))) == 4 and not list((tmp_path / "cells").glob("*.tmp"))

    def counting(spec):
        calls.append(spec.kind)
        return real(spec)

    monkeypatch.setattr(cells_mod, "_mc_cell", counting)
    calls.clear()
    resumed = weak_error(quad, ss.USAM(0.1), results_dir=tmp_path, **kw)
    assert len(calls) == 10 - 4  # 2 lrs x (discrete + 2 models + 2 solver checks), 4 were saved
    assert (resumed.cells["source"] == "loaded").sum() == 4
    pd.testing.assert_frame_equal(resumed.table, reference.table, check_exact=True)
    pd.testing.assert_frame_equal(resumed.solver_error, reference.solver_error, check_exact=True)

    # A lost cell is recomputed alone; the saved study reloads bit for bit (CSV read as round trip).
    next((tmp_path / "cells").glob("order1_lr=0.05_*.csv")).unlink()
    calls.clear()
    again = weak_error(quad, ss.USAM(0.1), results_dir=tmp_path, **kw)
    assert calls == ["order 1"]
    pd.testing.assert_frame_equal(again.table, reference.table, check_exact=True)
    loaded = WeakErrorStudy.load(tmp_path)
    for name in ("table", "solver_table", "cells"):
        pd.testing.assert_frame_equal(getattr(loaded, name), getattr(again, name), check_exact=True)
    assert loaded.config == again.config and loaded.mode == again.mode
    pd.testing.assert_frame_equal(loaded.max_gaps(), reference.max_gaps(), check_exact=True)
    assert loaded.weak_order("loss", "order 1").slope == reference.weak_order("loss", "order 1").slope


def test_results_dir_refuses_a_different_study(quad, x0, tmp_path):
    kw = dict(lrs=[0.1], horizon=0.2, x0=x0, mode="monte_carlo", test_functions=["loss"], solver_check=False)
    weak_error(quad, ss.USAM(0.1, rho=0.1), n_paths=1024, results_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match=r"different configuration \(differs in \['n_paths'\]\)"):
        weak_error(quad, ss.USAM(0.1, rho=0.1), n_paths=2048, results_dir=tmp_path, **kw)
    other = ss.Quadratic(torch.diag(torch.tensor([1.0, 3.0], dtype=F64)), noise_cov=1.0)
    with pytest.raises(ValueError, match="differs in \\['problem'\\]"):
        weak_error(other, ss.USAM(0.1, rho=0.1), n_paths=1024, results_dir=tmp_path, **kw)


# -- the result object --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_table_columns_relative_and_plot(quad, x0, tmp_path):
    study = exact_study(quad, x0, lrs=[0.1, 0.05, 0.025], horizon=0.5, sde_order=[0, 1])
    assert list(study.table.columns) == ["lr", "rho", "model", "test_function", "time", "discrete_mean",
                                         "discrete_se", "sde_mean", "sde_se", "gap", "gap_se",
                                         "gap_a", "gap_se_a", "gap_b", "gap_se_b"]
    assert study.table["gap_a"].isna().all()  # exact mode: no halves
    np.testing.assert_allclose(study.table["gap"], study.table["discrete_mean"] - study.table["sde_mean"])
    rel = study.relative("loss")
    assert list(rel.columns) == ["lr", "rho", "model", "relative_error"] and len(rel) == 6
    t = study.table[(study.table["lr"] == 0.05) & (study.table["model"] == "order 1")
                    & (study.table["test_function"] == "loss")]
    expected = t["gap"].abs().max() / t["discrete_mean"].abs().mean()
    got = rel[(rel["lr"] == 0.05) & (rel["model"] == "order 1")]["relative_error"].item()
    assert got == pytest.approx(expected)
    fig = study.plot()
    assert len(fig.axes) == 2
    fig.savefig(tmp_path / "weak_error.png")
    assert (tmp_path / "weak_error.png").stat().st_size > 10_000
    assert "order 1" in study.summary() and "slope" in study.summary()


def test_order_arguments(quad, x0):
    study = exact_study(quad, x0, lrs=[0.1, 0.05, 0.025], horizon=0.5, sde_order=[0, 1])
    with pytest.raises(ValueError, match="`model` must be given"):
        study.weak_order("loss")
    with pytest.raises(ValueError, match="`model` must be one of"):
        study.weak_order("loss", "order 2")
    with pytest.raises(ValueError, match="`test_fn` must be one of"):
        study.weak_order("grad_norm", "order 1")
    with pytest.raises(ValueError, match="at least 2 learning rates"):
        study.weak_order("loss", "order 1", lrs=[0.1])
    two = study.weak_order("loss", "order 1", lrs=[0.1, 0.05])
    assert two.dof == 0 and math.isnan(two.ci_low) and two.local_slopes["slope"].item() == pytest.approx(two.slope)


def test_old_name_order_warns_and_forwards(quad, x0):
    """``study.order`` (a second meaning of "order" beside the SDE model's) is ``weak_order`` for one release."""
    study = exact_study(quad, x0, lrs=[0.1, 0.05, 0.025], horizon=0.5, sde_order=[0, 1])
    with pytest.warns(DeprecationWarning, match=r"WeakErrorStudy.order is deprecated .* use WeakErrorStudy.weak_order"):
        old = study.order("loss", "order 1", lrs=[0.1, 0.05])
    new = study.weak_order("loss", "order 1", lrs=[0.1, 0.05])
    assert old.slope == new.slope and old.model == new.model == "order 1"
    pd.testing.assert_frame_equal(old.points, new.points)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="`model` must be given"):
        study.order("loss")


@pytest.mark.parametrize("kwargs, match", [
    (dict(sde_order=3), "`sde_order` must be one of"),
    (dict(sde_order=[1, 1]), "`sde_order` must be one of"),
    (dict(mode="fast"), "`mode` must be"),
    (dict(lrs=[]), "`lrs` must be a non-empty"),
    (dict(lrs=[0.1, -0.1]), "`lrs` must be a finite number > 0"),
    (dict(horizon=0.01), "`horizon` must be >= the largest lr"),
    (dict(rho=-1.0), "`rho` must be a finite number >= 0"),
    (dict(test_functions=["bogus"]), "`test_functions` entries must be"),
    (dict(x0=torch.zeros(3, 2, dtype=F64)), r"`x0` must have shape \(d,\)"),
    (dict(x0=torch.zeros(2)), "dtype"),
    (dict(n_paths=3), "`n_paths` must be an integer >= 4"),
    (dict(diffusion="sqrt"), "`diffusion` must be"),
])
def test_validation(quad, kwargs, match):
    args = dict(lrs=[0.1, 0.05], horizon=0.5, x0=torch.zeros(2, dtype=F64), test_functions=["loss"]) | kwargs
    with pytest.raises(ValueError, match=match):
        weak_error(quad, ss.USAM(0.1, rho=0.1), **args)


def test_exact_mode_needs_a_linear_gaussian_case(quad, x0):
    with pytest.raises(ValueError, match="linear-Gaussian case, but the method is SAM"):
        weak_error(quad, ss.SAM(0.1, rho=0.1), lrs=[0.1], horizon=0.5, x0=x0, mode="exact")
    with pytest.raises(TypeError, match="`problem` must be"):
        weak_error("quad", ss.SAM(0.1, rho=0.1), lrs=[0.1], horizon=0.5, x0=x0)


def test_dt_ratio_below_two_warns(quad, x0):
    with pytest.warns(UserWarning, match="dt_ratio=1: with dt >= lr"):
        exact_study(quad, x0, lrs=[0.1], horizon=0.5, dt_ratio=1)


# -- a non-quadratic finite sum (slow) ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", by_id("USAM", "SAM"))  # ρ set per lr by the study (seeds do not depend on it)
def test_teacher_student_first_order_models_have_order_one(method):
    """Mini-batch noise (B = 1) on a two-layer tanh network, ρ = 0.3·√η (the first-order SDEs' scaling,
    Compagnoni et al.), the paper's test function ‖∇f‖ + ‖x‖: the order-1 model's weak error has slope 1."""
    prob = ss.problems.teacher_student(n=8, d_in=2, width=2, seed=1)
    study = weak_error(prob, method, lrs=[0.1, 0.05, 0.025], horizon=0.3, x0=prob.x_init, n_paths=16_384,
                       rho=lambda lr: 0.3 * lr**0.5, sde_order=1, dt_ratio=4, solver_check=False,
                       test_functions=["grad_norm_plus_x_norm"], seed=0)
    fit = study.weak_order("grad_norm_plus_x_norm")  # raises if a point is under the Monte-Carlo floor
    assert fit.ci_low <= 1.0 <= fit.ci_high, (fit, fit.points)
    assert abs(fit.slope - 1) < 0.25, fit


# -- momentum (MATH §3.5): exact moments of the 2d linear system, and the momentum SDE ------------------------
# SGD and USAM (ρ = 0.2), heavy ball and Nesterov at β = 0.5.
@pytest.mark.parametrize("method", momentum_forms("plain", "affine", without=("normalises",), forms=("hb", "nesterov")))
def test_momentum_exact_local_slopes_tend_to_one(method):
    """Discrete SGD/USAM with momentum 0.5 against the OU model with A/(1-β), F/(1-β): the buffer's initial
    layer makes the pre-asymptotic slope small, but the local slopes rise monotonically towards 1."""
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5], dtype=F64)), noise_cov=1.0)
    study = weak_error(prob, method, lrs=[0.04, 0.02, 0.01, 0.005, 0.0025, 0.00125], horizon=1.0,
                       x0=torch.ones(2, dtype=F64), test_functions=["loss", "x_norm_sq"])
    assert study.mode == "exact"
    for tf in ("loss", "x_norm_sq"):
        local = study.weak_order(tf).local_slopes["slope"].to_numpy()
        assert np.all(np.diff(local) > 0) and 0.9 < local[-1] < 1.0, local


def test_momentum_exact_discrete_moments_match_simulation():
    """The 2d recursion of heavy ball (x, u) against heavy-ball paths stepped with the method's own update
    (the coupled runner's discrete side), within 4 SE at every time."""
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 4.0], dtype=F64)), noise_cov=0.5)
    x0 = torch.full((2,), 0.5, dtype=F64)
    method = ss.USAM(0.1, rho=0.2, momentum=0.7)
    kw = dict(lrs=[0.05], horizon=0.5, x0=x0, test_functions=["loss", "x_norm_sq"], record_every=1,
              solver_check=False)
    ex = weak_error(prob, method, **kw)
    mc = weak_error(prob, method, coupling=True, n_paths=8192, **kw)
    later = ex.table["time"] > 0
    z = (mc.table["discrete_mean"] - ex.table["discrete_mean"]) / mc.table["discrete_se"]
    assert z[later].abs().max() < 4


# -- usability ----------------------------------------------------------------------------------------------
def test_exact_mode_says_it_ignores_n_paths(quad, x0):
    with pytest.warns(UserWarning, match="ignores n_paths=5000"):
        study = exact_study(quad, x0, lrs=[0.1, 0.05], horizon=0.5, n_paths=5000)
    assert "n_paths not used" in study.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default n_paths does not warn
        exact_study(quad, x0, lrs=[0.1, 0.05], horizon=0.5)


def test_single_lr_says_a_slope_needs_two_up_front(quad, x0):
    with pytest.warns(UserWarning, match=r"lrs=\[0.1\]: a slope needs at least two"):
        study = exact_study(quad, x0, lrs=[0.1], horizon=0.5)
    assert len(study.max_gaps()) == 2 and "a slope needs at least two" in study.summary()
    assert "fit:" not in study.summary()


def test_repr_is_concise(quad, x0):
    study = exact_study(quad, x0, lrs=[0.1, 0.05], horizon=0.5, sde_order=[0, 1])
    text = repr(study)
    assert text.startswith("WeakErrorStudy(USAM, exact, lrs=[0.1, 0.05]") and "\n" not in text and len(text) < 200
    assert "discrete_mean" not in text


def test_figure_legend_outside_one_floor_entry_and_title(quad, x0, tmp_path):
    study = weak_error(quad, ss.USAM(0.1, rho=0.1), lrs=[0.1, 0.05, 0.025], horizon=0.3, x0=x0, n_paths=64,
                       mode="monte_carlo", sde_order=[0, 1], test_functions=["loss"], solver_check=False,
                       rho=lambda lr: 0.5 * lr**0.5)
    assert study.max_gaps()["under_floor"].sum() >= 2  # several points, two models, under the floor
    fig = study.plot()
    fig.savefig(tmp_path / "f.png")
    ax = fig.axes[0]
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels.count("below MC floor") == 1
    # The legend lies outside the data area (below the axes).
    renderer = fig._get_renderer()
    assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0 + 1
    title = fig._suptitle.get_text()
    assert "USAM" in title and "Quadratic" in title and r"$\rho = 0.5\,\eta^{0.5}$" in title


# -- executors (contract 5): the same table from any executor, cells independent ------------------------------
def _tiny(quad, x0, **kw):
    return weak_error(quad, ss.USAM(0.1), lrs=[0.1, 0.05], horizon=0.2, x0=x0, n_paths=1024, mode="monte_carlo",
                      sde_order=[0, 1], rho=0.1, test_functions=["loss", "grad_norm_plus_x_norm"], **kw)


def test_thread_pool_gives_the_same_table(quad, x0, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    reference = _tiny(quad, x0)
    with ThreadPoolExecutor(2) as pool:
        threaded = _tiny(quad, x0, executor=pool, results_dir=tmp_path)
    pd.testing.assert_frame_equal(threaded.table, reference.table, check_exact=True)
    pd.testing.assert_frame_equal(threaded.solver_table, reference.solver_table, check_exact=True)
    assert len(list((tmp_path / "cells").glob("*.csv"))) == 10 and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_process_pool_gives_the_same_table(quad, x0):
    """Cells pickle (problem, method, test functions) and compute from their own seeds in other processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    reference = _tiny(quad, x0, solver_check=False)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        remote = _tiny(quad, x0, solver_check=False, executor=pool)
    pd.testing.assert_frame_equal(remote.table, reference.table, check_exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["ASAM", "m-SAM", "multi-step", "weight decay"])
def test_new_options_first_order_models_have_order_one(which):
    """Issue 18: ASAM, m-SAM (m = B/4), multi-step SAM (q = 3) and SAM with weight decay against their order-1
    SDEs (the general construction, MATH §3.6), ρ = 0.3·√η: the slope's CI contains 1."""
    batch = 4 if which == "m-SAM" else 1
    prob = ss.problems.teacher_student(n=8, d_in=2, width=2, seed=1, batch_size=batch)
    method = {"ASAM": ss.ASAM(0.1, offset=0.1), "m-SAM": ss.SAM(0.1, micro_batch=1),
              "multi-step": ss.SAM(0.1, ascent_steps=3, ascent_step_size=0.15),
              "weight decay": ss.SAM(0.1, weight_decay=0.5)}[which]
    study = weak_error(prob, method, lrs=[0.1, 0.05, 0.025], horizon=0.3, x0=prob.x_init, n_paths=16_384,
                       rho=lambda lr: 0.3 * lr**0.5, sde_order=1, dt_ratio=4, solver_check=False,
                       test_functions=["grad_norm_plus_x_norm"], seed=0)
    fit = study.weak_order("grad_norm_plus_x_norm")
    assert fit.ci_low <= 1.0 <= fit.ci_high, (fit, fit.points)


@pytest.mark.slow  # a fresh interpreter (~5 s)
def test_old_module_path_warns_and_forwards():
    """``sde_sam.weak_error`` as a module path (the package before its rename to ``sde_sam.weak``) still imports for
    one release, with a DeprecationWarning, serving the same objects, never a second copy of a module; and
    ``ss.weak_error`` stays callable after such an import rebinds the name."""
    import subprocess
    import sys
    code = ("import warnings, sde_sam as ss, sde_sam.weak.exact as new\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    from sde_sam.weak_error import WeakErrorStudy\n"
            "    import sde_sam.weak_error.exact as old\n"
            "assert [x.category for x in w] == [DeprecationWarning] * 2, w\n"
            "assert 'sde_sam.weak' in str(w[0].message)\n"
            "assert WeakErrorStudy is ss.WeakErrorStudy and old._exact_applicable is new._exact_applicable\n"
            "assert callable(ss.weak_error) and ss.weak_error.WeakErrorStudy is ss.WeakErrorStudy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
