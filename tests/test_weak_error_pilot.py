"""The pilot's cost estimate of a weak-error study (issue 21, item 5): its structure, its extrapolation (with
an injected clock: a cost model, and a count of gradient evaluations, so no timing is asserted), the
announcement, resumed studies, and that the study's numbers do not depend on it."""
from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

import sde_sam as ss
import sde_sam.weak as wem
from sde_sam.weak import pilot

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:lrs=.*a slope needs at least two")



MC = dict(lrs=[0.2, 0.1], horizon=0.4, n_paths=64, sde_order=[0, 1], mode="monte_carlo",
          test_functions=["loss", "x_norm_sq"])


def test_estimate_structure(quad, x0):
    """One frozen CellCost per cell, in the study's order; seconds is their sum; the frame and the message."""
    est = wem.estimate_cost(quad, ss.SGD(0.1), x0=x0, **MC)
    assert isinstance(est, wem.CostEstimate)
    study = wem.weak_error(quad, ss.SGD(0.1), x0=x0, progress=False, **MC)
    kinds = [(c.kind, c.lr) for c in est.cells]
    assert kinds == list(zip(study.cells["kind"], study.cells["lr"]))
    assert len(est.cells) == 2 * (1 + 2 * 2)  # per lr: discrete, two models and their solver checks
    assert est.seconds == pytest.approx(sum(c.seconds for c in est.cells), rel=1e-12)
    assert all(c.seconds > 0 and math.isfinite(c.seconds) for c in est.cells)
    assert [c.steps for c in est.cells[:5]] == [2] * 5 and [c.records for c in est.cells[:5]] == [3] * 5
    frame = est.frame()
    assert list(frame.columns) == ["kind", "lr", "rho", "steps", "records", "seconds"] and len(frame) == 10
    assert est.finished == () and est.pilot_seconds > 0 and "pilot per engine" in est.how
    assert "10 cells to compute" in est.message() and str(est) == est.message()
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.seconds = 0.0
    # The study records its own estimate per cell, beside the measured seconds.
    assert study.cells["estimated_seconds"].gt(0).all() and study.cells["seconds"].gt(0).all()


def _fake_cells(monkeypatch, cost, share=1.0):
    """A virtual clock advanced by a cost model: every cell the pilot runs costs ``cost(spec)`` CPU seconds,
    and ``share`` times that in wall time (a machine where this process gets 1/share of a core)."""
    now = [0.0]
    monkeypatch.setattr(pilot, "clock", lambda: now[0])
    monkeypatch.setattr(pilot, "wall", lambda: share * now[0])

    def fake_cell(spec):
        now[0] += cost(spec)

    monkeypatch.setattr(pilot, "_run_cell", fake_cell)
    return now


@pytest.mark.parametrize("share", [1.0, 2.5])
def test_extrapolation_follows_an_affine_cost_model(monkeypatch, quad, share):
    """Cells that cost c + m·K·(a + b·n) + R·β·n (records: a test function that costs β per path) are
    estimated exactly at N paths, from a pilot that never runs N paths (the ladder stops once the per-path
    part shows): the constant, the per-step and per-record costs are separated and extrapolated; the CPU
    seconds are scaled by the pilot's wall / CPU time."""
    c, a, b, beta = 0.05, 0.01, 1e-4, 3e-5
    seen = []

    def cost(spec):
        seen.append(spec.n_paths)
        m = 2 if spec.solver else 1
        return c + m * spec.steps * (a + b * spec.n_paths) + 2 * beta * spec.n_paths

    now = _fake_cells(monkeypatch, cost, share)

    def phi(x):
        now[0] += beta * x.shape[0]
        return x[:, 0]

    x0 = torch.ones(2, dtype=F64)
    n_big, kw = 100_000, dict(lrs=[0.1, 0.05], horizon=1.0, sde_order=[1], mode="monte_carlo", test_functions=[phi],
                              record_every=3)
    est = wem.estimate_cost(quad, ss.SAM(0.1, rho=0.1), x0=x0, n_paths=n_big, **kw)
    assert max(seen) < n_big  # extrapolated, not measured
    for cell in est.cells:
        m = 2 if cell.kind.startswith("solver") else 1
        want = c + m * cell.steps * (a + b * n_big) + cell.records * beta * n_big
        assert cell.seconds == pytest.approx(share * want, rel=1e-9), cell
    assert [cl.records for cl in est.cells[:3]] == [5] * 3 and [cl.records for cl in est.cells[3:]] == [8] * 3


