"""SDE solver benchmark: ss.simulate against torchsde.sdeint, the raw tensor-work bound, scaling and memory.

Sections (all in one run, results in ``benchmarks/results/sde.json``; ``make_readme.py`` turns them into
``benchmarks/README.md`` and ``benchmarks/sde_vs_torchsde.png``):

* ``sweep``   torchsde configurations at d=20, 10^4 paths: which Brownian motion / SDE class is fastest.
* ``grid``    the USAM SDE on a quadratic, d in {2, 20, 200} x paths in {1e3, 1e4, 1e5}, float32:
              ss.simulate, torchsde default, torchsde fastest, torchsde + a minimal Brownian motion, and the
              raw bound (random numbers + the two GEMMs of a step in a tight loop); moments checked
              against the exact Euler-Maruyama moments (|z| < 4).
* ``scaling`` time per step vs d at 10^4 paths (native and bound), two-point increments.
* ``dtype``   float32 vs float64: speed and the rounding error of the same increments over many steps.
* ``mlp``     order-1 and order-2 SAM SDEs on ss.problems.mlp(32, 256, 10) (d = 11,018) per step,
              relative to one discrete SAM step (sde_sam.discrete.step).
* ``memory``  peak-RSS deltas (VmHWM, benchmarks/_peak.py) of single runs, each in a fresh subprocess.

Run:  python benchmarks/bench_sde.py            (full, < 10 min on 2 cores)
      python benchmarks/bench_sde.py --quick    (smoke run, ~2 min; results/sde_quick.json, README untouched)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Benchmark the checkout this script lives in, whatever is installed (SDE_SAM_SRC: another source tree, used
# by the `engine` section to time the code before the performance changes).
sys.path.insert(0, os.environ.get("SDE_SAM_SRC", str(HERE.parent)))

import torch  # noqa: E402
import torchsde  # noqa: E402

import sde_sam as ss  # noqa: E402
from sde_sam import _engine, discrete  # noqa: E402

sys.path.insert(0, str(HERE))
from _peak import peak_kib, reset_peak  # noqa: E402

DT = 1.0 / 256  # exactly representable: torchsde's float time grid then hits t1 without a sliver step
LR, RHO, SIGMA2 = 0.05, 0.1, 0.09


# --------------------------------------------------------------------------------------------------------
# problem and the implementations compared
# --------------------------------------------------------------------------------------------------------
def quadratic(d: int, dtype=torch.float32) -> ss.Quadratic:
    """H = Q diag(linspace(0.5, 2)) Q^T with a seeded random rotation (dense H, so the GEMMs are real)."""
    g = torch.Generator().manual_seed(d)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    H = (Q * torch.linspace(0.5, 2.0, d, dtype=torch.float64)) @ Q.T
    return ss.Quadratic((0.5 * (H + H.T)).to(dtype), noise_cov=SIGMA2)


def usam_sde(d: int, dtype=torch.float32) -> ss.SDEModel:
    return ss.sde_model(quadratic(d, dtype), ss.USAM(lr=LR, rho=RHO), order=1)


class AdditiveOU:
    """The same SDE, dX = -A X dt + F dW, as the cheapest torchsde class: additive noise, matmul drift and
    a ``g_prod`` that is one GEMM (torchsde's own ``g_prod`` would be a batched mat-vec)."""

    noise_type = "additive"
    sde_type = "ito"

    def __init__(self, sde: ss.SDEModel):
        A, F = sde.linear
        self.neg_AT, self.F, self.FT = (-A.T).contiguous(), F, F.T.contiguous()

    def f(self, t, y):
        return y @ self.neg_AT

    def g(self, t, y):
        return self.F.expand(y.shape[0], *self.F.shape)

    def g_prod(self, t, y, v):
        return v @ self.FT

    def f_and_g_prod(self, t, y, v):
        return y @ self.neg_AT, v @ self.FT


class StepBrownian(torchsde.BaseBrownian):
    """A minimal Brownian motion for fixed-step solvers that query each interval once, in order:
    W(tb) - W(ta) = sqrt(tb - ta) * N(0, I), fresh numbers per query. Not a torchsde class: it measures
    torchsde's solver loop with the Brownian-motion cost taken out."""

    def __init__(self, shape, dtype, seed: int):
        self._shape, self._dtype = tuple(shape), dtype
        self._gen = torch.Generator().manual_seed(seed)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        return torch.randn(self._shape, generator=self._gen, dtype=self._dtype).mul_(math.sqrt(float(tb) - float(ta)))

    def __repr__(self):
        return f"StepBrownian({self._shape})"

    dtype = property(lambda self: self._dtype)
    device = property(lambda self: torch.device("cpu"))
    shape = property(lambda self: self._shape)
    levy_area_approximation = property(lambda self: "none")


def torchsde_run(sde: ss.SDEModel, n: int, steps: int, *, cls: str, bm: str, seed: int = 0) -> torch.Tensor:
    """x at t1 from torchsde.sdeint(method='euler', dt=DT) with the given SDE class and Brownian motion."""
    d, t1 = sde.problem.d, steps * DT
    dtype = sde.problem.dtype
    obj = sde if cls == "general" else AdditiveOU(sde)
    size = (n, sde.noise_dim)
    bms = {
        "interval": lambda: torchsde.BrownianInterval(0.0, t1, size=size, dtype=dtype, entropy=seed),
        "interval_dt": lambda: torchsde.BrownianInterval(0.0, t1, size=size, dtype=dtype, entropy=seed, dt=DT),
        "interval_nocache": lambda: torchsde.BrownianInterval(0.0, t1, size=size, dtype=dtype, entropy=seed,
                                                              cache_size=None),
        "interval_dt_nocache": lambda: torchsde.BrownianInterval(0.0, t1, size=size, dtype=dtype, entropy=seed,
                                                                 dt=DT, cache_size=None),
        "path": lambda: torchsde.BrownianPath(0.0, torch.zeros(size, dtype=dtype)),  # valid for t1 <= 1 only
        "tree": lambda: torchsde.BrownianTree(0.0, torch.zeros(size, dtype=dtype), t1=t1, entropy=seed),
        "step": lambda: StepBrownian(size, dtype, seed),
    }
    x0 = torch.ones(n, d, dtype=dtype)
    ts = torch.tensor([0.0, t1], dtype=dtype)
    with torch.no_grad():
        return torchsde.sdeint(obj, x0, ts, bm=bms[bm](), method="euler", dt=DT)[-1]


def native_run(sde: ss.SDEModel, n: int, steps: int, *, seed: int = 0, increments: str = "gaussian") -> torch.Tensor:
    d = sde.problem.d
    x0 = torch.ones(d, dtype=sde.problem.dtype)
    return ss.simulate(sde, x0, t1=steps * DT, dt=DT, n_paths=n, seed=seed, record_every=steps,
                       increments=increments).x_final


def bound_run(sde: ss.SDEModel, n: int, steps: int, *, seed: int = 0) -> torch.Tensor:
    """The step's tensor work alone: the random numbers and the two GEMMs, nothing else."""
    A, F = sde.linear
    d = A.shape[0]
    M = torch.eye(d, dtype=A.dtype) - DT * A.T
    Fs = math.sqrt(DT) * F.T
    g = torch.Generator().manual_seed(seed)
    x = torch.ones(n, d, dtype=A.dtype)
    for _ in range(steps):
        xi = torch.randn(n, d, generator=g, dtype=A.dtype)
        x = torch.addmm(xi @ Fs, x, M)
    return x


# --------------------------------------------------------------------------------------------------------
# timing and correctness
# --------------------------------------------------------------------------------------------------------
def timed(fn, *, min_rep: int, max_rep: int, budget: float):
    """Best (min) and median wall time of ``fn()`` after one warm-up call; repeats until ``max_rep`` or,
    after ``min_rep``, until ``budget`` seconds were spent. The min is the estimate least disturbed by other
    processes on a shared machine."""
    out = fn()
    times, start = [], time.perf_counter()
    while len(times) < max_rep and (len(times) < min_rep or time.perf_counter() - start < budget):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), len(times), out


