r"""Problems built from a user's ``torch.nn.Module``: a flat parameter vector through ``functional_call``.

A model :math:`y = m_\theta(a)` and a loss ``loss_fn(outputs, targets)`` (``F.cross_entropy``-style, mean
reduction) on data :math:`(a_i, t_i)_{i\le n}` define the finite sum

.. math:: f(x) = \frac1n\sum_{i=1}^n \ell_i(x),\qquad \ell_i(x) = \mathtt{loss\_fn}\big(m_{\theta(x)}(a_i^{[1]}),\, t_i^{[1]}\big)

where :math:`x\in\mathbb R^d` stacks the model's *trainable* parameters (``requires_grad=True``, in
``named_parameters`` order) and :math:`\cdot^{[1]}` is a batch of one sample. Buffers and frozen parameters are
constants, copied when the problem is built. A loss that is not a mean of per-sample losses (train-mode
BatchNorm, Dropout and other random or batch-coupled layers, ``reduction="sum"``) is refused.

Normalisation layers (and the squared and Huber losses) are evaluated through their textbook formulas (mean,
variance, ``rsqrt``) rather than torch's fused kernels: in torch 2.13 the fused ``layer_norm`` and
``instance_norm`` have wrong third derivatives under every autodiff nesting (the Taylor drifts of order 2 need
them), and ``mse_loss``/``huber_loss`` fail under forward-over-reverse HVPs (``tests/test_module.py``). The
substitution covers both levels a model can call: ``torch.nn.functional`` (``F.layer_norm``, ``F.instance_norm``,
``F.batch_norm``, ``F.mse_loss``, ``F.huber_loss``) and ``torch`` itself (``torch.layer_norm``,
``torch.native_layer_norm``, ``torch.instance_norm``, ``torch.batch_norm``). The substitutes give torch's values,
argument checks and weighted reductions (``mse_loss``'s weighted mean divides by the sum of the weights).
``group_norm`` and ``rms_norm`` are left to torch: their third derivatives agree with finite differences.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from .finite_sum import FiniteSum
from .gaussian import Objective

#: Layer types whose train-mode output is random or couples the samples of a batch.
_TRAIN_MODE_REFUSED = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.AlphaDropout,
                       nn.FeatureAlphaDropout, nn.RReLU)


# -- normalisation layers written out (exact higher derivatives) -------------------------------------------------
def _normalise(h: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    c = h - h.mean(dims, keepdim=True)
    return c * torch.rsqrt((c * c).mean(dims, keepdim=True) + eps)


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    y = _normalise(input, tuple(range(-len(normalized_shape), 0)), eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def _channel_affine(y: Tensor, weight, bias) -> Tensor:
    shape = (1, -1) + (1,) * (y.ndim - 2)
    y = y if weight is None else y * weight.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def _instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                   momentum=0.1, eps=1e-5):
    if not use_input_stats:
        return _batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    return _channel_affine(_normalise(input, tuple(range(2, input.ndim)), eps), weight, bias)


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    if training:  # refused at construction; reached only through a direct F.batch_norm(training=True) call
        raise ValueError("batch_norm with training=True couples the samples of a batch; use the running statistics")
    shape = (1, -1) + (1,) * (input.ndim - 2)
    y = (input - running_mean.reshape(shape)) * torch.rsqrt(running_var.reshape(shape) + eps)
    return _channel_affine(y, weight, bias)


# The losses follow torch 2.13's F.mse_loss / F.huber_loss exactly, checks included: a target of another size
# warns (broadcasting), a weight must have the input's size, an unknown reduction is a ValueError, and the
# weighted mean of mse_loss divides by the sum of the weights (huber_loss's by the element count).
def _elementwise(input, target, weight, reduction: str) -> tuple[Tensor, Tensor]:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if target.size() != input.size():
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
                      "This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=4)
    if weight is not None and weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    return torch.broadcast_tensors(input, target)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def _mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    if size_average is not None or reduce is not None:  # legacy arguments: torch's own resolution
        reduction = F._Reduction.legacy_get_string(size_average, reduce)
    a, b = _elementwise(input, target, weight, reduction)
    if weight is None:
        return _reduce((a - b) ** 2, reduction)
    loss = (a - b) ** 2 * weight
    return loss.sum() / weight.sum() if reduction == "mean" else _reduce(loss, reduction)


def _huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    a, b = _elementwise(input, target, weight, reduction)
    diff = a - b
    size = diff.abs()
    loss = torch.where(size < delta, 0.5 * diff * diff, delta * (size - 0.5 * delta))
    return _reduce(loss if weight is None else loss * weight, reduction)


# The same layers reached through torch.* directly (torch.layer_norm, torch.instance_norm, ... as a module's
# forward may call them, and as F.* does underneath): their argument orders, routed to the formulas above.
def _torch_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    return _layer_norm(input, normalized_shape, weight, bias, eps)


def _torch_native_layer_norm(input, normalized_shape, weight, bias, eps):
    dims = tuple(range(-len(normalized_shape), 0))
    mean = input.mean(dims, keepdim=True)
    c = input - mean
    rstd = torch.rsqrt((c * c).mean(dims, keepdim=True) + eps)
    y = c * rstd
    y = y if weight is None else y * weight
    return (y if bias is None else y + bias), mean, rstd


def _torch_instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps,
                         cudnn_enabled=True):
    return _instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


def _torch_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled=True):
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


# torch 2.13: the fused layer_norm / instance_norm have wrong third derivatives (and batch_norm's are not
# trusted); mse_loss and huber_loss fail under forward-over-reverse (a ZeroTensor target tangent, a missing
# forward-AD formula). Their textbook formulas are exact under every nesting.
_COMPOSITES = {F.layer_norm: _layer_norm, F.instance_norm: _instance_norm, F.batch_norm: _batch_norm,
               F.mse_loss: _mse_loss, F.huber_loss: _huber_loss,
               torch.layer_norm: _torch_layer_norm, torch.native_layer_norm: _torch_native_layer_norm,
               torch.instance_norm: _torch_instance_norm, torch.batch_norm: _torch_batch_norm}


class _ExactFormulas(TorchFunctionMode):
    """Route normalisation layers and the squared / Huber losses to their composite formulas."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        impl = _COMPOSITES.get(func, func)
        return impl(*args, **(kwargs or {}))


