r"""Eigen-SAM and the third-order SDE (Luo et al., NeurIPS 2024).

1. *Alignment.* Mini-batch SGD, SAM and Eigen-SAM on a two-layer tanh teacher-student problem
   (``teacher_student``, d = 144). At regular steps, per path: the alignment :math:`|\cos(\varepsilon,v_1)|`
   of the step's perturbation with the top eigenvector of the full-batch Hessian (for SGD, of the direction
   SAM would use, :math:`\hat g_\gamma`), the sharpness :math:`\lambda_{\max}` and the loss. For Eigen-SAM
   also the alignment of its own eigenvector estimate with :math:`v_1` and the alignment it would reach
   with an exact :math:`v_1` (``theory.eigen_sam_alignment`` at :math:`c=\langle\hat g_\gamma,v_1\rangle`).
   The loop mirrors :func:`sde_sam.run` (same step, same Eigen-SAM refresh rule) so that the
   perturbation of each step can be recorded.
2. *SDE orders.* Discrete SAM (B = 1 mini-batches, exact expectations by enumeration) against its
   order-0 (SGD), order-1 (Compagnoni et al.) and order-2 (third-order, Luo et al.) SDEs on a small
   teacher-student problem: loss, :math:`\|\nabla f\|` and :math:`\lambda_{\max}` over time.

Outputs (``results/eigen_sam/``): ``alignment.csv``, ``alignment_summary.csv``, ``sde_orders.csv``,
``sde_orders_summary.csv``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import sde_sam as ss
from sde_sam import theory
from sde_sam.methods import effective_gradient, power_iteration

from experiments import _common

STUDY = "eigen_sam"


@dataclass(frozen=True)
class Config:
    # 1. alignment (mini-batch, discrete)
    n: int = 128
    d_in: int = 8
    width: int = 16
    batch_size: int = 16
    lr: float = 0.05
    rho: float = 0.1
    alpha: float = 0.5
    refresh_every: int = 10
    power_iters: int = 5
    steps: int = 2000
    record_every: int = 20
    n_paths: int = 16
    # 2. SDE orders (B = 1, exact expectations)
    sde_n: int = 16
    sde_d_in: int = 3
    sde_width: int = 3
    sde_lr: float = 0.02
    sde_rho: float = 0.2
    sde_horizon: float = 10.0
    sde_dt_ratio: int = 2
    sde_orders: tuple = (0, 1, 2)
    sde_paths: int = 256
    sde_records: int = 20
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(steps=1000, record_every=25, n_paths=8, sde_horizon=6.0, sde_paths=64, sde_records=12)

    @classmethod
    def tiny(cls) -> "Config":
        return cls(n=32, d_in=3, width=4, batch_size=4, steps=20, record_every=10, n_paths=2, sde_horizon=0.2,
                   sde_paths=4, sde_records=2, sde_orders=(1, 2))


def _direction(method: ss.Method) -> ss.Method:
    """SGD has no perturbation: record the direction SAM would perturb along, ĝ."""
    return method if method.perturbs else ss.SAM(method.lr, rho=1.0)


def alignment_run(cfg: Config, method: ss.Method, prob: ss.FiniteSum) -> pd.DataFrame:
    """``sde_sam.run``'s loop written out (same step and Eigen-SAM refresh), recording each step's perturbation."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x = prob.x_init.expand(cfg.n_paths, -1).clone()
    eps = prob.default_eps()
    v = None
    if method.uses_eigenvector:
        v0 = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        v = power_iteration(lambda u: prob.hvp(x, u), v0 / v0.norm(dim=-1, keepdim=True), method.init_power_iters, eps)
    rows, v1 = [], None
    for k in range(cfg.steps + 1):
        draws = prob.sample_draws((cfg.n_paths,), gen)
        if method.uses_eigenvector and k > 0 and k % method.refresh_every == 0:
            v = power_iteration(lambda u: prob.stochastic_hvp(x, u, draws), v, method.power_iters, eps)
        if k % cfg.record_every == 0 or k == cfg.steps:
            g = prob.stochastic_grad(x, draws)
            pert = _direction(method).perturbation(g, eps=eps, v=v).eps
            top = ss.top_eigenpair(prob, x, v0=v1)  # warm start from the previous record's v1
            v1 = top.vector
            c = (g * v1).sum(-1) / g.norm(dim=-1).clamp_min(eps)
            row = {"method": method.name, "step": k, "time": k * cfg.lr, "path": np.arange(cfg.n_paths),
                   "alignment": ss.alignment(pert, v1).numpy(), "lambda_max": top.value.numpy(),
                   "loss": prob.loss(x).numpy(), "grad_alignment": c.abs().numpy()}
            if v is not None:
                row["v_alignment"] = ss.alignment(v, v1).numpy()
                row["alignment_exact_v"] = theory.eigen_sam_alignment(cfg.alpha, c.clamp(-1, 1)).numpy()
            rows.append(pd.DataFrame(row))
        if k < cfg.steps:
            x = x - method.lr * effective_gradient(prob, method, x, draws, eps=eps, v=v)[0]
    return pd.concat(rows, ignore_index=True)


def _alignment_problem(cfg: Config) -> ss.FiniteSum:
    return ss.problems.teacher_student(n=cfg.n, d_in=cfg.d_in, width=cfg.width, batch_size=cfg.batch_size,
                                       seed=cfg.seed)


