"""Storage of a weak-error study: per-cell frames in ``results_dir`` (atomic writes, resume) and the study's
files. CSV is read back with ``float_precision="round_trip"`` (pandas < 3; pandas 3 round-trips by default), so
every float is the one written, bit for bit, on every pandas the package allows."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


# pandas < 3 parses floats with a fast, not round-trip, parser by default; pandas 3 round-trips by default and
# deprecates the argument.
_ROUND_TRIP = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV written by pandas, every float exactly as written."""
    return pd.read_csv(path, **_ROUND_TRIP)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: to a temporary file, then ``os.replace`` (an interrupted write leaves no half file)."""
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


class CellStore:
    """Cells as CSV files in ``results_dir/cells`` next to ``config.json``; a cell present is loaded, not
    recomputed. Only the caller (the process running :func:`~sde_sam.weak_error.weak_error`) writes here."""

    def __init__(self, directory: str | Path | None, config: dict):
        self.dir = None if directory is None else Path(directory)
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "config.json"
        if path.exists():
            old = json.loads(path.read_text())
            differ = sorted(k for k in set(old) | set(config)
                            if k not in ("lrs", "rho_spec") and old.get(k) != config.get(k))
            if differ:
                raise ValueError(f"`results_dir` {str(self.dir)!r} holds a study with a different configuration "
                                 f"(differs in {differ}); pass another results_dir (CLI: --out) or delete it")
        write_json(config, path)

    def path(self, key) -> Path | None:
        kind, lr, rho = key
        name = f"{kind.replace(' ', '')}_lr={lr!r}_rho={rho!r}.csv"
        return None if self.dir is None else self.dir / "cells" / name

    def get(self, key) -> pd.DataFrame | None:
        p = self.path(key)
        return read_csv(p) if p is not None and p.exists() else None

    def put(self, key, frame: pd.DataFrame) -> None:
        p = self.path(key)
        if p is not None:
            p.parent.mkdir(exist_ok=True)
            write_csv(frame, p)


def save_study(study, directory: str | Path) -> None:
    """``config.json``, ``table.csv``, ``cells.csv`` and (with a solver check) ``solver_error.csv`` and
    ``solver_table.csv``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(study.config, directory / "config.json")
    write_csv(study.table, directory / "table.csv")
    write_csv(study.cells, directory / "cells.csv")
    if study.solver_table is not None:
        write_csv(study.solver_table, directory / "solver_table.csv")
        write_csv(study.solver_error, directory / "solver_error.csv")


def load_frames(directory: str | Path) -> dict:
    """The pieces :func:`save_study` wrote, as keyword arguments of the study."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    solver = directory / "solver_table.csv"
    return {"table": read_csv(directory / "table.csv"), "cells": read_csv(directory / "cells.csv"),
            "solver_table": read_csv(solver) if solver.exists() else None, "config": config,
            "mode": config["mode"]}
