"""What a run records and what that costs: record_every="auto" (full-batch observables on a bounded schedule),
chunks of any size, full-batch observables in path groups and sample chunks, the warm-started lambda_max, the
batch_loss step contract, the progress bar, and two-point increments (same law, weak order 1)."""
from __future__ import annotations

import math

import pytest
import torch

import sde_sam as ss
from sde_sam import _engine, observables as obs_mod, streams
from sde_sam.problems import linear_regression

F64 = torch.float64


@pytest.fixture(scope="module")
def digits():
    return ss.problems.digits_mlp(256, hidden=8, batch_size=8)  # a ModuleFiniteSum, float64, d = 610


class _Counting:
    """Counts the full-batch loss evaluations (calls of ``problem.loss``) and the paths they covered."""

    def __init__(self, problem):
        self.calls, self.paths, self.loss = 0, 0, problem.loss

    def __call__(self, x):
        self.calls += 1
        self.paths += x.shape[0]
        return self.loss(x)


# -- record_every="auto" ------------------------------------------------------------------------------------------
def test_default_run_on_a_module_problem_evaluates_the_full_batch_loss_at_the_documented_interval(digits, monkeypatch):
    counter = _Counting(digits)
    monkeypatch.setattr(digits, "loss", counter)
    steps, n_paths, method = 120, 8, ss.SAM(0.1, 0.05)
    traj = ss.run(digits, method, digits.x_init, steps=steps, n_paths=n_paths)
    r = traj.info["record_every"]
    # The documented rule: ceil(cost of a recording / (0.1 * cost of a step)), per-sample gradient units:
    # the loss is 0.6 n, a SAM step two gradients of B samples.
    assert r == math.ceil((0.6 * digits.n) / (0.1 * 2 * digits.batch_size)) == 96
    assert counter.calls == len(obs_mod.record_times(steps, r)) == 3  # steps 0, 96, 120
    assert counter.paths == 3 * n_paths
    # By the same model, the recordings between the start and the end cost at most 10% of the steps.
    assert (counter.calls - 2) * 0.6 * digits.n <= 0.1 * steps * 2 * digits.batch_size
    assert torch.equal(traj.times, torch.tensor([0, 96, 120], dtype=F64) * method.lr)


def test_default_simulate_on_a_module_problem_records_on_the_auto_schedule(digits, monkeypatch):
    counter = _Counting(digits)
    monkeypatch.setattr(digits, "loss", counter)
    sde = ss.sde_model(digits, ss.SAM(0.1, 0.05), order=1)
    sol = ss.simulate(sde, digits.x_init, t1=2.0, dt=0.05, n_paths=4)
    r = sol.info["record_every"]
    assert sde.expectation_mode == "two_draw"
    assert r == math.ceil((0.6 * digits.n) / (0.1 * 2 * 2 * digits.batch_size)) == 48
    assert counter.calls == len(obs_mod.record_times(40, r)) == 2  # the start and the end of 40 steps


def test_explicit_record_every_is_exactly_that_and_bit_identical(digits):
    traj = ss.run(digits, ss.SAM(0.1, 0.05), digits.x_init, steps=6, n_paths=3, record_every=1)
    assert traj.info["record_every"] == 1 and len(traj.times) == 7
    # The recorded loss is problem.loss at the recorded state, bit for bit.
    assert torch.equal(traj.values["loss"][-1], digits.loss(traj.x_final))
    two = ss.run(digits, ss.SAM(0.1, 0.05), digits.x_init, steps=6, n_paths=3, record_every=2)
    assert torch.equal(two.values["loss"], traj.values["loss"][::2]) and torch.equal(two.x_final, traj.x_final)


def test_auto_records_every_step_where_recording_is_cheap(digits):
    quad = ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.1)
    assert ss.run(quad, ss.SAM(0.1, 0.05), torch.ones(2, dtype=F64), steps=5).info["record_every"] == 1
    cheap = ss.run(digits, ss.SAM(0.1, 0.05), digits.x_init, steps=5, n_paths=2, observables=("x_norm",))
    assert cheap.info["record_every"] == 1 and len(cheap.times) == 6
    lam = obs_mod.resolve(["lambda_max"], digits)
    # lambda_max: 21 Lanczos HVPs of 2n each.
    assert obs_mod.auto_record_every(lam, 16.0) == math.ceil(2 * 21 * digits.n / 1.6)


