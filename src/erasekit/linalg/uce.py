"""UCE (Gandikota et al., WACV 2024) in closed form on one weight, eqs. (3), (5) and (7).

    W_uce = R M⁻¹ = W0 + W0 (B − C̃) K,   K = (γI_n + C̃ᵀC̃)⁻¹C̃ᵀ = V diag(h) Uᵀ          (3), (5)

with the factor of :func:`erasekit.linalg.gram_factor`; :func:`_uce_rows` also returns each row's
share c0 of f(W_uce), the constant of SPACE's row problems (eq. 7).
"""

from __future__ import annotations

from torch import Tensor

from .gram import GramFactor, TensorLike, _as_weight

__all__ = ["uce_delta_factors", "uce_weight"]


def uce_delta_factors(W0: TensorLike, gf: GramFactor) -> tuple[Tensor, Tensor]:
    """(Bf (d_out, r), Af (r, d_in)), float64, with W_uce = W0 + Bf @ Af  (eqs. 3, 5).

    The rank r = rank(C̃) ≤ min(n, d_in), so the factors always exist (also for n ≥ d_in).
    """
    W0 = _as_weight(W0, gf)
    Z = W0 @ gf.DV  # (d_out, r)   W0 (B − C̃) V
    return Z * gf.h, gf.U.T  # W0 (B − C̃) V diag(h) · Uᵀ = W0 (B − C̃) K


def uce_weight(W0: TensorLike, gf: GramFactor) -> Tensor:
    """UCE edited weight R M⁻¹ (d_out, d_in), float64, in O(d_out·d_in·r) (eq. 3)."""
    W0 = _as_weight(W0, gf)
    return _uce_rows(W0, gf)[0]


def _uce_rows(W0: Tensor, gf: GramFactor) -> tuple[Tensor, Tensor]:
    """(A = W_uce rows (b, d_in), c0 per row (b,)) for float64 rows W0 (b, d_in)."""
    Z = W0 @ gf.DV  # (b, r)   E V with E = W0 (B − C̃)
    A = W0 + (Z * gf.h) @ gf.U.T  # (b, d_in)   eq. (3) with K from (5)
    c0 = ((Z**2) * (gf.gamma / (gf.gamma + gf.s**2))).sum(1)  # Σ_j γ/(γ+s_j²)‖(EV)_j‖²
    if gf.D_perp.shape[1]:
        c0 = c0 + ((W0 @ gf.D_perp) ** 2).sum(1)  # + ‖E(I − VVᵀ)‖², only when rank C̃ < n
    return A, c0  # f(W_uce) = Σ c0, see eq. (7)
