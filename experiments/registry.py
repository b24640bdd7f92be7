"""The list of studies: each declared once, here, with its tables, its figures and its documentation page.

``sde-sam reproduce``, the figures (:mod:`experiments.figures`), the tests and the docs index all iterate
:data:`STUDIES`; adding a study is its module ``experiments/<name>.py`` (a frozen-dataclass ``Config`` with
``quick()`` and ``tiny()``, and ``run(config, results, *, executor=None)``), its figure module
``experiments/figures/<name>.py`` (one function per figure, named as the PNG), its page, and one row below.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

SIZES = ("full", "quick", "tiny")
"""Configuration sizes: ``full`` (the committed figures), ``quick`` (CI: minutes on two cores), ``tiny``
(smoke tests: seconds)."""


@dataclass(frozen=True)
class Study:
    """One study: computed by ``experiments.<name>``, saved under ``results/<name>/``, drawn by
    ``experiments.figures.<name>``.

    Attributes:
        name: the module name, the results folder and the ``sde-sam reproduce`` argument.
        title: a few words, as in the docs navigation.
        tables: the CSV tables ``results/<name>/<table>.csv`` the study writes (besides ``config.json``).
        figures: the figures ``<figure>.png`` it draws; each is the function ``<figure>(results, figs)`` of
            ``experiments.figures.<name>``.
        doc: its documentation page, relative to ``docs/``.
    """

    name: str
    title: str
    tables: tuple[str, ...]
    figures: tuple[str, ...]
    doc: str

    @property
    def module(self) -> ModuleType:
        """``experiments.<name>``: ``Config`` and ``run``."""
        return importlib.import_module(f"{__package__}.{self.name}")

    @property
    def figure_module(self) -> ModuleType:
        """``experiments.figures.<name>``: one drawing function per figure."""
        return importlib.import_module(f"{__package__}.figures.{self.name}")

    def config(self, size: str = "full") -> Any:
        """The frozen-dataclass configuration of ``size`` (``"full"``, ``"quick"`` or ``"tiny"``)."""
        if size not in SIZES:
            raise ValueError(f"`size` must be one of {SIZES}, got size={size!r}")
        config_cls = self.module.Config
        return config_cls() if size == "full" else getattr(config_cls, size)()

    def run(self, config: Any, results: str | Path, *, executor: Any = None) -> Path:
        """Compute and save the study under ``results/<name>/`` (cells on ``executor``; ``None``: here)."""
        return self.module.run(config, results, executor=executor)

    def draw(self, results: str | Path, figs: str | Path) -> list[Path]:
        """Draw every figure of the study from the saved tables in ``results/<name>/`` into ``figs/``."""
        module = self.figure_module
        return [getattr(module, figure)(Path(results), Path(figs)) for figure in self.figures]


STUDIES: tuple[Study, ...] = (
    Study("saddle_attraction", "Saddle attraction", ("distance", "escape"),
          ("saddle_attraction", "saddle_escape"), "studies/saddle_attraction.md"),
    Study("edge_of_stability", "Edge of stability", ("trajectory", "summary"),
          ("edge_of_stability",), "studies/edge_of_stability.md"),
    Study("sam_quadratic", "SAM's 2-cycle", ("cycle", "cycle_trace", "drift", "drift_summary"),
          ("sam_quadratic",), "studies/sam_quadratic.md"),
    Study("normalization", "Normalization", ("divergence",), ("normalization",), "studies/normalization.md"),
    Study("eigen_sam", "Eigen-SAM and SDE orders",
          ("alignment", "alignment_summary", "sde_orders", "sde_orders_summary"),
          ("eigen_sam", "sde_orders"), "studies/eigen_sam.md"),
    Study("weak_error_all", "Weak error of every method", ("table", "max_gaps", "fits", "relative", "cells"),
          ("weak_error",), "studies/weak_error.md"),
    Study("eigenvalue_filters", "Eigenvalue filters", ("filters", "runs", "summary"),
          ("eigenvalue_filters",), "studies/eigenvalue_filters.md"),
    Study("own_model", "Your own model", ("trajectory", "summary"), ("own_model",), "own_model.md"),
    Study("m_sharpness", "m-sharpness", ("paths", "summary", "trend", "trend_by_step", "regulariser"),
          ("m_sharpness",), "studies/m_sharpness.md"),
)
"""Every study, in the order ``sde-sam reproduce all`` runs them."""

NAMES: tuple[str, ...] = tuple(study.name for study in STUDIES)


def get(name: str) -> Study:
    """The study called ``name``."""
    for study in STUDIES:
        if study.name == name:
            return study
    raise ValueError(f"`name` must be one of {NAMES}, got name={name!r}")
