"""``sde-sam reproduce``: run the studies, then draw every figure from their saved results.

    sde-sam reproduce {all,<study>} [--quick] [--results DIR] [--figs DIR]
                      [--executor {serial,process,ray}] [--workers N] [--address ADDR] [--fresh]
    python -m sde_sam.reproduce all --quick --workers 2

The studies are those of the registry :data:`experiments.STUDIES` (the package ``experiments`` of the source
checkout, installed with it by ``pip install -e .``). Each writes ``DIR/<study>/config.json`` and CSV tables;
the figures come from :mod:`experiments.figures`, which reads only those tables, and go to ``DIR/figs/`` (the
committed ``paper_figs/`` is rewritten only with ``--figs paper_figs``). ``--quick`` runs the CI-sized
configurations (all studies in a few minutes on two CPU cores).

The cells of a study's grid run on the chosen executor: in this process (``serial``, the default), on
``--workers N`` local processes (``process``), or on a Ray cluster (``ray``: ``--address``, else
``RAY_ADDRESS``, else a local cluster of ``--workers`` CPUs). The tables are the same bit for bit either way.
Finished cells are kept in ``DIR/<study>/cells/``: an interrupted run, rerun, computes only the missing
cells (``--fresh`` recomputes everything).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator

EXECUTORS = ("serial", "process", "ray")

_MISSING = ("the studies are not importable: `reproduce` needs the package `experiments` of the source "
            "checkout (pip install -e . there)")


def _studies() -> tuple[str, ...] | None:
    """The registered study names, in the order ``all`` runs them; ``None`` when the ``experiments`` package
    is not importable (an install without the checkout)."""
    if importlib.util.find_spec("experiments") is None:
        return None
    from experiments import NAMES

    return NAMES


# -- executors ----------------------------------------------------------------------------------------------
def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_executor_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--executor {serial,process,ray}``, ``--workers N``, ``--address ADDR`` (shared by the experiment
    scripts and ``sde-sam reproduce``); check the combination with :func:`check_executor_arguments`."""
    group = parser.add_argument_group("where the cells of a study run")
    group.add_argument("--executor", choices=EXECUTORS, default=None,
                       help="serial: in this process (default); process: --workers local processes; ray: a Ray "
                            "cluster (pip install \"sde_sam[ray]\"). Same tables either way")
    group.add_argument("--workers", type=_workers, default=None, metavar="N",
                       help="worker processes (implies --executor process; with ray: CPUs of a local cluster). "
                            "Default for process: the number of CPUs")
    group.add_argument("--address", default=None, metavar="ADDR",
                       help="Ray cluster address, e.g. ray://HOST:10001 or auto (implies --executor ray; "
                            "default: $RAY_ADDRESS, else a local cluster)")
    return parser