# -- the flat parameter vector ------------------------------------------------------------------------------------
class FlatParams:
    r"""The map between a flat vector :math:`x\in\mathbb R^d` and a module's trainable parameters.

    Holds a private copy of the model (buffers and frozen parameters are constants from the time of the copy).
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        for name, layer in model.named_modules():
            if layer.training and isinstance(layer, _TRAIN_MODE_REFUSED):
                raise ValueError(
                    f"layer {name or '<model>'!r} ({type(layer).__name__}) is in train mode, where its output is "
                    "random or couples the samples of a batch, so the loss is not a mean of per-sample losses; "
                    "call model.eval() first (BatchNorm then uses its running statistics, Dropout is the identity), "
                    "or remove the layer")
        self.model = copy.deepcopy(model)
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("`model` has no trainable parameters (none with requires_grad=True)")
        dtypes = {p.dtype for _, p in trainable}
        if len(dtypes) > 1 or not trainable[0][1].dtype.is_floating_point:
            raise ValueError(f"the trainable parameters of `model` must share one floating dtype, got {sorted(map(str, dtypes))}")
        self.names = [n for n, _ in trainable]
        self.shapes = [tuple(p.shape) for _, p in trainable]
        self.sizes = [p.numel() for _, p in trainable]
        self.d = sum(self.sizes)
        self.dtype, self.device = trainable[0][1].dtype, trainable[0][1].device
        self.x_init = torch.cat([p.detach().reshape(-1) for _, p in trainable]).clone()
        # Constants: buffers and frozen parameters, detached.
        self.constants = {n: t.detach() for n, t in self.model.named_buffers()}
        self.constants.update({n: p.detach() for n, p in self.model.named_parameters() if not p.requires_grad})

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """``(..., d)`` → ``{name: (..., *shape)}`` views, in ``named_parameters`` order."""
        if x.shape[-1] != self.d:
            raise ValueError(f"`x` must have last dim d={self.d}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        return {n: t.reshape(*lead, *s) for n, t, s in zip(self.names, x.split(self.sizes, dim=-1), self.shapes)}

    def to_module(self, x: Tensor) -> nn.Module:
        """A copy of the model with its trainable parameters set from ``x: (d,)``."""
        if x.shape != (self.d,):
            raise ValueError(f"`x` must have shape (d,) with d={self.d}, got {tuple(x.shape)}")
        out = copy.deepcopy(self.model)
        values = self.unflatten(x.detach())
        with torch.no_grad():
            for n, p in out.named_parameters():
                if n in values:
                    p.copy_(values[n])
        return out

    def forward(self, x1: Tensor, inputs: tuple[Tensor, ...]) -> Tensor:
        """The model's output at flat parameters ``x1: (d,)`` (normalisations written out)."""
        with _ExactFormulas():
            return functional_call(self.model, (self.unflatten(x1), self.constants), inputs)

    def loss(self, loss_fn, x1: Tensor, inputs: tuple[Tensor, ...], targets: Tensor) -> Tensor:
        """``loss_fn(model(inputs), targets)`` at ``x1``, with the composite formulas in the loss as well."""
        with _ExactFormulas():
            return loss_fn(functional_call(self.model, (self.unflatten(x1), self.constants), inputs), targets)


