r"""Closed forms of MATH §7 (and the quadratic moments of MATH §3.4): stability edges, the SAM 2-cycle,
saddle criteria, Eigen-SAM geometry, eigenvalue filters.

Every function is vectorised and backend-preserving: arguments may be python floats, numpy arrays (or
lists) or torch tensors, broadcast together. If any argument is a tensor the computation uses torch ops
(dtype and device of the first tensor) and returns a tensor; otherwise it uses numpy in float64 and returns
a python ``float``/``bool`` when every argument was a scalar, else a numpy array. Arguments are validated
once, here at the boundary, with a ``ValueError`` naming the argument, its (first offending) value and what
is allowed.

Notation: ``lr`` is :math:`\eta`, ``rho`` is :math:`\rho`, ``lam`` an eigenvalue :math:`\lambda` of the
Hessian, ``grad_norm`` the gradient norm :math:`\|g\|`.

Example:
    >>> from sde_sam import theory
    >>> theory.usam_edge(0.01, 0.1)
    40.0
"""
from __future__ import annotations

import contextlib
import functools
from numbers import Number
from typing import Any, Union

import numpy as np
import torch

ArrayLike = Union[float, np.ndarray, torch.Tensor]

__all__ = [
    "gd_edge", "usam_edge", "usam_lr_threshold", "usam_diverges", "sam_edge",
    "sam_cycle_amplitude", "sam_cycle_grad_norm", "sam_cycle_contraction", "sam_centre_drift_step",
    "usam_flow_contracts", "usam_discrete_converges", "sam_flow_contracts", "dnsam_diffusion_factor",
    "eigen_sam_alignment", "eigen_sam_perturbation_norm",
    "gd_filter", "heavy_ball_filter", "usam_heavy_ball_filter",
    "usam_sde_mean", "usam_discrete_mean", "usam_sde_expected_loss", "usam_discrete_expected_loss",
    "usam_sde_stationary_loss", "usam_discrete_stationary_loss",
]


# -- backend and validation helpers ------------------------------------------------------------------
def _backend(*args: Any) -> tuple[Any, list, str]:
    """Convert ``args`` to one backend: ``(xp, arrays, kind)`` with kind in {"torch", "numpy", "scalar"}."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if tensors:
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        device = tensors[0].device
        return torch, [torch.as_tensor(a, dtype=dtype, device=device) for a in args], "torch"
    scalar = all(isinstance(a, (Number, np.generic)) for a in args)
    return np, [np.asarray(a, dtype=np.float64) for a in args], "scalar" if scalar else "numpy"


def _out(value: Any, kind: str) -> Any:
    """Return ``value`` as the kind the caller passed in (see the module docstring)."""
    if kind == "torch":
        return value
    value = np.asarray(value)
    if kind == "scalar" and value.ndim == 0:
        return value.item()
    return value[()]


def _quiet(xp: Any):
    """Silence numpy's divide/invalid warnings where inf and nan are handled explicitly."""
    return np.errstate(divide="ignore", invalid="ignore") if xp is np else contextlib.nullcontext()


def _fmt(v: Any) -> str:
    if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 0:
        v = v.item()
    return f"{v:g}" if isinstance(v, float) else str(v)


def _first_bad(xp: Any, value: Any, ok: Any) -> str:
    """The first entry of ``value`` (broadcast to ``ok``) where ``ok`` is False, formatted."""
    bad = xp.broadcast_to(value, ok.shape)[~ok].reshape(-1)
    return _fmt(bad[0] if bad.shape[0] else value)


def _check(xp: Any, ok: Any, name: str, value: Any, allowed: str, **context: Any) -> None:
    """Raise ``ValueError("`name` must be <allowed>, got name=<value> [(with k=v)]")`` unless ``ok`` holds.

    ``ok`` is a python bool (then ``value`` is shown as is) or a boolean array, and then the first
    offending entry of ``value`` and of each ``context`` array is shown.
    """
    if isinstance(ok, bool):
        if ok:
            return
        raise ValueError(f"`{name}` must be {allowed}, got {name}={_fmt(value)}")
    if bool(xp.all(ok)):
        return
    ctx = ", ".join(f"{k}={_first_bad(xp, v, ok)}" for k, v in context.items())
    raise ValueError(f"`{name}` must be {allowed}, got {name}={_first_bad(xp, value, ok)}" + (f" (with {ctx})" if ctx else ""))


