r"""The top of the Hessian spectrum, per path, from Hessian-vector products only (MATH §6).

Every path ``p`` has its own Hessian :math:`H_p` (the full-batch Hessian at its iterate). The solvers here
advance all paths together: one batched HVP per iteration, every reduction over ``dim=-1``, no loop over
paths. Two methods:

- ``"lanczos"`` (default): Lanczos with full reorthogonalisation; the algebraic top Ritz pair.
- ``"power"``: power iteration with a shift, so that it also returns the *algebraic* top eigenvalue at a
  saddle (plain power iteration returns the eigenvalue of largest magnitude, which is negative there).

Example:
    >>> H = torch.randn(4, 5, 5, dtype=torch.float64); H = H + H.mT
    >>> pair = top_eigenpair_hvp(lambda v: torch.einsum("nij,nj->ni", H, v), torch.randn(4, 5, dtype=torch.float64))
    >>> torch.allclose(pair.value, torch.linalg.eigvalsh(H)[:, -1])
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["Eigenpair", "top_eigenpair_hvp", "top_eigenpair", "alignment"]

BatchedHVP = Callable[[Tensor], Tensor]

# Restart vectors after a Lanczos breakdown come from a private generator with this fixed seed, so results
# are reproducible without touching the global RNG.
_RESTART_SEED = 0x5A3


@dataclass(frozen=True)
class Eigenpair:
    r"""Per-path top eigenpair.

    Attributes:
        value: Algebraic top eigenvalue estimate (top Ritz value for Lanczos), ``(n,)``.
        vector: Unit eigenvector estimate, ``(n, d)`` (sign arbitrary).
        rayleigh: Rayleigh quotient :math:`v^\top H v` of ``vector``, ``(n,)``: an independent check.

    Unpacks as ``value, vector = pair``.
    """

    value: Tensor
    vector: Tensor
    rayleigh: Tensor

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.value, self.vector))


def _default_eps(dtype: torch.dtype) -> float:
    # The toolkit's norm guard (MATH §2): 1e-12 in float64, 1e-7 otherwise.
    return 1e-12 if dtype == torch.float64 else 1e-7


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1)


def _orthogonalise(w: Tensor, Q: Tensor) -> Tensor:
    """Remove from ``w: (n, d)`` its components along the rows of ``Q: (n, k, d)``; twice ("twice is enough")."""
    for _ in range(2):
        w = w - torch.einsum("nk,nkd->nd", torch.einsum("nkd,nd->nk", Q, w), Q)
    return w


def _restart(gen: torch.Generator, like: Tensor, Q: Tensor | None) -> tuple[Tensor, Tensor]:
    """A pseudo-random unit vector per path, orthogonal to ``Q``; and a mask of paths where none was found."""
    r = torch.randn(like.shape, generator=gen, dtype=like.dtype, device=like.device)
    r = r / r.norm(dim=-1, keepdim=True)
    if Q is not None:
        r = _orthogonalise(r, Q)
    norm = r.norm(dim=-1, keepdim=True)
    # A remainder at rounding level means span(Q) is (numerically) the whole space.
    found = norm > torch.finfo(like.dtype).eps ** 0.5
    return torch.where(found, r / torch.where(found, norm, 1), 0), ~found.squeeze(-1)


def _apply(hvp: BatchedHVP, v: Tensor) -> Tensor:
    w = hvp(v)
    if not isinstance(w, Tensor) or w.shape != v.shape:
        shape = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(f"`hvp` must map (n, d) to (n, d), got {tuple(v.shape)} -> {shape}")
    return w


def _start(v0: Tensor, gen: torch.Generator) -> Tensor:
    """Normalise the start; a zero row is replaced by a pseudo-random unit vector."""
    norm = v0.norm(dim=-1, keepdim=True)
    zero = norm == 0
    v = v0 / torch.where(zero, 1, norm)
    # Drawn for every path and used where needed: asking the host whether any row is zero would synchronise.
    return torch.where(zero, _restart(gen, v0, None)[0], v)


def _lanczos(hvp: BatchedHVP, v0: Tensor, iters: int, eps: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""Batched Lanczos with full reorthogonalisation; returns the top Ritz pair ``(n,), (n, d)``.

    Breakdown (:math:`\beta_j\le\epsilon\,\max_i\|Hq_i\|`: the Krylov space is invariant) is handled per path
    by setting :math:`\beta_j=0` and continuing from a fresh vector orthogonal to the basis. The tridiagonal
    matrix is then block diagonal and still equals :math:`Q^\top HQ`, so no spurious Ritz value appears. If
    no fresh direction exists (the basis spans the space), the slot is left empty: its basis vector is 0 and
    its diagonal entry is set below every Gershgorin bound, so it is never the top.
    """
    n, d = v0.shape
    m = min(iters, d)  # at most d orthonormal directions exist
    Q = v0.new_zeros(n, m, d)
    alphas = v0.new_zeros(n, m)
    betas = v0.new_zeros(n, m - 1)
    scale = v0.new_zeros(n)
    q = _start(v0, gen)
    for j in range(m):
        Q[:, j] = q
        w = _apply(hvp, q)
        scale = torch.maximum(scale, w.norm(dim=-1))
        alphas[:, j] = _dot(q, w)
        if j == m - 1:
            break
        w = _orthogonalise(w, Q[:, : j + 1])  # also removes alpha_j q_j and beta_{j-1} q_{j-1}
        beta = w.norm(dim=-1)
        broken = beta <= eps * scale
        betas[:, j] = torch.where(broken, 0, beta)
        q = w / torch.where(broken, 1, beta).unsqueeze(-1)
        # A restart vector for every path, used where the path broke down (no host synchronisation).
        fresh, _ = _restart(gen, q, Q[:, : j + 1])
        q = torch.where(broken.unsqueeze(-1), fresh, q)
    empty = Q.norm(dim=-1) < 0.5  # slots left empty after an exhausted restart
    # Gershgorin: every eigenvalue of T is >= -(sum|alpha| + 2 sum|beta|), so -bound is never the top.
    bound = 2 * (alphas.abs().sum(dim=-1) + 2 * betas.abs().sum(dim=-1)) + 1
    diag = torch.where(empty, -bound.unsqueeze(-1), alphas)
    T = torch.diag_embed(diag) + torch.diag_embed(betas, offset=1) + torch.diag_embed(betas, offset=-1)
    ritz_values, ritz_vectors = torch.linalg.eigh(T)  # ascending, batched over paths
    vector = torch.einsum("nm,nmd->nd", ritz_vectors[..., -1], Q)
    return ritz_values[:, -1], vector / vector.norm(dim=-1, keepdim=True).clamp_min(eps)