class ModuleSampleLoss:
    r"""Per-sample loss :math:`\ell_i(x)`: ``loss_fn`` on a batch of one, ``(x1: (d,), (*inputs, target)) -> ()``.

    A module-level class (not a closure), so problems built on it pickle.
    """

    def __init__(self, params: FlatParams, loss_fn: Callable[[Tensor, Tensor], Tensor]):
        self.params, self.loss_fn = params, loss_fn

    def __call__(self, x1: Tensor, sample: tuple[Tensor, ...]) -> Tensor:
        *inputs, target = sample
        return self.params.loss(self.loss_fn, x1, tuple(a.unsqueeze(0) for a in inputs), target.unsqueeze(0))


class ModuleBatchLoss:
    r"""Full-batch loss ``loss_fn(model(inputs), targets)``: ``(x1: (d,)) -> ()`` (mean reduction)."""

    def __init__(self, params: FlatParams, loss_fn: Callable[[Tensor, Tensor], Tensor], data: tuple[Tensor, ...]):
        self.params, self.loss_fn, self.data = params, loss_fn, data

    def __call__(self, x1: Tensor) -> Tensor:
        *inputs, targets = self.data
        return self.params.loss(self.loss_fn, x1, tuple(inputs), targets)


def _check_data(data, params: FlatParams) -> tuple[Tensor, ...]:
    if isinstance(data, Tensor) or not isinstance(data, (tuple, list)) or len(data) < 2 \
            or not all(isinstance(t, Tensor) for t in data):
        raise TypeError("`data` must be a tuple (inputs, targets) of tensors (or (*inputs, targets)) with a shared "
                        f"leading dim n, got {type(data).__name__}")
    data = tuple(data)
    n = data[0].shape[0] if data[0].ndim else 0
    if n < 1 or any(t.ndim == 0 or t.shape[0] != n for t in data):
        raise ValueError(f"`data` tensors must share a leading dim n >= 1, got shapes {[tuple(t.shape) for t in data]}")
    for i, t in enumerate(data):
        if t.dtype.is_floating_point and t.dtype != params.dtype:
            raise ValueError(f"`data[{i}]` has dtype {t.dtype} but the model's parameters are {params.dtype}; "
                             "convert one of them explicitly")
        if t.device.type != params.device.type:
            raise ValueError(f"`data[{i}]` is on device {t.device} but the model is on {params.device}")
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            rows = (~torch.isfinite(t)).reshape(n, -1).any(dim=1).nonzero().squeeze(-1)
            raise ValueError(f"`data[{i}]` must be finite, got NaN or inf in {rows.numel()} sample(s), the first at "
                             f"index {int(rows[0])}")
    return data


