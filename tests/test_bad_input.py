"""Bad input, API and CLI, in one table (issue 19): each case is refused before any work with the exception
type (API) or exit status 2 and a one-line ``argument --flag: ...`` message (CLI), naming what was wrong.

Every row either failed on the code before issue 19 (a silent result, a traceback, an error deep inside a
run) or guards a refusal that already existed. Plus the divergence and numerical cases of ``Trajectory``
(issue 19 items 4 and 7): every path diverged gives NaN and the counts, ``sem`` is finite near the float64
limit, and bit for bit the plain statistics elsewhere.
"""
from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sde_sam as ss
from sde_sam import cli
from sde_sam.problems import linear_regression, teacher_student

F64, F32 = torch.float64, torch.float32


# -- small problems (cheap to build in every case) ---------------------------------------------------------------
def _quad(dtype=F64) -> ss.Quadratic:
    return ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5, 0.25], dtype=dtype)), noise_cov=0.01)


def _x0(dtype=F64) -> torch.Tensor:
    return torch.ones(3, dtype=dtype)


def _lin() -> ss.FiniteSum:
    return linear_regression(n=8, d=3, batch_size=2)


def _data(**change):
    """Features and targets of a small regression, float64, with entries changed by ``change``."""
    gen = torch.Generator().manual_seed(0)
    A, y = torch.randn(8, 3, generator=gen, dtype=F64), torch.randn(8, generator=gen, dtype=F64)
    return change.get("A", A), change.get("y", y)


def _sq(x, s):
    return 0.5 * (s[0] @ x - s[1]) ** 2


def _with_nan(t: torch.Tensor, at=(2,)) -> torch.Tensor:
    t = t.clone()
    t[at] = math.nan
    return t


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


def _xy():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=gen, dtype=F64), torch.randint(2, (8,), generator=gen)


def _bad_weight_mse(out, t):
    return F.mse_loss(out, t, weight=torch.ones(out.shape[-1], dtype=out.dtype))  # (2,), not out's (1, 2)


def _save(tmp, **fields):
    """A trajectory file with the fields of a valid 2-path, 3-record run, changed by ``fields``."""
    base = {"times": torch.arange(3, dtype=F64), "values": {"loss": torch.zeros(3, 2, dtype=F64)},
            "x_final": torch.zeros(2, 3, dtype=F64), "diverged": torch.zeros(2, dtype=torch.bool),
            "diverged_at": torch.full((2,), math.nan, dtype=F64), "guard_count": 0, "info": {}, "draws": None,
            "diverged_reason": ["", ""]}
    base.update(fields)
    for key in [k for k, v in fields.items() if v is _DROP]:
        del base[key]
    path = tmp / "traj.pt"
    torch.save(base, path)
    return path


_DROP = object()


def _two_draw_study(**kw):
    prob = teacher_student(n=8, d_in=2, width=2)
    return ss.weak_error(prob, ss.USAM(0.1, 0.1), lrs=[0.1, 0.05], horizon=0.1, x0=prob.x_init, n_paths=64,
                         sde_order=1, **kw)


def _sde():
    return ss.sde_model(_quad(), ss.USAM(0.1, 0.1), order=1)


