"""GPU throughput: path-steps per second of ss.simulate (and ss.run) on one CUDA device.

* the linear (Ornstein–Uhlenbeck) model: USAM SDE on a d = 20 quadratic, 10^6 paths, float32;
* the order-1 SAM SDE (two-draw weak scheme, MATH §4.1) on a 67-parameter MLP finite sum
  (``ss.problems.mlp(n=120, d_in=4, hidden=8, classes=3, batch_size=8)``), 10^4 and 10^5 paths, float32,
  beside one discrete SAM run on the same problem.

* the module benchmark (``bench_module.py``) on the GPU: the digits conv net (d = 2,210) and the 19k MLP
  through ``FiniteSum.from_module``, 64 to 4,096 paths, float32: ``ss.run`` (SAM, steps and defaults), the
  order-1 SDE at ``dt = lr/2``, and the per-path ``nn.Module`` loop (timed over at most 64 paths, per path).

Each configuration: one warm-up run, then the best of three timed runs, with ``torch.cuda.synchronize()``
before the clock stops; observables recorded only at the start and the end.

Run:  python benchmarks/bench_gpu.py          (needs CUDA; exits 0 with a message otherwise)
      python benchmarks/bench_gpu.py --quick  (the module part only at 64 and 1,024 paths)
Writes benchmarks/results/gpu.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

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


def module_rows(dev, paths: list[int]) -> list[dict]:
    """bench_module.py's measurements on the GPU (the loop over at most 64 paths, per path)."""
    from bench_module import measure

    rows = []
    print(f"  {'model':9s} {'d':>6s} {'paths':>6s} {'loop ms':>9s} {'run ms':>8s} {'default':>8s} {'x loop':>7s} "
          f"{'sde1 ms':>8s} {'sde/run per t':>13s}", flush=True)
    for name in ("conv", "mlp 19k"):
        for n in paths:
            r = measure(name, n, torch.float32, dev, steps=10, repeats=3, loop_paths=64)
            rows.append(r)
            print(f"  {r['model']:9s} {r['d']:>6,} {n:>6,} {r['loop_ms']:9.2f} {r['run_steps_ms']:8.2f} "
                  f"{r['run_default_ms']:8.2f} {r['run_vs_loop']:7.3f} {r['sde1_step_ms']:8.2f} "
                  f"{r['sde1_per_time_vs_run']:13.2f}", flush=True)
    return rows


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="GPU throughput of sde_sam")
    parser.add_argument("--quick", action="store_true", help="module benchmark only, 64 and 1024 paths")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device is available (torch.cuda.is_available() is False); nothing to measure.")
        return 0
    dev = torch.device("cuda")
    out = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "cuda": torch.version.cuda, "rows": []}
    print(f"device: {out['device']}, torch {out['torch']}, CUDA {out['cuda']}", flush=True)

    def report(name: str, n: int, steps: int, res: dict) -> None:
        out["rows"].append({"case": name, "n_paths": n, "steps": steps, **res})
        print(f"  {name:44s} {n:>9,} paths x {steps:>4} steps: {res['seconds']:7.3f} s, "
              f"{res['path_steps_per_s']:.3g} path-steps/s", flush=True)

    print("module problems (bench_module.py on the GPU):", flush=True)
    out["module"] = module_rows(dev, [64, 1024] if args.quick else [64, 256, 1024, 4096])
    if args.quick:
        return _write(out)

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
    return _write(out)


def _write(out: dict) -> int:
    path = HERE / "results" / "gpu.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
