"""Study cells through every executor (issue 13): serial, threads, processes and a local Ray cluster give the
same table bit for bit; interrupted studies resume computing only the missing cells; failing cells are
reported with their key and error while the others' results are kept."""
from __future__ import annotations

import importlib.util
import math
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pandas.testing as pdt
import pytest
import torch

import sde_sam as ss
from sde_sam import executors
from sde_sam.executors import CellErrors, RayExecutor, grid, run_cells, spec_key

F64 = torch.float64
HAVE_RAY = importlib.util.find_spec("ray") is not None


# ------------------------------------------------------------------ cells (module level: they must pickle)


def escape_cell(spec: dict) -> pd.DataFrame:
    """A real study cell: discrete runs of one method on the saddle f = ½(x₁² − x₂²) with gradient noise,
    summarised per recorded time (the saddle-attraction study's kind of cell)."""
    torch.set_num_threads(1)
    prob = ss.saddle((1.0, -1.0), noise_cov=spec["noise_cov"])
    lr, rho = spec["lr"], spec["rho"]
    method = ss.SGD(lr) if spec["method"] == "SGD" else getattr(ss, spec["method"])(lr, rho=rho)
    traj = ss.run(prob, method, torch.tensor([0.5, 0.0], dtype=F64), steps=spec["steps"], n_paths=spec["n_paths"],
                  seed=spec["seed"], record_every=spec["steps"] // 4, observables=("x_norm", "loss"), max_norm=1e6)
    frame = traj.to_frame()
    frame["n_diverged"] = traj.n_diverged
    return frame


def escape_specs(n_paths: int = 64) -> list[dict]:
    return [{"method": m, "lr": lr, "rho": rho, "steps": 40, "n_paths": n_paths, "noise_cov": 0.01,
             "seed": 10 * i + j}
            for i, m in enumerate(("USAM", "SAM")) for j, (lr, rho) in enumerate(((0.1, 0.5), (0.2, 1.5)))]


def counting_cell(spec: dict) -> pd.DataFrame:
    """Records each call as a file in ``spec['log']``; fails (as if killed) once ``spec['log']/stop`` exists
    and ``k`` calls happened."""
    log = Path(spec["log"])
    calls = len(list(log.glob("call-*")))
    if (log / "stop").exists() and calls >= int((log / "stop").read_text()):
        raise RuntimeError(f"interrupted at cell {spec['i']}")
    (log / f"call-{spec['i']}-{os.getpid()}-{calls}").touch()
    return escape_cell({**spec["cell"]})


def dying_cell(spec: dict) -> pd.DataFrame:
    """Kills its worker process outright at cell ``spec['die_at']`` while ``spec['log']/die`` exists."""
    log = Path(spec["log"])
    if spec["i"] == spec["die_at"] and (log / "die").exists():
        os._exit(1)
    (log / f"call-{spec['i']}").touch()
    return pd.DataFrame({"i": [spec["i"]], "value": [math.sqrt(spec["i"] + 0.5)]})


def failing_cell(spec):
    if spec["x"] == 2:
        raise ValueError("bad cell x=2")
    return pd.DataFrame({"y": [spec["x"] ** 2]})


def square(spec):
    return spec * spec


def not_a_frame(spec):
    return [spec["x"]]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def serial_table() -> pd.DataFrame:
    return grid(escape_specs(), escape_cell)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU Ray cluster for the module, shut down afterwards (skipped without Ray)."""
    if not HAVE_RAY:
        pytest.skip('Ray is not installed (pip install "sde_sam[ray]")')
    import ray

    # the workers import this test module (the cells) from the driver's path, as RayExecutor() does
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": executors._driver_path()}})
    yield ray
    ray.shutdown()


def saved_cells(folder: Path) -> list[str]:
    """The cells stored in ``folder``: each a table (``.csv``) and its record (``.json``), nothing else (no
    temporary file left behind, no pickle)."""
    names = sorted(p.name for p in folder.iterdir())
    stems = sorted({n.rsplit(".", 1)[0] for n in names})
    assert names == sorted([f"{s}.csv" for s in stems] + [f"{s}.json" for s in stems]), names
    return stems


def spawn_pool(workers: int = 2) -> ProcessPoolExecutor:
    """Spawned workers: a forked child would inherit torch's thread pools (and the engine's RNG threads)."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))


