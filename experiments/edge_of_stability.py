r"""Edge of stability of full-batch GD, USAM and SAM on a small tanh network with squared loss.

A two-layer tanh network :math:`x\mapsto v^\top\tanh(Wa)` (``width`` hidden units) fits a random teacher
of the same shape on ``n`` Gaussian inputs with the mean squared loss, from a small initialisation
(``init_scale``), so its sharpness :math:`\lambda_{\max}(\nabla^2 f)` rises while it learns (progressive
sharpening). With a learning rate whose edge lies below the sharpness gradient flow would reach, each
method's sharpness rises to its edge and stays there (MATH §7):

* GD: :math:`2/\eta` (Cohen et al.);
* USAM: :math:`\lambda^\star` with :math:`\eta\lambda(1+\rho\lambda)=2` (Agarwala & Dauphin; Dai et al.);
* SAM: :math:`\frac{\|g\|}{2\rho}\big(\sqrt{1+8\rho/(\eta\|g\|)}-1\big)` at the current gradient norm
  (Long & Bartlett), always below :math:`2/\eta`.

Outputs (``results/edge_of_stability/``): ``trajectory.csv`` (per method and time: loss, ``grad_norm``,
``lambda_max`` and the edges), ``summary.csv`` (late-phase mean sharpness against each edge, in %).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import sde_sam as ss
from sde_sam import theory

from experiments import _common

STUDY = "edge_of_stability"


@dataclass(frozen=True)
class Config:
    n: int = 20                 # training inputs
    d_in: int = 5
    width: int = 10             # d = width * (d_in + 1) = 60 parameters
    init_scale: float = 0.1     # small init: the network must grow, and its sharpness with it
    lr: float = 0.8             # 2/lr = 2.5, below the sharpness gradient flow reaches (~3)
    rho_usam: float = 0.1       # USAM edge 2.07
    rho_sam: float = 0.02
    steps: int = 5000
    record_every: int = 10      # lambda_max (20 Lanczos HVPs) at every record
    late_fraction: float = 0.4  # the done-when statistic averages the last 40% of the run
    methods: tuple = ("GD", "USAM", "SAM")
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(steps=3000, record_every=20)

    @classmethod
    def tiny(cls) -> "Config":
        return cls(steps=60, record_every=20)


def problem(cfg: Config) -> tuple[ss.Objective, torch.Tensor]:
    """The full-batch tanh network (``noise_cov=0``: GD/USAM/SAM are deterministic) and its start."""
    return _problem(cfg.n, cfg.d_in, cfg.width, cfg.init_scale, cfg.seed)


def _problem(n: int, d_in: int, w: int, init_scale: float, seed: int) -> tuple[ss.Objective, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    A = torch.randn(n, d_in, generator=g, dtype=f64)
    W_teacher = torch.randn(w, d_in, generator=g, dtype=f64) / d_in**0.5
    v_teacher = torch.randn(w, generator=g, dtype=f64)
    y = torch.tanh(A @ W_teacher.T) @ v_teacher

    def loss(x):
        W, v = x[: w * d_in].reshape(w, d_in), x[w * d_in:]
        return 0.5 * ((torch.tanh(A @ W.T) @ v - y) ** 2).mean()

    x0 = torch.cat([init_scale * torch.randn(w * d_in, generator=g, dtype=f64) / d_in**0.5,
                    init_scale * torch.randn(w, generator=g, dtype=f64) / w**0.5])
    return ss.Objective(loss, w * (d_in + 1), noise_cov=0.0, dtype=f64), x0


def methods(cfg: Config) -> dict[str, ss.Method]:
    return {name: _method(name, cfg.lr, cfg.rho_usam, cfg.rho_sam) for name in cfg.methods}


def _method(name: str, lr: float, rho_usam: float, rho_sam: float) -> ss.Method:
    return {"GD": lambda: ss.SGD(lr), "USAM": lambda: ss.USAM(lr, rho=rho_usam),
            "SAM": lambda: ss.SAM(lr, rho=rho_sam)}[name]()


def method_specs(cfg: Config) -> list[dict]:
    """One cell per method: the whole run on the same network."""
    return [{"method": name, "n": cfg.n, "d_in": cfg.d_in, "width": cfg.width, "init_scale": cfg.init_scale,
             "lr": cfg.lr, "rho_usam": cfg.rho_usam, "rho_sam": cfg.rho_sam, "steps": cfg.steps,
             "record_every": cfg.record_every, "seed": cfg.seed} for name in cfg.methods]


def method_cell(spec: dict) -> pd.DataFrame:
    """Loss, gradient norm and sharpness over one method's run, with the edges."""
    _common.setup_torch()
    name, lr = spec["method"], spec["lr"]
    prob, x0 = _problem(spec["n"], spec["d_in"], spec["width"], spec["init_scale"], spec["seed"])
    method = _method(name, lr, spec["rho_usam"], spec["rho_sam"])
    traj = ss.run(prob, method, x0, steps=spec["steps"], n_paths=1, seed=spec["seed"],
                  record_every=spec["record_every"], observables=("loss", "grad_norm", "lambda_max"))
    t = traj.times.numpy()
    lam = traj.values["lambda_max"][:, 0].numpy()
    gn = traj.values["grad_norm"][:, 0].numpy()
    gd_edge = theory.gd_edge(lr)
    usam_edge = theory.usam_edge(lr, method.rho) if name == "USAM" else np.nan
    sam_edge = theory.sam_edge(lr, spec["rho_sam"], gn) if name == "SAM" else np.full_like(gn, np.nan)
    own = {"GD": np.full_like(lam, gd_edge), "USAM": np.full_like(lam, usam_edge), "SAM": sam_edge}[name]
    return pd.DataFrame({"method": name, "lr": lr, "rho": method.rho, "time": t, "step": t / lr,
                         "loss": traj.values["loss"][:, 0].numpy(), "grad_norm": gn,
                         "lambda_max": lam, "gd_edge": gd_edge, "usam_edge": usam_edge,
                         "sam_edge": sam_edge, "own_edge": own})


