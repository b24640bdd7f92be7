"""Per-path observables recorded along trajectories: names or callables ``(n_paths, d) -> (n_paths,)``.

A recorded value that is non-finite flags its path as diverged (``Trajectory.diverged_reason`` is then
``"observable:<name>"``), exactly as a non-finite iterate does: an overflowing loss is a diverged run.

**What recording costs, and ``record_every="auto"``** [derived]. The full-batch observables (``"loss"``,
``"grad_norm"``, ``"lambda_max"``) touch all ``n`` samples of a finite sum per path, while a step touches a
mini-batch of ``B``. Costs are counted in per-sample gradient evaluations (a forward and a backward pass of
one sample): a step of a discrete method costs ``B`` per gradient it takes (two for SAM-like methods, ``n``
more for a full gradient), an SDE step of the two-draw scheme twice that (four times at order 2); the
full-batch loss costs ``0.6 n`` (a forward pass over many samples, measured at 0.1-0.56 of a per-sample
gradient evaluation of the batched step: the model takes the top, so that the share holds on conv nets too),
``"grad_norm"`` ``n`` and ``"lambda_max"`` ``2n`` per Hessian-vector product. ``"auto"`` records every

.. math:: r = \\Big\\lceil \\frac{\\text{cost of one recording}}{0.1\\times\\text{cost of one step}} \\Big\\rceil

steps (:func:`auto_record_every`), so that recording costs at most 10% of the steps; the start and the end
are always recorded (a run shorter than ``r`` steps pays those two). ``r = 1`` wherever the observables are
cheap (``"x_norm"``, callables, ``"batch_loss"``) or the problem is not a finite sum. The interval chosen is
``Trajectory.info["record_every"]``. The count is a model, measured in ``benchmarks/README.md`` (0.2-9.4% on
2.4k-307k-parameter MLPs and a conv net, 8 and 64 paths): small models spend more of a step in per-call
overhead, so their real share is lower.

**Memory.** Full-batch observables are evaluated over groups of paths, at most ``chunk`` path-samples per
call (default :data:`EVAL_CHUNK` on a CPU, and no more paths than keep the group's activations within a share of
the last-level cache, :func:`activation_bytes`; :data:`EVAL_CHUNK_CUDA` on a GPU), and, where ``n`` alone exceeds
it, over chunks of samples (then the value
is the weighted sum of the chunks' means: equal to the one-call value up to rounding). Each path's loss and
gradient norm do not depend on the group it is evaluated in (bit for bit); ``lambda_max`` agrees to rounding
(Lanczos' batched products may take other kernels for other numbers of rows).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import streams
from .problems.base import Problem

Observable = Callable[[Tensor], Tensor]
BUILTIN = ("loss", "grad_norm", "x_norm", "lambda_max", "batch_loss")
AUTO_SHARE = 0.1
"""``record_every="auto"``: the largest share of the run's cost that full-batch recording may take."""
EVAL_CHUNK = 2**14
"""Path-samples per call of a full-batch observable on a CPU (memory: this many samples' activations at once)."""
EVAL_CHUNK_CUDA = 2**19
"""The same on a GPU, where fewer, larger calls pay (about 2 GB of activations for a small conv net)."""
_FORWARD = 0.6  # a full-batch forward pass per sample, in per-sample gradient evaluations of the batched step
# (measured 0.1-0.56, the conv net at 64 paths the top; was 1/3, which let recording take 17% there)
_HVP = 2.0  # a reverse-over-reverse Hessian-vector product, likewise (measured 1.9-2.1, benchmarks/README.md)


