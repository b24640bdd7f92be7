"""Discrete runs (MATH §2, §3.4, §7): paths never interact, chunking never changes results, the
closed forms of quadratics (SAM's 2-cycle, USAM's edge, USAM's exact moments) and the Trajectory."""
from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

import sde_sam as ss
from conftest import TABLE, by_id, rows
from sde_sam.discrete import StepState, initial_state, step
from sde_sam.methods import effective_gradient
from sde_sam.problems import FiniteSum, linear_regression, teacher_student

F64 = torch.float64


def _coord(i: int):
    """Observable x -> x[:, i], named so that several can be recorded together."""

    def coordinate(x: torch.Tensor) -> torch.Tensor:
        return x[:, i]

    coordinate.__name__ = f"x{i}"
    return coordinate


def _quadratic_full_noise() -> ss.Quadratic:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 4, generator=g, dtype=F64), torch.randn(4, 4, generator=g, dtype=F64)
    return ss.Quadratic(a @ a.T / 4, noise_cov=b @ b.T / 4)


PROBLEMS = {
    "quadratic_full_noise": _quadratic_full_noise,
    "linear_regression": lambda: linear_regression(n=16, d=4, batch_size=3),
    "teacher_student": lambda: teacher_student(n=16, batch_size=3),
}

def _batch_cases():
    """Every row of the shared method table on every problem it applies to (m-SAM: mini-batch problems only)."""
    for problem_name in PROBLEMS:
        for row in TABLE:
            if "micro_batch" in row.tags and problem_name == "quadratic_full_noise":
                continue
            yield pytest.param(problem_name, row.method, id=f"{problem_name}-{row.id}")


# -- paths never interact -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("problem_name, method", list(_batch_cases()))
def test_batch_step_equals_each_path_alone(problem_name, method):
    prob = PROBLEMS[problem_name]()
    n = 37
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, prob.d, generator=g, dtype=F64)
    draws = prob.sample_draws((n,), g)
    v = torch.randn(n, prob.d, generator=g, dtype=F64)
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    buf = torch.randn(n, prob.d, generator=g, dtype=F64) if method.momentum else None
    # k = 2: Eigen-SAM refreshes v at this step (refresh_every=2), so the refresh is covered too.
    state = StepState(momentum=buf, v=v if method.uses_eigenvector else None, k=2)
    x_next, new = step(prob, method, x, draws, state=state, eps=1e-12)
    fired = new.guarded
    assert x_next.shape == x.shape and fired.shape == (n,) and x_next.dtype == F64 and new.k == 3
    assert not torch.equal(x_next[0], x_next[1])  # distinct paths, distinct results
    for i in range(n):
        one = StepState(momentum=None if buf is None else buf[i:i + 1],
                        v=state.v if state.v is None else v[i:i + 1], k=2)
        alone, new_alone = step(prob, method, x[i:i + 1], draws[i:i + 1], state=one, eps=1e-12)
        assert torch.equal(alone, x_next[i:i + 1]), f"path {i}: {alone - x_next[i:i + 1]}"
        assert torch.equal(new_alone.guarded, fired[i:i + 1])
        if buf is not None:
            assert torch.equal(new_alone.momentum, new.momentum[i:i + 1])


@pytest.mark.parametrize("problem_name, method", [c for c in _batch_cases() if c.values[1].momentum])
def test_momentum_zero_is_the_plain_base_step_bit_for_bit(problem_name, method):
    """β = 0 (every other option kept) is x − η(G + λx) with G the one effective gradient (MATH §2.1, §2.3)."""
    prob = PROBLEMS[problem_name]()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, prob.d, generator=g, dtype=F64)
    draws = prob.sample_draws((9,), g)
    plain = dataclasses.replace(method, momentum=0.0, nesterov=False)
    state = initial_state(prob, plain, x, seed=3)
    G, _ = effective_gradient(prob, plain, x, draws, eps=1e-12, v=state.v)
    got, new = step(prob, plain, x, draws, state=state, eps=1e-12)
    # torch.optim.SGD's d_p.add(p, alpha=weight_decay), then p - lr * d_p
    assert torch.equal(got, x - plain.lr * (G.add(x, alpha=plain.weight_decay) if plain.weight_decay else G))
    assert new.momentum is None


