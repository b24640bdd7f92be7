"""Real models through ``FiniteSum.from_module``: ``ss.run`` and the order-1 SDE against the loop a user writes.

Models on scikit-learn's handwritten digits (all 1,797 samples, 64 pixels, 10 classes, mini-batches of 32,
cross-entropy): a tanh MLP 64 -> h -> 10 with h = 32, 256, 1024, 4096 (d = 2,410, 19,210, 76,810, 307,210)
and a conv net (two 3x3 convolutions, LayerNorm, a linear head: d = 2,210). SAM (lr = 0.05, rho = 0.05).

Per configuration (model, paths in {8, 64}, float32/float64), all measured in the same process:

* ``loop``: the loop a user writes without this package: one ``nn.Module`` per path, SAM as ``davda54/sam``
  does it, by hand (loss, ``backward``, ``e = rho g / (||g|| + 1e-12)`` added in place, a second
  ``backward``, ``e`` removed, SGD step), a fresh mini-batch of 32 per path per step; no observables. Its paths
  are independent Python iterations, so ``--quick`` times 8 of them and scales to the path count.
* ``run (steps)``: ``ss.run(..., observables=())``, the steps alone.
* ``record``: one recording of the default observable (the full-batch loss, every path), and the interval
  ``r`` that ``record_every="auto"`` chooses; ``run (defaults)`` is the per-step cost of a default run,
  steps plus its recordings: ``run (steps) + record / r``, and ``record share`` their ratio (target <= 10%).
* ``SDE order 1`` / ``SDE order 2``: ``ss.simulate`` of the order-1 / order-2 SAM SDE (two-draw scheme,
  MATH §4.1) at ``dt = lr/2``, steps alone; ``per unit time`` is two solver steps against one discrete step
  (targets <= 2.5x for order 1, <= 4x for order 2).

Timings are the best of ``--repeats`` after a warm-up (the estimate least disturbed on a shared machine);
the machine's load average is recorded at the start and the end. Memory per path (``--memory``): the peak RSS
(``VmHWM``, reset after the model and data are built) of a child process running 64 paths minus one running 8,
over 56.

Usage:
    python benchmarks/bench_module.py            # all sizes (about 10 minutes on 2 cores)
    python benchmarks/bench_module.py --quick    # every model at 8 and 64 paths (307k: 8), float32
    python benchmarks/bench_module.py --memory   # also memory per path (child processes)
Writes benchmarks/results/module.json (``--quick``: module_quick.json).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import sde_sam as ss  # noqa: E402

sys.path.insert(0, str(HERE))
from _peak import peak_kib, reset_peak  # noqa: E402

LR, RHO, BATCH = 0.05, 0.05, 32
HIDDEN = {"mlp 2.4k": 32, "mlp 19k": 256, "mlp 77k": 1024, "mlp 307k": 4096}


# -- models and data ------------------------------------------------------------------------------------------
def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.LayerNorm(128), nn.Linear(128, 10))


def model(name: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    torch.manual_seed(0)  # benchmark script: the initial weights only
    m = conv_net() if name == "conv" else nn.Sequential(nn.Linear(64, HIDDEN[name]), nn.Tanh(),
                                                        nn.Linear(HIDDEN[name], 10))
    return m.to(dtype=dtype, device=device)


def data(name: str, dtype: torch.dtype, device: torch.device):
    a, t = ss.problems.datasets.digits(None, dtype=dtype)
    a = a.reshape(-1, 1, 8, 8) if name == "conv" else a
    return a.to(device), t.to(device)


# -- the user's loop --------------------------------------------------------------------------------------------
def loop_step(models: list[nn.Module], inputs, targets, idx: torch.Tensor) -> None:
    """One SAM step per path, as davda54/sam's first_step / second_step do it (written out here)."""
    for m, i in zip(models, idx):
        xb, yb = inputs[i], targets[i]
        F.cross_entropy(m(xb), yb).backward()
        params = [p for p in m.parameters() if p.grad is not None]
        with torch.no_grad():
            norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in params]), p=2)
            scale = RHO / (norm + 1e-12)
            e_w = [p.grad * scale for p in params]
            for p, e in zip(params, e_w):
                p.add_(e)  # climb to the local maximum
        m.zero_grad()
        F.cross_entropy(m(xb), yb).backward()
        with torch.no_grad():
            for p, e in zip(params, e_w):
                p.sub_(e)  # back to w, then the base optimiser's (SGD) step with the perturbed gradient
                p.add_(p.grad, alpha=-LR)
        m.zero_grad()