def _power_run(hvp: BatchedHVP, v: Tensor, iters: int, shift: Tensor, eps: float) -> Tensor:
    r"""``iters`` steps of :math:`v\leftarrow(H-sI)v/\|(H-sI)v\|`; a step with a (relatively) zero image keeps ``v``."""
    scale = v.new_zeros(v.shape[0])
    for _ in range(iters):
        w = _apply(hvp, v) - shift.unsqueeze(-1) * v
        norm = w.norm(dim=-1)
        scale = torch.maximum(scale, norm)
        ok = (norm > eps * scale).unsqueeze(-1)
        v = torch.where(ok, w / torch.where(ok, norm.unsqueeze(-1), 1), v)
    return v


def _power(hvp: BatchedHVP, v0: Tensor, iters: int, eps: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""Shifted power iteration for the algebraic top eigenpair: ``(rayleigh (n,), vector (n, d))``.

    A first run of ``iters`` steps estimates the magnitude-largest eigenvalue :math:`\mu` (Rayleigh
    quotient). Where :math:`\mu\ge0` it is the algebraic top and that run's vector is kept. Where
    :math:`\mu<0`, a second run of ``iters`` steps on :math:`H-\mu I` (spectrum shifted into
    :math:`[0,\lambda_1-\mu]`, whose magnitude-largest eigenvalue is :math:`\lambda_1-\mu`) restarts from
    ``v0`` (the first run's vector has lost its :math:`v_1` component), and of the two vectors the one with
    the larger Rayleigh quotient is kept: every Rayleigh quotient is :math:`\le\lambda_1`, and a warm start
    that already is the top eigenvector (negative, but not the magnitude-largest) must not be lost.
    ``2 * iters + 2`` HVPs (the shifted run is done for every path, so that no host synchronisation is needed).
    """
    start = _start(v0, gen)
    v = _power_run(hvp, start, iters, v0.new_zeros(v0.shape[0]), eps)
    mu = _dot(v, _apply(hvp, v))
    negative = mu < 0
    # The shifted run for every path (a path with mu >= 0 keeps its first vector): no host synchronisation.
    shifted = _power_run(hvp, start, iters, torch.where(negative, mu, 0), eps)
    mu_shifted = _dot(shifted, _apply(hvp, shifted))
    better = negative & (mu_shifted > mu)
    v = torch.where(better.unsqueeze(-1), shifted, v)
    mu = torch.where(better, mu_shifted, mu)
    return mu, v


def top_eigenpair_hvp(hvp: BatchedHVP, v0: Tensor, *, method: str = "lanczos", iters: int = 20,
                      eps: float | None = None) -> Eigenpair:
    r"""Algebraic top eigenpair :math:`(\lambda_1, v_1)` of each path's Hessian, from batched HVPs.

    Args:
        hvp: ``v: (n, d) -> (n, d)``, row ``p`` is :math:`H_p v_p` (symmetric :math:`H_p`).
        v0: Start vectors ``(n, d)`` (a warm start: the previous eigenvector); a zero row is replaced by a
            pseudo-random vector.
        method: ``"lanczos"`` (``min(iters, d)`` HVPs, exact once ``iters >= d``) or ``"power"``
            (``2 * iters + 2`` HVPs: a plain run and one shifted for spectra dominated by a negative
            eigenvalue; power iteration cannot leave a start that is exactly an eigenvector). Neither asks
            the host anything inside its iterations (GPU-friendly).
        iters: Iterations (Krylov dimension for Lanczos, whose basis takes ``n * min(iters, d) * d``
            numbers of memory).
        eps: Relative breakdown / norm-guard threshold; default ``1e-12`` in float64, ``1e-7`` otherwise.

    Returns:
        :class:`Eigenpair` with ``value (n,)``, unit ``vector (n, d)`` and ``rayleigh (n,)`` (one extra
        HVP for Lanczos; for power iteration ``value`` is the Rayleigh quotient).
    """
    if not isinstance(v0, Tensor) or v0.ndim != 2 or not v0.dtype.is_floating_point:
        raise ValueError(f"`v0` must be a floating tensor of shape (n_paths, d), got {getattr(v0, 'shape', v0)!r}")
    if not bool(torch.isfinite(v0).all()):
        raise ValueError("`v0` must be finite, got a tensor with NaN or inf entries")
    return _top_eigenpair_hvp(hvp, v0, method=method, iters=iters, eps=eps)


def _top_eigenpair_hvp(hvp: BatchedHVP, v0: Tensor, *, method: str, iters: int, eps: float | None) -> Eigenpair:
    """:func:`top_eigenpair_hvp` after the checks that need the host (``v0`` finite): no synchronisation here."""
    if method not in ("lanczos", "power"):
        raise ValueError(f"`method` must be 'lanczos' or 'power', got method={method!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"`iters` must be an integer >= 1, got iters={iters!r}")
    if eps is not None and not eps > 0:
        raise ValueError(f"`eps` must be > 0 or None, got eps={eps!r}")
    eps = _default_eps(v0.dtype) if eps is None else float(eps)
    gen = torch.Generator(device=v0.device).manual_seed(_RESTART_SEED)
    if method == "lanczos":
        value, vector = _lanczos(hvp, v0, iters, eps, gen)
        rayleigh = _dot(vector, _apply(hvp, vector))
    else:
        value, vector = _power(hvp, v0, iters, eps, gen)
        rayleigh = value
    return Eigenpair(value=value, vector=vector, rayleigh=rayleigh)


def _match_problem(problem, x: Tensor) -> None:
    """``x`` must have the problem's dtype, device and dimension (when the problem declares them): never a
    silent cast, and a message naming ``x`` instead of torch's raw dtype error from inside an HVP."""
    dtype, device, d = (getattr(problem, name, None) for name in ("dtype", "device", "d"))
    if isinstance(dtype, torch.dtype) and x.dtype != dtype:
        raise ValueError(f"`x` has dtype {x.dtype} but the problem uses {dtype}; convert one of them explicitly, "
                         f"e.g. x.to({dtype})")
    if device is not None and x.device.type != torch.device(device).type:
        raise ValueError(f"`x` is on device {x.device} but the problem is on {device}")
    if isinstance(d, int) and x.shape[-1] != d:
        raise ValueError(f"`x` must have shape (d,) or (n_paths, d) with d={d}, got {tuple(x.shape)}")


def top_eigenpair(problem, x: Tensor, *, method: str = "lanczos", iters: int = 20, v0: Tensor | None = None,
                  seed: int = 0) -> Eigenpair:
    r"""Top eigenpair of the full-batch Hessian :math:`\nabla^2 f(x_p)` at every path's point.

    Uses ``problem.hvp(x, v)``; see :func:`top_eigenpair_hvp` for the methods.

    Args:
        problem: Anything with ``hvp(x: (n, d), v: (n, d)) -> (n, d)``.
        x: Points ``(n, d)``, or ``(d,)`` for one point (then the results drop the path axis), in the
            problem's dtype and on its device (a mismatch is a ``ValueError``, never a silent cast).
        method: As in :func:`top_eigenpair_hvp`.
        iters: As in :func:`top_eigenpair_hvp`.
        v0: Warm start of the shape of ``x``; default a Gaussian start drawn from
            ``torch.Generator(device=x.device).manual_seed(seed)``, in ``x``'s dtype and device.
        seed: Seed of that start.

    Returns:
        :class:`Eigenpair` (``value, vector = top_eigenpair(problem, x)`` also works).
    """
    if not isinstance(x, Tensor) or x.ndim not in (1, 2) or not x.dtype.is_floating_point:
        raise ValueError(f"`x` must be a floating tensor of shape (d,) or (n_paths, d), got {getattr(x, 'shape', x)!r}")
    _match_problem(problem, x)
    single = x.ndim == 1
    xb = x.unsqueeze(0) if single else x
    user_start = v0 is not None
    if v0 is None:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        v0 = torch.randn(xb.shape, generator=gen, dtype=x.dtype, device=x.device)
    elif not isinstance(v0, Tensor) or v0.shape != x.shape or v0.dtype != x.dtype or v0.device != x.device:
        raise ValueError(
            f"`v0` must match `x` in shape, dtype and device ({tuple(x.shape)}, {x.dtype}, {x.device}), "
            f"got {getattr(v0, 'shape', v0)!r}")
    else:
        v0 = v0.unsqueeze(0) if single else v0
    if user_start:  # a generated start is finite by construction: checking it would synchronise the host
        pair = top_eigenpair_hvp(lambda v: problem.hvp(xb, v), v0, method=method, iters=iters)
    else:
        pair = _top_eigenpair_hvp(lambda v: problem.hvp(xb, v), v0, method=method, iters=iters, eps=None)
    if single:
        return Eigenpair(pair.value[0], pair.vector[0], pair.rayleigh[0])
    return pair


def alignment(a: Tensor, v: Tensor, *, eps: float | None = None) -> Tensor:
    r"""Per-path :math:`|\langle a,v\rangle|/(\|a\|\,\|v\|)` over the last axis, norms guarded by ``eps``.

    With a unit eigenvector ``v`` this is MATH §6's alignment :math:`|\langle a,v_1\rangle|/\|a\|`. A zero
    ``a`` gives 0, not NaN.

    Args:
        a: ``(..., d)``, broadcast with ``v``.
        v: ``(..., d)``, broadcast with ``a``.
        eps: Norm floor; default ``1e-12`` in float64, ``1e-7`` otherwise.

    Returns:
        ``(...)`` in ``[0, 1]``.

    Raises:
        ValueError: ``a`` and ``v`` differ in dtype, device or last dimension.
    """
    if not isinstance(a, Tensor) or not isinstance(v, Tensor):
        raise TypeError(f"`a` and `v` must be tensors, got {type(a).__name__} and {type(v).__name__}")
    if not a.dtype.is_floating_point or a.dtype != v.dtype:
        raise ValueError(f"`a` and `v` must be floating tensors of the same dtype, got {a.dtype} and {v.dtype}; "
                         f"convert one of them explicitly")
    if a.device != v.device:
        raise ValueError(f"`a` and `v` must be on the same device, got {a.device} and {v.device}")
    if a.shape[-1] != v.shape[-1]:
        raise ValueError(f"`a` and `v` must share the last dimension d, got {tuple(a.shape)} and {tuple(v.shape)}")
    eps = _default_eps(a.dtype) if eps is None else eps
    if not eps > 0:
        raise ValueError(f"`eps` must be > 0 or None, got eps={eps!r}")
    norms = a.norm(dim=-1).clamp_min(eps) * v.norm(dim=-1).clamp_min(eps)
    return (_dot(a, v).abs() / norms).clamp(max=1)
