"""GPU throughput: path-steps per second of ss.simulate (and ss.run) on one CUDA device.

* the linear (Ornstein–Uhlenbeck) model: USAM SDE on a d = 20 quadratic, 10^6 paths, float32;
* the order-1 SAM SDE (two-draw weak scheme, MATH §4.1) on a 67-parameter MLP finite sum
  (``ss.problems.mlp(n=120, d_in=4, hidden=8, classes=3, batch_size=8)``), 10^4 and 10^5 paths, float32,
  beside one discrete SAM run on the same problem.

Each configuration: one warm-up run, then the best of three timed runs, with ``torch.cuda.synchronize()``
before the clock stops; observables recorded only at the start and the end.

Run:  python benchmarks/bench_gpu.py          (needs CUDA; exits with a message otherwise)
Writes benchmarks/results/gpu.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

import sde_sam as ss  # noqa: E402


def timed(fn, work: float) -> dict:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return {"seconds": best, "path_steps_per_s": work / best}


def mlp_problem(device) -> ss.FiniteSum:
    cpu = ss.problems.mlp(n=120, d_in=4, hidden=8, classes=3, batch_size=8)
    prob = ss.FiniteSum(cpu.loss_fn, tuple(t.to(device) for t in cpu.data), batch_size=8, d=cpu.d)
    prob.x_init = cpu.x_init.to(device)
    return prob


def main() -> int:
    if not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device is available (torch.cuda.is_available() is False); nothing to measure.")
        return 1
    dev = torch.device("cuda")
    out = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "cuda": torch.version.cuda, "rows": []}
    print(f"device: {out['device']}, torch {out['torch']}, CUDA {out['cuda']}", flush=True)

    def report(name: str, n: int, steps: int, res: dict) -> None:
        out["rows"].append({"case": name, "n_paths": n, "steps": steps, **res})
        print(f"  {name:44s} {n:>9,} paths x {steps:>4} steps: {res['seconds']:7.3f} s, "
              f"{res['path_steps_per_s']:.3g} path-steps/s", flush=True)

    # Linear model: d = 20, 10^6 paths, float32.
    d, n, steps, dt = 20, 10**6, 200, 0.005
    g = torch.Generator().manual_seed(d)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    H = ((Q * torch.linspace(0.5, 2.0, d, dtype=torch.float64)) @ Q.T)
    quad = ss.Quadratic((0.5 * (H + H.T)).float().to(dev), noise_cov=0.09)
    sde = ss.sde_model(quad, ss.USAM(lr=0.05, rho=0.1), order=1)
    x0 = torch.ones(d, device=dev)
    report("linear USAM SDE, d=20, float32", n, steps,
           timed(lambda: ss.simulate(sde, x0, t1=steps * dt, dt=dt, n_paths=n, seed=0, record_every=steps),
                 n * steps))

    # Order-1 SAM SDE on the MLP (two-draw scheme), and the discrete method.
    prob = mlp_problem(dev)
    method = ss.SAM(lr=0.1, rho=0.05)
    sde = ss.sde_model(prob, method, order=1)
    steps, dt = 50, 0.01
    for n in (10**4, 10**5):
        report(f"order-1 SAM SDE ({sde.mode}), MLP d={prob.d}", n, steps,
               timed(lambda: ss.simulate(sde, prob.x_init, t1=steps * dt, dt=dt, n_paths=n, seed=0,
                                         record_every=steps), n * steps))
        report(f"discrete SAM, MLP d={prob.d}", n, steps,
               timed(lambda: ss.run(prob, method, prob.x_init, steps=steps, n_paths=n, seed=0, record_every=steps),
                     n * steps))
    path = HERE / "results" / "gpu.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