@pytest.mark.parametrize("problem_name", ["linear_regression", "teacher_student"])
def test_full_batch_gradient_of_one_path_alone(problem_name):
    # The root cause of the DNSAM failures above, shown directly (it fails for any number of rows).
    prob = PROBLEMS[problem_name]()
    x = torch.randn(5, prob.d, generator=torch.Generator().manual_seed(1), dtype=F64)
    for i in range(5):
        assert torch.equal(prob.grad(x[i:i + 1]), prob.grad(x)[i:i + 1]), i
        assert torch.equal(prob.loss(x[i:i + 1]), prob.loss(x)[i:i + 1]), i


@pytest.mark.parametrize("problem_name", ["linear_regression", "teacher_student"])
def test_dnsam_paths_do_not_couple(problem_name):
    # Weaker than bit for bit but catches any missing dim=-1: coupling would be O(1).
    prob = PROBLEMS[problem_name]()
    n = 9
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, prob.d, generator=g, dtype=F64)
    draws = prob.sample_draws((n,), g)
    batch = step(prob, ss.DNSAM(0.1, 0.2), x, draws, eps=1e-12)[0]
    alone = torch.cat([step(prob, ss.DNSAM(0.1, 0.2), x[i:i + 1], draws[i:i + 1], eps=1e-12)[0] for i in range(n)])
    torch.testing.assert_close(batch, alone, rtol=1e-13, atol=1e-14)


def _chunk_cases():
    # Every row on the quadratic (m-SAM's on a mini-batch problem); SGD and DNSAM (its full-batch gradient) on both
    # finite sums.
    for p in rows(without=("micro_batch",)):
        yield pytest.param("quadratic_full_noise", *p.values, id=f"quadratic-{p.id}")
    for p in by_id("SGD", "DNSAM") + rows("micro_batch"):
        yield pytest.param("teacher_student", *p.values, id=f"teacher_student-{p.id}")
    for p in by_id("SGD", "DNSAM"):
        yield pytest.param("linear_regression", *p.values, id=f"linear_regression-{p.id}")


@pytest.mark.parametrize("problem_name, chunk_method", list(_chunk_cases()))
def test_chunk_size_does_not_change_results(problem_name, chunk_method):
    prob = PROBLEMS[problem_name]()
    x0 = torch.full((prob.d,), 0.3, dtype=F64)
    kw = dict(steps=4, n_paths=3000, seed=3, record_every=2, observables=("loss", "x_norm"))
    chunked = ss.run(prob, chunk_method, x0, chunk_size=1024, **kw)
    whole = ss.run(prob, chunk_method, x0, chunk_size=None, **kw)
    assert torch.equal(chunked.x_final, whole.x_final)
    for name in whole.values:
        assert torch.equal(chunked.values[name], whole.values[name]), name
    assert chunked.guard_count == whole.guard_count and torch.equal(chunked.diverged, whole.diverged)
    # Paths in different random-stream blocks really see different noise.
    assert not torch.equal(whole.x_final[0], whole.x_final[2000])


def test_seed_reproducibility_and_generator(diag_quadratic):
    x0 = torch.ones(3, dtype=F64)
    a = ss.run(diag_quadratic, ss.SAM(0.1, 0.05), x0, steps=5, n_paths=10, seed=1)
    b = ss.run(diag_quadratic, ss.SAM(0.1, 0.05), x0, steps=5, n_paths=10, seed=1)
    c = ss.run(diag_quadratic, ss.SAM(0.1, 0.05), x0, steps=5, n_paths=10, seed=2)
    assert torch.equal(a.x_final, b.x_final) and not torch.equal(a.x_final, c.x_final)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    d1 = ss.run(diag_quadratic, ss.SAM(0.1, 0.05), x0, steps=5, n_paths=10, seed=g1)
    d2 = ss.run(diag_quadratic, ss.SAM(0.1, 0.05), x0, steps=5, n_paths=10, seed=g2)
    assert torch.equal(d1.x_final, d2.x_final)


