"""The embedding-side factorisation of eqs. (5)–(6), computed once and shared by every layer.

Everything built from the embeddings alone is computed once by :func:`gram_factor` and shared
by all layers. It rests on one thin SVD C̃ = U S Vᵀ (rank r ≤ min(n, d_in)):

    K = V diag(h) Uᵀ,  h = s/(γ + s²)        (push-through identity; no inverse formed)  (5)
    F = U diag(s)  (d_in, r),  F Fᵀ = C̃C̃ᵀ    (compressed factor used by SPACE)         (6)

so W_uce = W0 + (W0 (B − C̃) V) diag(h) Uᵀ costs O(d_out·d_in·r) per layer, for n < d_in and
n ≥ d_in alike (then r ≤ d_in: the "compress C̃C̃ᵀ to a d_in-column factor" route).
Eqs. (1)–(4) and the notation: :mod:`erasekit.linalg`. Also the input checks every solver shares.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TypeAlias

import numpy.typing as npt
import torch
from torch import Tensor

__all__ = ["GramFactor", "gram_factor"]

_F64 = torch.float64
# what the solvers accept for a matrix: a tensor, or anything torch.as_tensor takes (an array, nested lists)
TensorLike: TypeAlias = Tensor | npt.ArrayLike
_COND_RAISE = 1e12  # cond(M) above which float64 solves lose every digit the tolerances need
_COND_WARN = 1e8  # cond(M) above which SSN builds its Newton systems in float64 (slower)


@dataclass(frozen=True)
class GramFactor:
    """Everything built from the token embeddings alone (float64, shared by all layers).

    C̃ = U diag(s) Vᵀ is a thin SVD truncated to the numerical rank r; see eqs. (3)–(7).
    """

    C: Tensor  # (d_in, n)  C̃ = [√α C_E, √β C_P]
    B: Tensor  # (d_in, n)  B = [√α C_G, √β C_P]
    gamma: float  # γ > 0
    U: Tensor  # (d_in, r)  left singular vectors of C̃
    s: Tensor  # (r,)       singular values of C̃, descending
    F: Tensor  # (d_in, r)  U diag(s): F Fᵀ = C̃C̃ᵀ, the factor every SPACE row works with, eq. (6)
    DV: Tensor  # (d_in, r)  (B − C̃) V
    D_perp: Tensor  # (d_in, p)  Φ with ΦΦᵀ = (B − C̃)(I − VVᵀ)(B − C̃)ᵀ; p = 0 when rank C̃ = n

    @property
    def d_in(self) -> int:
        return self.C.shape[0]

    @property
    def n(self) -> int:
        """Number of token columns n = n_e + n_p."""
        return self.C.shape[1]

    @property
    def rank(self) -> int:
        """Numerical rank r of C̃: the dimension of every SPACE row dual."""
        return self.s.shape[0]

    @property
    def h(self) -> Tensor:
        """(r,) s/(γ + s²): the spectrum of K = (γI + C̃ᵀC̃)⁻¹C̃ᵀ, eq. (5)."""
        return self.s / (self.gamma + self.s**2)

    @property
    def lam_max_M(self) -> float:
        """λ_max(M) = γ + σ_max(C̃)²; the FISTA step uses L = 2·lam_max_M."""
        return self.gamma + (float(self.s[0]) ** 2 if self.rank else 0.0)

    @property
    def cond_M(self) -> float:
        """Condition number of M = γI + C̃C̃ᵀ."""
        return self.lam_max_M / self.gamma

    @property
    def device(self) -> torch.device:
        return self.C.device

    def to(self, device: torch.device | str) -> GramFactor:
        """The same factor on ``device`` (every solve then runs there: weights are moved to it, not it to them)."""
        if torch.device(device) == self.C.device:
            return self
        moved = {f: getattr(self, f).to(device) for f in ("C", "B", "U", "s", "F", "DV", "D_perp")}
        return GramFactor(gamma=self.gamma, **moved)


def _check_finite(name: str, x: Tensor) -> None:
    """Raise on NaN/Inf; scans 2-D tensors in row blocks so the check needs little memory."""
    blocks = x.split(max(1, 2**18 // max(x.shape[-1], 1))) if x.ndim == 2 else (x,)
    if not all(bool(torch.isfinite(blk).all()) for blk in blocks):
        bad = sum(int((~torch.isfinite(blk)).sum()) for blk in blocks)
        raise ValueError(
            f"{name} contains {bad} NaN/Inf value(s); check the text encoder output or the weight before editing"
        )


def _as_matrix(name: str, x: TensorLike, d_in: int | None = None) -> Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (d_in, columns), got shape {tuple(x.shape)}")
    if d_in is not None and x.shape[0] != d_in:
        raise ValueError(
            f"{name} has {x.shape[0]} rows but C_E has d_in = {d_in}; all embeddings must be (d_in, columns)"
        )
    if not (x.is_floating_point() or x.numel() == 0):
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    x = x.to(_F64)
    _check_finite(name, x)
    return x


def gram_factor(
    C_E: TensorLike,
    C_G: TensorLike,
    C_P: TensorLike | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.5,
    prior: TensorLike | None = None,
) -> GramFactor:
    """Validate the embeddings and factor everything the layers share, once.

    C_E, C_G: (d_in, n_e) paired erase / guide token embeddings; C_P: (d_in, n_p) or None.
    alpha, beta ≥ 0 and gamma > 0 weight the three terms of eq. (1) (UCE defaults 1, 1, 0.5).
    prior: optional (d_in, m) factor P, already weighted, adding ‖W P − W0 P‖² to eq. (1) (the
    general-prompt prior of :mod:`erasekit.prior`, P Pᵀ = ρ S): its columns are appended to
    both C̃ and B like preserve columns, so n counts them and nothing downstream changes.
    Raises ValueError naming the problem and the fix on bad shapes, NaN/Inf, gamma ≤ 0, or
    cond(M) > 1e12; warns (RuntimeWarning) when cond(M) > 1e8.
    """
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be > 0 (it makes M = γI + C̃C̃ᵀ invertible; UCE's default is 0.5), got {gamma}")
    C_E = _as_matrix("C_E", C_E)
    d_in = C_E.shape[0]
    C_G = _as_matrix("C_G", C_G, d_in)
    if C_G.shape != C_E.shape:
        raise ValueError(f"C_G {tuple(C_G.shape)} must pair column by column with C_E {tuple(C_E.shape)}")
    if C_E.shape[1] == 0:
        raise ValueError("C_E has no columns: give at least one erase-token embedding")
    C_P = torch.zeros(d_in, 0, dtype=_F64) if C_P is None else _as_matrix("C_P", C_P, d_in)

    P = torch.zeros(d_in, 0, dtype=_F64) if prior is None else _as_matrix("prior", prior, d_in)  # (d_in, m)

    C = torch.cat([math.sqrt(alpha) * C_E, math.sqrt(beta) * C_P, P], dim=1)  # (d_in, n)  C̃
    B = torch.cat([math.sqrt(alpha) * C_G, math.sqrt(beta) * C_P, P], dim=1)  # (d_in, n)  B
    U, s, Vh = torch.linalg.svd(C, full_matrices=False)  # C̃ = U diag(s) Vh
    r = int((s > s[0] * max(C.shape) * torch.finfo(_F64).eps).sum()) if s.numel() and s[0] > 0 else 0
    U, s, V = U[:, :r].contiguous(), s[:r].contiguous(), Vh[:r].T  # (d_in, r), (r,), (n, r)
    D = B - C  # (d_in, n)
    DV = D @ V  # (d_in, r)
    D_perp = _column_factor(D - DV @ V.T)  # (d_in, p)  (B − C̃)(I − VVᵀ), compressed
    gf = GramFactor(C=C, B=B, gamma=float(gamma), U=U, s=s, F=U * s, DV=DV, D_perp=D_perp)

    if gf.cond_M > _COND_RAISE:
        raise ValueError(
            f"M = γI + C̃C̃ᵀ is numerically singular (condition number {gf.cond_M:.3g} > {_COND_RAISE:.0e}): "
            f"gamma={gamma} is too small next to σ_max(C̃)² = {gf.lam_max_M - gamma:.3g}; increase gamma "
            f"(UCE default 0.5) or lower alpha / beta"
        )
    if gf.cond_M > _COND_WARN:
        warnings.warn(
            f"M = γI + C̃C̃ᵀ is ill-conditioned (condition number {gf.cond_M:.3g}); results stay exact but "
            f"SPACE falls back to float64 Newton systems and FISTA needs many iterations. Increase gamma to "
            f"avoid this.",
            RuntimeWarning,
            stacklevel=2,
        )
    return gf


def _column_factor(X: Tensor) -> Tensor:
    """(d, p) Φ with ΦΦᵀ = XXᵀ, p = numerical rank of X (p = 0 for X ≈ 0)."""
    if X.numel() == 0:
        return X.new_zeros(X.shape[0], 0)
    U, s, _ = torch.linalg.svd(X, full_matrices=False)
    keep = s > max(float(s[0]), 1e-300) * max(X.shape) * torch.finfo(_F64).eps * 16
    Phi: Tensor = (U[:, keep] * s[keep]).contiguous()  # torch.linalg.svd's outputs are untyped
    return Phi


def _as_weight(W0: TensorLike, gf: GramFactor, name: str = "W0", f64: bool = True) -> Tensor:
    """Validated (d_out, d_in) weight on gf's device; float64 unless f64=False (then converted per chunk)."""
    W = torch.as_tensor(W0)
    if W.ndim != 2 or W.shape[1] != gf.d_in:
        raise ValueError(f"{name} must be (d_out, d_in={gf.d_in}) to match the embeddings, got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {W.dtype}")
    _check_finite(name, W)
    return W.to(device=gf.C.device, dtype=_F64 if f64 else W.dtype)
