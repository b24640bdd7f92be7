"""The pilot's cost estimate of a weak-error study against the study's measured time (issue 21, item 5).

Three studies of 30-90 s on 2 CPU cores, each run by ``ss.weak_error`` with its pilot (the default): the
estimate is the sum of the cells' ``estimated_seconds``, the measurement the sum of the cells' measured
``seconds`` (both serial, in this process); the pilot's own time is read from the estimate it returns; a first
``estimate_cost`` call (cold: it includes what the first use of a problem costs in a process — imports,
first allocations — which the study's first cell would otherwise pay) is timed too.
Done when: every ratio estimate / measured lies in [0.5, 2].

Run: ``nice python benchmarks/bench_pilot.py`` (about 4 minutes on 2 shared cores); ``--quick`` for a
smoke run at a tenth of the paths (ratios then mean little).
"""
from __future__ import annotations

import argparse
import os

import torch

import sde_sam as ss
from sde_sam.weak import pilot


def cases(scale: float) -> list[tuple[str, object, object, torch.Tensor, dict]]:
    quad = ss.Quadratic(torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)), noise_cov=1.0)
    ts = ss.problems.teacher_student(64, 4, 3, batch_size=1)
    mlp = ss.problems.digits_mlp(64, hidden=8, batch_size=8)  # a module problem (FiniteSum.from_module), d = 610
    n = lambda k: max(8, int(k * scale))  # noqa: E731
    return [
        ("quadratic d=2, SAM, Monte Carlo", quad, ss.SAM(0.1, rho=0.1), torch.ones(2, dtype=torch.float64),
         dict(lrs=[0.1, 0.05, 0.025], horizon=1.0, n_paths=n(20_000), sde_order=[1], mode="monte_carlo")),
        ("teacher-student d=15, SAM", ts, ss.SAM(0.1, rho=0.05), ts.x_init,
         dict(lrs=[0.1, 0.05], horizon=1.0, n_paths=n(8_000), sde_order=[1])),
        ("digits MLP d=610 (module), SAM", mlp, ss.SAM(0.1, rho=0.05), mlp.x_init,
         dict(lrs=[0.1, 0.05], horizon=1.0, n_paths=n(384), sde_order=[1])),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the paths (smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
    print("| study | paths | cells | pilot s, cold / in the study | estimate s | measured s | estimate / measured |")
    print("|---|---|---|---|---|---|---|")
    estimates = []
    own = pilot.estimate_cells

    def keep(*a, **k):  # the study's own estimate, to read the pilot's time
        estimates.append(own(*a, **k))
        return estimates[-1]

    pilot.estimate_cells = keep
    for name, prob, method, x0, kw in cases(0.1 if args.quick else 1.0):
        cold = ss.weak.estimate_cost(prob, method, x0=x0, **kw).pilot_seconds  # incl. first use in this process
        study = ss.weak_error(prob, method, x0=x0, progress=False, **kw)
        est, meas = float(study.cells["estimated_seconds"].sum()), float(study.cells["seconds"].sum())
        assert abs(est - estimates[-1].seconds) < 1e-9 * est
        print(f"| {name} | {kw['n_paths']:,} | {len(study.cells)} | {cold:.1f} / {estimates[-1].pilot_seconds:.1f} | {est:.1f} | {meas:.1f} | "
              f"**{est / meas:.2f}** |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
