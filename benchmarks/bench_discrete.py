"""Throughput of batched discrete runs (``sde_sam.run``) against the per-run loop people write.

For SGD and SAM on two problems -- a d=20 quadratic with additive Gaussian gradient noise (Σ = 0.01 I) and
the default ``sde_sam.problems.mlp()`` (d=195, mini-batches of 8), both float32 -- it measures discrete
path-steps per second of

* ``ss.run`` advancing ``--paths`` independent runs at once (no observables recorded, only the divergence
  check at the start and the end, so the stepping is what is timed), and
* a per-run loop measured in the same process: one path at a time, ``torch.optim``-style code with an
  ``nn.Parameter`` (the quadratic) or an ``nn.Module`` (the MLP), ``loss.backward()`` and, for SAM, the step
  as it is usually hand-written (gradient, in-place perturbation under ``no_grad``, second backward,
  restore, ``optimizer.step()``), over ``--loop-paths`` paths and the same number of steps, extrapolated
  per path-step.

Prints a table and writes ``benchmarks/results/discrete.json``. On a CPU the ratio is the number to
read; absolute timings belong on a GPU.

Usage:
    python benchmarks/bench_discrete.py                # 10^4 paths, 50 steps (< 2 minutes on 2 cores)
    python benchmarks/bench_discrete.py --quick        # a smoke run (seconds)
    python benchmarks/bench_discrete.py --threads 1    # steadier on a shared, loaded machine
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sde_sam as ss

LR, RHO = 0.05, 0.05
D_QUAD, NOISE = 20, 0.01


# -- the problems --------------------------------------------------------------------------------------------
def quadratic_problem() -> ss.Quadratic:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D_QUAD, D_QUAD, generator=g))
    H = (q * torch.linspace(2.0, 0.1, D_QUAD)) @ q.T
    return ss.Quadratic(0.5 * (H + H.T), noise_cov=NOISE)


def mlp_problem():
    return ss.problems.mlp()  # n=256, d_in=8, hidden=16, classes=3, batch_size=8, float32


def method(name: str) -> ss.Method:
    return ss.SGD(LR) if name == "SGD" else ss.SAM(LR, RHO)


# -- batched: one call to ss.run -----------------------------------------------------------------------------
def time_batched(prob, x0: torch.Tensor, name: str, paths: int, steps: int) -> float:
    """Seconds for ``paths`` runs of ``steps`` steps."""
    kw = dict(record_every=steps, observables=())  # no observables: time the stepping, as the loop does
    start = time.perf_counter()
    traj = ss.run(prob, method(name), x0, steps=steps, n_paths=paths, seed=0, **kw)
    elapsed = time.perf_counter() - start
    assert traj.n_diverged == 0, traj
    return elapsed


def best_of(repeats: int, fn, *args) -> float:
    """The fastest of ``repeats`` timings after one small warm-up call (timeit's convention)."""
    fn(*args[:-2], 2, 2)  # warm-up: 2 paths, 2 steps
    return min(fn(*args) for _ in range(repeats))


# -- the per-run loop, as people write it ----------------------------------------------------------------
def sam_step(params: list[nn.Parameter], closure, opt: torch.optim.Optimizer, rho: float) -> None:
    """The usual hand-written SAM step (Foret et al.'s reference code, minus the optimizer wrapper)."""
    opt.zero_grad()
    closure().backward()
    with torch.no_grad():
        norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
        perturbations = []
        for p in params:
            e = p.grad * (rho / (norm + 1e-12))
            p.add_(e)
            perturbations.append(e)
    opt.zero_grad()
    closure().backward()  # the same mini-batch / noise draw at the perturbed point
    with torch.no_grad():
        for p, e in zip(params, perturbations):
            p.sub_(e)
    opt.step()


def sgd_step(params, closure, opt, rho) -> None:
    opt.zero_grad()
    closure().backward()
    opt.step()


def loop_quadratic(prob: ss.Quadratic, x0: torch.Tensor, name: str, paths: int, steps: int) -> float:
    step_fn = sam_step if name == "SAM" else sgd_step
    H, sigma = prob.H, NOISE**0.5
    start = time.perf_counter()
    for path in range(paths):
        gen = torch.Generator().manual_seed(path)
        x = nn.Parameter(x0.clone())
        opt = torch.optim.SGD([x], lr=LR)
        for _ in range(steps):
            z = sigma * torch.randn(D_QUAD, generator=gen)  # gradient noise: d/dx (z·x) = z
            step_fn([x], lambda: 0.5 * x @ (H @ x) + z @ x, opt, RHO)
    return time.perf_counter() - start


def _module_from_flat(flat: torch.Tensor, d_in: int = 8, hidden: int = 16, classes: int = 3) -> nn.Module:
    """The library's MLP (tanh hidden layer, linear logits) as an nn.Module, loaded from its flat vector."""
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes))
    s1, s2 = hidden * d_in, hidden * d_in + hidden
    s3 = s2 + classes * hidden
    with torch.no_grad():
        model[0].weight.copy_(flat[:s1].reshape(hidden, d_in))
        model[0].bias.copy_(flat[s1:s2])
        model[2].weight.copy_(flat[s2:s3].reshape(classes, hidden))
        model[2].bias.copy_(flat[s3:])
    return model