# -- closed forms: full-batch SAM's 2-cycle, USAM's edge (MATH §7) --------------------------------------------
@pytest.mark.parametrize("lam, lr, rho, amplitude", [
    (10.0, 0.15, 0.1, 0.3), (2.0, 0.3, 0.5, 0.2143), (1.0, 0.5, 0.2, None), (4.0, 0.4, 0.05, None),
    (50.0, 0.01, 0.1, None), (19.0, 0.1, 0.02, None),
])
def test_full_batch_sam_reaches_the_two_cycle(lam, lr, rho, amplitude):
    a_star = lr * rho * lam / (2 - lr * lam)
    if amplitude is not None:  # MATH §8's public reference values
        assert a_star == pytest.approx(amplitude, abs=1e-4)
    prob = ss.Quadratic(torch.tensor([[lam]], dtype=F64), noise_cov=0.0)
    # Generic starts: a start that lands exactly on 0 stays there (sign 0, the guard fires), a SAM fixed point.
    x0 = torch.tensor([[0.913], [-0.7071], [0.0537], [3.1416], [-2.718]], dtype=F64)
    steps = 400  # deviations contract by |1 - lr*lam| <= 0.9 per step
    traj = ss.run(prob, ss.SAM(lr, rho), x0, steps=steps, observables=(_coord(0),))
    last, before = traj.values["x0"][-1], traj.values["x0"][-2]
    assert bool(((last.abs() - a_star).abs() < 1e-8).all()), last
    assert bool(((last + before).abs() < 1e-8).all())  # x_{k+1} = -x_k: the 2-cycle, not a fixed point
    assert torch.equal(traj.values["x0"][-1], traj.x_final[:, 0])
    assert traj.guard_count == 0 and traj.n_diverged == 0


@pytest.mark.parametrize("L, rho", [(1.0, 0.1), (10.0, 0.05), (4.0, 0.5)])
@pytest.mark.parametrize("factor", [0.97, 1.03])
def test_usam_edge_of_stability(L, rho, factor):
    # On ½ L x² full-batch USAM is x_{k+1} = (1 − η L (1 + ρ L)) x_k: |x_k| = |1 − 2·factor|^k |x_0| at
    # η = factor · 2/(L + ρ L²); it diverges iff factor > 1.
    lr = factor * 2 / (L + rho * L**2)
    prob = ss.Quadratic(torch.tensor([[L]], dtype=F64), noise_cov=0.0)
    x0 = torch.tensor([1.0], dtype=F64)
    steps = 100
    free = ss.run(prob, ss.USAM(lr, rho), x0, steps=steps, record_every=steps)
    assert abs(free.x_final.item()) == pytest.approx(abs(1 - 2 * factor) ** steps, rel=1e-9)
    capped = ss.run(prob, ss.USAM(lr, rho), x0, steps=4 * steps, max_norm=1e6, observables=("x_norm",))
    if factor < 1:
        assert capped.n_diverged == 0 and abs(capped.x_final.item()) < 1e-8
    else:
        assert capped.n_diverged == 1 and bool(capped.diverged[0])
        first = math.ceil(math.log(1e6) / math.log(abs(1 - 2 * factor)))  # first k with |x_k| > 1e6
        assert capped.diverged_at[0].item() == pytest.approx(first * lr, rel=1e-12)
        assert math.isnan(capped.x_final.item())


