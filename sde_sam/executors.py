r"""Running the independent cells of a study: in-process, on any ``concurrent.futures``-style executor, or on Ray.

A study (a phase diagram over :math:`(\rho,\eta)`, a weak-error study over methods × learning rates ×
orders) is a grid of *cells*. Every cell computes from its own key and seed alone, so cells can run in any
order, anywhere: one after another in this process (the default), on a ``ThreadPoolExecutor`` or
``ProcessPoolExecutor``, on Dask (``client.get_executor()``), or on a Ray cluster through
:class:`RayExecutor`. Nothing here schedules work across machines; an executor does, and this module only
submits cells and gathers their results *in the caller*, which is the only writer of ``results_dir``.

* :func:`run_cells`: run ``cell_fn(spec)`` for every ``(key, spec)``; hand each result to ``on_result`` as
  it completes (that is where it is saved); a failing cell does not stop the others, and every failure is
  reported at the end in one :class:`CellErrors`.
* :func:`grid`: the generic grid runner for experiments. Each spec is a dict of JSON-able fields, each cell
  returns a ``DataFrame``; finished cells are saved atomically under ``results_dir/cells/``, so a rerun
  loads what finished and submits only the missing cells. The table is the same, bit for bit, whatever the
  executor and however often the study was interrupted.
* :class:`RayExecutor`: a thin adapter giving Ray tasks the ``submit`` of a ``concurrent.futures.Executor``
  (``pip install "sde_sam[ray]"``).

Example:
    >>> from concurrent.futures import ProcessPoolExecutor
    >>> from sde_sam.executors import grid
    >>> specs = [{"lr": lr, "rho": rho, "seed": 0} for lr in (0.1, 0.2) for rho in (0.5, 1.0)]
    >>> table = grid(specs, my_cell)  # doctest: +SKIP  (serial)
    >>> with ProcessPoolExecutor(2) as pool:  # doctest: +SKIP
    ...     table = grid(specs, my_cell, executor=pool, results_dir="results/my_study")

Cell functions and specs travel to the workers by pickling: define cell functions at module level (a
``ProcessPoolExecutor`` pickles them by reference); Ray uses ``cloudpickle``. Cells run in parallel on
processes (a ``ProcessPoolExecutor``, Dask workers) or Ray, never in threads of one process: torch's
forward-mode AD levels are global to a process, so two cells taking ``jvp``s at the same time there (SDE
models of order >= 1, Hessian-vector products) would fail or, worse, finish with wrong numbers. So every
cell runs holding a lock of its process: on a ``ThreadPoolExecutor`` (or any executor running cells in
threads of this process) the cells run one at a time and give the serial table bit for bit, for every model
order; for cells side by side use ``ProcessPoolExecutor`` or :class:`RayExecutor`.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

from ._io import CellStore, ForeignCell, canonical

__all__ = ["run_cells", "grid", "spec_key", "CellErrors", "RayExecutor"]


class CellErrors(RuntimeError):
    """One or more cells failed; the others finished (and were handed to ``on_result``).

    Attributes:
        errors: ``{key: exception}`` for each failed cell, in cell order.
        results: ``{key: result}`` of the cells that finished.
        specs: ``{key: spec}`` of the failed cells, when known (:func:`grid`).
    """

    SHOWN = 20  # failed cells listed in the message

    def __init__(self, errors: dict[Hashable, BaseException], results: dict[Hashable, Any] | None = None,
                 specs: dict[Hashable, Any] | None = None):
        self.errors = dict(errors)
        self.results = dict(results or {})
        self.specs = dict(specs or {})
        lines = [f"  {key!r}" + (f" {self.specs[key]!r}" if key in self.specs else "")
                 + f": {type(err).__name__}: {_plain_text(err)}" for key, err in list(self.errors.items())[:self.SHOWN]]
        if len(self.errors) > self.SHOWN:
            lines.append(f"  ... and {len(self.errors) - self.SHOWN} more (all in `.errors`)")
        n_done = len(self.results)
        super().__init__(f"{len(self.errors)} cell(s) failed ({n_done} finished and kept):\n" + "\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.errors, self.results, self.specs))


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def _plain_text(err: BaseException) -> str:
    """The error's text without terminal colour codes (Ray's task errors carry them)."""
    return _ANSI.sub("", str(err))


def _progress_bar(total: int, enabled: bool | None, desc: str | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc or "cells", unit="cell")


# One cell at a time per process: forward-mode AD levels are process-global in torch, so two cells of one
# process computing jvps at once corrupt each other (issue 19). Held around every cell, wherever it runs.
_CELL_LOCK = threading.Lock()
_THIS_THREAD = threading.local()


def _one_at_a_time(cell_fn: Callable[[Any], Any], spec: Any) -> Any:
    """``cell_fn(spec)`` holding this process's cell lock (a cell started inside a cell in the same thread
    already holds it). Module level, so it pickles to workers with ``cell_fn``."""
    if getattr(_THIS_THREAD, "in_cell", False):
        return cell_fn(spec)
    with _CELL_LOCK:
        _THIS_THREAD.in_cell = True
        try:
            return cell_fn(spec)
        finally:
            _THIS_THREAD.in_cell = False


def _pid() -> int:
    return os.getpid()


def _in_this_process(executor: Any) -> bool:
    """Whether ``executor`` runs what is submitted in this process (threads): a probe's pid, unless known."""
    if isinstance(executor, (cf.ProcessPoolExecutor, RayExecutor)):
        return False
    if isinstance(executor, cf.ThreadPoolExecutor):
        return True
    try:  # a timeout: its threads may all be waiting for the lock this thread holds
        return executor.submit(_pid).result(timeout=10) == os.getpid()
    except Exception:  # cannot tell: assume it may be threads here (running inline is always correct)
        return True


