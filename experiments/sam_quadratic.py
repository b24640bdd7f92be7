r"""Full-batch SAM on quadratics: the 2-cycle along :math:`v_1` and the drift of its centre.

1. On :math:`f=\tfrac12x^\top Hx` (a randomly rotated :math:`H` with eigenvalues
   :math:`\lambda_1(1, \tfrac12, \tfrac15)`) full-batch SAM converges to the 2-cycle :math:`\pm a^\star v_1`,
   :math:`a^\star=\eta\rho\lambda_1/(2-\eta\lambda_1)` (Bartlett, Long & Bousquet 2023; MATH §7). Over a grid of
   :math:`(\eta,\rho,\lambda_1)` and several random starts per cell, the measured amplitude
   :math:`|\langle x_k,v_1\rangle|` at the end is compared with ``theory.sam_cycle_amplitude``.
2. Off quadratics the centre of the cycle descends :math:`\lambda_1`: on the valley
   :math:`f(x,y)=\tfrac12\lambda(y)x^2`, :math:`\lambda(y)=1+y^2` (:math:`\lambda_1=\lambda(y)` at the centre
   :math:`x=0`), the predicted motion is gradient descent on :math:`\lambda_1` with step
   ``theory.sam_centre_drift_step`` :math:`=2\eta\rho^2/(2-\eta\lambda_1)^2` [derived]:
   :math:`y_{k+1}-y_k\approx-\frac{2\eta\rho^2}{(2-\eta\lambda_1)^2}\lambda'(y_k)`.

Outputs (``results/sam_quadratic/``): ``cycle.csv`` (one row per cell), ``cycle_trace.csv`` (the bounce of
one run), ``drift.csv`` (measured and predicted :math:`y_k`, :math:`\lambda_1` and the local rate ratio).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import sde_sam as ss
from sde_sam import theory

from experiments import _common

STUDY = "sam_quadratic"


@dataclass(frozen=True)
class Config:
    lrs: tuple = (0.01, 0.05, 0.2)
    lr_lams: tuple = (0.2, 0.5, 1.0, 1.5, 1.8)   # eta * lambda_1 (lambda_1 = value / lr)
    rhos: tuple = (0.01, 0.05, 0.2)
    ratios: tuple = (1.0, 0.5, 0.2)               # spectrum of H relative to lambda_1
    n_starts: int = 8                             # random starts per cell (paths)
    steps: int = 2000
    # centre drift on f = 1/2 (1 + y^2) x^2
    drift_lr: float = 0.5
    drift_rhos: tuple = (0.02, 0.05, 0.1)
    drift_x0: tuple = (0.3, 1.0)
    drift_steps: int = 3000
    drift_skip: int = 50                          # steps to let the cycle form before comparing
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(lrs=(0.05, 0.2), lr_lams=(0.2, 1.0, 1.8), rhos=(0.01, 0.2), n_starts=4, steps=1200,
                   drift_steps=1500)

    @classmethod
    def tiny(cls) -> "Config":
        return cls(lrs=(0.2,), lr_lams=(1.0, 1.5), rhos=(0.05,), n_starts=2, steps=300, drift_rhos=(0.1,),
                   drift_steps=200)


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def cycle_specs(cfg: Config) -> list[dict]:
    """One cell per (lr, lr*lambda_1, rho); each draws its starts from its own seed."""
    return [{"part": "cycle", "lr": lr, "lr_lam1": c, "rho": rho, "seed": cfg.seed + i, "rotation_seed": cfg.seed,
             "ratios": list(cfg.ratios), "n_starts": cfg.n_starts, "steps": cfg.steps}
            for i, (lr, c, rho) in enumerate(itertools.product(cfg.lrs, cfg.lr_lams, cfg.rhos))]


def _cycle_run(spec: dict):
    Q = _rotation(len(spec["ratios"]), spec["rotation_seed"])
    v1 = Q[:, 0]

    def along(x):
        return x @ v1

    def across(x):
        return torch.linalg.vector_norm(x - (x @ v1)[:, None] * v1, dim=-1)

    lr, rho = spec["lr"], spec["rho"]
    lam1 = spec["lr_lam1"] / lr
    lams = torch.tensor(spec["ratios"], dtype=torch.float64) * lam1
    prob = ss.Quadratic(Q @ torch.diag(lams) @ Q.T)
    a_star = theory.sam_cycle_amplitude(lr, rho, lam1)
    g = torch.Generator().manual_seed(spec["seed"])
    x0 = 5 * a_star * torch.randn(spec["n_starts"], len(spec["ratios"]), generator=g, dtype=torch.float64)
    traj = ss.run(prob, ss.SAM(lr, rho=rho), x0, steps=spec["steps"], seed=spec["rotation_seed"],
                  observables=(along, across))
    return traj, lam1, lams, a_star


def cycle_cell(spec: dict) -> pd.DataFrame:
    """Measured cycle amplitude of one (lr, lr*lambda_1, rho) cell against theory; or, for
    ``spec["part"] == "trace"``, the first steps of its bounce (to draw)."""
    _common.setup_torch()
    traj, lam1, lams, a_star = _cycle_run(spec)
    lr, rho, c = spec["lr"], spec["rho"], spec["lr_lam1"]
    p = traj.values["along"]
    if spec["part"] == "trace":
        n = min(80, spec["steps"] + 1)
        return pd.DataFrame({"step": np.arange(n), "along": p[:n, 0].numpy(),
                             "across": traj.values["across"][:n, 0].numpy(), "amp_theory": a_star,
                             "lr": lr, "rho": rho, "lam1": lam1})
    amp = p[-2:].abs().mean(dim=0).numpy()              # |<x, v1>| over the last two steps, per start
    flips = bool((torch.sign(p[-1]) == -torch.sign(p[-2])).all())
    rel = amp / a_star - 1
    contraction = theory.sam_cycle_contraction(lr, rho, lams.numpy())
    return pd.DataFrame([{"lr": lr, "rho": rho, "lam1": lam1, "lr_lam1": c, "n_starts": spec["n_starts"],
                          "amp_theory": a_star, "amp_median": float(np.median(amp)), "amp_min": float(amp.min()),
                          "amp_max": float(amp.max()), "rel_error_median": float(np.median(rel)),
                          "max_abs_rel_error": float(np.abs(rel).max()),
                          "frac_within_1pct": float((np.abs(rel) < 0.01).mean()),
                          "across_max": float(traj.values["across"][-1].max()), "two_cycle": flips,
                          "max_contraction": float(np.max(contraction)), "steps": spec["steps"]}])


def cycle_grid(cfg: Config, *, executor=None, out: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    specs = cycle_specs(cfg)
    target = min(cfg.lr_lams, key=lambda v: abs(v - 1.5))  # one bounce to draw: the first cell nearest 1.5
    trace_spec = {**next(s for s in specs if s["lr_lam1"] == target), "part": "trace"}
    return (_common.run_grid(specs, cycle_cell, executor=executor, out=out),
            _common.run_grid([trace_spec], cycle_cell, executor=executor, out=out))


def drift_cell(spec: dict) -> pd.DataFrame:
    """SAM on f = 1/2 (1 + y^2) x^2 at one rho: the centre's y against GD on lambda_1 = 1 + y^2 with the
    derived step."""
    _common.setup_torch()
    prob = ss.Objective(lambda z: 0.5 * (1 + z[1] ** 2) * z[0] ** 2, 2, dtype=torch.float64)
    lr, rho, skip = spec["lr"], spec["rho"], spec["skip"]

    def x_coord(z):
        return z[:, 0]

    def y_coord(z):
        return z[:, 1]

    traj = ss.run(prob, ss.SAM(lr, rho=rho), torch.tensor(spec["x0"], dtype=torch.float64),
                  steps=spec["steps"], observables=(x_coord, y_coord))
    x, y = traj.values["x_coord"][:, 0].numpy(), traj.values["y_coord"][:, 0].numpy()
    k = np.arange(len(y))
    # prediction: y_{k+1} = y_k - step(lambda(y_k)) * lambda'(y_k), started from the measured y at skip
    pred = np.full_like(y, np.nan)
    pred[skip] = y[skip]
    for j in range(skip, len(y) - 1):
        step = theory.sam_centre_drift_step(lr, rho, 1 + pred[j] ** 2)
        pred[j + 1] = pred[j] - step * 2 * pred[j]
    # local rate: two-step difference of y (the cycle alternates x, y moves smoothly) against prediction
    ratio = np.full_like(y, np.nan)
    mid = slice(1, len(y) - 1)
    predicted_rate = -theory.sam_centre_drift_step(lr, rho, 1 + y[mid] ** 2) * 2 * y[mid]
    ratio[mid] = ((y[2:] - y[:-2]) / 2) / predicted_rate
    ratio[:skip] = np.nan
    a_star = theory.sam_cycle_amplitude(lr, rho, 1 + y**2)
    return pd.DataFrame({"rho": rho, "lr": lr, "step": k, "x": x, "y": y, "lam1": 1 + y**2,
                         "y_pred": pred, "lam1_pred": 1 + pred**2, "rate_ratio": ratio, "amp_theory": a_star})


def centre_drift(cfg: Config, *, executor=None, out: Path | None = None) -> pd.DataFrame:
    specs = [{"part": "drift", "lr": cfg.drift_lr, "rho": rho, "x0": list(cfg.drift_x0), "steps": cfg.drift_steps,
              "skip": cfg.drift_skip} for rho in cfg.drift_rhos]
    return _common.run_grid(specs, drift_cell, executor=executor, out=out)


def drift_summary(drift: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    rows = []
    for rho, d in drift.groupby("rho"):
        d = d[(d["step"] >= cfg.drift_skip) & d["rate_ratio"].notna() & (d["y"].abs() > 1e-6)]
        rows.append({"rho": rho, "lr": cfg.drift_lr, "rate_ratio_median": float(d["rate_ratio"].median()),
                     "rate_ratio_min": float(d["rate_ratio"].min()), "rate_ratio_max": float(d["rate_ratio"].max()),
                     "lam1_start": float(d["lam1"].iloc[0]), "lam1_end": float(d["lam1"].iloc[-1]),
                     "lam1_pred_end": float(d["lam1_pred"].iloc[-1])})
    return pd.DataFrame(rows)


def run(cfg: Config, results: str | Path = _common.DEFAULT_RESULTS, *, executor=None) -> Path:
    """Compute and save the study under ``results/sam_quadratic``; cells run on ``executor`` (``None``: in
    this process) and are kept in its ``cells/`` folder."""
    _common.setup_torch()
    out = _common.study_dir(results, STUDY)
    with _common.Timer() as timer:
        cycle, trace = cycle_grid(cfg, executor=executor, out=out)
        drift = centre_drift(cfg, executor=executor, out=out)
        frames = {"cycle": cycle, "cycle_trace": trace, "drift": drift, "drift_summary": drift_summary(drift, cfg)}
    print(f"cycle amplitude: max |rel error| over {len(cycle)} cells = {cycle['max_abs_rel_error'].max():.2e}; "
          f"centre drift rate ratio (measured/predicted) medians: "
          f"{frames['drift_summary']['rate_ratio_median'].round(4).tolist()}")
    return _common.finish(cfg, out, frames, timer.seconds)


def main(argv=None) -> Path:
    return _common.study_main(STUDY, argv)


if __name__ == "__main__":
    main()