def check_executor_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve ``args.executor`` (``--workers`` implies ``process``, ``--address`` implies ``ray``) and
    refuse contradictions with ``parser.error`` (one line, exit status 2)."""
    if args.executor is None:
        args.executor = "ray" if args.address else ("process" if args.workers else "serial")
    if args.address and args.executor != "ray":
        parser.error(f"argument --address: needs --executor ray, got --executor {args.executor}")
    if args.executor == "serial" and args.workers not in (None, 1):
        parser.error(f"argument --workers: needs --executor process or ray, got --executor serial "
                     f"with --workers {args.workers}")
    if args.executor == "ray" and args.address and args.workers is not None:
        parser.error("argument --workers: sets the CPUs of a local Ray cluster; with --address the cluster's "
                     "own resources are used")
    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        parser.error('argument --executor: ray is not installed (pip install "sde_sam[ray]")')


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # many small batched ops per cell: one thread each, no oversubscription


@contextlib.contextmanager
def open_executor(kind: str = "serial", *, workers: int | None = None, address: str | None = None) -> Iterator[Any]:
    """The executor of ``--executor``: ``None`` for ``serial``; a ``ProcessPoolExecutor`` of ``workers``
    spawned processes (one torch thread each) for ``process``; a :class:`~sde_sam.executors.RayExecutor`
    for ``ray``. Shut down on exit."""
    if kind == "serial":
        yield None
    elif kind == "process":
        with ProcessPoolExecutor(workers or os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker) as pool:
            yield pool
    elif kind == "ray":
        from .executors import RayExecutor

        with RayExecutor(address, num_cpus=workers) as executor:
            yield executor
    else:
        raise ValueError(f"`kind` must be one of {EXECUTORS}, got kind={kind!r}")


# -- the command --------------------------------------------------------------------------------------------
def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    names = _studies()
    parser.add_argument("study", choices=None if names is None else ("all",) + names,
                        help="a study, or all of them")
    parser.add_argument("--quick", action="store_true", help="CI-sized configurations (minutes on 2 CPU cores)")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="where the studies write DIR/<study>/ (default: ./results)")
    parser.add_argument("--figs", type=Path, default=None,
                        help="where the PNG figures go (default: DIR/figs under --results; the committed "
                             "paper_figs/ is rewritten only when given here: --figs paper_figs)")
    parser.add_argument("--no-figures", action="store_true", help="run the studies only")
    parser.add_argument("--fresh", action="store_true",
                        help="recompute every cell (default: keep the finished cells in DIR/<study>/cells/ and "
                             "compute only the missing ones)")
    add_executor_arguments(parser)
    parser.set_defaults(reproduce_parser=parser)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reproduce`` subcommand to an ``argparse`` subparsers object; it dispatches to :func:`run`."""
    parser = subparsers.add_parser("reproduce", help="run the experiment scripts and redraw every figure",
                                   description=__doc__.split("\n\n")[0].strip(), epilog=_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(parser)
    parser.set_defaults(func=run)
    return parser


_EPILOG = """\
the studies: the package experiments/ of the source checkout (pip install -e . there).
figures go to DIR/figs (DIR: --results); --figs paper_figs rewrites the committed ones.
cells: each study's grid cells run on --executor and are kept in DIR/<study>/cells/; a rerun computes only
the missing cells (--fresh: all). Examples:
  sde-sam reproduce all --quick                      # serial, figures in results/figs
  sde-sam reproduce all --workers 4                  # 4 local processes
  sde-sam reproduce saddle_attraction --address auto # a running Ray cluster (ray start --head)"""


def run(args: argparse.Namespace) -> int:
    """Run the chosen studies (``args.study``: a name or ``"all"``), then the figures; return 0 on success."""
    parser = getattr(args, "reproduce_parser", None)
    for name, default in (("executor", None), ("workers", None), ("address", None), ("fresh", False)):
        if not hasattr(args, name):  # a namespace built by hand
            setattr(args, name, default)
    if parser is not None:
        check_executor_arguments(parser, args)
        if _studies() is None:
            parser.error(_MISSING)
    elif args.executor is None:
        args.executor = "ray" if args.address else ("process" if args.workers else "serial")
    if _studies() is None:
        raise ModuleNotFoundError(_MISSING)
    import experiments
    from experiments.figures import make_figures

    studies = experiments.NAMES if args.study == "all" else (experiments.get(args.study).name,)
    results = Path(args.results)
    figs = Path(args.figs) if args.figs is not None else results / "figs"
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    with open_executor(args.executor, workers=args.workers, address=args.address) as executor:
        for study in studies:
            if args.fresh:
                shutil.rmtree(results / study / "cells", ignore_errors=True)
            entry = experiments.get(study)
            t0 = time.perf_counter()
            entry.run(entry.config("quick" if args.quick else "full"), results, executor=executor)
            timings[study] = round(time.perf_counter() - t0, 1)
            print(f"[reproduce] {study}: {timings[study]:.1f} s", flush=True)
    if not getattr(args, "no_figures", False):
        t0 = time.perf_counter()
        paths = make_figures(results, figs, only=list(studies))
        timings["figures"] = round(time.perf_counter() - t0, 1)
        print(f"[reproduce] {len(paths)} figures in {timings['figures']:.1f} s -> {figs}")
    timings["total"] = round(time.perf_counter() - start, 1)
    timings["executor"] = args.executor
    timings["workers"] = args.workers
    results.mkdir(parents=True, exist_ok=True)
    (results / f"reproduce_{'quick' if args.quick else 'full'}_timing.json").write_text(json.dumps(timings, indent=2))
    print(f"[reproduce] done in {timings['total']:.1f} s ({'quick' if args.quick else 'full'} mode, "
          f"{args.executor}{'' if args.workers is None else f' x{args.workers}'})")
    return 0


def main(argv=None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m sde_sam.reproduce",
                                                description=__doc__.split("\n\n")[0].strip(), epilog=_EPILOG,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
