r"""m-sharpness: SAM with one perturbation per micro-batch of size m, discrete and order-1 SDE, on digits.

SAM (``micro_batch=m``, MATH §2.2) with mini-batches of ``B`` samples of a ``torch.nn`` tanh MLP on
scikit-learn digits (``ss.problems.digits_mlp``, cross-entropy, a :meth:`FiniteSum.from_module` problem),
for every ``m`` in ``micro_batches`` (``m = B`` is plain SAM), beside mini-batch SGD (:math:`\rho=0`, where
``m`` does not matter). Each runs as the discrete method (``ss.run``) and as its order-1 SDE
(``ss.sde_model(prob, method, order=1)`` with ``ss.simulate`` at :math:`\Delta t=\eta/\text{dt\_ratio}`; the
two-draw scheme of MATH §4.1, chosen automatically for mini-batches). Recorded per path, sparsely (Lanczos
costs ``2n`` per Hessian-vector product): the full-batch loss and the sharpness
:math:`\lambda_{\max}(\nabla^2 f)`.

Theory (MATH §3.6, with replacement): m-SAM's drift is plain SAM's drift at batch size ``m``,
:math:`-\nabla\big(f+\rho\,\mathbb E_{|\gamma'|=m}\|\nabla f_{\gamma'}\|\big)`, so the implicit regulariser
:math:`R_m(x)=\rho\,\mathbb E_{|\gamma'|=m}\|\nabla f_{\gamma'}(x)\|` grows as ``m`` shrinks (the norm of a mean of ``m``
i.i.d. gradients; Jensen): the expected direction is a lower sharpness at smaller ``m``. The table
``regulariser`` estimates :math:`R_m` at the initial point (``m = 1`` exactly, by enumerating the ``n``
samples; other ``m`` by Monte Carlo over ``penalty_draws`` micro-batches, with its standard error).

Outputs (``results/m_sharpness/``): ``paths.csv`` (per model, ``m``, record and path: loss, ``lambda_max``),
``summary.csv`` (per model and ``m``, at the end: mean and standard error over paths), ``trend.csv`` (per
model and observable: the weighted least-squares slope against :math:`\log_2 m` and the difference
``m = B`` minus ``m = 1``, each with its standard error), ``trend_by_step.csv`` (the same at every record),
``regulariser.csv``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import sde_sam as ss

from experiments import _common

STUDY = "m_sharpness"
OBSERVABLES = ("loss", "lambda_max")
MODELS = ("discrete", "SDE order 1")


@dataclass(frozen=True)
class Config:
    n: int = 256                        # digits (a seeded subset of the 1,797)
    hidden: int = 16                    # d = 65*16 + 10*17 = 1,210 parameters
    batch_size: int = 32                # B
    micro_batches: tuple = (1, 2, 4, 8, 32)
    lr: float = 0.2
    rho: float = 0.2
    steps: int = 300
    n_paths: int = 16
    dt_ratio: int = 2                   # SDE: dt = lr / dt_ratio (the two-draw scheme needs dt < lr)
    records: int = 6                    # lambda_max (Lanczos) at records + 1 evenly spaced steps
    lanczos_iters: int = 20
    penalty_draws: int = 512            # Monte Carlo micro-batches for R_m(x_0)
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(steps=150, n_paths=8, records=3, lanczos_iters=12)

    @classmethod
    def tiny(cls) -> "Config":
        return cls(n=64, hidden=4, batch_size=4, micro_batches=(1, 2, 4), steps=4, n_paths=2, records=1,
                   lanczos_iters=4, penalty_draws=16)


def problem(cfg: Config) -> ss.FiniteSum:
    """The mini-batch digits MLP as a module problem (float64, with replacement)."""
    return ss.problems.digits_mlp(cfg.n, hidden=cfg.hidden, loss="cross_entropy", batch_size=cfg.batch_size,
                                  seed=cfg.seed)


def method(cfg: Config, m: int | None) -> ss.Method:
    """SAM with micro-batches of ``m`` (``m = B``: plain SAM); ``None``: SGD."""
    return ss.SGD(cfg.lr) if m is None else ss.SAM(cfg.lr, rho=cfg.rho, micro_batch=m)


def cell_specs(cfg: Config) -> list[dict]:
    """One cell per model and ``m`` (``None``: SGD), each with its own seed: the cells are independent, so
    standard errors of differences between them are the root sum of squares."""
    specs = []
    for i, model in enumerate(MODELS):
        for j, m in enumerate((None, *cfg.micro_batches)):
            specs.append({"model": model, "m": m, "seed": cfg.seed + 1000 * i + j,
                          "config": _common._jsonable(cfg)})
    return specs


def run_cell(spec: dict) -> pd.DataFrame:
    """Per-path loss and sharpness at every record of one model's run."""
    _common.setup_torch()
    cfg = _common.config_from_spec(Config, spec["config"])
    prob, m = problem(cfg), spec["m"]
    meth = method(cfg, m)
    every = max(1, cfg.steps // cfg.records)
    observables = ("loss", ss.observables.lambda_max(iters=cfg.lanczos_iters))
    if spec["model"] == "discrete":
        traj = ss.run(prob, meth, prob.x_init, steps=cfg.steps, n_paths=cfg.n_paths, seed=spec["seed"],
                      record_every=every, observables=observables)
    else:
        sde = ss.sde_model(prob, meth, order=1)
        traj = ss.simulate(sde, prob.x_init, t1=cfg.steps * cfg.lr, dt=cfg.lr / cfg.dt_ratio, n_paths=cfg.n_paths,
                           seed=spec["seed"], record_every=every * cfg.dt_ratio, observables=observables)
    times = traj.times.numpy()
    n_rec, n_paths = traj.values["loss"].shape
    return pd.DataFrame({
        "model": spec["model"], "method": meth.name, "m": -1 if m is None else m,
        "time": np.repeat(times, n_paths), "step": np.repeat(np.rint(times / cfg.lr).astype(int), n_paths),
        "path": np.tile(np.arange(n_paths), n_rec),
        **{name: traj.values[name].reshape(-1).numpy() for name in OBSERVABLES},
        "diverged": np.tile(traj.diverged.numpy(), n_rec)})


def summarize(paths: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Mean and standard error over the paths that did not diverge, at record ``step`` (``None``: the last) and
    at the first."""
    rows = []
    for (model, m), d in paths.groupby(["model", "m"], sort=False):
        ok = d[~d["diverged"]]
        at = int(d["step"].max()) if step is None else step
        first, last = ok[ok["step"] == ok["step"].min()], ok[ok["step"] == at]
        row = {"model": model, "method": d["method"].iloc[0], "m": m, "step": at,
               "time": float(d.loc[d["step"] == at, "time"].iloc[0]), "n_paths": len(last),
               "n_diverged": int(d.loc[d["step"] == at, "diverged"].sum())}
        for name in OBSERVABLES:
            row[f"{name}_mean"] = float(last[name].mean())
            row[f"{name}_se"] = float(last[name].std(ddof=1) / np.sqrt(len(last))) if len(last) > 1 else np.nan
            row[f"{name}_initial"] = float(first[name].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def trend(summary: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    r"""Per model and observable, over the SAM rows: the weighted least-squares slope of the final mean against
    :math:`\log_2 m` (weights :math:`1/\mathrm{SE}^2`; slope SE :math:`(\sum_i w_i(u_i-\bar u_w)^2)^{-1/2}`), and
    the difference between ``m = B`` and ``m = 1`` with its standard error (independent cells)."""
    rows = []
    for model, d in summary[summary["m"] > 0].groupby("model", sort=False):
        d = d.sort_values("m")
        u = np.log2(d["m"].to_numpy(dtype=float))
        for name in OBSERVABLES:
            y, se = d[f"{name}_mean"].to_numpy(), d[f"{name}_se"].to_numpy()
            w = 1 / np.maximum(se, 1e-300) ** 2
            ubar = (w * u).sum() / w.sum()
            sxx = (w * (u - ubar) ** 2).sum()
            slope = (w * (u - ubar) * y).sum() / sxx if sxx > 0 else np.nan
            one, full = d[d["m"] == d["m"].min()].iloc[0], d[d["m"] == batch_size]
            full = full.iloc[0] if len(full) else d.iloc[-1]
            diff = full[f"{name}_mean"] - one[f"{name}_mean"]
            diff_se = float(np.hypot(full[f"{name}_se"], one[f"{name}_se"]))
            rows.append({"model": model, "observable": name, "slope_per_doubling": float(slope),
                         "slope_se": float(sxx ** -0.5) if sxx > 0 else np.nan,
                         "m_low": int(one["m"]), "m_high": int(full["m"]), "diff_high_minus_low": float(diff),
                         "diff_se": diff_se, "diff_in_se": float(diff / diff_se) if diff_se > 0 else np.nan})
    return pd.DataFrame(rows)


def trend_by_step(paths: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """:func:`trend` at every record after the first (where every run is still at :math:`x_0`), with its step:
    how the effect of ``m`` builds up, and whether it lasts, over training."""
    steps = sorted(paths["step"].unique())[1:]
    frames = [trend(summarize(paths, int(k)), batch_size).assign(step=int(k)) for k in steps]
    return pd.concat(frames, ignore_index=True)


def regulariser(cfg: Config, prob: ss.FiniteSum) -> pd.DataFrame:
    r""":math:`R_m(x_0)=\rho\,\mathbb E_{|\gamma'|=m}\|\nabla f_{\gamma'}(x_0)\|` for every ``m`` and :math:`m\to\infty`
    (:math:`\rho\|\nabla f(x_0)\|`): ``m = 1`` by enumerating the ``n`` samples, other ``m`` by Monte Carlo over
    ``penalty_draws`` micro-batches drawn with replacement (MATH §3.6)."""
    grads = prob.per_sample_grads(prob.x_init[None])[0]  # (n, d)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for m in cfg.micro_batches:
        if m == 1:
            norms, exact = torch.linalg.vector_norm(grads, dim=-1), True
        else:
            idx = torch.randint(prob.n, (cfg.penalty_draws, m), generator=gen)
            norms, exact = torch.linalg.vector_norm(grads[idx].mean(dim=1), dim=-1), False
        se = 0.0 if exact else float(norms.std() / np.sqrt(len(norms)))
        rows.append({"m": m, "penalty": cfg.rho * float(norms.mean()), "penalty_se": cfg.rho * se,
                     "how": "exact (all n samples)" if exact else f"Monte Carlo ({cfg.penalty_draws} draws)"})
    full = float(torch.linalg.vector_norm(grads.mean(dim=0)))
    rows.append({"m": -1, "penalty": cfg.rho * full, "penalty_se": 0.0, "how": "m -> infinity: rho ||grad f(x_0)||"})
    return pd.DataFrame(rows)


def run(cfg: Config, results: str | Path = _common.DEFAULT_RESULTS, *, executor=None) -> Path:
    """Compute and save the study under ``results/m_sharpness``; one cell per model and ``m`` on ``executor``
    (``None``: in this process), kept in its ``cells/`` folder."""
    _common.setup_torch()
    prob = problem(cfg)
    for m in cfg.micro_batches:  # a clear error before any work (m must divide B)
        method(cfg, m).check_problem(prob)
    out = _common.study_dir(results, STUDY)
    with _common.Timer() as timer:
        paths = _common.run_grid(cell_specs(cfg), run_cell, executor=executor, out=out)
        summary = summarize(paths)
        frames = {"paths": paths, "summary": summary, "trend": trend(summary, cfg.batch_size),
                  "trend_by_step": trend_by_step(paths, cfg.batch_size),
                  "regulariser": regulariser(cfg, prob)}
    cols = ["model", "m", "lambda_max_mean", "lambda_max_se", "loss_mean", "loss_se"]
    print(summary[cols].round(4).to_string(index=False))
    print(frames["trend"].round(4).to_string(index=False))
    return _common.finish(cfg, out, frames, timer.seconds)


def main(argv=None) -> Path:
    return _common.study_main(STUDY, argv)


if __name__ == "__main__":
    main()
