r"""Stability edges of GD, USAM and SAM, and the SAM 2-cycle on a quadratic (MATH §7)."""
from __future__ import annotations

import numpy as np
import torch

from ._backend import ArrayLike, _backend, _check, _finite, _lr, _nonneg, _out, _quiet, _rho
from ._backend import _below_gd_edge


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