# -- the API table: (id, call(tmp), exception type, regex the message must match) ---------------------------------
n4 = torch.ones(4, 3, dtype=F64)
z4 = torch.zeros(4, 3, dtype=F64)
API = [
    # ss.step: the draw format, strictly (Gaussian noise vectors (n, d); mini-batch indices (n, B) int64 in 0..n-1)
    ("step noise float32", lambda t: ss.step(_quad(), ss.SGD(0.1), n4, torch.zeros(4, 3)),
     ValueError, r"`draws` must have dtype torch.float64 \(noise vectors\), got torch.float32"),
    ("step noise (n, d-1)", lambda t: ss.step(_quad(), ss.SGD(0.1), n4, torch.zeros(4, 2, dtype=F64)),
     ValueError, r"`draws` must have leading dims n = 4 and \(3,\) per draw .*got shape \(4, 2\)"),
    ("step noise (n, d, 1)", lambda t: ss.step(_quad(), ss.SAM(0.1, 0.1), n4, torch.zeros(4, 3, 1, dtype=F64)),
     ValueError, r"`draws` must have leading dims n = 4 .*got shape \(4, 3, 1\)"),
    ("step noise ndarray", lambda t: ss.step(_quad(), ss.SGD(0.1), n4, np.zeros((4, 3))),
     TypeError, r"`draws` must be a tensor .*got ndarray"),
    ("step noise tuple", lambda t: ss.step(_quad(), ss.SGD(0.1), n4, (torch.zeros(4, 3, dtype=F64),)),
     TypeError, r"`draws` must be a tensor"),
    ("step noise leading dim", lambda t: ss.step(_quad(), ss.SGD(0.1), n4, torch.zeros(3, 3, dtype=F64)),
     ValueError, r"`draws` must have leading dim n=4"),
    ("step indices int32", lambda t: ss.step(_lin(), ss.SGD(0.1), z4, torch.zeros(4, 2, dtype=torch.int32)),
     ValueError, r"`draws` must have dtype torch.int64 \(mini-batch indices\), got torch.int32"),
    ("step indices float", lambda t: ss.step(_lin(), ss.SGD(0.1), z4, torch.zeros(4, 2)),
     ValueError, r"`draws` must have dtype torch.int64"),
    ("step index n", lambda t: ss.step(_lin(), ss.SGD(0.1), z4, torch.full((4, 2), 8)),
     ValueError, r"`draws` must be sample indices in 0\.\.7 \(n=8\), got values in 0?8?\.\.8"),
    ("step index -1", lambda t: ss.step(_lin(), ss.SAM(0.1, 0.1), z4, torch.tensor([[0, 1]] * 3 + [[-1, 2]])),
     ValueError, r"`draws` must be sample indices in 0\.\.7 \(n=8\), got values in -1\.\.2"),
    ("step batch size 3 for B=2", lambda t: ss.step(_lin(), ss.SGD(0.1), z4, torch.zeros(4, 3, dtype=torch.long)),
     ValueError, r"`draws` must have leading dims n = 4 and \(2,\) per draw \(mini-batch indices\)"),
    ("step indices 1-d", lambda t: ss.step(_lin(), ss.SGD(0.1), z4, torch.zeros(4, dtype=torch.long)),
     ValueError, r"\(2,\) per draw .*got shape \(4,\)"),
    # ss.run(draws=): the same format with leading dims (steps, n_paths)
    ("run draws steps", lambda t: ss.run(_quad(), ss.SGD(0.1), _x0(), steps=5, n_paths=4,
                                         draws=torch.zeros(4, 4, 3, dtype=F64)),
     ValueError, r"`draws` must have leading dims \(steps, n_paths\) = \(5, 4\)"),
    ("run draws n_paths", lambda t: ss.run(_quad(), ss.SGD(0.1), _x0(), steps=5, n_paths=4,
                                           draws=torch.zeros(5, 3, 3, dtype=F64)),
     ValueError, r"`draws` must have leading dims \(steps, n_paths\) = \(5, 4\)"),
    ("run draws dtype", lambda t: ss.run(_quad(), ss.SGD(0.1), _x0(), steps=5, n_paths=4,
                                         draws=torch.zeros(5, 4, 3)),
     ValueError, r"`draws` must have dtype torch.float64"),
    ("run draws index range", lambda t: ss.run(_lin(), ss.SGD(0.1), torch.zeros(3, dtype=F64), steps=2, n_paths=4,
                                               draws=torch.full((2, 4, 2), 9)),
     ValueError, r"`draws` must be sample indices in 0\.\.7 \(n=8\), got values in 9\.\.9"),
    ("run draws batch size", lambda t: ss.run(_lin(), ss.SGD(0.1), torch.zeros(3, dtype=F64), steps=2, n_paths=4,
                                              draws=torch.zeros(2, 4, 1, dtype=torch.long)),
     ValueError, r"`draws` must have leading dims \(steps, n_paths\) = \(2, 4\) and \(2,\) per draw"),
    # up-front sizes: the estimate in the message, before any allocation
    ("run recordings", lambda t: ss.run(_quad(), ss.SGD(0.1), _x0(), steps=10**9, n_paths=10**6),
     ValueError, r"`steps`: 1000000000 steps recorded every 1 .*need about [\d.]+ PiB, more than the"),
    ("run states", lambda t: ss.run(_quad(), ss.SGD(0.1), _x0(), steps=2, n_paths=10**12),
     ValueError, r"`n_paths`=1000000000000 with d=3: the states .* need about [\d.]+ TiB"),
    ("run kept draws", lambda t: ss.run(_quad(), ss.SGD(0.1), _x0(), steps=10**6, n_paths=10**5,
                                        record_every=10**6, keep_draws=True),
     ValueError, r"`keep_draws`=True with steps=1000000 and n_paths=100000: the kept draws need about"),
    ("run steps over 2**53", lambda t: ss.run(_quad(), ss.SGD(0.1), _x0(), steps=2**60, record_every=2**60),
     ValueError, r"`steps`=1152921504606846976 means .* more than the 9\.01e\+15 \(2\*\*53\)"),
    ("simulate t1 1e308", lambda t: ss.simulate(_sde(), _x0(), t1=1e308, dt=1e-3),
     ValueError, r"`t1`=1e\+308 means inf solver steps"),
    ("simulate recordings", lambda t: ss.simulate(_sde(), _x0(), t1=1e5, dt=1e-3, n_paths=10**6),
     ValueError, r"`t1`: 100000000 steps recorded every 1 .*need about"),
    ("simulate states", lambda t: ss.simulate(_sde(), _x0(), t1=0.1, dt=0.01, n_paths=10**12),
     ValueError, r"`n_paths`=1000000000000 with d=3"),
    ("weak_error horizon 1e308", lambda t: ss.weak_error(_quad(), ss.USAM(0.1, 0.1), lrs=[0.1, 0.05],
                                                         horizon=1e308, x0=_x0()),
     ValueError, r"`horizon`=1e\+308 means inf steps at lr=0\.05"),
    ("weak_error exact recordings", lambda t: ss.weak_error(_quad(), ss.USAM(0.1, 0.1), lrs=[0.1, 0.05],
                                                            horizon=1e9, x0=_x0()),
     ValueError, r"`horizon`=1000000000\.0 at lr=0\.05 .*the recordings \(\d+ rows\) need about"),
    ("weak_error states", lambda t: ss.weak_error(_quad(), ss.USAM(0.1, 0.1), lrs=[0.1, 0.05], horizon=1.0,
                                                  x0=_x0(), n_paths=10**12, mode="monte_carlo"),
     ValueError, r"`n_paths`=1000000000000 with d=3: the states"),
    ("weak_error dt_ratio huge", lambda t: ss.weak_error(_quad(), ss.USAM(0.1, 0.1), lrs=[0.1, 0.05], horizon=1.0,
                                                         x0=_x0(), dt_ratio=10**17),
     ValueError, r"`dt_ratio`=100000000000000000 means .* solver steps"),
    ("weak_error n_paths 2", lambda t: ss.weak_error(_quad(), ss.USAM(0.1, 0.1), lrs=[0.1, 0.05], horizon=1.0,
                                                     x0=_x0(), n_paths=2),
     ValueError, r"`n_paths` must be an integer >= 4, got n_paths=2"),
    # weak_error(dt_ratio=1) with a model integrated by the two-draw scheme: before the first cell
    ("weak_error dt_ratio 1 two-draw", lambda t: _two_draw_study(dt_ratio=1, results_dir=t / "never"),
     ValueError, r"`dt_ratio`=1 makes dt = lr, but the order 1 model of USAM on FiniteSum.* two-draw weak scheme"),
    ("simulate two-draw dt = lr", lambda t: ss.simulate(ss.sde_model(teacher_student(n=8, d_in=2, width=2),
                                                                     ss.USAM(0.1, 0.1), order=1),
                                                        teacher_student(n=8, d_in=2, width=2).x_init,
                                                        t1=0.2, dt=0.1),
     ValueError, r"the two-draw weak scheme \(MATH §4\.1\) needs dt < lr"),
    # FiniteSum data: finite, one floating dtype, a floating tensor at all
    ("FiniteSum NaN feature", lambda t: ss.FiniteSum(_sq, _data(A=_with_nan(_data()[0])), d=3),
     ValueError, r"`data\[0\]` must be finite, got NaN or inf in 1 sample\(s\), the first at index 2"),
    ("FiniteSum inf target", lambda t: ss.FiniteSum(_sq, _data(y=_data()[1].index_fill(0, torch.tensor([5]), math.inf))),
     ValueError, r"`data\[1\]` must be finite, got NaN or inf in 1 sample\(s\), the first at index 5"),
    ("FiniteSum NaN single tensor", lambda t: ss.FiniteSum(lambda x, s: (s * x).sum(), _with_nan(torch.ones(4, 3)),
                                                           d=3),
     ValueError, r"`data` must be finite"),
    ("FiniteSum mixed float dtypes", lambda t: ss.FiniteSum(_sq, (_data()[0].float(), _data()[1])),
     ValueError, r"`data` mixes floating dtypes \(data\[0\]: torch.float32, data\[1\]: torch.float64\)"),
    ("FiniteSum integer features", lambda t: ss.FiniteSum(_sq, (torch.ones(8, 3, dtype=torch.long),
                                                                 torch.ones(8, dtype=torch.long)), d=3),
     ValueError, r"`data` has no floating tensor \(dtypes \['torch.int64', 'torch.int64'\]\)"),
    ("FiniteSum complex data", lambda t: ss.FiniteSum(_sq, (_data()[0].to(torch.complex128), _data()[1])),
     ValueError, r"`data\[0\]` has complex dtype torch.complex128"),
    # module problems: the same data checks, integer features named, torch's loss checks kept
    ("from_module NaN inputs", lambda t: ss.FiniteSum.from_module(_model(), F.cross_entropy,
                                                                  (_with_nan(_xy()[0]), _xy()[1]), batch_size=2),
     ValueError, r"`data\[0\]` must be finite, got NaN or inf in 1 sample\(s\), the first at index 2"),
    ("from_module inf targets", lambda t: ss.FiniteSum.from_module(_model(), F.mse_loss,
                                                                   (_xy()[0], torch.full((8, 2), math.inf, dtype=F64)),
                                                                   batch_size=2),
     ValueError, r"`data\[1\]` must be finite, got NaN or inf in 8 sample\(s\)"),
    ("from_module integer features", lambda t: ss.FiniteSum.from_module(_model(), F.cross_entropy,
                                                                        (_xy()[0].long(), _xy()[1]), batch_size=2),
     ValueError, r"the model failed on the integer input `data\[0\]` \(dtype torch.int64\)"),
    ("from_module float32 data", lambda t: ss.FiniteSum.from_module(_model(), F.cross_entropy,
                                                                    (_xy()[0].float(), _xy()[1]), batch_size=2),
     ValueError, r"`data\[0\]` has dtype torch.float32 but the model's parameters are torch.float64"),
    ("Objective.from_module NaN", lambda t: ss.Objective.from_module(_model(), F.cross_entropy,
                                                                     (_with_nan(_xy()[0]), _xy()[1])),
     ValueError, r"`data\[0\]` must be finite"),
    ("from_module mse weight shape", lambda t: ss.FiniteSum.from_module(_model(), _bad_weight_mse,
                                                                        (_xy()[0], torch.zeros(8, 2, dtype=F64)),
                                                                        batch_size=2),
     ValueError, r"Weights and input must have the same size"),
    # noise_cov: a tensor of another dtype is refused, never cast
    ("Quadratic float32 noise_cov", lambda t: ss.Quadratic(torch.eye(3, dtype=F64), noise_cov=torch.ones(3)),
     ValueError, r"`noise_cov` has dtype torch.float32 but the problem uses torch.float64"),
    ("Quadratic float32 noise_cov matrix", lambda t: ss.Quadratic(torch.eye(3, dtype=F64), noise_cov=torch.eye(3)),
     ValueError, r"`noise_cov` has dtype torch.float32"),
    ("Objective float64 noise_cov", lambda t: ss.Objective(lambda x: (x**2).sum(), 3,
                                                           noise_cov=torch.tensor(0.1, dtype=F64)),
     ValueError, r"`noise_cov` has dtype torch.float64 but the problem uses torch.float32"),
    ("module Objective float32 noise_cov", lambda t: ss.Objective.from_module(_model(), F.cross_entropy, _xy(),
                                                                              noise_cov=torch.tensor(0.1)),
     ValueError, r"`noise_cov` has dtype torch.float32 but the problem uses torch.float64"),
    # Trajectory.load: every field's type and shape
    ("load missing field", lambda t: ss.Trajectory.load(_save(t, x_final=_DROP)),
     ValueError, r"traj.pt is not a valid trajectory file: missing fields \['x_final'\]"),
    ("load unknown field", lambda t: ss.Trajectory.load(_save(t, extra=1)),
     ValueError, r"unknown fields \['extra'\]"),
    ("load not a dict", lambda t: ss.Trajectory.load(_save_raw(t, [1, 2])),
     ValueError, r"`<file>` must be a dict of the Trajectory fields, got list"),
    ("load values shape", lambda t: ss.Trajectory.load(_save(t, values={"loss": torch.zeros(2, 2, dtype=F64)})),
     ValueError, r"`values\['loss'\]` must be a floating \(records, n_paths\) = \(3, 2\) tensor"),
    ("load values not tensors", lambda t: ss.Trajectory.load(_save(t, values={"loss": [0.0, 1.0]})),
     ValueError, r"`values\['loss'\]` must be a floating"),
    ("load diverged not bool", lambda t: ss.Trajectory.load(_save(t, diverged=torch.zeros(2))),
     ValueError, r"`diverged` must be a 1-d bool tensor"),
    ("load x_final n_paths", lambda t: ss.Trajectory.load(_save(t, x_final=torch.zeros(3, 3, dtype=F64))),
     ValueError, r"`x_final` must be a floating \(n_paths, d\) tensor with n_paths=2"),
    ("load times ints", lambda t: ss.Trajectory.load(_save(t, times=torch.arange(3))),
     ValueError, r"`times` must be a 1-d floating tensor"),
    ("load guard_count str", lambda t: ss.Trajectory.load(_save(t, guard_count="3")),
     ValueError, r"`guard_count` must be an integer >= 0, got str"),
    ("load reasons ints", lambda t: ss.Trajectory.load(_save(t, diverged_reason=[0, 1])),
     ValueError, r"`diverged_reason` must be a list of strings"),
    ("load diverged_at shape", lambda t: ss.Trajectory.load(_save(t, diverged_at=torch.zeros(3, dtype=F64))),
     ValueError, r"`diverged_at` must be a floating \(2,\) tensor"),
    # x0 (guards)
    ("run x0 NaN", lambda t: ss.run(_quad(), ss.SGD(0.1), torch.tensor([1.0, math.nan, 0.0], dtype=F64), steps=2),
     ValueError, r"`x0` must be finite"),
    ("run x0 float32", lambda t: ss.run(_quad(), ss.SGD(0.1), _x0(F32), steps=2),
     ValueError, r"`x0` has dtype torch.float32 but the problem uses torch.float64"),
]