@pytest.fixture(scope="module")
def process_pool():
    """Two spawned workers shared by the module's tests (each start imports torch: seconds)."""
    with spawn_pool() as pool:
        yield pool


def small_weak_error(**kwargs) -> ss.WeakErrorStudy:
    """A Monte-Carlo weak-error study of SAM (order-0 and order-1 models, two learning rates): 8 cells."""
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 2.0], dtype=F64)), noise_cov=0.5)
    return ss.weak_error(prob, ss.SAM(0.2, rho=0.1), lrs=[0.2, 0.1], horizon=0.4,
                         x0=torch.tensor([1.0, 1.0], dtype=F64), n_paths=64, seed=3, sde_order=[0, 1], dt_ratio=2,
                         expectation=2, solver_check=True, mode="monte_carlo", progress=False, **kwargs)


@pytest.fixture(scope="module")
def weak_error_serial() -> ss.WeakErrorStudy:
    return small_weak_error()


# ------------------------------------------------------------------ same table through every executor


def test_serial_table_is_tidy_in_spec_order(serial_table):
    specs = escape_specs()
    # spec fields the cell did not return go in front; method, lr, rho come from Trajectory.to_frame()
    assert list(serial_table.columns[:3]) == ["steps", "noise_cov", "seed"]  # n_paths: also from the frame
    assert {"method", "lr", "rho"} <= set(serial_table.columns)
    assert serial_table.groupby("seed", sort=False).ngroups == len(specs)
    assert serial_table["seed"].drop_duplicates().tolist() == [s["seed"] for s in specs]
    assert {"time", "observable", "mean", "sem"} <= set(serial_table.columns)


def test_thread_pool_gives_the_same_table(serial_table):
    with ThreadPoolExecutor(2) as pool:
        table = grid(escape_specs(), escape_cell, executor=pool)
    pdt.assert_frame_equal(table, serial_table, check_exact=True)


@pytest.mark.slow
def test_process_pool_gives_the_same_table(serial_table, tmp_path, process_pool):
    table = grid(escape_specs(), escape_cell, executor=process_pool, results_dir=tmp_path)
    pdt.assert_frame_equal(table, serial_table, check_exact=True)
    assert saved_cells(tmp_path / "cells") == sorted(spec_key(s) for s in escape_specs())
    # reloaded from disk: still identical (exact round trip), nothing recomputed
    pdt.assert_frame_equal(grid(escape_specs(), failing_cell, results_dir=tmp_path), serial_table, check_exact=True)


@pytest.mark.slow
def test_ray_gives_the_same_table_and_resumes(serial_table, ray_cluster, tmp_path):
    with RayExecutor() as ex:  # joins the fixture's cluster and leaves it running
        assert not ex._owns
        first = grid(escape_specs()[:2], escape_cell, executor=ex, results_dir=tmp_path)
        table = grid(escape_specs(), escape_cell, executor=ex, results_dir=tmp_path)
    assert ray_cluster.is_initialized()
    pdt.assert_frame_equal(table, serial_table, check_exact=True)
    pdt.assert_frame_equal(first, serial_table.iloc[: len(first)], check_exact=True)


@pytest.mark.slow
def test_weak_error_is_identical_on_processes_and_resumes(weak_error_serial, process_pool, tmp_path):
    study = small_weak_error(executor=process_pool, results_dir=tmp_path)
    pdt.assert_frame_equal(study.table, weak_error_serial.table, check_exact=True)
    pdt.assert_frame_equal(study.solver_error, weak_error_serial.solver_error, check_exact=True)
    again = small_weak_error(results_dir=tmp_path)  # every cell loaded from disk
    assert (again.cells["source"] == "loaded").all()
    pdt.assert_frame_equal(again.table, weak_error_serial.table, check_exact=True)


@pytest.mark.slow
def test_weak_error_is_identical_on_ray(weak_error_serial, ray_cluster):
    with RayExecutor() as ex:
        study = small_weak_error(executor=ex)
    pdt.assert_frame_equal(study.table, weak_error_serial.table, check_exact=True)


@pytest.mark.slow  # starts a Ray cluster (~12 s): CI runs it, the fast lane does not
def test_ray_reports_failed_cells(ray_cluster):
    with RayExecutor() as ex:
        with pytest.raises(CellErrors, match=r"bad cell x=2") as info:
            run_cells([(x, {"x": x}) for x in range(4)], failing_cell, executor=ex)
    assert list(info.value.errors) == [2] and sorted(info.value.results) == [0, 1, 3]


