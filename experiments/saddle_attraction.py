r"""Saddle attraction of SAM-type methods (Compagnoni et al., ICML 2023; MATH §7 "Saddles").

Two problems with the saddle :math:`H=\mathrm{diag}(1,-1)` at the origin and additive Gaussian gradient
noise :math:`\Sigma=\sigma^2 I`:

* the quadratic saddle :math:`f=\tfrac12(x_1^2-x_2^2)` (the escape direction is unbounded below);
* a non-convex model with the same saddle and two minima at :math:`x_2=\pm s`:
  :math:`f=\tfrac12(x_1^2-x_2^2)+x_2^4/(4s^2)`.

Outputs (``results/saddle_attraction/``):

* ``distance.csv``: distance to the saddle :math:`\|x_t\|` over time, per problem, method, :math:`\rho`,
  discrete run or order-1 SDE: mean, SEM and quantiles across paths.
* ``escape.csv``: on the non-convex model, the probability that a path has left the saddle
  (:math:`|x_2(T)|>s/2`) over a :math:`(\rho,\eta)` grid, the discrete runs and the order-1 SDE on the same
  grid, with the theory's verdicts:
  USAM flow contracts the negative direction iff :math:`\rho|\lambda|>1`; discrete USAM converges along it
  iff :math:`0\le\lambda(1+\rho\lambda)\le2/\eta`; the SAM/DNSAM flow contracts while :math:`\|Hx\|<\rho|\lambda|`,
  evaluated at the start :math:`\|Hx_0\|` and at the typical stochastic gradient norm at the saddle
  :math:`\mathbb E\|\nabla f_\gamma(0)\|=\sigma\sqrt{\pi/2}` (d = 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import sde_sam as ss
from sde_sam import theory

from experiments import _common

STUDY = "saddle_attraction"
METHODS = ("SGD", "USAM", "DNSAM", "SAM")


@dataclass(frozen=True)
class Config:
    noise_cov: float = 0.01            # sigma^2
    well: float = 2.0                  # s: minima of the non-convex model at x2 = +-s
    x0: tuple = (0.5, 0.0)             # start (||H x0|| = 0.5)
    # distance over time
    lr: float = 0.05
    rhos: tuple = (0.5, 1.5)
    horizon: float = 8.0
    n_paths: int = 2000
    n_paths_sam_sde: int = 500         # SAM's order-1 SDE samples its expectation: costlier
    sam_expectation: int = 8           # sampled draws per drift evaluation for SAM's SDE
    dt_ratio: int = 5                  # SDE step dt = lr / dt_ratio
    records: int = 80
    # escape grid (non-convex model)
    grid_rhos: tuple = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
    grid_lrs: tuple = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)  # discrete runs and SDE alike
    grid_horizon: float = 20.0
    grid_paths: int = 1000
    grid_sde_paths: int = 500
    grid_sde_dt: float = 0.025         # SDE step min(grid_sde_dt, lr / 2)
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_paths=400, n_paths_sam_sde=150, horizon=6.0, records=30, dt_ratio=2,
                   grid_rhos=(0.1, 0.3, 0.6, 1.0, 1.5), grid_lrs=(0.05, 0.1, 0.4),
                   grid_horizon=10.0, grid_paths=300, grid_sde_paths=150, grid_sde_dt=0.05)

    @classmethod
    def tiny(cls) -> "Config":
        """For smoke tests: seconds."""
        return cls(n_paths=64, n_paths_sam_sde=16, horizon=1.0, records=5, rhos=(1.5,),
                   grid_rhos=(0.3, 1.5), grid_lrs=(0.2,), grid_horizon=1.0,
                   grid_paths=32, grid_sde_paths=16, grid_sde_dt=0.1, sam_expectation=2)


def make_method(name: str, lr: float, rho: float) -> ss.Method:
    return ss.SGD(lr) if name == "SGD" else getattr(ss, name)(lr, rho=rho)


def problems(cfg: Config) -> dict[str, ss.Problem]:
    return {name: _problem(name, cfg.noise_cov, cfg.well) for name in ("quadratic", "nonconvex")}


def _problem(name: str, noise_cov: float, well: float) -> ss.Problem:
    if name == "quadratic":
        return ss.saddle((1.0, -1.0), noise_cov=noise_cov)
    s2 = well**2

    def nonconvex(x):
        return 0.5 * (x[0] ** 2 - x[1] ** 2) + x[1] ** 4 / (4 * s2)

    return ss.Objective(nonconvex, 2, noise_cov=noise_cov, dtype=torch.float64)


def _simulate(prob, method, x0, *, kind, horizon, n_paths, seed, records, dt, expectation, observables,
              max_norm):
    if kind == "discrete":
        steps = round(horizon / method.lr)
        return ss.run(prob, method, x0, steps=steps, n_paths=n_paths, seed=seed,
                      record_every=max(1, steps // records), observables=observables, max_norm=max_norm)
    sde = ss.sde_model(prob, method, order=1, expectation=expectation, seed=seed)
    steps = round(horizon / dt)
    return ss.simulate(sde, x0, t1=steps * dt, dt=dt, n_paths=n_paths, seed=seed,
                       record_every=max(1, steps // records), observables=observables, max_norm=max_norm)


def distance_specs(cfg: Config) -> list[dict]:
    """One cell per (problem, rho, method, discrete|sde); SGD has no rho: one run serves every panel."""
    specs = []
    for pname in ("quadratic", "nonconvex"):
        for rho in cfg.rhos:
            for i, name in enumerate(METHODS):
                if name == "SGD" and rho != cfg.rhos[0]:
                    continue
                for kind in ("discrete", "sde"):
                    sam_sde = kind == "sde" and name == "SAM"
                    specs.append({
                        "part": "distance", "problem": pname, "method": name, "rho": rho,
                        "rhos": list(cfg.rhos) if name == "SGD" else [rho], "kind": kind, "lr": cfg.lr,
                        "n_paths": cfg.n_paths_sam_sde if sam_sde else cfg.n_paths,
                        "seed": cfg.seed + 10 * i + (kind == "sde"), "horizon": cfg.horizon,
                        "records": cfg.records, "dt": cfg.lr / cfg.dt_ratio,
                        "expectation": cfg.sam_expectation if sam_sde else "auto",
                        "noise_cov": cfg.noise_cov, "well": cfg.well, "x0": list(cfg.x0)})
    return specs


def distance_cell(spec: dict) -> pd.DataFrame:
    """Quantiles of ||x_t|| over the paths of one (problem, method, rho, kind) cell."""
    _common.setup_torch()
    prob = _problem(spec["problem"], spec["noise_cov"], spec["well"])
    method = make_method(spec["method"], spec["lr"], spec["rho"])
    traj = _simulate(prob, method, torch.tensor(spec["x0"], dtype=torch.float64), kind=spec["kind"],
                     horizon=spec["horizon"], n_paths=spec["n_paths"], seed=spec["seed"], records=spec["records"],
                     dt=spec["dt"], expectation=spec["expectation"], observables=("x_norm",), max_norm=1e8)
    return pd.concat([_common.quantile_frame(traj, "x_norm", problem=spec["problem"], method=spec["method"], rho=r,
                                             kind=spec["kind"], lr=spec["lr"]) for r in spec["rhos"]],
                     ignore_index=True)


def distance_over_time(cfg: Config, *, executor=None, out: Path | None = None) -> pd.DataFrame:
    return _common.run_grid(distance_specs(cfg), distance_cell, executor=executor, out=out)


def escape_specs(cfg: Config) -> list[dict]:
    """One cell per (discrete|sde, lr, rho, method) of the escape grid on the non-convex model: the SDE on the
    same (rho, lr) grid as the discrete runs."""
    specs = []
    for kind, n_paths in (("discrete", cfg.grid_paths), ("sde", cfg.grid_sde_paths)):
        for lr in cfg.grid_lrs:
            for rho in cfg.grid_rhos:
                for i, name in enumerate(METHODS):
                    sam_sde = kind == "sde" and name == "SAM"
                    specs.append({
                        "part": "escape", "kind": kind, "method": name, "lr": lr, "rho": rho, "n_paths": n_paths,
                        "seed": cfg.seed + 1000 + 10 * i, "horizon": cfg.grid_horizon,
                        "dt": min(cfg.grid_sde_dt, lr / 2),
                        "expectation": cfg.sam_expectation if sam_sde else "auto",
                        "noise_cov": cfg.noise_cov, "well": cfg.well, "x0": list(cfg.x0)})
    return specs


def escape_cell(spec: dict) -> pd.DataFrame:
    """The escape probability of one (kind, lr, rho, method) cell, with the theory's verdicts."""
    _common.setup_torch()
    prob = _problem("nonconvex", spec["noise_cov"], spec["well"])
    x0 = torch.tensor(spec["x0"], dtype=torch.float64)
    threshold = spec["well"] / 2
    lr, rho, name = spec["lr"], spec["rho"], spec["method"]

    def escaped(x):
        return (x[:, 1].abs() > threshold).to(x.dtype)

    g0 = float(torch.linalg.vector_norm(prob.grad(x0[None]), dim=-1))
    g_noise = math.sqrt(spec["noise_cov"]) * math.sqrt(math.pi / 2)  # E||Z||, Z ~ N(0, sigma^2 I_2)
    traj = _simulate(prob, make_method(name, lr, rho), x0, kind=spec["kind"], horizon=spec["horizon"],
                     n_paths=spec["n_paths"], seed=spec["seed"], records=1, dt=spec["dt"],
                     expectation=spec["expectation"], observables=(escaped,), max_norm=1e6)
    vals = traj.values["escaped"][-1]
    kept = vals[~traj.diverged]
    p = float(kept.mean()) if kept.numel() else math.nan
    return pd.DataFrame([{
        "kind": spec["kind"], "method": name, "lr": lr, "rho": rho, "n_paths": traj.n_paths,
        "p_escape": p, "se": math.sqrt(max(p * (1 - p), 0) / max(kept.numel(), 1)),
        "p_diverged": traj.n_diverged / traj.n_paths,
        # theory verdicts for the negative direction lambda = -1 (True: attracted)
        "usam_flow_attracted": bool(theory.usam_flow_contracts(rho, -1.0)),
        "usam_discrete_attracted": bool(theory.usam_discrete_converges(lr, rho, -1.0)
                                        and theory.usam_discrete_converges(lr, rho, 1.0)),
        "sam_flow_attracted_x0": bool(theory.sam_flow_contracts(rho, -1.0, g0)),
        "sam_flow_attracted_noise": bool(theory.sam_flow_contracts(rho, -1.0, g_noise)),
        "grad_norm_x0": g0, "grad_norm_noise": g_noise,
    }])


def escape_grid(cfg: Config, *, executor=None, out: Path | None = None) -> pd.DataFrame:
    return _common.run_grid(escape_specs(cfg), escape_cell, executor=executor, out=out)


def run(cfg: Config, results: str | Path = _common.DEFAULT_RESULTS, *, executor=None) -> Path:
    """Compute and save the study under ``results/saddle_attraction``; cells run on ``executor`` (``None``:
    in this process) and are kept in its ``cells/`` folder."""
    _common.setup_torch()
    out = _common.study_dir(results, STUDY)
    with _common.Timer() as t:
        frames = {"distance": distance_over_time(cfg, executor=executor, out=out),
                  "escape": escape_grid(cfg, executor=executor, out=out)}
    return _common.finish(cfg, out, frames, t.seconds)


def main(argv=None) -> Path:
    return _common.study_main(STUDY, argv)


if __name__ == "__main__":
    main()
