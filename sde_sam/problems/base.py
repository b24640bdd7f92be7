"""The problem interface: an objective and its gradient-noise model, evaluated for many paths at once."""
from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from .. import autodiff


class Problem(abc.ABC):
    r"""An objective :math:`f` with a stochastic-gradient model :math:`\nabla f_\gamma` (MATH §1).

    All methods take a batch of points ``x: (n_paths, d)`` and return per-path values. A *draw* ``gamma``
    (a Gaussian noise vector, or mini-batch indices) is a tensor whose leading dim is ``n_paths``; within a
    step the same draw is used at the current and at the perturbed point.

    The single-path maps :meth:`grad_single` and :meth:`stochastic_grad_single` (one point ``(d,)``, one draw)
    are ``torch.func``-traceable; higher derivatives are taken of them, with the path ``vmap`` outside the
    forward-mode derivative (:mod:`sde_sam.autodiff`).

    Attributes:
        d: Number of parameters.
        dtype: Floating dtype of the problem's tensors; states must match it.
        device: Device of the problem's tensors.
    """

    #: True when the gradient noise is additive, Gaussian and independent of ``x`` (MATH §1, model 2).
    additive_gaussian: ClassVar[bool] = False

    d: int
    dtype: torch.dtype
    device: torch.device

    # -- the objective -------------------------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, x: Tensor) -> Tensor:
        """Full objective per path: ``(n, d) -> (n,)``."""

    @abc.abstractmethod
    def grad(self, x: Tensor) -> Tensor:
        """Full gradient per path: ``(n, d) -> (n, d)``."""

    @abc.abstractmethod
    def grad_single(self, x1: Tensor) -> Tensor:
        """Full gradient at one point, unbatched and ``torch.func``-traceable: ``(d,) -> (d,)``."""

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """Full Hessian times ``v`` per path: ``(n, d), (n, d) -> (n, d)``."""
        return autodiff.hvp(self.grad_single, x, v)

    # -- the noise model -----------------------------------------------------------------------------
    @abc.abstractmethod
    def sample_draws(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Independent draws ``gamma`` with leading dims ``shape``."""

    @abc.abstractmethod
    def stochastic_grad(self, x: Tensor, draws: Tensor) -> Tensor:
        r""":math:`\nabla f_{\gamma_p}(x_p)` per path: ``(n, d), (n, ...) -> (n, d)``."""

    @abc.abstractmethod
    def stochastic_grad_single(self, x1: Tensor, draw1: Tensor) -> Tensor:
        r""":math:`\nabla f_\gamma(x)` at one point for one draw, unbatched and traceable: ``(d,), (...) -> (d,)``."""

    def stochastic_loss_and_grad(self, x: Tensor, draws: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`f_{\gamma_p}(x_p)` and :math:`\nabla f_{\gamma_p}(x_p)` per path, ``(n,)`` and ``(n, d)``, from one
        evaluation where the problem can (the ``"batch_loss"`` observable); the gradient is bit for bit
        :meth:`stochastic_grad`'s."""
        raise NotImplementedError(f"{type(self).__name__} does not report the loss of a draw (the 'batch_loss' "
                                  "observable); record 'loss' instead")

    def stochastic_hvp(self, x: Tensor, v: Tensor, draws: Tensor) -> Tensor:
        r""":math:`\nabla^2 f_{\gamma_p}(x_p)\, v_p` per path."""
        return autodiff.hvp(self.stochastic_grad_single, x, v, draws)

    def enumerate_draws(self) -> Tensor | None:
        """All draws, equally likely, when the noise law is a small finite uniform set; else ``None``.

        Expectations over ``gamma`` are then exact sums instead of Monte-Carlo averages (MATH §3.2).
        """
        return None

    # -- helpers -------------------------------------------------------------------------------------
    def default_eps(self) -> float:
        """Norm guard of MATH §2: ``1e-12`` in float64, ``1e-7`` otherwise."""
        return 1e-12 if self.dtype == torch.float64 else 1e-7

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={self.d}, dtype={self.dtype}, device={self.device})"
