r"""Finite sums :math:`f = \frac1n\sum_i f_i` with mini-batch gradient noise (MATH §1, model 1)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, vmap

from .. import _checks, autodiff
from .base import Problem

Data = Tensor | tuple[Tensor, ...]


def _index(data: Data, idx: Tensor) -> Data:
    return data[idx] if isinstance(data, Tensor) else tuple(t[idx] for t in data)


def _data_dtype(tensors: tuple[Tensor, ...], name: str = "data") -> torch.dtype:
    """The one floating dtype of the data, after checking it is finite and on one device (data is never cast).

    Integer (or bool) tensors are labels or indices and keep their dtype; floating ones must share one dtype
    and hold no NaN or inf (a non-finite sample would make every mini-batch that draws it diverge). Data with
    no floating tensor at all is refused: the problem's dtype comes from it, so integer features would
    silently give a float32 problem.
    """
    floats = [(i, t) for i, t in enumerate(tensors) if t.dtype.is_floating_point or t.dtype.is_complex]
    label = (lambda i: name) if len(tensors) == 1 else (lambda i: f"{name}[{i}]")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"`{name}` tensors must be on one device, got {sorted(map(str, devices))}")
    if not floats:
        raise ValueError(f"`{name}` has no floating tensor (dtypes {[str(t.dtype) for t in tensors]}): the problem's "
                         "dtype comes from its features; convert the integer features explicitly, e.g. "
                         "A.to(torch.float64)")
    for i, t in floats:
        if t.dtype.is_complex:
            raise ValueError(f"`{label(i)}` has complex dtype {t.dtype}; use real tensors")
    kinds = sorted({str(t.dtype) for _, t in floats})
    if len(kinds) > 1:
        raise ValueError(f"`{name}` mixes floating dtypes ({', '.join(f'{label(i)}: {t.dtype}' for i, t in floats)}); "
                         "convert them to one dtype explicitly (no silent cast)")
    for i, t in floats:
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            rows = bad.reshape(t.shape[0], -1).any(dim=1).nonzero().squeeze(-1)
            raise ValueError(f"`{label(i)}` must be finite, got NaN or inf in {rows.numel()} sample(s), the first at "
                             f"index {int(rows[0])}")
    return floats[0][1].dtype


class FiniteSum(Problem):
    r"""A finite sum of per-sample losses with mini-batch stochastic gradients.

    .. math:: f(x) = \frac1n\sum_{i=1}^n \ell(x, s_i),\qquad
              f_\gamma = \frac1B\sum_{i\in\gamma}\ell(x, s_i),\ |\gamma| = B

    with the batch drawn uniformly with replacement (default) or without (MATH §1). Per-sample gradients
    come from ``vmap(grad)``, Hessian-vector products reverse-over-reverse (:func:`sde_sam.autodiff.hvp`); one
    draw is the ``(B,)`` index vector of a mini-batch.

    Args:
        loss_fn: ``loss_fn(x: (d,), sample) -> scalar`` where ``sample`` has the structure of ``data``
            without its leading dim (a tensor, or a tuple of tensors). Must be ``torch.func``-traceable.
        data: A tensor or a tuple of tensors sharing the leading dim ``n``, on one device. The floating ones
            (at least one: they set the problem's dtype) share one dtype and are finite; integer ones are labels
            or indices. Anything else is a ``ValueError`` naming the tensor (data is never cast).
        batch_size: Mini-batch size ``B`` (``1 <= B <= n``; ``B = n`` without replacement is full batch).
        replacement: Sample with (default) or without replacement.
        d: Number of parameters, if known (ready-made problems set it; else taken from ``x0``).

    Example:
        >>> A, y = torch.randn(32, 3), torch.randn(32)
        >>> prob = FiniteSum(lambda x, s: 0.5 * (s[0] @ x - s[1]) ** 2, (A, y), batch_size=4, d=3)
        >>> prob.per_sample_grads(torch.zeros(5, 3)).shape
        torch.Size([5, 32, 3])
    """

    def __init__(self, loss_fn: Callable[[Tensor, Any], Tensor], data: Data, *, batch_size: int = 1,
                 replacement: bool = True, d: int | None = None):
        tensors = (data,) if isinstance(data, Tensor) else tuple(data)
        if not tensors or not all(isinstance(t, Tensor) for t in tensors):
            raise TypeError("`data` must be a tensor or a tuple of tensors with a shared leading dim n")
        n = tensors[0].shape[0] if tensors[0].ndim else 0
        if n < 1 or any(t.ndim == 0 or t.shape[0] != n for t in tensors):
            raise ValueError(f"`data` tensors must share a leading dim n >= 1, got shapes {[tuple(t.shape) for t in tensors]}")
        _checks.positive_int("batch_size", batch_size)
        if batch_size > n:
            raise ValueError(f"`batch_size` must be <= n={n} (the number of samples), got batch_size={batch_size}")
        if d is not None:
            _checks.positive_int("d", d)
        self.dtype = self._data_dtype(tensors)
        self.device = tensors[0].device
        self.d, self.n, self.batch_size, self.replacement = d, n, batch_size, bool(replacement)
        self.data = data if isinstance(data, Tensor) else tuple(tensors)
        self.loss_fn = loss_fn

    def _data_dtype(self, tensors: tuple[Tensor, ...]) -> torch.dtype:
        """The problem's dtype, from its checked data (a module problem takes its parameters')."""
        return _data_dtype(tensors)

    # Per-path evaluation: full-batch quantities also go through per-path data (an expanded view, no copy);
    # sharing the data across paths would fuse all paths into one GEMM whose rounding depends on how many
    # paths there are. Bound methods (no closures) keep the problem picklable.
    def _batch_loss(self, x1: Tensor, batch: Data) -> Tensor:
        return vmap(self.loss_fn, in_dims=(None, 0))(x1, batch).mean()

    def _batch_grad(self, x1: Tensor, batch: Data) -> Tensor:
        return grad(self._batch_loss)(x1, batch)

    def _per_sample_single(self, x1: Tensor, batch: Data) -> Tensor:
        return vmap(grad(self.loss_fn), in_dims=(None, 0))(x1, batch)

    @classmethod
    def from_module(cls, model, loss_fn, data, *, batch_size: int, replacement: bool = True):
        r"""A finite sum over a ``torch.nn.Module``'s trainable parameters (flattened into ``x``).

        The per-sample loss is ``loss_fn(model(a_i[None]), t_i[None])``: ``loss_fn`` on a batch of one, so it
        must average over the batch (``reduction='mean'``, the default of ``F.cross_entropy``/``F.mse_loss``;
        ``'sum'`` and ``'none'`` are refused). Integer class labels work. Train-mode BatchNorm, Dropout and other
        random or batch-coupled layers are refused (call ``model.eval()`` or remove them).

        Args:
            model: The module; copied, so later changes to it do not affect the problem.
            loss_fn: ``loss_fn(outputs, targets) -> scalar``, e.g. ``F.cross_entropy``.
            data: ``(inputs, targets)`` (or ``(*inputs, targets)``), tensors sharing the leading dim ``n``.
            batch_size: Mini-batch size ``B``.
            replacement: Sample with (default) or without replacement.

        Returns:
            A :class:`~sde_sam.problems.module.ModuleFiniteSum` with ``d`` set, ``x_init`` (the module's
            parameters), ``unflatten(x)`` (dict of named tensors) and ``to_module(x)`` (a module copy).

        Example:
            >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
            >>> a, t = torch.randn(32, 4), torch.randint(3, (32,))
            >>> prob = FiniteSum.from_module(model, torch.nn.functional.cross_entropy, (a, t), batch_size=8)
            >>> prob.d, prob.to_module(prob.x_init)(a).shape
            (67, torch.Size([32, 3]))
        """
        from .module import ModuleFiniteSum
        return ModuleFiniteSum(model, loss_fn, data, batch_size=batch_size, replacement=replacement)

    @property
    def noise_scale(self) -> float:
        r"""The factor :math:`c_B / B` of the mini-batch covariance (MATH §1)."""
        c = 1.0 if self.replacement else (self.n - self.batch_size) / max(self.n - 1, 1)
        return c / self.batch_size

    def _per_path_data(self, n_paths: int) -> Data:
        if isinstance(self.data, Tensor):
            return self.data.expand(n_paths, *self.data.shape)
        return tuple(t.expand(n_paths, *t.shape) for t in self.data)

    def loss(self, x: Tensor) -> Tensor:
        return vmap(self._batch_loss)(x, self._per_path_data(x.shape[0]))

    def grad(self, x: Tensor) -> Tensor:
        return vmap(self._batch_grad)(x, self._per_path_data(x.shape[0]))

    def grad_single(self, x1: Tensor) -> Tensor:
        return self._batch_grad(x1, self.data)

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        return autodiff.hvp(self._batch_grad, x, v, self._per_path_data(x.shape[0]))

    def per_sample_grads(self, x: Tensor) -> Tensor:
        r"""All :math:`\nabla f_i(x_p)`: ``(n_paths, d) -> (n_paths, n, d)``."""
        return vmap(self._per_sample_single)(x, self._per_path_data(x.shape[0]))

    def sample_draws(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        if self.replacement:
            return torch.randint(self.n, (*shape, self.batch_size), generator=generator, device=self.device)
        keys = torch.rand(*shape, self.n, generator=generator, device=self.device)
        return keys.topk(self.batch_size, dim=-1).indices

    def stochastic_grad(self, x: Tensor, draws: Tensor) -> Tensor:
        return vmap(self._batch_grad)(x, _index(self.data, draws))

    def stochastic_grad_single(self, x1: Tensor, draw1: Tensor) -> Tensor:
        return self._batch_grad(x1, _index(self.data, draw1))

    def stochastic_loss_and_grad(self, x: Tensor, draws: Tensor) -> tuple[Tensor, Tensor]:
        g, loss = vmap(grad_and_value(self._batch_loss))(x, _index(self.data, draws))
        return loss, g

    def stochastic_hvp(self, x: Tensor, v: Tensor, draws: Tensor) -> Tensor:
        return autodiff.hvp(self._batch_grad, x, v, _index(self.data, draws))

    def enumerate_draws(self, *, all_batches: bool = False, max_batches: int = 4096) -> Tensor | None:
        r"""All draws, equally likely, when there are few; else ``None`` (MATH §3.2).

        ``B = 1``: the ``n`` samples; ``B = n`` without replacement: the one full batch. With
        ``all_batches=True`` (``expectation="enumerate"``) also every ordered mini-batch when there are at most
        ``max_batches`` of them (each costs one effective gradient per path): the :math:`n^B` index tuples with
        replacement, or the :math:`n!/(n-B)!` tuples of distinct indices without — each equally likely under the
        sampler, and in order, so that m-SAM's micro-batches (MATH §2.2) are enumerated exactly.
        """
        import itertools
        import math
        if self.batch_size == 1:
            return torch.arange(self.n, device=self.device)[:, None]
        if self.batch_size == self.n and not self.replacement:
            return torch.arange(self.n, device=self.device)[None, :]
        if not all_batches:
            return None
        n, B = self.n, self.batch_size
        count = n**B if self.replacement else math.perm(n, B)
        if count > max_batches:
            raise ValueError(f"`expectation='enumerate'` would enumerate {count} mini-batches (n={n}, batch_size={B}, "
                             f"replacement={self.replacement}); at most max_batches={max_batches} are allowed: use the "
                             "two-draw scheme or sampled draws")
        tuples = itertools.product(range(n), repeat=B) if self.replacement else itertools.permutations(range(n), B)
        return torch.tensor(list(tuples), dtype=torch.int64, device=self.device)

    def __repr__(self) -> str:
        return (f"FiniteSum(n={self.n}, d={self.d}, batch_size={self.batch_size}, "
                f"replacement={self.replacement}, dtype={self.dtype})")
