"""The step loop (`sde_sam/_engine.py`) before and after it stopped synchronising with the host: ms per step
(CPU time, best of repeats) of the same calls with the engine of an earlier commit (`--before`, default the commit before the change)
and with this checkout's, alternating in one process, single-threaded. Results are bit-for-bit equal
(checked here); the numbers go into benchmarks/README.md ("The step loop: recording cost").

    python benchmarks/bench_engine.py [--before REV] [--repeats 3] [--quick]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import sde_sam as ss
from sde_sam import _engine
from sde_sam.problems import teacher_student

ROOT = Path(__file__).resolve().parents[1]


def load_engine(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:sde_sam/_engine.py"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    path = Path(tempfile.mkdtemp()) / "_engine_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("sde_sam._engine_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cases(quick: bool):
    n = 10_000 if quick else 100_000
    d = 20
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    H = (q * torch.linspace(0.5, 2.0, d)) @ q.T
    quad = ss.Quadratic(0.5 * (H + H.T), noise_cov=0.09)
    sde = ss.sde_model(quad, ss.USAM(0.05, 0.1), order=1)
    x0 = torch.ones(d)
    steps = 64
    ts = teacher_student(n=16, batch_size=4, dtype=torch.float32)
    out = {}
    for every, label in ((1, "every step"), (steps, "start and end")):
        out[f"simulate linear d=20 n={n:.0e} record {label}"] = (
            lambda every=every: ss.simulate(sde, x0, t1=steps / 256, dt=1 / 256, n_paths=n, seed=0,
                                            record_every=every), steps)
        out[f"run SAM quadratic d=20 n={n:.0e} record {label}"] = (
            lambda every=every: ss.run(quad, ss.SAM(0.05, 0.1), x0, steps=steps, n_paths=n, seed=0,
                                       record_every=every), steps)
    out[f"simulate linear d=20 n={n:.0e} record every step, no observable"] = (
        lambda: ss.simulate(sde, x0, t1=steps / 256, dt=1 / 256, n_paths=n, seed=0, observables=()), steps)
    small = ss.sde_model(ss.Quadratic(torch.eye(2), noise_cov=0.09), ss.USAM(0.05, 0.1), order=1)
    out["simulate linear d=2 n=1e3 record every step"] = (
        lambda: ss.simulate(small, torch.ones(2), t1=1.0, dt=1 / 256, n_paths=1000, seed=0), 256)
    out["run SAM teacher_student n=2e4 record every step"] = (
        lambda: ss.run(ts, ss.SAM(0.05, 0.1), torch.full((ts.d,), 0.3), steps=16, n_paths=20_000, seed=0), 16)
    return out


def same(a, b) -> bool:
    def eq(s, t):
        return torch.equal(s.nan_to_num(7.0), t.nan_to_num(7.0))
    return eq(a.x_final, b.x_final) and all(eq(a.values[k], b.values[k]) for k in a.values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="96b9e5f^")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    before, after = load_engine(args.before).drive, _engine.drive
    rows = []
    for name, (fn, steps) in cases(args.quick).items():
        best = {"before": float("inf"), "after": float("inf")}
        results = {}
        for _ in range(args.repeats):
            for label, drive in (("before", before), ("after", after)):
                _engine.drive = drive
                try:
                    start = time.process_time()  # CPU time: robust on a shared machine (one thread)
                    results[label] = fn()
                    best[label] = min(best[label], time.process_time() - start)
                finally:
                    _engine.drive = after
        row = {"call": name, "before_ms_per_step": 1e3 * best["before"] / steps,
               "after_ms_per_step": 1e3 * best["after"] / steps, "identical": same(results["before"], results["after"])}
        rows.append(row)
        print(f"{name:55s} before {row['before_ms_per_step']:8.3f}  after {row['after_ms_per_step']:8.3f}  "
              f"x{row['before_ms_per_step'] / row['after_ms_per_step']:.2f}  identical={row['identical']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"before": args.before, "threads": 1, "torch": torch.__version__,
                                          "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