def run_cells(cells: Sequence[tuple[Hashable, Any]], cell_fn: Callable[[Any], Any], *, executor: Any = None,
              on_result: Callable[[Hashable, Any], None] | None = None, progress: bool | None = False,
              desc: str | None = None) -> dict[Hashable, Any]:
    """Run ``cell_fn(spec)`` for every ``(key, spec)`` in ``cells``.

    Args:
        cells: ``(key, spec)`` pairs; keys are hashable and unique.
        cell_fn: a function of one spec. With a process pool or Ray it must pickle (a module-level function).
        executor: ``None`` (in this process, one cell after another) or any object with the ``submit`` of
            ``concurrent.futures.Executor`` returning a ``concurrent.futures.Future``:
            ``ProcessPoolExecutor``, Dask's ``client.get_executor()``, :class:`RayExecutor`. Cells of one
            process run one at a time (a lock; see the module docstring), so a ``ThreadPoolExecutor`` gives
            the serial results but no speed-up. It is not shut down here.
        on_result: called as ``on_result(key, result)`` in *this* process and thread as each cell completes
            (completion order): the place to save it. An exception from ``on_result`` is not a cell failure:
            the cells not yet started are cancelled and it propagates.
        progress: a tqdm progress bar (``None``: only when stderr is a terminal).
        desc: the progress bar's label.

    Returns:
        ``{key: result}`` in the order of ``cells``.

    Raises:
        CellErrors: after every other cell finished, if any cell raised; it lists each failed key with its
            error and carries the finished results (``.results``), which ``on_result`` has already seen.
    """
    cells = list(cells)
    keys = [key for key, _ in cells]
    if len(set(keys)) != len(keys):
        dup = sorted({repr(k) for k in keys if keys.count(k) > 1})
        raise ValueError(f"`cells` keys must be unique, got duplicates {', '.join(dup)}")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(f"`executor` must be None or have a `submit(fn, *args)` method like "
                        f"concurrent.futures.Executor, got {type(executor).__name__}")
    if executor is not None and getattr(_THIS_THREAD, "in_cell", False) and _in_this_process(executor):
        executor = None  # cells inside a cell, on threads of this process, would wait for its lock forever
    done: dict[Hashable, Any] = {}
    errors: dict[Hashable, BaseException] = {}
    bar = _progress_bar(len(cells), progress, desc)
    run_one = functools.partial(_one_at_a_time, cell_fn)

    def finished(key, result):
        done[key] = result
        if on_result is not None:
            on_result(key, result)

    try:
        if executor is None:
            for key, spec in cells:
                try:
                    result = run_one(spec)
                except Exception as err:  # a failing cell is reported at the end; KeyboardInterrupt is not caught
                    errors[key] = err
                else:
                    finished(key, result)
                if bar is not None:
                    bar.update()
        else:
            futures = {}
            try:
                for key, spec in cells:
                    futures[executor.submit(run_one, spec)] = key
                for future in cf.as_completed(futures):
                    key = futures[future]
                    try:
                        result = future.result()
                    except Exception as err:  # includes a worker process that died (BrokenProcessPool)
                        errors[key] = err
                    else:
                        finished(key, result)
                    if bar is not None:
                        bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        if bar is not None:
            bar.close()
    if errors:
        raise CellErrors({k: errors[k] for k in keys if k in errors}, {k: done[k] for k in keys if k in done})
    return {k: done[k] for k in keys}


# ---------------------------------------------------------------------------------------------- grid


def spec_key(spec: dict) -> str:
    """The stable key of a cell spec: the first 16 hex digits of the SHA-256 of its canonical JSON
    (sorted keys; tuples and lists alike). Equal specs give equal keys across processes, machines and runs."""
    return hashlib.sha256(canonical(spec).encode()).hexdigest()[:16]


