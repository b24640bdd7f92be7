"""Objectives with additive Gaussian gradient noise (MATH §1, model 2), and quadratics in closed form."""
from __future__ import annotations

from numbers import Real
from typing import Callable

import torch
from torch import Tensor
from torch.func import grad, vmap

from .base import Problem


def _noise_sqrt(noise_cov, d: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    r"""A factor :math:`S` with :math:`S S^\top = \Sigma` as a dense ``(d, d)`` matrix, or ``None`` for Σ = 0.

    ``noise_cov`` is a float (Σ = σ² I), a ``(d,)`` diagonal or a symmetric PSD ``(d, d)`` matrix. The full
    case uses a symmetric eigendecomposition (once, at construction), so singular Σ are allowed.
    """
    if isinstance(noise_cov, bool):
        raise ValueError(f"`noise_cov` must be a number or a tensor, got noise_cov={noise_cov!r}")
    if isinstance(noise_cov, Real):
        noise_cov = float(noise_cov)
    elif isinstance(noise_cov, Tensor):  # a tensor is never cast: float32 Σ in a float64 problem loses digits
        if noise_cov.dtype != dtype:
            raise ValueError(f"`noise_cov` has dtype {noise_cov.dtype} but the problem uses {dtype}; convert it "
                             f"explicitly (noise_cov.to({dtype}))")
        if noise_cov.device.type != device.type:
            raise ValueError(f"`noise_cov` is on device {noise_cov.device} but the problem is on {device}")
    # Build in the problem's dtype directly: a float64 problem must see exactly 0.09, not float32's 0.0900000036.
    cov = torch.as_tensor(noise_cov, dtype=dtype, device=device)
    shape = tuple(cov.shape)
    if not bool(torch.isfinite(cov).all()):
        raise ValueError("`noise_cov` must be finite")
    if cov.ndim == 0:
        if cov < 0:
            raise ValueError(f"`noise_cov` must be >= 0, got noise_cov={float(cov)}")
        return None if cov == 0 else cov.sqrt() * torch.eye(d, dtype=dtype, device=device)
    if shape == (d,):
        if bool((cov < 0).any()):
            raise ValueError(f"`noise_cov` as a diagonal must be >= 0 entrywise, got min {float(cov.min())}")
        return None if bool((cov == 0).all()) else torch.diag(cov.sqrt())
    if shape == (d, d):
        if not torch.allclose(cov, cov.T, rtol=1e-6, atol=1e-12):
            raise ValueError("`noise_cov` as a (d, d) matrix must be symmetric")
        evals, evecs = torch.linalg.eigh(cov)
        tol = 1e3 * torch.finfo(dtype).eps * float(evals.abs().max())
        if float(evals.min()) < -tol:
            raise ValueError(f"`noise_cov` must be positive semi-definite, got an eigenvalue {float(evals.min()):.3g}")
        if bool((cov == 0).all()):
            return None
        return evecs * evals.clamp_min(0).sqrt()
    raise ValueError(f"`noise_cov` must be a float, a (d,) diagonal or a (d, d) matrix with d={d}, got shape {shape}")


class Objective(Problem):
    r"""Any loss ``loss_fn(x: (d,)) -> scalar`` with additive Gaussian gradient noise.

    .. math:: \nabla f_\gamma(x) = \nabla f(x) + Z,\qquad Z = \Sigma^{1/2}\xi,\ \xi\sim\mathcal N(0, I_d)

    (MATH §1, model 2: the noise of the SAM-SDE experiments). ``noise_cov=0`` is the full-batch method.

    Args:
        loss_fn: A scalar loss of one parameter vector, written with ``torch`` ops (``torch.func``-traceable).
        d: Number of parameters.
        noise_cov: Σ as a float (σ² I), a ``(d,)`` diagonal or a PSD ``(d, d)`` matrix; a tensor must have the
            problem's dtype and device (a mismatch is an error, never a cast).
        dtype: Floating dtype (float32 by default; float64 for statistical work).
        device: Device.

    Example:
        >>> prob = Objective(lambda x: (x**4).sum() - (x**2).sum(), 2, noise_cov=0.01, dtype=torch.float64)
        >>> prob.grad(torch.ones(3, 2, dtype=torch.float64)).shape
        torch.Size([3, 2])
    """

    additive_gaussian = True

    def __init__(self, loss_fn: Callable[[Tensor], Tensor], d: int, *, noise_cov=0.0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"`d` must be a positive integer, got d={d!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"`dtype` must be a floating dtype, got dtype={dtype}")
        self.d, self.dtype, self.device = d, dtype, torch.device(device)
        self.noise_sqrt = _noise_sqrt(noise_cov, d, dtype, self.device)
        self.loss_fn = loss_fn

    @classmethod
    def from_module(cls, model, loss_fn, data, *, noise_cov=0.0):
        r"""The full-batch loss of a ``torch.nn.Module`` with additive Gaussian gradient noise of covariance Σ.

        :math:`f(x) =` ``loss_fn(model(inputs), targets)`` over the module's trainable parameters ``x``
        (mean reduction; refusals and the returned helpers as in :meth:`FiniteSum.from_module`).

        Args:
            model: The module (copied).
            loss_fn: ``loss_fn(outputs, targets) -> scalar``, e.g. ``F.cross_entropy``.
            data: ``(inputs, targets)`` (or ``(*inputs, targets)``).
            noise_cov: Σ as a float, a ``(d,)`` diagonal or a ``(d, d)`` matrix; 0 is full-batch GD.

        Returns:
            A :class:`~sde_sam.problems.module.ModuleObjective` with ``x_init``, ``unflatten``, ``to_module``.
        """
        from .module import ModuleObjective
        return ModuleObjective(model, loss_fn, data, noise_cov=noise_cov)

    @property
    def noise_cov(self) -> Tensor:
        """Σ as a dense ``(d, d)`` matrix."""
        if self.noise_sqrt is None:
            return torch.zeros(self.d, self.d, dtype=self.dtype, device=self.device)
        return self.noise_sqrt @ self.noise_sqrt.T

    def loss(self, x: Tensor) -> Tensor:
        return vmap(self.loss_fn)(x)

    def grad(self, x: Tensor) -> Tensor:
        return vmap(grad(self.loss_fn))(x)

    def grad_single(self, x1: Tensor) -> Tensor:
        return grad(self.loss_fn)(x1)

    def stochastic_hvp(self, x: Tensor, v: Tensor, draws: Tensor) -> Tensor:
        return self.hvp(x, v)  # additive noise does not change the Hessian

    def sample_draws(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        xi = torch.randn(*shape, self.d, generator=generator, dtype=self.dtype, device=self.device)
        return xi if self.noise_sqrt is None else xi @ self.noise_sqrt.T

    def stochastic_grad(self, x: Tensor, draws: Tensor) -> Tensor:
        return self.grad(x) if self.noise_sqrt is None else self.grad(x) + draws

    def stochastic_grad_single(self, x1: Tensor, draw1: Tensor) -> Tensor:
        return self.grad_single(x1) if self.noise_sqrt is None else self.grad_single(x1) + draw1

    def stochastic_loss_and_grad(self, x: Tensor, draws: Tensor) -> tuple[Tensor, Tensor]:
        r"""Additive noise :math:`Z` is the gradient of :math:`f_\gamma(x) = f(x) + \langle Z, x\rangle` (MATH §1)."""
        loss = self.loss(x)  # a d-dimensional closed form: no data pass to save
        if self.noise_sqrt is None:
            return loss, self.stochastic_grad(x, draws)
        return loss + (draws * x).sum(dim=-1), self.stochastic_grad(x, draws)

    def enumerate_draws(self) -> Tensor | None:
        if self.noise_sqrt is None:
            return torch.zeros(1, self.d, dtype=self.dtype, device=self.device)
        return None


class QuadraticLoss:
    r""":math:`x \mapsto \tfrac12 x^\top H x` for one point ``(d,)`` (a class, not a closure: it pickles)."""

    def __init__(self, H: Tensor):
        self.H = H

    def __call__(self, x: Tensor) -> Tensor:
        return 0.5 * x @ (self.H @ x)


class Quadratic(Objective):
    r"""The quadratic :math:`f(x) = \tfrac12 x^\top H x` with additive Gaussian gradient noise (MATH §3.4).

    Gradients and Hessian products are closed-form matrix products (no autodiff), and the SDE models of
    SGD and USAM on it are linear (Ornstein–Uhlenbeck), with exact moments.

    Args:
        H: Symmetric ``(d, d)`` matrix (indefinite allowed: saddles). Its dtype and device are the problem's.
        noise_cov: Σ as a float, a ``(d,)`` diagonal or a PSD ``(d, d)`` matrix.

    Example:
        >>> prob = Quadratic(torch.diag(torch.tensor([1.0, -0.5])), noise_cov=0.09)
    """

    def __init__(self, H: Tensor, *, noise_cov=0.0):
        if not isinstance(H, Tensor) or H.ndim != 2 or H.shape[0] != H.shape[1]:
            raise ValueError(f"`H` must be a square (d, d) tensor, got {getattr(H, 'shape', type(H).__name__)}")
        if not H.dtype.is_floating_point or not bool(torch.isfinite(H).all()):
            raise ValueError(f"`H` must be a finite floating tensor, got dtype={H.dtype}")
        if not torch.allclose(H, H.T, rtol=1e-6, atol=1e-12):
            raise ValueError("`H` must be symmetric")
        self.H = H
        super().__init__(QuadraticLoss(H), H.shape[0], noise_cov=noise_cov, dtype=H.dtype, device=H.device)

    def loss(self, x: Tensor) -> Tensor:
        return 0.5 * ((x @ self.H) * x).sum(dim=-1)

    def grad(self, x: Tensor) -> Tensor:
        return x @ self.H

    def grad_single(self, x1: Tensor) -> Tensor:
        return x1 @ self.H

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        return v @ self.H


def saddle(eigenvalues=(1.0, -1.0), *, noise_cov=0.0, dtype: torch.dtype = torch.float64) -> Quadratic:
    r"""The saddle :math:`f(x) = \tfrac12\sum_i \lambda_i x_i^2` with some :math:`\lambda_i < 0` (MATH §7).

    Example:
        >>> saddle((1.0, -1.0)).H
        tensor([[ 1.,  0.],
                [ 0., -1.]], dtype=torch.float64)
    """
    return Quadratic(torch.diag(torch.as_tensor(eigenvalues, dtype=dtype)), noise_cov=noise_cov)