def _lr(xp, lr):
    _check(xp, xp.isfinite(lr) & (lr > 0), "lr", lr, "a finite number > 0")


def _rho(xp, rho):
    _check(xp, xp.isfinite(rho) & (rho >= 0), "rho", rho, "a finite number >= 0")


def _finite(xp, name, value):
    _check(xp, xp.isfinite(value), name, value, "finite")


def _nonneg(xp, name, value, *, finite=True):
    ok = value >= 0
    _check(xp, (xp.isfinite(value) & ok) if finite else ok, name, value, "a finite number >= 0" if finite else ">= 0")


def _below_gd_edge(xp, lr, lam):
    # The SAM 2-cycle of Bartlett, Long & Bousquet exists for 0 < lr*lam < 2 only.
    _check(xp, xp.isfinite(lam) & (lam > 0), "lam", lam, "a finite number > 0")
    _check(xp, lr * lam < 2, "lam", lam, "< 2/lr (the SAM 2-cycle exists only below the GD edge)", lr=lr)


# -- stability edges ---------------------------------------------------------------------------------
def gd_edge(lr: ArrayLike) -> ArrayLike:
    r"""Edge of stability of gradient descent: :math:`\lambda = 2/\eta`.

    Source: classical (GD on :math:`\frac\lambda2x^2` is stable iff :math:`\eta\lambda\le2`).
    """
    xp, (lr,), kind = _backend(lr)
    _lr(xp, lr)
    return _out(2 / lr, kind)


def usam_edge(lr: ArrayLike, rho: ArrayLike) -> ArrayLike:
    r"""Edge of stability of USAM: the :math:`\lambda^\star>0` solving :math:`\eta\lambda(1+\rho\lambda)=2`.

    .. math:: \lambda^\star = \frac{\sqrt{1+8\rho/\eta}-1}{2\rho} = \frac{4}{\eta\,(1+\sqrt{1+8\rho/\eta})}

    The second (algebraically equal) form is evaluated: it has no cancellation for small :math:`\rho` and
    gives the GD edge :math:`2/\eta` at :math:`\rho=0` exactly.
    Source: Agarwala & Dauphin (2023); Dai, Ahn & Sra (2023).
    """
    xp, (lr, rho), kind = _backend(lr, rho)
    _lr(xp, lr)
    _rho(xp, rho)
    return _out(4 / (lr * (1 + xp.sqrt(1 + 8 * rho / lr))), kind)


def usam_lr_threshold(rho: ArrayLike, L: ArrayLike) -> ArrayLike:
    r"""Largest stable learning rate of USAM on :math:`\frac L2x^2`: :math:`2/(L+\rho L^2)`.

    USAM iterates :math:`x\leftarrow(1-\eta a)x` with :math:`a=L(1+\rho L)`. For :math:`a>0` the threshold
    is positive; for :math:`a=0` it is ``inf`` (nothing moves); for :math:`a<0` it is negative (every
    :math:`\eta>0` diverges). Source: Agarwala & Dauphin (2023); Dai, Ahn & Sra (2023).
    """
    xp, (rho, L), kind = _backend(rho, L)
    _rho(xp, rho)
    _finite(xp, "L", L)
    with _quiet(xp):
        return _out(2 / (L + rho * L**2), kind)


def usam_diverges(lr: ArrayLike, rho: ArrayLike, L: ArrayLike) -> ArrayLike:
    r"""Whether USAM on :math:`\frac L2x^2` diverges from any :math:`x_0\ne0`: :math:`\eta > 2/(L+\rho L^2)`.

    Equivalently :math:`|1-\eta L(1+\rho L)|>1`; valid for any real :math:`L` (see
    :func:`usam_lr_threshold`). At the threshold itself the iterate 2-cycles and is not counted as diverging.
    Source: Agarwala & Dauphin (2023); Dai, Ahn & Sra (2023).
    """
    xp, (lr, rho, L), kind = _backend(lr, rho, L)
    _lr(xp, lr)
    # Compare against the threshold itself so that the two functions agree bit for bit.
    return _out(lr > usam_lr_threshold(rho, L), kind)