def test_the_solver_check_is_measured_on_its_model(monkeypatch, quad):
    """A solver check left alone (its model's cell finished) is estimated at 2 x its model's steps, not 4 x:
    its engine is measured as the model, never as the solver check."""
    x0 = torch.ones(2, dtype=F64)
    specs = wem.api._plan(quad, ss.SAM(0.1, rho=0.1), x0=x0, lrs=[0.1], horizon=0.5, n_paths=64, seed=0,
                          test_functions=["x_norm_sq"], sde_order=[1], rho=None, dt_ratio=10, mode="monte_carlo",
                          coupling=False, record_every=None, diffusion="factor", expectation="auto",
                          increments="gaussian", solver_check=True, chunk_size=None, max_norm=math.inf).specs
    a = 1e-3
    _fake_cells(monkeypatch, lambda spec: (2 if spec.solver else 1) * spec.steps * a * spec.n_paths)
    monkeypatch.setattr(pilot, "QUICK_S", 0.0)  # always refined
    (cell,) = pilot.estimate_cells([s for s in specs if s.solver]).cells
    assert cell.kind == "solver order 1" and cell.seconds == pytest.approx(2 * 5 * a * 64, rel=1e-9)


class CountingObjective(ss.Objective):
    """A quartic with additive Gaussian noise that counts the paths its gradient and loss are evaluated on."""

    count = [0]

    def loss(self, x):
        self.count[0] += x.shape[0]
        return super().loss(x)

    def grad(self, x):
        self.count[0] += x.shape[0]
        return super().grad(x)


def _quartic(x):
    return (x**4).sum() / 4 + (x**2).sum() / 2


def test_estimate_counts_the_study_work(monkeypatch):
    """With the clock a count of per-path gradient and loss evaluations, the estimate is the count the study
    itself makes (its only other evaluations: the resume fingerprint, 4 rows) — at the base settings, x2
    paths, x2 horizon (steps and records) and one more lr (its cells)."""
    prob = CountingObjective(_quartic, 2, noise_cov=0.5, dtype=F64)
    counter = CountingObjective.count
    monkeypatch.setattr(pilot, "clock", lambda: float(counter[0]))
    monkeypatch.setattr(pilot, "wall", lambda: float(counter[0]))
    monkeypatch.setattr(pilot, "RUNG_MAX_S", math.inf)  # thresholds in seconds mean nothing in counts:
    monkeypatch.setattr(pilot, "RUNG_S", 0.0)  # the ladder stops where the count doubles (at 128 paths)
    x0 = torch.full((2,), 0.5, dtype=F64)
    base = dict(lrs=[0.2, 0.1], horizon=0.4, n_paths=600, sde_order=[0], test_functions=["loss"], record_every=1)
    estimates = []
    for kw in (base, {**base, "n_paths": 1200}, {**base, "horizon": 0.8}, {**base, "lrs": [0.2, 0.1, 0.05]}):
        est = wem.estimate_cost(prob, ss.SGD(0.1), x0=x0, **kw)
        counter[0] = 0
        wem.weak_error(prob, ss.SGD(0.1), x0=x0, pilot=False, progress=False, **kw)
        assert est.seconds == pytest.approx(counter[0] - 4, rel=1e-9), kw
        estimates.append(est)
    assert estimates[1].seconds == pytest.approx(2 * estimates[0].seconds, rel=1e-9)
    assert [c.steps for c in estimates[2].cells][::3] == [4, 8]
    assert [c.seconds for c in estimates[3].cells[:6]] == pytest.approx([c.seconds for c in estimates[0].cells])


