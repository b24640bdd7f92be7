"""The studies (the registry ``experiments.STUDIES``), their figures and ``sde-sam reproduce``: smoke tests
on tiny configurations, the registry against its modules, figures, docs and README, plus the quantitative
done-when checks that are cheap (SAM cycle amplitude, edges of stability)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing
import pickle
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

import experiments
from experiments import figures
from sde_sam import reproduce, theory

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {study.name: study for study in experiments.STUDIES}
FIGURES = [figure for study in experiments.STUDIES for figure in study.figures]


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    """Every registered study run once on its tiny configuration into one results directory."""
    results = tmp_path_factory.mktemp("results")
    for study in experiments.STUDIES:
        out = study.run(study.config("tiny"), results)
        assert out == results / study.name
    return results


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_study_writes_tables_and_config(tiny_results, study):
    out = tiny_results / study
    config = json.loads((out / "config.json").read_text())
    assert config["config"] and config["runtime_s"] >= 0
    assert config["config"] == json.loads(json.dumps(dataclasses.asdict(STUDIES[study].config("tiny"))))
    for table in STUDIES[study].tables:
        frame = pd.read_csv(out / f"{table}.csv")
        assert len(frame) > 0, f"{study}/{table}.csv is empty"
    assert set(config["files"]) >= {f"{table}.csv" for table in STUDIES[study].tables}


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_configs_are_frozen_with_quick_variant(study):
    entry = STUDIES[study]
    full, quick, tiny = entry.config("full"), entry.config("quick"), entry.config("tiny")
    assert type(full) is type(quick) is type(tiny) is entry.module.Config
    assert dataclasses.is_dataclass(full) and full != quick and quick != tiny
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.seed = 1  # type: ignore[misc]


def test_registry_is_the_one_list_of_studies():
    """Names unique and importable as ``experiments.<name>``; each figure a function of its figure module;
    ``reproduce`` offers exactly the registered studies, in registry order."""
    assert len(set(experiments.NAMES)) == len(experiments.NAMES) == len(experiments.STUDIES)
    assert len(set(FIGURES)) == len(FIGURES)
    for study in experiments.STUDIES:
        assert study.module.__name__ == f"experiments.{study.name}" and callable(study.module.run)
        assert study.module.STUDY == study.name
        for figure in study.figures:
            assert callable(getattr(study.figure_module, figure))
    sub = argparse.ArgumentParser(prog="sde-sam").add_subparsers(dest="command")
    study_action = next(a for a in reproduce.add_parser(sub)._actions if a.dest == "study")
    assert tuple(study_action.choices) == ("all",) + experiments.NAMES
    with pytest.raises(ValueError, match=r"`name` must be one of .*got name='nope'"):
        experiments.get("nope")
    with pytest.raises(ValueError, match=r"`size` must be one of \('full', 'quick', 'tiny'\), got size='big'"):
        experiments.get("normalization").config("big")


def test_docs_nav_and_index_cover_the_registry():
    """Every registered study has its page in the mkdocs nav and a row in the studies index (written from the
    registry by docs/hooks.py), whose theory links have their anchors on the maths page."""
    yaml = pytest.importorskip("yaml")  # with mkdocs (the docs extra)
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python", "#"))["nav"]

    def pages(entry):
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for value in entry.values():
                yield from pages(value)
        elif isinstance(entry, list):
            for value in entry:
                yield from pages(value)

    in_nav = set(pages(nav))
    # The index's table is written from the registry by docs/hooks.py at build time, in place of its marker.
    pytest.importorskip("mkdocs")  # docs/hooks.py imports it
    spec = importlib.util.spec_from_file_location("_docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.STUDIES_TABLE in (ROOT / "docs" / "studies" / "index.md").read_text(encoding="utf-8")
    index = hooks.studies_table()
    linked = [str((Path("studies") / link).as_posix()).replace("studies/../", "")
              for link in re.findall(r"^\| \[[^]]+\]\(([\w./]+\.md)\)", index, flags=re.M)]
    assert linked == [study.doc for study in experiments.STUDIES]  # one row per study, in registry order
    for study in experiments.STUDIES:
        assert (ROOT / "docs" / study.doc).exists(), study.doc
        assert study.doc in in_nav, f"{study.doc} ({study.name}) is not in the mkdocs nav"
        assert study.summary and study.theory, study.name
        for section in study.theory:  # each section it cites has its anchor on the maths page
            assert f"{{ #s{section.replace('.', '-')} }}" in (ROOT / "docs" / "math.md").read_text(encoding="utf-8")
    page = type("Page", (), {"file": type("File", (), {"src_uri": "studies/index.md"})()})()
    assert hooks.on_page_markdown(f"# Studies\n\n{hooks.STUDIES_TABLE}\n", page, None, None).endswith(index + "\n")
    with pytest.raises(Exception, match="has lost its marker"):
        hooks.on_page_markdown("# Studies\n", page, None, None)


def test_committed_figures_and_readme_cover_the_registry():
    """paper_figs/ holds exactly the registered figures; the README shows each of them and
    paper_figs/PROVENANCE.md says which run drew each."""
    committed = {p.stem for p in (ROOT / "paper_figs").glob("*.png")}
    assert committed == set(FIGURES)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for figure in FIGURES:
        assert f"paper_figs/{figure}.png" in readme, figure
    provenance = (ROOT / "paper_figs" / "PROVENANCE.md").read_text(encoding="utf-8")
    for figure in FIGURES:  # where each committed PNG comes from
        assert f"{figure}.png" in provenance, figure


@pytest.mark.parametrize("size", ["full", "quick", "tiny"])
def test_saddle_escape_sde_on_the_discrete_grid(size):
    """The order-1 SDE cells of the escape grid are the discrete cells' (lr, rho, method), one for one."""
    study = STUDIES["saddle_attraction"]
    cfg = study.config(size)
    specs = study.module.escape_specs(cfg)
    cells = {kind: sorted((s["lr"], s["rho"], s["method"]) for s in specs if s["kind"] == kind)
             for kind in ("discrete", "sde")}
    assert cells["sde"] == cells["discrete"]
    assert len(cells["sde"]) == len(cfg.grid_lrs) * len(cfg.grid_rhos) * len(study.module.METHODS)


