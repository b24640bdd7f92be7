"""The ``sde-sam`` command: parsing, a tiny weak-error study end to end, resuming, and argument errors
(one-line messages, exit status 2, values as typed), in process and through real subprocesses."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from sde_sam import cli

TINY = ["weak-error", "--lrs", "0.1,0.05", "--horizon", "0.2", "--paths", "1024", "--orders", "0,1",
        "--test-functions", "loss,x_norm_sq", "--mode", "monte_carlo"]


@pytest.mark.slow
def test_weak_error_runs_and_writes_files(tmp_path, capsys):
    out = tmp_path / "we"
    assert cli.main([*TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max gap" in printed and "fit: order 1, loss: slope" in printed and "wrote" in printed
    for name in ("weak_error.png", "table.csv", "config.json", "summary.txt", "cells.csv", "solver_error.csv"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table.csv")
    assert set(table["model"]) == {"order 0", "order 1"} and set(table["lr"]) == {0.1, 0.05}
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == "monte_carlo" and config["n_paths"] == 1024
    assert config["rho_spec"] == "rho = 0.5·lr^0.5"
    # A second run resumes from the saved cells.
    assert cli.main([*TINY, "--out", str(out)]) == 0
    assert (pd.read_csv(out / "cells.csv")["source"] == "loaded").all()
    pd.testing.assert_frame_equal(pd.read_csv(out / "table.csv"), table)


@pytest.mark.slow
def test_weak_error_exact_mode_fixed_rho_and_other_methods(tmp_path, capsys):
    out = tmp_path / "exact"
    exact = [a for a in TINY if a not in ("--mode", "monte_carlo")]  # the default mode is auto, as in the API
    assert cli.main([*exact, "--rho-power", "0", "--rho", "0.1", "--out", str(out)]) == 0
    assert "(exact)" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == "exact" and config["rho_spec"] == "rho = 0.1"
    assert cli.main(["--threads", "1", "weak-error", "--method", "sgd", "--lrs", "0.1,0.05", "--horizon", "0.2",
                     "--paths", "1024", "--orders", "0", "--problem", "saddle", "--test-functions", "loss",
                     "--no-solver-check", "--out", str(tmp_path / "sgd")]) == 0
    assert not (tmp_path / "sgd" / "solver_error.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["weak-error", "--orders", "0,3"], "orders must be among"),
    (["weak-error", "--lrs", "0.1,x"], "expected comma-separated numbers"),
    (["weak-error", "--problem", "mnist"], "invalid choice"),
    (["weak-error", "--method", "adam"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments_exit_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0 and "weak-error" in capsys.readouterr().out


def _cli(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sde_sam", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["weak-error", "--paths", "0"], "argument --paths: must be >= 4, got 0"),
    (["--threads", "0", "weak-error"], "argument --threads: must be >= 1, got 0"),
    (["weak-error", "--rho", "-1"], "argument --rho: must be >= 0, got -1"),
    (["weak-error", "--rho", "-0.50"], "argument --rho: must be >= 0, got -0.50"),  # as typed, not the derived rho
    (["weak-error", "--lrs", "0.1,-0.05"], "argument --lrs: learning rates must be finite and > 0, got '0.1,-0.05'"),
    (["weak-error", "--lrs", "0.1,0.1"], "argument --lrs: learning rates must be distinct, got '0.1,0.1'"),
    (["weak-error", "--lrs", "0.1"], "argument --lrs: need at least two learning rates to fit a weak order, got '0.1'"),
    (["weak-error", "--lrs", "0.1,x"], "argument --lrs: expected comma-separated numbers, got '0.1,x'"),
    (["weak-error", "--horizon", "0"], "argument --horizon: must be > 0, got 0"),
    (["weak-error", "--paths", "2.5"], "argument --paths: expected an integer, got '2.5'"),
    (["weak-error", "--method", "unifiedsam", "--lam", "2"], "argument --lam: must be in [0, 1], got 2"),
    (["weak-error", "--lrs", "0.1,0.05", "--horizon", "0.07"], "argument --horizon: `horizon` must be >= the largest lr"),
    (["weak-error", "--lrs", "0.1,,0.05"], "argument --lrs: empty entry in the comma-separated list '0.1,,0.05'"),
    (["weak-error", "--paths", "2"], "argument --paths: must be >= 4, got 2"),
    (["weak-error", "--lrs", "0.1,0.05", "--horizon", "1e308"], "argument --horizon: `horizon`=1e+308 means inf steps"),
    (["weak-error", "--test-functions", "grad_norm", "--mode", "exact"], "argument --test-functions: no test function"),
    (["weak-error", "--problem", "teacher_student", "--orders", "1", "--dt-ratio", "1", "--paths", "64"],
     "argument --dt-ratio: `dt_ratio`=1 makes dt = lr"),
    (["reproduce", "all", "--results", __file__], "argument --results: "),
    pytest.param(["weak-error", "--coupling", "--problem", "linear_regression", "--orders", "1"],
                 "`coupling=True` does not apply", id="coupling-needs-gaussian-noise",
                 marks=pytest.mark.skipif(not cli._weak_error_accepts("coupling"), reason="no coupling= yet")),
])
def test_errors_are_one_line_messages_with_exit_status_2(argv, message, _entry_point_errors):
    code, stderr = _entry_point_errors[json.dumps(argv)]
    assert code == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("python -m sde_sam") and ": error: " in last and message in last, stderr
    assert "Traceback" not in stderr


# The cases above run in ONE child process (a fresh interpreter costs ~5 s of imports per case on 2 cores), each
# through the real ``python -m sde_sam`` entry point (runpy, as ``-m`` does), its exit status and stderr captured;
# an exception other than SystemExit is recorded with its traceback, as a crashed process would print it.
_CHILD = """
import contextlib, io, json, runpy, sys, traceback, warnings
out = {}
for argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    sys.argv = ["python -m sde_sam", *argv]
    with contextlib.redirect_stderr(err), warnings.catch_warnings():
        try:
            runpy.run_module("sde_sam", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    out[json.dumps(argv)] = [code, err.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def _entry_point_errors(request):
    marks = test_errors_are_one_line_messages_with_exit_status_2.pytestmark
    cases = next(m for m in marks if m.name == "parametrize").args[1]
    argvs = [case.values[0] if hasattr(case, "values") else case[0] for case in cases]
    result = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(argvs), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_results_folder_clash_names_out(tmp_path):
    out = tmp_path / "we"
    tiny = ["weak-error", "--lrs", "0.1,0.05", "--horizon", "0.1", "--test-functions", "loss", "--orders", "0",
            "--no-solver-check", "--mode", "monte_carlo", "--out", str(out)]
    assert _cli(*tiny, "--paths", "64").returncode == 0
    result = _cli(*tiny, "--paths", "128")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"argument --out: {out} holds a study with other settings" in last and "n_paths" in last
    assert "pass another --out" in last


@pytest.mark.slow
def test_default_output_folder_per_problem_and_method(tmp_path):
    result = _cli("--threads", "1", "weak-error", "--lrs", "0.1,0.05", "--horizon", "0.1", "--orders", "0,1",
                  "--no-solver-check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "results" / "weak_error" / "quadratic_usam" / "table.csv").exists()
    assert "(exact)" in result.stdout  # mode auto, as in the API: USAM on a quadratic is linear-Gaussian
    assert "warning" not in result.stderr  # the exact mode's default test functions need no warning
    other = _cli("--threads", "1", "weak-error", "--method", "sgd", "--lrs", "0.1,0.05", "--horizon", "0.1",
                 "--orders", "0", "--no-solver-check", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert (tmp_path / "results" / "weak_error" / "quadratic_sgd" / "table.csv").exists()


@pytest.mark.slow
def test_version_and_module_entry_point():
    import sde_sam

    result = _cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"python -m sde_sam {sde_sam.__version__}"


def test_help_texts_complete(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["weak-error", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    assert "95% CI" in text and "%%" not in text and "(default: None)" not in text
    assert "the discrete method (default: usam)" in text
    assert "--seed SEED" in text and "random seed" in text
    assert "(default: auto)" in text  # the API's default mode
    import inspect

    from sde_sam.weak import weak_error
    api = inspect.signature(weak_error).parameters
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["weak-error"]
    defaults = {a.dest: a.default for a in sub._actions}
    assert defaults["mode"] == api["mode"].default
    assert int(defaults["paths"]) == api["n_paths"].default and int(defaults["seed"]) == api["seed"].default
    assert int(defaults["dt_ratio"]) == api["dt_ratio"].default


@pytest.mark.skipif(not cli._weak_error_accepts("coupling"), reason="weak_error has no coupling= yet")
def test_coupling_flag_is_passed_through(tmp_path, capsys):
    out = tmp_path / "coupled"
    assert cli.main(["weak-error", "--coupling", "--mode", "monte_carlo", "--lrs", "0.1,0.05", "--horizon", "0.1",
                     "--paths", "256", "--orders", "1", "--test-functions", "loss", "--no-solver-check",
                     "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text()).get("coupling") is True


@pytest.mark.slow
def test_method_options_reach_the_study(tmp_path, capsys):
    """--lr-schedule, --weight-decay, --momentum: the method the study runs (exact mode, a cosine on the SDE clock)."""
    out = tmp_path / "sched"
    assert cli.main(["--threads", "1", "weak-error", "--lrs", "0.1,0.05", "--lr-schedule", "cosine",
                     "--weight-decay", "0.1", "--momentum", "0.5", "--orders", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    text = json.dumps(config)
    assert "cosine" in text and "0.1" in text and config["mode"] == "exact"


@pytest.mark.parametrize("argv, message", [
    (["weak-error", "--momentum", "1.5"], "argument --momentum: `momentum` must be a number in [0, 1)"),
    (["weak-error", "--method", "sgd", "--micro-batch", "2"], "argument --micro-batch: m-SAM is an option"),
    (["weak-error", "--micro-batch", "2"], "needs a mini-batch problem"),
    (["weak-error", "--lr-schedule", "steps"], "invalid choice"),
])
def test_method_option_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--out", str(tmp_path / "o")])
    assert info.value.code == 2 and message in capsys.readouterr().err
