r"""Weak error of every method against its order-0 and order-1 SDE models (MATH §5).

Problem: :math:`f=\tfrac12x^\top Hx`, :math:`H=\mathrm{diag}(1,2)`, additive Gaussian gradient noise
:math:`\Sigma=\sigma^2I`, start :math:`x_0=(1,1)`, horizon :math:`T`. Perturbation radius on the "likely"
scaling :math:`\rho=c\sqrt\eta` (MATH §3.1): the order-1 models of Compagnoni et al. drop :math:`O(\rho^2)=O(\eta)`
terms and should be weak order 1, while the SGD SDE (order 0) misses the :math:`O(\rho)=O(\sqrt\eta)` drift
of the perturbation and should be order 1/2. SGD and USAM are linear-Gaussian here, so their studies are
exact (no Monte Carlo); the other methods are Monte Carlo with standard errors, and SAM, Unified SAM and
Eigen-SAM sample their drift's expectation with ``expectation`` draws per evaluation.

Outputs (``results/weak_error_all/``): ``table.csv`` (the studies' tidy tables with a ``method`` column),
``max_gaps.csv`` (the max-over-time gap per lr), ``fits.csv`` (fitted slopes with 95% CIs, or why a slope
was refused), ``relative.csv`` (the SAM-SDE paper's relative statistic), ``solver_error.csv``, ``cells.csv``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import sde_sam as ss
from sde_sam import executors

from experiments import _common

STUDY = "weak_error_all"
METHODS = ("SGD", "USAM", "DNSAM", "SAM", "UnifiedSAM", "EigenSAM")


@dataclass(frozen=True)
class Config:
    eigenvalues: tuple = (1.0, 2.0)
    noise_cov: float = 1.0
    x0: tuple = (1.0, 1.0)
    horizon: float = 1.0
    lrs: tuple = (0.2, 0.1, 0.05, 0.025)
    rho_coef: float = 0.5             # rho = rho_coef * sqrt(lr)
    unified_lam: float = 0.5
    eigen_alpha: float = 0.2
    orders: tuple = (0, 1)
    n_paths: int = 20_000
    expectation: int = 8              # sampled draws per drift evaluation (SAM, UnifiedSAM, EigenSAM)
    dt_ratio: int = 10
    solver_check: bool = True
    methods: tuple = METHODS
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(lrs=(0.2, 0.1, 0.05), n_paths=4000, solver_check=False)

    @classmethod
    def tiny(cls) -> "Config":
        return cls(lrs=(0.2, 0.1), horizon=0.4, n_paths=64, solver_check=False, dt_ratio=2, expectation=2,
                   methods=("SGD", "USAM", "SAM"))


def make_method(name: str, cfg: Config) -> ss.Method:
    lr, rho = cfg.lrs[0], cfg.rho_coef * cfg.lrs[0] ** 0.5
    return {"SGD": lambda: ss.SGD(lr), "USAM": lambda: ss.USAM(lr, rho=rho), "SAM": lambda: ss.SAM(lr, rho=rho),
            "DNSAM": lambda: ss.DNSAM(lr, rho=rho),
            "UnifiedSAM": lambda: ss.UnifiedSAM(lr, rho=rho, lam=cfg.unified_lam),
            "EigenSAM": lambda: ss.EigenSAM(lr, rho=rho, alpha=cfg.eigen_alpha)}[name]()


def _refit(study, tf: str, model: str, err: ValueError, label: dict) -> dict:
    """A refused fit: refit on the learning rates above the Monte-Carlo floor if two or more remain (and say
    so in ``fit``/``note``), else record the refusal."""
    row = {**label, "model": model, "test_function": tf}
    points = getattr(err, "points", None)
    if points is not None:
        keep = points.loc[~points["under_floor"], "lr"].tolist()
        dropped = points.loc[points["under_floor"], "lr"].tolist()
        if len(keep) >= 2:
            fit = study.weak_order(tf, model, lrs=keep)
            return {**row, "slope": fit.slope, "intercept": fit.intercept, "ci_low": fit.ci_low, "ci_high": fit.ci_high, "slope_se": fit.slope_se,
                    "fit": "wls, floor points dropped", "n_lrs": len(fit.points),
                    "note": f"lr={dropped} below the Monte-Carlo floor, left out of the fit. {err}"}
    nan = float("nan")
    return {**row, "slope": nan, "intercept": nan, "ci_low": nan, "ci_high": nan, "slope_se": nan, "fit": "refused",
            "n_lrs": 0, "note": str(err)}


def run(cfg: Config, results: str | Path = _common.DEFAULT_RESULTS, *, executor=None) -> Path:
    """Compute and save the study under ``results/weak_error_all``. Each method's ``weak_error`` study runs
    its cells on ``executor`` (``None``: in this process) and keeps them in
    ``studies/<method>-<config key>/`` (a rerun of the same configuration computes only missing cells)."""
    _common.setup_torch()
    out = _common.study_dir(results, STUDY)
    config_key = executors.spec_key(_common._jsonable(cfg))
    f64 = torch.float64
    prob = ss.Quadratic(torch.diag(torch.tensor(cfg.eigenvalues, dtype=f64)), noise_cov=cfg.noise_cov)
    x0 = torch.tensor(cfg.x0, dtype=f64)
    tables, gaps, fits, rel, solver, cells = [], [], [], [], [], []
    with _common.Timer() as timer:
        for name in cfg.methods:
            method = make_method(name, cfg)
            orders = [1] if name == "SGD" else list(cfg.orders)  # SGD's models of every order coincide
            sampled = name in ("SAM", "UnifiedSAM", "EigenSAM")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # exact mode drops the non-quadratic test function: expected
                study = ss.weak_error(prob, method, lrs=list(cfg.lrs), horizon=cfg.horizon, x0=x0,
                                      n_paths=cfg.n_paths, seed=cfg.seed, sde_order=orders,
                                      rho=None if name == "SGD" else (lambda lr: cfg.rho_coef * lr**0.5),
                                      dt_ratio=cfg.dt_ratio, expectation=cfg.expectation if sampled else "auto",
                                      solver_check=cfg.solver_check, progress=False, executor=executor,
                                      results_dir=out / "studies" / f"{name}-{config_key}")
            label = {"method": name, "mode": study.mode}
            tables.append(study.table.assign(**label))
            gaps.append(study.max_gaps().assign(**label))
            rel += [study.relative(tf).assign(test_function=tf, **label) for tf in study.test_functions]
            cells.append(study.cells.assign(**label))
            if study.solver_error is not None:
                solver.append(study.solver_error.assign(**label))
            for tf in study.test_functions:
                for model in study.models:
                    try:
                        fit = study.weak_order(tf, model)
                        fits.append({**label, "model": model, "test_function": tf, "slope": fit.slope,
                                     "intercept": fit.intercept,
                                     "ci_low": fit.ci_low, "ci_high": fit.ci_high, "slope_se": fit.slope_se,
                                     "fit": fit.fit, "n_lrs": len(fit.points), "note": fit.note})
                    except ValueError as err:  # refused: Monte-Carlo floor (or a degenerate gap)
                        fits.append(_refit(study, tf, model, err, label))
            print(f"[{STUDY}] {name} ({study.mode}): " + "; ".join(
                f"{f['model']} {f['test_function']} slope {f['slope']:.2f}" for f in fits if f["method"] == name))
    frames = {"table": pd.concat(tables, ignore_index=True), "max_gaps": pd.concat(gaps, ignore_index=True),
              "fits": pd.DataFrame(fits), "relative": pd.concat(rel, ignore_index=True),
              "cells": pd.concat(cells, ignore_index=True)}
    if solver:
        frames["solver_error"] = pd.concat(solver, ignore_index=True)
    return _common.finish(cfg, out, frames, timer.seconds)


def main(argv=None) -> Path:
    return _common.study_main(STUDY, argv)


if __name__ == "__main__":
    main()
