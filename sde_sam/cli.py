"""The ``sde-sam`` command: one subcommand per study.

Each subcommand is registered by a function ``add(subparsers)`` in :data:`COMMANDS` that builds its parser
and sets ``handler`` (``args -> exit code``); adding a study means writing one such function.

Example:
    $ sde-sam weak-error --problem quadratic --method usam --lrs 0.05,0.025,0.0125 --rho 0.5 --rho-power 0.5
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

PROBLEMS = ("quadratic", "saddle", "linear_regression", "teacher_student")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _orders(text: str) -> list:
    out = []
    for v in text.split(","):
        v = v.strip()
        if v not in ("0", "1", "2", "exact"):
            raise argparse.ArgumentTypeError(f"orders must be among 0, 1, 2, exact; got {v!r}")
        out.append(v if v == "exact" else int(v))
    return out


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


# -- weak-error ---------------------------------------------------------------------------------------------
def _problem(args) -> tuple:
    """The problem and its start ``x0`` (built-in demo sizes: small enough for 20,000 paths on a CPU)."""
    from . import problems

    dtype = torch.float64
    if args.problem == "quadratic":
        prob = problems.Quadratic(torch.diag(torch.tensor([1.0, 4.0], dtype=dtype)), noise_cov=args.noise)
        return prob, torch.full((2,), 0.5, dtype=dtype)
    if args.problem == "saddle":
        return problems.saddle((1.0, -1.0), noise_cov=args.noise), torch.tensor([1.0, 0.1], dtype=dtype)
    if args.problem == "linear_regression":
        prob = problems.linear_regression(n=32, d=4, seed=args.seed)
    else:
        prob = problems.teacher_student(n=16, d_in=2, width=2, seed=args.seed)
    return prob, prob.x_init


def _method(args):
    from .methods import METHODS, SGD, EigenSAM, UnifiedSAM

    cls = METHODS[args.method]
    if cls is SGD:
        return cls(args.lrs[0]), None
    kwargs = {"lam": args.lam} if cls is UnifiedSAM else {"alpha": args.alpha} if cls is EigenSAM else {}
    c, p = args.rho, args.rho_power
    rho = c if p == 0 else (lambda lr: c * lr**p)
    return cls(args.lrs[0], rho=c * args.lrs[0] ** p, **kwargs), rho


def _add_weak_error(sub) -> None:
    from .methods import METHODS

    p = sub.add_parser(
        "weak-error", help="weak error of a method against its SDE models, with the fitted order",
        description="Run a weak-error study (MATH §5): max-over-time gap between the discrete method and "
                    "each SDE model for every lr, the fitted order with a 95%% CI, a log-log figure and the "
                    "data. The defaults are a demo: USAM on f = ½xᵀdiag(1, 4)x with Σ = I, rho = 0.5·√lr, "
                    "orders 0 and 1 (expect slopes 1/2 and 1), x0 = (½, ½), horizon ½.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--problem", choices=PROBLEMS, default="quadratic",
                   help="quadratic: diag(1, 4), x0 = (1/2, 1/2); saddle: diag(1, -1); linear_regression: n=32, d=4; "
                        "teacher_student: n=16, d_in=2, width=2 (mini-batch size 1)")
    p.add_argument("--method", choices=sorted(METHODS), default="usam")
    p.add_argument("--lrs", type=_floats, default=[0.1, 0.05, 0.025, 0.0125], help="comma-separated")
    p.add_argument("--rho", type=float, default=0.5, help="rho = RHO * lr**RHO_POWER")
    p.add_argument("--rho-power", type=float, default=0.5, help="0 for a fixed rho")
    p.add_argument("--lam", type=float, default=0.5, help="Unified SAM's lambda")
    p.add_argument("--alpha", type=float, default=0.2, help="Eigen-SAM's alpha")
    p.add_argument("--noise", type=float, default=1.0, help="noise covariance sigma² (quadratic, saddle)")
    p.add_argument("--horizon", type=float, default=0.5, help="time horizon T (SDE time t = k·lr)")
    p.add_argument("--paths", type=int, default=20_000, help="paths per simulation (Monte Carlo)")
    p.add_argument("--orders", type=_orders, default=[0, 1], help="SDE model orders among 0, 1, 2, exact")
    p.add_argument("--test-functions", type=_names, default=None,
                   help="comma-separated, default loss,x_norm_sq,grad_norm_plus_x_norm")
    p.add_argument("--mode", choices=("monte_carlo", "auto", "exact"), default="monte_carlo",
                   help="auto picks exact moments for SGD/USAM on a quadratic")
    p.add_argument("--dt-ratio", type=int, default=10, help="lr / dt of the SDE solver")
    p.add_argument("--record-every", type=int, default=None, help="discrete steps between compared times")
    p.add_argument("--no-solver-check", action="store_true", help="skip the dt/2 re-run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/weak_error"),
                   help="output folder (cells are saved as they finish; a rerun resumes)")
    p.set_defaults(handler=_run_weak_error)


def _run_weak_error(args) -> int:
    from .weak_error import weak_error

    t0 = time.perf_counter()
    problem, x0 = _problem(args)
    method, rho = _method(args)
    study = weak_error(problem, method, lrs=args.lrs, horizon=args.horizon, x0=x0, n_paths=args.paths,
                       seed=args.seed, test_functions=args.test_functions, sde_order=args.orders, rho=rho,
                       dt_ratio=args.dt_ratio, mode=args.mode, record_every=args.record_every,
                       solver_check=not args.no_solver_check, results_dir=args.out, progress=None)
    summary = study.summary()
    figure = args.out / "weak_error.png"
    study.plot().savefig(figure, dpi=150)
    (args.out / "summary.txt").write_text(summary + "\n")
    print(summary)
    print(f"\nwrote {figure}, {args.out / 'table.csv'}, {args.out / 'config.json'} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


# -- the command --------------------------------------------------------------------------------------------
def _add_reproduce(sub) -> None:
    from . import reproduce  # the experiment scripts live in the checkout (experiments/, paper_figs/)

    reproduce.add_parser(sub).set_defaults(handler=reproduce.run)


COMMANDS: list[Callable] = [_add_weak_error, _add_reproduce]
"""Subcommand registrars ``add(subparsers)``; each sets ``handler`` on its parser."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sde-sam", description="SDE models of SAM: studies from the command line.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is fastest for small d on a busy machine)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sde-sam`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
