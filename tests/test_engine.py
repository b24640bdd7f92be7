"""The shared step loop (sde_sam._engine): no host synchronisation inside it, divergence flags with their
reasons (non-finite iterates, max_norm, non-finite observables), draw replay, Trajectory save/load."""
from __future__ import annotations

import contextlib
import math
import pickle

import numpy as np
import pytest
import torch

import sde_sam as ss
from conftest import by_id, rows
from sde_sam import _engine, streams
from sde_sam.observables import resolve
from sde_sam.problems import linear_regression

F64 = torch.float64


def _coord0(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0]


# -- no host synchronisation inside the step loop ---------------------------------------------------------------
def _refuse(name: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"host synchronisation inside the step loop: Tensor.{name}")

    return refuse


# Every call that copies to the host or asks the host for a tensor's value (a device synchronisation on a GPU).
SYNCING = ("cpu", "item", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def _no_host_sync():
    saved = {name: getattr(torch.Tensor, name) for name in SYNCING}
    saved_nonzero = torch.nonzero
    try:
        for name in SYNCING:
            setattr(torch.Tensor, name, _refuse(name))
        torch.nonzero = _refuse("nonzero")
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = saved_nonzero


@pytest.fixture
def strict_loop(monkeypatch):
    """Run every block of the step loop (steps, guard counts, recordings) with the syncing calls refused."""
    calls = []
    advance = _engine._advance

    def guarded(*args, **kwargs):
        calls.append(1)
        with _no_host_sync():
            return advance(*args, **kwargs)

    monkeypatch.setattr(_engine, "_advance", guarded)
    return calls


def test_the_refusing_patch_works():
    with _no_host_sync(), pytest.raises(AssertionError, match="Tensor.__bool__"):
        bool(torch.ones(()) > 0)
    with _no_host_sync(), pytest.raises(AssertionError, match="Tensor.item"):
        torch.ones(()).item()
    assert bool(torch.ones(()) > 0)  # restored


@pytest.mark.parametrize("method", rows(without=("micro_batch",)))  # every row that runs on a quadratic
def test_run_completes_without_host_synchronisation(strict_loop, method):
    # Paths 0 and 1 sit at the minimum (the SAM norm guard fires there), paths 2 and 3 leave max_norm
    # (Eigen-SAM's push along v makes them all leave).
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 45.0], dtype=F64)), noise_cov=0.0)
    x0 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.5, 0.5], [0.1, 0.0]], dtype=F64)
    traj = ss.run(prob, method, x0, steps=40, max_norm=1e3, observables=("loss", "x_norm", _coord0))
    assert strict_loop and set(traj.diverged_reason) <= {"", "max_norm"}
    if not method.uses_eigenvector:
        assert traj.diverged_reason == ["", "", "max_norm", "max_norm", ""]


# SAM, and every m-SAM row (they need a mini-batch problem, so the quadratic above does not run them).
@pytest.mark.parametrize("method", by_id("SAM") + rows("micro_batch"))
def test_run_on_a_finite_sum_completes_without_host_synchronisation(strict_loop, method):
    prob = linear_regression(n=16, d=4, batch_size=3)
    traj = ss.run(prob, method, torch.full((4,), 0.3, dtype=F64), steps=20, n_paths=1100,
                  chunk_size=1024, observables=("loss", "grad_norm"))
    assert strict_loop and traj.n_diverged == 0 and torch.isfinite(traj.values["grad_norm"]).all()


@pytest.mark.parametrize("order", [0, 1])
def test_simulate_completes_without_host_synchronisation(strict_loop, order):
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5], dtype=F64)), noise_cov=0.01)
    sde = ss.sde_model(prob, ss.USAM(0.05, 0.1), order=order)
    sol = ss.simulate(sde, torch.ones(2, dtype=F64), t1=0.2, dt=0.005, n_paths=50, record_every=3,
                      observables=("loss", "x_norm"))
    assert strict_loop and sol.n_diverged == 0 and sol.values["loss"].shape == (len(sol.times), 50)


def test_nonlinear_simulate_completes_without_host_synchronisation(strict_loop):
    prob = linear_regression(n=8, d=3, batch_size=2)
    sde = ss.sde_model(prob, ss.SAM(0.05, 0.1), order=1)
    sol = ss.simulate(sde, torch.full((3,), 0.3, dtype=F64), t1=0.05, dt=0.005, n_paths=20)
    assert strict_loop and sol.n_diverged == 0