def test_saddle_escape_table_has_both_kinds_on_one_grid(tiny_results):
    escape = pd.read_csv(tiny_results / "saddle_attraction" / "escape.csv")
    grids = {kind: set(zip(d["lr"], d["rho"], d["method"])) for kind, d in escape.groupby("kind")}
    assert set(grids) == {"discrete", "sde"} and grids["discrete"] == grids["sde"]


@pytest.mark.slow
def test_make_figures_draws_every_png_from_saved_results(tiny_results, tmp_path):
    paths = figures.make_figures(tiny_results, tmp_path)
    assert [p.stem for p in paths] == FIGURES
    for p in paths:
        assert p.suffix == ".png" and p.stat().st_size > 10_000 and p.parent == tmp_path


def test_make_figures_skips_missing_studies(tmp_path, capsys):
    assert figures.make_figures(tmp_path / "nothing", tmp_path) == []
    assert "skipped" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"`only` must name studies of .*got \['nope'\]"):
        figures.make_figures(tmp_path, tmp_path, only=["nope"])


@pytest.mark.slow
def test_paper_figs_script_redraws_into_paper_figs_by_default(tiny_results, tmp_path):
    """``python paper_figs/make_figures.py`` is the registry's figure command with paper_figs/ as default."""
    out = subprocess.run([sys.executable, str(ROOT / "paper_figs" / "make_figures.py"), "--results",
                          str(tiny_results), "--figs", str(tmp_path), "--only", "normalization"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert [p.name for p in tmp_path.glob("*.png")] == ["normalization.png"]
    help_text = subprocess.run([sys.executable, str(ROOT / "paper_figs" / "make_figures.py"), "--help"],
                               capture_output=True, text=True, timeout=300).stdout
    assert str(ROOT / "paper_figs") in " ".join(help_text.split())


def test_sam_cycle_amplitude_matches_theory_within_1pct(tiny_results):
    cycle = pd.read_csv(tiny_results / "sam_quadratic" / "cycle.csv")
    assert (cycle["max_abs_rel_error"] < 0.01).all(), cycle
    assert cycle["two_cycle"].all() and (cycle["across_max"] < 1e-8).all()
    expected = [theory.sam_cycle_amplitude(r.lr, r.rho, r.lam1) for r in cycle.itertuples()]
    assert cycle["amp_theory"].tolist() == pytest.approx(expected, rel=1e-12)


def test_sam_centre_drift_follows_derived_rate(tiny_results):
    summary = pd.read_csv(tiny_results / "sam_quadratic" / "drift_summary.csv")
    assert ((summary["rate_ratio_median"] - 1).abs() < 0.05).all(), summary


@pytest.mark.slow
def test_gd_and_usam_sharpness_settle_at_their_edges(tmp_path):
    """Done-when: late-phase mean lambda_max within 5% of 2/eta (GD) and of the USAM edge (~20 s)."""
    module = STUDIES["edge_of_stability"].module
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
    module = STUDIES["normalization"].module
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
    entry = STUDIES[study]
    with ThreadPoolExecutor(2) as pool:
        entry.run(entry.config("tiny"), tmp_path, executor=pool)
    for table in entry.tables:
        assert (tmp_path / study / f"{table}.csv").read_bytes() == (tiny_results / study / f"{table}.csv").read_bytes()


def test_study_cells_pickle_by_reference():
    """A cell function travels to workers as its name ``experiments.<study>.<cell>``, not by value."""
    cell = STUDIES["normalization"].module.divergence_cell
    payload = pickle.dumps(cell)
    assert b"experiments.normalization" in payload and len(payload) < 200
    assert pickle.loads(payload) is cell


@pytest.mark.slow
def test_study_cells_travel_to_spawned_processes_and_resume(tiny_results, tmp_path):
    """Cells of a study module run in spawned worker processes; a rerun loads them all."""
    module = STUDIES["sam_quadratic"].module
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        module.run(module.Config.tiny(), tmp_path, executor=pool)
    out = tmp_path / "sam_quadratic"
    for table in STUDIES["sam_quadratic"].tables:
        assert (out / f"{table}.csv").read_bytes() == (tiny_results / "sam_quadratic" / f"{table}.csv").read_bytes()
    cells = sorted((out / "cells").glob("*.json"))  # one record per cell (and its .csv table)
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


def test_reproduce_without_the_studies_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "experiments", None)  # not importable, as in an install without the checkout
    with pytest.raises(SystemExit) as info:
        reproduce.main(["normalization", "--quick"])
    assert info.value.code == 2
    assert "needs the package `experiments` of the source checkout" in capsys.readouterr().err


@pytest.mark.slow
def test_study_module_run_as_a_script_uses_process_workers(tmp_path):
    """``python -m experiments.<study> --workers 2``: the module runs as ``__main__`` yet its cells reach the
    spawned workers under their package name, and the tables equal a serial run's."""
    cmd = [sys.executable, "-m", "experiments.normalization", "--quick", "--results"]
    for name, extra in (("serial", []), ("process", ["--workers", "2"])):
        out = subprocess.run(cmd + [str(tmp_path / name), *extra], capture_output=True, text=True, timeout=600,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    assert ((tmp_path / "serial" / "normalization" / "divergence.csv").read_bytes()
            == (tmp_path / "process" / "normalization" / "divergence.csv").read_bytes())


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


@pytest.mark.slow
def test_reproduce_runs_a_study_and_its_figure(tmp_path):
    assert reproduce.main(["normalization", "--quick", "--results", str(tmp_path / "r"),
                           "--figs", str(tmp_path / "f")]) == 0
    assert (tmp_path / "r" / "normalization" / "divergence.csv").exists()
    assert (tmp_path / "f" / "normalization.png").exists()
    assert (tmp_path / "r" / "reproduce_quick_timing.json").exists()


@pytest.mark.slow
def test_reproduce_writes_figures_under_results_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    committed = {p: p.stat().st_mtime_ns for p in (ROOT / "paper_figs").glob("*.png")}
    assert reproduce.main(["normalization", "--quick", "--results", "r"]) == 0
    assert (tmp_path / "r" / "figs" / "normalization.png").exists()
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "paper_figs").glob("*.png")} == committed
    timing = json.loads((tmp_path / "r" / "reproduce_quick_timing.json").read_text())
    assert timing["executor"] == "serial" and timing["workers"] is None