@pytest.mark.parametrize("bad", ["sometimes", 0, -3, 1.5, True])
def test_record_every_is_validated(bad):
    quad = ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.1)
    with pytest.raises(ValueError, match="`record_every` must be an integer >= 1 or 'auto'"):
        ss.run(quad, ss.SGD(0.1), torch.ones(2, dtype=F64), steps=3, record_every=bad)
    sde = ss.sde_model(quad, ss.SGD(0.1), order=1)
    with pytest.raises(ValueError, match="`record_every` must be an integer >= 1 or 'auto'"):
        ss.simulate(sde, torch.ones(2, dtype=F64), t1=0.1, dt=0.01, record_every=bad)


# -- chunks of any size -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk, n_paths", [(1, 12), (5, 12), (300, 1030), (1000, 1030), (1029, 1030)])
def test_run_does_not_depend_on_odd_chunk_sizes(chunk, n_paths):
    prob = linear_regression(n=16, d=4, batch_size=3)
    kw = dict(steps=5, n_paths=n_paths, record_every=1, observables=("loss", "grad_norm"), seed=3, keep_draws=True)
    x0 = torch.full((4,), 0.3, dtype=F64)
    ref = ss.run(prob, ss.SAM(0.1, 0.2), x0, **kw)
    got = ss.run(prob, ss.SAM(0.1, 0.2), x0, chunk_size=chunk, **kw)
    assert torch.equal(got.x_final, ref.x_final) and torch.equal(got.draws, ref.draws)
    assert all(torch.equal(got.values[k], ref.values[k]) for k in ref.values)


def test_module_run_and_simulate_do_not_depend_on_odd_chunk_sizes(digits):
    kw = dict(n_paths=30, record_every=1, observables=("loss", "x_norm"), seed=5)
    ref = ss.run(digits, ss.SAM(0.1, 0.05), digits.x_init, steps=4, **kw)
    got = ss.run(digits, ss.SAM(0.1, 0.05), digits.x_init, steps=4, chunk_size=7, **kw)
    assert torch.equal(got.x_final, ref.x_final) and torch.equal(got.values["loss"], ref.values["loss"])
    sde = ss.sde_model(digits, ss.SAM(0.1, 0.05), order=1)
    a = ss.simulate(sde, digits.x_init, t1=0.2, dt=0.05, **kw)
    b = ss.simulate(sde, digits.x_init, t1=0.2, dt=0.05, chunk_size=11, **kw)
    assert torch.equal(a.x_final, b.x_final) and torch.equal(a.values["loss"], b.values["loss"])


def test_eigen_sam_initial_vectors_do_not_depend_on_odd_chunk_sizes():
    prob = linear_regression(n=16, d=4, batch_size=3)
    method = ss.EigenSAM(0.1, 0.2, 0.3, refresh_every=2, power_iters=3, init_power_iters=5)
    kw = dict(steps=4, n_paths=1030, seed=2, record_every=1)
    x0 = torch.full((4,), 0.3, dtype=F64)
    ref = ss.run(prob, method, x0, **kw)
    assert torch.equal(ss.run(prob, method, x0, chunk_size=500, **kw).x_final, ref.x_final)


def test_row_streams_are_the_path_streams():
    noise = streams.PathStreams(11, 2500, torch.device("cpu"))
    whole = noise.draw(0, 2500, 3, lambda shape, g: torch.randn(*shape, 2, generator=g))
    rows = streams.RowStreams(11, 2500, 1000, 2100, torch.device("cpu"))
    assert torch.equal(rows.draw(3, lambda shape, g: torch.randn(*shape, 2, generator=g)), whole[:, 1000:2100])
    assert streams.exact_chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer or None, got chunk_size=0"):
        streams.exact_chunks(10, 0)