def alignment_cell(spec: dict) -> pd.DataFrame:
    """Per-path alignment records of one method (``spec["method"]``) on the configuration ``spec["config"]``."""
    _common.setup_torch()
    cfg = _common.config_from_spec(Config, spec["config"])
    method = {"SGD": lambda: ss.SGD(cfg.lr), "SAM": lambda: ss.SAM(cfg.lr, rho=cfg.rho),
              "EigenSAM": lambda: ss.EigenSAM(cfg.lr, rho=cfg.rho, alpha=cfg.alpha, refresh_every=cfg.refresh_every,
                                              power_iters=cfg.power_iters)}[spec["method"]]()
    return alignment_run(cfg, method, _alignment_problem(cfg))


def alignment_study(cfg: Config, *, executor=None, out: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    prob = _alignment_problem(cfg)
    specs = [{"part": "alignment", "method": name, "config": _common._jsonable(cfg)}
             for name in ("SGD", "SAM", "EigenSAM")]
    per_path = _common.run_grid(specs, alignment_cell, executor=executor, out=out)
    value_cols = [c for c in ("alignment", "lambda_max", "loss", "grad_alignment", "v_alignment", "alignment_exact_v")
                  if c in per_path]
    g = per_path.groupby(["method", "step", "time"], sort=False)[value_cols]
    table = g.mean().add_suffix("_mean").join(g.sem().add_suffix("_sem")).reset_index()
    late = per_path[per_path["step"] >= cfg.steps // 2]
    summary = late.groupby("method", sort=False)[value_cols].mean().reset_index()
    summary["from_step"] = cfg.steps // 2
    summary["d"] = prob.d
    return table, summary


SDE_OBSERVABLES = ("loss", "grad_norm", "lambda_max")


def sde_orders_cell(spec: dict) -> pd.DataFrame:
    """One model's run (``spec["order"]``: ``None`` for discrete SAM, else the SDE order) as a tidy frame."""
    _common.setup_torch()
    cfg = _common.config_from_spec(Config, spec["config"])
    prob = ss.problems.teacher_student(n=cfg.sde_n, d_in=cfg.sde_d_in, width=cfg.sde_width, batch_size=1,
                                       seed=cfg.seed)
    method = ss.SAM(cfg.sde_lr, rho=cfg.sde_rho)
    steps = round(cfg.sde_horizon / cfg.sde_lr)
    every = max(1, steps // cfg.sde_records)
    order = spec["order"]
    if order is None:
        name, traj = "discrete SAM", ss.run(prob, method, prob.x_init, steps=steps, n_paths=cfg.sde_paths,
                                            seed=cfg.seed, record_every=every, observables=SDE_OBSERVABLES)
    else:
        sde = ss.sde_model(prob, method, order=order)
        name, traj = f"SDE order {order}", ss.simulate(sde, prob.x_init, t1=steps * cfg.sde_lr,
                                                       dt=cfg.sde_lr / cfg.sde_dt_ratio, n_paths=cfg.sde_paths,
                                                       seed=cfg.seed + 1 + order,
                                                       record_every=every * cfg.sde_dt_ratio,
                                                       observables=SDE_OBSERVABLES)
    return _common.trajectory_frame(traj, model=name, lr=cfg.sde_lr, rho=cfg.sde_rho)


def sde_orders_study(cfg: Config, *, executor=None, out: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    obs = SDE_OBSERVABLES
    specs = [{"part": "sde_orders", "order": order, "config": _common._jsonable(cfg)}
             for order in (None, *cfg.sde_orders)]
    table = _common.run_grid(specs, sde_orders_cell, executor=executor, out=out)
    # gap to the discrete method at each time, in units of the combined standard error
    ref = table[table["model"] == "discrete SAM"].set_index(["observable", "time"])
    rows = []
    for name in table["model"].unique():
        if name == "discrete SAM":
            continue
        sub = table[table["model"] == name].set_index(["observable", "time"])
        gap = (sub["mean"] - ref["mean"]).abs()
        se = np.sqrt(sub["sem"] ** 2 + ref["sem"] ** 2)
        for obs_name in obs:
            gi, si = gap.loc[obs_name].iloc[1:], se.loc[obs_name].iloc[1:]
            rows.append({"model": name, "observable": obs_name, "max_abs_gap": float(gi.max()),
                         "mean_abs_gap": float(gi.mean()), "max_gap_in_se": float((gi / si).max()),
                         "final_gap": float(gi.iloc[-1]), "final_se": float(si.iloc[-1])})
    return table, pd.DataFrame(rows)


def run(cfg: Config, results: str | Path = _common.DEFAULT_RESULTS, *, executor=None) -> Path:
    """Compute and save the study under ``results/eigen_sam``; one cell per method (alignment) and per model
    (SDE orders) on ``executor`` (``None``: in this process), kept in its ``cells/`` folder."""
    _common.setup_torch()
    out = _common.study_dir(results, STUDY)
    with _common.Timer() as timer:
        align, align_summary = alignment_study(cfg, executor=executor, out=out)
        orders, orders_summary = sde_orders_study(cfg, executor=executor, out=out)
    print(align_summary.round(3).to_string(index=False))
    print(orders_summary.round(4).to_string(index=False))
    frames = {"alignment": align, "alignment_summary": align_summary, "sde_orders": orders,
              "sde_orders_summary": orders_summary}
    return _common.finish(cfg, out, frames, timer.seconds)


def main(argv=None) -> Path:
    return _common.study_main(STUDY, argv)


if __name__ == "__main__":
    main()