def compare(fns: dict, *, min_rep: int, max_rep: int, budget: float) -> dict:
    """Time several implementations of the same cell in interleaved rounds (one warm-up call each), so that
    a burst of load from other processes hits all of them alike; best (min) and median per implementation."""
    outs = {k: f() for k, f in fns.items()}
    times = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rep and (rounds < min_rep or time.perf_counter() - start < budget):
        for k, f in fns.items():
            t = time.perf_counter()
            outs[k] = f()
            times[k].append(time.perf_counter() - t)
        rounds += 1
    return {k: (min(v), statistics.median(v), len(v), outs[k]) for k, v in times.items()}


def exact_em_moments(sde: ss.SDEModel, steps: int):
    """Mean (d,) and covariance (d, d) of Euler-Maruyama after ``steps`` steps from x0 = 1, in float64."""
    A, F = (t.double() for t in sde.linear)
    d = A.shape[0]
    M = torch.eye(d, dtype=torch.float64) - DT * A.T
    Q = DT * F @ F.T
    mu, C = torch.ones(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    for _ in range(steps):
        mu, C = mu @ M, M.T @ C @ M + Q
    return mu, C


def moment_check(x: torch.Tensor, sde: ss.SDEModel, mu: torch.Tensor, C: torch.Tensor) -> dict:
    """z-scores against the exact EM moments of: the mean and the variance of u.x (u a fixed random unit
    vector), the mean loss and the mean ||x||^2. Passes when every |z| < 4."""
    x = x.double()
    n, d = x.shape
    u = torch.randn(d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u /= u.norm()
    H = sde.problem.H.double()
    p = x @ u
    loss = 0.5 * ((x @ H) * x).sum(-1)
    sq = (x * x).sum(-1)
    var_u = float(u @ C @ u)
    z = {
        "mean_u": (float(p.mean()) - float(mu @ u)) / (float(p.std()) / math.sqrt(n)),
        "var_u": (float(p.var()) - var_u) / (var_u * math.sqrt(2.0 / (n - 1))),
        "mean_loss": (float(loss.mean()) - 0.5 * float(mu @ H @ mu + (H * C).sum())) / (float(loss.std()) / math.sqrt(n)),
        "mean_sq": (float(sq.mean()) - float(mu @ mu + C.trace())) / (float(sq.std()) / math.sqrt(n)),
    }
    return {"z": z, "max_abs_z": max(abs(v) for v in z.values()), "ok": all(abs(v) < 4 for v in z.values())}


def block_steps(d: int) -> int:
    """Steps of noise ss.simulate pre-generates at once (time whole blocks: a partial last block still
    generates a full one, to keep the random streams independent of the run length)."""
    return _engine._steps_per_draw(_engine._layout(usam_sde(d).sampler(), torch.device("cpu"))[0])


def cell_steps(d: int, n: int, quick: bool) -> int:
    """Steps timed in a grid cell: a whole number of noise blocks, t1 = steps * dt <= 1 (BrownianPath's
    fixed horizon), roughly constant work per run."""
    target = {1_000: 256, 10_000: 256, 100_000: 64}[n] if d < 100 else {1_000: 60, 10_000: 40, 100_000: 20}[n]
    b = block_steps(d)
    return max(b, target // (2 if quick else 1) // b * b)


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------------
SWEEP = [  # (SDE class, Brownian motion): all valid for euler at a fixed dt
    ("general", "interval"),  # torchsde's default: the sde_model object itself, default BrownianInterval
    ("general", "interval_dt"),
    ("additive", "interval"),
    ("additive", "interval_dt"),
    ("additive", "interval_nocache"),
    ("additive", "interval_dt_nocache"),
    ("additive", "path"),
    ("additive", "tree"),
    ("additive", "step"),
]


def section_sweep(quick: bool) -> dict:
    d, n, steps = 20, 10_000, 128
    sde = usam_sde(d)
    mu, C = exact_em_moments(sde, steps)
    fns = {(cls, bm): (lambda cls=cls, bm=bm: torchsde_run(sde, n, steps, cls=cls, bm=bm)) for cls, bm in SWEEP}
    fns[("ss.simulate", "-")] = lambda: native_run(sde, n, steps)
    res = compare(fns, min_rep=2, max_rep=3 if quick else 5, budget=4.0 if quick else 8.0)
    rows = []
    for (cls, bm), (best, med, rep, x) in res.items():
        chk = moment_check(x, sde, mu, C)
        rows.append({"cls": cls, "bm": bm, "d": d, "n": n, "steps": steps, "ms_per_step": 1e3 * best / steps,
                     "ms_per_step_median": 1e3 * med / steps, "repeats": rep, "check": chk})
        log(f"  sweep  {cls:11s} {bm:20s} {1e3 * best / steps:9.3f} ms/step  max|z|={chk['max_abs_z']:.2f}")
    provided = [r for r in rows if r["cls"] == "additive" and r["bm"] != "step"]
    fastest = min(provided, key=lambda r: r["ms_per_step"])
    # Run length: torchsde's default BrownianInterval (no dt hint) costs more per step in longer runs, while
    # ss.simulate amortises its start (thread pool, first noise buffer) over more steps.
    lengths = []
    for s in ((64, 256) if quick else (64, 256, 1024)):
        res = compare({"ss.simulate": lambda s=s: native_run(sde, n, s),
                       "torchsde default": lambda s=s: torchsde_run(sde, n, s, cls="general", bm="interval"),
                       "torchsde fastest": lambda s=s: torchsde_run(sde, n, s, cls=fastest["cls"], bm=fastest["bm"])},
                      min_rep=1 if s > 256 else 3, max_rep=1 if s > 256 else 3, budget=0)
        row = {"steps": s, **{k: 1e3 * v[0] / s for k, v in res.items()}}
        lengths.append(row)
        log(f"  sweep  run length {s:5d} steps: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "steps"))
    return {"rows": rows, "fastest": {"cls": fastest["cls"], "bm": fastest["bm"]}, "run_length": lengths}


def section_grid(quick: bool, fastest: dict) -> list[dict]:
    ds = (2, 20, 200)
    ns = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    default_cap = 1.0 if quick else 2.0  # seconds per torchsde-default run: fewer steps where it is slow
    rows = []
    for d in ds:
        sde = usam_sde(d)
        for n in ns:
            steps = cell_steps(d, n, quick)
            # torchsde default: its per-step cost does not depend on the run length, so time fewer steps where
            # one run would take long (a 4-step probe gives the per-step cost)
            t = time.perf_counter()
            torchsde_run(sde, n, 4, cls="general", bm="interval")
            s_def = int(min(steps, max(4, default_cap * 4 / (time.perf_counter() - t))))
            impls = {
                "ss.simulate": (lambda s: native_run(sde, n, s), steps),
                "bound": (lambda s: bound_run(sde, n, s), steps),
                "torchsde fastest": (lambda s: torchsde_run(sde, n, s, cls=fastest["cls"], bm=fastest["bm"]), steps),
                "torchsde + step BM": (lambda s: torchsde_run(sde, n, s, cls="additive", bm="step"), steps),
                "torchsde default": (lambda s: torchsde_run(sde, n, s, cls="general", bm="interval"), s_def),
            }
            big = n >= 100_000 or d >= 200 and n >= 10_000
            res = compare({k: (lambda f=f, s=s: f(s)) for k, (f, s) in impls.items()}, min_rep=1 if big else 2,
                          max_rep=2 if big or quick else 5, budget=1.0 if quick else 4.0)
            moments = {}
            for name, (best, med, rep, x) in res.items():
                s = impls[name][1]
                if s not in moments:
                    moments[s] = exact_em_moments(sde, s)
                chk = moment_check(x, sde, *moments[s])
                rows.append({"impl": name, "d": d, "n": n, "steps": s, "ms_per_step": 1e3 * best / s,
                             "ms_per_step_median": 1e3 * med / s, "repeats": rep, "check": chk,
                             **({"config": fastest} if name == "torchsde fastest" else {})})
                log(f"  grid d={d:3d} n={n:6d} {name:20s} {1e3 * best / s:10.3f} ms/step ({s} steps, x{rep})"
                    f"  max|z|={chk['max_abs_z']:.2f}")
    return rows


def section_scaling(quick: bool) -> list[dict]:
    n = 10_000
    rows = []
    for d in ((2, 20, 200) if quick else (2, 5, 10, 20, 50, 100, 200, 500)):
        sde = usam_sde(d)
        b = block_steps(d)
        steps = max(b, (64 if d >= 100 else 256) // (2 if quick else 1) // b * b)
        A, F = sde.linear
        M, Fs = torch.eye(d) - DT * A.T, math.sqrt(DT) * F.T
        gen, xi, x = torch.Generator().manual_seed(0), torch.randn(n, d), torch.ones(n, d)

        def randn_only():
            for _ in range(steps):
                torch.randn(n, d, generator=gen)

        def gemms_only():
            for _ in range(steps):
                torch.addmm(xi @ Fs, x, M)

        res = compare({"ss.simulate": lambda: native_run(sde, n, steps),
                       "ss.simulate two_point": lambda: native_run(sde, n, steps, increments="two_point"),
                       "bound": lambda: bound_run(sde, n, steps),
                       "bound: randn only": randn_only, "bound: GEMMs only": gemms_only},
                      min_rep=2, max_rep=5, budget=1.0 if quick else 2.0)
        for name, (best, med, rep, _) in res.items():
            rows.append({"impl": name, "d": d, "n": n, "steps": steps, "ms_per_step": 1e3 * best / steps,
                         "ms_per_step_median": 1e3 * med / steps, "repeats": rep})
            log(f"  scaling d={d:3d} {name:24s} {1e3 * best / steps:9.3f} ms/step")
    return rows


def section_dtype(quick: bool) -> dict:
    n = 10_000
    rows = []
    for d in (20, 200):
        steps = 60 if d >= 100 else 256
        sdes = {dtype: usam_sde(d, dtype) for dtype in (torch.float32, torch.float64)}
        res = compare({dtype: (lambda sde=sde: native_run(sde, n, steps)) for dtype, sde in sdes.items()},
                      min_rep=2, max_rep=5, budget=1.0 if quick else 2.0)
        for dtype, (best, med, rep, x) in res.items():
            chk = moment_check(x, sdes[dtype], *exact_em_moments(sdes[dtype], steps))
            rows.append({"d": d, "dtype": str(dtype).replace("torch.", ""), "n": n, "steps": steps,
                         "ms_per_step": 1e3 * best / steps, "check": chk})
            log(f"  dtype d={d:3d} {dtype} {1e3 * best / steps:9.3f} ms/step  max|z|={chk['max_abs_z']:.2f}")
    # Rounding: the same float64 increments fed to a float32 and a float64 Euler-Maruyama loop.
    d, paths, steps = 20, 1_000, 2_560
    sde64 = usam_sde(d, torch.float64)
    A, F = sde64.linear
    M64 = torch.eye(d, dtype=torch.float64) - DT * A.T
    Fs64 = math.sqrt(DT) * F.T
    M32, Fs32 = M64.float(), Fs64.float()
    g = torch.Generator().manual_seed(0)
    x64 = torch.ones(paths, d, dtype=torch.float64)
    x32 = x64.float()
    H = sde64.problem.H
    worst = 0.0
    for k in range(steps):
        xi = torch.randn(paths, d, generator=g, dtype=torch.float64)
        x64 = torch.addmm(xi @ Fs64, x64, M64)
        x32 = torch.addmm(xi.float() @ Fs32, x32, M32)
        if (k + 1) % 256 == 0:
            worst = max(worst, float(((x32.double() - x64).norm(dim=-1) / x64.norm(dim=-1)).max()))
    loss64 = 0.5 * ((x64 @ H) * x64).sum(-1)
    loss32 = 0.5 * ((x32.double() @ H) * x32.double()).sum(-1)
    rounding = {"d": d, "paths": paths, "steps": steps, "t1": steps * DT,
                "max_rel_state_error": worst,
                "mean_loss_rel_diff": float(abs(loss32.mean() - loss64.mean()) / loss64.mean()),
                "mean_loss_mc_rel_se": float(loss64.std() / math.sqrt(paths) / loss64.mean()),
                "mean_loss_mc_rel_se_1e5": float(loss64.std() / math.sqrt(1e5) / loss64.mean())}
    log(f"  dtype rounding: {rounding}")
    return {"rows": rows, "rounding": rounding}


def section_mlp(quick: bool) -> dict:
    prob = ss.problems.mlp(d_in=32, hidden=256, classes=10, batch_size=8)
    n = 16 if quick else 64
    steps = 1 if quick else 2
    dt = 0.005
    method = ss.SAM(lr=LR, rho=0.05)
    eps = prob.default_eps()
    x = prob.x_init.expand(n, -1).clone()
    draws = prob.sample_draws((n,), torch.Generator().manual_seed(0))
    best, med, rep, _ = timed(lambda: discrete.step(prob, method, x, draws, eps=eps), min_rep=3, max_rep=10, budget=2.0)
    out = {"d": prob.d, "n_paths": n, "batch_size": prob.batch_size, "n_samples": prob.n, "method": "SAM",
           "rho": 0.05, "discrete_ms_per_step": 1e3 * best, "rows": []}
    log(f"  mlp d={prob.d} n={n} discrete SAM step {1e3 * best:9.1f} ms")
    for order in (1, 2):
        sde = ss.sde_model(prob, method, order=order)
        run = lambda: ss.simulate(sde, prob.x_init, t1=steps * dt, dt=dt, n_paths=n, seed=0, record_every=steps)
        ss.simulate(sde, prob.x_init, t1=dt, dt=dt, n_paths=min(n, 8), seed=0)  # short warm-up
        t = time.perf_counter()
        run()
        per_step = (time.perf_counter() - t) / steps
        out["rows"].append({"order": order, "mode": sde.mode, "n_draws": getattr(sde, "n_draws", None),
                            "ms_per_step": 1e3 * per_step, "relative_to_discrete": per_step / best, "steps": steps})
        log(f"  mlp order {order} ({sde.mode}, K={getattr(sde, 'n_draws', None)}) {1e3 * per_step:9.1f} ms/step"
            f" = {per_step / best:.1f} x discrete")
    return out


BASELINE_REV = "3be596f^"  # the engine and solver before the performance changes of commit 3be596f
ENGINE_CELLS = [(2, 100_000, 64), (20, 10_000, 256), (20, 100_000, 64), (200, 10_000, 40)]


def engine_child() -> dict:
    """Per-step times of ss.simulate and of a discrete ss.run with whatever sde_sam this process imported."""
    out = {"sde_sam": str(Path(ss.__file__).parent)}
    for d, n, steps in ENGINE_CELLS:
        sde = usam_sde(d)
        fns = {f"simulate d={d} n={n}": lambda: native_run(sde, n, steps)}
        if (d, n) == (20, 10_000):
            fns[f"run USAM d={d} n={n}"] = lambda: ss.run(sde.problem, ss.USAM(LR, RHO), torch.ones(d), steps=steps,
                                                           n_paths=n, record_every=steps)
            fns[f"simulate d={d} n={n} record every step"] = lambda: ss.simulate(
                sde, torch.ones(d), t1=steps * DT, dt=DT, n_paths=n, seed=0, record_every=1)
        for k, (best, *_rest) in compare(fns, min_rep=3, max_rep=3, budget=0).items():
            out[k] = 1e3 * best / steps
    return out


def section_engine(quick: bool) -> dict:
    """ss.simulate and ss.run before (BASELINE_REV) and after the engine/solver changes, alternating
    subprocesses (two rounds, best of each), same machine, same run."""
    import shutil
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="sde_sam_baseline_"))
    try:
        arch = subprocess.run(["git", "-C", str(HERE.parent), "archive", BASELINE_REV, "sde_sam"], capture_output=True,
                              check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=arch, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        log(f"  engine: cannot check out {BASELINE_REV} ({err}); skipped")
        return {}
    best: dict = {"before": {}, "after": {}}
    try:
        for _ in range(1 if quick else 2):
            for label, src in (("before", str(tmp)), ("after", str(HERE.parent))):
                env = {**os.environ, "SDE_SAM_SRC": src}
                res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--engine-child"], env=env,
                                     capture_output=True, text=True, timeout=600)
                if res.returncode != 0:
                    log(f"  engine {label}: failed: {res.stderr[-500:]}")
                    return {}
                row = json.loads(res.stdout.strip().splitlines()[-1])
                for k, v in row.items():
                    if k != "sde_sam":
                        best[label][k] = min(v, best[label].get(k, math.inf))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k in best["after"]:
        log(f"  engine {k:42s} before {best['before'][k]:8.3f}  after {best['after'][k]:8.3f} ms/step"
            f"  ({best['before'][k] / best['after'][k]:.2f}x)")
    return {"baseline": BASELINE_REV, **best}


MEMORY_CASES = [
    {"impl": "ss.simulate", "d": 20, "n": 100_000},
    {"impl": "ss.simulate", "d": 200, "n": 100_000},
    {"impl": "ss.simulate chunk 16384", "d": 200, "n": 100_000},
    {"impl": "bound", "d": 200, "n": 100_000},
    {"impl": "torchsde fastest", "d": 20, "n": 100_000},
    {"impl": "torchsde fastest", "d": 200, "n": 100_000},
    {"impl": "torchsde default", "d": 20, "n": 100_000},
    {"impl": "torchsde default", "d": 200, "n": 10_000},
    {"impl": "mlp order 1", "d": 11018, "n": 64},
    {"impl": "mlp order 2", "d": 11018, "n": 64},
]


def memory_child(case: dict, fastest: dict) -> dict:
    """Run one case in this (fresh) process; peak RSS above the level reached after a small warm-up."""
    torch.set_num_threads(2)
    impl, d, n = case["impl"], case["d"], case["n"]
    if impl.startswith("mlp"):
        prob = ss.problems.mlp(d_in=32, hidden=256, classes=10, batch_size=8)
        sde = ss.sde_model(prob, ss.SAM(lr=LR, rho=0.05), order=int(impl[-1]))
        fn = lambda m, s: ss.simulate(sde, prob.x_init, t1=s * 0.005, dt=0.005, n_paths=m, seed=0, record_every=s)
        small, steps = 1, 1
    else:
        sde = usam_sde(d)
        steps = block_steps(d)
        fns = {"ss.simulate": lambda m, s: native_run(sde, m, s),
               "ss.simulate chunk 16384": lambda m, s: ss.simulate(
                   sde, torch.ones(d), t1=s * DT, dt=DT, n_paths=m, seed=0, record_every=s, chunk_size=16384),
               "bound": lambda m, s: bound_run(sde, m, s),
               "torchsde fastest": lambda m, s: torchsde_run(sde, m, s, cls=fastest["cls"], bm=fastest["bm"]),
               "torchsde default": lambda m, s: torchsde_run(sde, m, s, cls="general", bm="interval")}
        fn = fns[impl]
        small = 1024
        if impl == "torchsde default":
            steps = 4
    fn(small, steps)
    base = reset_peak()
    fn(n, steps)
    peak = peak_kib()
    return {**case, "steps": steps, "peak_delta_mb": (peak - base) / 1024, "peak_mb": peak / 1024}


def estimate_mb(case: dict, fastest: dict, steps: int) -> float | None:
    """Peak from tensor sizes (float32): ss.simulate holds one pre-generated noise block (block steps x
    paths x d); torchsde's BrownianInterval caches increments (all of them with cache_size=None or
    BrownianPath, at most 45 by default); plus a few (paths, d) states."""
    d, n, impl = case["d"], case["n"], case["impl"]
    mb = lambda numbers: 4 * numbers / 2**20
    if impl.startswith("mlp"):
        return None
    if impl.startswith("ss.simulate"):
        rows = min(n, 16384) if "chunk" in impl else n
        # noise buffer + one stream block per worker + x0 expanded, its chunk copy, x_final + step temporaries
        return mb(block_steps(d) * (rows + 2 * 1024) * d + 3 * n * d + 2 * rows * d)
    if impl == "bound":
        return mb(4 * n * d)
    bm = fastest["bm"] if impl == "torchsde fastest" else "interval"
    cached = steps if bm in ("path", "interval_nocache", "interval_dt_nocache") else min(steps, 45)
    return mb(cached * n * d + 6 * n * d)


def section_memory(quick: bool, fastest: dict) -> list[dict]:
    cases = [c for c in MEMORY_CASES if not quick or (c["n"] <= 10_000 or c["d"] == 20)]
    if quick:
        cases = [dict(c, n=min(c["n"], 16)) if c["impl"].startswith("mlp") else c for c in cases]
    rows = []
    for case in cases:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps({"case": case, "fastest": fastest})]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            log(f"  memory {case}: failed: {res.stderr[-500:]}")
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["estimate_mb"] = estimate_mb(case, fastest, row["steps"])
        rows.append(row)
        est = f"{row['estimate_mb']:.0f}" if row["estimate_mb"] is not None else "-"
        log(f"  memory {case['impl']:24s} d={case['d']:5d} n={case['n']:6d}  +{row['peak_delta_mb']:8.0f} MB"
            f" (estimate {est} MB)")
    return rows


SECTIONS = ("sweep", "grid", "scaling", "dtype", "mlp", "engine", "memory")


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
        isa = "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "")
    except (OSError, IndexError):
        isa = ""
    mem = None
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, IndexError, ValueError):
        pass
    return {"cpu": model, "isa": isa, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "memory_gb": mem, "torch": torch.__version__, "torchsde": torchsde.__version__,
            "python": platform.python_version(), "sde_sam": str(Path(ss.__file__).parent), "platform": platform.platform(), "load_average_start": os.getloadavg()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer cells, steps and repeats")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default results/sde.json; results/sde_quick.json with --quick)")
    parser.add_argument("--no-readme", action="store_true", help="do not regenerate README.md and the figure")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--engine-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.engine_child:
        print(json.dumps(engine_child()))
        return {}
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(memory_child(spec["case"], spec["fastest"])))
        return {}
    if args.out is None:
        args.out = HERE / "results" / ("sde_quick.json" if args.quick else "sde.json")
        if args.quick:
            args.no_readme = True  # a smoke run never overwrites the README made from a full run
    sections = args.sections.split(",")
    result = {"benchmark": "sde", "quick": args.quick, "machine": machine(),
              "command": "python benchmarks/bench_sde.py" + (" --quick" if args.quick else ""),
              "config": {"dt": DT, "lr": LR, "rho": RHO, "noise_cov": SIGMA2, "dtype": "float32", "x0": "ones",
                         "problem": "Quadratic(H = Q diag(linspace(0.5, 2, d)) Q^T, noise_cov=0.09), USAM order 1"}}
    if args.out.exists():  # keep sections not rerun
        old = json.loads(args.out.read_text())
        if old.get("quick") == args.quick:
            result.update({k: v for k, v in old.items() if k in SECTIONS})
    t0 = time.perf_counter()
    fastest = result.get("sweep", {}).get("fastest", {"cls": "additive", "bm": "interval_dt"})
    for name in sections:
        log(f"[{name}]")
        t = time.perf_counter()
        if name == "sweep":
            result["sweep"] = section_sweep(args.quick)
            fastest = result["sweep"]["fastest"]
        elif name == "grid":
            result["grid"] = section_grid(args.quick, fastest)
        elif name == "scaling":
            result["scaling"] = section_scaling(args.quick)
        elif name == "dtype":
            result["dtype"] = section_dtype(args.quick)
        elif name == "mlp":
            result["mlp"] = section_mlp(args.quick)
        elif name == "memory":
            result["memory"] = section_memory(args.quick, fastest)
        elif name == "engine":
            result["engine"] = section_engine(args.quick)
        else:
            raise SystemExit(f"unknown section {name!r}")
        log(f"  ({time.perf_counter() - t:.0f} s)")
    result["machine"]["load_average_end"] = os.getloadavg()
    result["wall_seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    log(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")
    if not args.no_readme:
        sys.path.insert(0, str(HERE))
        import make_readme
        make_readme.main(sde_json=args.out)
    return result


if __name__ == "__main__":
    main()