def best(fn, repeats: int, sync) -> float:
    fn()
    sync()
    out = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        out = min(out, time.perf_counter() - t)
    return out


def measure(name: str, paths: int, dtype: torch.dtype, device: torch.device, *, steps: int, repeats: int,
            loop_paths: int | None = None) -> dict:
    """ms per step of every variant (module docstring) for one configuration."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    m = model(name, dtype, device)
    a, t = data(name, dtype, device)
    prob = ss.FiniteSum.from_module(m, F.cross_entropy, (a, t), batch_size=BATCH)
    method = ss.SAM(LR, RHO)
    x0 = prob.x_init
    row = {"model": name, "d": prob.d, "paths": paths, "dtype": str(dtype).replace("torch.", ""), "steps": steps}

    lp = paths if loop_paths is None else min(paths, loop_paths)
    models = [copy.deepcopy(m) for _ in range(lp)]
    gen = torch.Generator(device=device).manual_seed(0)

    def loop():
        for _ in range(steps):
            loop_step(models, a, t, torch.randint(a.shape[0], (lp, BATCH), generator=gen, device=device))

    row["loop_ms"] = 1e3 * best(loop, repeats, sync) / steps * paths / lp
    row["run_steps_ms"] = 1e3 * best(lambda: ss.run(prob, method, x0, steps=steps, n_paths=paths, observables=(),
                                                    progress=False), repeats, sync) / steps
    obs = ss.observables.resolve(("loss",), prob)
    xs = x0.expand(paths, -1).clone()
    row["record_ms"] = 1e3 * best(lambda: obs["loss"](xs), repeats, sync)
    row["auto_every"] = ss.observables.auto_record_every(obs, ss.observables.step_cost(prob, method))
    row["run_default_ms"] = row["run_steps_ms"] + row["record_ms"] / row["auto_every"]
    row["record_share"] = row["record_ms"] / row["auto_every"] / row["run_steps_ms"]
    dt = LR / 2
    for order in (1, 2):
        sde = ss.sde_model(prob, method, order=order)
        row[f"sde{order}_step_ms"] = 1e3 * best(lambda: ss.simulate(sde, x0, t1=steps * dt, dt=dt, n_paths=paths,
                                                                    observables=(), progress=False),
                                                repeats, sync) / steps
        row[f"sde{order}_per_time_vs_run"] = 2 * row[f"sde{order}_step_ms"] / row["run_steps_ms"]
    row["run_vs_loop"] = row["run_default_ms"] / row["loop_ms"]
    return row


# -- two-point increments against Gaussian ones (the linear OU benchmark) --------------------------------------------
def two_point(repeats: int = 3) -> dict:
    """ms per step of the USAM SDE on the d = 20 quadratic of bench_sde.py, 10^4 paths, one thread, float32."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d, n, dt, steps = 20, 10**4, 1 / 256, 256
    g = torch.Generator().manual_seed(d)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    H = (q * torch.linspace(0.5, 2.0, d, dtype=torch.float64)) @ q.T
    sde = ss.sde_model(ss.Quadratic((0.5 * (H + H.T)).float(), noise_cov=0.09), ss.USAM(lr=0.05, rho=0.1), order=1)
    out = {}
    for inc in ("gaussian", "two_point"):
        out[f"{inc}_ms"] = 1e3 * best(lambda: ss.simulate(sde, torch.ones(d), t1=steps * dt, dt=dt, n_paths=n, seed=0,
                                                          record_every=steps, increments=inc, progress=False),
                                      repeats, lambda: None) / steps
    out["speedup"] = out["gaussian_ms"] / out["two_point_ms"]
    torch.set_num_threads(threads)
    return out


# -- memory per path (child processes) --------------------------------------------------------------------------
def _child(kind: str, name: str, paths: int) -> None:
    torch.set_num_threads(2)
    m = model(name, torch.float32, torch.device("cpu"))
    a, t = data(name, torch.float32, torch.device("cpu"))
    base = reset_peak()  # after the data: the peak of the run alone (VmHWM; ru_maxrss is the parent's here)
    if kind == "loop":
        models = [copy.deepcopy(m) for _ in range(paths)]
        for _ in range(3):
            loop_step(models, a, t, torch.randint(a.shape[0], (paths, BATCH)))
    else:
        prob = ss.FiniteSum.from_module(m, F.cross_entropy, (a, t), batch_size=BATCH)
        if kind == "run":
            ss.run(prob, ss.SAM(LR, RHO), prob.x_init, steps=3, n_paths=paths, progress=False)
        else:
            sde = ss.sde_model(prob, ss.SAM(LR, RHO), order=1)
            ss.simulate(sde, prob.x_init, t1=3 * LR / 2, dt=LR / 2, n_paths=paths, progress=False)
    print(json.dumps({"kib": peak_kib() - base}))