def test_ray_refuses_gpus_on_a_cpu_cluster(ray_cluster):
    if ray_cluster.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this cluster has a GPU")
    with pytest.raises(ValueError, match="has no GPU"):
        RayExecutor(num_gpus_per_cell=0.5)
    assert ray_cluster.is_initialized()  # a cluster it did not start is left alone


# ------------------------------------------------------------------ resume and failures


def test_interrupted_study_resumes_only_missing_cells(tmp_path, serial_table):
    log = tmp_path / "log"
    log.mkdir()
    cells = escape_specs()
    specs = [{"i": i, "log": str(log), "cell": cell} for i, cell in enumerate(cells)]
    k = 2
    (log / "stop").write_text(str(k))
    with pytest.raises(CellErrors, match="interrupted at cell 2") as info:
        grid(specs, counting_cell, results_dir=tmp_path / "res")
    assert len(info.value.errors) == len(specs) - k
    assert len(saved_cells(tmp_path / "res" / "cells")) == k  # the finished cells were kept
    (log / "stop").unlink()
    table = grid(specs, counting_cell, results_dir=tmp_path / "res")
    calls = sorted(int(p.name.split("-")[1]) for p in log.glob("call-*"))
    assert calls == list(range(len(specs)))  # every cell computed exactly once over both runs
    assert list(table.columns[:3]) == ["i", "log", "cell"]
    assert table["cell"].map(lambda c: c["seed"]).tolist() == serial_table["seed"].tolist()
    spec_cols = ["steps", "noise_cov", "seed"]
    pdt.assert_frame_equal(table.drop(columns=["i", "log", "cell"]), serial_table.drop(columns=spec_cols),
                           check_exact=True)