def sam_edge(lr: ArrayLike, rho: ArrayLike, grad_norm: ArrayLike) -> ArrayLike:
    r"""Edge of stability of SAM at stochastic gradient norm :math:`\|g\|`: the :math:`\lambda>0` solving
    :math:`\eta\lambda(1+\rho\lambda/\|g\|)=2`.

    .. math:: \lambda = \frac{\|g\|}{2\rho}\Big(\sqrt{1+\frac{8\rho}{\eta\|g\|}}-1\Big)
              = \frac{4}{\eta\,\big(1+\sqrt{1+8\rho/(\eta\|g\|)}\big)} < \frac2\eta

    The second form is evaluated. Limits: :math:`2/\eta` as :math:`\rho\to0` or :math:`\|g\|\to\infty`
    (``grad_norm=inf`` is allowed); as :math:`\|g\|\to0` with :math:`\rho>0` the edge behaves like
    :math:`\sqrt{2\|g\|/(\rho\eta)}\to0`, so ``grad_norm=0`` gives ``0``. At :math:`\rho=0` SAM is GD and
    the edge is :math:`2/\eta` for every :math:`\|g\|`, including 0 (where the two limits disagree).
    Source: Long & Bartlett, *SAM and the Edge of Stability* (2024).
    """
    xp, (lr, rho, grad_norm), kind = _backend(lr, rho, grad_norm)
    _lr(xp, lr)
    _rho(xp, rho)
    _nonneg(xp, "grad_norm", grad_norm, finite=False)
    with _quiet(xp):
        edge = 4 / (lr * (1 + xp.sqrt(1 + 8 * rho / (lr * grad_norm))))
        return _out(xp.where(rho == 0, 2 / lr, edge), kind)