def _save_raw(tmp, obj):
    path = tmp / "raw.pt"
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("case, call, error, match", API, ids=[c[0] for c in API])
def test_api_refuses_bad_input(case, call, error, match, tmp_path):
    with pytest.raises(error, match=match):
        call(tmp_path)
    assert not (tmp_path / "never").exists()  # refused before the first cell: nothing written


# -- the CLI table: (id, argv with {file}/{corrupt}/{listcfg}/{locked} placeholders, flag, regex) ----------------
Q = ["weak-error", "--lrs", "0.1,0.05", "--horizon", "0.1", "--orders", "0", "--no-solver-check"]
TS = ["weak-error", "--problem", "teacher_student", "--lrs", "0.1,0.05", "--horizon", "0.1", "--orders", "1",
      "--paths", "64", "--no-solver-check"]
CLI = [
    ("out is a file", [*Q, "--out", "{file}"], "--out", r"\S+afile is a file, not a folder"),
    ("out under a file", [*Q, "--out", "{file}/sub"], "--out", r"cannot create \S+afile/sub: \S+afile is a file"),
    ("out not writable", [*Q, "--out", "{locked}/sub"], "--out", r"cannot write into \S+locked \(permission denied\)"),
    ("out corrupt config.json", [*Q, "--out", "{corrupt}"], "--out",
     r"\S+corrupt/config.json is not a study's config \(Expecting property name"),
    ("out config.json not an object", [*Q, "--out", "{listcfg}"], "--out", r"config.json is not a study's config "
                                                                            r"\(not a JSON object\)"),
    ("horizon 1e308", ["weak-error", "--lrs", "0.1,0.05", "--horizon", "1e308"], "--horizon",
     r"`horizon`=1e\+308 means inf steps"),
    ("horizon 1e9 exact", ["weak-error", "--lrs", "0.1,0.05", "--horizon", "1e9"], "--horizon",
     r"`horizon`=1000000000\.0 .*need about"),
    ("horizon below an lr", ["weak-error", "--lrs", "0.1,0.05", "--horizon", "0.07"], "--horizon",
     r"`horizon` must be >= the largest lr"),
    ("grad_norm in exact mode", [*Q, "--test-functions", "grad_norm", "--mode", "exact"], "--test-functions",
     r"no test function left for exact mode; it supports \('loss', 'x_norm_sq'\)"),
    ("grad_norm in auto (exact) mode", [*Q, "--test-functions", "grad_norm"], "--test-functions",
     r"no test function left for exact mode"),
    ("unknown test function", [*Q, "--test-functions", "hessian", "--mode", "monte_carlo"], "--test-functions",
     r"`test_functions` entries must be one of"),
    ("test functions empty entry", [*Q, "--test-functions", "loss,,x_norm_sq"], "--test-functions",
     r"empty entry in the comma-separated list 'loss,,x_norm_sq'"),
    ("test functions repeated", [*Q, "--test-functions", "loss,loss"], "--test-functions",
     r"names must be distinct, got 'loss,loss'"),
    ("dt-ratio 1 two-draw", [*TS, "--dt-ratio", "1"], "--dt-ratio", r"`dt_ratio`=1 makes dt = lr, .*two-draw"),
    ("dt-ratio 1e17", ["weak-error", "--lrs", "0.1,0.05", "--dt-ratio", "100000000000000000"], "--dt-ratio",
     r"`dt_ratio`=100000000000000000 means"),
    ("lrs empty entry", ["weak-error", "--lrs", "0.1,,0.2"], "--lrs", r"empty entry in the comma-separated list "
                                                                      r"'0\.1,,0\.2'"),
    ("lrs trailing comma", ["weak-error", "--lrs", "0.1,0.05,"], "--lrs", r"empty entry"),
    ("lrs one", ["weak-error", "--lrs", "0.1"], "--lrs", r"need at least two learning rates"),
    ("lrs nan", ["weak-error", "--lrs", "0.1,nan"], "--lrs", r"learning rates must be finite and > 0"),
    ("paths 2", [*Q, "--paths", "2", "--mode", "monte_carlo"], "--paths", r"must be >= 4, got 2"),
    ("paths 3", [*Q, "--paths", "3"], "--paths", r"must be >= 4, got 3"),
    ("paths 1e12", [*Q, "--paths", "1000000000000", "--mode", "monte_carlo"], "--paths",
     r"`n_paths`=1000000000000 with d=2: the states .*need about"),
    ("orders repeated", ["weak-error", "--orders", "0,0"], "--orders", r"orders must be distinct, got '0,0'"),
    ("orders empty entry", ["weak-error", "--orders", "0,"], "--orders", r"empty entry"),
    ("orders 3", ["weak-error", "--orders", "0,3"], "--orders", r"orders must be among 0, 1, 2, exact; got '3'"),
    ("seed negative", ["weak-error", "--seed", "-1"], "--seed", r"must be >= 0, got -1"),
    ("dt-ratio 0", ["weak-error", "--dt-ratio", "0"], "--dt-ratio", r"must be >= 1, got 0"),
    ("reproduce results a file", ["reproduce", "all", "--results", "{file}"], "--results",
     r"\S+afile is a file, not a folder"),
    ("reproduce results under a file", ["reproduce", "saddle_attraction", "--results", "{file}/r"], "--results",
     r"cannot create \S+afile/r: \S+afile is a file"),
    ("reproduce figs a file", ["reproduce", "all", "--figs", "{file}", "--results", "{corrupt}"], "--figs",
     r"\S+afile is a file, not a folder"),
]


