r"""Eigenvalue filters at convergence, checked by simulation (Bolte, Le & Pauwels 2025; MATH §2.1, §7).

If a method converges to a critical point :math:`\bar x`, the Jacobian of its step there has spectral
radius at most 1, so every Hessian eigenvalue :math:`\lambda` at :math:`\bar x` passes the method's filter
:math:`0\le a(\lambda)\le B`: :math:`a=\lambda` (GD), :math:`\lambda(1+\rho\lambda)` (USAM),
:math:`\lambda(1+\rho\lambda+\rho^2\lambda^2)` (Two-step USAM), :math:`\lambda(1+\rho\lambda^2)` (Hessian USAM);
:math:`B=2/\eta`, :math:`2(1+\beta)/\eta` (heavy ball) or :math:`2(1+\beta)/((1+2\beta)\eta)` (Nesterov)
(:func:`sde_sam.theory.method_filter`). USAM's filter also admits :math:`\lambda\le-1/\rho`: it can stop at
saddles; the two variants' cannot.

Two full-batch problems with a continuum of minima of different sharpness and a strict saddle at 0:

* ``hyperbola``: :math:`f(x,y)=\tfrac12(xy-1)^2`: minima on :math:`xy=1` with sharpness :math:`x^2+y^2\ge2`;
  at the saddle the Hessian's eigenvalues are :math:`\pm1`;
* ``factorization``: :math:`f(U,V)=\tfrac12\|UV^\top-M\|_F^2` (:math:`U,V\in\mathbb R^{m\times r}`, matrix sensing
  with identity measurements): minima :math:`UV^\top=M` up to :math:`GL(r)`, sharpest when unbalanced;
  at 0 the eigenvalues are :math:`\pm\sigma_i(M)`.

Two studies per problem:

* ``filter``: GD, heavy ball, Nesterov, USAM, USAM + heavy ball, Two-step USAM and Hessian USAM from many
  random starts in a box; at every converged run the algebraic top and bottom Hessian eigenvalues
  (``ss.top_eigenpair``, Lanczos) against the method's filter;
* ``saddle``: USAM and the two variants from starts near the saddle, with :math:`\rho\,|\lambda|>1` for every
  negative eigenvalue there (USAM is attracted): the fraction of runs that end at the saddle.

A run is *converged* when its gradient norm is below ``grad_tol`` at the end, *diverged* when it left every
bound (non-finite or ``max_norm``), else *not converged*; a converged run is at a saddle when its bottom
eigenvalue is below ``-saddle_tol``. Runs that do not converge are counted, not dropped.

Outputs (``results/eigenvalue_filters/``): ``runs.csv`` (one row per run), ``filters.csv`` (each method's
filter as :math:`\lambda`-intervals), ``summary.csv`` (per problem, study and method: counts, saddle fraction,
runs outside the filter, sharpness range).
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
from sde_sam.spectrum import top_eigenpair_hvp  # noqa: E402

from experiments import _common

STUDY = "eigenvalue_filters"
F64 = torch.float64
FILTER_METHODS = ("GD", "HB", "Nesterov", "USAM", "USAM+HB", "TwoStepUSAM", "HessianUSAM")
SADDLE_METHODS = ("USAM", "TwoStepUSAM", "HessianUSAM")


@dataclass(frozen=True)
class Config:
    problems: tuple = ("hyperbola", "factorization")
    n_starts: int = 400          # runs per (problem, study, method)
    # filter study: starts uniform in [-box, box]^d
    lr: float = 0.4
    rho: float = 0.1
    beta: float = 0.5
    box: tuple = (("hyperbola", 2.5), ("factorization", 1.2))  # per problem
    steps: int = 3000
    # saddle study: starts uniform in the ball of radius saddle_radius around the saddle 0
    saddle_lr: float = 0.02
    saddle_rho: float = 2.0      # rho * |lambda| > 1 at the saddle for every negative eigenvalue
    saddle_radius: float = 0.5
    saddle_steps: int = 2000
    # factorization f(U, V) = ½||U Vᵀ - M||², U, V: (m, r), M with singular values `singular`
    m: int = 2
    singular: tuple = (1.0, 0.8)
    grad_tol: float = 1e-8       # converged: ||∇f|| below this at the end
    saddle_tol: float = 1e-6     # at a saddle: bottom eigenvalue below -saddle_tol
    filter_tol: float = 1e-6     # relative tolerance of the filter test (theory.method_filter's tol)
    max_norm: float = 1e6
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_starts=100, steps=1500, saddle_steps=1500)

    @classmethod
    def tiny(cls) -> "Config":
        return cls(n_starts=12, steps=300, saddle_steps=300)


# -- the problems (closed-form gradients and HVPs: fast, exact) -----------------------------------------------
def _hyperbola_loss(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x[0] * x[1] - 1) ** 2


class Hyperbola(ss.Objective):
    r""":math:`f(x,y)=\tfrac12(xy-1)^2`, full batch, with closed-form gradient and Hessian-vector products."""

    def __init__(self):
        super().__init__(_hyperbola_loss, 2, noise_cov=0.0, dtype=F64)

    def loss(self, x):
        return 0.5 * (x[:, 0] * x[:, 1] - 1) ** 2

    def grad(self, x):
        r = (x[:, 0] * x[:, 1] - 1).unsqueeze(-1)
        return r * x.flip(-1)

    def hvp(self, x, v):
        a, b = x[:, 0], x[:, 1]
        off = 2 * a * b - 1
        return torch.stack([b**2 * v[:, 0] + off * v[:, 1], off * v[:, 0] + a**2 * v[:, 1]], dim=-1)


def _factorization_loss(x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    m, r = M.shape[0], M.shape[1]
    U, V = x[: m * r].reshape(m, r), x[m * r:].reshape(m, r)
    return 0.5 * ((U @ V.T - M) ** 2).sum()


class _FactorLoss:
    def __init__(self, M: torch.Tensor):
        self.M = M

    def __call__(self, x):
        return _factorization_loss(x, self.M)


class Factorization(ss.Objective):
    r""":math:`f(U,V)=\tfrac12\|UV^\top-M\|_F^2`, ``x = (vec U, vec V)``, with closed-form gradient and HVPs."""

    def __init__(self, M: torch.Tensor):
        self.M, self.m, self.r = M, M.shape[0], M.shape[1]
        super().__init__(_FactorLoss(M), 2 * M.numel(), noise_cov=0.0, dtype=F64)

    def _split(self, x):
        n, k = x.shape[0], self.m * self.r
        return x[:, :k].reshape(n, self.m, self.r), x[:, k:].reshape(n, self.m, self.r)

    def loss(self, x):
        U, V = self._split(x)
        return 0.5 * ((U @ V.transpose(1, 2) - self.M) ** 2).sum(dim=(1, 2))

    def grad(self, x):
        U, V = self._split(x)
        R = U @ V.transpose(1, 2) - self.M
        return torch.cat([(R @ V).flatten(1), (R.transpose(1, 2) @ U).flatten(1)], dim=-1)

    def hvp(self, x, v):
        U, V = self._split(x)
        dU, dV = self._split(v)
        R = U @ V.transpose(1, 2) - self.M
        dR = dU @ V.transpose(1, 2) + U @ dV.transpose(1, 2)
        return torch.cat([(dR @ V + R @ dV).flatten(1), (dR.transpose(1, 2) @ U + R.transpose(1, 2) @ dU).flatten(1)],
                         dim=-1)


def make_problem(name: str, cfg_m: int = 2, singular=(1.0, 0.8), seed: int = 0) -> ss.Objective:
    if name == "hyperbola":
        return Hyperbola()
    if name == "factorization":
        g = torch.Generator().manual_seed(seed)
        q1, _ = torch.linalg.qr(torch.randn(cfg_m, cfg_m, generator=g, dtype=F64))
        q2, _ = torch.linalg.qr(torch.randn(cfg_m, cfg_m, generator=g, dtype=F64))
        return Factorization(q1 @ torch.diag(torch.tensor(singular, dtype=F64)) @ q2.T)
    raise ValueError(f"`problem` must be 'hyperbola' or 'factorization', got {name!r}")


def make_method(name: str, lr: float, rho: float, beta: float) -> ss.Method:
    return {"GD": lambda: ss.SGD(lr), "HB": lambda: ss.SGD(lr, momentum=beta),
            "Nesterov": lambda: ss.SGD(lr, momentum=beta, nesterov=True),
            "USAM": lambda: ss.USAM(lr, rho), "USAM+HB": lambda: ss.USAM(lr, rho, momentum=beta),
            "TwoStepUSAM": lambda: ss.TwoStepUSAM(lr, rho), "HessianUSAM": lambda: ss.HessianUSAM(lr, rho)}[name]()


# -- one cell: one (problem, study, method) ---------------------------------------------------------------------
def _starts(spec: dict, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec["seed"])
    n = spec["n_starts"]
    if spec["study"] == "filter":
        return (2 * torch.rand(n, d, generator=g, dtype=F64) - 1) * spec["box"]
    u = torch.randn(n, d, generator=g, dtype=F64)
    radius = spec["radius"] * torch.rand(n, 1, generator=g, dtype=F64) ** (1 / d)  # uniform in the ball
    return radius * u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)


def _extreme_eigenvalues(prob: ss.Objective, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Algebraic top and bottom Hessian eigenvalues per row (Lanczos with iters = d: exact)."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=F64), torch.zeros(0, dtype=F64)
    top = ss.top_eigenpair(prob, x, iters=prob.d).value
    v0 = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    bottom = -top_eigenpair_hvp(lambda v: -prob.hvp(x, v), v0, iters=prob.d).value
    return top, bottom


def cell(spec: dict) -> pd.DataFrame:
    """Every run of one method on one problem in one study: its end state, eigenvalues and status."""
    _common.setup_torch()
    prob = make_problem(spec["problem"], spec["m"], tuple(spec["singular"]), spec["seed"])
    method = make_method(spec["method"], spec["lr"], spec["rho"], spec["beta"])
    x0 = _starts(spec, prob.d)
    traj = ss.run(prob, method, x0, steps=spec["steps"], record_every=spec["steps"], seed=spec["seed"],
                  observables=("loss", "grad_norm"), max_norm=spec["max_norm"])
    gn = traj.values["grad_norm"][-1]
    diverged = traj.diverged
    converged = ~diverged & (gn < spec["grad_tol"])
    lam_max = torch.full((x0.shape[0],), math.nan, dtype=F64)
    lam_min = lam_max.clone()
    top, bottom = _extreme_eigenvalues(prob, traj.x_final[converged])
    lam_max[converged], lam_min[converged] = top, bottom
    status = np.where(diverged.numpy(), "diverged", np.where(converged.numpy(), "minimum", "not converged"))
    saddle = converged & (lam_min < -spec["saddle_tol"])
    status[saddle.numpy()] = "saddle"
    inside = np.full(x0.shape[0], np.nan)
    if bool(converged.any()):
        ok = (theory.method_filter(method, lam_max[converged], tol=spec["filter_tol"])
              & theory.method_filter(method, lam_min[converged], tol=spec["filter_tol"]))
        inside[converged.numpy()] = ok.numpy().astype(float)
    frame = pd.DataFrame({
        "problem": spec["problem"], "study": spec["study"], "method": spec["method"], "run": np.arange(x0.shape[0]),
        "lr": spec["lr"], "rho": method.rho, "beta": method.momentum, "nesterov": method.nesterov,
        "start_norm": torch.linalg.vector_norm(x0, dim=-1).numpy(), "status": status,
        "grad_norm": gn.numpy(), "loss": traj.values["loss"][-1].numpy(),
        "lambda_max": lam_max.numpy(), "lambda_min": lam_min.numpy(), "inside_filter": inside,
        "filter_B": float(theory.momentum_edge(spec["lr"], method.momentum, method.nesterov)),
        "lambda_edge": max(hi for lo, hi in theory.filter_intervals(method))})
    if prob.d == 2:  # the end point itself, for the hyperbola's phase portrait
        frame["x_end"], frame["y_end"] = traj.x_final[:, 0].numpy(), traj.x_final[:, 1].numpy()
        frame["x_start"], frame["y_start"] = x0[:, 0].numpy(), x0[:, 1].numpy()
    return frame


def specs(cfg: Config) -> list[dict]:
    common = {"n_starts": cfg.n_starts, "m": cfg.m, "singular": list(cfg.singular), "grad_tol": cfg.grad_tol,
              "saddle_tol": cfg.saddle_tol, "filter_tol": cfg.filter_tol, "max_norm": cfg.max_norm, "seed": cfg.seed}
    out = []
    for p in cfg.problems:
        for name in FILTER_METHODS:
            out.append({**common, "problem": p, "study": "filter", "method": name, "lr": cfg.lr, "rho": cfg.rho,
                        "beta": cfg.beta, "box": dict(cfg.box)[p], "steps": cfg.steps})
        for name in SADDLE_METHODS:
            out.append({**common, "problem": p, "study": "saddle", "method": name, "lr": cfg.saddle_lr,
                        "rho": cfg.saddle_rho, "beta": 0.0, "radius": cfg.saddle_radius, "steps": cfg.saddle_steps})
    return out


def filter_table(cfg: Config) -> pd.DataFrame:
    """Each method's filter as λ-intervals (``lo``, ``hi``; ±inf allowed)."""
    rows = []
    for spec in specs(cfg):
        method = make_method(spec["method"], spec["lr"], spec["rho"], spec["beta"])
        for lo, hi in theory.filter_intervals(method):
            rows.append({"problem": spec["problem"], "study": spec["study"], "method": spec["method"],
                         "lr": spec["lr"], "rho": method.rho, "beta": method.momentum, "nesterov": method.nesterov,
                         "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (p, s, m), d in runs.groupby(["problem", "study", "method"], sort=False):
        conv = d[d["status"].isin(["minimum", "saddle"])]
        counts = d["status"].value_counts()
        rows.append({"problem": p, "study": s, "method": m, "n_runs": len(d),
                     "n_minimum": int(counts.get("minimum", 0)), "n_saddle": int(counts.get("saddle", 0)),
                     "n_not_converged": int(counts.get("not converged", 0)), "n_diverged": int(counts.get("diverged", 0)),
                     "frac_saddle": float(counts.get("saddle", 0) / len(d)),
                     "n_outside_filter": int((conv["inside_filter"] == 0).sum()),
                     "lambda_max_min": float(conv["lambda_max"].min()) if len(conv) else math.nan,
                     "lambda_max_max": float(conv["lambda_max"].max()) if len(conv) else math.nan,
                     "filter_B": float(d["filter_B"].iloc[0]), "lambda_edge": float(d["lambda_edge"].iloc[0])})
    return pd.DataFrame(rows)


def run(cfg: Config, results: str | Path = _common.DEFAULT_RESULTS, *, executor=None) -> Path:
    """Compute and save the study under ``results/eigenvalue_filters``; one cell per (problem, study, method)."""
    _common.setup_torch()
    out = _common.study_dir(results, STUDY)
    with _common.Timer() as timer:
        runs = _common.run_grid(specs(cfg), cell, executor=executor, out=out)
        frames = {"runs": runs, "filters": filter_table(cfg), "summary": summarize(runs)}
    cols = ["problem", "study", "method", "n_minimum", "n_saddle", "n_not_converged", "n_diverged", "n_outside_filter",
            "lambda_max_max", "lambda_edge"]
    print(frames["summary"][cols].to_string(index=False))
    return _common.finish(cfg, out, frames, timer.seconds)


def main(argv=None) -> Path:
    return _common.study_main(STUDY, argv)


if __name__ == "__main__":
    main()
