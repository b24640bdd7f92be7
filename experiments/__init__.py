"""The studies behind the paper figures, one module per study, each declared once in :data:`STUDIES`.

    sde-sam reproduce {all,<study>} [--quick]      # every study, then every figure
    python -m experiments.<study> [--quick]        # one study's tables only
    python -m experiments.figures [--only <study>] # figures from saved tables only

A study module has a frozen-dataclass ``Config`` (full size; ``Config.quick()`` for CI, ``Config.tiny()``
for smoke tests) and ``run(config, results, *, executor=None)``, which writes ``results/<study>/config.json``
and tidy CSV tables. Its cells are module-level functions of that module: a process pool or Ray pickles
them by reference (``experiments.<study>.<cell>``), so the workers import this package like any other.
Importing the package imports no study module (:attr:`Study.module` does, on demand).
"""
from .registry import NAMES, SIZES, STUDIES, Study, get

__all__ = ["STUDIES", "NAMES", "SIZES", "Study", "get"]