@pytest.fixture
def places(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    for name, text in (("corrupt", "{bad json"), ("listcfg", "[1, 2]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    yield {"file": str(tmp_path / "afile"), "corrupt": str(tmp_path / "corrupt"),
           "listcfg": str(tmp_path / "listcfg"), "locked": str(locked)}
    locked.chmod(0o700)


@pytest.mark.parametrize("case, argv, flag, match", CLI, ids=[c[0] for c in CLI])
def test_cli_refuses_bad_input_with_one_line_and_status_2(case, argv, flag, match, places, tmp_path, monkeypatch,
                                                          capsys):
    if case == "out not writable" and os.geteuid() == 0:  # root writes anywhere: deny as a user's folder would
        locked = places["locked"]
        monkeypatch.setattr(cli.os, "access", lambda p, mode: os.fspath(p) != locked and os.access(p, mode))
    monkeypatch.chdir(tmp_path)  # default --out folders (results/...) land here
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as info:
        cli.main([a.format(**places) for a in argv], prog="sde-sam")
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err  # one line, the last
    assert errors[0].startswith("sde-sam ") and f": error: argument {flag}: " in errors[0], errors[0]
    assert re.search(match, errors[0]), errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no work done: nothing written


def test_the_table_has_at_least_60_cases():
    assert len(API) + len(CLI) >= 60 and len({c[0] for c in API + CLI}) == len(API) + len(CLI)


def test_corrupt_config_json_is_left_untouched(places):
    with pytest.raises(SystemExit):
        cli.main([*Q, "--out", places["corrupt"]])
    with open(os.path.join(places["corrupt"], "config.json")) as f:
        assert f.read() == "{bad json"  # the user's file is reported, never rewritten


# -- Trajectory: divergence reported, statistics stable ---------------------------------------------------------------
def _traj(values: torch.Tensor, diverged: torch.Tensor) -> ss.Trajectory:
    n = values.shape[1]
    return ss.Trajectory(times=torch.arange(values.shape[0], dtype=F64), values={"loss": values},
                         x_final=torch.zeros(n, 2, dtype=F64), diverged=diverged,
                         diverged_at=torch.where(diverged, 0.0, math.nan).to(F64),
                         diverged_reason=["state" if d else "" for d in diverged.tolist()],
                         info={"kind": "discrete", "lr": 0.1})


def test_every_path_diverged_gives_nan_and_the_counts():
    """A real run where every path overflows: NaN statistics and the counts, not IndexError."""
    prob = ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.01)
    traj = ss.run(prob, ss.SGD(3.0), torch.ones(2, dtype=F64), steps=700, n_paths=5, seed=0)
    assert traj.n_diverged == 5
    for stat in (traj.mean, traj.sem, traj.var):
        out = stat("loss")
        assert out.shape == traj.times.shape and bool(out.isnan().all()), stat.__name__
    frame = traj.to_frame()
    assert len(frame) == len(traj.times) and frame["mean"].isna().all() and frame["sem"].isna().all()
    assert (frame["n_paths"] == 0).all() and (frame["n_diverged"] == 5).all()
    one = _traj(torch.ones(2, 3, dtype=F64), torch.tensor([True, False, True]))  # one survivor: a mean, no SE
    assert torch.equal(one.mean("loss"), torch.ones(2, dtype=F64)) and bool(one.sem("loss").isnan().all())


@pytest.mark.slow
def test_sem_is_finite_near_the_float64_limit_and_bit_identical_elsewhere():
    big = torch.tensor([[1e293, 2e293, 3e293, 4e293]], dtype=F64)
    traj = _traj(big, torch.zeros(4, dtype=torch.bool))
    # mean 2.5e293, sample sd sqrt(5/3)e293: the plain std overflows (its squares are 1e586)
    assert math.isinf(float(big.std(dim=1)))
    torch.testing.assert_close(traj.mean("loss"), torch.tensor([2.5e293], dtype=F64), rtol=1e-15, atol=0)
    torch.testing.assert_close(traj.sem("loss"), torch.tensor([math.sqrt(5 / 3) * 1e293 / 2], dtype=F64),
                               rtol=1e-14, atol=0)
    near_max = _traj(torch.tensor([[1.7e308, 1.6e308]], dtype=F64), torch.zeros(2, dtype=torch.bool))
    assert math.isfinite(float(near_max.mean("loss"))) and math.isfinite(float(near_max.sem("loss")))
    # Ordinary values: exactly torch's mean / std / var over the surviving paths (power-of-two scaling is exact).
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 1e-3, 1e5, 3.7, -2.0e10], dtype=F64)[:, None]
    values = torch.randn(5, 999, generator=gen, dtype=F64) * scales
    diverged = torch.zeros(999, dtype=torch.bool)
    diverged[::7] = True
    traj = _traj(values, diverged)
    kept = values[:, ~diverged]
    assert torch.equal(traj.mean("loss"), kept.mean(dim=1))
    assert torch.equal(traj.var("loss"), kept.var(dim=1))
    assert torch.equal(traj.sem("loss"), kept.std(dim=1) / math.sqrt(kept.shape[1]))


def test_save_load_round_trip_still_works(tmp_path):
    traj = _traj(torch.randn(3, 4, dtype=F64), torch.tensor([False, True, False, False]))
    traj.save(tmp_path / "t.pt")
    back = ss.Trajectory.load(tmp_path / "t.pt")
    assert torch.equal(back.values["loss"], traj.values["loss"]) and back.diverged_reason == traj.diverged_reason
