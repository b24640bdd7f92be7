r"""Your own model: edge of stability of full-batch GD, USAM and SAM for an nn.Module MLP on real digits.

A ``torch.nn`` tanh MLP (64 → ``hidden`` → 10) on ``n`` standardised scikit-learn digits, squared loss
against one-hot labels, becomes a problem through :meth:`sde_sam.Objective.from_module` (``noise_cov=0``:
the methods are deterministic, full batch). From a scaled-down initialisation its sharpness
:math:`\lambda_{\max}(\nabla^2 f)` (Lanczos on exact HVPs, ``ss.top_eigenpair``) rises while it learns, until
each method's sharpness reaches its edge and stays there (MATH §7):

* GD: :math:`2/\eta` (Cohen et al.);
* USAM: :math:`\lambda^\star` with :math:`\eta\lambda(1+\rho\lambda)=2` (Agarwala & Dauphin; Dai et al.);
* SAM: :math:`\frac{4}{\eta(1+\sqrt{1+8\rho/(\eta\|g\|)})}` at the current gradient norm (Long & Bartlett).

The squared loss is used as in Cohen et al.'s edge-of-stability runs: with cross-entropy the sharpness falls
late in training as the margins grow. Outputs (``results/own_model/``): ``trajectory.csv`` (per method and
time: loss, ``grad_norm``, ``lambda_max`` and the edges) and ``summary.csv`` (late-phase mean sharpness
against each method's edge, in %).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import sde_sam as ss
from sde_sam import theory

from experiments import _common

STUDY = "own_model"


@dataclass(frozen=True)
class Config:
    n: int = 128                # digits (a seeded subset of the 1,797)
    hidden: int = 32            # d = 65*32 + 10*33 = 2,410 parameters
    init_scale: float = 0.5     # the initial weights, scaled: sharpness starts below every edge
    lr: float = 2.0             # 2/lr = 1.0
    rho_usam: float = 0.3       # USAM edge 0.805
    rho_sam: float = 0.05       # SAM edge ~0.5 at the gradient norms reached
    steps: int = 3000
    record_every: int = 20      # lambda_max (20 Lanczos HVPs) at every record
    late_fraction: float = 0.4  # the summary averages the last 40% of the run
    methods: tuple = ("GD", "USAM", "SAM")
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(steps=1500, record_every=30)

    @classmethod
    def tiny(cls) -> "Config":
        return cls(steps=40, record_every=20)


def problem(n: int, hidden: int, seed: int) -> ss.Objective:
    """The full-batch digits MLP as a module problem (float64)."""
    return ss.problems.digits_mlp(n, hidden=hidden, loss="mse", batch_size=None, seed=seed)


def _method(name: str, lr: float, rho_usam: float, rho_sam: float) -> ss.Method:
    return {"GD": lambda: ss.SGD(lr), "USAM": lambda: ss.USAM(lr, rho=rho_usam),
            "SAM": lambda: ss.SAM(lr, rho=rho_sam)}[name]()


def method_specs(cfg: Config) -> list[dict]:
    """One cell per method: the whole run on the same model."""
    return [{"method": name, "n": cfg.n, "hidden": cfg.hidden, "init_scale": cfg.init_scale, "lr": cfg.lr,
             "rho_usam": cfg.rho_usam, "rho_sam": cfg.rho_sam, "steps": cfg.steps,
             "record_every": cfg.record_every, "seed": cfg.seed} for name in cfg.methods]


def method_cell(spec: dict) -> pd.DataFrame:
    """Loss, gradient norm and sharpness over one method's run, with the edges."""
    _common.setup_torch()
    name, lr = spec["method"], spec["lr"]
    prob = problem(spec["n"], spec["hidden"], spec["seed"])
    method = _method(name, lr, spec["rho_usam"], spec["rho_sam"])
    traj = ss.run(prob, method, spec["init_scale"] * prob.x_init, steps=spec["steps"], n_paths=1,
                  seed=spec["seed"], record_every=spec["record_every"],
                  observables=("loss", "grad_norm", "lambda_max"))
    t = traj.times.numpy()
    lam = traj.values["lambda_max"][:, 0].numpy()
    gn = traj.values["grad_norm"][:, 0].numpy()
    gd_edge = float(theory.gd_edge(lr))
    usam_edge = float(theory.usam_edge(lr, spec["rho_usam"]))
    sam_edge = np.asarray(theory.sam_edge(lr, spec["rho_sam"], gn), dtype=float)
    own = {"GD": np.full_like(lam, gd_edge), "USAM": np.full_like(lam, usam_edge), "SAM": sam_edge}[name]
    return pd.DataFrame({"method": name, "lr": lr, "rho": method.rho, "time": t, "step": np.rint(t / lr),
                         "loss": traj.values["loss"][:, 0].numpy(), "grad_norm": gn, "lambda_max": lam,
                         "gd_edge": gd_edge, "usam_edge": usam_edge, "sam_edge": sam_edge, "own_edge": own,
                         "diverged": bool(traj.diverged[0])})


def summarize(trajectory: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Late-phase mean sharpness of each method against its own edge."""
    rows = []
    for name, d in trajectory.groupby("method", sort=False):
        t, lam, own = d["time"].to_numpy(), d["lambda_max"].to_numpy(), d["own_edge"].to_numpy()
        late = t >= t[-1] * (1 - cfg.late_fraction)
        ratio = lam[late] / own[late]
        rows.append({"method": name, "lr": cfg.lr, "rho": float(d["rho"].iloc[0]),
                     "edge_name": {"GD": "2/lr", "USAM": "USAM edge", "SAM": "SAM edge at ||g_t||"}[name],
                     "late_from_step": float(t[late][0] / cfg.lr), "lambda_late_mean": float(lam[late].mean()),
                     "lambda_late_std": float(lam[late].std()), "edge_late_mean": float(own[late].mean()),
                     "rel_error_pct": float(100 * (ratio.mean() - 1)), "lambda_initial": float(lam[0]),
                     "lambda_peak": float(lam.max()), "loss_final": float(d["loss"].iloc[-1])})
    return pd.DataFrame(rows)


def run(cfg: Config, results: str | Path = _common.DEFAULT_RESULTS, *, executor=None) -> Path:
    """Compute and save the study under ``results/own_model``; one cell per method on ``executor``."""
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