# -- the SAM 2-cycle on a quadratic ------------------------------------------------------------------
def sam_cycle_amplitude(lr: ArrayLike, rho: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Amplitude :math:`a^\star` of full-batch SAM's 2-cycle :math:`\pm a^\star v_1` on a quadratic.

    .. math:: a^\star = \frac{\eta\rho\lambda_1}{2-\eta\lambda_1},\qquad 0<\eta\lambda_1<2

    (solve :math:`a-\eta\lambda_1(a+\rho)=-a`). Source: Bartlett, Long & Bousquet (2023).

    Raises:
        ValueError: if ``lam <= 0`` or ``lr * lam >= 2``.
    """
    xp, (lr, rho, lam), kind = _backend(lr, rho, lam)
    _lr(xp, lr)
    _rho(xp, rho)
    _below_gd_edge(xp, lr, lam)
    return _out(lr * rho * lam / (2 - lr * lam), kind)


def sam_cycle_grad_norm(lr: ArrayLike, rho: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Gradient norm on SAM's 2-cycle: :math:`\lambda_1 a^\star=\frac{\eta\rho\lambda_1^2}{2-\eta\lambda_1}`.

    At this :math:`\|g\|` the SAM edge equals :math:`\lambda_1`: the cycle sits exactly on the edge.
    Source: Bartlett, Long & Bousquet (2023); Long & Bartlett (2024).
    """
    xp, (lr, rho, lam), kind = _backend(lr, rho, lam)
    _lr(xp, lr)
    _rho(xp, rho)
    _below_gd_edge(xp, lr, lam)
    return _out(lr * rho * lam**2 / (2 - lr * lam), kind)


def sam_cycle_contraction(lr: ArrayLike, rho: ArrayLike, lams: ArrayLike) -> ArrayLike:
    r"""Per-direction contraction factors of deviations from SAM's 2-cycle, per step.

    .. math:: |1-\eta\lambda_1|\ \ (i=1),\qquad |1-\eta\lambda_i-(\lambda_i/\lambda_1)^2(2-\eta\lambda_1)|\ \ (i\ge2)

    The factors do not depend on :math:`\rho>0` (the cycle's amplitude scales with :math:`\rho`).
    Source: Bartlett, Long & Bousquet (2023).

    Args:
        lr, rho: Step size and radius.
        lams: Eigenvalues ``(..., d)`` along the last axis, with ``lams[..., 0]`` the algebraic top
            :math:`\lambda_1` (``> 0`` and ``< 2/lr``).

    Returns:
        ``(..., d)``: factor ``< 1`` means the direction is attracted to the cycle.
    """
    xp, (lr, rho, lams), kind = _backend(lr, rho, lams)
    _lr(xp, lr)
    _rho(xp, rho)
    _check(xp, lams.ndim >= 1 and lams.shape[-1] >= 1, "lams", lams, "an array (..., d) with d >= 1")
    _finite(xp, "lams", lams)
    lam1 = lams[..., :1]
    _below_gd_edge(xp, lr, lam1)
    _check(xp, lams <= lam1, "lams", lams, "ordered so that lams[..., 0] is the largest", lam1=lam1)
    rest = xp.abs(1 - lr * lams - (lams / lam1) ** 2 * (2 - lr * lam1))
    first = xp.abs(1 - lr * lam1) + 0 * rest[..., :1]
    cat = torch.cat if xp is torch else np.concatenate
    return _out(cat([first, rest[..., 1:]], -1), kind)


def sam_centre_drift_step(lr: ArrayLike, rho: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Per-step descent of :math:`\lambda_1` by the centre of SAM's 2-cycle, off quadratics.

    .. math:: \frac{2\eta\rho^2}{(2-\eta\lambda_1)^2}

    Source: [derived] (MATH §7), in the spirit of Bartlett, Long & Bousquet (2023).
    """
    xp, (lr, rho, lam), kind = _backend(lr, rho, lam)
    _lr(xp, lr)
    _rho(xp, rho)
    _below_gd_edge(xp, lr, lam)
    return _out(2 * lr * rho**2 / (2 - lr * lam) ** 2, kind)


# -- saddles (f = ½ xᵀHx with some λ < 0) ------------------------------------------------------------
def usam_flow_contracts(rho: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Whether the USAM flow :math:`\dot x=-H(I+\rho H)x` contracts eigendirection :math:`\lambda`.

    True iff :math:`\lambda(1+\rho\lambda)>0`: always for :math:`\lambda>0`; for a negative direction iff
    :math:`\rho|\lambda|>1` (USAM is attracted to the saddle); never for :math:`\lambda=0`.
    Source: Compagnoni et al. (2023).
    """
    xp, (rho, lam), kind = _backend(rho, lam)
    _rho(xp, rho)
    _finite(xp, "lam", lam)
    return _out(lam * (1 + rho * lam) > 0, kind)


def usam_discrete_converges(lr: ArrayLike, rho: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Whether discrete full-batch USAM stays bounded along eigendirection :math:`\lambda`:
    :math:`0\le\lambda(1+\rho\lambda)\le2/\eta`.

    The closed interval follows MATH §7 (at either end the iterate is constant or 2-cycles, bounded);
    it is the complement of :func:`usam_diverges` up to rounding at the ends.
    Source: Compagnoni et al. (2023); Bolte, Le & Pauwels (2025).
    """
    xp, (lr, rho, lam), kind = _backend(lr, rho, lam)
    _lr(xp, lr)
    _rho(xp, rho)
    _finite(xp, "lam", lam)
    a = lam * (1 + rho * lam)
    return _out((a >= 0) & (a <= 2 / lr), kind)


def sam_flow_contracts(rho: ArrayLike, lam: ArrayLike, grad_norm: ArrayLike) -> ArrayLike:
    r"""Whether the SAM/DNSAM flow :math:`\dot x=-(Hx+\rho H^2x/\|Hx\|)` contracts direction :math:`\lambda`.

    Along eigendirection :math:`i` the rate is :math:`\lambda_i(1+\rho\lambda_i/\|Hx\|)`: a negative
    direction contracts iff :math:`\|Hx\|<\rho|\lambda_i|`; a positive one always does; :math:`\lambda=0`
    never. ``grad_norm=0`` is the limit :math:`\|Hx\|\to0^+`.
    Source: Compagnoni et al. (2023).
    """
    xp, (rho, lam, grad_norm), kind = _backend(rho, lam, grad_norm)
    _rho(xp, rho)
    _finite(xp, "lam", lam)
    _nonneg(xp, "grad_norm", grad_norm, finite=False)
    return _out((lam > 0) | ((lam < 0) & (grad_norm < rho * xp.abs(lam))), kind)


def dnsam_diffusion_factor(rho: ArrayLike, lam: ArrayLike, grad_norm: ArrayLike) -> ArrayLike:
    r"""Eigenvalue of DNSAM's diffusion factor :math:`I+\rho H/\|\nabla f\|` along direction :math:`\lambda`.

    .. math:: 1+\frac{\rho\lambda}{\|\nabla f\|}\ =\ 1-\frac{\rho|\lambda|}{\|\nabla f\|}\quad(\lambda<0)

    It vanishes on :math:`\|\nabla f\|=\rho|\lambda|` for a negative direction: noise cannot push the
    iterate off a saddle there. Pass the *signed* eigenvalue. Source: Compagnoni et al. (2023).
    """
    xp, (rho, lam, grad_norm), kind = _backend(rho, lam, grad_norm)
    _rho(xp, rho)
    _finite(xp, "lam", lam)
    _check(xp, grad_norm > 0, "grad_norm", grad_norm, "> 0 (DNSAM divides by the full-batch gradient norm)")
    return _out(1 + rho * lam / grad_norm, kind)


# -- Eigen-SAM ---------------------------------------------------------------------------------------
def _alpha_c(xp, alpha, c):
    _check(xp, xp.isfinite(alpha) & (alpha >= 0), "alpha", alpha, "a finite number >= 0")
    _check(xp, (c >= -1) & (c <= 1), "c", c, "in [-1, 1] (a cosine)")


def eigen_sam_alignment(alpha: ArrayLike, c: ArrayLike) -> ArrayLike:
    r"""Alignment :math:`|\cos(\varepsilon,v)|` of Eigen-SAM's perturbation with the top eigenvector.

    With :math:`\varepsilon=\rho(\hat g+\alpha\,s\,v_\perp)`, :math:`c=\langle\hat g,v\rangle`, :math:`s=\mathrm{sign}\,c`:

    .. math:: |\cos(\varepsilon,v)| = \frac{|c|+\alpha(1-c^2)}{\sqrt{1+\alpha^2(1-c^2)}}

    At :math:`c=0` exactly this is the limit :math:`c\to0^\pm`; the method itself uses
    :math:`\mathrm{sign}(0)=0` there, i.e. plain SAM, with alignment 0. Source: Luo et al. (2024).
    """
    xp, (alpha, c), kind = _backend(alpha, c)
    _alpha_c(xp, alpha, c)
    s2 = 1 - c**2
    return _out((xp.abs(c) + alpha * s2) / xp.sqrt(1 + alpha**2 * s2), kind)


def eigen_sam_perturbation_norm(rho: ArrayLike, alpha: ArrayLike, c: ArrayLike) -> ArrayLike:
    r"""Norm of Eigen-SAM's (not renormalised) perturbation: :math:`\rho\sqrt{1+\alpha^2(1-c^2)}`.

    Source: Luo et al. (2024), official code (MATH §2).
    """
    xp, (rho, alpha, c), kind = _backend(rho, alpha, c)
    _rho(xp, rho)
    _alpha_c(xp, alpha, c)
    return _out(rho * xp.sqrt(1 + alpha**2 * (1 - c**2)), kind)


# -- eigenvalue filters at convergence ---------------------------------------------------------------
def _beta(xp, beta):
    _check(xp, (beta >= 0) & (beta < 1), "beta", beta, "in [0, 1)")


def gd_filter(lr: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Whether GD can converge to a point with Hessian eigenvalue :math:`\lambda`: :math:`0\le\lambda\le2/\eta`.

    Source: Bolte, Le & Pauwels (2025).
    """
    xp, (lr, lam), kind = _backend(lr, lam)
    _lr(xp, lr)
    _finite(xp, "lam", lam)
    return _out((lam >= 0) & (lam <= 2 / lr), kind)


def heavy_ball_filter(lr: ArrayLike, beta: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""Heavy ball with momentum :math:`\beta`: :math:`0\le\lambda\le2(1+\beta)/\eta`.

    Source: Bolte, Le & Pauwels (2025).
    """
    xp, (lr, beta, lam), kind = _backend(lr, beta, lam)
    _lr(xp, lr)
    _beta(xp, beta)
    _finite(xp, "lam", lam)
    return _out((lam >= 0) & (lam <= 2 * (1 + beta) / lr), kind)


def usam_heavy_ball_filter(lr: ArrayLike, rho: ArrayLike, beta: ArrayLike, lam: ArrayLike) -> ArrayLike:
    r"""USAM with heavy ball: :math:`0\le\lambda(1+\rho\lambda)\le2(1+\beta)/\eta`.

    Note the set also contains :math:`\lambda\le-1/\rho` (USAM can converge to saddles).
    Source: Bolte, Le & Pauwels (2025).
    """
    xp, (lr, rho, beta, lam), kind = _backend(lr, rho, beta, lam)
    _lr(xp, lr)
    _rho(xp, rho)
    _beta(xp, beta)
    _finite(xp, "lam", lam)
    a = lam * (1 + rho * lam)
    return _out((a >= 0) & (a <= 2 * (1 + beta) / lr), kind)




# -- quadratic moments (MATH §3.4): f = ½xᵀHx, additive noise Σ = σ²I -------------------------------
def _scalars(xp, **values) -> None:
    for name, v in values.items():
        _check(xp, v.ndim == 0, name, v.shape, "a scalar here (the spectrum carries the last axis)")


def _spectrum(xp, H, name: str):
    """``(eigenvalues (d,), eigenvectors (d, d) or None)`` of a symmetric ``(d, d)`` matrix or a diagonal ``(d,)``."""
    _check(xp, H.ndim in (1, 2) and (H.ndim == 1 or H.shape[0] == H.shape[1]), name, tuple(H.shape),
           "a diagonal (d,) or a square matrix (d, d)")
    _finite(xp, name, H)
    if H.ndim == 1:
        return H, None
    scale = max(float(xp.abs(H).max()), 1.0) if H.shape[0] else 1.0
    tol = 1e3 * (torch.finfo(H.dtype).eps if xp is torch else np.finfo(H.dtype).eps) * scale
    asym = float(xp.abs(H - H.T).max()) if H.shape[0] else 0.0
    if not asym <= tol:
        raise ValueError(f"`{name}` must be symmetric, got max|{name} - {name}^T|={asym:g} (tolerance {tol:g})")
    return xp.linalg.eigh(H)


def _state(xp, x0, d: int) -> None:
    _check(xp, x0.ndim >= 1 and x0.shape[-1] == d, "x0", tuple(x0.shape), f"an array (..., d) with d={d}")
    _finite(xp, "x0", x0)


def _time_axis(xp, name: str, t, batch_ndim: int, *, integer: bool = False):
    """Check times (or step counts) and reshape them to ``t.shape + (1,) * (batch_ndim + 1)`` for broadcasting."""
    _nonneg(xp, name, t)
    if integer:
        _check(xp, t == xp.round(t), name, t, "a non-negative integer (a step count)")
    return t.reshape(tuple(t.shape) + (1,) * (batch_ndim + 1))


def _moment_args(xp, lams, x0, lr, rho, sigma2) -> None:
    _lr(xp, lr)
    _rho(xp, rho)
    _nonneg(xp, "sigma2", sigma2)
    _scalars(xp, lr=lr, rho=rho, sigma2=sigma2)
    _check(xp, lams.ndim == 1, "lams", tuple(lams.shape), "a 1-D array of eigenvalues (d,)")
    _finite(xp, "lams", lams)
    if x0 is not None:
        _state(xp, x0, lams.shape[0])


def usam_sde_mean(H: ArrayLike, x0: ArrayLike, t: ArrayLike, rho: ArrayLike) -> ArrayLike:
    r"""Mean of the USAM SDE (an Ornstein–Uhlenbeck process) on :math:`f=\frac12x^\top Hx`.

    .. math:: \mathbb E X_t = e^{-H(I+\rho H)t}x_0

    evaluated through :math:`H=V\mathrm{diag}(\lambda)V^\top` (``eigh``), so :math:`H` may be any symmetric
    matrix. :math:`\rho=0` is the SGD SDE. Source: Compagnoni et al. (2023); MATH §3.4.

    Args:
        H: Symmetric Hessian ``(d, d)``, or its diagonal ``(d,)``.
        x0: Initial points ``(..., d)``.
        t: Times ``>= 0``, scalar or any shape ``T``.
        rho: Scalar radius.

    Returns:
        ``T + x0.shape``.
    """
    xp, (H, x0, t, rho), kind = _backend(H, x0, t, rho)
    _rho(xp, rho)
    _scalars(xp, rho=rho)
    lams, V = _spectrum(xp, H, "H")
    _state(xp, x0, lams.shape[0])
    t_ = _time_axis(xp, "t", t, x0.ndim - 1)
    y = x0 if V is None else x0 @ V  # coordinates in the eigenbasis
    out = xp.exp(-lams * (1 + rho * lams) * t_) * y
    return _out(out if V is None else out @ V.T, kind)


def usam_discrete_mean(H: ArrayLike, x0: ArrayLike, k: ArrayLike, lr: ArrayLike, rho: ArrayLike) -> ArrayLike:
    r"""Mean of discrete USAM with additive noise on :math:`f=\frac12x^\top Hx`.

    .. math:: \mathbb E x_k = \big(I-\eta H(I+\rho H)\big)^k x_0

    Args:
        H: Symmetric Hessian ``(d, d)``, or its diagonal ``(d,)``.
        x0: Initial points ``(..., d)``.
        k: Step counts (non-negative integers), scalar or any shape ``K``.
        lr, rho: Scalars.

    Returns:
        ``K + x0.shape``. Source: MATH §3.4.
    """
    xp, (H, x0, k, lr, rho), kind = _backend(H, x0, k, lr, rho)
    _lr(xp, lr)
    _rho(xp, rho)
    _scalars(xp, lr=lr, rho=rho)
    lams, V = _spectrum(xp, H, "H")
    _state(xp, x0, lams.shape[0])
    k_ = _time_axis(xp, "k", k, x0.ndim - 1, integer=True)
    y = x0 if V is None else x0 @ V
    out = (1 - lr * lams * (1 + rho * lams)) ** k_ * y
    return _out(out if V is None else out @ V.T, kind)


def usam_sde_expected_loss(lams: ArrayLike, x0: ArrayLike, t: ArrayLike, lr: ArrayLike, rho: ArrayLike,
                           sigma2: ArrayLike) -> ArrayLike:
    r"""Expected loss of the USAM SDE on :math:`f=\frac12\sum_i\lambda_ix_i^2` with :math:`\Sigma=\sigma^2I`.

    .. math:: \mathbb Ef(X_t)=\tfrac12\sum_i\lambda_ix_{0,i}^2e^{-2a_it}
              +\tfrac{\eta\sigma^2}4\sum_i(1+\rho\lambda_i)(1-e^{-2a_it}),\qquad a_i=\lambda_i(1+\rho\lambda_i)

    Valid for any real :math:`\lambda_i` (no stationarity needed). Source: MATH §3.4 (OU moments).

    Args:
        lams: Eigenvalues ``(d,)`` (the Hessian's diagonal in its eigenbasis; express ``x0`` there too).
        x0: Initial points ``(..., d)``.
        t: Times ``>= 0``, scalar or shape ``T``.
        lr, rho, sigma2: Scalars (:math:`\eta`, :math:`\rho`, :math:`\sigma^2`).

    Returns:
        ``T + x0.shape[:-1]``.
    """
    xp, (lams, x0, t, lr, rho, sigma2), kind = _backend(lams, x0, t, lr, rho, sigma2)
    _moment_args(xp, lams, x0, lr, rho, sigma2)
    t_ = _time_axis(xp, "t", t, x0.ndim - 1)
    a = lams * (1 + rho * lams)
    decay = xp.exp(-2 * a * t_)
    # -expm1 keeps 1 - e^{-2at} accurate for small a*t.
    terms = 0.5 * lams * x0**2 * decay - lr * sigma2 / 4 * (1 + rho * lams) * xp.expm1(-2 * a * t_)
    return _out(terms.sum(-1), kind)


def usam_discrete_expected_loss(lams: ArrayLike, x0: ArrayLike, k: ArrayLike, lr: ArrayLike, rho: ArrayLike,
                                sigma2: ArrayLike) -> ArrayLike:
    r"""Expected loss of discrete USAM on :math:`f=\frac12\sum_i\lambda_ix_i^2` with :math:`\Sigma=\sigma^2I`.

    .. math:: \mathbb Ef(x_k)=\tfrac12\sum_i\lambda_i\Big[(1-\eta a_i)^{2k}x_{0,i}^2
              +\eta^2\sigma^2(1+\rho\lambda_i)^2\frac{1-(1-\eta a_i)^{2k}}{1-(1-\eta a_i)^2}\Big]

    The geometric factor is taken as its limit :math:`k` where :math:`(1-\eta a_i)^2=1`
    (:math:`a_i=0` or :math:`\eta a_i=2`). :math:`\rho=0` is SGD. Source: MATH §3.4.

    Args:
        lams: Eigenvalues ``(d,)``.
        x0: Initial points ``(..., d)`` in the eigenbasis.
        k: Step counts (non-negative integers), scalar or shape ``K``.
        lr, rho, sigma2: Scalars.

    Returns:
        ``K + x0.shape[:-1]``.
    """
    xp, (lams, x0, k, lr, rho, sigma2), kind = _backend(lams, x0, k, lr, rho, sigma2)
    _moment_args(xp, lams, x0, lr, rho, sigma2)
    k_ = _time_axis(xp, "k", k, x0.ndim - 1, integer=True)
    a = lams * (1 + rho * lams)
    q_k = (1 - lr * a) ** (2 * k_)
    one_minus_q = lr * a * (2 - lr * a)  # = 1 - (1 - lr a)^2 without cancellation
    with _quiet(xp):
        geometric = xp.where(one_minus_q == 0, k_ + 0 * q_k, (1 - q_k) / one_minus_q)
    terms = 0.5 * lams * (q_k * x0**2 + lr**2 * sigma2 * (1 + rho * lams) ** 2 * geometric)
    return _out(terms.sum(-1), kind)


def usam_sde_stationary_loss(lams: ArrayLike, lr: ArrayLike, rho: ArrayLike, sigma2: ArrayLike) -> ArrayLike:
    r"""Stationary expected loss of the USAM SDE: :math:`\frac{\eta\sigma^2}4(d+\rho\,\mathrm{tr}H)`.

    Exists iff every :math:`a_i=\lambda_i(1+\rho\lambda_i)>0`. Source: MATH §3.4.
    """
    xp, (lams, lr, rho, sigma2), kind = _backend(lams, lr, rho, sigma2)
    _moment_args(xp, lams, None, lr, rho, sigma2)
    _check(xp, lams * (1 + rho * lams) > 0, "lams", lams,
           "such that lam*(1+rho*lam) > 0 for every eigenvalue (else there is no stationary law)", rho=rho)
    return _out(lr * sigma2 / 4 * (1 + rho * lams).sum(-1), kind)


def usam_discrete_stationary_loss(lams: ArrayLike, lr: ArrayLike, rho: ArrayLike, sigma2: ArrayLike) -> ArrayLike:
    r"""Stationary expected loss of discrete USAM: :math:`\frac{\eta\sigma^2}2\sum_i\frac{1+\rho\lambda_i}{2-\eta a_i}`.

    Exists iff every :math:`0<\eta a_i<2`, :math:`a_i=\lambda_i(1+\rho\lambda_i)`. Source: MATH §3.4.
    """
    xp, (lams, lr, rho, sigma2), kind = _backend(lams, lr, rho, sigma2)
    _moment_args(xp, lams, None, lr, rho, sigma2)
    a = lams * (1 + rho * lams)
    _check(xp, (a > 0) & (lr * a < 2), "lams", lams,
           "such that 0 < lr*lam*(1+rho*lam) < 2 for every eigenvalue (else there is no stationary law)",
           lr=lr, rho=rho)
    return _out(lr * sigma2 / 2 * ((1 + rho * lams) / (2 - lr * a)).sum(-1), kind)