def _forward_named(params: FlatParams, x: Tensor, inputs: tuple[Tensor, ...]) -> Tensor:
    """The model's output; a failure on integer inputs names them (features are usually floating)."""
    try:
        return params.forward(x, inputs)
    except (RuntimeError, TypeError) as err:
        ints = [i for i, a in enumerate(inputs) if not a.dtype.is_floating_point]
        if not ints:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"the model failed on the integer input `data[{ints[0]}]` (dtype {inputs[ints[0]].dtype}): "
                         f"{first}; convert the features explicitly, e.g. data[{ints[0]}].to({params.dtype}) "
                         "(integer inputs are for layers such as nn.Embedding)") from None


def _check_loss(params: FlatParams, loss_fn, data: tuple[Tensor, ...]) -> None:
    """``loss_fn`` returns a scalar, averages over the batch, and the model is deterministic."""
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}")
    x = params.x_init
    with torch.no_grad():
        *inputs, _ = (t[:8] for t in data)
        if not torch.equal(_forward_named(params, x, tuple(inputs)), params.forward(x, tuple(inputs))):
            raise ValueError("the model's output is random (two evaluations differ): remove the random layer or "
                             "call model.eval()")
        *inputs, target = (t[:1] for t in data)
        one = params.loss(loss_fn, x, tuple(inputs), target)
        if not isinstance(one, Tensor) or one.ndim != 0:
            raise ValueError("`loss_fn(outputs, targets)` must return a scalar (reduction='mean'), got "
                             f"{tuple(one.shape) if isinstance(one, Tensor) else type(one).__name__}")
        two = params.loss(loss_fn, x, tuple(torch.cat([a, a]) for a in inputs), torch.cat([target, target]))
        if not torch.allclose(one, two, rtol=1e-4, atol=0):
            raise ValueError("`loss_fn` must average over the batch (reduction='mean'): on a sample repeated twice "
                             f"it gave {float(two):.6g}, on the sample alone {float(one):.6g}")


class ModuleFiniteSum(FiniteSum):
    r"""A :class:`FiniteSum` over an ``nn.Module``'s trainable parameters; build it with :meth:`FiniteSum.from_module`.

    Attributes:
        x_init: ``(d,)`` the module's parameters when the problem was built.
    """

    def __init__(self, model: nn.Module, loss_fn, data, *, batch_size: int, replacement: bool = True):
        params = FlatParams(model)
        data = _check_data(data, params)
        _check_loss(params, loss_fn, data)
        self.params = params
        super().__init__(ModuleSampleLoss(params, loss_fn), data, batch_size=batch_size, replacement=replacement,
                         d=params.d)
        self.dtype, self.device = params.dtype, params.device
        self.x_init = params.x_init

    def _data_dtype(self, tensors: tuple[Tensor, ...]) -> torch.dtype:
        return self.params.dtype  # the data was checked against the parameters (inputs may all be integer)

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """``(..., d)`` flat parameters → ``{name: (..., *shape)}``."""
        return self.params.unflatten(x)

    def to_module(self, x: Tensor) -> nn.Module:
        """A copy of the model with parameters ``x: (d,)`` (e.g. ``traj.x_final[0]``)."""
        return self.params.to_module(x)


class ModuleObjective(Objective):
    r"""An :class:`Objective` (full batch + Gaussian gradient noise) over an ``nn.Module``'s trainable parameters;
    build it with :meth:`Objective.from_module`."""

    def __init__(self, model: nn.Module, loss_fn, data, *, noise_cov=0.0):
        params = FlatParams(model)
        data = _check_data(data, params)
        _check_loss(params, loss_fn, data)
        super().__init__(ModuleBatchLoss(params, loss_fn, data), params.d, noise_cov=noise_cov,
                         dtype=params.dtype, device=params.device)
        self.params, self.data, self.n = params, data, data[0].shape[0]
        self.x_init = params.x_init

    unflatten = ModuleFiniteSum.unflatten
    to_module = ModuleFiniteSum.to_module

    def __repr__(self) -> str:
        return f"ModuleObjective(n={self.n}, d={self.d}, dtype={self.dtype})"
