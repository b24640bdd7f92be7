r"""The role of normalisation (Dai, Ahn & Sra, NeurIPS 2023): USAM diverges past
:math:`\eta>2/(L+\rho L^2)` while SAM, like SGD, stays bounded up to :math:`2/L`.

Problem: :math:`f=\tfrac12x^\top Hx`, :math:`H=\mathrm{diag}(L, L/4)`, additive Gaussian gradient noise
:math:`\sigma^2I`. For each :math:`\rho` and a grid of learning rates, many runs of SGD, USAM and SAM; a run
has diverged when :math:`\|x\|` exceeds ``max_norm`` (or turns non-finite) within ``steps`` steps.

Outputs (``results/normalization/``): ``divergence.csv`` (per method, :math:`\rho`, :math:`\eta`: fraction
diverged with its binomial SE, quantiles of the final :math:`\|x\|` over bounded runs, and the theory's
thresholds ``usam_threshold`` :math:`=2/(L+\rho L^2)` and ``gd_threshold`` :math:`=2/L`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import sde_sam as ss
from sde_sam import theory

from experiments import _common

STUDY = "normalization"


@dataclass(frozen=True)
class Config:
    L: float = 2.0
    noise_cov: float = 0.01
    x0: tuple = (1.0, 1.0)
    rhos: tuple = (0.1, 0.5, 1.0)
    lr_min: float = 0.1
    lr_max: float = 1.3
    n_lrs: int = 49
    steps: int = 1000
    n_paths: int = 2000
    max_norm: float = 1e6
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_lrs=13, steps=300, n_paths=300)

    @classmethod
    def tiny(cls) -> "Config":
        return cls(rhos=(0.5,), n_lrs=3, steps=50, n_paths=32)


def divergence_specs(cfg: Config) -> list[dict]:
    """One cell per (rho, method, lr); SGD has no rho: one run serves every rho."""
    lrs = np.linspace(cfg.lr_min, cfg.lr_max, cfg.n_lrs)
    specs = []
    for rho in cfg.rhos:
        for name in ("SGD", "USAM", "SAM"):
            if name == "SGD" and rho != cfg.rhos[0]:
                continue
            for j, lr in enumerate(lrs):
                specs.append({"method": name, "rho": rho, "rhos": list(cfg.rhos) if name == "SGD" else [rho],
                              "lr": float(lr), "seed": cfg.seed + j, "steps": cfg.steps, "n_paths": cfg.n_paths,
                              "max_norm": cfg.max_norm, "L": cfg.L, "noise_cov": cfg.noise_cov, "x0": list(cfg.x0)})
    return specs


def divergence_cell(spec: dict) -> pd.DataFrame:
    """Fraction of diverged runs of one (method, rho, lr), with the theory's thresholds."""
    _common.setup_torch()
    f64 = torch.float64
    L, lr, rho, name = spec["L"], spec["lr"], spec["rho"], spec["method"]
    prob = ss.Quadratic(torch.diag(torch.tensor([L, L / 4], dtype=f64)), noise_cov=spec["noise_cov"])
    method = ss.SGD(lr) if name == "SGD" else getattr(ss, name)(lr, rho=rho)
    traj = ss.run(prob, method, torch.tensor(spec["x0"], dtype=f64), steps=spec["steps"], n_paths=spec["n_paths"],
                  seed=spec["seed"], record_every=spec["steps"], observables=("x_norm",), max_norm=spec["max_norm"])
    p = traj.n_diverged / traj.n_paths
    final = traj.values["x_norm"][-1][~traj.diverged].numpy()
    q = np.quantile(final, [0.1, 0.5, 0.9]) if final.size else [np.nan] * 3
    return pd.DataFrame([{"method": name, "rho": r, "lr": lr, "n_paths": traj.n_paths,
                          "frac_diverged": p, "se": math.sqrt(p * (1 - p) / traj.n_paths),
                          "final_norm_q10": q[0], "final_norm_median": q[1], "final_norm_q90": q[2],
                          "usam_threshold": theory.usam_lr_threshold(r, L), "gd_threshold": 2 / L,
                          "usam_diverges_theory": bool(theory.usam_diverges(lr, r, L)),
                          "L": L, "steps": spec["steps"], "max_norm": spec["max_norm"]} for r in spec["rhos"]])


def run(cfg: Config, results: str | Path = _common.DEFAULT_RESULTS, *, executor=None) -> Path:
    """Compute and save the study under ``results/normalization``; cells run on ``executor`` (``None``: in
    this process) and are kept in its ``cells/`` folder."""
    _common.setup_torch()
    out = _common.study_dir(results, STUDY)
    with _common.Timer() as timer:
        frame = _common.run_grid(divergence_specs(cfg), divergence_cell, executor=executor, out=out)
    return _common.finish(cfg, out, {"divergence": frame}, timer.seconds)


def main(argv=None) -> Path:
    return _common.study_main(STUDY, argv)


if __name__ == "__main__":
    main()
