"""Results folders hold data, never code, and nothing in them is trusted unchecked (issue 19, items 1-3;
issue 17: one cell store): a planted pickle is never run, writes are atomic under concurrent writers and
readers, damaged cells are recomputed to the same table, cells of one process never overlap (forward-mode AD
is process-global), and a folder of another study is refused naming the setting."""
from __future__ import annotations

import json
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
import torch

import sde_sam as ss
from sde_sam import _io, executors
from sde_sam.executors import grid, run_cells, spec_key
from sde_sam.problems.zoo import teacher_student
from sde_sam.weak import storage

F64 = torch.float64


# ------------------------------------------------------------------ cells (module level: they pickle)


def table_cell(spec: dict) -> pd.DataFrame:
    """A cheap cell with every kind of column the studies return: float64 (NaN, -0.0, subnormal, inf,
    17-digit values), float32, int64, bool and text (labels, empty strings, numbers as text)."""
    rng = np.random.default_rng(spec["seed"])
    n = spec["rows"]
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)
    x[:4] = [np.nan, -0.0, 5e-324, -np.inf][: min(4, n)]
    x32 = (rng.standard_normal(n) / 3).astype(np.float32)
    return pd.DataFrame({"method": spec["method"], "lr": spec["lr"], "x": x, "x32": x32,
                         "step": np.arange(n, dtype=np.int64) * 7, "ok": x > 0,
                         "label": [["a,b", "", "1.5", "nan", 'q"uote'][i % 5] for i in range(n)]})


def table_specs() -> list[dict]:
    return [{"method": m, "lr": lr, "seed": 10 * i + j, "rows": 12 + j}
            for i, m in enumerate(("SAM", "USAM")) for j, lr in enumerate((0.1, 0.2, 0.4))]


class _Planted:
    """Unpickling this creates ``marker``: what a hostile pickle in a results folder would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bytes(marker: Path) -> bytes:
    import pickle

    return pickle.dumps({"spec": {}, "table": _Planted(marker)})


# ------------------------------------------------------------------ 1. no code execution from data


def test_planted_pickles_are_never_unpickled(tmp_path):
    specs = table_specs()
    reference = grid(specs, table_cell)
    cells = tmp_path / "res" / "cells"
    grid(specs[:3], table_cell, results_dir=tmp_path / "res")
    marker = tmp_path / "marker"
    payload = _pickle_bytes(marker)
    (cells / f"{spec_key(specs[4])}.pkl").write_bytes(payload)  # a cell never computed: where the old code looked
    (cells / f"{spec_key(specs[0])}.json").write_bytes(payload)  # a finished cell's record replaced
    (cells / f"{spec_key(specs[1])}.csv").write_bytes(payload)  # a finished cell's table replaced
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = grid(specs, table_cell, results_dir=tmp_path / "res")
    assert not marker.exists()
    text = "\n".join(str(w.message) for w in caught)
    assert f"{spec_key(specs[4])}.pkl is a pickle" in text and "not read" in text
    assert f"{spec_key(specs[0])}.json could not be read" in text
    assert f"{spec_key(specs[1])}.json could not be read" in text and "SHA-256" in text
    pdt.assert_frame_equal(table, reference, check_exact=True)


def test_weak_error_folder_with_a_planted_pickle(tmp_path):
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 2.0], dtype=F64)), noise_cov=0.5)
    kw = dict(lrs=[0.2, 0.1], horizon=0.4, x0=torch.ones(2, dtype=F64), sde_order=[0, 1], solver_check=False)
    reference = ss.weak_error(prob, ss.USAM(0.2, rho=0.1), **kw)
    ss.weak_error(prob, ss.USAM(0.2, rho=0.1), results_dir=tmp_path, **kw)
    marker = tmp_path / "marker"
    for path in sorted((tmp_path / "cells").glob("*.csv"))[:2]:
        path.with_suffix(".pkl").write_bytes(_pickle_bytes(marker))
        path.write_bytes(_pickle_bytes(marker))
    with pytest.warns(UserWarning, match="could not be read"):
        study = ss.weak_error(prob, ss.USAM(0.2, rho=0.1), results_dir=tmp_path, **kw)
    assert not marker.exists() and (study.cells["source"] == "computed").sum() == 2
    pdt.assert_frame_equal(study.table, reference.table, check_exact=True)


# ------------------------------------------------------------------ 3. atomic writes, validated reads


# A writer process: the one atomic writer, loaded from its file alone (no torch import: a quick start).
_WRITER = """
import hashlib, importlib.util, os, random, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("_io_alone", sys.argv[1])
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)
target, writer, n, go = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
rng = random.Random(writer)
while not go.exists():
    time.sleep(0.001)
