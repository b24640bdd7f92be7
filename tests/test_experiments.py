"""The experiment scripts, the figure script and ``sde-sam reproduce``: smoke tests on tiny configurations,
plus the quantitative done-when checks that are cheap (SAM cycle amplitude, edges of stability)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from sde_sam import reproduce, theory

ROOT = Path(__file__).resolve().parents[1]

# study -> CSV tables it must write
TABLES = {
    "saddle_attraction": ("distance", "escape"),
    "edge_of_stability": ("trajectory", "summary"),
    "sam_quadratic": ("cycle", "cycle_trace", "drift", "drift_summary"),
    "normalization": ("divergence",),
    "eigen_sam": ("alignment", "alignment_summary", "sde_orders", "sde_orders_summary"),
    "weak_error_all": ("table", "max_gaps", "fits", "relative", "cells"),
}
FIGURES = ("saddle_attraction", "saddle_escape", "edge_of_stability", "sam_quadratic", "normalization",
           "eigen_sam", "sde_orders", "weak_error")


def load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def experiment(study: str):
    return load_script(ROOT / "experiments" / f"{study}.py", f"_test_experiment_{study}")


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    """Every study run once on its tiny configuration into one results directory."""
    results = tmp_path_factory.mktemp("results")
    for study in TABLES:
        module = experiment(study)
        out = module.run(module.Config.tiny(), results)
        assert out == results / study
    return results


@pytest.mark.parametrize("study", sorted(TABLES))
def test_study_writes_tables_and_config(tiny_results, study):
    out = tiny_results / study
    config = json.loads((out / "config.json").read_text())
    assert config["config"] and config["runtime_s"] >= 0
    for table in TABLES[study]:
        frame = pd.read_csv(out / f"{table}.csv")
        assert len(frame) > 0, f"{study}/{table}.csv is empty"


@pytest.mark.parametrize("study", sorted(TABLES))
def test_configs_are_frozen_with_quick_variant(study):
    module = experiment(study)
    full, quick = module.Config(), module.Config.quick()
    assert dataclasses.is_dataclass(full) and full != quick
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.seed = 1  # type: ignore[misc]


def test_make_figures_draws_every_png_from_saved_results(tiny_results, tmp_path):
    figures = load_script(ROOT / "paper_figs" / "make_figures.py", "_test_make_figures")
    paths = figures.make_figures(tiny_results, tmp_path)
    assert sorted(p.stem for p in paths) == sorted(FIGURES)
    for p in paths:
        assert p.suffix == ".png" and p.stat().st_size > 10_000


def test_make_figures_skips_missing_studies(tmp_path, capsys):
    figures = load_script(ROOT / "paper_figs" / "make_figures.py", "_test_make_figures")
    assert figures.make_figures(tmp_path / "nothing", tmp_path) == []
    assert "skipped" in capsys.readouterr().err


def test_sam_cycle_amplitude_matches_theory_within_1pct(tiny_results):
    cycle = pd.read_csv(tiny_results / "sam_quadratic" / "cycle.csv")
    assert (cycle["max_abs_rel_error"] < 0.01).all(), cycle
    assert cycle["two_cycle"].all() and (cycle["across_max"] < 1e-8).all()
    expected = [theory.sam_cycle_amplitude(r.lr, r.rho, r.lam1) for r in cycle.itertuples()]
    assert cycle["amp_theory"].tolist() == pytest.approx(expected, rel=1e-12)


def test_sam_centre_drift_follows_derived_rate(tiny_results):
    summary = pd.read_csv(tiny_results / "sam_quadratic" / "drift_summary.csv")
    assert ((summary["rate_ratio_median"] - 1).abs() < 0.05).all(), summary


def test_gd_and_usam_sharpness_settle_at_their_edges(tmp_path):
    """Done-when: late-phase mean lambda_max within 5% of 2/eta (GD) and of the USAM edge (~20 s)."""
    module = experiment("edge_of_stability")
    cfg = dataclasses.replace(module.Config.quick(), methods=("GD", "USAM"), record_every=25)
    module.run(cfg, tmp_path)
    summary = pd.read_csv(tmp_path / "edge_of_stability" / "summary.csv").set_index("method")
    assert summary.loc["GD", "edge_late_mean"] == pytest.approx(2 / cfg.lr)
    assert summary.loc["USAM", "edge_late_mean"] == pytest.approx(theory.usam_edge(cfg.lr, cfg.rho_usam))
    assert abs(summary.loc["GD", "rel_error_pct"]) < 5, summary
    assert abs(summary.loc["USAM", "rel_error_pct"]) < 5, summary
    # the sharpness genuinely rose to the edge from well below it
    assert (summary["lambda_initial"] < 0.7 * summary["edge_late_mean"]).all()


def test_normalization_thresholds(tmp_path):
    module = experiment("normalization")
    cfg = dataclasses.replace(module.Config.tiny(), lr_min=0.3, lr_max=0.9, n_lrs=3, steps=200)
    module.run(cfg, tmp_path)
    div = pd.read_csv(tmp_path / "normalization" / "divergence.csv")
    # rho = 0.5, L = 2: USAM threshold 0.5, SAM/GD threshold 1
    usam, sam = div[div["method"] == "USAM"].set_index("lr"), div[div["method"] == "SAM"].set_index("lr")
    assert usam.loc[0.3, "frac_diverged"] == 0 and usam.loc[0.9, "frac_diverged"] == 1
    assert (sam["frac_diverged"] == 0).all()


def test_reproduce_subcommand_parses_and_dispatches():
    parser = argparse.ArgumentParser(prog="sde-sam")
    sub = parser.add_subparsers(dest="command")
    reproduce.add_parser(sub)
    args = parser.parse_args(["reproduce", "sam_quadratic", "--quick", "--results", "R", "--figs", "F"])
    assert args.func is reproduce.run and args.study == "sam_quadratic" and args.quick
    assert args.results == Path("R") and args.figs == Path("F")
    with pytest.raises(SystemExit):
        parser.parse_args(["reproduce", "no_such_study"])


def test_reproduce_runs_a_study_and_its_figure(tmp_path):
    assert reproduce.main(["normalization", "--quick", "--results", str(tmp_path / "r"),
                           "--figs", str(tmp_path / "f")]) == 0
    assert (tmp_path / "r" / "normalization" / "divergence.csv").exists()
    assert (tmp_path / "f" / "normalization.png").exists()
    assert (tmp_path / "r" / "reproduce_quick_timing.json").exists()