@pytest.mark.slow
def test_killed_worker_process_resumes_only_missing_cells(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    specs = [{"i": i, "die_at": 3, "log": str(log)} for i in range(6)]
    (log / "die").touch()
    with spawn_pool(1) as pool, pytest.raises(CellErrors, match="BrokenProcessPool|terminated abruptly"):
        grid(specs, dying_cell, executor=pool, results_dir=tmp_path / "res")
    done = {int(p.name.split("-")[1]) for p in log.glob("call-*")}
    assert {0, 1, 2} <= done and 3 not in done
    assert len(saved_cells(tmp_path / "res" / "cells")) == len(done)
    (log / "die").unlink()
    for p in log.glob("call-*"):
        p.unlink()
    table = grid(specs, dying_cell, results_dir=tmp_path / "res")
    assert {int(p.name.split("-")[1]) for p in log.glob("call-*")} == set(range(6)) - done
    pdt.assert_frame_equal(table, grid(specs, dying_cell), check_exact=True)


def test_failed_cell_is_reported_and_others_kept(tmp_path):
    seen = []
    cells = [(f"cell{x}", {"x": x}) for x in range(5)]
    with ThreadPoolExecutor(2) as pool, pytest.raises(CellErrors, match=r"'cell2': ValueError: bad cell x=2") as info:
        run_cells(cells, failing_cell, executor=pool, on_result=lambda k, r: seen.append(k))
    err = info.value
    assert list(err.errors) == ["cell2"] and isinstance(err.errors["cell2"], ValueError)
    assert sorted(seen) == ["cell0", "cell1", "cell3", "cell4"] and list(err.results) == ["cell0", "cell1", "cell3", "cell4"]
    # grid: the failure names the spec; the others are saved and a rerun computes only the failed one
    specs = [{"x": x} for x in range(5)]
    with pytest.raises(CellErrors, match=r"\{'x': 2\}: ValueError: bad cell x=2"):
        grid(specs, failing_cell, results_dir=tmp_path)
    assert saved_cells(tmp_path / "cells") == sorted(spec_key(s) for s in specs if s["x"] != 2)
    with pytest.raises(CellErrors, match=r"1 cell\(s\) failed \(0 finished"):
        grid(specs, failing_cell, results_dir=tmp_path)


def test_many_failures_are_summarised():
    with pytest.raises(CellErrors, match=r"(?s)30 cell\(s\) failed .*and 10 more \(all in `.errors`\)") as info:
        run_cells([(i, {"x": 2}) for i in range(30)], failing_cell)
    assert len(info.value.errors) == 30 and str(info.value).count("bad cell") == 20


def test_run_cells_serial_and_pools_agree():
    cells = [(i, i + 0.5) for i in range(7)]
    serial = run_cells(cells, square)
    assert list(serial) == list(range(7)) and serial[3] == 3.5**2
    with ThreadPoolExecutor(3) as pool:
        assert run_cells(cells, square, executor=pool) == serial
    assert run_cells([], square) == {}


def test_grid_saves_atomically_and_ignores_foreign_cells(tmp_path):
    specs = [{"x": 1}, {"x": 3}]
    grid(specs, failing_cell, results_dir=tmp_path)
    assert saved_cells(tmp_path / "cells") == sorted(spec_key(s) for s in specs)  # no temporary left behind
    # a cell file that holds another spec (e.g. copied by hand) is recomputed, not trusted
    for ext in (".csv", ".json"):
        os.replace(tmp_path / "cells" / f"{spec_key(specs[1])}{ext}", tmp_path / "cells" / f"{spec_key(specs[0])}{ext}")
    with pytest.warns(UserWarning, match=f"{spec_key(specs[0])}.json holds another spec"):
        table = grid(specs, failing_cell, results_dir=tmp_path)
    assert table["y"].tolist() == [1, 9]


def test_unreadable_cell_file_is_recomputed_with_a_warning(tmp_path):
    specs = [{"x": 1}, {"x": 3}]
    grid(specs, failing_cell, results_dir=tmp_path)
    (tmp_path / "cells" / f"{spec_key(specs[0])}.json").write_bytes(b"not a record")
    with pytest.warns(UserWarning, match=f"{spec_key(specs[0])}.json could not be read.*recomputing the cell"):
        table = grid(specs, failing_cell, results_dir=tmp_path)
    assert table["y"].tolist() == [1, 9]
    assert grid(specs, not_a_frame, results_dir=tmp_path)["y"].tolist() == [1, 9]  # rewritten: loaded now


def test_spec_key_is_stable():
    assert spec_key({"a": 1, "b": (0.1, 2)}) == spec_key({"b": [0.1, 2], "a": 1})
    assert spec_key({"a": 0.1}) != spec_key({"a": 0.1000000000000001})
    assert spec_key({"lr": 0.1, "seed": 0}) == "ff0a64b8b4763380"  # fixed across runs, processes, machines


# ------------------------------------------------------------------ errors


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="keys must be unique, got duplicates 1"):
        run_cells([(1, 1), (1, 2)], square)
    with pytest.raises(TypeError, match="`executor` must be None or have a `submit"):
        run_cells([(1, 1)], square, executor=object())
    with pytest.raises(TypeError, match=r"`specs\[1\]` must hold JSON-able values"):
        grid([{"x": 1}, {"x": torch.zeros(2)}], failing_cell)
    with pytest.raises(TypeError, match=r"`specs\[0\]` must be a dict with str keys"):
        grid([(1, 2)], failing_cell)
    with pytest.raises(TypeError, match="`specs` must be a list of dicts"):
        grid({"x": 1}, failing_cell)
    with pytest.raises(ValueError, match=r"`specs` must be distinct, got specs\[0\] == specs\[1\]"):
        grid([{"x": 1}, {"x": 1}], failing_cell)
    with pytest.raises(TypeError, match="`cell_fn` must return a pandas DataFrame, got list"):
        grid([{"x": 1}], not_a_frame)


def test_ray_executor_without_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r'pip install "sde_sam\[ray\]"'):
        RayExecutor()


@pytest.mark.parametrize("kwargs, match", [({"num_gpus_per_cell": -1}, "`num_gpus_per_cell` must be >= 0"),
                                           ({"num_gpus_per_cell": 1.5}, "whole number"),
                                           ({"num_cpus": 0}, "`num_cpus` must be a positive int")])
def test_ray_executor_validates_before_starting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RayExecutor(**kwargs)


@pytest.mark.slow
def test_package_imports_without_ray():
    code = ("import sys; sys.modules['ray'] = None; import sde_sam, sde_sam.executors; "
            "assert 'ray' not in [m for m in sys.modules if sys.modules[m] is not None]")
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)
    assert executors.__name__ == "sde_sam.executors"


@pytest.mark.slow
def test_cell_errors_text_has_no_terminal_colour_codes():
    from sde_sam.executors import CellErrors

    err = CellErrors({"a": RuntimeError("\x1b[36m(pid=1)\x1b[0m ValueError: boom")})
    assert "\x1b" not in str(err) and "ValueError: boom" in str(err)
