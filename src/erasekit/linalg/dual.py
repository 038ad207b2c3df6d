"""SPACE's row problems and their dual, eqs. (7)–(12): shared by the SSN and FISTA solvers and the λ search.

f is quadratic with Hessian 2M and minimiser W_uce, so with a = a row of W_uce and w the
matching row of W (F from (6)):

    f(W) = Σ_rows (w − a) M (w − a)ᵀ + c0,    c0 = f(W_uce)                          (7)
    P(w) = γ‖w − a‖² + ‖(w − a)F‖² + λ‖w‖₁       (one Lasso problem per row)          (8)

Writing ‖z‖² = max_y (y·z − ‖y‖²/4) gives the r-dimensional, unconstrained, concave dual

    w(y) = S_τ(a − F y/(2γ)),  τ = λ/(2γ),  S_τ(x) = sign(x)·max(|x| − τ, 0)          (9)
    g(y) = γ‖a‖² − (aF)·y − γ‖w(y)‖² − ‖y‖²/4                                       (10)
    ∇g(y) = Fᵀ(w(y) − a)ᵀ − y/2,    −∇²g = (γI + F_Aᵀ F_A)/(2γ)                        (11)
    P(w(y)) − g(y) = ‖∇g(y)‖²                    (the duality gap, exactly)            (12)

(A = {i : w_i ≠ 0}, F_A its rows of F). Any y gives a lower bound g(y) ≤ P*, so
G(Y) = Σ_rows g + c0 ≤ F* and (F(W) − G(Y))/G(Y) ≥ (F(W) − F*)/F* is a rigorous certificate.

Cold start: y = 2(κ − 1)(aF)(I + κ diag(s²)/γ)⁻¹, the dual of a linear shrink w ≈ κ·u, with κ
picked per call by the largest dual value on a row sample (:func:`_cold_dual`, :func:`_pick_kappa`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gram import GramFactor

_KAPPAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # candidate shrink factors for the cold dual start (1: y = 0)


def _soft(u: Tensor, tau: float) -> Tensor:
    """S_τ(u) = sign(u)·max(|u| − τ, 0), exact zeros inside [−τ, τ]."""
    return u - u.clamp(-tau, tau)


def _dual_value(aa: Tensor, aC: Tensor, y: Tensor, w: Tensor, gamma: float) -> Tensor:
    """g(y) per row, eq. (10); aa = γ‖a‖²."""
    return aa - (aC * y).sum(1) - gamma * (w * w).sum(1) - (y * y).sum(1) / 4


def _cold_dual(aC: Tensor, s: Tensor, gamma: float, kappa: float) -> Tensor:
    """Dual start from a linear shrink w ≈ κ·u of eq. (9): y = 2(κ − 1) aF (I + κ diag(s²)/γ)⁻¹.

    (FᵀF = diag(s²) in SVD coordinates, so the solve is elementwise.)
    """
    return 2 * (kappa - 1) * aC / (1 + kappa * s**2 / gamma)  # (b, r)


def _pick_kappa(A: Tensor, gf: GramFactor, tau: float) -> float:
    """The κ of :func:`_cold_dual` with the largest dual value Σ g on a sample of rows."""
    F, gamma = gf.F, gf.gamma
    a = A[torch.linspace(0, A.shape[0] - 1, min(A.shape[0], 64)).long()]  # (k, d_in) sample rows
    aC, aa = a @ F, gamma * (a * a).sum(1)

    def dual_sum(kappa: float) -> float:
        y = _cold_dual(aC, gf.s, gamma, kappa)  # (k, r)
        w = _soft(a - y @ F.T / (2 * gamma), tau)  # eq. (9)
        return float(_dual_value(aa, aC, y, w, gamma).sum())

    return max(_KAPPAS, key=dual_sum)
