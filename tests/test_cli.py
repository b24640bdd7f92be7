"""The ``sde-sam`` command: parsing, a tiny weak-error study end to end, resuming, and argument errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from sde_sam import cli

TINY = ["weak-error", "--lrs", "0.1,0.05", "--horizon", "0.2", "--paths", "1024", "--orders", "0,1",
        "--test-functions", "loss,x_norm_sq"]


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


def test_weak_error_exact_mode_fixed_rho_and_other_methods(tmp_path, capsys):
    out = tmp_path / "exact"
    assert cli.main([*TINY, "--mode", "auto", "--rho-power", "0", "--rho", "0.1", "--out", str(out)]) == 0
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
