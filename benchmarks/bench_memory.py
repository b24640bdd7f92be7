"""Memory per path of the larger module problems (issue 21 item 3; ``docs/scaling.md``, "Larger models: memory
per path").

Each measurement is a fresh interpreter (``python -c``) that builds the problem, warms up on one path, runs one
kind of run — ``ss.run`` (SAM, 2 steps), the order-1 or order-2 SDE (2 steps of the two-draw scheme), or
``ss.run`` recording ``"lambda_max"`` (1 step, 2 recordings, 20 Lanczos iterations) — and reports its peak
resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the run's wall time. From three runs per case,

* ``state``   = (peak(N=16, chunk=2) − peak(N=2, chunk=2)) / 14: what each path costs beyond a chunk
  (its stored state: ``x0`` expanded, the iterate, ``x_final``, recordings);
* ``working`` = (peak(N=16, chunk=16) − peak(N=16, chunk=2)) / 14: what each path of a chunk costs while it is
  evaluated (activations, tangents, Krylov basis), i.e. the memory ``chunk_size`` bounds.

Usage: ``python benchmarks/bench_memory.py [--nets conv attention] [--dtypes float64 float32]
[--kinds run sde1 sde2 lambda_max] [--out results.json]`` (about 25 minutes on 2 loaded cores).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, resource, sys, time, torch
    import sde_sam as ss
    from sde_sam.problems import attention_block, digits_conv
    torch.set_num_threads(1)
    net, kind, n_paths, chunk, dtype, n = sys.argv[1:7]
    n_paths, chunk, n, dtype = int(n_paths), int(chunk), int(n), getattr(torch, dtype)
    prob = digits_conv(n, dtype=dtype) if net == "conv" else attention_block(n, dtype=dtype)
    method = ss.SAM(0.05, 0.05)

    def go(paths, chunk_size):
        kw = dict(n_paths=paths, seed=0, chunk_size=chunk_size, progress=False, record_every=1)
        if kind == "run":
            return ss.run(prob, method, prob.x_init, steps=2, observables=("loss",), **kw)
        if kind == "lambda_max":
            return ss.run(prob, method, prob.x_init, steps=1, observables=("lambda_max",), **kw)
        return ss.simulate(ss.sde_model(prob, method, order=int(kind[-1])), prob.x_init, t1=0.05, dt=0.025,
                           observables=("loss",), **kw)

    go(1, 1)  # warm-up: first-call costs land in the baseline
    start = time.perf_counter()
    traj = go(n_paths, chunk)
    seconds = time.perf_counter() - start
    assert not bool(traj.diverged.any())
    print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "d": prob.d,
                      "seconds": seconds}))
""")

SMALL, LARGE, CHUNK = 2, 16, 2


def measure(net: str, kind: str, n_paths: int, chunk: int, dtype: str, n: int) -> dict:
    """One fresh interpreter: ``{"peak_kib", "d", "seconds"}``."""
    out = subprocess.run([sys.executable, "-c", CHILD, net, kind, str(n_paths), str(chunk), dtype, str(n)],
                         capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def case(net: str, kind: str, dtype: str, n: int) -> dict:
    """Per-path memory (MB) of one (net, kind, dtype): stored state and chunk working memory."""
    small = measure(net, kind, SMALL, CHUNK, dtype, n)
    chunked = measure(net, kind, LARGE, CHUNK, dtype, n)
    whole = measure(net, kind, LARGE, LARGE, dtype, n)
    mib = 1 / 1024
    return {"net": net, "kind": kind, "dtype": dtype, "n": n, "d": small["d"],
            "baseline_mb": small["peak_kib"] * mib,
            "state_mb_per_path": (chunked["peak_kib"] - small["peak_kib"]) * mib / (LARGE - SMALL),
            "working_mb_per_path": (whole["peak_kib"] - chunked["peak_kib"]) * mib / (LARGE - CHUNK),
            "peaks_mb": [small["peak_kib"] * mib, chunked["peak_kib"] * mib, whole["peak_kib"] * mib],
            "seconds_per_path_step": whole["seconds"] / LARGE / (1 if kind == "lambda_max" else 2)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["conv", "attention"])
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    ap.add_argument("--kinds", nargs="+", default=["run", "sde1", "sde2", "lambda_max"])
    ap.add_argument("--n", type=int, default=64, help="samples in the data set")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = []
    print("| net | d | dtype | run | stored state, MB/path | chunk working memory, MB/path | s per path-step |")
    print("|---|---|---|---|---|---|---|")
    for net in args.nets:
        for dtype in args.dtypes:
            for kind in args.kinds:
                r = case(net, kind, dtype, args.n)
                rows.append(r)
                print(f"| {net} | {r['d']:,} | {dtype} | {kind} | {r['state_mb_per_path']:.2f} | "
                      f"{r['working_mb_per_path']:.2f} | {r['seconds_per_path_step']:.3f} |", flush=True)
                if args.out:
                    with open(args.out, "w") as f:
                        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
