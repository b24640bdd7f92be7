"""Nonlinear SDE models: one solver step against one discrete step of the same method (issue 12).

Two problems, SAM (rho = 0.05, lr = 0.1), torch single-threaded, all timings in one run and interleaved
(rounds of: discrete, every SDE configuration), best of the rounds (the least disturbed by other load):

* ``teacher_student``: ``ss.problems.teacher_student(n=16, d_in=2, width=2)`` (d = 6, B = 1, float64), 20,000
  paths; the previous default forms expectations by enumerating the 16 samples;
* ``mlp``: ``ss.problems.mlp(n=120, d_in=4, hidden=8, classes=3, batch_size=8)`` (d = 67, float32), 1,000 paths;
  the previous default samples K = 32 mini-batches per evaluation (order 0: enumerates the 120 per-sample
  gradients).

For each SDE order (0, 1, 2, "exact") the new default (``expectation="auto"``: the two-draw weak scheme of
MATH §4.1) and the previous one, each step timed as ``ss.simulate`` over a few steps (``ss.run`` for the
discrete method), recording only at the start and the end. Targets: <= 3x a discrete step for order 0 and
exact, <= 5x order 1, <= 8x order 2.

Run:  python benchmarks/bench_nonlinear.py [--quick]      (about 2 min; --quick: one round, fewer steps)
Writes benchmarks/results/nonlinear.json (or nonlinear_quick.json); make_readme.py adds it to the README.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

import sde_sam as ss  # noqa: E402

LR, RHO, DT = 0.1, 0.05, 0.01
ORDERS = (0, 1, 2, "exact")
TARGETS = {0: 3.0, 1: 5.0, 2: 8.0, "exact": 3.0}


def problems() -> dict:
    return {"teacher_student": (ss.problems.teacher_student(n=16, d_in=2, width=2), 20_000, "enumerate"),
            "mlp": (ss.problems.mlp(n=120, d_in=4, hidden=8, classes=3, batch_size=8), 1_000, 32)}


def bench(name: str, prob, n_paths: int, previous, *, steps: int, rounds: int) -> dict:
    method = ss.SAM(lr=LR, rho=RHO)
    x0 = prob.x_init
    fns = {"discrete": lambda: ss.run(prob, method, x0, steps=steps, n_paths=n_paths, record_every=steps, seed=0)}
    modes = {}
    for order in ORDERS:
        for label, expectation in (("new", "auto"), ("previous", previous)):
            sde = ss.sde_model(prob, method, order=order, expectation=expectation)
            modes[(order, label)] = (sde.mode, sde.n_draws)
            fns[(order, label)] = (lambda s=sde: ss.simulate(s, x0, t1=steps * DT, dt=DT, n_paths=n_paths,
                                                             record_every=steps, seed=0))
    times = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t) / steps)
    disc = min(times["discrete"])
    rows = []
    for order in ORDERS:
        for label in ("new", "previous"):
            best = min(times[(order, label)])
            mode, K = modes[(order, label)]
            rows.append({"order": str(order), "default": label, "mode": mode, "K": K if mode == "sampled" else None,
                         "ms_per_step": 1e3 * best,
                         "relative_to_discrete": best / disc, "target": TARGETS[order] if label == "new" else None})
            print(f"  {name:16s} order {str(order):5s} {label:8s} {mode:9s} {1e3 * best:8.2f} ms/step "
                  f"= {best / disc:5.1f}x discrete" + (f" (target <= {TARGETS[order]:g}x)" if label == "new" else ""),
                  flush=True)
    return {"problem": name, "d": prob.d, "n_samples": prob.n, "batch_size": prob.batch_size, "dtype": str(prob.dtype),
            "n_paths": n_paths, "steps": steps, "rounds": rounds, "discrete_ms_per_step": 1e3 * disc, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps, rounds = (3, 1) if args.quick else (6, 3)
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": 1,
                       "torch": torch.__version__, "load_average": list(os.getloadavg())},
           "config": {"lr": LR, "rho": RHO, "dt": DT, "method": "SAM"}, "results": []}
    t0 = time.perf_counter()
    for name, (prob, n_paths, previous) in problems().items():
        print(f"{name}: d={prob.d}, {n_paths} paths; discrete SAM vs SDE steps", flush=True)
        out["results"].append(bench(name, prob, n_paths, previous, steps=steps, rounds=rounds))
    out["machine"]["load_average_end"] = list(os.getloadavg())
    out["wall_s"] = time.perf_counter() - t0
    path = HERE / "results" / ("nonlinear_quick.json" if args.quick else "nonlinear.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path} ({out['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
