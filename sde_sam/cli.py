"""The ``sde-sam`` command (also ``python -m sde_sam``): one subcommand per study.

Each subcommand is registered by a function ``add(subparsers)`` in :data:`COMMANDS` that builds its parser
and sets ``handler`` (``args -> exit code``); adding a study means writing one such function. Wrong input
ends the command with a one-line message and exit status 2, as argparse does for its own errors: argument
types check values as typed, and a handler raises :class:`UsageError` for what only the run can detect.

Example:
    $ sde-sam weak-error --problem quadratic --method usam --lrs 0.05,0.025,0.0125 --rho 0.5 --rho-power 0.5
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from ._io import atomic_write

PROBLEMS = ("quadratic", "saddle", "linear_regression", "teacher_student")


class UsageError(Exception):
    """Wrong input found while running a subcommand: printed as ``sde-sam <command>: error: ...``, exit 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` only where there is a value to show (not for ``None`` or flags)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def _entries(text: str) -> list[str]:
    """The comma-separated entries of ``text``, stripped; an empty entry (``0.1,,0.2``, a trailing comma) is
    refused rather than skipped: it is more likely a lost value than an intended one."""
    entries = [v.strip() for v in text.split(",")]
    if not all(entries):
        raise argparse.ArgumentTypeError(f"empty entry in the comma-separated list {text!r}")
    return entries


def _floats(text: str) -> list[float]:
    entries = _entries(text)
    try:
        return [float(v) for v in entries]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _lrs(text: str) -> list[float]:
    """Learning rates: comma-separated, finite, > 0, distinct, at least two (a slope needs two points)."""
    lrs = _floats(text)
    if not all(math.isfinite(v) and v > 0 for v in lrs):
        raise argparse.ArgumentTypeError(f"learning rates must be finite and > 0, got {text!r}")
    if len(set(lrs)) != len(lrs):
        raise argparse.ArgumentTypeError(f"learning rates must be distinct, got {text!r}")
    if len(lrs) < 2:
        raise argparse.ArgumentTypeError(f"need at least two learning rates to fit a weak order, got {text!r}")
    return lrs


def _number(minimum: float, *, strict: bool = False, integer: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number ``>= minimum`` (``> minimum`` if ``strict``), reported as typed."""
    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if integer else 'a number'}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g}, got {text}")
        return value
    return parse


def _orders(text: str) -> list:
    out = []
    for v in _entries(text):
        if v not in ("0", "1", "2", "exact"):
            raise argparse.ArgumentTypeError(f"orders must be among 0, 1, 2, exact; got {v!r}")
        out.append(v if v == "exact" else int(v))
    if len(set(map(str, out))) != len(out):
        raise argparse.ArgumentTypeError(f"orders must be distinct, got {text!r}")
    return out


def _names(text: str) -> list[str]:
    names = _entries(text)
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"names must be distinct, got {text!r}")
    return names


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


def _power_rho(c: float, p: float, lr: float) -> float:
    """``rho = c * lr**p``."""
    return c * lr**p


def _method(args):
    from .methods import METHODS, SGD, EigenSAM, UnifiedSAM

    cls = METHODS[args.method]
    lr = _lr_schedule(args.lr_schedule, args.lrs[0], args.horizon)
    options = {"momentum": args.momentum, "weight_decay": args.weight_decay}
    if cls is SGD:
        if args.micro_batch is not None:
            raise UsageError(f"argument --micro-batch: m-SAM is an option of a perturbing method, not of sgd, "
                             f"got --micro-batch {args.micro_batch}")
        return cls(lr, **options), None
    kwargs = {"lam": args.lam} if cls is UnifiedSAM else {"alpha": args.alpha} if cls is EigenSAM else {}
    if args.micro_batch is not None:
        kwargs["micro_batch"] = args.micro_batch
    c, p = args.rho, args.rho_power
    rho = c if p == 0 else functools.partial(_power_rho, c, p)  # a partial, not a lambda: it pickles
    return cls(lr, rho=c * args.lrs[0] ** p, **options, **kwargs), rho


LR_SCHEDULES = ("constant", "cosine", "linear_warmup")


def _lr_schedule(name: str, lr: float, horizon: float):
    """``--lr-schedule``: a shape on the SDE clock over the study's horizon (:mod:`sde_sam.schedules`)."""
    from . import schedules

    if name == "constant":
        return lr
    if name == "cosine":
        return schedules.cosine(lr, horizon=horizon)
    return schedules.linear_warmup(lr, horizon=horizon, warmup=0.2)


def _add_weak_error(sub) -> None:
    from .methods import METHODS

    p = sub.add_parser(
        "weak-error", help="weak error of a method against its SDE models, with the fitted weak order",
        description="Run a weak-error study (docs/math.md §5): the max-over-time gap between the discrete "
                    "method and each SDE model for every lr, the fitted weak order in the lr with a 95% CI, a log-log figure "
                    "and the data. The defaults are a demo: USAM on f = ½xᵀdiag(1, 4)x with Σ = I, "
                    "rho = 0.5·√lr, SDE orders 0 and 1 (expect slopes 1/2 and 1), x0 = (½, ½), horizon ½. "
                    "Like the Python API (ss.weak_error(mode='auto')), --mode auto uses exact moments where the "
                    "model is linear-Gaussian (SGD or USAM on the quadratic; --paths is then not used) and "
                    "Monte Carlo elsewhere; --mode monte_carlo forces simulation.",
        formatter_class=_HelpFormatter)
    p.add_argument("--problem", choices=PROBLEMS, default="quadratic",
                   help="quadratic: diag(1, 4), x0 = (1/2, 1/2); saddle: diag(1, -1), x0 = (1, 0.1); "
                        "linear_regression: n=32, d=4; teacher_student: n=16, d_in=2, width=2 "
                        "(mini-batch size 1)")
    p.add_argument("--method", choices=sorted(METHODS), default="usam", help="the discrete method")
    p.add_argument("--lrs", type=_lrs, default="0.1,0.05,0.025,0.0125",
                   help="learning rates, comma-separated (at least two)")
    p.add_argument("--rho", type=_number(0), default=0.5, help="rho = RHO * lr**RHO_POWER")
    p.add_argument("--rho-power", type=_number(0), default=0.5, help="0 for a fixed rho")
    p.add_argument("--lam", type=_number(0), default=0.5, help="Unified SAM's lambda, in [0, 1]")
    p.add_argument("--alpha", type=_number(0), default=0.2, help="Eigen-SAM's alpha")
    p.add_argument("--momentum", type=_number(0), default=0.0,
                   help="heavy-ball momentum beta in [0, 1), as torch.optim.SGD (MATH §2.1)")
    p.add_argument("--weight-decay", type=_number(0), default=0.0,
                   help="weight decay lambda in the base step, as torch.optim.SGD (MATH §2.3)")
    p.add_argument("--micro-batch", type=_number(1, integer=True), default=None,
                   help="m-SAM: one perturbation per micro-batch of this size (mini-batch problems; divides B)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="lr schedule on the SDE clock over --horizon (sde_sam.schedules; cosine: to 0, "
                        "linear_warmup: over the first 20%%)")
    p.add_argument("--noise", type=_number(0), default=1.0,
                   help="gradient-noise covariance sigma² (quadratic and saddle only)")
    p.add_argument("--horizon", type=_number(0, strict=True), default=0.5,
                   help="time horizon T on the SDE scale t = k·lr")
    p.add_argument("--paths", type=_number(4, integer=True), default=20_000,
                   help="paths per simulation (Monte-Carlo mode)")
    p.add_argument("--orders", type=_orders, default="0,1", help="SDE model orders among 0, 1, 2, exact")
    p.add_argument("--test-functions", type=_names, default=None,
                   help="comma-separated names (default: loss,x_norm_sq,grad_norm_plus_x_norm; exact mode: "
                        "loss,x_norm_sq)")
    p.add_argument("--mode", choices=("auto", "exact", "monte_carlo"), default="auto",
                   help="auto: exact moments for SGD/USAM on the quadratic, Monte Carlo otherwise")
    p.add_argument("--dt-ratio", type=_number(1, integer=True), default=10, help="lr / dt of the SDE solver")
    p.add_argument("--record-every", type=_number(1, integer=True), default=None,
                   help="discrete steps between compared times (default: every step in exact mode, "
                        "about 100 times per run in Monte Carlo)")
    p.add_argument("--no-solver-check", action="store_true", help="skip the re-run of every model at dt/2")
    if _weak_error_accepts("coupling"):
        p.add_argument("--coupling", action="store_true",
                       help="drive discrete runs and SDE paths from the same Gaussian draws (additive Gaussian "
                            "noise only: quadratic and saddle): smaller standard errors")
    p.add_argument("--seed", type=_number(0, integer=True), default=0,
                   help="random seed; every (lr, model) cell derives its own stream from it")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: results/weak_error/PROBLEM_METHOD); cells are saved as they "
                        "finish and a rerun with the same settings resumes")
    p.set_defaults(handler=_run_weak_error, parser=p)


def _weak_error_accepts(name: str) -> bool:
    """Whether :func:`sde_sam.weak_error` takes the keyword ``name`` (features that land later)."""
    import inspect

    from .weak import weak_error

    return name in inspect.signature(weak_error).parameters


#: The API's argument names (as its messages quote them, in backticks) -> the flags that set them.
_FLAGS = {"lrs": "--lrs", "horizon": "--horizon", "n_paths": "--paths", "dt_ratio": "--dt-ratio",
          "test_functions": "--test-functions", "sde_order": "--orders", "mode": "--mode", "coupling": "--coupling",
          "record_every": "--record-every", "seed": "--seed", "rho": "--rho", "results_dir": "--out"}
#: API messages that name no argument in backticks, by their start -> the flag they are about.
_MESSAGE_FLAGS = {"no test function left for exact mode": "--test-functions"}


def _flag_error(text: str) -> UsageError | None:
    """An input error of the API as a one-line :class:`UsageError` naming the flag (``None``: not an input error)."""
    text = " ".join(text.split())
    quoted = re.match(r"`([a-z_]+)", text)
    flag = _FLAGS.get(quoted.group(1)) if quoted else next(
        (f for start, f in _MESSAGE_FLAGS.items() if text.startswith(start)), None)
    if flag is None:
        return UsageError(text) if quoted else None  # an argument the CLI sets itself (e.g. `x0`): as the API says
    if flag == "--test-functions" and not quoted:
        text += " (pass --mode monte_carlo for the others)"
    return UsageError(f"argument {flag}: {text}")