def test_small_studies_take_the_overestimate_of_the_one_step_runs(monkeypatch):
    """Below QUICK_S the 1-step runs' bound is the estimate (no long runs): at least the study's work, counted
    as above; above it, refined."""
    prob = CountingObjective(_quartic, 2, noise_cov=0.5, dtype=F64)
    counter = CountingObjective.count
    monkeypatch.setattr(pilot, "clock", lambda: float(counter[0]))
    monkeypatch.setattr(pilot, "wall", lambda: float(counter[0]))
    monkeypatch.setattr(pilot, "RUNG_MAX_S", math.inf)
    monkeypatch.setattr(pilot, "RUNG_S", 0.0)
    x0 = torch.full((2,), 0.5, dtype=F64)
    kw = dict(lrs=[0.2, 0.1], horizon=0.4, n_paths=600, sde_order=[0], test_functions=["loss"], record_every=1)
    monkeypatch.setattr(pilot, "QUICK_S", math.inf)
    quick = wem.estimate_cost(prob, ss.SGD(0.1), x0=x0, **kw)
    monkeypatch.setattr(pilot, "QUICK_S", 0.0)
    refined = wem.estimate_cost(prob, ss.SGD(0.1), x0=x0, **kw)
    assert "not refined" in quick.how and "not refined" not in refined.how
    assert quick.seconds > 1.05 * refined.seconds
    assert all(q.seconds >= r.seconds for q, r in zip(quick.cells, refined.cells))


def test_announced_above_the_threshold_only(monkeypatch, capsys, quad, x0):
    """One line on stderr before the cells when the estimate exceeds ANNOUNCE_AFTER_S; none below it, none
    with progress=False, none in exact mode (no pilot)."""
    monkeypatch.setattr(pilot, "ANNOUNCE_AFTER_S", 0.0)
    wem.weak_error(quad, ss.SGD(0.1), x0=x0, **MC)
    err = capsys.readouterr().err
    assert err.count("weak_error: 10 cells to compute, estimated") == 1 and "progress=False silences" in err
    wem.weak_error(quad, ss.SGD(0.1), x0=x0, progress=False, **MC)
    assert "weak_error:" not in capsys.readouterr().err
    study = wem.weak_error(quad, ss.USAM(0.1, rho=0.1), x0=x0, lrs=[0.2, 0.1], horizon=0.4, mode="exact",
                           test_functions=["loss"])
    assert "weak_error:" not in capsys.readouterr().err and study.cells["estimated_seconds"].isna().all()
    monkeypatch.setattr(pilot, "ANNOUNCE_AFTER_S", 1e9)
    wem.weak_error(quad, ss.SGD(0.1), x0=x0, **MC)
    assert "weak_error:" not in capsys.readouterr().err


def test_finished_cells_are_not_counted(quad, x0, tmp_path):
    """A resumed study estimates only its missing cells; estimate_cost reads results_dir and writes nothing."""
    wem.weak_error(quad, ss.SGD(0.1), x0=x0, results_dir=tmp_path, progress=False, **MC)
    files = sorted(p.name for p in tmp_path.rglob("*"))
    more = {**MC, "lrs": [0.2, 0.1, 0.05]}
    est = wem.estimate_cost(quad, ss.SGD(0.1), x0=x0, results_dir=tmp_path, **more)
    assert sorted(p.name for p in tmp_path.rglob("*")) == files
    assert [c.lr for c in est.cells] == [0.05] * 5 and len(est.finished) == 10
    assert {k[1] for k in est.finished} == {0.2, 0.1} and "10 already finished" in est.message()
    study = wem.weak_error(quad, ss.SGD(0.1), x0=x0, results_dir=tmp_path, progress=False, **more)
    loaded = study.cells["source"] == "loaded"
    assert loaded.sum() == 10 and study.cells.loc[loaded, "estimated_seconds"].isna().all()
    assert study.cells.loc[~loaded, "estimated_seconds"].gt(0).all()
    assert wem.estimate_cost(quad, ss.SGD(0.1), x0=x0, results_dir=tmp_path, **more).seconds == 0.0


