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
        summary: what it shows, one line of Markdown (the studies index of the docs, ``docs/hooks.py``).
        theory: the sections of the maths page it tests (``"7"``, ``"2.2"``).
    """

    name: str
    title: str
    tables: tuple[str, ...]
    figures: tuple[str, ...]
    doc: str
    summary: str = ""
    theory: tuple[str, ...] = ()

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
          ("saddle_attraction", "saddle_escape"), "studies/saddle_attraction.md",
          summary=r"SGD escapes a saddle; USAM is held iff $\rho\vert\lambda\vert>1$; SAM is held near it; the "
                  r"order-1 SDEs agree with the discrete methods", theory=("7",)),
    Study("edge_of_stability", "Edge of stability", ("trajectory", "summary"),
          ("edge_of_stability",), "studies/edge_of_stability.md",
          summary=r"full-batch sharpness settles at $2/\eta$ (GD), at the USAM edge, and on the SAM edge",
          theory=("7",)),
    Study("sam_quadratic", "SAM's 2-cycle", ("cycle", "cycle_trace", "drift", "drift_summary"),
          ("sam_quadratic",), "studies/sam_quadratic.md",
          summary=r"full-batch SAM bounces on $\pm a^\star v_1$; off quadratics the cycle's centre descends "
                  r"$\lambda_1$", theory=("7",)),
    Study("normalization", "Normalization", ("divergence",), ("normalization",), "studies/normalization.md",
          summary=r"USAM diverges past $\eta=2/(L+\rho L^2)$; SAM stays bounded up to $2/L$", theory=("7",)),
    Study("eigen_sam", "Eigen-SAM and SDE orders",
          ("alignment", "alignment_summary", "sde_orders", "sde_orders_summary"),
          ("eigen_sam", "sde_orders"), "studies/eigen_sam.md",
          summary=r"Eigen-SAM aligns its perturbation with $v_1$; the third-order SDE tracks SAM's sharpness",
          theory=("3", "6")),
    Study("weak_error_all", "Weak error of every method", ("table", "max_gaps", "fits", "relative", "cells"),
          ("weak_error",), "studies/weak_error.md",
          summary=r"first-order SDEs are weak order 1, the SGD SDE order ½, when $\rho\propto\sqrt\eta$",
          theory=("5",)),
    Study("eigenvalue_filters", "Eigenvalue filters", ("filters", "runs", "summary"),
          ("eigenvalue_filters",), "studies/eigenvalue_filters.md",
          summary="converged runs obey each method's eigenvalue filter; USAM can stop at a saddle, Two-step and "
                  "Hessian USAM do not", theory=("2.1", "7")),
    Study("own_model", "Your own model", ("trajectory", "summary"), ("own_model",), "own_model.md",
          summary="an `nn.Module` MLP on real digits: its sharpness settles at each method's edge", theory=("7",)),
    Study("m_sharpness", "m-sharpness", ("paths", "summary", "trend", "trend_by_step", "regulariser"),
          ("m_sharpness",), "studies/m_sharpness.md",
          summary=r"SAM with one perturbation per micro-batch of size $m$: final sharpness and loss against $m$, "
                  r"discrete and order-1 SDE, beside the regulariser $\rho\,\mathbb E\Vert\nabla f_{\gamma'}\Vert$ "
                  r"at batch size $m$", theory=("2.2", "3.6")),
)
"""Every study, in the order ``sde-sam reproduce all`` runs them."""

NAMES: tuple[str, ...] = tuple(study.name for study in STUDIES)


def get(name: str) -> Study:
    """The study called ``name``."""
    for study in STUDIES:
        if study.name == name:
            return study
    raise ValueError(f"`name` must be one of {NAMES}, got name={name!r}")
