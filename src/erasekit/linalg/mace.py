"""MACE's closed forms (Lu et al., "MACE: Mass Concept Erasure in Diffusion Models", CVPR 2024), eqs. (16)–(20).

Reference code: Shilin-LU/MACE ``src/cfr_utils.py`` (``closed_form_refinement``) and
``src/fuse_lora_close_form.py``. One closed form, per cross-attention K/V weight, serves both the
closed-form refinement (CFR) and the fusion of the per-concept LoRAs:

    M = λI + X Xᵀ + s G Gᵀ,   R = λ W_ref + V Xᵀ + s W_p G Gᵀ                          (16)
    closed_form(W_ref, V, X, G, W_p; s, λ)
        = argmin_W λ‖W − W_ref‖² + ‖W X − V‖² + s‖(W − W_p) G‖²
        = R M⁺ + W_ref (I − M M⁺)                                                       (17)

W_ref, W_p (d_out, d_in); V (d_out, n); X (d_in, n) the token columns; G (d_in, m) the
preservation prior's factor. For λ > 0, M is invertible and (17) is R M⁻¹; with λ = 0 and a
singular M it is the λ → 0⁺ limit, so directions no column reaches keep W_ref. Everything but
W0 is built from the embeddings, so both stages reduce to (d_in, d_in) operators shared by every
layer:

    CFR:     W_cfr = W0 (I + E_c),   E_c = (C_map − C_old) C_oldᵀ M_c⁺                   (18)
    fusion:  W − W0 = W0 E_f + Σ_i Δ_i X_i X_iᵀ M_f⁺,
             E_f = E_c [(λI + X Xᵀ) M_f⁺ + I − M_f M_f⁺]                                (19)
    factors: E_f = P Q  ⇒  W − W0 = [W0 P, B_1, …, B_k] [Q; A_1 X_1X_1ᵀM_f⁺; …; A_k X_kX_kᵀM_f⁺]   (20)

with M_c = (16) on X = C_old (the concept prompts' aligned columns), M_f = (16) on X = [X_1 … X_k]
(every position of each concept's prompts), and Δ_i = B_i A_i concept i's LoRA. Everything is
float64; a bad input raises ValueError (the method turns it into a MethodError).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "NormalSolver",
    "normal_matrix",
    "closed_form",
    "cfr_operator",
    "fusion_operator",
    "rank_factor",
    "fusion_factors",
]

F64 = torch.float64


class NormalSolver:
    """Applies M⁻¹ for M = λI + X Xᵀ + s G Gᵀ (d_in, d_in), or M⁺ in the λ → 0⁺ limit when M is singular (17)."""

    def __init__(self, M: Tensor, lamb: float):
        self.M = M.to(F64)
        d = M.shape[0]
        lam, Q = torch.linalg.eigh((self.M + self.M.T) / 2)
        tol = max(float(lam.abs().max()), 1e-300) * d * torch.finfo(F64).eps * 16
        keep = lam > tol
        self.Q: Tensor = Q[:, keep]
        self.inv: Tensor = 1.0 / lam[keep]
        self.full_rank = bool(keep.all())
        if lamb > 0 and not self.full_rank:
            raise ValueError("the closed form's normal matrix is singular although lambda > 0 (non-finite embeddings?)")

    def right(self, R: Tensor) -> Tensor:
        """R M⁺ (R M⁻¹ when M is invertible); R (·, d_in)."""
        return ((R.to(F64) @ self.Q) * self.inv) @ self.Q.T

    def null_projector(self) -> Tensor:
        """I − M M⁺ (zero when M is invertible)."""
        return torch.eye(self.M.shape[0], dtype=F64) - self.Q @ self.Q.T


def normal_matrix(X: Tensor, G: Tensor, s: float, lamb: float) -> Tensor:
    """M = λ I + X Xᵀ + s G Gᵀ  (d_in, d_in), eq. (16)."""
    d = X.shape[0]
    return lamb * torch.eye(d, dtype=F64) + X.to(F64) @ X.to(F64).T + s * (G.to(F64) @ G.to(F64).T)


def closed_form(W_ref: Tensor, V: Tensor, X: Tensor, G: Tensor, W_p: Tensor, s: float, lamb: float) -> Tensor:
    """argmin_W λ‖W − W_ref‖² + ‖W X − V‖² + s‖(W − W_p) G‖², eq. (17) (closed_form_refinement in cfr_utils.py).

    W_ref, W_p (d_out, d_in); V (d_out, n); X (d_in, n); G (d_in, m). λ = 0 with singular M: the λ → 0⁺ limit.
    """
    solver = NormalSolver(normal_matrix(X, G, s, lamb), lamb)
    # (d_out, d_in)  R = λ W_ref + V Xᵀ + s W_p G Gᵀ, eq. (16)
    R = lamb * W_ref.to(F64) + V.to(F64) @ X.to(F64).T + s * (W_p.to(F64) @ G.to(F64)) @ G.to(F64).T
    return solver.right(R) + W_ref.to(F64) @ solver.null_projector()  # R M⁺ + W_ref (I − M M⁺)


def cfr_operator(C_old: Tensor, C_map: Tensor, G: Tensor, s: float, lamb: float) -> tuple[Tensor, NormalSolver]:
    """E_c (d_in, d_in) with W_cfr = W0 (I + E_c) for every layer: E_c = (C_map − C_old) C_oldᵀ M_c⁺, eq. (18).

    (λ W0 + W0 C_map C_oldᵀ + s W0 G Gᵀ) M_c⁺ + W0 (I − M_c M_c⁺) = W0 + W0 (C_map − C_old) C_oldᵀ M_c⁺,
    because the rows of C_old C_oldᵀ lie in the range of M_c. Shared by all layers: the embeddings are.
    """
    solver = NormalSolver(normal_matrix(C_old, G, s, lamb), lamb)
    return solver.right((C_map - C_old).to(F64) @ C_old.to(F64).T), solver


def fusion_operator(E_c: Tensor, X: Tensor, G: Tensor, s: float, lamb: float) -> tuple[Tensor, NormalSolver]:
    """E_f (d_in, d_in) and M_f's solver: the fused weight is W0 (I + E_f) + Σ_i B_i A_i X_i X_iᵀ M_f⁺, eq. (19).

    closed_form(W_cfr, [(W_cfr + Δ_i) X_i], X, G, W0; s, λ) − W0
      = W0 E_c [(λI + X Xᵀ) M_f⁺ + I − M_f M_f⁺] + Σ_i Δ_i X_i X_iᵀ M_f⁺,   M_f = λI + X Xᵀ + s G Gᵀ.
    """
    solver = NormalSolver(normal_matrix(X, G, s, lamb), lamb)
    K = lamb * torch.eye(X.shape[0], dtype=F64) + X.to(F64) @ X.to(F64).T
    return E_c.to(F64) @ (solver.right(K) + solver.null_projector()), solver


def rank_factor(E: Tensor, rtol: float = 1e-12) -> tuple[Tensor, Tensor]:
    """E = P Q, P (d, r), Q (r, d), r = numerical rank (SVD; singular values below rtol·σ_max dropped), eq. (20)."""
    U, S, Vh = torch.linalg.svd(E.to(F64), full_matrices=False)
    r = int((S > (S[0] * rtol if S.numel() else 0)).sum()) if S.numel() and S[0] > 0 else 0
    return U[:, :r] * S[:r], Vh[:r]


def fusion_factors(
    W0: Tensor, P: Tensor, Q: Tensor, deltas: Sequence[tuple[Tensor, Tensor]], projections: Sequence[Tensor]
) -> tuple[Tensor, Tensor]:
    """(B (d_out, r'), A (r', d_in)) with W − W0 = B A for one layer, eq. (20).

    W0 (d_out, d_in) float64; E_f = P Q from :func:`rank_factor`; ``deltas`` each concept's LoRA
    (B_i (d_out, r_i), A_i (r_i, d_in)); ``projections`` each concept's X_i X_iᵀ M_f⁺ (d_in, d_in).
    """
    B, A = [W0 @ P], [Q]
    for (Bi, Ai), pr in zip(deltas, projections):
        B.append(Bi)
        A.append(Ai @ pr)
    return torch.cat(B, 1), torch.cat(A, 0)
