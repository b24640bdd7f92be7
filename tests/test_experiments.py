"""The experiment scripts, the figure script and ``sde-sam reproduce``: smoke tests on tiny configurations,
plus the quantitative done-when checks that are cheap (SAM cycle amplitude, edges of stability)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
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


@pytest.mark.parametrize("study", ["normalization", "sam_quadratic"])
def test_grid_studies_are_identical_on_a_thread_pool(tiny_results, tmp_path, study):
    """The cells of a study run anywhere: a thread pool writes the same tables, byte for byte. (Not the SDE
    cells of saddle_attraction nor the sharpness of edge_of_stability: torch's forward-mode AD levels are
    process-global, so cells that take ``jvp``s must not share a process; use processes or Ray for those.)"""
    module = experiment(study)
    with ThreadPoolExecutor(2) as pool:
        module.run(module.Config.tiny(), tmp_path, executor=pool)
    for table in TABLES[study]:
        assert (tmp_path / study / f"{table}.csv").read_bytes() == (tiny_results / study / f"{table}.csv").read_bytes()


def test_study_cells_travel_to_spawned_processes_and_resume(tiny_results, tmp_path):
    """Cells defined in a script (loaded by path) run in spawned worker processes; a rerun loads them all."""
    module = experiment("sam_quadratic")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        module.run(module.Config.tiny(), tmp_path, executor=pool)
    out = tmp_path / "sam_quadratic"
    for table in TABLES["sam_quadratic"]:
        assert (out / f"{table}.csv").read_bytes() == (tiny_results / "sam_quadratic" / f"{table}.csv").read_bytes()
    cells = sorted((out / "cells").glob("*.pkl"))
    assert len(cells) == len(module.cycle_specs(module.Config.tiny())) + 1 + len(module.Config.tiny().drift_rhos)
    stamps = [p.stat().st_mtime_ns for p in cells]
    module.run(module.Config.tiny(), tmp_path, executor=None)  # resumed: nothing recomputed or rewritten
    assert [p.stat().st_mtime_ns for p in cells] == stamps
    assert (out / "cycle.csv").read_bytes() == (tiny_results / "sam_quadratic" / "cycle.csv").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "argument --workers: must be a positive integer, got '0'"),
    (["--workers", "two"], "argument --workers: must be a positive integer, got 'two'"),
    (["--executor", "serial", "--workers", "2"], "argument --workers: needs --executor process or ray"),
    (["--executor", "process", "--address", "auto"], "argument --address: needs --executor ray"),
    (["--executor", "dask"], "argument --executor: invalid choice"),
])
def test_reproduce_refuses_bad_executor_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        reproduce.main(["normalization", "--quick", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err


def test_reproduce_without_checkout_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    with pytest.raises(SystemExit) as info:
        reproduce.main(["normalization", "--quick"])
    assert info.value.code == 2
    assert "needs the source checkout" in capsys.readouterr().err


def test_reproduce_executor_flags_resolve():
    parser = argparse.ArgumentParser(prog="sde-sam")
    reproduce.add_parser(parser.add_subparsers(dest="command"))
    for argv, kind in ((["--workers", "2"], "process"), ([], "serial"), (["--address", "auto"], "ray"),
                       (["--executor", "process"], "process")):
        args = parser.parse_args(["reproduce", "all", *argv])
        if kind == "ray" and importlib.util.find_spec("ray") is None:
            continue
        reproduce.check_executor_arguments(args.reproduce_parser, args)
        assert args.executor == kind
    assert args.figs is None  # figures default to <results>/figs, never the committed paper_figs/


def test_reproduce_help_says_where_figures_go(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: DIR/figs under --results" in text and "--figs paper_figs" in text
    assert "--executor {serial,process,ray}" in text and "--workers N" in text


def test_reproduce_runs_a_study_and_its_figure(tmp_path):
    assert reproduce.main(["normalization", "--quick", "--results", str(tmp_path / "r"),
                           "--figs", str(tmp_path / "f")]) == 0
    assert (tmp_path / "r" / "normalization" / "divergence.csv").exists()
    assert (tmp_path / "f" / "normalization.png").exists()
    assert (tmp_path / "r" / "reproduce_quick_timing.json").exists()


def test_reproduce_writes_figures_under_results_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    committed = {p: p.stat().st_mtime_ns for p in (ROOT / "paper_figs").glob("*.png")}
    assert reproduce.main(["normalization", "--quick", "--results", "r"]) == 0
    assert (tmp_path / "r" / "figs" / "normalization.png").exists()
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "paper_figs").glob("*.png")} == committed
    timing = json.loads((tmp_path / "r" / "reproduce_quick_timing.json").read_text())
    assert timing["executor"] == "serial" and timing["workers"] is None
