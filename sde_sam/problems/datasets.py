r"""Ready-made problems on real data that ships inside scikit-learn (offline): handwritten digits and the
Wisconsin breast-cancer data (the data set of Compagnoni et al.'s experiments).

Features are standardised (zero mean, unit variance per feature over the chosen subset; constant features are
left at zero), a seeded subset of size ``n`` is drawn without replacement, and the model is an ``nn.Module``
turned into a problem by :meth:`FiniteSum.from_module` (mini-batches) or :meth:`Objective.from_module`
(``batch_size=None``: the full-batch loss, i.e. gradient descent when ``noise_cov=0``). Weights are
initialised as ``torch.nn.Linear`` does, from a generator seeded by ``seed`` (no global RNG).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from .finite_sum import FiniteSum
from .gaussian import Objective


def _load(name: str):
    try:
        from sklearn import datasets
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the real-data problems need scikit-learn: pip install scikit-learn") from err
    return getattr(datasets, name)(return_X_y=True)


def _subset(name: str, n: int | None, seed: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    X, y = _load(name)
    total = X.shape[0]
    n = total if n is None else _checks.positive_int("n", n)
    if n > total:
        raise ValueError(f"`n` must be <= {total} (the size of the {name[5:]} data set), got n={n}")
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    inputs = torch.as_tensor(X, dtype=dtype)[idx]
    std = inputs.std(dim=0, unbiased=False)
    inputs = (inputs - inputs.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))
    return inputs, torch.as_tensor(y, dtype=torch.long)[idx]


def digits(n: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """A seeded subset of scikit-learn's handwritten digits: ``(inputs: (n, 64), labels: (n,) int64)``, 10 classes.

    Example:
        >>> a, t = digits(100)
        >>> a.shape, t.dtype
        (torch.Size([100, 64]), torch.int64)
    """
    return _subset("load_digits", n, seed, dtype)


def breast_cancer(n: int | None = None, *, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """A seeded subset of the Wisconsin breast-cancer data: ``(inputs: (n, 30), labels: (n,) int64)``, 2 classes."""
    return _subset("load_breast_cancer", n, seed, dtype)


def _linear(fan_in: int, fan_out: int, gen: torch.Generator, dtype: torch.dtype) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out, dtype=dtype)
    bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation, from our generator
    with torch.no_grad():
        layer.weight.copy_(torch.rand(fan_out, fan_in, generator=gen, dtype=dtype) * 2 * bound - bound)
        layer.bias.copy_(torch.rand(fan_out, generator=gen, dtype=dtype) * 2 * bound - bound)
    return layer


def mlp_module(sizes: tuple[int, ...], *, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """A tanh MLP ``Linear(sizes[0], sizes[1]) → tanh → … → Linear(sizes[-2], sizes[-1])``, seeded."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.Tanh())
        layers.append(_linear(fan_in, fan_out, gen, dtype))
    return nn.Sequential(*layers)


LOSSES = ("cross_entropy", "mse")


def _problem(model: nn.Module, data, classes: int, loss: str, batch_size: int | None, replacement: bool, noise_cov):
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got loss={loss!r}")
    if loss == "mse":  # squared error against one-hot targets (the loss of Cohen et al.'s edge-of-stability runs)
        data = (data[0], F.one_hot(data[1], classes).to(data[0].dtype))
    loss_fn = F.cross_entropy if loss == "cross_entropy" else F.mse_loss
    if batch_size is None:
        return Objective.from_module(model, loss_fn, data, noise_cov=noise_cov)
    if noise_cov:
        raise ValueError(f"`noise_cov` applies to the full-batch problem (batch_size=None), got noise_cov={noise_cov!r} "
                         f"with batch_size={batch_size}")
    return FiniteSum.from_module(model, loss_fn, data, batch_size=batch_size, replacement=replacement)


def digits_mlp(n: int = 256, *, hidden: int = 32, loss: str = "cross_entropy", batch_size: int | None = 8,
               replacement: bool = True, noise_cov=0.0, seed: int = 0, dtype: torch.dtype = torch.float64):
    r"""A one-hidden-layer tanh MLP (64 → ``hidden`` → 10) on ``n`` digits, cross-entropy or squared loss.

    ``d = 65·hidden + 10·(hidden+1)`` (2,410 for ``hidden=32``).

    Args:
        n: Number of samples (a seeded subset of the 1,797).
        hidden: Hidden width.
        loss: ``"cross_entropy"`` (integer labels) or ``"mse"`` (``F.mse_loss`` against one-hot targets: the
            mean over the classes of the squared error, per sample).
        batch_size: Mini-batch size ``B``; ``None``: the full-batch loss (an :class:`Objective`).
        replacement: Mini-batches with (default) or without replacement.
        noise_cov: Additive Gaussian gradient noise Σ of the full-batch problem (``batch_size=None`` only).
        seed: Seeds both the subset and the weights.
        dtype: Floating dtype.

    Returns:
        A module problem with ``x_init``, ``unflatten`` and ``to_module`` (:meth:`FiniteSum.from_module`).

    Example:
        >>> prob = digits_mlp(64, hidden=8, batch_size=None)
        >>> prob.d, prob.to_module(prob.x_init)
        (610, Sequential(...))
    """
    _checks.positive_int("hidden", hidden)
    return _problem(mlp_module((64, hidden, 10), seed=seed, dtype=dtype), digits(n, seed=seed, dtype=dtype), 10,
                    loss, batch_size, replacement, noise_cov)


def breast_cancer_mlp(n: int = 256, *, hidden: int = 16, loss: str = "cross_entropy", batch_size: int | None = 8,
                      replacement: bool = True, noise_cov=0.0, seed: int = 0, dtype: torch.dtype = torch.float64):
    r"""A one-hidden-layer tanh MLP (30 → ``hidden`` → 2) on ``n`` breast-cancer samples.

    Arguments as in :func:`digits_mlp` (569 samples in all).
    """
    _checks.positive_int("hidden", hidden)
    return _problem(mlp_module((30, hidden, 2), seed=seed, dtype=dtype), breast_cancer(n, seed=seed, dtype=dtype), 2,
                    loss, batch_size, replacement, noise_cov)


def breast_cancer_logistic(n: int = 256, *, batch_size: int | None = 8, replacement: bool = True, noise_cov=0.0,
                           seed: int = 0, dtype: torch.dtype = torch.float64):
    r"""Logistic regression (a ``Linear(30, 2)`` with cross-entropy) on ``n`` breast-cancer samples; convex.

    Arguments as in :func:`digits_mlp`.
    """
    return _problem(mlp_module((30, 2), seed=seed, dtype=dtype), breast_cancer(n, seed=seed, dtype=dtype), 2,
                    "cross_entropy", batch_size, replacement, noise_cov)
