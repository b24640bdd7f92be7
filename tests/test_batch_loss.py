"""The "batch_loss" observable (issue 21): the loss of the draw each step used, from the step's own gradient
evaluation, equal to the loss computed by hand on the module, and without changing the run."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sde_sam as ss
from conftest import rows


@pytest.fixture(scope="module")
def module_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Tanh(), torch.nn.Linear(8, 10)).double()
    inputs, labels = ss.problems.digits(64)
    return model, inputs, labels, ss.FiniteSum.from_module(model, F.cross_entropy, (inputs, labels), batch_size=8)


# Every row but Eigen-SAM's: the replay below starts ss.step without state, and Eigen-SAM's first eigenvector
# would then come from another random start than the run's.
@pytest.mark.parametrize("method", rows(without=("eigenvector",)))
def test_batch_loss_is_the_loss_of_the_steps_draw(module_problem, method):
    model, inputs, labels, prob = module_problem
    steps, n = 4, 3
    traj = ss.run(prob, method, prob.x_init, steps=steps, n_paths=n, seed=0, record_every=1,
                  observables=["batch_loss", "x_norm"], keep_draws=True)
    plain = ss.run(prob, method, prob.x_init, steps=steps, n_paths=n, seed=0, record_every=1,
                   observables=["x_norm"])
    assert torch.equal(traj.x_final, plain.x_final)  # observing the batch loss does not change the run
    assert torch.isnan(traj.values["batch_loss"][0]).all()  # no step before t = 0
    x = prob.x_init.expand(n, -1)
    for k in range(steps):  # replay the run step by step and compute each draw's loss by hand
        draws = traj.draws[k]
        want = torch.stack([F.cross_entropy(torch.func.functional_call(model, prob.unflatten(x[p]),
                                                                         (inputs[draws[p]],)), labels[draws[p]])
                            for p in range(n)])
        assert (traj.values["batch_loss"][k + 1] - want).abs().max() < 1e-12
        x, state = ss.step(prob, method, x, draws, state=None if k == 0 else state)


def test_batch_loss_with_gaussian_noise_is_f_plus_z_dot_x():
    prob = ss.Quadratic(torch.eye(2, dtype=torch.float64), noise_cov=0.1)
    traj = ss.run(prob, ss.SGD(0.1), torch.ones(2, dtype=torch.float64), steps=1, n_paths=4, seed=0,
                  record_every=1, observables=["batch_loss"], keep_draws=True)
    z = traj.draws[0]
    assert torch.allclose(traj.values["batch_loss"][1], 1.0 + z.sum(dim=-1), atol=1e-14)
