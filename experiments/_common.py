"""Small helpers shared by the study modules.

Every study is a module ``experiments.<study>`` (declared in :mod:`experiments.registry`) with a
frozen-dataclass config (``Config()`` full, ``Config.quick()`` for CI), a ``run(config, results, *,
executor=None)`` that computes and saves, and ``main(argv=None)``:

    python -m experiments.<study> [--quick] [--results DIR] [--executor {serial,process,ray}] [--workers N]

writes ``DIR/<study>/config.json`` and tidy CSV tables; :mod:`experiments.figures` draws only from them.
Studies that loop over a grid run it through :func:`run_grid` (``sde_sam.executors.grid``): each cell is a
module-level function of a JSON-able spec holding everything it computes from, its seed included, so the
tables are the same bit for bit on any executor; finished cells are kept in ``DIR/<study>/cells/`` and a
rerun computes only the missing ones (delete that folder, or ``sde-sam reproduce --fresh``, after changing
the code).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch

from sde_sam import executors

DEFAULT_RESULTS = Path("results")


def setup_torch(threads: int = 1) -> None:
    """One intra-op thread: the studies are many small batched ops, which threads only slow down (and a
    loaded 2-core CI machine makes oversubscribed threads 10-100x slower)."""
    torch.set_num_threads(threads)


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """``--quick`` (the CI-sized config), ``--results DIR`` (default ``results``) and the executor flags
    ``--executor {serial,process,ray} --workers N --address ADDR`` (see ``sde_sam.reproduce``)."""
    from sde_sam import reproduce

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small config (minutes on 2 CPU cores)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results root (default: results)")
    reproduce.add_executor_arguments(parser)
    args = parser.parse_args(argv)
    reproduce.check_executor_arguments(parser, args)
    return args


def study_main(name: str, argv: Sequence[str] | None) -> Path:
    """The ``main(argv)`` every study shares: parse ``--quick``/``--results``/executor flags, then run the
    registered study ``name`` on its quick or full config.

    The study runs from its package module ``experiments.<name>`` even when its file was started as
    ``__main__``: its cell functions then pickle by reference under their importable name."""
    from .registry import get

    study = get(name)
    args = parse_args(argv, (study.module.__doc__ or study.title).strip().splitlines()[0])
    with executor_from_args(args) as executor:
        return study.run(study.config("quick" if args.quick else "full"), args.results, executor=executor)


@contextlib.contextmanager
def executor_from_args(args: argparse.Namespace) -> Iterator[Any]:
    """The executor the parsed flags ask for (``None``: serial), shut down on exit."""
    from sde_sam import reproduce

    with reproduce.open_executor(args.executor, workers=args.workers, address=args.address) as executor:
        yield executor


def run_grid(specs: list[dict], cell_fn: Callable[[dict], pd.DataFrame], *, executor: Any = None,
             out: str | Path | None = None, spec_columns: bool | Sequence[str] = False) -> pd.DataFrame:
    """``sde_sam.executors.grid`` for a study: ``cell_fn`` (a module-level function of the study module)
    travels to process or Ray workers by reference; cells are kept in ``out/cells/``; the table is the
    cells' tables in spec order (spec fields are not added unless asked: the cells return their labels)."""
    return executors.grid(specs, cell_fn, executor=executor, results_dir=out, progress=None,
                          spec_columns=spec_columns)


def study_dir(results: str | Path, study: str) -> Path:
    """``results/<study>``, created."""
    path = Path(results) / study
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def config_from_spec(cls: type, fields: dict) -> Any:
    """The frozen-dataclass config ``cls`` back from its JSON form (``_jsonable``: lists become tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def save_config(config: Any, out: str | Path, **extra: Any) -> Path:
    """Write the frozen-dataclass ``config`` (plus ``extra`` facts, e.g. runtime) to ``out/config.json``."""
    payload = {"config": _jsonable(config), "config_class": type(config).__qualname__,
               "torch": torch.__version__, "python": platform.python_version(), **_jsonable(extra)}
    path = Path(out) / "config.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def save_frame(frame: pd.DataFrame, out: str | Path, name: str) -> Path:
    """Write a tidy DataFrame to ``out/<name>.csv`` (no index)."""
    path = Path(out) / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def load_config(out: str | Path) -> dict:
    return json.loads((Path(out) / "config.json").read_text())


def trajectory_frame(traj, **labels: Any) -> pd.DataFrame:
    """``Trajectory.to_frame()`` with extra label columns (method, model, problem, ...)."""
    frame = traj.to_frame()
    for key, value in labels.items():
        frame[key] = value
    return frame


def quantile_frame(traj, name: str, qs: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9), *,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None, **labels: Any) -> pd.DataFrame:
    """Per-time quantiles across paths of observable ``name`` (diverged paths left out), plus mean and SEM.

    Columns: ``time, mean, sem, q10, q25, q50, q75, q90, n_paths`` and the ``labels``.
    """
    vals = traj.values[name][:, ~traj.diverged].double()
    if transform is not None:
        vals = transform(vals)
    n = vals.shape[1]
    frame = pd.DataFrame({"time": traj.times.numpy(), "mean": vals.mean(dim=1).numpy(),
                          "sem": (vals.std(dim=1) / max(n, 1) ** 0.5).numpy() if n > 1 else float("nan"),
                          "n_paths": n, "n_diverged": traj.n_diverged})
    if n:
        qv = torch.quantile(vals, torch.tensor(qs, dtype=vals.dtype), dim=1)
        for q, row in zip(qs, qv):
            frame[f"q{round(100 * q):02d}"] = row.numpy()
    for key, value in labels.items():
        frame[key] = value
    return frame


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def finish(config: Any, out: Path, frames: dict[str, pd.DataFrame], seconds: float, **extra: Any) -> Path:
    """Save every frame and the config (with the runtime); print one line; return ``out``."""
    for name, frame in frames.items():
        save_frame(frame, out, name)
    save_config(config, out, runtime_s=round(seconds, 2), files=sorted(f"{k}.csv" for k in frames), **extra)
    print(f"[{out.name}] wrote {', '.join(sorted(frames))} in {seconds:.1f} s -> {out}")
    return out