def memory_per_path(name: str) -> dict:
    out = {}
    for kind in ("loop", "run", "sde1"):
        kib = {}
        for paths in (8, 64):
            res = subprocess.run([sys.executable, __file__, "--child", kind, name, str(paths)], capture_output=True,
                                 text=True, check=True)
            kib[paths] = json.loads(res.stdout.strip().splitlines()[-1])["kib"]
        out[f"{kind}_kib_per_path"] = max(0.0, (kib[64] - kib[8]) / 56)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default=None, help="comma-separated subset, e.g. 'mlp 2.4k,conv'")
    p.add_argument("--paths", default=None, help="comma-separated path counts (default 8,64)")
    p.add_argument("--dtypes", default=None, help="comma-separated: float32,float64 (default both)")
    p.add_argument("--steps", type=int, default=10, help="steps per timing (3 for the largest models)")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    torch.set_num_threads(args.threads)
    names = ["mlp 2.4k", "mlp 19k", "mlp 77k", "mlp 307k", "conv"]
    paths = [8, 64]
    dtypes = [torch.float32] if args.quick else [torch.float32, torch.float64]
    names = args.models.split(",") if args.models else names
    paths = [int(v) for v in args.paths.split(",")] if args.paths else paths
    dtypes = [getattr(torch, v) for v in args.dtypes.split(",")] if args.dtypes else dtypes
    out = {"machine": {"cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "python": platform.python_version(), "load_average_start": list(os.getloadavg())},
           "rows": []}
    print(f"load average at start: {out['machine']['load_average_start']}", flush=True)
    hdr = (f"{'model':9s} {'d':>7s} {'paths':>5s} {'dtype':7s} {'loop':>8s} {'run':>8s} {'record':>8s} {'r':>4s} "
           f"{'default':>8s} {'x loop':>6s} {'share':>6s} {'sde1':>8s} {'sde1/run':>8s} {'sde2':>8s} {'sde2/run':>8s}")
    print(hdr, flush=True)
    for name in names:
        for n in paths:
            for dtype in dtypes:
                if args.quick and name == "mlp 307k" and n > 8 and not args.paths:
                    continue  # --quick: the largest model at 8 paths only (its 64-path row alone takes minutes)
                big = name == "mlp 307k" or (name == "mlp 77k" and n == 64)
                r = measure(name, n, dtype, torch.device("cpu"), steps=3 if big else args.steps,
                            repeats=2 if big else 3, loop_paths=8 if args.quick else None)
                out["rows"].append(r)
                print(f"{r['model']:9s} {r['d']:>7,} {r['paths']:>5d} {r['dtype']:7s} {r['loop_ms']:8.2f} "
                      f"{r['run_steps_ms']:8.2f} {r['record_ms']:8.2f} {r['auto_every']:>4d} {r['run_default_ms']:8.2f} "
                      f"{r['run_vs_loop']:6.2f} {r['record_share']:6.1%} {r['sde1_step_ms']:8.2f} "
                      f"{r['sde1_per_time_vs_run']:8.2f} {r['sde2_step_ms']:8.2f} {r['sde2_per_time_vs_run']:8.2f}",
                      flush=True)
    out["two_point"] = two_point()
    tp = out["two_point"]
    print(f"linear OU, d=20, 10^4 paths, 1 thread: Gaussian {tp['gaussian_ms']:.3f} ms/step, two-point "
          f"{tp['two_point_ms']:.3f} ms/step: {tp['speedup']:.2f}x", flush=True)
    if args.memory:
        out["memory"] = {name: memory_per_path(name) for name in names}
        for name, mem in out["memory"].items():
            print(f"memory per path, {name}: " + ", ".join(f"{k} {v:.0f} KiB" for k, v in mem.items()), flush=True)
    out["machine"]["load_average_end"] = list(os.getloadavg())
    print(f"load average at end: {out['machine']['load_average_end']}")
    path = HERE / "results" / ("module.json" if not (args.quick or args.models or args.paths or args.dtypes)
                                else "module_quick.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
