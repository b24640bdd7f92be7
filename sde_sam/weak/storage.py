"""Storage of a weak-error study: its cells in ``results_dir/cells`` (through the store every study uses,
:class:`sde_sam._io.CellStore`) and the study's files, all written atomically by :func:`sde_sam._io.atomic_write`.
CSV is read back as a round trip, so every float is the one written, bit for bit.

A results folder holds one study. ``config.json`` records its settings; a rerun with other settings is
refused, naming them. Only the lr grid may change between runs (``lrs``, and with it ``rho_spec``): each cell
is one (kind, lr, rho) and records, next to its table, every setting it was computed from, so a rerun with
more learning rates reuses exactly the cells whose settings all match; a cell recorded with other settings
refuses the folder too (even when ``config.json`` is gone), and a damaged one is recomputed with a warning.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._io import CellStore, ForeignCell, read_csv, read_json, write_csv, write_json

__all__ = ["open_cells", "load_cell", "save_cell", "save_study", "load_frames", "read_csv", "write_csv"]

PER_LR = ("lrs", "rho_spec")
"""Settings that describe the lr grid, not a cell: a cell's own lr and rho are in its name and record."""


def _cell_settings(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in PER_LR}


def _refuse(directory: Path, differ: list[str], where: str) -> ValueError:
    return ValueError(f"`results_dir` {str(directory)!r} holds a study with a different configuration (differs in "
                      f"{differ}), as {where} records; pass another results_dir (CLI: --out) or delete it")


def open_cells(directory: str | Path | None, config: dict) -> CellStore | None:
    """The cell store of a study saved in ``directory`` (``None``: nothing on disk), after checking that
    ``directory/config.json``, if there, is this study's (all settings but the lr grid); then records it.

    Raises:
        ValueError: ``config.json`` holds other settings, or is not valid JSON (naming the folder first, as
            ```results_dir` ...``, which the CLI reports as ``--out``).
    """
    if directory is None:
        return None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    if path.exists():
        try:
            old = read_json(path)
        except ValueError as err:
            raise ValueError(f"`results_dir` {str(directory)!r} holds a damaged config.json ({err}); pass another "
                             "results_dir (CLI: --out) or delete it") from None
        if not isinstance(old, dict):
            raise ValueError(f"`results_dir` {str(directory)!r} holds a config.json that is not a study's "
                             f"(a JSON {type(old).__name__}); pass another results_dir (CLI: --out) or delete it")
        differ = sorted(k for k in set(old) | set(config) if k not in PER_LR and old.get(k) != config.get(k))
        if differ:
            raise _refuse(directory, differ, "its config.json")
    write_json(config, path)
    return CellStore(directory / "cells")


def _name(key) -> str:
    kind, lr, rho = key
    return f"{kind.replace(' ', '')}_lr={lr!r}_rho={rho!r}"


def _spec(key, config: dict) -> dict:
    kind, lr, rho = key
    return {"kind": kind, "lr": lr, "rho": rho, "study": _cell_settings(config)}


def load_cell(store: CellStore | None, key, config: dict) -> pd.DataFrame | None:
    """The saved table of cell ``key = (kind, lr, rho)`` of the study ``config``, or ``None`` (compute it).

    Raises:
        ValueError: the cell file records other settings: the folder holds another study.
    """
    if store is None:
        return None
    spec = _spec(key, config)
    try:
        return store.load(_name(key), spec)
    except ForeignCell as err:
        saved = err.saved_spec.get("study") if isinstance(err.saved_spec, dict) else None
        if not isinstance(saved, dict):
            saved = {}
        differ = sorted(k for k in set(saved) | set(spec["study"]) if saved.get(k) != spec["study"].get(k))
        raise _refuse(store.dir.parent, differ or ["kind, lr or rho"], f"cell file {err.path.name}") from None


def save_cell(store: CellStore | None, key, config: dict, frame: pd.DataFrame) -> None:
    """Store the table of cell ``key`` with the settings it was computed from."""
    if store is not None:
        store.save(_name(key), _spec(key, config), frame)


def save_study(study, directory: str | Path) -> None:
    """``config.json``, ``table.csv``, ``cells.csv`` and (with a solver check) ``solver_error.csv`` and
    ``solver_table.csv``, each written atomically."""
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
    config = read_json(directory / "config.json")
    solver = directory / "solver_table.csv"
    return {"table": read_csv(directory / "table.csv"), "cells": read_csv(directory / "cells.csv"),
            "solver_table": read_csv(solver) if solver.exists() else None, "config": config,
            "mode": config["mode"]}
