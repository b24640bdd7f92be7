"""Reading a study's saved results: the figures are drawn from ``results/<study>/`` only."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def read_table(results: Path, study: str, name: str) -> pd.DataFrame:
    """The table ``results/<study>/<name>.csv``."""
    return pd.read_csv(results / study / f"{name}.csv")


def read_config(results: Path, study: str) -> dict:
    """The configuration the study ran with (``results/<study>/config.json``)."""
    return json.loads((results / study / "config.json").read_text())["config"]