# -- full-batch observables in groups and chunks ------------------------------------------------------------------
def test_full_batch_observables_in_path_groups_are_bit_identical(digits):
    x = digits.x_init + 0.01 * torch.randn(9, digits.d, generator=torch.Generator().manual_seed(0), dtype=F64)
    small = digits.n * 2  # two paths per call
    assert torch.equal(obs_mod.loss(chunk=small)(digits)(x), digits.loss(x))
    want = torch.linalg.vector_norm(digits.grad(x), dim=-1)
    assert torch.equal(obs_mod.grad_norm(chunk=small)(digits)(x), want)


def test_default_groups_fit_the_cache_and_give_the_same_values(monkeypatch):
    """On a CPU the default groups hold at most as many paths as keep their activations within
    ``streams.CACHE_SHARE`` of the last-level cache; activations per sample come from the loss's saved tensors
    (16 more hidden units: whole float64 vectors of 16 more); every path's value is the one of any other grouping."""
    narrow, wide = (ss.problems.digits_mlp(256, hidden=h, batch_size=8) for h in (16, 32))
    a_narrow, a_wide = obs_mod.activation_bytes(narrow), obs_mod.activation_bytes(wide)
    assert a_narrow >= 64 * 8 and a_wide > a_narrow and (a_wide - a_narrow) % (16 * 8) == 0, (a_narrow, a_wide)
    assert obs_mod.activation_bytes(ss.Quadratic(torch.eye(2, dtype=F64))) is None

    def picky(x, s):  # a loss that cannot be evaluated at the trial point: the default groups, no error
        if bool((x == 0).all()):
            raise RuntimeError("not at zero")
        return ((x[0] - s) ** 2).sum()

    fussy = ss.FiniteSum(picky, torch.arange(8.0, dtype=F64), d=2)
    assert obs_mod.activation_bytes(fussy) is None and obs_mod._Loss(fussy).rows == obs_mod.EVAL_CHUNK // 8
    x = wide.x_init + 0.1 * torch.randn(40, wide.d, dtype=F64, generator=torch.Generator().manual_seed(0))
    budget = streams.cache_budget()
    assert obs_mod._Loss(wide).rows == max(1, min(obs_mod.EVAL_CHUNK // wide.n, int(budget // (wide.n * a_wide))))
    monkeypatch.setattr(streams, "_last_level_cache_bytes", lambda: 10 * wide.n * a_wide / streams.CACHE_SHARE)
    for make in (obs_mod._Loss, obs_mod._GradNorm):
        fitted, one_call = make(wide), make(wide, chunk=40 * wide.n)
        assert fitted.rows == 10 and one_call.rows == 40
        assert torch.equal(fitted(x), one_call(x))


@pytest.mark.slow
def test_full_batch_observables_in_sample_chunks_agree(digits):
    x = digits.x_init + 0.01 * torch.randn(3, digits.d, generator=torch.Generator().manual_seed(1), dtype=F64)
    fn = obs_mod.loss(chunk=100)(digits)  # 256 samples in chunks of 100, 100, 56, one path per call
    assert len(fn.parts) == 3
    torch.testing.assert_close(fn(x), digits.loss(x), rtol=1e-13, atol=0)
    g = obs_mod.grad_norm(chunk=100)(digits)(x)
    torch.testing.assert_close(g, torch.linalg.vector_norm(digits.grad(x), dim=-1), rtol=1e-12, atol=0)
    lam = obs_mod.lambda_max(iters=40, chunk=100)(digits)(x)
    ref = ss.top_eigenpair(digits, x, iters=40).value
    torch.testing.assert_close(lam, ref, rtol=1e-8, atol=0)


@pytest.mark.parametrize("make, match", [(lambda: obs_mod.loss(chunk=0), "`chunk` must be a positive integer"),
                                         (lambda: obs_mod.lambda_max(iters=0), "`iters` must be an integer >= 1"),
                                         (lambda: obs_mod.lambda_max(method="qr"), "`method` must be 'lanczos'"),
                                         (lambda: obs_mod.lambda_max(warm_start=1), "`warm_start` must be True")])
def test_observable_options_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- lambda_max: its iteration count, warm starts -----------------------------------------------------------------
def _random_quadratic_finite_sum(d=12, n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=gen, dtype=F64)
    y = torch.randn(n, generator=gen, dtype=F64)
    prob = ss.FiniteSum(lambda x, s: 0.5 * (s[0] @ x - s[1]) ** 2, (A, y), batch_size=4, d=d)
    return prob, torch.linalg.eigvalsh(A.T @ A / n)[-1]


def test_lambda_max_copies_of_one_point_give_one_value():
    prob, _ = _random_quadratic_finite_sum()
    x = torch.zeros(4, 12, dtype=F64)
    fn = obs_mod.lambda_max(iters=3)(prob)
    values = fn(x)
    assert torch.equal(values, values[:1].expand(4))


def test_lambda_max_warm_start_converges_over_recordings():
    prob, top = _random_quadratic_finite_sum()  # a constant Hessian: each recording continues the last
    x = torch.zeros(2, 12, dtype=F64)
    warm = obs_mod.lambda_max(iters=3)(prob)
    cold = obs_mod.lambda_max(iters=3, warm_start=False)(prob)
    errors = [float((warm(x) - top).abs().max()) for _ in range(8)]
    assert errors[-1] < 1e-8 < 1e-4 < errors[0]
    assert all(b <= a for a, b in zip(errors, errors[1:]))
    assert float((cold(x) - top).abs().max()) == pytest.approx(errors[0])  # a fresh start each time
    assert float((cold(x) - top).abs().max()) > 1e-6


def test_lambda_max_warm_start_is_per_chunk_of_paths():
    prob, top = _random_quadratic_finite_sum()
    x0 = torch.zeros(12, dtype=F64)
    kw = dict(steps=6, n_paths=5, record_every=1, observables=[obs_mod.lambda_max(iters=3)], seed=0)
    a = ss.run(prob, ss.SGD(1e-12), x0, **kw)
    b = ss.run(prob, ss.SGD(1e-12), x0, chunk_size=2, **kw)
    # Equal to rounding (Lanczos' batched products may take other kernels for other numbers of rows).
    torch.testing.assert_close(a.values["lambda_max"], b.values["lambda_max"], rtol=1e-12, atol=0)
    assert float((a.values["lambda_max"][-1] - top).abs().max()) < 1e-7 < float((a.values["lambda_max"][0] - top).abs().max())


# -- batch_loss: the step reports the loss of its draw ------------------------------------------------------------
def _drive(step, observables, steps=3, n=5):
    x = torch.ones(n, 2, dtype=F64)
    return _engine.drive(x, steps=steps, record_every=1, observables=observables, seed=0, chunk_size=None,
                         max_norm=math.inf, progress=False, sampler=lambda shape, g: torch.randn(*shape, 2, generator=g,
                                                                                                 dtype=F64),
                         step=step, init=lambda x, g: None, dt=0.1, info={}, keep_draws=True)


def test_batch_loss_is_what_the_step_reports():
    def step(x, draw, state, k):
        return x - 0.1 * draw, state, None, (x * draw).sum(-1)  # "the loss of the draw at x"

    traj = _drive(step, obs_mod.resolve(["batch_loss", "x_norm"], None))
    d = traj.draws
    x, want = torch.ones(5, 2, dtype=F64), []
    for k in range(3):
        want.append((x * d[k]).sum(-1))
        x = x - 0.1 * d[k]
    assert torch.isnan(traj.values["batch_loss"][0]).all() and traj.n_diverged == 0
    assert torch.equal(traj.values["batch_loss"][1:], torch.stack(want))


def test_batch_loss_from_a_step_that_does_not_report_it_is_refused():
    with pytest.raises(ValueError, match="'batch_loss' observable needs a step that reports the loss of its draw"):
        _drive(lambda x, draw, state, k: (x, state, None), obs_mod.resolve(["batch_loss"], None))


# -- progress -----------------------------------------------------------------------------------------------------
def test_progress_bar_appears_when_the_projection_is_long(monkeypatch):
    monkeypatch.setattr(_engine._Progress, "_interactive", staticmethod(lambda: True))
    quiet = _engine._Progress(10, None, "run")
    quiet.update(5)
    assert quiet.bar is None  # projected well under 10 s
    monkeypatch.setattr(_engine, "PROGRESS_AFTER_S", 0.0)
    shown = _engine._Progress(10, None, "run")
    shown.update(5)
    assert shown.bar is not None and shown.bar.n == 5 and shown.bar.total == 10
    shown.close()
    never = _engine._Progress(10, False, "run")
    never.update(5)
    assert never.bar is None


# -- two-point increments: the same law, weak order 1 -------------------------------------------------------------
def test_random_signs_are_fair_and_independent():
    s = streams.random_signs((200_000,), torch.Generator().manual_seed(0), dtype=F64, device="cpu")
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    se = 1 / math.sqrt(s.numel())
    assert abs(float(s.mean())) < 4 * se
    assert abs(float((s[1:] * s[:-1]).mean())) < 4 * se  # neighbouring bits (same byte) uncorrelated
    assert abs(float((s[8:] * s[:-8]).mean())) < 4 * se  # same bit of neighbouring bytes


def _em_moments(c, b, x0, steps, kurtosis):
    """E X^2, E X^4 of X' = c X + b zeta, E zeta^2 = 1, E zeta^4 = kurtosis, odd moments 0 (exact recursion)."""
    m2, m4 = x0**2, x0**4
    for _ in range(steps):
        m2, m4 = c * c * m2 + b * b, c**4 * m4 + 6 * c * c * b * b * m2 + kurtosis * b**4
    return m2, m4


def test_two_point_increments_have_the_em_law_and_weak_order_one():
    # USAM on a diagonal quadratic: independent OU coordinates dX = -a X dt + s dW (MATH §3.4).
    h, lr, rho, sigma2, T = 1.0, 0.1, 0.2, 1.0, 1.0
    prob = ss.Quadratic(torch.diag(torch.tensor([h, h], dtype=F64)), noise_cov=sigma2)
    sde = ss.sde_model(prob, ss.USAM(lr, rho), order=1)
    a, s = h + rho * h * h, math.sqrt(lr * sigma2) * (1 + rho * h)
    m, v = math.exp(-a * T), s * s / (2 * a) * (1 - math.exp(-2 * a * T))
    exact4 = m**4 + 6 * m * m * v + 3 * v * v  # the SDE's E X_T^4 (Gaussian)
    errors = []
    for dt in (0.05, 0.025, 0.0125):
        steps = round(T / dt)
        _, em4 = _em_moments(1 - a * dt, s * math.sqrt(dt), 1.0, steps, kurtosis=1.0)
        errors.append(abs(em4 - exact4))
    # Weak order 1 of the two-point scheme: the error halves with dt.
    assert [errors[i] / errors[i + 1] for i in range(2)] == pytest.approx([2.0, 2.0], rel=0.1)
    # The simulated law is the recursion's (fourth moment of each coordinate, 4 SE).
    dt = 0.05
    sol = ss.simulate(sde, torch.ones(2, dtype=F64), t1=T, dt=dt, n_paths=40_000, seed=0, increments="two_point",
                      observables=[lambda x: x[:, 0] ** 4, lambda x: x[:, 1] ** 2], record_every=20)
    _, em4 = _em_moments(1 - a * dt, s * math.sqrt(dt), 1.0, 20, kurtosis=1.0)
    em2, _ = _em_moments(1 - a * dt, s * math.sqrt(dt), 1.0, 20, kurtosis=1.0)
    names = sol.observables
    assert abs(float(sol.mean(names[0])[-1]) - em4) < 4 * float(sol.sem(names[0])[-1])
    assert abs(float(sol.mean(names[1])[-1]) - em2) < 4 * float(sol.sem(names[1])[-1])
