"""The m-sharpness study: its tiny configuration through the registry, its tables and columns, its figure, and
the pieces it computes checked against independent computations (the regulariser by hand, the trend's
weighted least squares against numpy, the summary's standard errors against pandas)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import experiments
from experiments import m_sharpness as study
from experiments.figures import m_sharpness as figure

COLUMNS = {
    "paths": {"model", "method", "m", "time", "step", "path", "loss", "lambda_max", "diverged"},
    "summary": {"model", "method", "m", "step", "time", "n_paths", "n_diverged", "loss_mean", "loss_se",
                "loss_initial", "lambda_max_mean", "lambda_max_se", "lambda_max_initial"},
    "trend": {"model", "observable", "slope_per_doubling", "slope_se", "m_low", "m_high", "diff_high_minus_low",
              "diff_se", "diff_in_se"},
    "trend_by_step": {"model", "observable", "slope_per_doubling", "slope_se", "m_low", "m_high",
                      "diff_high_minus_low", "diff_se", "diff_in_se", "step"},
    "regulariser": {"m", "penalty", "penalty_se", "how"},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    results = tmp_path_factory.mktemp("results")
    entry = experiments.get("m_sharpness")
    assert entry.run(entry.config("tiny"), results) == results / "m_sharpness"
    return results


def test_registered_with_its_tables_figure_and_page():
    entry = experiments.get("m_sharpness")
    assert entry.module is study and entry.figure_module is figure
    assert set(entry.tables) == set(COLUMNS) and entry.figures == ("m_sharpness",)
    assert (Path(__file__).resolve().parents[1] / "docs" / entry.doc).exists()


@pytest.mark.slow
def test_tiny_run_writes_every_table_with_its_columns(tiny):
    out = tiny / "m_sharpness"
    cfg = study.Config.tiny()
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["micro_batches"] == list(cfg.micro_batches)
    tables = {name: pd.read_csv(out / f"{name}.csv") for name in COLUMNS}
    for name, columns in COLUMNS.items():
        assert set(tables[name].columns) == columns, name
    paths = tables["paths"]
    # every model x (SGD + each m) x record x path, records at 0, steps/records, ..., steps
    n_records = cfg.records + 1
    assert len(paths) == len(study.MODELS) * (1 + len(cfg.micro_batches)) * n_records * cfg.n_paths
    assert sorted(paths["step"].unique()) == list(range(0, cfg.steps + 1, cfg.steps // cfg.records))
    assert set(paths["m"]) == {-1, *cfg.micro_batches} and set(paths["model"]) == set(study.MODELS)
    assert np.isfinite(paths[["loss", "lambda_max"]].to_numpy()).all() and not paths["diverged"].any()
    # all runs start at x_0: one initial loss and sharpness for every cell
    start = paths[paths["step"] == 0]
    assert np.allclose(start["loss"], start["loss"].iloc[0], rtol=0, atol=1e-12)
    assert np.allclose(start["lambda_max"], start["lambda_max"].iloc[0], rtol=0, atol=1e-9)
    # the summary's mean and SE against pandas on the last records
    summary = tables["summary"]
    last = paths[paths["step"] == cfg.steps]
    for (model, m), d in last.groupby(["model", "m"]):
        row = summary[(summary["model"] == model) & (summary["m"] == m)].iloc[0]
        assert row["lambda_max_mean"] == pytest.approx(d["lambda_max"].mean(), rel=1e-12)
        assert row["loss_se"] == pytest.approx(d["loss"].sem(), rel=1e-12)
    assert len(tables["trend"]) == len(study.MODELS) * len(study.OBSERVABLES)
    # the trend at the last record is the trend table
    by_step = tables["trend_by_step"]
    assert len(by_step) == cfg.records * len(tables["trend"])
    at_end = by_step[by_step["step"] == cfg.steps].drop(columns="step").reset_index(drop=True)
    pd.testing.assert_frame_equal(at_end, tables["trend"], check_exact=False, rtol=1e-12)


@pytest.mark.slow
def test_figure_draws_from_the_saved_tables(tiny, tmp_path):
    from sde_sam import plotting as pl

    pl.style()
    path = figure.m_sharpness(tiny, tmp_path)
    assert path == tmp_path / "m_sharpness.png" and path.stat().st_size > 10_000


def test_sam_rows_use_micro_batches_and_sgd_row_does_not():
    cfg = study.Config.tiny()
    assert study.method(cfg, None).name == "SGD"
    sam = study.method(cfg, 2)
    assert sam.micro_batch == 2 and sam.rho == cfg.rho and sam.lr == cfg.lr
    seeds = [spec["seed"] for spec in study.cell_specs(cfg)]
    assert len(set(seeds)) == len(seeds)  # independent cells: SEs of differences add in quadrature


def test_regulariser_against_a_hand_computation():
    """R_m(x_0): m = 1 is the mean of the n per-sample gradient norms (exact); for m > 1 the Monte Carlo value
    agrees with an independent Monte Carlo (other draws, torch.func-free plain autograd) within 4 SE; and
    m -> infinity is rho times the full gradient norm."""
    torch.set_num_threads(1)
    cfg = study.Config.tiny()
    prob = study.problem(cfg)
    reg = study.regulariser(cfg, prob).set_index("m")
    model = prob.to_module(prob.x_init)
    a, t = prob.data
    per_sample = []
    for i in range(prob.n):  # plain autograd, one sample at a time
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(a[i:i + 1]), t[i:i + 1]).backward()
        per_sample.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    grads = torch.stack(per_sample)
    assert reg.loc[1, "penalty"] == pytest.approx(cfg.rho * float(grads.norm(dim=1).mean()), rel=1e-10)
    assert reg.loc[-1, "penalty"] == pytest.approx(cfg.rho * float(grads.mean(0).norm()), rel=1e-10)
    gen = torch.Generator().manual_seed(123)
    for m in cfg.micro_batches[1:]:
        idx = torch.randint(prob.n, (20_000, m), generator=gen)
        norms = cfg.rho * grads[idx].mean(1).norm(dim=-1)
        se = float(np.hypot(float(norms.std()) / len(norms) ** 0.5, reg.loc[m, "penalty_se"]))
        assert abs(reg.loc[m, "penalty"] - float(norms.mean())) < 4 * se
    # Jensen: the regulariser does not grow with m (with replacement), and its m -> infinity limit is the lowest
    values = reg.loc[list(cfg.micro_batches), "penalty"].to_numpy()
    assert values[0] >= values[-1] >= reg.loc[-1, "penalty"]


def test_trend_is_weighted_least_squares_against_log2_m():
    summary = pd.DataFrame({"model": "discrete", "m": [-1, 1, 2, 4, 8], "method": "SAM",
                            "lambda_max_mean": [9.0, 1.0, 1.5, 2.2, 2.4], "lambda_max_se": [1, .1, .2, .1, .3],
                            "loss_mean": [9.0, .5, .4, .45, .3], "loss_se": [1, .05, .05, .1, .02]})
    tr = study.trend(summary, batch_size=8).set_index("observable")
    u = np.log2([1, 2, 4, 8])
    for name in study.OBSERVABLES:
        y = summary[f"{name}_mean"].to_numpy()[1:]
        se = summary[f"{name}_se"].to_numpy()[1:]
        fit, cov = np.polyfit(u, y, 1, w=1 / se, cov="unscaled")  # numpy: weights multiply residuals
        assert tr.loc[name, "slope_per_doubling"] == pytest.approx(fit[0], rel=1e-10)
        assert tr.loc[name, "slope_se"] == pytest.approx(np.sqrt(cov[0, 0]), rel=1e-10)
        assert tr.loc[name, "diff_high_minus_low"] == pytest.approx(y[-1] - y[0], rel=1e-12)
        assert tr.loc[name, "diff_se"] == pytest.approx(np.hypot(se[-1], se[0]), rel=1e-12)


def test_micro_batch_that_does_not_divide_the_batch_is_refused_before_any_work(tmp_path):
    cfg = dataclasses.replace(study.Config.tiny(), micro_batches=(1, 3))
    with pytest.raises(ValueError, match=r"`micro_batch` must divide the batch size B=4.*got micro_batch=3"):
        study.run(cfg, tmp_path)
    assert not (tmp_path / "m_sharpness").exists()