# The lambda_max observable (spectrum.top_eigenpair) records without synchronising too.
def test_lambda_max_recording_without_host_synchronisation(strict_loop):
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5], dtype=F64)), noise_cov=0.01)
    ss.run(prob, ss.SGD(0.1), torch.ones(2, dtype=F64), steps=3, n_paths=4, observables=("lambda_max",))


def test_paper_diffusion_without_host_synchronisation(strict_loop):
    sde = ss.sde_model(linear_regression(n=8, d=3, batch_size=2), ss.SAM(0.05, 0.1), order=1, diffusion="paper")
    sol = ss.simulate(sde, torch.full((3,), 0.3, dtype=F64), t1=0.02, dt=0.005, n_paths=4)
    assert strict_loop and sol.n_diverged == 0


# -- divergence: non-finite iterates, max_norm, non-finite observables (issue 14) -------------------------------
def test_overflowing_loss_of_a_finite_iterate_flags_the_path():
    # float32 SGD at lr = 10 on f = |x|^2/2: x_k ~ 9^k, so the loss overflows (k ~ 20) long before x (k ~ 40).
    prob = ss.Quadratic(torch.eye(2), noise_cov=0.01)
    traj = ss.run(prob, ss.SGD(lr=10.0), torch.ones(2), steps=100, n_paths=100)
    assert traj.n_diverged == 100 and set(traj.diverged_reason) == {"observable:loss"}
    assert traj.divergence_counts == {"observable:loss": 100}
    assert "n_diverged=100 {'observable:loss': 100}" in repr(traj)
    assert bool((traj.diverged_at < 30 * 10.0).all()) and bool(traj.x_final.isnan().all())
    assert bool(traj.mean("loss").isnan().all())  # no path left: no mean, never an inf mean
    # Mixed: the paths that stay (lr = 0.1 start near 0) keep finite statistics.
    x0 = torch.cat([torch.zeros(50, 2), torch.full((50, 2), 1e20)])
    mixed = ss.run(prob, ss.SGD(lr=0.1), x0, steps=10)
    assert mixed.n_diverged == 50 and mixed.diverged_reason == [""] * 50 + ["observable:loss"] * 50
    assert bool(torch.isfinite(mixed.mean("loss")).all()) and bool(torch.isfinite(mixed.x_final[:50]).all())
    assert bool((mixed.diverged_at[50:] == 0).all())


def _nan_bump(x: torch.Tensor) -> torch.Tensor:
    """Loss ``|x|^2/2``, NaN where ``x_0 > 0.5``; its gradient (``x``) stays finite everywhere."""
    return 0.5 * (x * x).sum() + torch.where(x[0] > 0.5, math.nan, 0.0)


def test_nan_loss_with_a_finite_gradient_flags_the_path():
    prob = ss.Objective(_nan_bump, 2, noise_cov=0.0, dtype=F64)
    assert torch.isfinite(prob.grad(torch.ones(1, 2, dtype=F64))).all()
    # Starting at x_0 = 0.9 the path crosses x_0 = 0.5 at step 6 (x_k = 0.9^k ... with lr 0.1: 0.9 (0.9)^k).
    x0 = torch.tensor([[0.2, 1.0], [0.9, 0.0], [0.4, 0.4]], dtype=F64)
    traj = ss.run(prob, ss.SGD(0.1), x0, steps=20, observables=("loss", "x_norm"))
    assert traj.diverged.tolist() == [False, True, False]
    assert traj.diverged_reason == ["", "observable:loss", ""]
    assert float(traj.diverged_at[1]) == 0.0  # flagged at the first recording, the start
    assert bool(torch.isfinite(traj.mean("loss")).all()) and bool(torch.isfinite(traj.mean("x_norm")).all())
    assert bool(traj.values["x_norm"][:, 1].isnan().all())  # every observable of the path is left out