def _rng_hungry(x):
    """A test function that draws from torch's global generator (so a pilot that drew from it would show)."""
    return x[:, 0] + 0.01 * torch.rand(x.shape[0], dtype=x.dtype)


@pytest.mark.parametrize("coupling", [False, True])
def test_the_pilot_does_not_change_the_study(quad, x0, coupling):
    """Tables bit-identical with and without the pilot, even with a test function using the global RNG."""
    kw = {**MC, "test_functions": ["loss", _rng_hungry], "coupling": coupling, "sde_order": [1]}
    frames = []
    for use in (True, False):
        torch.manual_seed(7)
        study = wem.weak_error(quad, ss.SGD(0.1), x0=x0, pilot=use, progress=False, **kw)
        frames.append((study.table, study.solver_table, torch.rand(3)))
        assert study.cells["estimated_seconds"].notna().all() == use
    pd.testing.assert_frame_equal(frames[0][0], frames[1][0], check_exact=True)
    pd.testing.assert_frame_equal(frames[0][1], frames[1][1], check_exact=True)
    assert torch.equal(frames[0][2], frames[1][2])  # the global stream continues where it would have


def test_exact_mode_needs_no_pilot(quad, x0):
    est = wem.estimate_cost(quad, ss.USAM(0.1, rho=0.1), x0=x0, lrs=[0.2, 0.1], horizon=0.4, sde_order=[1],
                            test_functions=["loss"])
    assert est.seconds == 0.0 and est.pilot_seconds == 0.0 and est.how.startswith("exact mode")
    assert len(est.cells) == 2 * 3 and all(c.seconds == 0.0 for c in est.cells)


def test_a_failing_pilot_leaves_the_failure_to_the_cells(monkeypatch, quad, x0):
    """A pilot that raises warns and lets the study go on: the cells report their own errors, as before."""
    def broken(spec):
        raise RuntimeError("pilot broke")

    monkeypatch.setattr(pilot, "_run_cell", broken)
    with pytest.warns(UserWarning, match=r"the cost pilot failed \(RuntimeError: pilot broke\)"):
        study = wem.weak_error(quad, ss.SGD(0.1), x0=x0, progress=False, **MC)
    assert study.cells["estimated_seconds"].isna().all() and len(study.table)
    with pytest.raises(RuntimeError, match="pilot broke"):  # estimate_cost says it
        wem.estimate_cost(quad, ss.SGD(0.1), x0=x0, **MC)


def test_format_seconds():
    assert [pilot.format_seconds(s) for s in (0.5, 42, 200, 3 * 3600)] == ["0.5 s", "42 s", "3.3 min", "3.0 h"]


def test_bad_input(quad, x0):
    with pytest.raises(ValueError, match=r"`pilot` must be True or False, got pilot='yes'"):
        wem.weak_error(quad, ss.SGD(0.1), x0=x0, pilot="yes", **MC)
    with pytest.raises(ValueError, match=r"`n_paths`"):
        wem.estimate_cost(quad, ss.SGD(0.1), x0=x0, **{**MC, "n_paths": 2})
    with pytest.raises(ValueError, match=r"`lrs` must be a non-empty list"):
        wem.estimate_cost(quad, ss.SGD(0.1), x0=x0, **{**MC, "lrs": []})
    with pytest.raises(TypeError, match="executor"):
        wem.estimate_cost(quad, ss.SGD(0.1), x0=x0, executor=None, **MC)
