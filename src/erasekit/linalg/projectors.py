"""Projectors in the text-embedding space (CURE, PURE's text basis, SPEED's null space).

A (soft) projector is given by an orthonormal basis V (d, k) and weights w ∈ [0, 1]^k:

    P = V diag(w) Vᵀ                                                                  (14)

hard projectors have w = 1. The edit right-multiplies W0 by E = I − P_F (I − P_R):

    W0 E − W0 = −W0 V_F diag(w_F) [V_Fᵀ − (V_Fᵀ V_R) diag(w_R) V_Rᵀ] = B A            (15)

with B (d_out, k_F), A (k_F, d_in): a low-rank delta of rank ≤ k_F.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .gram import _F64, _check_finite

__all__ = [
    "energy_shares",
    "spectral_expansion",
    "spectral_basis",
    "weighted_projector",
    "projector_delta_right",
    "null_space_basis",
]


def energy_shares(s: Tensor) -> Tensor:
    """r_i = σ_i² / Σ_j σ_j², the share of the total energy on each singular direction (CURE's r)."""
    s2 = s.to(_F64) ** 2
    return s2 / s2.sum().clamp_min(1e-300)


def spectral_expansion(r: Tensor, alpha: float) -> Tensor:
    """CURE's expansion f(r) = α r / ((α − 1) r + 1) of energy shares r ∈ [0, 1] (α ≥ 1).

    f(0) = 0, f(1) = 1, monotone; α = 1 leaves r as is, α → ∞ tends to the hard projector (f = 1 on r > 0).
    """
    if not (math.isfinite(alpha) and alpha >= 1.0):
        raise ValueError(
            f"alpha must be a finite number >= 1 (1 keeps the energy shares, larger strengthens the "
            f"projector), got {alpha}"
        )
    r = r.to(_F64)
    return alpha * r / ((alpha - 1.0) * r + 1.0)


def spectral_basis(C: Tensor) -> tuple[Tensor, Tensor]:
    """(V (d, k), s (k,)): left singular vectors and singular values of the columns C (d, n), float64,
    truncated to the numerical rank (k = 0 for an empty or zero C)."""
    C = torch.as_tensor(C).to(_F64)
    if C.numel() == 0:
        return C.new_zeros(C.shape[0], 0), C.new_zeros(0)
    _check_finite("C", C)
    U, s, _ = torch.linalg.svd(C, full_matrices=False)  # C = U diag(s) Vhᵀ
    k = int((s > s[0] * max(C.shape) * torch.finfo(_F64).eps).sum()) if s[0] > 0 else 0
    return U[:, :k].contiguous(), s[:k].contiguous()


def weighted_projector(V: Tensor, w: Tensor | None = None) -> Tensor:
    """P = V diag(w) Vᵀ (d, d), eq. (14); w = None gives the hard projector V Vᵀ."""
    V = V.to(_F64)
    return (V * (1.0 if w is None else w.to(_F64))) @ V.T


def projector_delta_right(
    W0: Tensor, V_F: Tensor, V_R: Tensor, w_F: Tensor | None = None, w_R: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(B (d_out, k_F), A (k_F, d_in)) with W0 (I − P_F (I − P_R)) − W0 = B A, eq. (15), float64.

    V_F (d_in, k_F), V_R (d_in, k_R) orthonormal; w_F, w_R their weights (None: hard projectors).
    """
    W0 = torch.as_tensor(W0).to(_F64)
    V_F, V_R = V_F.to(_F64), V_R.to(_F64)
    wF = V_F.new_ones(V_F.shape[1]) if w_F is None else w_F.to(_F64)
    wR = V_R.new_ones(V_R.shape[1]) if w_R is None else w_R.to(_F64)
    A = V_F.T - ((V_F.T @ V_R) * wR) @ V_R.T  # (k_F, d_in)   V_Fᵀ (I − P_R)
    B = -(W0 @ V_F) * wF  # (d_out, k_F)   −W0 V_F diag(w_F)
    return B, A


def null_space_basis(S: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(V0 (d, k), eigenvalues (d,)) for a symmetric PSD S (d, d): V0 spans the eigenvectors whose
    eigenvalue is below ``threshold`` (SPEED's null space of the retain covariance; P = V0 V0ᵀ)."""
    S = torch.as_tensor(S).to(_F64)
    _check_finite("S", S)
    evals, evecs = torch.linalg.eigh((S + S.T) / 2)  # ascending
    return evecs[:, evals < threshold].contiguous(), evals