@pytest.mark.slow
def test_reasons_are_the_first_failure_and_do_not_depend_on_chunks():
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 45.0], dtype=F64)), noise_cov=0.0)
    x0 = torch.zeros(2500, 2, dtype=F64)
    x0[::3] = 1.0  # diverge: seen as non-finite (no max_norm)
    x0[1::7, 1] = 1e-300  # diverge later
    kw = dict(steps=2000, record_every=50, observables=(_coord0, "x_norm"))
    whole = ss.run(prob, ss.SAM(0.1, 0.2), x0, max_norm=1e150, **kw)
    chunked = ss.run(prob, ss.SAM(0.1, 0.2), x0, max_norm=1e150, chunk_size=1024, **kw)
    assert whole.diverged_reason == chunked.diverged_reason and whole.guard_count == chunked.guard_count > 0
    assert torch.equal(whole.diverged, chunked.diverged)
    for name in whole.values:
        assert torch.equal(whole.values[name].nan_to_num(7.0), chunked.values[name].nan_to_num(7.0))
    counts = whole.divergence_counts
    assert set(counts) == {"max_norm"} or set(counts) == {"max_norm", "state"}
    # Without max_norm: x_norm overflows (|x| > 1e154) before the iterate does, and is the reason; with only a
    # coordinate recorded, the non-finite iterate is.
    norms = ss.run(prob, ss.SAM(0.1, 0.2), x0, **kw)
    assert set(norms.divergence_counts) == {"observable:x_norm"}
    no_norm = ss.run(prob, ss.SAM(0.1, 0.2), x0, **{**kw, "observables": (_coord0,)})
    assert set(no_norm.divergence_counts) == {"state"} and bool(no_norm.diverged[::3].all())


# -- draw replay (issue 9 item 5) -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("problem, method", [
    *(pytest.param(ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5], dtype=F64)), noise_cov=0.05), r.values[0],
                   id=f"quadratic-{r.id}") for r in by_id("SAM", "EigenSAM")),
    *(pytest.param(linear_regression(n=16, d=4, batch_size=3), r.values[0], id=f"finite_sum-{r.id}")
      for r in by_id("DNSAM")),
])
def test_kept_draws_replay_bit_for_bit(problem, method):
    x0 = torch.full((problem.d,), 0.3, dtype=F64)
    kw = dict(steps=70, n_paths=1500, record_every=4, observables=("loss", "x_norm"))
    first = ss.run(problem, method, x0, seed=5, keep_draws=True, **kw)
    draws = first.draws
    assert isinstance(draws, torch.Tensor) and draws.shape[:2] == (70, 1500) and draws.device.type == "cpu"
    again = ss.run(problem, method, x0, seed=5, draws=draws, chunk_size=1024, **kw)
    assert torch.equal(again.x_final, first.x_final) and again.draws is None
    for name in first.values:
        assert torch.equal(again.values[name], first.values[name])
    # The draws are the ones the seed makes: a run without keep_draws is the same run.
    assert torch.equal(ss.run(problem, method, x0, seed=5, **kw).x_final, first.x_final)
    # Other draws, other paths.
    other = ss.run(problem, method, x0, seed=5, draws=draws.flip(0), **kw)
    assert not torch.equal(other.x_final, first.x_final)


def _pair_sampler(shape, generator):
    return (torch.randn(*shape, 2, generator=generator, dtype=F64),
            torch.randint(0, 2, shape, generator=generator, dtype=torch.int64))


def _pair_step(x, draw, state, k):
    noise, sign = draw
    return 0.9 * x + 0.1 * noise * (2 * sign - 1).unsqueeze(-1), state, None


def _drive(**kw):
    x = torch.ones(1100, 2, dtype=F64)
    return _engine.drive(x, steps=9, record_every=2, observables=resolve(("x_norm", _coord0), None), seed=3,
                         chunk_size=kw.pop("chunk_size", None), max_norm=math.inf, progress=False,
                         sampler=_pair_sampler, step=_pair_step, init=lambda x, g: None, dt=0.1, info={}, **kw)


def test_tuple_draws_are_kept_and_replayed():
    first = _drive(keep_draws=True)
    noise, sign = first.draws
    assert noise.shape == (9, 1100, 2) and sign.shape == (9, 1100) and sign.dtype == torch.int64
    # Stream blocks of 1024 paths: the kept draws are exactly what each block's generator makes.
    gen = streams.PathStreams(3, 1100, torch.device("cpu"))
    assert torch.equal(gen.draw(0, 1024, 9, _pair_sampler)[0], noise[:, :1024])
    replay = _drive(draws=first.draws, chunk_size=1024)
    assert torch.equal(replay.x_final, first.x_final) and torch.equal(replay.values["x_norm"], first.values["x_norm"])


@pytest.mark.parametrize("draws, match", [
    (torch.zeros(9, 1100, 2, dtype=F64), r"`draws` must be a tuple of 2 tensors"),
    ((torch.zeros(9, 1100, 2, dtype=F64),), r"`draws` must be a tuple of 2 tensors .* of length 1"),
    ((torch.zeros(8, 1100, 2, dtype=F64), torch.zeros(8, 1100, dtype=torch.int64)),
     r"`draws` must have leading dims \(steps, n_paths\) = \(9, 1100\).*got shape \(8, 1100, 2\)"),
    ((torch.zeros(9, 1100, 2), torch.zeros(9, 1100, dtype=torch.int64)), r"dtype torch.float64, got .*float32"),
    ((np.zeros((9, 1100, 2)), torch.zeros(9, 1100, dtype=torch.int64)), r"got ndarray"),
])
def test_given_draws_are_validated(draws, match):
    with pytest.raises(ValueError, match=match):
        _drive(draws=draws)


