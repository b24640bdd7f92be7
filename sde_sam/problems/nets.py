r"""Larger ready-made module problems (issue 21): a conv net of ~10⁵ parameters on the digits and a pre-LayerNorm
attention block on synthetic sequences, both through :meth:`FiniteSum.from_module`.

Both use smooth activations (``tanh``, average pooling, ``softmax``), so the loss is :math:`C^\infty` and its
third derivatives (the order-2 drifts need them) are checked against finite differences
(``tests/test_large_models.py``). LayerNorm goes through :meth:`FiniteSum.from_module`'s exact formula.
Weights are initialised as ``torch.nn.Linear``/``torch.nn.Conv2d`` do (uniform in
:math:`\pm 1/\sqrt{\text{fan-in}}`), from a generator seeded by ``seed``: no global random state is read or
advanced.

**Memory per path** (measured, ``docs/scaling.md`` "Larger models: memory per path"): peak resident memory grows
with ``chunk_size`` (the paths evaluated at once), not with ``n_paths``; beyond a chunk, each path costs only its
stored state (a few copies of :math:`d` numbers).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from .datasets import digits
from .finite_sum import FiniteSum

LOSSES = ("cross_entropy", "mse")


def _uniform_(t: Tensor, bound: float, gen: torch.Generator) -> None:
    with torch.no_grad():
        t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) * 2 * bound - bound)


def _linear(fan_in: int, fan_out: int, gen: torch.Generator, dtype: torch.dtype) -> nn.Linear:
    layer = nn.utils.skip_init(nn.Linear, fan_in, fan_out, dtype=dtype)  # no draw from the global generator
    _uniform_(layer.weight, 1 / math.sqrt(fan_in), gen)
    _uniform_(layer.bias, 1 / math.sqrt(fan_in), gen)
    return layer


def _conv(c_in: int, c_out: int, gen: torch.Generator, dtype: torch.dtype) -> nn.Conv2d:
    layer = nn.utils.skip_init(nn.Conv2d, c_in, c_out, 3, padding=1, dtype=dtype)
    _uniform_(layer.weight, 1 / math.sqrt(9 * c_in), gen)
    _uniform_(layer.bias, 1 / math.sqrt(9 * c_in), gen)
    return layer


def _check_common(n: int, batch_size: int, loss: str, dtype: torch.dtype) -> None:
    _checks.positive_int("n", n)
    _checks.positive_int("batch_size", batch_size)
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got loss={loss!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"`dtype` must be a floating torch.dtype, got dtype={dtype!r}")


# -- the conv net on digits ------------------------------------------------------------------------------------
class DigitsConvNet(nn.Module):
    r"""``conv3x3(1→c₁) → tanh → conv3x3(c₁→c₂) → tanh → avgpool 2 → Linear(16c₂→h) → tanh → Linear(h→10)``.

    Inputs are the 64 standardised pixels of a digit, ``(batch, 64)``, read as ``1×8×8`` images (padding 1 keeps
    8×8; the pooling halves it to 4×4). ``d = 10c₁ + (9c₁+1)c₂ + (16c₂+1)h + 10(h+1)``.
    """

    def __init__(self, *, channels: tuple[int, int], hidden: int, seed: int, dtype: torch.dtype):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        c1, c2 = channels
        self.conv1, self.conv2 = _conv(1, c1, gen, dtype), _conv(c1, c2, gen, dtype)
        self.fc1, self.fc2 = _linear(16 * c2, hidden, gen, dtype), _linear(hidden, 10, gen, dtype)

    def forward(self, a: Tensor) -> Tensor:
        h = torch.tanh(self.conv1(a.reshape(-1, 1, 8, 8)))
        h = F.avg_pool2d(torch.tanh(self.conv2(h)), 2)  # smooth (max pooling has kinks)
        return self.fc2(torch.tanh(self.fc1(h.flatten(1))))


def digits_conv(n: int = 256, *, channels: tuple[int, int] = (32, 64), hidden: int = 80,
                loss: str = "cross_entropy", batch_size: int = 8, replacement: bool = True, seed: int = 0,
                dtype: torch.dtype = torch.float64):
    r"""A conv net of **d = 101,626** parameters (defaults) on ``n`` handwritten digits (:class:`DigitsConvNet`).

    .. math:: d = 10c_1 + (9c_1+1)c_2 + (16c_2+1)h + 10(h+1), \qquad (c_1, c_2, h) = (32, 64, 80)

    The loss is smooth (``tanh``, average pooling), so its Hessian-vector products and third derivatives are
    exact under autodiff (checked against finite differences in ``tests/test_large_models.py``).

    Memory per path (float64, ``n = 64``, ``B = 8``; peak resident set of a fresh interpreter, ``docs/scaling.md``
    "Larger models: memory per path"): every path stores ≈3–4 MB (a few copies of its ``d`` numbers; float32
    ≈1.5–2 MB), and each path of a chunk (``chunk_size``) needs while it is evaluated ≈14 MB (``ss.run``, SAM),
    ≈15–17 MB (order-1 and order-2 SDEs) and ≈52 MB (the ``"lambda_max"`` observable, 20 Lanczos iterations);
    float32: ≈7, 8–10 and 30 MB.

    Args:
        n: Number of digits (a seeded subset of the 1,797), features standardised.
        channels: Output channels ``(c₁, c₂)`` of the two 3×3 convolutions.
        hidden: Width ``h`` of the hidden linear layer.
        loss: ``"cross_entropy"`` (integer labels) or ``"mse"`` (squared error against one-hot targets).
        batch_size: Mini-batch size ``B``.
        replacement: Mini-batches with (default) or without replacement.
        seed: Seeds the subset and the weights.
        dtype: Floating dtype of the weights and the data.

    Returns:
        A :class:`~sde_sam.problems.module.ModuleFiniteSum` (``x_init``, ``unflatten``, ``to_module``).

    Example:
        >>> prob = digits_conv(64, channels=(4, 8), hidden=16)
        >>> prob.d, prob.x_init.dtype
        (2570, torch.float64)
    """
    _check_common(n, batch_size, loss, dtype)
    if not (isinstance(channels, tuple) and len(channels) == 2):
        raise ValueError(f"`channels` must be a pair of positive ints (c1, c2), got channels={channels!r}")
    for c in channels:
        _checks.positive_int("channels", c)
    _checks.positive_int("hidden", hidden)
    model = DigitsConvNet(channels=channels, hidden=hidden, seed=seed, dtype=dtype)
    inputs, labels = digits(n, seed=seed, dtype=dtype)
    targets = labels if loss == "cross_entropy" else F.one_hot(labels, 10).to(dtype)
    loss_fn = F.cross_entropy if loss == "cross_entropy" else F.mse_loss
    return FiniteSum.from_module(model, loss_fn, (inputs, targets), batch_size=batch_size, replacement=replacement)


# -- the attention block on synthetic sequences ------------------------------------------------------------------
class AttentionBlock(nn.Module):
    r"""One pre-LayerNorm transformer block and a linear readout, on ``(batch, L, w)`` sequences.

    .. math:: h = a + P,\quad h \leftarrow h + \mathrm{MHA}(\mathrm{LN}_1 h),\quad
              h \leftarrow h + W_2 \tanh(W_1 \mathrm{LN}_2 h),\quad y = W_o\, \mathrm{LN}_3(\tfrac1L\textstyle\sum_l h_l)

    with a learned position table :math:`P` (``L × w``) and multi-head attention written with plain linear layers
    (``softmax(QKᵀ/√(w/heads)) V`` per head), so that every operation has exact higher derivatives under
    ``torch.func``.
    """

    def __init__(self, *, length: int, width: int, heads: int, mlp: int, outputs: int, seed: int,
                 dtype: torch.dtype):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.heads = heads
        self.pos = nn.Parameter(torch.empty(length, width, dtype=dtype))
        _uniform_(self.pos, 1.0, gen)
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(width, dtype=dtype) for _ in range(3))
        self.qkv, self.proj = _linear(width, 3 * width, gen, dtype), _linear(width, width, gen, dtype)
        self.fc1, self.fc2 = _linear(width, mlp, gen, dtype), _linear(mlp, width, gen, dtype)
        self.out = _linear(width, outputs, gen, dtype)

    def _attention(self, h: Tensor) -> Tensor:
        b, length, width = h.shape
        q, k, v = self.qkv(h).reshape(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, length, width))

    def forward(self, a: Tensor) -> Tensor:
        h = a + self.pos
        h = h + self._attention(self.ln1(h))
        h = h + self.fc2(torch.tanh(self.fc1(self.ln2(h))))
        return self.out(self.ln3(h.mean(dim=1)))


def attention_block(n: int = 256, *, length: int = 8, width: int = 16, heads: int = 2, mlp: int = 32,
                    classes: int = 4, loss: str = "cross_entropy", batch_size: int = 8, replacement: bool = True,
                    seed: int = 0, dtype: torch.dtype = torch.float64):
    r"""A pre-LayerNorm attention block (:class:`AttentionBlock`) on a teacher's synthetic sequences.

    Inputs are ``n`` standard Gaussian sequences ``(n, length, width)``; a *teacher* — the same architecture with
    weights seeded by ``seed + 1`` — labels each one: the class of its largest output (``loss="cross_entropy"``)
    or its outputs themselves (``loss="mse"``, regression). The student starts from weights seeded by ``seed``.
    With the defaults **d = 2,452**:

    .. math:: d = Lw + 3\cdot 2w + (3w^2+3w) + (w^2+w) + (wm+m) + (mw+w) + (wk+k)

    (``L`` length, ``w`` width, ``m`` MLP width, ``k`` classes; three LayerNorms of ``2w`` each).

    Memory per path (float64, ``n = 64``, ``B = 8``; ``docs/scaling.md`` "Larger models: memory per path"): the
    stored state is a few copies of ``d`` numbers (tens of kB); each path of a chunk needs ≈1.3 MB (``ss.run``,
    SAM, mostly the full-batch loss over the ``n`` samples), ≈1.7 MB (order-1 SDE), ≈2.3 MB (order 2) and ≈7 MB
    (``"lambda_max"``); about half that in float32.

    Args:
        n: Number of sequences.
        length: Sequence length ``L``.
        width: Model width ``w`` (divisible by ``heads``).
        heads: Attention heads.
        mlp: Hidden width ``m`` of the block's MLP.
        classes: Outputs ``k`` (classes, or regression targets with ``loss="mse"``).
        loss: ``"cross_entropy"`` (teacher's argmax labels) or ``"mse"`` (teacher's outputs).
        batch_size: Mini-batch size ``B``.
        replacement: Mini-batches with (default) or without replacement.
        seed: Seeds the inputs (``seed``), the student (``seed``) and the teacher (``seed + 1``).
        dtype: Floating dtype.

    Returns:
        A :class:`~sde_sam.problems.module.ModuleFiniteSum`.

    Example:
        >>> prob = attention_block(32)
        >>> prob.d, prob.n
        (2452, 32)
    """
    _check_common(n, batch_size, loss, dtype)
    for name, value in (("length", length), ("width", width), ("heads", heads), ("mlp", mlp), ("classes", classes)):
        _checks.positive_int(name, value)
    if width % heads:
        raise ValueError(f"`width` must be divisible by `heads`, got width={width}, heads={heads}")
    if loss == "cross_entropy" and classes < 2:
        raise ValueError(f"`classes` must be >= 2 with loss='cross_entropy', got classes={classes}")
    shape = {"length": length, "width": width, "heads": heads, "mlp": mlp, "outputs": classes, "dtype": dtype}
    student, teacher = AttentionBlock(seed=seed, **shape), AttentionBlock(seed=seed + 1, **shape)
    inputs = torch.randn(n, length, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        out = teacher(inputs)
    targets = out.argmax(dim=-1) if loss == "cross_entropy" else out
    loss_fn = F.cross_entropy if loss == "cross_entropy" else F.mse_loss
    return FiniteSum.from_module(student, loss_fn, (inputs, targets), batch_size=batch_size, replacement=replacement)
