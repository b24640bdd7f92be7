r"""Diffusion of the SDE models in two forms (MATH §3.3).

* ``"factor"`` (default, PSD by construction): :math:`F` with :math:`FF^\top = \eta\,\mathrm{Cov}_\gamma(G^{(r')}_\gamma)`,
  :math:`r' = \min(r, 1)`, realised from :math:`N` values of the effective gradient without a matrix square
  root, :math:`F\zeta = \sqrt{\eta/N'}\sum_j (G_j - \bar G)\zeta_j`, :math:`N' = N` for an exact enumeration and
  :math:`N-1` for sampled draws. The noise dimension is :math:`m = N`.
* ``"paper"``: the matrix :math:`\Sigma^{\rm SGD} + \rho(\tilde\Sigma+\tilde\Sigma^\top)` of Compagnoni et al. as
  written, generalised to any method as :math:`\mathrm{Cov}(g) + \mathrm{Cov}(g, u) + \mathrm{Cov}(u, g)` with
  :math:`u = G^{(1)} - g = \nabla^2 f_\gamma\,\varepsilon_\gamma` (i.e. the factor form's covariance minus its
  :math:`O(\rho^2)` term :math:`\mathrm{Cov}(u)`) [derived]. It is **not PSD in general**: it is
  eigendecomposed (symmetric), negative eigenvalues are clipped to 0 and the clipping is reported.
"""
from __future__ import annotations

import math
import torch
from torch import Tensor


def centred_factor(G: Tensor, *, lr: float, exact: bool, scale: float = 1.0) -> Tensor:
    r"""Factor form from draw values ``G: (n, N, d)``: ``(n, d, N)`` with :math:`FF^\top = \eta\,\text{scale}\,\mathrm{Cov}(G)`.

    Args:
        G: Effective gradients of ``N`` draws per path.
        lr: Learning rate :math:`\eta`.
        exact: True when the ``N`` draws are an exact uniform enumeration (divide by ``N``, else ``N-1``).
        scale: Extra covariance scale (``c_B/B`` when per-sample values stand for mini-batches of size ``B``).
    """
    N = G.shape[1]
    denom = N if exact else N - 1
    return (math.sqrt(lr * scale / denom) * (G - G.mean(dim=1, keepdim=True))).transpose(1, 2)


def paper_matrix(g: Tensor, G1: Tensor, *, exact: bool, scale: float = 1.0) -> Tensor:
    r"""The paper-form matrix :math:`\mathrm{Cov}(g)+\mathrm{Cov}(g,u)+\mathrm{Cov}(u,g)`, :math:`u = G^{(1)}-g`: ``(n, d, d)``."""
    N = g.shape[1]
    gc = g - g.mean(dim=1, keepdim=True)
    uc = (G1 - g) - (G1 - g).mean(dim=1, keepdim=True)
    cross = gc.transpose(1, 2) @ uc
    return scale * (gc.transpose(1, 2) @ gc + cross + cross.transpose(1, 2)) / (N if exact else N - 1)


class ClipReport:
    """How often and how much the ``paper`` diffusion matrix had to be clipped to be PSD.

    The counts stay on the tensors' device while a simulation runs (no host synchronisation per step) and
    are read when an attribute is asked for.

    Attributes:
        evaluations: Path-evaluations of the matrix.
        clipped: Path-evaluations with at least one negative eigenvalue.
        max_fraction: Largest clipped mass :math:`\\sum|\\lambda_-| / \\sum|\\lambda|` seen.
        sum_fraction: Sum of clipped-mass fractions (for the mean).
    """

    def __init__(self):
        self.evaluations = 0
        self._clipped: Tensor | None = None
        self._max: Tensor | None = None
        self._sum: Tensor | None = None

    def add(self, neg: Tensor, frac: Tensor) -> None:
        """Record one batch: ``neg`` the clipped (negative) eigenvalue mass and ``frac`` its fraction, ``(n,)``."""
        self.evaluations += neg.shape[0]
        c, m, s = (neg > 0).sum(), frac.max(), frac.sum()
        if self._clipped is None:
            self._clipped, self._max, self._sum = c, m, s
        else:
            self._clipped, self._max, self._sum = self._clipped + c, torch.maximum(self._max, m), self._sum + s

    @property
    def clipped(self) -> int:
        return 0 if self._clipped is None else int(self._clipped)

    @property
    def max_fraction(self) -> float:
        return 0.0 if self._max is None else float(self._max)

    @property
    def sum_fraction(self) -> float:
        return 0.0 if self._sum is None else float(self._sum)

    @property
    def rate(self) -> float:
        """Fraction of evaluations that were clipped."""
        return self.clipped / self.evaluations if self.evaluations else 0.0

    @property
    def mean_fraction(self) -> float:
        return self.sum_fraction / self.evaluations if self.evaluations else 0.0

    def __repr__(self) -> str:
        return (f"ClipReport(evaluations={self.evaluations}, clipped={self.clipped}, "
                f"max_fraction={self.max_fraction:.3g}, mean_fraction={self.mean_fraction:.3g})")

    def __str__(self) -> str:
        return (f"paper diffusion clipped in {self.clipped}/{self.evaluations} evaluations "
                f"({100 * self.rate:.2f}%), clipped mass mean {self.mean_fraction:.3g}, max {self.max_fraction:.3g}")


def clipped_factor(M: Tensor, *, lr: float, report: ClipReport | None = None) -> Tensor:
    r"""PSD factor of a symmetric ``(n, d, d)`` matrix by eigendecomposition with negative eigenvalues clipped.

    Returns ``(n, d, d)`` :math:`F = \sqrt\eta\,V\max(\Lambda, 0)^{1/2}`; never an SVD "square root" of a
    non-symmetric matrix (MATH §3.3).
    """
    evals, evecs = torch.linalg.eigh(0.5 * (M + M.transpose(1, 2)))
    if report is not None:
        neg = (-evals).clamp_min(0).sum(dim=-1)
        report.add(neg, neg / evals.abs().sum(dim=-1).clamp_min(torch.finfo(M.dtype).tiny))
    return math.sqrt(lr) * evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)