def test_run_draws_are_validated():
    prob = ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.05)
    with pytest.raises(ValueError, match=r"`draws` must have leading dims \(steps, n_paths\) = \(5, 3\)"):
        ss.run(prob, ss.SGD(0.1), torch.ones(2, dtype=F64), steps=5, n_paths=3, draws=torch.zeros(5, 4, 2, dtype=F64))


# -- observables: checked values --------------------------------------------------------------------------------
def _scalar(x):
    return x.sum()


def _float32(x):
    return x[:, 0].float()


def _meta(x):
    return torch.empty(x.shape[0], device="meta", dtype=x.dtype)


def _as_list(x):
    return x[:, 0].tolist()


@pytest.mark.parametrize("fn, match", [
    (_scalar, r"observable '_scalar' must return shape \(n_paths,\) = \(3,\), got \(\)"),
    (_float32, r"observable '_float32' must return the state's dtype torch.float64 .*got torch.float32"),
    (_meta, r"observable '_meta' must return a tensor on the state's device cpu, got meta"),
    (_as_list, r"observable '_as_list' must return a tensor of shape \(n_paths,\) = \(3,\), got list"),
])
def test_bad_observables_are_named(fn, match):
    prob = ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.05)
    with pytest.raises(ValueError, match=match):
        ss.run(prob, ss.SGD(0.1), torch.ones(2, dtype=F64), steps=3, n_paths=3, observables=("loss", fn))


def test_integer_observables_are_recorded_as_the_state_dtype():
    prob = ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.05)

    def positive(x):
        return (x > 0).sum(dim=-1)

    traj = ss.run(prob, ss.SGD(0.1), torch.ones(2, dtype=F64), steps=3, n_paths=3, observables=(positive,))
    assert traj.values["positive"].dtype == F64 and traj.values["positive"][0].tolist() == [2.0, 2.0, 2.0]


def test_resolved_builtin_observables_pickle():
    prob = ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.05)
    fns = pickle.loads(pickle.dumps(resolve(("loss", "grad_norm", "x_norm"), prob)))
    x = torch.tensor([[3.0, 4.0]], dtype=F64)
    assert [float(fn(x)) for fn in fns.values()] == [12.5, 5.0, 5.0]


# -- Trajectory save / load (weights_only) ------------------------------------------------------------------------
def test_trajectory_save_load_round_trip_with_weights_only(tmp_path):
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 30.0], dtype=F64)), noise_cov=0.01)
    x0 = torch.tensor([[1.0, 1.0], [0.1, 0.0], [0.0, 0.1]], dtype=F64)
    traj = ss.run(prob, ss.USAM(0.07, 0.01), x0, steps=40, max_norm=100.0, keep_draws=True,
                  observables=("loss", "x_norm"))
    traj.info.update(np_scalar=np.float64(0.5), odd=object, nested={"t": (1, 2.5), "n": None})
    assert traj.n_diverged >= 1
    path = tmp_path / "traj.pt"
    traj.save(path)
    back = ss.Trajectory.load(path)
    for name in ("times", "x_final", "diverged_at", "draws"):
        assert torch.equal(getattr(back, name).nan_to_num(7.0), getattr(traj, name).nan_to_num(7.0)), name
    assert torch.equal(back.diverged, traj.diverged) and back.diverged_reason == traj.diverged_reason
    assert all(torch.equal(back.values[k].nan_to_num(7.0), traj.values[k].nan_to_num(7.0)) for k in traj.values)
    assert back.guard_count == traj.guard_count
    assert back.info["np_scalar"] == 0.5 and type(back.info["np_scalar"]) is float
    assert back.info["odd"] == repr(object) and back.info["nested"] == {"t": (1, 2.5), "n": None}
    assert back.info["lr"] == traj.info["lr"]


def test_trajectory_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"times": torch.zeros(1), "payload": np.random.default_rng(0)}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        ss.Trajectory.load(path)