class Checked:
    """An observable whose every value is checked: a tensor of shape ``(n_paths,)`` on the state's device,
    real, of the state's floating dtype (or an integer or bool dtype: never a silent narrowing cast). Checks are on metadata only (no device synchronisation)."""

    def __init__(self, name: str, fn: Observable):
        self.name, self.fn = name, fn

    def __call__(self, x: Tensor) -> Tensor:
        value = self.fn(x)
        if not isinstance(value, Tensor):
            raise ValueError(f"observable {self.name!r} must return a tensor of shape (n_paths,) = ({x.shape[0]},), "
                             f"got {type(value).__name__}")
        if tuple(value.shape) != (x.shape[0],):
            raise ValueError(f"observable {self.name!r} must return shape (n_paths,) = ({x.shape[0]},), "
                             f"got {tuple(value.shape)}")
        if value.device != x.device:
            raise ValueError(f"observable {self.name!r} must return a tensor on the state's device {x.device}, "
                             f"got {value.device}")
        if value.is_complex() or (value.is_floating_point() and value.dtype != x.dtype):
            raise ValueError(f"observable {self.name!r} must return the state's dtype {x.dtype} (or an integer or "
                             f"bool dtype), got {value.dtype}")
        return value

    @property
    def cost(self) -> float:
        return float(getattr(self.fn, "cost", 0.0))

    def new_run(self) -> "Checked":
        """A copy with fresh state for a new chunk of paths (stateful observables, e.g. warm starts)."""
        fresh = getattr(self.fn, "new_run", None)
        return Checked(self.name, fresh()) if fresh is not None else self

    def __repr__(self) -> str:
        return f"Checked({self.name!r})"


# -- full-batch observables, in groups of paths and chunks of samples ---------------------------------------------
def _check_chunk(chunk) -> int | None:
    if chunk is None:
        return None
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"`chunk` must be a positive integer (path-samples per call), got chunk={chunk!r}")
    return chunk


def _sample_parts(problem: Problem, chunk: int) -> list[tuple[float, Problem]] | None:
    """``[(weight, problem over a slice of samples)]`` when a finite sum has more than ``chunk`` samples."""
    from .problems.finite_sum import FiniteSum

    n = getattr(problem, "n", None)
    if not isinstance(problem, FiniteSum) or n <= chunk:
        return None
    data = (problem.data,) if isinstance(problem.data, Tensor) else problem.data
    parts = []
    for a in range(0, n, chunk):
        piece = tuple(t[a:a + chunk] for t in data)
        piece = piece[0] if isinstance(problem.data, Tensor) else piece
        parts.append(((min(a + chunk, n) - a) / n, FiniteSum(problem.loss_fn, piece, batch_size=1, d=problem.d)))
    return parts


def activation_bytes(problem: Problem) -> int | None:
    """Bytes the loss keeps for its backward pass per sample of a finite sum (its activations): the tensors
    that ``torch.autograd.graph.saved_tensors_hooks`` sees in the loss of two samples less those of one (the
    parameters are saved once either way); ``None`` for other problems, or where the loss cannot be evaluated
    on its first samples at ``x_init`` (else zeros)."""
    from .problems.finite_sum import FiniteSum

    if not isinstance(problem, FiniteSum) or problem.n < 2:
        return None
    data = (problem.data,) if isinstance(problem.data, Tensor) else problem.data
    x0 = getattr(problem, "x_init", None)
    if isinstance(x0, Tensor) and x0.shape == (problem.d,):
        x = x0.detach()[None].clone().requires_grad_(True)
    else:
        x = torch.zeros(1, problem.d, dtype=problem.dtype, device=problem.device, requires_grad=True)
    sizes = []
    for m in (1, 2):
        saved = [0]

        def pack(t: Tensor) -> Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        try:
            piece = tuple(t[:m] for t in data)
            part = FiniteSum(problem.loss_fn, piece[0] if isinstance(problem.data, Tensor) else piece, batch_size=1,
                             d=problem.d)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                part.loss(x)
        except Exception:  # a loss that cannot run here: the default groups
            return None
        sizes.append(saved[0])
    return max(sizes[1] - sizes[0], 0) or None