# -- USAM on a noisy quadratic: exact moments (MATH §3.4) -----------------------------------------------------
def test_usam_noisy_quadratic_moments(spd):
    d, lr, rho, n_paths = 3, 0.1, 0.5, 20_000
    H, cov = spd(d, seed=0, lo=0.3, hi=2.0), spd(d, seed=1, lo=0.1, hi=0.5)
    assert (H - torch.diag(H.diagonal())).abs().max() > 0.1 and (cov - torch.diag(cov.diagonal())).abs().max() > 0.05
    prob = ss.Quadratic(H, noise_cov=cov)
    x0 = torch.tensor([1.0, -1.0, 0.5], dtype=F64)
    traj = ss.run(prob, ss.USAM(lr, rho), x0, steps=30, n_paths=n_paths, seed=0, record_every=5,
                  observables=("loss", *(_coord(i) for i in range(d))))
    eye = torch.eye(d, dtype=F64)
    M = eye + rho * H
    A = eye - lr * H @ M
    noise = lr**2 * M @ cov @ M.T
    mean, second = x0.clone(), torch.zeros(d, d, dtype=F64)  # E x_k and Cov x_k
    steps_done = 0
    for r, t in enumerate(traj.times.tolist()):
        k = round(t / lr)
        while steps_done < k:
            mean, second, steps_done = A @ mean, A @ second @ A.T + noise, steps_done + 1
        for i in range(d):
            est, se = traj.mean(f"x{i}")[r], traj.sem(f"x{i}")[r]
            assert abs(est - mean[i]) < 4 * se + 1e-14, (k, i, float(est), float(mean[i]), float(se))
        exact_loss = 0.5 * torch.trace(H @ (torch.outer(mean, mean) + second))
        assert abs(traj.mean("loss")[r] - exact_loss) < 4 * traj.sem("loss")[r] + 1e-14, k
    # The test has teeth: SGD's mean (rho = 0) is many standard errors away at step 10.
    sgd_mean = torch.linalg.matrix_power(eye - lr * H, 10) @ x0
    assert ((traj.mean("x0")[2] - sgd_mean[0]).abs() / traj.sem("x0")[2]) > 20


# -- the Trajectory -------------------------------------------------------------------------------------------
def _diverging_run():
    # USAM just past its edge (factor 1.03: |x_k| = 1.06^k |x_0|): rows starting at 10 leave max_norm = 100
    # at k = 40, rows starting near 1e-3 stay below 0.04 over 60 steps.
    L, rho = 1.0, 0.1
    lr = 1.03 * 2 / (L + rho * L**2)
    prob = ss.Quadratic(torch.tensor([[L]], dtype=F64), noise_cov=0.0)
    small = torch.linspace(1e-3, 2e-3, 7, dtype=F64)
    x0 = torch.cat([small[:3], torch.tensor([10.0, -10.0], dtype=F64), small[3:]])[:, None]
    big = torch.tensor([False, False, False, True, True, False, False, False, False])
    traj = ss.run(prob, ss.USAM(lr, rho), x0, steps=60, max_norm=100.0, observables=("loss", "x_norm"))
    return prob, lr, rho, x0, big, traj


def test_trajectory_excludes_and_counts_diverged_paths():
    prob, lr, rho, x0, big, traj = _diverging_run()
    assert torch.equal(traj.diverged, big) and traj.n_diverged == 2 and traj.n_paths == 9
    first = math.ceil(math.log(100 / 10) / math.log(1.06))
    assert torch.allclose(traj.diverged_at[big], torch.full((2,), first * lr, dtype=F64), rtol=1e-12)
    assert bool(traj.diverged_at[~big].isnan().all())
    assert bool(traj.x_final[big].isnan().all()) and bool(torch.isfinite(traj.x_final[~big]).all())
    for name in ("loss", "x_norm"):
        values = traj.values[name]
        before = traj.times < first * lr
        assert bool(torch.isfinite(values[before][:, big]).all()) and bool(values[~before][:, big].isnan().all())
        kept = values[:, ~big]
        assert torch.equal(traj.mean(name), kept.mean(dim=1))
        assert torch.allclose(traj.sem(name), kept.std(dim=1) / math.sqrt(7), rtol=1e-12, atol=0)
        assert torch.allclose(traj.var(name), kept.var(dim=1), rtol=1e-12, atol=0)
        assert bool(torch.isfinite(traj.mean(name)).all()) and bool((traj.sem(name) > 0).all())
    # The kept paths are exactly what they would be without the diverging ones.
    alone = ss.run(prob, ss.USAM(lr, rho), x0[~big], steps=60, max_norm=100.0, observables=("loss", "x_norm"))
    assert torch.equal(alone.values["loss"], traj.values["loss"][:, ~big])