def check_same_mlp(prob) -> None:
    """The loop trains the same objective as the library: one mini-batch gradient agrees."""
    model = _module_from_flat(prob.x_init)
    inputs, labels = prob.data
    idx = torch.arange(prob.batch_size)
    F.cross_entropy(model(inputs[idx]), labels[idx]).backward()
    flat = torch.cat([p.grad.flatten() for p in (model[0].weight, model[0].bias, model[2].weight, model[2].bias)])
    lib = prob.stochastic_grad(prob.x_init[None], idx[None])[0]
    torch.testing.assert_close(flat, lib, rtol=1e-4, atol=1e-6)


def loop_mlp(prob, x0: torch.Tensor, name: str, paths: int, steps: int) -> float:
    step_fn = sam_step if name == "SAM" else sgd_step
    inputs, labels = prob.data
    start = time.perf_counter()
    for path in range(paths):
        gen = torch.Generator().manual_seed(path)
        model = _module_from_flat(x0)
        params = list(model.parameters())
        opt = torch.optim.SGD(params, lr=LR)
        for _ in range(steps):
            idx = torch.randint(prob.n, (prob.batch_size,), generator=gen)
            a, y = inputs[idx], labels[idx]
            step_fn(params, lambda: F.cross_entropy(model(a), y), opt, RHO)
    return time.perf_counter() - start


# -- main ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", type=int, default=10_000, help="paths for the batched runs")
    parser.add_argument("--steps", type=int, default=50, help="steps per run (both sides)")
    parser.add_argument("--loop-paths", type=int, default=20, help="paths for the per-run loop")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1000 paths, 10 steps, 3 loop paths, 1 repeat")
    parser.add_argument("--repeats", type=int, default=2, help="time each case this many times, keep the best")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a shared machine")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "discrete.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.paths, args.steps, args.loop_paths, args.repeats = 1000, 10, 3, 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    quad, net = quadratic_problem(), mlp_problem()
    check_same_mlp(net)
    cases = [("quadratic", quad, torch.ones(D_QUAD), loop_quadratic),
             ("mlp", net, net.x_init, loop_mlp)]
    rows = []
    header = (f"{'problem':<10} {'d':>4} {'method':<6} {'batched path-steps/s':>21} {'loop path-steps/s':>18} "
              f"{'speed-up':>9}")
    print(f"sde_sam {ss.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.paths} batched paths vs {args.loop_paths} looped paths, {args.steps} steps, float32, "
          f"best of {args.repeats}\n")
    print(header)
    print("-" * len(header))
    for label, prob, x0, loop in cases:
        for name in ("SGD", "SAM"):
            batched_s = best_of(args.repeats, time_batched, prob, x0, name, args.paths, args.steps)
            loop_s = best_of(args.repeats, loop, prob, x0, name, args.loop_paths, args.steps)
            row = {"problem": label, "d": prob.d, "method": name, "lr": LR, "rho": RHO if name == "SAM" else 0.0,
                   "steps": args.steps, "batched_paths": args.paths, "batched_seconds": batched_s,
                   "batched_path_steps_per_s": args.paths * args.steps / batched_s,
                   "loop_paths": args.loop_paths, "loop_seconds": loop_s,
                   "loop_path_steps_per_s": args.loop_paths * args.steps / loop_s}
            row["speedup"] = row["batched_path_steps_per_s"] / row["loop_path_steps_per_s"]
            rows.append(row)
            print(f"{label:<10} {prob.d:>4} {name:<6} {row['batched_path_steps_per_s']:>21,.0f} "
                  f"{row['loop_path_steps_per_s']:>18,.0f} {row['speedup']:>8.0f}x")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "sde_sam": ss.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
           "device": "cpu", "dtype": "float32"}
    config = {"paths": args.paths, "steps": args.steps, "loop_paths": args.loop_paths, "repeats": args.repeats,
              "quick": args.quick,
              "threads": torch.get_num_threads(), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
              "quadratic": {"d": D_QUAD, "noise_cov": NOISE}, "mlp": "sde_sam.problems.mlp() defaults, batch 8"}
    args.out.write_text(json.dumps({"benchmark": "discrete", "config": config, "env": env, "results": rows},
                                   indent=2))
    print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
