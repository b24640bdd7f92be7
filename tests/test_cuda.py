"""The same runs on a CUDA device: agreement with the CPU in distribution, bit-for-bit reproducibility on the
device from the same seed, float32 and float64. Skipped without CUDA.

The random numbers of a CUDA generator differ from the CPU's, so device and CPU agree only in distribution
(means within 4 standard errors of their difference); two runs on the device from one seed are identical.
"""
import math

import pytest
import torch

import sde_sam as ss

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


@pytest.mark.parametrize("dtype", DTYPES)
def test_run_on_cuda(dtype):
    kw = dict(steps=40, n_paths=4096, record_every=20)
    for make, method in ((_quadratic, ss.SAM(0.05, 0.1)), (_teacher_student, ss.SAM(0.1, 0.05))):
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
        assert sde_g.mode == sde_c.mode
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
