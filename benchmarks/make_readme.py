"""Write benchmarks/README.md and benchmarks/sde_vs_torchsde.png from results/sde.json (and, when present,
results/discrete.json written by bench_discrete.py). Run by bench_sde.py; can be rerun alone:

    python benchmarks/make_readme.py
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMPL_ORDER = ["ss.simulate", "bound", "torchsde default", "torchsde fastest", "torchsde + step BM"]

BM_NAMES = {
    "interval": "BrownianInterval (defaults)",
    "interval_dt": "BrownianInterval(dt=dt)",
    "interval_nocache": "BrownianInterval(cache_size=None)",
    "interval_dt_nocache": "BrownianInterval(dt=dt, cache_size=None)",
    "path": "BrownianPath (t1 <= t0 + 1 only)",
    "tree": "BrownianTree (tol 1e-6)",
    "step": "minimal step BM (ours, not torchsde's)",
    "-": "-",
}
CLS_NAMES = {"general": "`ss.sde_model` object (general noise)", "additive": "`AdditiveOU` (additive, GEMM g_prod)",
             "ss.simulate": "**ss.simulate**"}


def fmt(v: float) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def grid_cells(grid: list[dict]) -> dict:
    cells: dict = {}
    for r in grid:
        cells.setdefault((r["d"], r["n"]), {})[r["impl"]] = r
    return cells


def figure(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(res["grid"])
    df["path-steps / s"] = df["n"] / (df["ms_per_step"] / 1e3)
    sns.set_theme(style="whitegrid", context="notebook")
    g = sns.relplot(data=df, x="n", y="ms_per_step", hue="impl", hue_order=[i for i in IMPL_ORDER if i in set(df.impl)],
                    style="impl", style_order=[i for i in IMPL_ORDER if i in set(df.impl)], col="d", kind="line",
                    markers=True, dashes=False, height=3.6, aspect=1.0, facet_kws={"sharey": False})
    g.set(xscale="log", yscale="log")
    g.set_axis_labels("paths (batch)", "wall time per Euler step [ms]")
    g.set_titles("USAM SDE on a quadratic, d = {col_name}")
    g._legend.set_title("")
    m = res["machine"]
    g.figure.suptitle(f"ss.simulate vs torchsde.sdeint (euler, same SDE, same dt), float32, "
                      f"{m['threads']} threads on {m['cpu']}; lower is better", y=1.04, fontsize=11)
    g.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(g.figure)


def nonlinear_lines(path: Path) -> list[str]:
    """The section of bench_nonlinear.py (one SDE solver step vs one discrete step), if it was run."""
    if not path.exists():
        return []
    res = json.loads(path.read_text())
    m = res["machine"]
    L = ["## Nonlinear SDE models: one solver step vs one discrete step (bench_nonlinear.py)\n",
         f"`python benchmarks/bench_nonlinear.py` ({res['wall_s']:.0f} s; torch single-threaded on a "
         f"{m['cores']}-core machine shared with other jobs, load average {m['load_average'][0]:.1f} at the start and "
         f"{m['load_average_end'][0]:.1f} at the end; every configuration timed in the same rounds, interleaved, best "
         f"of {res['results'][0]['rounds']}). SAM, lr = {res['config']['lr']}, rho = {res['config']['rho']}, "
         f"dt = {res['config']['dt']}. **new**: `expectation=\"auto\"`, the two-draw weak scheme of MATH §4.1 "
         "(two draws and one scalar per path-step: the mean and covariance of the Euler–Maruyama step of the "
         "model, exactly for orders <= 1); **previous**: the former default (exact enumeration of the samples "
         "for the B = 1 teacher-student problem; K = 32 sampled mini-batches for the MLP, whose order-0 model "
         "enumerates its per-sample gradients). Targets of issue 12: <= 3x a discrete step for order 0 and "
         "exact, <= 5x for order 1, <= 8x for order 2.\n"]
    for r in res["results"]:
        L.append(f"**{r['problem']}** (d = {r['d']}, n = {r['n_samples']}, batch {r['batch_size']}, {r['dtype']}, "
                 f"{r['n_paths']:,} paths): one discrete SAM step **{fmt(r['discrete_ms_per_step'])} ms**.\n")
        rows = []
        for row in r["rows"]:
            ok = "" if row["target"] is None else (" (ok)" if row["relative_to_discrete"] <= row["target"] else " (MISSED)")
            rows.append([row["order"], row["default"], row["mode"] + (f", K={row['K']}" if row["K"] else ""),
                         fmt(row["ms_per_step"]), f"**{row['relative_to_discrete']:.1f}x**" + ok,
                         "-" if row["target"] is None else f"<= {row['target']:g}x"])
        L.append(table(["SDE order", "default", "expectation", "ms / step", "x discrete step", "target"], rows))
        L.append("")
    L.append("A discrete SAM step evaluates two mini-batch gradients per path; a two-draw step evaluates the "
             "model's effective gradient for two draws per path: order 0 two gradients, order 1 a gradient and "
             "a `jvp` (gradient + HVP) each, order 2 a nested `jvp`, exact two gradients each. The ratios are "
             "therefore set by the autodiff cost of one effective gradient, not by n, B or K.\n")
    return L


def module_lines(path: Path) -> list[str]:
    """The section of bench_module.py (results/module.json, else module_quick.json), if it has been run."""
    if not path.exists():
        quick = path.with_name("module_quick.json")
        if not quick.exists():
            return []
        path = quick
    res = json.loads(path.read_text())
    m = res["machine"]
    L = ["## Module problems: ss.run and the order-1 SDE vs the per-path nn.Module loop (bench_module.py)\n"]
    L.append(f"`python benchmarks/bench_module.py{' --quick' if 'quick' in path.name else ''}` "
             f"({m['cpu_threads']} threads; load average {m['load_average_start'][0]:.1f} at the start, "
             f"{m['load_average_end'][0]:.1f} at the end: the machine was shared with other jobs, so absolute "
             "times are inflated and only the ratios, measured in the same process, are meaningful). SAM, lr = "
             "rho = 0.05, B = 32, all 1,797 digits. ms per step (best of repeats): `loop` one nn.Module per path "
             "with SAM's two forward/backward passes written as davda54/sam does; `run` ss.run's steps alone; "
             "`record` one full-batch loss over all paths; `r` the interval `record_every=\"auto\"` chooses; "
             "`default` = run + record / r (a default ss.run, per step); `share` = record / r / run (cost model "
             "target <= 10%); `SDE 1` the order-1 SDE step (two-draw scheme) at dt = lr/2; `per unit time` = "
             "2 SDE steps / 1 run step.\n")
    rows = [[r["model"], f"{r['d']:,}", r["paths"], r["dtype"], fmt(r["loop_ms"]), fmt(r["run_steps_ms"]),
             fmt(r["record_ms"]), r["auto_every"], fmt(r["run_default_ms"]), f"**{r['run_vs_loop']:.2f}x**",
             f"{r['record_share']:.1%}", fmt(r["sde1_step_ms"]), f"**{r['sde1_per_time_vs_run']:.1f}x**"]
            for r in res["rows"]]
    L.append(table(["model", "d", "paths", "dtype", "loop", "run", "record", "r", "default", "default / loop",
                    "share", "SDE 1", "SDE 1 / run per unit time"], rows))
    L.append("")
    if "memory" in res:
        L.append("Memory per path (peak RSS of a child process with 64 paths minus one with 8, over 56; float32):\n")
        L.append(table(["model", "loop KiB/path", "run KiB/path", "SDE 1 KiB/path"],
                       [[k, f"{v['loop_kib_per_path']:.0f}", f"{v['run_kib_per_path']:.0f}",
                         f"{v['sde1_kib_per_path']:.0f}"] for k, v in res["memory"].items()]))
        L.append("")
    if "two_point" in res:
        tp = res["two_point"]
        L.append(f"**Two-point increments** (`increments=\"two_point\"`, signs from random 64-bit words, 64 per word): "
                 f"the linear USAM SDE at d = 20, 10^4 paths, float32, one thread: Gaussian {fmt(tp['gaussian_ms'])} "
                 f"ms/step, two-point {fmt(tp['two_point_ms'])} ms/step, **{tp['speedup']:.2f}x** (target >= 1.5x).\n")
    return L


GPU_COMMAND = "timeout 600 sh -c 'python -m pytest -q -rs tests/test_cuda.py; python benchmarks/bench_gpu.py'"


def gpu_lines(path: Path) -> list[str]:
    """The section of bench_gpu.py, or a note that it has not been run on a GPU yet."""
    L = ["## GPU throughput (bench_gpu.py)\n"]
    L.append("One command, on one CUDA GPU, runs the CUDA tests (module problems included) and the GPU benchmark "
             "(under 10 minutes) and prints the tables (copy them into this README by hand; regenerating it drops hand-written sections):\n")
    L.append(f"```\n{GPU_COMMAND}\n```\n")
    L.append("Without CUDA both exit cleanly (the tests skip, the benchmark says so and exits 0).\n")
    if not path.exists():
        L.append("`python benchmarks/bench_gpu.py` measures the module benchmark (conv net d = 2,210 and the 19k "
                 "MLP, 64 to 4,096 paths: ss.run, the order-1 SDE and the per-path loop), path-steps/s of the linear "
                 "USAM SDE at d = 20 and 10^6 paths and of the order-1 SAM SDE (two-draw scheme) on the 67-parameter "
                 "MLP, beside discrete SAM, and writes `results/gpu.json`. Not measured yet: no GPU was available to "
                 "the sessions that wrote it.\n")
        return L
    res = json.loads(path.read_text())
    L.append(f"`python benchmarks/bench_gpu.py` on {res['device']} (torch {res['torch']}, CUDA {res['cuda']}), "
             "best of 3 after a warm-up, observables at start and end only.\n")
    if res.get("module"):
        L.append("Module problems, float32, ms per step (the loop timed over at most 64 paths, scaled per path):\n")
        L.append(table(["model", "d", "paths", "loop", "run", "default", "default / loop", "SDE 1",
                        "SDE 1 / run per unit time"],
                       [[r["model"], f"{r['d']:,}", f"{r['paths']:,}", fmt(r["loop_ms"]), fmt(r["run_steps_ms"]),
                         fmt(r["run_default_ms"]), f"{r['run_vs_loop']:.3f}x", fmt(r["sde1_step_ms"]),
                         f"{r['sde1_per_time_vs_run']:.1f}x"] for r in res["module"]]))
        L.append("")
    rows = [[r["case"], f"{r['n_paths']:,}", r["steps"], fmt(r["seconds"]), f"{r['path_steps_per_s']:.3g}"]
            for r in res["rows"]]
    if rows:
        L.append(table(["case", "paths", "steps", "s", "path-steps / s"], rows))
        L.append("")
    return L


def main(sde_json: Path = HERE / "results" / "sde.json", discrete_json: Path = HERE / "results" / "discrete.json",
         out: Path = HERE / "README.md", fig: Path = HERE / "sde_vs_torchsde.png") -> None:
    res = json.loads(Path(sde_json).read_text())
    m = res["machine"]
    L = []
    L.append("# Benchmarks\n")
    L.append("Throughput of `ss.simulate` (batched Euler–Maruyama) against `torchsde.sdeint` on the same SDE, the raw "
             "cost of a step's tensor work, scaling with paths and dimension, memory, float32 vs float64, and the "
             "cost of the order-1/order-2 SDE steps on an MLP. Ratios measured in one run on one machine are the "
             "point; absolute CPU timings are not (DESIGN.md, \"Performance model\").\n")
    L.append("## Machine and command\n")
    mem = f"{m['memory_gb']:.0f} GB RAM, " if m.get("memory_gb") else ""
    L.append(f"- CPU: **{m['cpu']}** ({m['isa']}), {m['cores']} cores, {mem}`torch.set_num_threads({m['threads']})`")
    L.append(f"- torch {m['torch']}, torchsde {m['torchsde']}, Python {m['python']}, {m['platform']}")
    la0, la1 = m.get("load_average_start"), m.get("load_average_end")
    if la0:
        L.append(f"- load average at start / end: {la0[0]:.1f} / {la1[0] if la1 else float('nan'):.1f}. The machine "
                 "is shared: every timing is the **best** of several repeats after a warm-up (the estimate least "
                 "disturbed by other processes); medians are in the JSON.")
    L.append(f"- reproduce: `{res['command']}` (whole run {res.get('wall_seconds', 0):.0f} s; `--quick` for a smoke "
             "run; `--sections grid,mlp` to rerun a subset). Raw numbers: `benchmarks/results/sde.json`.")
    c = res["config"]
    L.append(f"- problem: {c['problem']}; lr={c['lr']}, rho={c['rho']}, dt = 1/256, x0 = 1, float32. The SDE is "
             "dX = -A X dt + F dW with A = H(I + rho H), F = sqrt(lr)(I + rho H) Sigma^(1/2).\n")

    if "sweep" in res:
        sw = res["sweep"]
        native = next(r for r in sw["rows"] if r["cls"] == "ss.simulate")
        L.append("## torchsde configurations (d = 20, 10^4 paths)\n")
        L.append("All run `torchsde.sdeint(..., method=\"euler\", dt=dt)` with `ts = [0, t1]`. `AdditiveOU` is a "
                 "hand-written torchsde SDE class for the same process with `noise_type=\"additive\"`, drift `y @ -A^T` "
                 "and `g_prod`/`f_and_g_prod` as one GEMM each (torchsde's own `g_prod` for the general-noise "
                 "object is a batched mat-vec over an expanded `(n, d, m)` tensor). Every configuration's final "
                 "state is checked against the exact Euler–Maruyama mean and covariance (max |z| over 4 "
                 "statistics, must be < 4).\n")
        rows = []
        for r in sorted(sw["rows"], key=lambda r: r["ms_per_step"]):
            rows.append([CLS_NAMES.get(r["cls"], r["cls"]), BM_NAMES[r["bm"]], fmt(r["ms_per_step"]),
                         fmt(r["ms_per_step"] / native["ms_per_step"]),
                         f"{r['check']['max_abs_z']:.2f} {'ok' if r['check']['ok'] else 'FAIL'}"])
        L.append(table(["SDE class", "Brownian motion", "ms / step", "x ss.simulate", "max abs z"], rows))
        if sw.get("run_length"):
            L.append("\nPer-step cost vs run length (same cell, ms per step):\n")
            rl = sw["run_length"]
            L.append(table(["steps", "ss.simulate", "torchsde default", "torchsde fastest", "default / ss.simulate"],
                           [[r["steps"], fmt(r["ss.simulate"]), fmt(r["torchsde default"]), fmt(r["torchsde fastest"]),
                             f"{r['torchsde default'] / r['ss.simulate']:.1f}x"] for r in rl]))
            L.append("\ntorchsde's default `BrownianInterval` (no `dt` hint) costs more per step in longer runs; "
                     "ss.simulate amortises its start-up (worker threads, the first noise buffer) over more steps. "
                     "Weak-error studies run hundreds to thousands of steps (t1 = 2 at dt = lr/10 = 0.005 is 400).")
        f = sw["fastest"]
        used = next((r["config"] for r in res.get("grid", []) if r.get("config")), f)
        L.append(f"\nFastest torchsde-provided configuration here: {CLS_NAMES[f['cls']]} with {BM_NAMES[f['bm']]} "
                 f"(the `BrownianInterval` variants are within noise of one another); \"torchsde fastest\" "
                 f"below is {CLS_NAMES[used['cls']]} with {BM_NAMES[used['bm']]}. \"torchsde + step BM\" replaces the Brownian motion by a minimal "
                 "object drawing `sqrt(dt) N(0, I)` per query (valid only for fixed-step solvers that query each "
                 "interval once): what torchsde's solver loop costs without its Brownian-motion machinery.\n")

    if "grid" in res:
        cells = grid_cells(res["grid"])
        L.append("## ss.simulate vs torchsde, USAM SDE on quadratics (float32)\n")
        L.append("Wall time per Euler step in ms (best of repeats), all paths advanced together. `bound` is the "
                 "step's tensor work alone in a tight loop: `xi = randn(n, d); x = addmm(xi @ Fs, x, M)`. "
                 "Speed-ups are torchsde time / ss.simulate time. `ok`: every implementation's moments agree with "
                 "the exact Euler–Maruyama moments within 4 SE.\n")
        rows = []
        for (d, n), cell in sorted(cells.items()):
            nat = cell["ss.simulate"]["ms_per_step"]
            get = lambda k: cell[k]["ms_per_step"] if k in cell else None
            ok = all(r["check"]["ok"] for r in cell.values())
            worst = max(r["check"]["max_abs_z"] for r in cell.values())
            rows.append([d, f"{n:.0e}".replace("+0", ""), fmt(nat), fmt(get("bound")), fmt(nat / get("bound")),
                         fmt(get("torchsde default")), fmt(get("torchsde fastest")), fmt(get("torchsde + step BM")),
                         f"**{fmt(get('torchsde default') / nat)}x**", f"**{fmt(get('torchsde fastest') / nat)}x**",
                         f"{fmt(get('torchsde + step BM') / nat)}x", f"{'ok' if ok else 'FAIL'} ({worst:.1f})"])
        L.append(table(["d", "paths", "ss.simulate", "bound", "sim / bound", "torchsde default", "torchsde fastest",
                        "torchsde + step BM", "vs default", "vs fastest", "vs step BM", "moments (max abs z)"], rows))
        steps = {(r["d"], r["n"], r["impl"]): r["steps"] for r in res["grid"]}
        few = sorted({(d, n, s) for (d, n, i), s in steps.items() if i == "torchsde default"
                      and s < steps[(d, n, "ss.simulate")]})
        if few:
            L.append("\nSteps timed: " + ", ".join(f"d={d}/n={n}: {steps[(d, n, 'ss.simulate')]}" for d, n in
                                                    sorted(cells)) + ". torchsde default was timed over fewer steps where one run would exceed a few seconds (its "
                     "per-step cost grows with the run length, so this favours torchsde): " + ", ".join(f"d={d}/n={n}: {s}" for d, n, s in few) + ".")
        L.append("\n![ss.simulate vs torchsde](sde_vs_torchsde.png)\n")

        # targets
        L.append("### Targets (2 cores, float32)\n")
        t = cells.get((20, 10_000), {})
        b = cells.get((200, 10_000), {})
        trows = []
        if t:
            nat = t["ss.simulate"]["ms_per_step"]
            r1 = t["torchsde default"]["ms_per_step"] / nat
            r2 = t["torchsde fastest"]["ms_per_step"] / nat
            r3 = t["torchsde + step BM"]["ms_per_step"] / nat
            trows.append(["d=20, 10^4 paths: >= 10x faster than torchsde default", f"{r1:.1f}x", "met" if r1 >= 10 else "NOT met"])
            trows.append(["d=20, 10^4 paths: >= 1.5x faster than torchsde fastest", f"{r2:.2f}x", "met" if r2 >= 1.5 else "NOT met"])
            trows.append(["(same, vs torchsde + minimal step BM)", f"{r3:.2f}x", "met" if r3 >= 1.5 else "not met"])
        if b:
            rb = b["ss.simulate"]["ms_per_step"] / b["bound"]["ms_per_step"]
            trows.append(["d=200, 10^4 paths: within 1.3x of the raw bound", f"{rb:.2f}x", "met" if rb <= 1.3 else "NOT met"])
        for n in (1_000, 100_000):
            if (200, n) in cells:
                rb = cells[(200, n)]["ss.simulate"]["ms_per_step"] / cells[(200, n)]["bound"]["ms_per_step"]
                trows.append([f"(d=200, {n:.0e} paths: ratio to bound)".replace("+0", ""), f"{rb:.2f}x", "met" if rb <= 1.3 else "not met"])
        L.append(table(["target", "measured", ""], trows))
        note = ("\n\"torchsde fastest\" is the fastest configuration built from torchsde's own Brownian motions "
                "(configuration table); the minimal step BM is our own object, listed to show torchsde's solver "
                "loop with its Brownian-motion cost removed: against it ss.simulate wins only what parallel random "
                "numbers and the fused step save. The 10x target against torchsde's default depends on the run "
                "length (table \"per-step cost vs run length\")")
        rl = {r["steps"]: r for r in res.get("sweep", {}).get("run_length", [])}
        if rl:
            note += ": " + ", ".join(f"{r['torchsde default'] / r['ss.simulate']:.1f}x over {s} steps"
                                     for s, r in sorted(rl.items()))
        note += (". At d = 20 and a fixed run length, ss.simulate's step is close to its floor on 2 cores: "
                 "it is dominated by Gaussian generation (see \"What makes ss.simulate fast\") and already runs "
                 "at about half the single-core CPU time of its random numbers plus GEMMs; only a faster "
                 "generator would lower it further. On a GPU the ratio is set by torchsde's per-step Python and "
                 "Brownian-tree overhead instead.\n")
        L.append(note)

    if "scaling" in res:
        L.append("## Scaling\n")
        if "grid" in res:
            cells = grid_cells(res["grid"])
            L.append("Throughput of ss.simulate in million path-steps per second (from the table above), vs paths:\n")
            ds = sorted({d for d, _ in cells})
            ns = sorted({n for _, n in cells})
            rows = [[d] + [fmt(n / cells[(d, n)]["ss.simulate"]["ms_per_step"] / 1e3) if (d, n) in cells else "-"
                           for n in ns] for d in ds]
            L.append(table(["d \\ paths"] + [f"{n:.0e}".replace("+0", "") for n in ns], rows))
            L.append("")
        sc = res["scaling"]
        by_d: dict = {}
        for r in sc:
            by_d.setdefault(r["d"], {})[r["impl"]] = r["ms_per_step"]
        L.append(f"Time per step vs d at {sc[0]['n']:.0e} paths ".replace("+0", "") +
                 "(`two_point`: ±1 increments, the simplified weak Euler scheme of MATH §4):\n")
        rows = []
        for d, v in sorted(by_d.items()):
            rows.append([d, fmt(v["ss.simulate"]), fmt(v["ss.simulate two_point"]), fmt(v["bound"]),
                         fmt(v.get("bound: randn only")), fmt(v.get("bound: GEMMs only")),
                         fmt(v["ss.simulate"] / v["bound"]), fmt(sc[0]["n"] / v["ss.simulate"] / 1e3)])
        L.append(table(["d", "ss.simulate ms", "two_point ms", "bound ms", "of which randn", "of which GEMMs",
                        "sim / bound", "M path-steps/s"], rows))
        L.append("\nThe bound's `randn` runs on one core (a CPU generator is serial), its GEMMs on both; "
                 "ss.simulate generates its 1024-path random streams on both cores, which is why it can beat the "
                 "bound where random numbers dominate (small d), and sits at the bound where GEMMs do (large d). "
                 "`two_point` is not cheaper: `torch.randint(0, 2, ...)` costs about as much per number as "
                 "`torch.randn` (one generator call per increment, int64 output, then a cast); drawing the signs "
                 "as packed random bits (one int64 per 64 increments) would make it several times cheaper, at the "
                 "price of different random numbers (the sampler is in `sde.py`).\n")

    if "dtype" in res:
        dt = res["dtype"]
        L.append("## float32 vs float64\n")
        by = {}
        for r in dt["rows"]:
            by.setdefault(r["d"], {})[r["dtype"]] = r
        rows = [[d, fmt(v["float32"]["ms_per_step"]), fmt(v["float64"]["ms_per_step"]),
                 f"{v['float64']['ms_per_step'] / v['float32']['ms_per_step']:.2f}x",
                 "ok" if v["float32"]["check"]["ok"] and v["float64"]["check"]["ok"] else "FAIL"]
                for d, v in sorted(by.items())]
        L.append(table(["d (10^4 paths)", "float32 ms/step", "float64 ms/step", "float64 / float32", "moments"], rows))
        ro = dt["rounding"]
        L.append(f"\nAccuracy: the same float64 increments fed to a float32 and a float64 Euler–Maruyama loop "
                 f"(d={ro['d']}, {ro['steps']} steps, t1={ro['t1']:g}) differ by at most "
                 f"{ro['max_rel_state_error']:.1e} in relative state norm; the mean loss differs by "
                 f"{ro['mean_loss_rel_diff']:.1e} (relative), against a Monte-Carlo standard error of "
                 f"{ro['mean_loss_mc_rel_se_1e5']:.1e} even at 10^5 paths. float32 rounding is therefore far "
                 "below the statistical error of any weak-error study the toolkit can run; use float64 for "
                 "bit-level tests and for exact-moment (no Monte-Carlo) comparisons, float32 for throughput.\n")

    if "mlp" in res:
        ml = res["mlp"]
        L.append(f"## SAM SDE steps on an MLP (d = {ml['d']:,})\n")
        L.append(f"`ss.problems.mlp(d_in=32, hidden=256, classes=10)`, batch size {ml['batch_size']}, "
                 f"{ml['n_samples']} samples, SAM rho={ml['rho']}, **{ml['n_paths']} paths** (scaled down from "
                 "the 10^3+ of the quadratic runs: an order-2 step for 64 paths takes about a second on 2 cores), "
                 "each SDE step timed over a short run after a warm-up. "
                 f"One discrete SAM step (`sde_sam.discrete.step`, {ml['n_paths']} paths): "
                 f"**{fmt(ml['discrete_ms_per_step'])} ms**.\n")
        rows = [[r["order"], r["mode"], r["n_draws"], fmt(r["ms_per_step"]), f"**{r['relative_to_discrete']:.0f}x**"]
                for r in ml["rows"]]
        L.append(table(["SDE order", "expectation", "draws K per step", "ms / step", "x discrete step"], rows))
        L.append("\nThe model step costs what its mathematics asks for: with mini-batches of 8 the expectation over "
                 "draws has no closed form, so each step evaluates K = 32 sampled mini-batch effective gradients "
                 "per path (order 1: gradient + one HVP by `jvp`; order 2: a nested `jvp` for the third-derivative "
                 "term), against 2 mini-batch gradients for a discrete SAM step: counting a HVP as about 2 "
                 "gradients, order 1 is about 32 x 3 / 2 = 48 discrete steps, order 2 (a nested jvp, about 7 "
                 "gradients per draw) about 110. Solver overhead is negligible here; fewer draws "
                 "(`sde_model(..., expectation=K)`) trade cost for noise in the drift and diffusion estimates. "
                 "These rows were measured with that previous default; the default is now the two-draw weak "
                 "scheme (next section), two effective gradients per path-step whatever K or the batch size.\n")

    L += nonlinear_lines(HERE / "results" / "nonlinear.json")
    L += module_lines(HERE / "results" / "module.json")
    L += gpu_lines(HERE / "results" / "gpu.json")

    if res.get("engine"):
        en = res["engine"]
        L.append("## Before / after the engine changes\n")
        L.append(f"The same calls with `sde_sam` at `{en['baseline']}` (before the performance changes in "
                 "`_engine.py`/`solvers.py`) and at this checkout, in alternating subprocesses (best of 2 rounds); "
                 "random numbers and results are bit-for-bit identical between the two. ms per step:\n")
        rows = [[k, fmt(en["before"][k]), fmt(en["after"][k]), f"**{en['before'][k] / en['after'][k]:.2f}x**"]
                for k in en["after"]]
        L.append(table(["call (float32, record at start and end unless said)", "before", "after", "speed-up"], rows))
        L.append("")

    if "memory" in res:
        L.append("## Peak memory\n")
        L.append("Increase of the peak resident set size during one run, each case in a fresh subprocess, "
                 "measured from the level after a small warm-up run of the same code (so libraries and thread "
                 "pools are excluded). The peak is `VmHWM` from `/proc/self/status`, reset after the warm-up "
                 "(`clear_refs`); that is `getrusage(RUSAGE_SELF).ru_maxrss` of a fresh process, which cannot be "
                 "used directly because Linux carries `ru_maxrss` over fork + exec from the (large) parent. "
                 "`estimate` is from tensor sizes (float32): for ss.simulate the pre-generated noise block (block "
                 "steps x paths x d) plus a few (paths, d) states; for torchsde the Brownian increments its "
                 "BrownianInterval keeps (all of them without a cache limit, at most 45 by default) plus states.\n")
        rows = [[r["impl"], r["d"], f"{r['n']:,}", r["steps"], fmt(r["peak_delta_mb"]),
                 fmt(r["estimate_mb"]) if r.get("estimate_mb") is not None else "-"] for r in res["memory"]]
        L.append(table(["run", "d", "paths", "steps", "peak RSS delta MB", "estimate (lower bound) MB"], rows))
        L.append("\nss.simulate pre-generates the noise of up to 64 steps at once (about 4M numbers per 1024-path "
                 "random stream, fixed by the size of one draw so that results never depend on chunking); at "
                 "10^5 paths this block dominates memory. `chunk_size=` bounds it without changing results.\n")

    dj = Path(discrete_json)
    if dj.exists():
        dres = json.loads(dj.read_text())
        L.append("## Discrete runs: ss.run vs a one-path-at-a-time loop (from bench_discrete.py)\n")
        cfg = dres.get("config", {})
        la = cfg.get("load_average", [float("nan")])[0]
        L.append(f"Written by `benchmarks/bench_discrete.py` (`python benchmarks/bench_discrete.py`; its own run, "
                 f"threads={cfg.get('threads')}, load average {la:.1f}; its file predates the engine changes above, "
                 "which make `ss.run` about 2x faster), copied here from `results/discrete.json`.\n")
        rows = [[r["problem"], r["d"], r["method"], r["steps"], f"{r['batched_paths']:,}",
                 f"{r['batched_path_steps_per_s']:.3g}", r["loop_paths"], f"{r['loop_path_steps_per_s']:.3g}",
                 f"**{r['speedup']:.0f}x**"] for r in dres.get("results", [])]
        L.append(table(["problem", "d", "method", "steps", "batched paths", "path-steps/s", "loop paths",
                        "loop path-steps/s", "speed-up"], rows))
        L.append("")

    L.append("## What makes ss.simulate fast\n")
    L.append("- **Linear models take a fused path** (`solvers.EulerMaruyama.step`): for an Ornstein–Uhlenbeck "
             "model (SGD/USAM on a quadratic) a step is `addmm(zeta @ (sqrt(dt) F^T), x, I - dt A^T)`: one GEMM "
             "plus one GEMM-accumulate, no drift or diffusion evaluation, no `(n, d, m)` tensor.")
    L.append("- **Random numbers on every core** (`_engine`): the noise of a block of steps is pre-generated per "
             "1024-path random stream; the streams are generated in parallel on a pool of single-threaded "
             "workers (a CPU generator is serial, so one `randn` uses one core; single-threaded so that workers "
             "do not start OpenMP teams whose spinning slows the main thread's GEMMs) and copied into one buffer "
             "reused from block to block (no `torch.cat` along the path axis, no page faults of a fresh "
             "50-500 MB buffer per block). Every stream makes exactly the calls it made before: the numbers, "
             "hence all results, are bit-for-bit those of the previous engine and still independent of "
             "`chunk_size`.")
    L.append("- **Nothing per step that the step does not need**: SDE steps have no norm guard, so no per-step "
             "mask and reduction; the divergence check at a recording is one row sum (exact `isfinite` only on "
             "flagged rows, instead of `isfinite(x).all(-1)`, which cost more than the GEMMs of a step); the norm "
             "test is skipped when `max_norm` is infinite; a block's draws are split once (`unbind`).")
    L.append("- torchsde spends its time in the Brownian motion (a Brownian-bridge interval tree queried per "
             "step), in the general-noise `g_prod` (a batched mat-vec over an expanded `(n, d, m)` tensor, "
             "which is what makes its default 10-20x slower at d = 200), and in Python per step.")
    L.append("- What is left at small d is the random-number generator itself: `torch.randn` on CPU draws "
             "about 3.4 ns per number on one core (mt19937 + Box–Muller), i.e. 0.68 ms of CPU per step at "
             "d = 20 and 10^4 paths, out of about 1.3 ms of CPU that a whole ss.simulate step uses; on 2 cores "
             "no schedule of the same numbers can go below about half the total. A faster generator would "
             "change the random numbers, i.e. every seeded result (the samplers live in `sde.py`).\n")
    out.write_text("\n".join(L) + "\n")
    if "grid" in res:
        figure(res, fig)
    print(f"wrote {out}" + (f" and {fig}" if "grid" in res else ""))


if __name__ == "__main__":
    main()