def _check_specs(specs: Sequence[dict]) -> list[str]:
    if isinstance(specs, dict) or not isinstance(specs, Sequence):
        raise TypeError(f"`specs` must be a list of dicts, got {type(specs).__name__}")
    keys = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not all(isinstance(k, str) for k in spec):
            raise TypeError(f"`specs[{i}]` must be a dict with str keys, got {spec!r}")
        try:
            keys.append(spec_key(spec))
        except (TypeError, ValueError) as err:
            raise TypeError(f"`specs[{i}]` must hold JSON-able values (str, int, float, bool, None, lists, "
                            f"dicts), got {spec!r}: {err}") from None
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            raise ValueError(f"`specs` must be distinct, got specs[{seen[key]}] == specs[{i}] = {specs[i]!r}")
        seen[key] = i
    return keys


def _cells(results_dir: Path) -> CellStore:
    return CellStore(results_dir / "cells")


def _load_cell(store: CellStore, key: str, spec: dict):
    """The saved table of this spec, or ``None`` when absent, damaged (a warning names the file) or saved
    for another spec (a hand-copied file: recomputed with a warning)."""
    try:
        return store.load(key, spec)
    except ForeignCell as err:
        warnings.warn(f"cell file {err.path} holds another spec ({err.saved_spec!r}, expected {spec!r}); "
                      "recomputing the cell", stacklevel=3)
        return None


def grid(specs: Sequence[dict], cell_fn: Callable[[dict], Any], *, executor: Any = None,
         results_dir: str | os.PathLike | None = None, progress: bool | None = None,
         spec_columns: bool | Sequence[str] = True):
    """Run a study grid: ``cell_fn(spec)`` for every spec, gathered into one tidy table.

    Every cell computes from its own spec alone (put its seed in the spec, e.g. derived from the grid
    indices), so the table does not depend on where or in which order cells ran: serial, thread or process
    pool, Dask, Ray give the same table bit for bit. Anything that combines cells (differences, fits) belongs
    after ``grid``, on the table.

    Resume: with ``results_dir``, each finished cell is saved atomically (unique temporary file +
    ``os.replace``) as ``results_dir/cells/<spec_key(spec)>.csv``, its table (floats by ``repr``, read back
    as a round trip), and ``<spec_key(spec)>.json``, the spec with the table's columns, dtypes, row count
    and SHA-256 (:class:`sde_sam._io.CellStore`): the table reads back equal, dtype and bit for bit. A
    rerun loads the cells already there and submits only the missing ones; a study interrupted mid-way (a
    failed cell, a killed worker, Ctrl-C) loses only the cells that had not finished. Changing any field of
    a spec makes it a new cell. A cell file that is damaged, holds another spec, or is a ``.pkl`` of an
    older version (never unpickled: unpickling can run code) is recomputed with a warning naming it.

    Args:
        specs: distinct dicts of JSON-able fields (``str``, ``int``, ``float``, ``bool``, ``None``, lists).
        cell_fn: ``cell_fn(spec) -> pandas.DataFrame`` (with ``results_dir``: distinct ``str`` column
            names; numbers, booleans and text store exactly, other columns are not stored, with a warning);
            a module-level function for process pools and Ray.
        executor: see :func:`run_cells` (``None``: in this process).
        results_dir: where ``cells/`` go; ``None`` keeps nothing on disk.
        progress: tqdm bar over the cells to compute (``None``: when stderr is a terminal).
        spec_columns: which spec fields become columns: ``True`` all, ``False`` none (the cells' tables
            as returned), or a list of field names.

    Returns:
        The cells' tables concatenated in spec order (index reset), with the spec fields (``spec_columns``)
        added as columns in front, except where the cell's table already has a column of that name (kept as
        returned).

    Raises:
        CellErrors: some cells failed; every other cell finished and was saved. Rerun to retry the failed ones.
    """
    import pandas as pd

    keys = _check_specs(specs)
    if not isinstance(spec_columns, bool):
        spec_columns = list(spec_columns)
        unknown = sorted({c for c in spec_columns if any(c not in spec for spec in specs)})
        if unknown:
            raise ValueError(f"`spec_columns` must name fields of every spec, got {unknown}")
    store = _cells(Path(results_dir)) if results_dir is not None else None
    tables: dict[str, Any] = {}
    if store is not None:
        for key, spec in zip(keys, specs):
            table = _load_cell(store, key, spec)
            if table is not None:
                tables[key] = table
    missing = [(key, spec) for key, spec in zip(keys, specs) if key not in tables]
    spec_of = dict(missing)

    def on_result(key, table):
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"`cell_fn` must return a pandas DataFrame, got {type(table).__name__} "
                            f"for spec {spec_of[key]!r}")
        tables[key] = table
        if store is not None:
            store.save(key, spec_of[key], table)

    if missing:
        try:
            run_cells(missing, cell_fn, executor=executor, on_result=on_result, progress=progress,
                      desc="grid cells")
        except CellErrors as err:  # name each failed cell by its spec too
            raise CellErrors(err.errors, err.results, {k: s for k, s in missing if k in err.errors}) from None
    frames = []
    for key, spec in zip(keys, specs):
        frame = tables[key].copy()
        wanted = spec if spec_columns is True else (() if spec_columns is False else spec_columns)
        front = [name for name in wanted if name not in frame.columns]
        for pos, name in enumerate(front):
            value = spec[name]
            frame.insert(pos, name, [value] * len(frame) if isinstance(value, (list, dict)) else value)
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------- Ray


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError('RayExecutor needs Ray: pip install "sde_sam[ray]" (or pip install "ray[default]")') from err
    return ray


