"""Storage of a weak-error study: per-cell frames in ``results_dir`` (atomic writes) and the study's files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


# -- cells: one computed piece per (lr, model), saved and resumed ------------------------------------------
def frame(times, means: dict, ses: dict | None) -> pd.DataFrame:
    rows = [pd.DataFrame({"test_function": k, "time": np.asarray(times, dtype=float),
                          "mean": np.asarray(v, dtype=float),
                          "se": np.zeros(len(times)) if ses is None else np.asarray(ses[k], dtype=float)})
            for k, v in means.items()]
    return pd.concat(rows, ignore_index=True)


class _Store:
    """Cells as CSV files in ``results_dir`` next to ``config.json``; a cell present is loaded, not recomputed."""

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
                                 f"(differs in {differ}); pass another results_dir or delete it")
        path.write_text(json.dumps(config, indent=2))

    def path(self, kind: str, lr: float, rho: float) -> Path | None:
        name = f"{kind.replace(' ', '')}_lr={lr!r}_rho={rho!r}.csv"
        return None if self.dir is None else self.dir / "cells" / name

    def get(self, key) -> pd.DataFrame | None:
        p = self.path(*key)
        return pd.read_csv(p) if p is not None and p.exists() else None

    def put(self, key, frame: pd.DataFrame) -> None:
        p = self.path(*key)
        if p is not None:
            p.parent.mkdir(exist_ok=True)
            tmp = p.with_suffix(".tmp")
            frame.to_csv(tmp, index=False)
            tmp.replace(p)  # atomic: an interrupted write never leaves a half cell

