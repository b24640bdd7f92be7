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

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import sde_sam as ss  # noqa: E402
from sde_sam import theory  # noqa: E402

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
    g = torch.Generator().manual_seed(cfg.seed)
    f64 = torch.float64
    n, d_in, w = cfg.n, cfg.d_in, cfg.width
    A = torch.randn(n, d_in, generator=g, dtype=f64)
    W_teacher = torch.randn(w, d_in, generator=g, dtype=f64) / d_in**0.5
    v_teacher = torch.randn(w, generator=g, dtype=f64)
    y = torch.tanh(A @ W_teacher.T) @ v_teacher

    def loss(x):
        W, v = x[: w * d_in].reshape(w, d_in), x[w * d_in:]
        return 0.5 * ((torch.tanh(A @ W.T) @ v - y) ** 2).mean()

    x0 = torch.cat([cfg.init_scale * torch.randn(w * d_in, generator=g, dtype=f64) / d_in**0.5,
                    cfg.init_scale * torch.randn(w, generator=g, dtype=f64) / w**0.5])
    return ss.Objective(loss, w * (d_in + 1), noise_cov=0.0, dtype=f64), x0


def methods(cfg: Config) -> dict[str, ss.Method]:
    every = {"GD": ss.SGD(cfg.lr), "USAM": ss.USAM(cfg.lr, rho=cfg.rho_usam), "SAM": ss.SAM(cfg.lr, rho=cfg.rho_sam)}
    return {name: every[name] for name in cfg.methods}


def run(cfg: Config, results: str | Path = _common.DEFAULT_RESULTS) -> Path:
    _common.setup_torch()
    out = _common.study_dir(results, STUDY)
    prob, x0 = problem(cfg)
    rows, summary = [], []
    with _common.Timer() as timer:
        for name, method in methods(cfg).items():
            traj = ss.run(prob, method, x0, steps=cfg.steps, n_paths=1, seed=cfg.seed,
                          record_every=cfg.record_every, observables=("loss", "grad_norm", "lambda_max"))
            t = traj.times.numpy()
            lam = traj.values["lambda_max"][:, 0].numpy()
            gn = traj.values["grad_norm"][:, 0].numpy()
            gd_edge = theory.gd_edge(cfg.lr)
            usam_edge = theory.usam_edge(cfg.lr, method.rho) if name == "USAM" else np.nan
            sam_edge = theory.sam_edge(cfg.lr, cfg.rho_sam, gn) if name == "SAM" else np.full_like(gn, np.nan)
            own = {"GD": np.full_like(lam, gd_edge), "USAM": np.full_like(lam, usam_edge), "SAM": sam_edge}[name]
            rows.append(pd.DataFrame({"method": name, "lr": cfg.lr, "rho": method.rho, "time": t, "step": t / cfg.lr,
                                      "loss": traj.values["loss"][:, 0].numpy(), "grad_norm": gn,
                                      "lambda_max": lam, "gd_edge": gd_edge, "usam_edge": usam_edge,
                                      "sam_edge": sam_edge, "own_edge": own}))
            late = t >= t[-1] * (1 - cfg.late_fraction)
            ratio = lam[late] / own[late]
            summary.append({"method": name, "lr": cfg.lr, "rho": method.rho, "edge_name": {
                "GD": "2/lr", "USAM": "USAM edge", "SAM": "SAM edge at ||g_t||"}[name],
                "late_from_step": float(t[late][0] / cfg.lr), "lambda_late_mean": float(lam[late].mean()),
                "lambda_late_std": float(lam[late].std()), "edge_late_mean": float(own[late].mean()),
                "ratio_late_mean": float(ratio.mean()), "rel_error_pct": float(100 * (ratio.mean() - 1)),
                "max_abs_rel_error_pct": float(100 * np.abs(ratio - 1).max()),
                "lambda_initial": float(lam[0]), "lambda_peak": float(lam.max()), "gd_edge": gd_edge})
    frames = {"trajectory": pd.concat(rows, ignore_index=True), "summary": pd.DataFrame(summary)}
    print(frames["summary"][["method", "lambda_late_mean", "edge_late_mean", "rel_error_pct"]].to_string(index=False))
    return _common.finish(cfg, out, frames, timer.seconds)


def main(argv=None) -> Path:
    args = _common.parse_args(argv, __doc__.splitlines()[0])
    return run(Config.quick() if args.quick else Config(), args.results)


if __name__ == "__main__":
    main()
