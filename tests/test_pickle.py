"""Problems, methods and results pickle (issue 9): every ready-made problem with the standard library and
with cloudpickle, computing the same loss, gradients and HVPs after the round trip; user lambdas with
cloudpickle; methods, SDE models and trajectories."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

import sde_sam as ss
from conftest import methods
from sde_sam import problems as P

cloudpickle = pytest.importorskip("cloudpickle")

F64 = torch.float64


class _ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.norm = torch.nn.LayerNorm(2 * 6 * 6)
        self.fc = torch.nn.Linear(2 * 6 * 6, 10)

    def forward(self, a):
        return self.fc(torch.tanh(self.norm(self.conv(a.reshape(-1, 1, 8, 8)).flatten(1))))


def _conv_problem():
    a, t = P.digits(16)
    return ss.FiniteSum.from_module(_ConvNet().double(), F.cross_entropy, (a, t), batch_size=4)


def _quartic(x):
    return (x**4).sum() - (x**2).sum()


READY_MADE = {
    "quadratic": lambda: ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5], dtype=F64)), noise_cov=0.04),
    "saddle": lambda: P.saddle((1.0, -0.5), noise_cov=0.01),
    "objective": lambda: ss.Objective(_quartic, 3, noise_cov=0.01, dtype=F64),
    "linear_regression": lambda: P.linear_regression(n=8, d=3, batch_size=2),
    "teacher_student": lambda: P.teacher_student(n=8, batch_size=2),
    "mlp": lambda: P.mlp(n=8, d_in=3, hidden=4, batch_size=2, dtype=F64),
    "matrix_sensing": lambda: P.matrix_sensing(n=8, dim=3, batch_size=2),
    "digits_mlp": lambda: P.digits_mlp(32, hidden=4, batch_size=4),
    "digits_mlp_full_batch_mse": lambda: P.digits_mlp(32, hidden=4, loss="mse", batch_size=None, noise_cov=0.01),
    "breast_cancer_mlp": lambda: P.breast_cancer_mlp(32, hidden=4, batch_size=4),
    "breast_cancer_logistic": lambda: P.breast_cancer_logistic(32, batch_size=None),
    "conv_module": _conv_problem,
    "l2_quadratic": lambda: P.with_l2(ss.Quadratic(torch.diag(torch.tensor([1.0, 0.5], dtype=F64)), noise_cov=0.04), 0.1),
    "l2_objective": lambda: P.with_l2(ss.Objective(_quartic, 3, noise_cov=0.01, dtype=F64), 0.1),
    "l2_teacher_student": lambda: P.with_l2(P.teacher_student(n=8, batch_size=2), 5e-4),
    "l2_conv_module": lambda: P.with_l2(_conv_problem(), 5e-4),
}


def _evaluate(prob):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, prob.d, generator=gen, dtype=prob.dtype)
    v = torch.randn(2, prob.d, generator=gen, dtype=prob.dtype)
    draws = prob.sample_draws((2,), torch.Generator().manual_seed(1))
    return (draws, prob.loss(x), prob.grad(x), prob.hvp(x, v), prob.stochastic_grad(x, draws),
            prob.stochastic_hvp(x, v, draws))


@pytest.mark.parametrize("name", list(READY_MADE))
@pytest.mark.parametrize("dumps,loads", [(pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)],
                         ids=["pickle", "cloudpickle"])
def test_every_ready_made_problem_pickles_and_computes_the_same(name, dumps, loads):
    prob = READY_MADE[name]()
    copy = loads(dumps(prob))
    assert type(copy) is type(prob) and copy.d == prob.d and copy.dtype == prob.dtype
    for before, after in zip(_evaluate(prob), _evaluate(copy)):
        assert torch.equal(before, after)
    if hasattr(prob, "to_module"):
        torch.testing.assert_close(copy.x_init, prob.x_init, rtol=0, atol=0)
        assert type(copy.to_module(copy.x_init)) is type(prob.to_module(prob.x_init))


def test_user_lambdas_pickle_with_cloudpickle():
    prob = ss.Objective(lambda x: (x**4).sum() - (x**2).sum(), 2, noise_cov=0.01, dtype=F64)
    copy = cloudpickle.loads(cloudpickle.dumps(prob))
    x = torch.ones(3, 2, dtype=F64)
    assert torch.equal(copy.grad(x), prob.grad(x))
    fs = ss.FiniteSum(lambda x, s: 0.5 * (s[0] @ x - s[1]) ** 2, (torch.ones(4, 2, dtype=F64), torch.zeros(4, dtype=F64)),
                      batch_size=2)
    assert torch.equal(cloudpickle.loads(cloudpickle.dumps(fs)).grad(x), fs.grad(x))


def test_methods_sde_models_and_trajectories_pickle(tmp_path):
    for method in methods():  # every row of the method table
        for dumps, loads in [(pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)]:
            assert loads(dumps(method)) == method
    prob = P.linear_regression(n=8, d=3, batch_size=2)
    sde = ss.sde_model(prob, ss.USAM(0.05, 0.1), order=1)
    copy = pickle.loads(pickle.dumps(sde))
    x = torch.ones(2, 3, dtype=F64)
    assert torch.equal(copy.drift(x), sde.drift(x))
    traj = ss.run(prob, ss.SAM(0.05, 0.1), prob.x_init, steps=5, n_paths=3, seed=0)
    for dumps, loads in [(pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)]:
        back = loads(dumps(traj))
        assert torch.equal(back.x_final, traj.x_final) and torch.equal(back.values["loss"], traj.values["loss"])
    # A run from an unpickled problem is the same run.
    again = ss.run(pickle.loads(pickle.dumps(prob)), ss.SAM(0.05, 0.1), prob.x_init, steps=5, n_paths=3, seed=0)
    assert torch.equal(again.x_final, traj.x_final)
