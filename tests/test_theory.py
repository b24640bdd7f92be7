"""Closed forms of MATH §7 and §3.4: public reference values, independent brute-force checks, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from sde_sam import theory

F64 = torch.float64  # explicit everywhere: tests must not change the global default dtype


def _rotation(d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


# -- MATH §8 reference values --------------------------------------------------------------------------
def test_reference_values():
    assert theory.usam_edge(0.01, 0.1) == pytest.approx(40.0, abs=1e-12)
    assert theory.usam_edge(0.1, 0.05) == pytest.approx(12.3607, abs=1e-4)
    assert theory.sam_cycle_amplitude(0.15, 0.1, 10.0) == pytest.approx(0.3, abs=1e-12)
    # (lambda, eta, rho) = (2, 0.3, 0.5): the arguments are (lr, rho, lam).
    assert theory.sam_cycle_amplitude(0.3, 0.5, 2.0) == pytest.approx(0.2143, abs=1e-4)
    assert theory.sam_cycle_grad_norm(0.15, 0.1, 10.0) == pytest.approx(3.0, abs=1e-12)
    assert theory.sam_edge(0.15, 0.1, 3.0) == pytest.approx(10.0, abs=1e-12)
    assert theory.sam_edge(0.01, 0.1, 0.01) == pytest.approx(4.422, abs=1e-3)
    assert theory.sam_edge(0.01, 0.1, 1.0) == pytest.approx(40.0, abs=1e-12)
    assert theory.gd_edge(0.01) == pytest.approx(200.0)


# -- backends --------------------------------------------------------------------------------------------
def test_return_kind_follows_inputs():
    assert isinstance(theory.usam_edge(0.01, 0.1), float)
    assert isinstance(theory.usam_diverges(0.1, 0.1, 1.0), bool)
    out = theory.usam_edge(np.array([0.01, 0.1]), 0.1)
    assert isinstance(out, np.ndarray) and out.shape == (2,)
    t = theory.usam_edge(torch.tensor([0.01, 0.1], dtype=torch.float32), 0.1)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), out, rtol=1e-6)
    b = theory.usam_diverges(torch.tensor([0.1, 10.0], dtype=F64), 0.1, 1.0)
    assert b.dtype == torch.bool and b.tolist() == [False, True]


def test_broadcasting():
    lr = np.array([[0.01], [0.1]])
    rho = np.array([0.0, 0.05, 0.1])
    out = theory.usam_edge(lr, rho)
    assert out.shape == (2, 3)
    assert out[0, 2] == pytest.approx(40.0) and out[1, 1] == pytest.approx(12.36068, abs=1e-5)


# -- stability edges -------------------------------------------------------------------------------------
@pytest.mark.parametrize("lr, rho", [(0.01, 0.1), (0.1, 0.05), (0.3, 2.0), (1e-3, 1e-6)])
def test_usam_edge_solves_its_equation(lr, rho):
    lam = theory.usam_edge(lr, rho)
    assert lr * lam * (1 + rho * lam) == pytest.approx(2.0, rel=1e-12)
    assert theory.usam_lr_threshold(rho, lam) == pytest.approx(lr, rel=1e-12)


def test_usam_edge_rho_zero_is_gd_edge():
    assert theory.usam_edge(0.05, 0.0) == theory.gd_edge(0.05) == 40.0


@pytest.mark.parametrize("lr, rho, g", [(0.01, 0.1, 0.01), (0.1, 0.3, 2.0), (0.05, 1e-3, 10.0)])
def test_sam_edge_solves_its_equation_and_is_below_gd(lr, rho, g):
    lam = theory.sam_edge(lr, rho, g)
    assert lr * lam * (1 + rho * lam / g) == pytest.approx(2.0, rel=1e-12)
    assert lam < 2 / lr
    # The paper's form, evaluated directly.
    assert lam == pytest.approx(g / (2 * rho) * (math.sqrt(1 + 8 * rho / (lr * g)) - 1), rel=1e-9)


def test_sam_edge_limits():
    lr = 0.01
    assert theory.sam_edge(lr, 0.0, 1.0) == 2 / lr
    assert theory.sam_edge(lr, 0.0, 0.0) == 2 / lr  # rho = 0 is GD, whatever the gradient
    assert theory.sam_edge(lr, 0.1, math.inf) == 2 / lr
    assert theory.sam_edge(lr, 1e-12, 1.0) == pytest.approx(2 / lr, rel=1e-9)
    assert theory.sam_edge(lr, 0.1, 1e12) == pytest.approx(2 / lr, rel=1e-9)
    assert theory.sam_edge(lr, 0.1, 0.0) == 0.0
    g = 1e-10  # ~ sqrt(2 g / (rho lr)) as g -> 0
    assert theory.sam_edge(lr, 0.1, g) == pytest.approx(math.sqrt(2 * g / (0.1 * lr)), rel=1e-4)
    t = theory.sam_edge(torch.tensor(lr, dtype=F64), torch.tensor([0.0, 0.1, 0.1], dtype=F64), torch.tensor([0.0, 0.0, math.inf], dtype=F64))
    assert torch.isfinite(t).all() and t.tolist() == [200.0, 0.0, 200.0]


def _usam_1d(lr, rho, L, steps=3000):
    x = 1.0
    for _ in range(steps):
        x = x - lr * (L * x + rho * L**2 * x)  # the USAM gradient of L/2 x^2 at x + rho L x
        if abs(x) > 1e6:
            return True
    return False


@pytest.mark.parametrize("rho, L", [(0.1, 10.0), (0.0, 4.0), (0.5, 3.0), (0.05, 40.0)])
@pytest.mark.parametrize("factor", [0.95, 1.05])
def test_usam_divergence_threshold_by_iteration(rho, L, factor):
    lr = factor * theory.usam_lr_threshold(rho, L)
    assert theory.usam_diverges(lr, rho, L) == (factor > 1) == _usam_1d(lr, rho, L)
    assert theory.usam_discrete_converges(lr, rho, L) == (factor < 1)


def test_usam_divergence_any_curvature():
    # Negative curvature with rho|L| < 1 escapes for every lr; with rho|L| > 1 it can converge (MATH §7).
    assert theory.usam_lr_threshold(0.1, -1.0) < 0 and theory.usam_diverges(0.05, 0.1, -1.0) and _usam_1d(0.05, 0.1, -1.0)
    assert not theory.usam_diverges(0.05, 0.1, -20.0) and not _usam_1d(0.05, 0.1, -20.0)
    assert theory.usam_lr_threshold(0.0, 0.0) == math.inf and not theory.usam_diverges(1.0, 0.0, 0.0)


# -- the SAM 2-cycle -------------------------------------------------------------------------------------
CYCLES = [(0.15, 0.1, 10.0), (0.3, 0.5, 2.0), (0.05, 0.02, 30.0), (0.01, 0.1, 150.0)]


@pytest.mark.parametrize("lr, rho, lam", CYCLES)
def test_sam_cycle_sits_on_sam_edge(lr, rho, lam):
    g = theory.sam_cycle_grad_norm(lr, rho, lam)
    assert g == pytest.approx(lam * theory.sam_cycle_amplitude(lr, rho, lam), rel=1e-14)
    assert theory.sam_edge(lr, rho, g) == pytest.approx(lam, rel=1e-12)


@pytest.mark.parametrize("lr, rho, lam", CYCLES)
@pytest.mark.parametrize("x0", [1.0, -0.01, 5.0])
def test_full_batch_sam_reaches_the_cycle(lr, rho, lam, x0):
    x = torch.tensor(x0, dtype=F64)
    for _ in range(3000):
        x = x - lr * lam * (x + rho * torch.sign(x))  # SAM on lam/2 x^2: grad at x + rho g/|g|
    a = theory.sam_cycle_amplitude(lr, rho, lam)
    assert abs(x.item()) == pytest.approx(a, rel=1e-9)
    x_next = x - lr * lam * (x + rho * torch.sign(x))
    assert x_next.item() == pytest.approx(-x.item(), rel=1e-9)


def test_sam_cycle_contraction_matches_2d_iteration():
    # Deviations from the cycle (a, 0) of SAM on diag(lams): measure the per-step ratio of each component.
    lr, rho, lams = 0.1, 0.05, torch.tensor([12.0, 4.0, -3.0], dtype=F64)
    H = torch.diag(lams)
    a = theory.sam_cycle_amplitude(lr, rho, 12.0)
    factors = theory.sam_cycle_contraction(lr, rho, lams)
    assert factors.shape == (3,)
    delta = 1e-7
    x = torch.tensor([a + delta, delta, delta], dtype=F64)
    g = H @ x
    x_next = x - lr * H @ (x + rho * g / g.norm())
    dev = torch.stack([x_next[0] + a, x_next[1], x_next[2]])  # the cycle flips the sign of the first coordinate
    ratios = dev.abs() / delta
    torch.testing.assert_close(ratios, factors, rtol=1e-5, atol=1e-5)
    assert theory.sam_cycle_contraction(lr, rho, [12.0])[0] == pytest.approx(abs(1 - lr * 12.0))


def test_sam_cycle_contraction_batched_and_independent_of_rho():
    lams = np.array([[10.0, 3.0, -1.0], [5.0, 5.0, 0.0]])
    f1 = theory.sam_cycle_contraction(0.1, 0.01, lams)
    f2 = theory.sam_cycle_contraction(0.1, 1.0, lams)
    assert f1.shape == (2, 3)
    np.testing.assert_allclose(f1, f2)
    assert f1[1, 1] == pytest.approx(1.0)  # a repeated top eigenvalue is neutral: the cycle can rotate


def test_sam_centre_drift_step():
    assert theory.sam_centre_drift_step(0.15, 0.1, 10.0) == pytest.approx(2 * 0.15 * 0.01 / 0.25)
    assert theory.sam_centre_drift_step(0.1, 0.0, 1.0) == 0.0


# -- saddles ---------------------------------------------------------------------------------------------
def test_usam_flow_contracts():
    lam = np.array([2.0, -5.0, -20.0, 0.0, -10.0])
    np.testing.assert_array_equal(theory.usam_flow_contracts(0.1, lam), [True, False, True, False, False])
    assert not theory.usam_flow_contracts(0.0, -100.0)  # SGD always escapes


def test_usam_discrete_converges_is_the_complement_of_divergence():
    lr, rho = 0.05, 0.1
    lam = np.linspace(-30, 30, 601)
    conv = theory.usam_discrete_converges(lr, rho, lam)
    a = lam * (1 + rho * lam)
    np.testing.assert_array_equal(conv, (a >= 0) & (lr * a <= 2))
    off_boundary = np.abs(lr * a - 2) > 1e-9
    np.testing.assert_array_equal(conv[off_boundary], ~theory.usam_diverges(lr, rho, lam)[off_boundary])


def test_sam_flow_contracts_matches_flow_rate():
    rho, lam = 0.1, np.array([-4.0, -4.0, 3.0, 3.0, 0.0])
    g = np.array([0.3, 0.5, 0.3, 100.0, 0.1])
    np.testing.assert_array_equal(theory.sam_flow_contracts(rho, lam, g), [True, False, True, True, False])
    # Rate of the flow along each direction: lam (1 + rho lam / g) > 0 means contraction.
    rate = lam * (1 + rho * lam / g)
    np.testing.assert_array_equal(theory.sam_flow_contracts(rho, lam, g), rate > 0)
    assert theory.sam_flow_contracts(0.1, -1.0, 0.0)  # near the saddle the SAM flow is attracted


def test_dnsam_diffusion_factor():
    assert theory.dnsam_diffusion_factor(0.1, -2.0, 0.2) == pytest.approx(0.0, abs=1e-15)
    assert theory.dnsam_diffusion_factor(0.1, -2.0, 1.0) == pytest.approx(1 - 0.1 * 2.0)
    assert theory.dnsam_diffusion_factor(0.1, 2.0, 1.0) == pytest.approx(1.2)  # eigenvalue of I + rho H/|g|


# -- Eigen-SAM -------------------------------------------------------------------------------------------
def test_eigen_sam_alignment_and_norm_vs_explicit_vector():
    gen = torch.Generator().manual_seed(0)
    d, rho = 7, 0.05
    for alpha in (0.0, 0.2, 1.5):
        for _ in range(20):
            g = torch.randn(d, generator=gen, dtype=F64)
            v = torch.randn(d, generator=gen, dtype=F64)
            v = v / v.norm()
            g_hat = g / g.norm()
            c = torch.dot(g_hat, v)
            eps = rho * (g_hat + alpha * torch.sign(c) * (v - c * g_hat))
            cos = torch.dot(eps, v).abs() / eps.norm()
            assert theory.eigen_sam_alignment(alpha, c).item() == pytest.approx(cos.item(), rel=1e-12)
            assert theory.eigen_sam_perturbation_norm(rho, alpha, c).item() == pytest.approx(eps.norm().item(), rel=1e-12)


def test_eigen_sam_alignment_limits():
    assert theory.eigen_sam_alignment(0.3, 1.0) == 1.0
    assert theory.eigen_sam_alignment(0.0, -0.4) == pytest.approx(0.4)
    assert theory.eigen_sam_alignment(0.2, 0.0) == pytest.approx(0.2 / math.sqrt(1.04))


# -- eigenvalue filters ----------------------------------------------------------------------------------
def test_filters():
    lam = np.array([-1.0, 0.0, 20.0, 25.0, 30.0])
    np.testing.assert_array_equal(theory.gd_filter(0.1, lam), [False, True, True, False, False])
    np.testing.assert_array_equal(theory.heavy_ball_filter(0.1, 0.5, lam), [False, True, True, True, True])
    np.testing.assert_array_equal(theory.heavy_ball_filter(0.1, 0.0, lam), theory.gd_filter(0.1, lam))
    np.testing.assert_array_equal(theory.usam_heavy_ball_filter(0.1, 0.0, 0.5, lam), theory.heavy_ball_filter(0.1, 0.5, lam))
    # USAM: lam (1 + rho lam) <= 2(1+beta)/lr; also negative lam <= -1/rho.
    lam2 = np.array([-20.0, -5.0, 5.0, 10.0])
    # a = lam (1 + rho lam) = [20, -2.5, 7.5, 20]
    np.testing.assert_array_equal(theory.usam_heavy_ball_filter(0.2, 0.1, 0.0, lam2), [False, False, True, False])
    np.testing.assert_array_equal(theory.usam_heavy_ball_filter(0.1, 0.1, 0.0, lam2), [True, False, True, True])
    np.testing.assert_array_equal(theory.usam_heavy_ball_filter(0.125, 0.1, 0.5, lam2), [True, False, True, True])


# -- quadratic moments (MATH §3.4) -----------------------------------------------------------------------
LAMS = np.array([3.0, 1.0, 0.25, -0.5])


def _exact_discrete_moments(H, x0, steps, lr, rho, sigma2):
    """Brute force: m <- A m, C <- A C A^T + lr^2 (I+rho H) Sigma (I+rho H)^T; E f = ½(m^T H m + tr(H C))."""
    d = H.shape[0]
    B = np.eye(d) + rho * H
    A = np.eye(d) - lr * H @ B
    m, C, out = x0.copy(), np.zeros((d, d)), []
    for _ in range(steps + 1):
        out.append(0.5 * (m @ H @ m + np.trace(H @ C)))
        m, C = A @ m, A @ C @ A.T + lr**2 * sigma2 * B @ B.T
    return np.array(out)


@pytest.mark.parametrize("rho", [0.0, 0.2])
def test_discrete_expected_loss_vs_moment_recursion(rho):
    lr, sigma2, steps = 0.1, 0.3, 60
    x0 = np.array([1.0, -2.0, 0.5, 0.1])
    Q = _rotation(4, 1)
    H = Q @ np.diag(LAMS) @ Q.T  # a rotated H: the closed form needs x0 in the eigenbasis
    brute = _exact_discrete_moments(H, Q @ x0, steps, lr, rho, sigma2)
    k = np.arange(steps + 1)
    closed = theory.usam_discrete_expected_loss(LAMS, x0, k, lr, rho, sigma2)
    np.testing.assert_allclose(closed, brute, rtol=1e-11, atol=1e-13)


def test_discrete_expected_loss_at_the_edge_and_on_flat_directions():
    lr, rho, sigma2 = 0.1, 0.1, 0.5
    lams = np.array([0.0, theory.usam_edge(lr, rho), -1 / rho, 2.0])  # (1 - lr a)^2 = 1 for the first two
    x0 = np.array([1.0, 1.0, 1.0, 1.0])
    brute = _exact_discrete_moments(np.diag(lams), x0, 15, lr, rho, sigma2)
    closed = theory.usam_discrete_expected_loss(lams, x0, np.arange(16), lr, rho, sigma2)
    assert np.isfinite(closed).all()
    np.testing.assert_allclose(closed, brute, rtol=1e-9, atol=1e-12)


def test_discrete_mean_vs_matrix_power():
    Q = torch.as_tensor(_rotation(4, 2))
    H = Q @ torch.diag(torch.as_tensor(LAMS)) @ Q.T
    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    lr, rho = 0.2, 0.3
    A = torch.eye(4, dtype=F64) - lr * H @ (torch.eye(4, dtype=F64) + rho * H)
    out = theory.usam_discrete_mean(H, x0, torch.tensor([0, 1, 7]), lr, rho)
    assert out.shape == (3, 3, 4)
    for i, k in enumerate([0, 1, 7]):
        torch.testing.assert_close(out[i], x0 @ torch.linalg.matrix_power(A, k).T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rho", [0.0, 0.4])
def test_sde_mean_vs_matrix_exp(rho):
    M = torch.randn(5, 5, generator=torch.Generator().manual_seed(4), dtype=F64)
    H = (M + M.T) / 2  # indefinite
    x0 = torch.randn(2, 5, generator=torch.Generator().manual_seed(5), dtype=F64)
    ts = torch.tensor([0.0, 0.3, 1.7], dtype=F64)
    out = theory.usam_sde_mean(H, x0, ts, rho)
    assert out.shape == (3, 2, 5)
    for i, t in enumerate(ts):
        E = torch.linalg.matrix_exp(-H @ (torch.eye(5, dtype=F64) + rho * H) * t)
        torch.testing.assert_close(out[i], x0 @ E.T, rtol=1e-10, atol=1e-10)
    # A diagonal H given as its diagonal.
    diag = theory.usam_sde_mean(np.array([1.0, -2.0]), np.array([1.0, 1.0]), 0.5, rho)
    lams = np.array([1.0, -2.0])
    np.testing.assert_allclose(diag, np.exp(-lams * (1 + rho * lams) * 0.5), rtol=1e-14)


@pytest.mark.parametrize("rho", [0.0, 0.2])
def test_sde_expected_loss_vs_lyapunov_ode(rho):
    lr, sigma2, d = 0.05, 0.4, 4
    x0 = np.array([1.0, -0.5, 2.0, 0.3])
    Q = _rotation(d, 6)
    H = Q @ np.diag(LAMS) @ Q.T
    B = np.eye(d) + rho * H
    A = H @ B
    D = lr * sigma2 * B @ B.T  # eta * F F^T

    def rhs(_t, y):
        m, C = y[:d], y[d:].reshape(d, d)
        return np.concatenate([-A @ m, (-A @ C - C @ A.T + D).ravel()])

    ts = np.array([0.0, 0.5, 1.0, 3.0])
    sol = solve_ivp(rhs, (0, 3.0), np.concatenate([Q @ x0, np.zeros(d * d)]), t_eval=ts, rtol=1e-11, atol=1e-13)
    brute = [0.5 * (m @ H @ m + np.trace(H @ C)) for m, C in zip(sol.y[:d].T, sol.y[d:].T.reshape(-1, d, d))]
    closed = theory.usam_sde_expected_loss(LAMS, x0, ts, lr, rho, sigma2)
    np.testing.assert_allclose(closed, brute, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("rho", [0.0, 0.1])
def test_stationary_limits(rho):
    lams, lr, sigma2 = np.array([4.0, 1.0, 0.5]), 0.1, 0.2
    x0 = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    sde_inf = theory.usam_sde_expected_loss(lams, x0, 200.0, lr, rho, sigma2)
    disc_inf = theory.usam_discrete_expected_loss(lams, x0, 20_000, lr, rho, sigma2)
    sde_stat = theory.usam_sde_stationary_loss(lams, lr, rho, sigma2)
    disc_stat = theory.usam_discrete_stationary_loss(lams, lr, rho, sigma2)
    np.testing.assert_allclose(sde_inf, sde_stat, rtol=1e-12)
    np.testing.assert_allclose(disc_inf, disc_stat, rtol=1e-12)
    assert sde_stat == pytest.approx(lr * sigma2 / 4 * (3 + rho * lams.sum()))
    # The discrete method sits above its SDE by O(lr) (the -lr a_i in the denominator).
    assert disc_stat > sde_stat


def test_moments_torch_backend_and_shapes():
    lams = torch.tensor([2.0, 0.5], dtype=F64)
    x0 = torch.ones(3, 2, dtype=F64)
    out = theory.usam_sde_expected_loss(lams, x0, torch.tensor([0.0, 1.0], dtype=F64), 0.1, 0.1, 0.1)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    torch.testing.assert_close(out[0], torch.full((3,), 0.5 * 2.5, dtype=F64))
    out = theory.usam_discrete_expected_loss(lams.numpy(), x0.numpy()[0], 4, 0.1, 0.1, 0.1)
    assert np.ndim(out) == 0


# -- validation: every ValueError ------------------------------------------------------------------------
ERRORS = [
    (theory.gd_edge, (0.0,), r"`lr` must be a finite number > 0, got lr=0"),
    (theory.usam_edge, (-0.1, 0.1), r"`lr` must be a finite number > 0, got lr=-0.1"),
    (theory.usam_edge, (float("nan"), 0.1), r"`lr` must be .*got lr=nan"),
    (theory.usam_edge, (0.1, -0.1), r"`rho` must be a finite number >= 0, got rho=-0.1"),
    (theory.usam_edge, (np.array([0.1, -2.0]), 0.1), r"got lr=-2"),
    (theory.usam_lr_threshold, (0.1, math.inf), r"`L` must be finite, got L=inf"),
    (theory.usam_diverges, (0.0, 0.1, 1.0), r"`lr` must be"),
    (theory.sam_edge, (0.1, 0.1, -1.0), r"`grad_norm` must be >= 0, got grad_norm=-1"),
    (theory.sam_cycle_amplitude, (0.3, 0.1, 10.0), r"`lam` must be < 2/lr .*got lam=10 \(with lr=0.3\)"),
    (theory.sam_cycle_amplitude, (0.1, 0.1, -1.0), r"`lam` must be a finite number > 0, got lam=-1"),
    (theory.sam_cycle_grad_norm, (0.1, 0.1, 20.0), r"`lam` must be < 2/lr"),
    (theory.sam_centre_drift_step, (0.1, 0.1, 25.0), r"`lam` must be < 2/lr"),
    (theory.sam_cycle_contraction, (0.1, 0.1, [5.0, 8.0]), r"`lams` must be ordered .*got lams=8"),
    (theory.sam_cycle_contraction, (0.1, 0.1, 3.0), r"`lams` must be an array \(\.\.\., d\)"),
    (theory.sam_cycle_contraction, (0.1, 0.1, [30.0, 1.0]), r"`lam` must be < 2/lr"),
    (theory.sam_cycle_contraction, (0.1, 0.1, [5.0, math.nan]), r"`lams` must be finite"),
    (theory.usam_flow_contracts, (0.1, math.nan), r"`lam` must be finite"),
    (theory.usam_discrete_converges, (0.1, -1.0, 1.0), r"`rho` must be"),
    (theory.sam_flow_contracts, (0.1, 1.0, -0.5), r"`grad_norm` must be >= 0"),
    (theory.dnsam_diffusion_factor, (0.1, -1.0, 0.0), r"`grad_norm` must be > 0 .*got grad_norm=0"),
    (theory.eigen_sam_alignment, (-0.2, 0.5), r"`alpha` must be a finite number >= 0, got alpha=-0.2"),
    (theory.eigen_sam_alignment, (0.2, 1.5), r"`c` must be in \[-1, 1\] \(a cosine\), got c=1.5"),
    (theory.eigen_sam_perturbation_norm, (0.1, 0.2, -1.1), r"`c` must be in \[-1, 1\]"),
    (theory.gd_filter, (0.1, math.inf), r"`lam` must be finite"),
    (theory.heavy_ball_filter, (0.1, 1.0, 1.0), r"`beta` must be in \[0, 1\), got beta=1"),
    (theory.usam_heavy_ball_filter, (0.1, 0.1, -0.1, 1.0), r"`beta` must be in \[0, 1\)"),
    (theory.usam_sde_mean, (np.ones((2, 3)), np.ones(2), 1.0, 0.1), r"`H` must be a diagonal \(d,\) or a square"),
    (theory.usam_sde_mean, (np.array([[1.0, 2.0], [0.0, 1.0]]), np.ones(2), 1.0, 0.1), r"`H` must be symmetric, got max\|H - H\^T\|=2"),
    (theory.usam_sde_mean, (np.eye(2), np.ones(3), 1.0, 0.1), r"`x0` must be an array \(\.\.\., d\) with d=2, got x0=\(3,\)"),
    (theory.usam_sde_mean, (np.eye(2), np.ones(2), -1.0, 0.1), r"`t` must be a finite number >= 0, got t=-1"),
    (theory.usam_sde_mean, (np.eye(2), np.ones(2), 1.0, np.array([0.1, 0.2])), r"`rho` must be a scalar"),
    (theory.usam_sde_mean, (np.eye(2), np.array([1.0, math.nan]), 1.0, 0.1), r"`x0` must be finite"),
    (theory.usam_sde_mean, (np.array([[1.0, math.inf], [math.inf, 1.0]]), np.ones(2), 1.0, 0.1), r"`H` must be finite"),
    (theory.usam_discrete_mean, (np.eye(2), np.ones(2), 1.5, 0.1, 0.1), r"`k` must be a non-negative integer \(a step count\), got k=1.5"),
    (theory.usam_discrete_mean, (np.eye(2), np.ones(2), -1, 0.1, 0.1), r"`k` must be a finite number >= 0"),
    (theory.usam_sde_expected_loss, (np.eye(2), np.ones(2), 1.0, 0.1, 0.1, 0.1), r"`lams` must be a 1-D array"),
    (theory.usam_sde_expected_loss, (np.ones(2), np.ones(2), 1.0, 0.1, 0.1, -0.1), r"`sigma2` must be a finite number >= 0"),
    (theory.usam_discrete_expected_loss, (np.ones(2), np.ones(2), 3, np.array([0.1]), 0.1, 0.1), r"`lr` must be a scalar"),
    (theory.usam_sde_stationary_loss, ([1.0, -0.5], 0.1, 0.1, 0.1), r"`lams` must be such that lam\*\(1\+rho\*lam\) > 0 .*got lams=-0.5"),
    (theory.usam_discrete_stationary_loss, ([1.0, 30.0], 0.1, 0.1, 0.1), r"`lams` must be such that 0 < lr\*lam.*got lams=30 \(with lr=0.1, rho=0.1\)"),
]


@pytest.mark.parametrize("fn, args, match", ERRORS, ids=[f"{e[0].__name__}-{i}" for i, e in enumerate(ERRORS)])
def test_validation_errors(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_validation_errors_torch():
    with pytest.raises(ValueError, match=r"`lr` must be a finite number > 0, got lr=-0.5"):
        theory.usam_edge(torch.tensor([0.1, -0.5], dtype=F64), 0.1)
    with pytest.raises(ValueError, match=r"`lam` must be < 2/lr .*\(with lr=0.1\)"):
        theory.sam_cycle_amplitude(torch.tensor([0.1, 0.1], dtype=F64), 0.1, torch.tensor([1.0, 30.0], dtype=F64))
