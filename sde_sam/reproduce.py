"""``sde-sam reproduce``: run the experiment scripts, then draw every figure from their saved results.

    sde-sam reproduce {all,<study>} [--quick] [--results DIR] [--figs DIR]
    python -m sde_sam.reproduce all --quick

Each study is ``experiments/<study>.py`` in the source checkout (``main(argv)`` writes
``DIR/<study>/config.json`` and CSV tables); the figures come from ``paper_figs/make_figures.py``, which
reads only those tables. ``--quick`` runs the CI-sized configurations (all studies in a few minutes on two
CPU cores). Needs the repository checkout (the experiment scripts are not part of the installed package).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

STUDIES = ("saddle_attraction", "edge_of_stability", "sam_quadratic", "normalization", "eigen_sam",
           "weak_error_all")
"""The studies, in the order ``all`` runs them."""

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str) -> ModuleType:
    """Import a script by path (``experiments/`` and ``paper_figs/`` are not packages)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: `sde-sam reproduce` needs the source checkout "
                                f"(experiments/ and paper_figs/ next to the sde_sam package)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("study", choices=("all",) + STUDIES, help="a study, or all of them")
    parser.add_argument("--quick", action="store_true", help="CI-sized configurations (minutes on 2 CPU cores)")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="where the studies write results/<study>/ (default: ./results)")
    parser.add_argument("--figs", type=Path, default=ROOT / "paper_figs",
                        help="where the PNG figures go (default: the checkout's paper_figs/)")
    parser.add_argument("--no-figures", action="store_true", help="run the studies only")
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reproduce`` subcommand to an ``argparse`` subparsers object; it dispatches to :func:`run`."""
    parser = subparsers.add_parser("reproduce", help="run the experiment scripts and redraw every figure",
                                   description=__doc__.splitlines()[0])
    _configure(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the chosen studies (``args.study``: a name or ``"all"``), then the figures; return 0 on success."""
    studies = STUDIES if args.study == "all" else (args.study,)
    results = Path(args.results)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for study in studies:
        module = _load(ROOT / "experiments" / f"{study}.py", f"_sde_sam_experiment_{study}")
        t0 = time.perf_counter()
        module.main((["--quick"] if args.quick else []) + ["--results", str(results)])
        timings[study] = round(time.perf_counter() - t0, 1)
        print(f"[reproduce] {study}: {timings[study]:.1f} s", flush=True)
    if not getattr(args, "no_figures", False):
        figures = _load(ROOT / "paper_figs" / "make_figures.py", "_sde_sam_make_figures")
        t0 = time.perf_counter()
        paths = figures.make_figures(results, args.figs, only=list(studies))
        timings["figures"] = round(time.perf_counter() - t0, 1)
        print(f"[reproduce] {len(paths)} figures in {timings['figures']:.1f} s -> {args.figs}")
    timings["total"] = round(time.perf_counter() - start, 1)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"reproduce_{'quick' if args.quick else 'full'}_timing.json").write_text(json.dumps(timings, indent=2))
    print(f"[reproduce] done in {timings['total']:.1f} s ({'quick' if args.quick else 'full'} mode)")
    return 0


def main(argv=None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m sde_sam.reproduce", description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