class FullBatch:
    """Base of the full-batch observables: ``value(x)`` over groups of at most ``chunk // n`` paths (on a CPU
    with the default ``chunk``, also at most as many as keep a group's activations, :func:`activation_bytes`,
    within :data:`sde_sam.streams.CACHE_SHARE` of the last-level cache: 1.8-2x faster recordings on the 77k MLP
    and the conv net of ``benchmarks/bench_module.py``; each path's value is the same in any group)."""

    per_sample: float = _FORWARD

    def __init__(self, problem: Problem, *, chunk: int | None = None):
        self.problem = problem
        device = getattr(problem, "device", None)
        cuda = device is not None and torch.device(device).type == "cuda"
        fit_cache = chunk is None and not cuda
        if chunk is None:  # by device: the problem's, where it says
            chunk = EVAL_CHUNK_CUDA if cuda else EVAL_CHUNK
        self.chunk = _check_chunk(chunk)
        self.n = getattr(problem, "n", None)
        self.parts = _sample_parts(problem, self.chunk)
        self.rows = max(1, self.chunk // self.n) if isinstance(self.n, int) else None
        if fit_cache and self.rows is not None and self.parts is None:
            act = activation_bytes(problem)
            if act:
                self.rows = max(1, min(self.rows, int(streams.cache_budget() // (self.n * act))))

    @property
    def cost(self) -> float:
        """Per path and recording, in per-sample gradient evaluations (0 where the problem has no ``n``)."""
        return self.per_sample * self.n if isinstance(self.n, int) else 0.0

    def value(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        rows = self.rows if self.rows is not None else x.shape[0]
        if x.shape[0] <= rows:
            return self.value(x)
        # Per-path values do not depend on the group (per-path data, per-path reductions).
        return torch.cat([self.value(x[a:a + rows]) for a in range(0, x.shape[0], rows)])


class _Loss(FullBatch):
    def value(self, x: Tensor) -> Tensor:
        if self.parts is None:
            return self.problem.loss(x)
        return sum(w * p.loss(x) for w, p in self.parts)


class _GradNorm(FullBatch):
    per_sample = 1.0

    def value(self, x: Tensor) -> Tensor:
        g = self.problem.grad(x) if self.parts is None else sum(w * p.grad(x) for w, p in self.parts)
        return torch.linalg.vector_norm(g, dim=-1)


class LambdaMax(FullBatch):
    r"""Algebraic top eigenvalue :math:`\lambda_1(\nabla^2 f(x_p))` per path (MATH §6), warm-started.

    The first recording starts every path from one fixed pseudo-random unit vector (so copies of one point
    give one value, whatever chunk they are in); each later recording starts from the eigenvector found at
    the previous one, which is close when the iterates moved little. Build it with :func:`lambda_max`.
    """

    def __init__(self, problem: Problem, *, iters: int = 20, method: str = "lanczos", warm_start: bool = True,
                 chunk: int | None = None):
        super().__init__(problem, chunk=chunk)
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"`iters` must be an integer >= 1, got iters={iters!r}")
        if method not in ("lanczos", "power"):
            raise ValueError(f"`method` must be 'lanczos' or 'power', got method={method!r}")
        if not isinstance(warm_start, bool):
            raise ValueError(f"`warm_start` must be True or False, got warm_start={warm_start!r}")
        self.iters, self.method, self.warm_start = iters, method, warm_start
        self.vector: Tensor | None = None  # the last eigenvectors, (n_paths, d)

    @property
    def cost(self) -> float:
        hvps = self.iters + 1 if self.method == "lanczos" else 2 * self.iters + 2
        return _HVP * hvps * self.n if isinstance(self.n, int) else 0.0

    def new_run(self) -> "LambdaMax":
        return LambdaMax(self.problem, iters=self.iters, method=self.method, warm_start=self.warm_start,
                         chunk=self.chunk)

    def _hvp(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        if self.parts is None:
            return lambda v: self.problem.hvp(x, v)
        return lambda v: sum(w * p.hvp(x, v) for w, p in self.parts)

    def _start(self, x: Tensor) -> Tensor:
        gen = torch.Generator(device=x.device).manual_seed(0)
        v = torch.randn(x.shape[-1], generator=gen, dtype=x.dtype, device=x.device)
        return (v / torch.linalg.vector_norm(v)).expand_as(x).clone()

    def __call__(self, x: Tensor) -> Tensor:
        from .spectrum import _top_eigenpair_hvp

        start = self.vector if self.warm_start and self.vector is not None else self._start(x)
        rows = max(1, self.chunk // self.n) if isinstance(self.n, int) else x.shape[0]
        values, vectors = [], []
        for a in range(0, x.shape[0], rows):
            xs = x[a:a + rows].detach()
            pair = _top_eigenpair_hvp(self._hvp(xs), start[a:a + rows], method=self.method, iters=self.iters,
                                      eps=None)
            values.append(pair.value)
            vectors.append(pair.vector)
        self.vector = vectors[0] if len(vectors) == 1 else torch.cat(vectors)
        return values[0] if len(values) == 1 else torch.cat(values)


def loss(*, chunk: int | None = None) -> Callable[[Problem], Observable]:
    """The full-batch loss :math:`f(x)` per path, ``chunk`` path-samples per call (``observables=[loss(...)]``;
    ``None``: the default groups, :class:`FullBatch`)."""
    _check_chunk(chunk)
    return _Builder("loss", lambda p: _Loss(p, chunk=chunk))


def grad_norm(*, chunk: int | None = None) -> Callable[[Problem], Observable]:
    r""":math:`\|\nabla f(x)\|` per path (full batch), ``chunk`` path-samples per call."""
    _check_chunk(chunk)
    return _Builder("grad_norm", lambda p: _GradNorm(p, chunk=chunk))


def lambda_max(*, iters: int = 20, method: str = "lanczos", warm_start: bool = True,
               chunk: int | None = None) -> Callable[[Problem], Observable]:
    r"""The ``"lambda_max"`` observable with its options: ``observables=[ss.observables.lambda_max(iters=10)]``.

    Args:
        iters: Iterations per recording (Lanczos: Krylov dimension, memory ``rows * iters * d`` numbers).
        method: ``"lanczos"`` or ``"power"`` (see :func:`sde_sam.top_eigenpair_hvp`).
        warm_start: Start each recording from the previous recording's eigenvectors (first: a fixed vector).
        chunk: Path-samples per call (memory); ``None``: :data:`EVAL_CHUNK` (CPU) or :data:`EVAL_CHUNK_CUDA`.

    Example:
        >>> traj = ss.run(prob, ss.SAM(0.1, 0.05), x0, steps=100, observables=[ss.observables.lambda_max(iters=10)])
    """
    LambdaMax(_NoProblem(), iters=iters, method=method, warm_start=warm_start, chunk=chunk)  # checks now
    return _Builder("lambda_max", lambda p: LambdaMax(p, iters=iters, method=method, warm_start=warm_start,
                                                      chunk=chunk))


class _NoProblem:
    n, device = None, None


class _Builder:
    """A built-in observable with options, bound to the problem when a run resolves it."""

    def __init__(self, name: str, build: Callable[[Problem], Observable]):
        self.__name__, self.build = name, build

    def __call__(self, problem: Problem) -> Observable:
        return self.build(problem)


class BatchLoss:
    r"""``"batch_loss"``: :math:`f_{\gamma_k}(x_{k-1})`, the loss of the draw that step ``k`` used, at the point
    where it used it, reported by the step (no extra forward pass). Undefined at ``t = 0`` (recorded as NaN).

    The engine fills it; a step that reports it returns ``(x_next, state, guard, batch_loss)`` with an
    ``(n,)`` tensor (:data:`sde_sam._engine.Step`). Requesting it from a step that does not is a
    ``ValueError``.
    """

    cost = 0.0
    __name__ = "batch_loss"

    def __call__(self, x: Tensor) -> Tensor:
        raise RuntimeError("the batch loss is filled in by the engine from the step's report")


def x_norm(x: Tensor) -> Tensor:
    r""":math:`\|x\|` per path."""
    return torch.linalg.vector_norm(x, dim=-1)


def resolve(observables: Sequence[str | Observable] | str, problem: Problem) -> dict[str, Observable]:
    """Map each requested observable to a per-path function.

    Built-in names: ``"loss"`` (:math:`f(x)`), ``"grad_norm"`` (:math:`\\|\\nabla f(x)\\|`), ``"x_norm"``
    (:math:`\\|x\\|`), ``"lambda_max"`` (algebraic top Hessian eigenvalue, by Lanczos, warm-started: see
    :func:`lambda_max` for its options), ``"batch_loss"`` (:class:`BatchLoss`). The full-batch ones with
    options: :func:`loss`, :func:`grad_norm`, :func:`lambda_max`. A callable is named
    by its ``__name__`` (anonymous or repeated names get their position) and must return a tensor of shape
    ``(n_paths,)`` on the state's device, of its dtype (or integer/bool); otherwise recording raises a ``ValueError`` naming it.
    """
    if isinstance(observables, str) or callable(observables):
        observables = [observables]
    out: dict[str, Observable] = {}
    for obs in observables:
        if isinstance(obs, _Builder):
            out[obs.__name__] = Checked(obs.__name__, obs(problem))
        elif callable(obs):
            name = getattr(obs, "__name__", None) or type(obs).__name__
            if name == "<lambda>" or name in out:  # anonymous or repeated names get their position
                name = f"{name.strip('<>')}_{len(out)}"
            out[name] = Checked(name, obs)
        elif obs == "loss":
            out[obs] = Checked(obs, _Loss(problem))
        elif obs == "grad_norm":
            out[obs] = Checked(obs, _GradNorm(problem))
        elif obs == "x_norm":
            out[obs] = x_norm
        elif obs == "lambda_max":
            out[obs] = Checked(obs, LambdaMax(problem))
        elif obs == "batch_loss":
            out[obs] = BatchLoss()
        else:
            raise ValueError(f"`observables` entries must be one of {BUILTIN} or a callable "
                             f"(n_paths, d) -> (n_paths,), got {obs!r}")
    return out


def record_times(steps: int, record_every: int) -> list[int]:
    """Step indices at which observables are recorded: ``0, r, 2r, ...`` and always the last step."""
    ks = list(range(0, steps + 1, record_every))
    return ks if ks[-1] == steps else ks + [steps]


# -- the cost model of record_every="auto" -------------------------------------------------------------------------
def check_record_every(record_every) -> int | str:
    """``record_every``: a positive integer or ``"auto"``."""
    if record_every == "auto" and isinstance(record_every, str):
        return record_every
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"`record_every` must be an integer >= 1 or 'auto', got record_every={record_every!r}")
    return record_every


def _samples_per_gradient(problem: Problem) -> int | None:
    batch = getattr(problem, "batch_size", None)
    n = getattr(problem, "n", None)
    return batch if isinstance(batch, int) else n if isinstance(n, int) else None


def step_cost(problem: Problem, method) -> float | None:
    """One discrete step per path, in per-sample gradient evaluations; ``None`` where the problem has no
    samples (closed forms: then ``"auto"`` records every step)."""
    per = _samples_per_gradient(problem)
    if per is None:
        return None
    grads = 1 + (getattr(method, "ascent_steps", 1) if method.perturbs else 0)
    if getattr(method, "needs_oracle", False):
        grads += _HVP
    full = getattr(problem, "n", 0) if method.uses_full_grad else 0
    return per * grads + full


def sde_step_cost(sde) -> float | None:
    """One solver step per path (two-draw scheme: two draws of the discrete step's work, twice that at order
    2; sampled expectations: ``K`` draws; other ways form full-batch quantities)."""
    base = step_cost(sde.problem, sde.method)
    if base is None:
        return None
    if sde.expectation_mode == "two_draw":
        return base * 2 * (2 if sde.order == 2 else 1)
    if sde.expectation_mode == "sampled":
        return base * (sde.n_draws or 1)
    return float(max(base, getattr(sde.problem, "n", 0) or 0))


def auto_record_every(observables: dict[str, Observable], step_cost: float | None) -> int:
    """The interval of ``record_every="auto"``: :math:`\\lceil \\text{cost}/(0.1\\,\\text{step cost})\\rceil`
    (module docstring), 1 where recording is cheap or the step cost is unknown."""
    cost = sum(float(getattr(fn, "cost", 0.0)) for fn in observables.values())
    if not step_cost or cost <= 0:
        return 1
    return max(1, math.ceil(cost / (AUTO_SHARE * step_cost)))