for i in range(n):
    pad = "x" * rng.randrange(1, 64_000)
    io.write_json({"writer": writer, "i": i, "pad": pad, "sha": hashlib.sha256(pad.encode()).hexdigest()}, target)
"""


@pytest.mark.slow
def test_two_writers_and_a_reader_never_see_a_partial_file(tmp_path):
    import hashlib
    import subprocess
    import sys

    assert storage.write_json is _io.write_json and storage.write_csv is _io.write_csv  # the writer weak_error uses
    folder, go = tmp_path / "study", tmp_path / "go"
    folder.mkdir()
    path = folder / "config.json"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, _io.__file__, str(path), str(w), "300", str(go)],
                                stderr=subprocess.PIPE) for w in (1, 2)]
    go.touch()
    reads, seen, deadline = 0, set(), time.monotonic() + 300
    while (any(w.poll() is None for w in writers) or reads == 0) and time.monotonic() < deadline:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # before the first write
            time.sleep(0.001)
            continue
        doc = json.loads(data)  # a partial file would fail here
        assert hashlib.sha256(doc["pad"].encode()).hexdigest() == doc["sha"]
        reads += 1
        seen.add(doc["writer"])
    errors = [w.communicate()[1].decode() for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    assert reads > 10 and seen <= {1, 2}
    assert os.listdir(folder) == ["config.json"]  # no temporary left behind
    assert json.loads(path.read_bytes())["i"] == 299


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "table.csv"
    _io.write_csv(pd.DataFrame({"a": [1.0]}), path)
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it, not mkstemp's 0600

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _io.write_csv(pd.DataFrame({"a": [2.0]}), path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["table.csv"] and _io.read_csv(path)["a"].tolist() == [1.0]


def _truncations(path: Path, rng: np.random.Generator) -> list[int]:
    size = path.stat().st_size
    return sorted({1, min(200, size), int(rng.integers(2, 200))})


@pytest.mark.slow
def test_every_truncated_grid_cell_file_is_recomputed_to_the_same_table(tmp_path):
    specs = table_specs()
    reference = grid(specs, table_cell)
    pristine = tmp_path / "pristine"
    grid(specs, table_cell, results_dir=pristine)
    rng = np.random.default_rng(0)
    files = sorted((pristine / "cells").iterdir())
    assert len(files) == 2 * len(specs)
    for path in files:
        for cut in _truncations(path, rng):
            data = path.read_bytes()
            path.write_bytes(data[:-cut])
            with pytest.warns(UserWarning, match=rf"cell file .*{path.stem}\.json could not be read"):
                table = grid(specs, table_cell, results_dir=pristine)
            pdt.assert_frame_equal(table, reference, check_exact=True)
            assert path.read_bytes() == data  # recomputed and saved again, byte for byte


@pytest.mark.slow
def test_every_truncated_weak_error_cell_file_is_recomputed_to_the_same_table(tmp_path):
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 2.0], dtype=F64)), noise_cov=0.5)
    kw = dict(lrs=[0.2, 0.1], horizon=0.4, x0=torch.ones(2, dtype=F64), n_paths=64, mode="monte_carlo",
              sde_order=[0, 1], solver_check=False, test_functions=["loss"], progress=False)
    reference = ss.weak_error(prob, ss.SAM(0.2, rho=0.1), **kw)
    ss.weak_error(prob, ss.SAM(0.2, rho=0.1), results_dir=tmp_path, **kw)
    rng = np.random.default_rng(1)
    files = sorted((tmp_path / "cells").iterdir())
    assert len(files) == 2 * 6  # (discrete + 2 models) x 2 lrs, each a table and its record
    for path in files:
        for cut in _truncations(path, rng):
            data = path.read_bytes()
            path.write_bytes(data[:-cut])
            with pytest.warns(UserWarning, match=rf"{path.stem}\.json could not be read"):
                study = ss.weak_error(prob, ss.SAM(0.2, rho=0.1), results_dir=tmp_path, **kw)
            assert (study.cells["source"] == "computed").sum() == 1
            pdt.assert_frame_equal(study.table, reference.table, check_exact=True)
            assert path.read_bytes() == data


def test_cells_of_older_versions_are_recomputed_with_a_warning(tmp_path):
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 2.0], dtype=F64)), noise_cov=0.5)
    kw = dict(lrs=[0.2, 0.1], horizon=0.4, x0=torch.ones(2, dtype=F64), sde_order=[0], solver_check=False)
    reference = ss.weak_error(prob, ss.USAM(0.2, rho=0.1), results_dir=tmp_path, **kw)
    record = sorted((tmp_path / "cells").glob("*.json"))[0]
    record.unlink()  # a CSV cell as the previous version wrote it: no record of its settings
    with pytest.warns(UserWarning, match=rf"{record.stem}\.csv could not be read \(it has no record"):
        study = ss.weak_error(prob, ss.USAM(0.2, rho=0.1), results_dir=tmp_path, **kw)
    pdt.assert_frame_equal(study.table, reference.table, check_exact=True)


def test_cell_tables_round_trip_exactly_or_are_not_stored(tmp_path):
    store = _io.CellStore(tmp_path)
    frame = table_cell({"method": "SAM", "lr": 0.1, "seed": 3, "rows": 40})
    frame["maybe"] = pd.array(["x", None, ""] * 13 + ["y"], dtype="str")
    frame["obj"] = pd.Series(["a", "b"] * 20, dtype=object)
    frame["u8"] = np.arange(40, dtype=np.uint8)
    assert store.save("c", {"k": 1}, frame)
    back = store.load("c", {"k": 1})
    pdt.assert_frame_equal(back, frame, check_exact=True)
    assert [str(t) for t in back.dtypes] == [str(t) for t in frame.dtypes]
    assert np.array_equal(back["x"].to_numpy().view(np.int64), frame["x"].to_numpy().view(np.int64))  # bits, -0.0
    with pytest.raises(_io.ForeignCell, match="computed for another spec"):
        store.load("c", {"k": 2})
    # what CSV cannot hold exactly is not stored (a warning), and the study still gets its table
    with pytest.warns(UserWarning, match="'lists' .* is not saved"):
        assert not store.save("lists", {"k": 1}, pd.DataFrame({"v": [[1, 2], [3]]}))
    assert store.load("lists", {"k": 1}) is None and not list(tmp_path.glob("lists*"))


# ------------------------------------------------------------------ 2. cells of one process never overlap


def _weak_error_orders_1_and_2(executor=None):
    prob = teacher_student(n=16, d_in=2, width=2, batch_size=2)
    return ss.weak_error(prob, ss.SAM(0.2, rho=0.05), lrs=[0.2, 0.1], horizon=0.2,
                         x0=torch.full((prob.d,), 0.3, dtype=F64), n_paths=8, seed=1, mode="monte_carlo",
                         sde_order=[1, 2], test_functions=["loss"], dt_ratio=2, solver_check=False, progress=False,
                         executor=executor)


@pytest.mark.slow
def test_thread_pool_weak_error_of_orders_1_and_2_equals_serial_20_times():
    """Order 1 and 2 models take nested jvps; on threads of one process they used to fail or finish wrong."""
    serial = _weak_error_orders_1_and_2()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(20):
            threaded = _weak_error_orders_1_and_2(pool)
            pdt.assert_frame_equal(threaded.table, serial.table, check_exact=True)


_ACTIVE = {"now": 0, "most": 0}
_ACTIVE_LOCK = threading.Lock()


def overlap_cell(spec: dict) -> pd.DataFrame:
    with _ACTIVE_LOCK:
        _ACTIVE["now"] += 1
        _ACTIVE["most"] = max(_ACTIVE["most"], _ACTIVE["now"])
    time.sleep(0.01)
    with _ACTIVE_LOCK:
        _ACTIVE["now"] -= 1
    return pd.DataFrame({"x": [spec["x"]]})


class _Wrapped:
    """An executor this module does not know: threads of this process behind a plain ``submit``."""

    def __init__(self, pool):
        self.pool = pool

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)


def nested_cell(spec: dict) -> pd.DataFrame:
    """A cell that runs a grid of its own on the thread pool it was given (must not deadlock on the lock)."""
    inner = grid([{"x": spec["x"] + k} for k in range(3)], overlap_cell, executor=spec["pool"], spec_columns=False)
    return pd.DataFrame({"x": [spec["x"]], "inner": [float(inner["x"].sum())]})


def test_cells_in_threads_of_one_process_run_one_at_a_time():
    _ACTIVE["most"] = 0
    with ThreadPoolExecutor(4) as pool:
        table = grid([{"x": x} for x in range(12)], overlap_cell, executor=_Wrapped(pool))
        assert table["x"].tolist() == list(range(12)) and _ACTIVE["most"] == 1
        # cells inside a cell on the same threads run inline instead of waiting for the lock forever
        out = run_cells([(x, {"x": x, "pool": _Wrapped(pool)}) for x in range(3)], nested_cell, executor=pool)
    assert [float(out[x]["inner"].iloc[0]) for x in range(3)] == [3.0 * x + 3 for x in range(3)]
    assert _ACTIVE["most"] == 1


# ------------------------------------------------------------------ 3. another study in the same folder


QUAD = ss.Quadratic(torch.diag(torch.tensor([1.0, 2.0], dtype=F64)), noise_cov=0.5)
BASE = dict(lrs=[0.2, 0.1], horizon=0.4, x0=torch.ones(2, dtype=F64), n_paths=64, seed=0, mode="monte_carlo",
            sde_order=[0], solver_check=False, test_functions=["loss"], progress=False)


@pytest.mark.parametrize("change, setting", [({"seed": 1}, "seed"), ({"n_paths": 128}, "n_paths"),
                                             ({"horizon": 0.6}, "horizon"), ({"sde_order": [1]}, "models"),
                                             ({"dt_ratio": 4}, "dt_ratio"), ({"max_norm": 1e6}, "max_norm")])
@pytest.mark.parametrize("config_json", ["kept", "deleted"])
def test_another_study_in_the_same_folder_is_refused_naming_the_setting(tmp_path, change, setting, config_json):
    ss.weak_error(QUAD, ss.SAM(0.2, rho=0.1), results_dir=tmp_path, **BASE)
    if config_json == "deleted":  # the cells alone still say which study they belong to
        (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=rf"`results_dir` .* different configuration \(differs in \['{setting}'\]\)"):
        ss.weak_error(QUAD, ss.SAM(0.2, rho=0.1), results_dir=tmp_path, **{**BASE, **change})


def test_another_method_in_the_same_folder_is_refused_without_config_json(tmp_path):
    ss.weak_error(QUAD, ss.SAM(0.2, rho=0.1), results_dir=tmp_path, **BASE)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=r"differs in \['method'\]\), as cell file discrete_lr=0.2"):
        ss.weak_error(QUAD, ss.USAM(0.2, rho=0.1), results_dir=tmp_path, **BASE)


def test_a_damaged_config_json_is_named(tmp_path):
    ss.weak_error(QUAD, ss.SAM(0.2, rho=0.1), results_dir=tmp_path, **BASE)
    (tmp_path / "config.json").write_text('{"mode": "monte')
    with pytest.raises(ValueError, match=r"`results_dir` .* holds a damaged config.json .*not valid JSON"):
        ss.weak_error(QUAD, ss.SAM(0.2, rho=0.1), results_dir=tmp_path, **BASE)


def test_a_new_lr_grid_or_rho_rule_reuses_only_matching_cells(tmp_path):
    """The lr grid may change between runs: every cell reused was computed with all the same settings, so the
    table equals a fresh study's bit for bit."""
    ss.weak_error(QUAD, ss.SAM(0.2, rho=0.1), results_dir=tmp_path, **BASE)
    for change in ({"lrs": [0.2, 0.1, 0.05]}, {"lrs": [0.1, 0.05], "rho": lambda lr: 0.1 if lr == 0.1 else 0.07}):
        kw = {**BASE, **change}
        study = ss.weak_error(QUAD, ss.SAM(0.2, rho=0.1), results_dir=tmp_path, **kw)
        fresh = ss.weak_error(QUAD, ss.SAM(0.2, rho=0.1), **kw)
        pdt.assert_frame_equal(study.table, fresh.table, check_exact=True)
        assert (study.cells["source"] == "loaded").any()
    # lr = 0.1 gives rho = 0.1 under both rules: those cells were reused; lr = 0.05 under the new rule was not
    loaded = study.cells[study.cells["source"] == "loaded"]
    assert sorted(set(loaded["lr"])) == [0.1]


def test_executors_module_reads_no_pickle():
    source = Path(executors.__file__).read_text() + Path(storage.__file__).read_text() + Path(_io.__file__).read_text()
    assert "import pickle" not in source and "pickle.load" not in source
