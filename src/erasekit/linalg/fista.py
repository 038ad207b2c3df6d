"""SPACE's reference solver: the paper's "iterative closed-form" proximal-gradient step.

FISTA with per-row O'Donoghue–Candès gradient restart, all rows at once as matrix products, warm
started at W_uce — the faithful reference; it needs ~√cond(M)·log(1/tol) iterations. Certified
with the natural dual point of eqs. (7)–(10) (:mod:`erasekit.linalg.dual`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .dual import _dual_value, _soft
from .gram import _F64, GramFactor
from .uce import _uce_rows

_FISTA_CHECK = 10  # certificate every this many FISTA iterations (two extra GEMMs each)


def _fista(
    W0: Tensor,
    A: Tensor | None,
    gf: GramFactor,
    lam: float,
    tol: float,
    max_iter: int,
    callback: Callable[[int, Tensor], bool | None] | None,
) -> tuple[Tensor, Tensor, int, float, float]:
    """Proximal gradient with momentum and per-row gradient restart, all rows at once.

    W ← S_{λ/L}(Y − (2/L)(Y M − R)),  L = 2λ_max(M),
    Y M − R = (Y − W_uce) M = γ(Y − A) + ((Y − A)F)Fᵀ.
    """
    a_uce, c0 = _uce_rows(W0, gf)
    A = a_uce if A is None else A  # (d_out, d_in)
    F, gamma = gf.F, gf.gamma
    Lip = 2 * gf.lam_max_M  # Lipschitz constant of ∇f = 2(W M − R)
    X = A.clone()  # warm start at W_uce (the λ = 0 solution)
    Yk = X.clone()
    t = torch.ones(X.shape[0], 1, dtype=_F64, device=X.device)  # per-row momentum
    k = 0
    for k in range(1, max_iter + 1):
        D = Yk - A  # (d_out, d_in)
        G = torch.addmm(D, D @ F, F.T, beta=gamma)  # (Y − A) M = Y M − R, eq. (2)
        X_new = _soft(G.mul_(-2 / Lip).add_(Yk), lam / Lip)  # proximal step
        step = X_new - X
        restart = torch.linalg.vecdot(Yk - X_new, step).unsqueeze(1) > 0  # O'Donoghue–Candès, per row
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        Yk = step.mul_(torch.where(restart, 0.0, (t - 1) / t_new)).add_(X_new)  # momentum
        X, t = X_new, torch.where(restart, 1.0, t_new)
        if callback is not None and callback(k, X):
            break
        if tol > 0 and k % _FISTA_CHECK == 0:
            P, g, _ = _fista_certificate(X, A, c0, F, gamma, lam)
            if P - g <= tol * g:
                break
    P, g, y = _fista_certificate(X, A, c0, F, gamma, lam)
    return X, y, k, P, g


def _fista_certificate(
    X: Tensor, A: Tensor, c0: Tensor, F: Tensor, gamma: float, lam: float
) -> tuple[float, float, Tensor]:
    """(F(X), G(y), y) with the natural dual point y = 2 (X − A) F (eqs. 7, 8, 10)."""
    E = X - A  # (d_out, d_in)
    Z = E @ F  # (d_out, r)
    P = gamma * (E * E).sum() + (Z * Z).sum() + lam * X.abs().sum() + c0.sum()  # eq. (7)+(8)
    y = 2 * Z  # (d_out, r)
    aC = A @ F
    w = _soft(A - y @ F.T / (2 * gamma), lam / (2 * gamma))  # eq. (9)
    g = _dual_value(gamma * (A * A).sum(1), aC, y, w, gamma).sum() + c0.sum()  # eq. (10)
    return float(P), float(g), y