def test_trajectory_without_reasons_marks_them_unknown():
    traj = ss.Trajectory(times=torch.zeros(1), values={}, x_final=torch.zeros(2, 1),
                         diverged=torch.tensor([True, False]), diverged_at=torch.zeros(2))
    assert traj.diverged_reason == ["unknown", ""] and traj.draws is None
    with pytest.raises(ValueError, match=r"`diverged_reason` must have one entry per path \(2\), got 1"):
        ss.Trajectory(times=torch.zeros(1), values={}, x_final=torch.zeros(2, 1), diverged=torch.zeros(2, dtype=bool),
                      diverged_at=torch.zeros(2), diverged_reason=[""])



@pytest.mark.parametrize("method, drawn", [(ss.SAM(0.05, 0.1), False), (ss.EigenSAM(0.05, 0.1, alpha=0.5), True)],
                         ids=["SAM", "Eigen-SAM"])
@pytest.mark.parametrize("kind", ["run", "sde"])
def test_initial_gaussians_are_drawn_only_for_stateful_methods(monkeypatch, method, drawn, kind):
    """A stateful method's initial state (Eigen-SAM's vector) comes from an (n, d) Gaussian of its own stream
    (stream 1); a stateless method draws none: on a large model that draw cost more than a step."""
    prob = ss.problems.teacher_student(n=16, d_in=2, width=3, batch_size=4)
    init_draws = []
    make, draw = streams.PathStreams.__init__, streams.PathStreams.draw

    def spy_make(self, *args, stream=0, **kwargs):
        make(self, *args, stream=stream, **kwargs)
        self.spy_stream = stream

    def spy_draw(self, *args):
        if self.spy_stream == 1:
            init_draws.append(args)
        return draw(self, *args)

    monkeypatch.setattr(streams.PathStreams, "__init__", spy_make)
    monkeypatch.setattr(streams.PathStreams, "draw", spy_draw)
    if kind == "run":
        out = ss.run(prob, method, prob.x_init, steps=3, n_paths=5, seed=2, progress=False)
    else:
        out = ss.simulate(ss.sde_model(prob, method, order=1), prob.x_init, t1=0.1, dt=0.025, n_paths=5, seed=2,
                          progress=False)
    assert torch.isfinite(out.x_final).all()
    assert len(init_draws) == (1 if drawn else 0)


def test_auto_chunks_fit_the_cache_and_change_no_number(monkeypatch):
    """``chunk_size=None`` on the CPU: cache-sized chunks (:func:`streams.auto_chunk`) once the paths' state
    outgrows :data:`streams.CACHE_SHARE` of the last-level cache; results are those of one chunk, bit for bit."""
    cpu = torch.device("cpu")
    llc = streams._last_level_cache_bytes()
    assert llc >= 2**20
    fits = int(streams.CACHE_SHARE * llc) // (8 * 10_000)  # paths of d = 10,000 in float64 that fit
    assert streams.auto_chunk(fits, 10_000, 8, cpu, draw_numel=32) is None
    chunk = streams.auto_chunk(3 * fits, 10_000, 8, cpu, draw_numel=32)
    assert chunk is not None and chunk * 10_000 * 8 <= streams.CACHE_SHARE * llc and chunk >= 3 * fits / 4
    assert streams.auto_chunk(3 * fits, 10_000, 8, torch.device("meta"), draw_numel=32) is None  # not a CPU
    assert streams.auto_chunk(3 * fits, 10_000, 8, cpu, draw_numel=10_000) is None  # Gaussian noise: a draw is d

    prob = ss.problems.teacher_student(n=32, d_in=4, width=16, batch_size=4)  # d = 97, draws of 4 indices
    parts = []
    exact_chunks = streams.exact_chunks
    monkeypatch.setattr(streams, "exact_chunks", lambda n, c: parts.append(c) or exact_chunks(n, c))
    monkeypatch.setattr(streams, "_last_level_cache_bytes", lambda: 40 * prob.d * 8)  # 24 paths' state
    # 100 paths in 5 chunks of 20 (<= 24 paths' state); the two-draw scheme evaluates 2 rows a path: 9 of 12
    for chunk, go in ((20, lambda c: ss.run(prob, ss.SAM(0.05, 0.1), prob.x_init, steps=4, n_paths=100, seed=1,
                                            chunk_size=c, progress=False)),
                      (12, lambda c: ss.simulate(ss.sde_model(prob, ss.SAM(0.05, 0.1), order=1), prob.x_init,
                                                 t1=0.1, dt=0.025, n_paths=100, seed=1, chunk_size=c, progress=False))):
        parts.clear()
        auto, whole = go(None), go(100)
        assert parts == [chunk, 100]  # then the one chunk asked for
        assert torch.equal(auto.x_final, whole.x_final)
        assert all(torch.equal(auto.values[k], whole.values[k]) for k in whole.values)
