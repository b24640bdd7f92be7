r"""The phase-space momentum model: underdamped Langevin with the method's drift (MATH §3.5, "When β is close to 1").

Heavy ball :math:`x_{k+1}-x_k=\beta(x_k-x_{k-1})-\eta G_k` with :math:`h=\sqrt\eta`, :math:`V_k=(x_{k+1}-x_k)/h` and
:math:`1-\beta=\gamma h` reads :math:`V_k-V_{k-1}=h(-\gamma V_{k-1}-G_k)`: a (semi-implicit) Euler–Maruyama step of
size :math:`h` of

.. math:: dX_t = V_t\,dt,\qquad dV_t = -\gamma V_t\,dt + b(X_t)\,dt + \eta^{1/4}\,\mathrm{Cov}_\gamma
          \big(G^{(r')}_\gamma(X_t)\big)^{1/2}dW_t,\qquad \gamma=\frac{1-\beta}{\sqrt\eta},

with :math:`b=-\mathbb E_\gamma G^{(r)}_\gamma` the drift of the plain (β = 0) model of the same order [derived].
:math:`V_0=0` (a zero momentum buffer). The state is :math:`(X, V)`, of dimension :math:`2d`; observables are taken
on :math:`X` only.

**Its own clock.** Discrete step :math:`k` is :math:`X_{k\sqrt\eta}`, not :math:`X_{k\eta}` as in every other model
(MATH §0): a trajectory of this model has ``times`` :math:`t=k\sqrt\eta`. To compare with a discrete run (times
:math:`k\eta`), convert: :func:`discrete_times` maps the model's times to :math:`k\eta`, :func:`model_times` back;
or compare step by step, :math:`k = t/\sqrt\eta` (:attr:`sde_sam.sde.SDEModel.step_time` is the time of one step
on the model's clock: :math:`\sqrt\eta` here, :math:`\eta` for the first-order model).

**Which model when.** The first-order model (:math:`dX=-\tfrac{1}{1-\beta}\mathbb E G\,dt+\dots`) assumes
:math:`\eta/(1-\beta)\ll1`; it degrades when β is close to 1 at the learning rates the public recipes use
(β = 0.9 at η ≈ 0.05–0.1). The phase-space model is for :math:`\beta\to1` with :math:`(1-\beta)^2/\eta=\gamma^2` held
fixed; its weak error is :math:`O(\sqrt\eta)` [derived; measured on a quadratic in ``tests/test_phase_space.py``].

The helpers below assemble the phase-space coefficients from the plain model's; :class:`sde_sam.sde.SDEModel`
uses them when built with ``momentum_model="phase_space"``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MOMENTUM_MODELS = ("first_order", "phase_space")


def check_momentum_model(momentum_model) -> str:
    if momentum_model not in MOMENTUM_MODELS:
        raise ValueError(f"`momentum_model` must be one of {MOMENTUM_MODELS}, got momentum_model={momentum_model!r}")
    return momentum_model


def friction(lr: float, momentum: float) -> float:
    r""":math:`\gamma=(1-\beta)/\sqrt\eta`."""
    return (1.0 - momentum) / math.sqrt(lr)


def noise_scale(lr: float) -> float:
    r""":math:`\eta^{-1/4}`: the plain model's factor :math:`\sqrt\eta\,\mathrm{Cov}^{1/2}` times this is :math:`\eta^{1/4}\mathrm{Cov}^{1/2}`."""
    return lr ** -0.25


def lift(x: Tensor) -> Tensor:
    """``(n, d) -> (n, 2d)``: the state :math:`(X, V)` with :math:`V = 0`."""
    return torch.cat([x, torch.zeros_like(x)], dim=-1)


def position(z: Tensor) -> Tensor:
    """``(n, 2d) -> (n, d)``: :math:`X` (a contiguous copy, so observables see an ordinary tensor)."""
    return z[..., : z.shape[-1] // 2].contiguous()


def terms(z: Tensor, drift: Tensor, noise: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """Drift and noise of :math:`(X, V)` from the plain model's at :math:`X` (both ``(n, d)``): ``(n, 2d)`` each.

    :math:`(V,\\ -\\gamma V + b)` and :math:`(0,\\ N)`, for :math:`Z' = Z + \\text{drift}\\,\\Delta t + \\sqrt{\\Delta t}\\,\\text{noise}`.
    """
    v = z[..., z.shape[-1] // 2:]
    return torch.cat([v, drift - gamma * v], dim=-1), torch.cat([torch.zeros_like(noise), noise], dim=-1)


def linear(A: Tensor, F: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    r"""The Ornstein–Uhlenbeck coefficients of :math:`(X, V)` from the plain model's :math:`dX=-AX\,dt+F\,dW`.

    .. math:: dZ = -\begin{pmatrix}0 & -I\\ A & \gamma I\end{pmatrix}Z\,dt + \begin{pmatrix}0\\ F\end{pmatrix}dW

    (``F`` already scaled to :math:`\eta^{1/4}\mathrm{Cov}^{1/2}`): ``(2d, 2d)`` and ``(2d, m)``.
    """
    d = A.shape[0]
    eye, zero = torch.eye(d, dtype=A.dtype, device=A.device), torch.zeros_like(A)
    return torch.cat([torch.cat([zero, -eye], 1), torch.cat([A, gamma * eye], 1)], 0), torch.cat([torch.zeros_like(F), F], 0)


def factor(F: Tensor) -> Tensor:
    """``(n, d, m) -> (n, 2d, m)``: the factor acts on :math:`V` only."""
    return torch.cat([torch.zeros_like(F), F], dim=-2)


def discrete_times(times: Tensor, lr: float) -> Tensor:
    r"""Times :math:`t=k\sqrt\eta` of the phase-space clock as :math:`k\eta`, the clock of discrete runs (MATH §0)."""
    return times * math.sqrt(lr)


def model_times(times: Tensor, lr: float) -> Tensor:
    r"""Times :math:`k\eta` of a discrete run on the phase-space clock, :math:`k\sqrt\eta`."""
    return times / math.sqrt(lr)
