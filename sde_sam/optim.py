r"""A bridge to ordinary training: ``torch.optim``-style optimizers for every method and option (MATH §2, §2.1-2.3).

``ss.optim.SAM(model.parameters(), lr=0.1, rho=0.05, momentum=0.9)`` is a ``torch.optim.Optimizer`` whose
``step(closure)`` takes exactly the step :func:`sde_sam.step` takes on ``FiniteSum.from_module`` of the same model
with the same mini-batch: the method's own perturbation, oracles, m-SAM split and base step
(:mod:`sde_sam.methods`, :func:`sde_sam.discrete.step`) run on the flat parameter vector, with the problem's
gradients computed from the closure. Nothing of a method's formula is written here.

**The closure protocol.**

- ``closure()`` re-evaluates the loss of the current mini-batch at the current parameters and *returns it*
  (mean over the batch), **without calling** ``backward()``: the optimizer takes the gradients itself with
  ``torch.autograd.grad`` (keeping the graph where a method needs a Hessian-vector product: Hessian USAM,
  Eigen-SAM's power iteration), so ``p.grad`` is neither read nor written. It is called under
  ``torch.enable_grad()``, once per gradient the method needs (SAM: twice).
- m-SAM (``micro_batch=m``): pass ``batch_size=B`` to ``step``; the closure then takes a ``slice`` of the
  mini-batch, ``closure(s)`` is the loss of ``batch[s]``, called for the micro-batches ``slice(j m, (j+1) m)`` in
  order (MATH §2.2).
- DNSAM (and Eigen-SAM's first eigenvector, unless ``v0`` is given): ``step(..., full_closure=...)``,
  a closure returning the full-batch loss (the whole data set), evaluated at the unperturbed point.

``step`` returns the (detached) loss at the unperturbed point (m-SAM: the mean of the micro-batch losses).

**State** (``state_dict``/``load_state_dict`` round trip, per parameter as ``torch.optim.SGD``):
``"momentum_buffer"`` (MATH §2.1), ``"eigenvector"`` (Eigen-SAM's :math:`v`, a slice of the unit vector),
``"step"`` (Eigen-SAM's refresh schedule). Hyper-parameters live in the single parameter group (an LR scheduler
may change ``lr``); the method is rebuilt from the group at every step, so its checks apply.

**Parameters** are flattened in the order given, as :meth:`sde_sam.FiniteSum.from_module` does with
``named_parameters()``: pass ``model.parameters()`` (all trainable) and the flat vector is the problem's ``x``.
One parameter group only: the perturbation's norms couple all parameters.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import Tensor

from . import discrete, schedules
from .methods import METHODS, Method, check_method
from .problems.base import Problem


class _ClosureProblem(Problem):
    """The problem one step sees: gradients of the user's closures at flat points, written into the parameters.

    A draw is a row of positions in the mini-batch (``(1, B)``; m-SAM's split makes ``(k, m)`` rows). A row of the
    whole batch calls ``closure()``, a micro-batch calls ``closure(slice)``.
    """

    def __init__(self, params: list[Tensor], closure, full_closure, batch_size: int):
        self.params, self.closure, self.full_closure, self.batch_size = params, closure, full_closure, batch_size
        self.sizes = [p.numel() for p in params]
        self.d, self.dtype, self.device = sum(self.sizes), params[0].dtype, params[0].device
        self.first_losses: list[Tensor] | None = None  # the losses of the first gradient call (at the point)

    # -- evaluation -------------------------------------------------------------------------------------
    def write(self, x1: Tensor) -> None:
        with torch.no_grad():
            for p, t in zip(self.params, x1.split(self.sizes)):
                p.copy_(t.view_as(p))

    def _loss(self, closure, row: Tensor | None, name: str) -> Tensor:
        if row is None or row.numel() == self.batch_size:
            loss = closure()
        else:
            loss = closure(slice(int(row[0]), int(row[-1]) + 1))  # a CPU row: no device synchronisation
        if not isinstance(loss, Tensor) or loss.ndim != 0 or not loss.requires_grad:
            got = f"shape {tuple(loss.shape)}, requires_grad={loss.requires_grad}" if isinstance(loss, Tensor) \
                else type(loss).__name__
            raise ValueError(f"`{name}` must return the loss as a scalar tensor that depends on the parameters "
                             f"(requires_grad), without calling backward(); got {got}")
        return loss

    def _grads(self, out, inputs, *, create_graph: bool = False, grad_outputs=None) -> list[Tensor]:
        try:
            gs = torch.autograd.grad(out, self.params if inputs is None else inputs, grad_outputs=grad_outputs,
                                     create_graph=create_graph, allow_unused=True)
        except RuntimeError as err:
            if "second time" in str(err):
                raise ValueError("the closure must return the loss without calling backward(): the optimizer "
                                 "takes the gradients itself (torch.autograd.grad)") from None
            raise
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, gs)]

    def _flat(self, gs: list[Tensor]) -> Tensor:
        return torch.cat([g.reshape(-1) for g in gs])

    def _grad_rows(self, x: Tensor, draws, closure, name: str) -> tuple[Tensor, list[Tensor]]:
        out, losses = [], []
        for i in range(x.shape[0]):  # one row per micro-batch (a single path): the closure is the user's code
            self.write(x[i])
            with torch.enable_grad():
                loss = self._loss(closure, None if draws is None else draws[i], name)
                out.append(self._flat(self._grads(loss, None)))
            losses.append(loss.detach())
        return torch.stack(out), losses

    def stochastic_grad(self, x: Tensor, draws: Tensor) -> Tensor:
        g, losses = self._grad_rows(x, draws, self.closure, "closure")
        if self.first_losses is None:
            self.first_losses = losses
        return g

    def stochastic_hvp(self, x: Tensor, v: Tensor, draws: Tensor) -> Tensor:
        out = []
        for i in range(x.shape[0]):
            self.write(x[i])
            with torch.enable_grad():
                gs = self._grads(self._loss(self.closure, draws[i], "closure"), None, create_graph=True)
                # Reverse over reverse; a gradient that does not depend on the parameters has a zero Hessian.
                keep = [j for j, g in enumerate(gs) if g.requires_grad]
                hv = [torch.zeros_like(p) for p in self.params]
                if keep:
                    us = [t.view_as(p) for p, t in zip(self.params, v[i].split(self.sizes))]
                    dot = sum((gs[j] * us[j]).sum() for j in keep)
                    hv = self._grads(dot, None)
            out.append(self._flat(hv).detach())
        return torch.stack(out)

    def _full(self) -> object:
        if self.full_closure is None:
            raise ValueError("this step needs the full-batch gradient (DNSAM's normalisation, Eigen-SAM's first "
                             "eigenvector without `v0`): pass step(closure, full_closure=...) returning the loss "
                             "on the whole data set, got full_closure=None")
        return self.full_closure

    def grad(self, x: Tensor) -> Tensor:
        return self._grad_rows(x, None, self._full(), "full_closure")[0]

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        full = _ClosureProblem(self.params, self._full(), None, self.batch_size)
        return full.stochastic_hvp(x, v, torch.zeros(x.shape[0], self.batch_size, dtype=torch.int64))

    def loss(self, x: Tensor) -> Tensor:
        raise NotImplementedError("the optimizer's problem evaluates gradients only")

    def grad_single(self, x1: Tensor) -> Tensor:
        raise NotImplementedError("the optimizer's problem is not torch.func-traceable (it runs the user's closure)")

    stochastic_grad_single = grad_single

    def sample_draws(self, shape, generator):
        raise NotImplementedError("the optimizer's draws are the user's mini-batches")


def _batch_draw(batch_size: int) -> Tensor:
    return torch.arange(batch_size, dtype=torch.int64).unsqueeze(0)  # positions in the mini-batch, on the CPU


class Optimizer(torch.optim.Optimizer):
    r"""Any sde_sam method as a ``torch.optim.Optimizer`` (module docstring: the closure protocol and the state).

    Args:
        params: The parameters (an iterable of tensors, or one parameter group as a dict), all of one floating
            dtype and device, with ``requires_grad=True``; flattened in the order given.
        method: The method and its options, e.g. ``ss.SAM(0.1, 0.05, momentum=0.9)``; its hyper-parameters become
            the group's defaults.
        v0: Eigen-SAM only: the initial eigenvector, ``(d,)`` in the flattened order (normalised, used as is).
            Without it the first step computes :math:`v` by ``init_power_iters`` power iterations on the full-batch
            Hessian (needs ``full_closure``) from a Gaussian start drawn with ``seed``, as
            :func:`sde_sam.discrete.initial_state`.
        seed: Eigen-SAM only: the seed of that start (default 0).

    Example:
        >>> model = torch.nn.Linear(3, 1).double()
        >>> opt = ss.optim.Optimizer(model.parameters(), ss.SAM(0.1, 0.05, momentum=0.9))
        >>> a, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
        >>> loss = opt.step(lambda: ((model(a) - y) ** 2).mean())
    """

    def __init__(self, params, method: Method, *, v0: Tensor | None = None, seed: int | None = None):
        check_method(method)
        self.method = method
        self._fields = [f.name for f in dataclasses.fields(method)]
        super().__init__(params, {f: getattr(method, f) for f in self._fields})
        ps = self.param_groups[0]["params"]
        if len({p.dtype for p in ps}) > 1 or not ps[0].dtype.is_floating_point:
            raise ValueError(f"`params` must share one floating dtype, got {sorted({str(p.dtype) for p in ps})}")
        if len({p.device for p in ps}) > 1:
            raise ValueError(f"`params` must be on one device, got {sorted({str(p.device) for p in ps})}")
        frozen = [i for i, p in enumerate(ps) if not p.requires_grad]
        if frozen:
            raise ValueError(f"`params` must all require grad (the flat vector is the trainable parameters, as "
                             f"FiniteSum.from_module), got requires_grad=False at index {frozen[0]}")
        if seed is not None and not method.uses_eigenvector:
            raise ValueError(f"`seed` is only for methods with an eigenvector (EigenSAM), got method={method.name}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an int, got seed={seed!r}")
        self.seed = 0 if seed is None else seed
        if v0 is not None:  # initial_state's checks and normalisation; refuses v0 for other methods
            x = self._x()
            v = discrete.initial_state(self._problem(None, None, 1), method, x, v0=v0).v
            self._store(discrete.StepState(v=v))

    def add_param_group(self, param_group: dict) -> None:
        if self.param_groups:
            raise ValueError("an sde_sam optimizer takes one parameter group (the perturbation's norms couple all "
                             f"parameters), got a second one with {len(list(param_group['params']))} tensor(s)")
        super().add_param_group(param_group)

    # -- the flat vector and the state ------------------------------------------------------------------
    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def _x(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params]).unsqueeze(0)

    def _problem(self, closure, full_closure, batch_size: int) -> _ClosureProblem:
        return _ClosureProblem(self._params, closure, full_closure, batch_size)

    def _flat_state(self, key: str) -> Tensor | None:
        parts = [self.state.get(p, {}).get(key) for p in self._params]  # .get: no empty entries made
        return None if parts[0] is None else torch.cat([t.reshape(-1) for t in parts]).unsqueeze(0)

    def _load(self) -> discrete.StepState:
        first = self.state.get(self._params[0], {})
        return discrete.StepState(momentum=self._flat_state("momentum_buffer"), v=self._flat_state("eigenvector"),
                                  k=first.get("step", 0))

    def _store(self, state: discrete.StepState) -> None:
        sizes = [p.numel() for p in self._params]
        for key, flat in (("momentum_buffer", state.momentum), ("eigenvector", state.v)):
            if flat is not None:
                for p, t in zip(self._params, flat[0].split(sizes)):
                    self.state[p][key] = t.view_as(p).clone()
        for p in self._params:
            self.state[p]["step"] = state.k

    def current_method(self) -> Method:
        """The method with the group's current hyper-parameters (after a scheduler or ``load_state_dict``)."""
        group = self.param_groups[0]
        return dataclasses.replace(self.method, **{f: group[f] for f in self._fields})

    def _step_method(self, k: int) -> Method:
        r"""The method of step ``k``: the group's, with the rate a torch scheduler set as :math:`\eta_k`.

        A :math:`\rho` schedule then reads that rate against the base rate :math:`\eta` — the group's
        ``initial_lr`` (which torch's schedulers set), else its ``lr`` — as ``ss.run`` with the matching
        :mod:`sde_sam.schedules` shape does: ``follow_lr(ρ)`` gives :math:`\rho_k=\rho\,\eta_k/\eta`, a shape
        runs on the clock :math:`k\eta`. (Rebuilt from ``lr = η_k`` alone, :math:`\rho` would not follow.)
        """
        group = self.param_groups[0]
        method = self.current_method()
        if method.lr_schedule is not None:
            if "initial_lr" in group:
                raise ValueError(f"the learning rate has an sde_sam schedule (lr_schedule="
                                 f"{method.lr_schedule.describe()}) and a torch lr_scheduler changes it too "
                                 f"(group['initial_lr']={group['initial_lr']!r}); use one of them")
            return method  # its own schedules: discrete._advance takes method.at(k)
        if getattr(method, "rho_schedule", None) is None or method.rho is None:
            return method
        base = dataclasses.replace(method, lr=group.get("initial_lr", group["lr"]))
        sched = method.rho_schedule
        rho_k = (base.rho * group["lr"] / base.lr if isinstance(sched, schedules.FollowLR)
                 else base.rho_at(k))  # rho * eta_k / eta in the order of Method.rho_at
        return dataclasses.replace(method, rho=rho_k, rho_schedule=None)

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not groups or any(f not in groups[0] for f in self._fields):
            have = sorted(k for k in (groups[0] if groups else {}) if k != "params")
            raise ValueError(f"`state_dict` is not of a {self.method.name} optimizer: its group needs the keys "
                             f"{self._fields}, got {have}")
        super().load_state_dict(state_dict)

    # -- the step ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure, *, full_closure=None, batch_size: int | None = None) -> Tensor:
        r"""One step of the method on the current mini-batch: :func:`sde_sam.step` at the flat parameters.

        Args:
            closure: ``closure()`` returns the loss of the current mini-batch at the current parameters (no
                ``backward()``); with ``micro_batch`` set, ``closure(s)`` the loss of the micro-batch ``batch[s]``.
            full_closure: ``full_closure()`` returns the full-batch loss (DNSAM; Eigen-SAM's first step without
                ``v0``).
            batch_size: The mini-batch size :math:`B` (required with ``micro_batch``, which must divide it).

        Returns:
            The detached loss at the unperturbed point (m-SAM: the mean of the micro-batch losses).
        """
        method = self._step_method(self._load().k)
        if not callable(closure):
            raise TypeError(f"`closure` must be callable (returning the mini-batch loss), got {type(closure).__name__}")
        if full_closure is not None and not callable(full_closure):
            raise TypeError(f"`full_closure` must be callable (returning the full-batch loss), "
                            f"got {type(full_closure).__name__}")
        m = getattr(method, "micro_batch", None)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"`batch_size` must be a positive int, got batch_size={batch_size!r}")
        if m is not None and batch_size is None:
            raise ValueError(f"`micro_batch` (m-SAM) needs the mini-batch size: pass step(closure, batch_size=B), "
                             f"with closure(s) the loss of batch[s], got batch_size=None (micro_batch={m})")
        if m is not None and batch_size % m:
            raise ValueError(f"`micro_batch` must divide the batch size B={batch_size} (one perturbation per "
                             f"micro-batch of size m), got micro_batch={m}")
        B = 1 if batch_size is None else batch_size
        problem = self._problem(closure, full_closure, B)
        x = self._x()
        state = self._load()
        try:
            if method.uses_eigenvector and state.v is None:  # before the first step (MATH §2), as ss.run
                state = dataclasses.replace(state, v=discrete.initial_state(problem, method, x, seed=self.seed).v)
            # discrete._advance is ss.step's body after its checks (which ask for a FiniteSum for m-SAM).
            eps = method.eps if method.eps is not None else problem.default_eps()
            x_next, state = discrete._advance(problem, method, x, _batch_draw(B), state, eps)
        except BaseException:
            problem.write(x[0])  # a failed step leaves the parameters where they were
            raise
        problem.write(x_next[0])
        self._store(state)
        losses = problem.first_losses
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def _named(method_cls: type[Method]) -> type[Optimizer]:
    """``ss.optim.<Name>(params, <the method's arguments>, *, v0=None, seed=None)``, generated from the method."""
    sig = inspect.signature(method_cls)

    def __init__(self, params, *args, v0=None, seed=None, **hyper):
        # The method's own signature and checks: a misspelt keyword is the method's TypeError.
        Optimizer.__init__(self, params, method_cls(*args, **hyper), v0=v0, seed=seed)

    extra = [inspect.Parameter("v0", inspect.Parameter.KEYWORD_ONLY, default=None),
             inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=None)]
    params = [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD), *sig.parameters.values()]
    __init__.__signature__ = inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                                                *params, *extra])
    doc = (f"``sde_sam.{method_cls.__name__}`` as a ``torch.optim`` optimizer: ``{method_cls.__name__}(params, ...)`` "
           f"takes the method's arguments (below) and :class:`Optimizer`'s ``v0``/``seed``; the closure protocol is in "
           f"the module docstring.\n\n" + (method_cls.__doc__ or ""))
    return type(method_cls.__name__, (Optimizer,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


SGD, USAM, SAM, DNSAM, UnifiedSAM, EigenSAM, TwoStepUSAM, HessianUSAM, ASAM = (
    _named(METHODS[n]) for n in ("sgd", "usam", "sam", "dnsam", "unifiedsam", "eigensam", "twostepusam",
                                 "hessianusam", "asam"))

__all__ = ["Optimizer", "SGD", "USAM", "SAM", "DNSAM", "UnifiedSAM", "EigenSAM", "TwoStepUSAM", "HessianUSAM",
           "ASAM"]
