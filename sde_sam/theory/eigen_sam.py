r"""Eigen-SAM geometry (MATH §2, §7)."""
from __future__ import annotations


from ._backend import ArrayLike, _backend, _check, _out, _rho


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
