"""The same runs on a CUDA device: agreement with the CPU in distribution, bit-for-bit reproducibility on the
device from the same seed, float32 and float64. Skipped without CUDA.

The random numbers of a CUDA generator differ from the CPU's, so device and CPU agree only in distribution
(means within 4 standard errors of their difference); two runs on the device from one seed are identical.
"""
import math

import pytest
import torch

import sde_sam as ss
from conftest import rows

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DTYPES = [torch.float32, torch.float64]


def _quadratic(device, dtype):
    prob = ss.Quadratic(torch.diag(torch.tensor([1.0, 3.0], dtype=dtype, device=device)), noise_cov=0.1)
    return prob, torch.ones(2, dtype=dtype, device=device)


def _teacher_student(device, dtype):
    cpu = ss.problems.teacher_student(n=8, d_in=2, width=2, batch_size=2, dtype=dtype)
    prob = ss.FiniteSum(cpu.loss_fn, tuple(t.to(device) for t in cpu.data), batch_size=2, d=cpu.d)
    return prob, cpu.x_init.to(device)


def _agree(a, b, name="loss"):
    """Final-time means of ``a`` (CUDA) and ``b`` (CPU) within 4 SE of their difference."""
    ma, mb = float(a.mean(name)[-1]), float(b.mean(name)[-1])
    se = math.hypot(float(a.sem(name)[-1]), float(b.sem(name)[-1]))
    assert abs(ma - mb) < 4 * se + 1e-6 * abs(mb), (ma, mb, se)


# Every row of the method table, on both problems (m-SAM rows split mini-batches: the finite sum only).
RUN_CASES = ([pytest.param(p.values[0], (_quadratic, _teacher_student), id=p.id)
              for p in rows(without=("micro_batch",))]
             + [pytest.param(p.values[0], (_teacher_student,), id=p.id) for p in rows("micro_batch")])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method, problems", RUN_CASES)
def test_run_on_cuda(dtype, method, problems):
    kw = dict(steps=40, n_paths=4096, record_every=20)
    for make in problems:
        (gpu, x0g), (cpu, x0c) = make("cuda", dtype), make("cpu", dtype)
        a = ss.run(gpu, method, x0g, seed=0, **kw)
        b = ss.run(gpu, method, x0g, seed=0, **kw)
        assert torch.equal(a.x_final, b.x_final) and torch.equal(a.values["loss"], b.values["loss"])
        c = ss.run(cpu, method, x0c, seed=1, **kw)
        _agree(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", [1, "exact"])
def test_simulate_on_cuda(dtype, order):
    kw = dict(t1=1.0, dt=0.01, n_paths=4096, record_every=50)
    cases = [(_quadratic, ss.USAM(0.05, 0.1)), (_teacher_student, ss.SAM(0.1, 0.05))]
    for make, method in cases:
        (gpu, x0g), (cpu, x0c) = make("cuda", dtype), make("cpu", dtype)
        sde_g, sde_c = ss.sde_model(gpu, method, order=order), ss.sde_model(cpu, method, order=order)
        assert sde_g.expectation_mode == sde_c.expectation_mode
        a = ss.simulate(sde_g, x0g, seed=0, **kw)
        b = ss.simulate(sde_g, x0g, seed=0, **kw)
        assert torch.equal(a.x_final, b.x_final)
        _agree(a, ss.simulate(sde_c, x0c, seed=1, **kw))


@pytest.mark.parametrize("dtype", DTYPES)
def test_weak_error_study_on_cuda(dtype):
    kw = dict(lrs=[0.1, 0.05], horizon=0.5, n_paths=4096, sde_order=1, solver_check=False)
    (gpu, x0g), (cpu, x0c) = _teacher_student("cuda", dtype), _teacher_student("cpu", dtype)
    method = ss.SAM(0.1, 0.05)
    a = ss.weak_error(gpu, method, x0=x0g, seed=0, **kw).table
    b = ss.weak_error(gpu, method, x0=x0g, seed=0, **kw).table
    assert a.equals(b)
    c = ss.weak_error(cpu, method, x0=x0c, seed=1, **kw).table
    for col in ("discrete", "sde"):
        diff = (a[f"{col}_mean"] - c[f"{col}_mean"]).abs()
        se = (a[f"{col}_se"] ** 2 + c[f"{col}_se"] ** 2) ** 0.5
        assert (diff <= 4 * se + 1e-6 * c[f"{col}_mean"].abs()).all()


# -- module problems (FiniteSum.from_module) on the device ---------------------------------------------------------
def _conv_digits(device, dtype, n=128):
    """A small conv net + LayerNorm on digits (the module benchmark's architecture, fewer samples)."""
    from torch import nn
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LayerNorm(144), nn.Linear(144, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    a, t = ss.problems.datasets.digits(n, dtype=dtype)
    net = net.to(dtype=dtype, device=device)
    prob = ss.FiniteSum.from_module(net, F.cross_entropy, (a.reshape(-1, 1, 8, 8).to(device), t.to(device)),
                                    batch_size=8)
    return prob, prob.x_init


@pytest.mark.parametrize("dtype", DTYPES)
def test_module_run_and_sde_on_cuda(dtype):
    (gpu, x0g), (cpu, x0c) = _conv_digits("cuda", dtype), _conv_digits("cpu", dtype)
    method = ss.SAM(0.1, 0.05)
    kw = dict(steps=20, n_paths=1024, record_every=10)
    a = ss.run(gpu, method, x0g, seed=0, **kw)
    b = ss.run(gpu, method, x0g, seed=0, **kw)
    assert torch.equal(a.x_final, b.x_final) and a.n_diverged == 0
    _agree(a, ss.run(cpu, method, x0c, seed=1, **kw))
    # Chunks of any size on the device: the same numbers per path.
    c = ss.run(gpu, method, x0g, seed=0, chunk_size=300, **kw)
    assert torch.equal(c.x_final, a.x_final)
    sde_g, sde_c = ss.sde_model(gpu, method, order=1), ss.sde_model(cpu, method, order=1)
    skw = dict(t1=1.0, dt=0.05, n_paths=1024, record_every=10)
    s = ss.simulate(sde_g, x0g, seed=0, **skw)
    assert torch.equal(s.x_final, ss.simulate(sde_g, x0g, seed=0, **skw).x_final)
    _agree(s, ss.simulate(sde_c, x0c, seed=1, **skw))


def test_module_default_recording_and_lambda_max_on_cuda():
    gpu, x0 = _conv_digits("cuda", torch.float64)
    cpu, x0c = _conv_digits("cpu", torch.float64)
    traj = ss.run(gpu, ss.SAM(0.1, 0.05), x0, steps=30, n_paths=64)
    assert traj.info["record_every"] > 1 and traj.values["loss"].shape == (len(traj.times), 64)
    lam = ss.observables.lambda_max(iters=30)
    a = ss.run(gpu, ss.SGD(1e-9), x0, steps=2, n_paths=4, record_every=1, observables=[lam])
    b = ss.run(cpu, ss.SGD(1e-9), x0c, steps=2, n_paths=4, record_every=1, observables=[lam])
    # Nearly the same point on both devices (lr 1e-9): the same top eigenvalue to Lanczos' accuracy.
    torch.testing.assert_close(a.values["lambda_max"][-1], b.values["lambda_max"][-1], rtol=1e-6, atol=1e-8)


def test_two_point_signs_on_cuda():
    s = ss.streams.random_signs((1 << 20,), torch.Generator(device="cuda").manual_seed(0), dtype=torch.float32,
                                device="cuda")
    assert s.device.type == "cuda" and set(s.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(s.mean())) < 4 / 2**10