def _driver_path() -> str:
    return os.pathsep.join(p for p in (os.path.abspath(p or os.curdir) for p in sys.path) if os.path.isdir(p))


def _call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


class RayExecutor:
    """Ray tasks behind the ``submit`` of ``concurrent.futures.Executor``: pass it as ``executor=``.

    Connects to the cluster at ``address`` (or the ``RAY_ADDRESS`` environment variable, e.g. after
    ``ray start --head``), else starts a local one with ``num_cpus`` CPUs whose workers get this process's
    ``sys.path`` (so cell functions import there as in a process pool). Ray is already initialised in this
    process? Then that connection is used and left open. On a remote cluster, cell functions must be
    importable on the workers (an installed package, Ray's ``runtime_env`` ``py_modules``/``working_dir``)
    or defined in ``__main__`` (cloudpickle sends them by value). Each cell is one task with one CPU and
    ``num_gpus_per_cell`` GPUs: a fraction (``0.25``: four cells share a GPU) or a whole number; Ray sets
    ``CUDA_VISIBLE_DEVICES`` in the task, so a cell that puts its tensors on ``"cuda"`` finds its GPU.

    Args:
        address: a Ray cluster address (``"ray://host:10001"``, ``"auto"``, ``"host:6379"``); ``None``: use
            ``RAY_ADDRESS`` if set, else start a local cluster.
        num_cpus: CPUs of a local cluster (``None``: all of this machine's); ignored when connecting.
        num_gpus_per_cell: GPUs per cell, ``>= 0`` (fractions below 1; whole numbers above). Refused when the
            cluster has no GPU (a task would wait for one forever).

    Example:
        >>> with RayExecutor() as ex:  # doctest: +SKIP
        ...     study = ss.weak_error(prob, method, lrs=[0.1, 0.05], horizon=1.0, x0=x0, executor=ex)
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 num_gpus_per_cell: float = 0):
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
            raise ValueError(f"`num_cpus` must be a positive int or None, got num_cpus={num_cpus!r}")
        gpus = float(num_gpus_per_cell)
        if not gpus >= 0 or (gpus > 1 and not gpus.is_integer()):
            raise ValueError(f"`num_gpus_per_cell` must be >= 0, a fraction below 1 or a whole number, "
                             f"got num_gpus_per_cell={num_gpus_per_cell!r}")
        ray = _import_ray()
        self._ray = ray
        self._owns = False
        self._task = None
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            if address:
                ray.init(address=address)
            else:  # a local cluster: its workers see this process's import path, like a process pool's
                ray.init(num_cpus=num_cpus, include_dashboard=False,
                         runtime_env={"env_vars": {"PYTHONPATH": _driver_path()}})
            self._owns = True
        if gpus > 0:
            available = ray.cluster_resources().get("GPU", 0)
            if available <= 0:
                self.shutdown()
                raise ValueError(f"`num_gpus_per_cell`={num_gpus_per_cell} but the Ray cluster has no GPU; "
                                 f"use num_gpus_per_cell=0 to run cells on CPUs")
        self.num_gpus_per_cell = gpus
        self._task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_call)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` as a Ray task; a ``concurrent.futures.Future`` of its result."""
        if self._task is None:
            raise RuntimeError("cannot submit to a RayExecutor after shutdown()")
        return self._task.remote(fn, args, kwargs).future()

    def map(self, fn: Callable, *iterables: Iterable) -> Iterable:
        """``concurrent.futures.Executor.map``: results in input order."""
        futures = [self.submit(fn, *args) for args in zip(*iterables)]
        return (f.result() for f in futures)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Disconnect; a local cluster started by this executor is stopped."""
        self._task = None
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
