"""Ready-made finite sums on synthetic data. Every constructor is seeded and returns a :class:`FiniteSum`
with ``d`` set and a reproducible starting point in ``problem.x_init``.

Per-sample losses are module-level functions (bound to their sizes by :func:`functools.partial`), so every
problem pickles with the standard library."""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from .finite_sum import FiniteSum


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _squared_residual(x: Tensor, s) -> Tensor:
    return 0.5 * (s[0] @ x - s[1]) ** 2


def linear_regression(n: int = 64, d: int = 10, *, noise: float = 0.5, batch_size: int = 1,
                      replacement: bool = True, seed: int = 0, dtype: torch.dtype = torch.float64) -> FiniteSum:
    r"""Least squares :math:`f_i(x) = \tfrac12(a_i^\top x - y_i)^2`, :math:`y = A x_\star + \text{noise}`.

    Its per-sample gradient noise depends on ``x`` (unlike additive Gaussian noise).
    """
    g = _gen(seed)
    A = torch.randn(n, d, generator=g, dtype=dtype)
    x_star = torch.randn(d, generator=g, dtype=dtype)
    y = A @ x_star + noise * torch.randn(n, generator=g, dtype=dtype)
    prob = FiniteSum(_squared_residual, (A, y), batch_size=batch_size,
                     replacement=replacement, d=d)
    prob.x_init = torch.zeros(d, dtype=dtype)
    return prob


def _two_layer(x: Tensor, a: Tensor, d_in: int, width: int) -> Tensor:
    W = x[: width * d_in].reshape(width, d_in)
    v = x[width * d_in:]
    return v @ torch.tanh(W @ a)


def _teacher_student_loss(x: Tensor, s, *, d_in: int, width: int) -> Tensor:
    return 0.5 * (_two_layer(x, s[0], d_in, width) - s[1]) ** 2


def teacher_student(n: int = 64, d_in: int = 4, width: int = 3, *, batch_size: int = 1, replacement: bool = True,
                    seed: int = 0, dtype: torch.dtype = torch.float64) -> FiniteSum:
    r"""A two-layer tanh student fitting a random teacher of the same shape with squared loss.

    :math:`f_i(x) = \tfrac12\big(v^\top\tanh(W a_i) - y_i\big)^2`, parameters :math:`x = (\mathrm{vec}\,W, v)`,
    ``d = width*(d_in+1)``. Non-convex, with non-zero third derivatives.
    """
    g = _gen(seed)
    d = width * (d_in + 1)
    A = torch.randn(n, d_in, generator=g, dtype=dtype)
    teacher = torch.randn(d, generator=g, dtype=dtype)
    y = torch.stack([_two_layer(teacher, a, d_in, width) for a in A])
    prob = FiniteSum(partial(_teacher_student_loss, d_in=d_in, width=width), (A, y),
                     batch_size=batch_size, replacement=replacement, d=d)
    prob.x_init = 0.5 * torch.randn(d, generator=g, dtype=dtype)
    return prob


def _mlp_loss(x: Tensor, s, *, d_in: int, hidden: int, classes: int) -> Tensor:
    a, label = s
    s1, s2 = hidden * d_in, hidden * d_in + hidden
    s3 = s2 + classes * hidden
    h = torch.tanh(x[:s1].reshape(hidden, d_in) @ a + x[s1:s2])
    logits = x[s2:s3].reshape(classes, hidden) @ h + x[s3:]
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, label.unsqueeze(-1)).squeeze(-1)


def mlp(n: int = 256, d_in: int = 8, hidden: int = 16, classes: int = 3, *, batch_size: int = 8,
        replacement: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32) -> FiniteSum:
    r"""A one-hidden-layer tanh MLP classifier with cross-entropy on Gaussian clusters.

    ``d = hidden*(d_in+1) + classes*(hidden+1)``; e.g. ``d_in=32, hidden=256, classes=10`` gives
    d = 11,018 (the benchmark size).
    """
    g = _gen(seed)
    centres = 2.0 * torch.randn(classes, d_in, generator=g, dtype=dtype)
    labels = torch.randint(classes, (n,), generator=g)
    inputs = centres[labels] + torch.randn(n, d_in, generator=g, dtype=dtype)
    s1, s2 = hidden * d_in, hidden * d_in + hidden
    s3 = s2 + classes * hidden
    d = s3 + classes
    loss_fn = partial(_mlp_loss, d_in=d_in, hidden=hidden, classes=classes)
    prob = FiniteSum(loss_fn, (inputs, labels), batch_size=batch_size, replacement=replacement, d=d)
    prob.x_init = torch.cat([torch.randn(s1, generator=g, dtype=dtype) / d_in**0.5,
                             torch.zeros(hidden, dtype=dtype),
                             torch.randn(classes * hidden, generator=g, dtype=dtype) / hidden**0.5,
                             torch.zeros(classes, dtype=dtype)])
    return prob


def _sensing_loss(x: Tensor, s, *, dim: int, rank: int) -> Tensor:
    U = x.reshape(dim, rank)
    return 0.5 * ((s[0] * (U @ U.T)).sum() - s[1]) ** 2


def matrix_sensing(n: int = 64, dim: int = 4, rank: int = 1, *, batch_size: int = 1, replacement: bool = True,
                   seed: int = 0, dtype: torch.dtype = torch.float64) -> FiniteSum:
    r"""Symmetric matrix sensing :math:`f_i(U) = \tfrac12(\langle A_i, UU^\top\rangle - y_i)^2`, ``x = vec U``.

    ``y_i = <A_i, M>`` for a planted rank-``rank`` PSD ``M``. Has saddles (``U = 0``) and a manifold of minima.
    """
    g = _gen(seed)
    A = torch.randn(n, dim, dim, generator=g, dtype=dtype)
    A = 0.5 * (A + A.transpose(1, 2))
    U_star = torch.randn(dim, rank, generator=g, dtype=dtype)
    y = torch.einsum("nij,ij->n", A, U_star @ U_star.T)
    prob = FiniteSum(partial(_sensing_loss, dim=dim, rank=rank), (A, y), batch_size=batch_size, replacement=replacement, d=dim * rank)
    prob.x_init = 0.1 * torch.randn(dim * rank, generator=g, dtype=dtype)
    return prob
