"""Real data, offline (issue 9): scikit-learn's digits and breast-cancer sets as seeded, standardised
subsets, the ready-made MLP problems on them, and the digits edge-of-stability study."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import experiments
import sde_sam as ss
from experiments.figures import make_figures
from sde_sam import problems as P

F64 = torch.float64


@pytest.mark.parametrize("load,total,features,classes", [(P.digits, 1797, 64, 10), (P.breast_cancer, 569, 30, 2)])
def test_subsets_are_seeded_standardised_and_labelled(load, total, features, classes):
    a, t = load(100, seed=3)
    assert a.shape == (100, features) and a.dtype == F64 and t.shape == (100,) and t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) < classes
    std = a.std(dim=0, unbiased=False)
    torch.testing.assert_close(a.mean(dim=0), torch.zeros(features, dtype=F64), rtol=0, atol=1e-12)
    assert bool(((std - 1).abs() < 1e-12).logical_or(std == 0).all())  # constant pixels stay at zero
    b, u = load(100, seed=3)
    assert torch.equal(a, b) and torch.equal(t, u)
    assert not torch.equal(load(100, seed=4)[0], a)
    assert load(None)[0].shape == (total, features)
    assert load(10, dtype=torch.float32)[0].dtype == torch.float32


def test_dataset_arguments_are_checked():
    with pytest.raises(ValueError, match=r"`n` must be <= 1797 \(the size of the digits data set\), got n=2000"):
        P.digits(2000)
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 1, got n=0"):
        P.breast_cancer(0)
    with pytest.raises(ValueError, match=r"`loss` must be one of \('cross_entropy', 'mse'\), got loss='hinge'"):
        P.digits_mlp(16, loss="hinge")
    with pytest.raises(ValueError, match=r"`noise_cov` applies to the full-batch problem \(batch_size=None\)"):
        P.digits_mlp(16, batch_size=4, noise_cov=0.1)
    with pytest.raises(ValueError, match=r"`hidden` must be an integer >= 1, got hidden=0"):
        P.breast_cancer_mlp(16, hidden=0)


@pytest.mark.slow
def test_ready_made_mlps_are_module_problems():
    prob = P.digits_mlp(64, hidden=8, batch_size=4)
    assert isinstance(prob, P.ModuleFiniteSum) and prob.d == 65 * 8 + 10 * 9 and prob.n == 64
    full = P.digits_mlp(64, hidden=8, batch_size=None)
    assert isinstance(full, P.ModuleObjective) and full.noise_sqrt is None
    torch.testing.assert_close(full.loss(full.x_init[None]), prob.loss(prob.x_init[None]), rtol=1e-14, atol=0)
    assert torch.equal(P.digits_mlp(64, hidden=8).x_init, prob.x_init)  # seeded weights
    assert not torch.equal(P.digits_mlp(64, hidden=8, seed=1).x_init, prob.x_init)
    a, t = P.digits(64)
    model = prob.to_module(prob.x_init)
    torch.testing.assert_close(F.cross_entropy(model(a), t), prob.loss(prob.x_init[None])[0], rtol=1e-14, atol=0)
    mse = P.digits_mlp(64, hidden=8, loss="mse", batch_size=None)
    torch.testing.assert_close(mse.loss(mse.x_init[None])[0], F.mse_loss(model(a), F.one_hot(t, 10).to(F64)),
                               rtol=1e-14, atol=0)
    logistic = P.breast_cancer_logistic(64, batch_size=None)
    assert logistic.d == 62
    # Convex: the Hessian of logistic regression is PSD (smallest eigenvalue of the dense Hessian >= 0).
    x = logistic.x_init[None]
    H = torch.stack([logistic.hvp(x, e[None])[0] for e in torch.eye(62, dtype=F64)])
    assert float(torch.linalg.eigvalsh(0.5 * (H + H.T)).min()) > -1e-12
    cancer = P.breast_cancer_mlp(64, hidden=4, batch_size=8)
    traj = ss.run(cancer, ss.SAM(0.1, 0.05), cancer.x_init, steps=20, n_paths=4, seed=0)
    assert traj.n_diverged == 0 and float(traj.mean("loss")[-1]) < float(traj.mean("loss")[0])


# -- the digits edge-of-stability study (experiments/own_model.py) ------------------------------------------------
def _own_model():
    return experiments.get("own_model").module


@pytest.mark.slow
def test_digits_sharpness_settles_at_the_gd_and_usam_edges(tmp_path):
    """Quick config: late-phase mean sharpness within 3% of 2/lr (GD) and of the USAM edge (USAM)."""
    om = _own_model()
    out = om.run(om.Config.quick(), tmp_path)
    import pandas as pd
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    for name in ("GD", "USAM"):
        assert abs(summary.loc[name, "rel_error_pct"]) < 3.0, summary
        assert summary.loc[name, "lambda_initial"] < 0.8 * summary.loc[name, "edge_late_mean"]  # it had to rise
    assert summary.loc["GD", "edge_late_mean"] == pytest.approx(1 / om.Config.quick().lr * 2)
    assert summary.loc["USAM", "edge_late_mean"] == pytest.approx(float(ss.theory.usam_edge(om.Config.quick().lr,
                                                                                             om.Config.quick().rho_usam)))
    sam = summary.loc["SAM"]
    assert sam["lambda_late_mean"] < summary.loc["USAM", "lambda_late_mean"]  # SAM sits lowest
    assert abs(sam["rel_error_pct"]) < 10.0


@pytest.mark.slow
def test_own_model_tiny_run_and_figure(tmp_path):
    om = _own_model()
    out = om.run(om.Config.tiny(), tmp_path)
    import pandas as pd
    tr = pd.read_csv(out / "trajectory.csv")
    assert set(tr["method"]) == {"GD", "USAM", "SAM"} and not tr["diverged"].any()
    assert (pd.read_csv(out / "summary.csv")["edge_late_mean"] > 0).all()
    paths = make_figures(tmp_path, tmp_path / "figs", only=["own_model"])
    assert [p.name for p in paths] == ["own_model.png"] and paths[0].stat().st_size > 10_000