def summarize(trajectory: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Late-phase mean sharpness of each method against its own edge."""
    summary = []
    for name, d in trajectory.groupby("method", sort=False):
        t, lam, own = d["time"].to_numpy(), d["lambda_max"].to_numpy(), d["own_edge"].to_numpy()
        late = t >= t[-1] * (1 - cfg.late_fraction)
        ratio = lam[late] / own[late]
        rho = d["rho"].iloc[0]
        summary.append({"method": name, "lr": cfg.lr, "rho": rho, "edge_name": {
            "GD": "2/lr", "USAM": "USAM edge", "SAM": "SAM edge at ||g_t||"}[name],
            "late_from_step": float(t[late][0] / cfg.lr), "lambda_late_mean": float(lam[late].mean()),
            "lambda_late_std": float(lam[late].std()), "edge_late_mean": float(own[late].mean()),
            "ratio_late_mean": float(ratio.mean()), "rel_error_pct": float(100 * (ratio.mean() - 1)),
            "max_abs_rel_error_pct": float(100 * np.abs(ratio - 1).max()),
            "lambda_initial": float(lam[0]), "lambda_peak": float(lam.max()), "gd_edge": theory.gd_edge(cfg.lr)})
    return pd.DataFrame(summary)


def run(cfg: Config, results: str | Path = _common.DEFAULT_RESULTS, *, executor=None) -> Path:
    """Compute and save the study under ``results/edge_of_stability``; one cell per method on ``executor``
    (``None``: in this process), kept in its ``cells/`` folder."""
    _common.setup_torch()
    out = _common.study_dir(results, STUDY)
    with _common.Timer() as timer:
        trajectory = _common.run_grid(method_specs(cfg), method_cell, executor=executor, out=out)
        frames = {"trajectory": trajectory, "summary": summarize(trajectory, cfg)}
    print(frames["summary"][["method", "lambda_late_mean", "edge_late_mean", "rel_error_pct"]].to_string(index=False))
    return _common.finish(cfg, out, frames, timer.seconds)


def main(argv=None) -> Path:
    return _common.study_main(STUDY, argv)


if __name__ == "__main__":
    main()