def _study(weak_error, args, problem, x0, method, rho, out: Path, extra: dict):
    """Run the study; input errors the API reports become :class:`UsageError` naming the CLI's flags."""
    try:
        study = weak_error(problem, method, lrs=args.lrs, horizon=args.horizon, x0=x0, n_paths=args.paths,
                           seed=args.seed, test_functions=args.test_functions, sde_order=args.orders, rho=rho,
                           dt_ratio=args.dt_ratio, mode=args.mode, record_every=args.record_every,
                           solver_check=not args.no_solver_check, results_dir=out, progress=None, **extra)
    except ValueError as err:
        text = str(err)
        if text.startswith("`results_dir`"):  # the folder holds another study: name the flag the user sets
            raise UsageError(f"argument --out: {out} holds a study with other settings "
                             f"({text.partition('(')[2].partition(')')[0] or 'see config.json'}); "
                             f"pass another --out, or delete {out}") from None
        usage = _flag_error(text)
        if usage is None:
            raise
        raise usage from None
    return study


def _writable_folder(path: Path, flag: str) -> None:
    """Refuse, before any work, a ``path`` that is not a folder this process can create or write into."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"argument {flag}: {path} is a file, not a folder; pass a folder (it is created if missing)")
    parent = path
    while not parent.exists():  # the nearest existing folder above: where the missing ones would be created
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"argument {flag}: cannot create {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"argument {flag}: cannot write into {parent} (permission denied); pass another {flag}")


def _check_out(out: Path) -> None:
    """``--out`` is a writable folder, and the ``config.json`` of a study there (if any) is readable."""
    _writable_folder(out, "--out")
    config = out / "config.json"
    if not config.exists():
        return
    try:
        ok = isinstance(json.loads(config.read_text()), dict)
        why = "not a JSON object"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        ok, why = False, " ".join(str(err).split())
    if not ok:
        raise UsageError(f"argument --out: {config} is not a study's config ({why}); delete it (or {out}) "
                         f"or pass another --out")


def _run_weak_error(args) -> int:
    from .weak import weak_error

    if args.method == "unifiedsam" and args.lam > 1:
        raise UsageError(f"argument --lam: must be in [0, 1], got {args.lam:g}")
    out = args.out if args.out is not None else Path("results", "weak_error", f"{args.problem}_{args.method}")
    _check_out(out)
    t0 = time.perf_counter()
    problem, x0 = _problem(args)
    try:
        method, rho = _method(args)
    except ValueError as err:  # a hyper-parameter out of range: name the flag, as argparse does
        text = str(err)
        flag = next((f"--{name.replace('_', '-')}" for name in ("micro_batch", "momentum", "weight_decay", "lam",
                                                                 "alpha", "rho") if f"`{name}`" in text), "--method")
        raise UsageError(f"argument {flag}: {text}") from None
    extra = {"coupling": True} if getattr(args, "coupling", False) else {}
    with warnings.catch_warnings():
        if args.test_functions is None:  # the defaults per mode are in --help: no warning for dropping one
            warnings.filterwarnings("ignore", message="exact mode has closed forms only")
        study = _study(weak_error, args, problem, x0, method, rho, out, extra)
    summary = study.summary()
    figure = out / "weak_error.png"
    atomic_write(out / "summary.txt", summary + "\n")  # first: the figure cannot take the summary with it
    study.plot().savefig(figure, dpi=150)
    print(summary)
    print(f"\nwrote {figure}, {out / 'table.csv'}, {out / 'config.json'} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


# -- the command --------------------------------------------------------------------------------------------
def _add_reproduce(sub) -> None:
    from . import reproduce  # the experiment scripts live in the checkout (experiments/, paper_figs/)

    parser = reproduce.add_parser(sub)
    parser.set_defaults(handler=_run_reproduce, parser=parser)


def _run_reproduce(args) -> int:
    """``reproduce.run`` after checking its output folders (``--results``, ``--figs``) before any work."""
    from . import reproduce

    _writable_folder(Path(args.results), "--results")
    if args.figs is not None:
        _writable_folder(Path(args.figs), "--figs")
    return reproduce.run(args)


COMMANDS: list[Callable] = [_add_weak_error, _add_reproduce]
"""Subcommand registrars ``add(subparsers)``; each sets ``handler`` on its parser."""


def build_parser(prog: str = "sde-sam") -> argparse.ArgumentParser:
    """The ``sde-sam`` argument parser with every subcommand of :data:`COMMANDS`."""
    from . import __version__

    parser = argparse.ArgumentParser(prog=prog, description="SDE models of SAM: studies from the command line. "
                                     "Documentation: docs/ in the repository (mkdocs serve).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--threads", type=_number(1, integer=True), default=1,
                        help="torch CPU threads (default 1: the studies are many small batched ops, which "
                             "extra threads only slow down; raise it for large models)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "sde-sam") -> int:
    """Entry point of the ``sde-sam`` console script; returns the exit code.

    Wrong input exits with status 2 and a one-line message (``SystemExit``), as argparse does.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():  # restores the process's warning display on exit
        warnings.showwarning = functools.partial(_show_warning, parser.prog)
        try:
            return args.handler(args)
        except UsageError as err:
            getattr(args, "parser", parser).error(str(err))


def _show_warning(prog, message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, ``sde-sam: warning: ...``, without the source line that raised them."""
    print(f"{prog}: warning: {message}", file=sys.stderr if file is None else file)


if __name__ == "__main__":
    sys.exit(main())