def test_trajectory_frame_and_times():
    _, lr, rho, _, _, traj = _diverging_run()
    frame = traj.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert {"observable", "time", "mean", "sem", "n_paths", "n_diverged", "kind", "method", "lr", "rho"} <= set(frame)
    assert len(frame) == 2 * len(traj.times) and set(frame["observable"]) == {"loss", "x_norm"}
    assert (frame["n_paths"] == 7).all() and (frame["n_diverged"] == 2).all()
    assert (frame["method"] == "USAM").all() and (frame["lr"] == lr).all() and (frame["rho"] == rho).all()
    loss = frame[frame["observable"] == "loss"]
    assert loss["mean"].tolist() == traj.mean("loss").tolist() and loss["time"].tolist() == traj.times.tolist()
    with pytest.raises(KeyError, match="'grad_norm' was not recorded"):
        traj.mean("grad_norm")
    # Recording times: every record_every steps and always the last one, on the t = k·lr scale.
    short = ss.run(ss.Quadratic(torch.eye(2, dtype=F64), noise_cov=0.1), ss.SGD(0.05), torch.ones(2, dtype=F64),
                   steps=10, record_every=3, n_paths=4)
    assert torch.allclose(short.times, torch.tensor([0, 3, 6, 9, 10], dtype=F64) * 0.05, rtol=1e-15, atol=0)
    assert short.values["loss"].shape == (5, 4) and short.x_final.shape == (4, 2)


def test_trajectory_save_load_round_trip(tmp_path):
    *_, traj = _diverging_run()
    path = tmp_path / "traj.pt"
    traj.save(path)
    back = ss.Trajectory.load(path)
    for name in ("times", "x_final", "diverged", "diverged_at"):
        assert torch.equal(getattr(back, name), getattr(traj, name)) or (
            torch.equal(getattr(back, name).isnan(), getattr(traj, name).isnan())
            and torch.equal(getattr(back, name).nan_to_num(), getattr(traj, name).nan_to_num())), name
    assert back.values.keys() == traj.values.keys()
    for name in traj.values:
        assert torch.equal(back.values[name].nan_to_num(7.0), traj.values[name].nan_to_num(7.0))
    assert back.guard_count == traj.guard_count and back.info == traj.info
    pd.testing.assert_frame_equal(back.to_frame(), traj.to_frame())


def test_two_anonymous_observables_are_both_recorded(diag_quadratic):
    traj = ss.run(diag_quadratic, ss.SGD(0.1), torch.ones(3, dtype=F64), steps=2, n_paths=3,
                  observables=[lambda x: x[:, 0], lambda x: x[:, 1]])
    assert len(traj.observables) == 2
    first, second = (traj.values[name][-1] for name in traj.observables)
    assert torch.equal(first, traj.x_final[:, 0]) and torch.equal(second, traj.x_final[:, 1])


def test_finite_sum_without_d_takes_it_from_x0():
    A, y = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0)), torch.zeros(8, dtype=F64)
    prob = FiniteSum(lambda x, s: 0.5 * (s[0] @ x - s[1]) ** 2, (A, y), batch_size=2)
    traj = ss.run(prob, ss.SAM(0.05, 0.05), torch.ones(2, dtype=F64), steps=4, n_paths=3)
    assert traj.x_final.shape == (3, 2) and traj.n_diverged == 0
