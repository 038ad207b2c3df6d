"""Numerical core of the closed-form edits: UCE and SPACE on one cross-attention weight.

Methods
-------
UCE  — Unified Concept Editing (Gandikota et al., "Unified Concept Editing in Diffusion
       Models", WACV 2024): the ridge-regularised least-squares edit below, in closed form.
SPACE — sparse closed-form erasure (Novello & Tonello, arXiv 2605.10198). Only the abstract
       and figure captions are public; the formulation here (UCE's three quadratic terms plus
       an elementwise L1 penalty on the edited weight) is erasekit's reconstruction, not the
       authors' code (DESIGN §5).

Notation (DESIGN §4)
--------------------
W0 (d_out, d_in) the original to_k / to_v weight; C_E, C_G (d_in, n_e) paired erase / guide
token embeddings; C_P (d_in, n_p) preserve embeddings; n = n_e + n_p. With
C̃ = [√α C_E, √β C_P] and B = [√α C_G, √β C_P] (both (d_in, n)):

    f(W) = α‖W C_E − W0 C_G‖² + β‖W C_P − W0 C_P‖² + γ‖W − W0‖²
         = ‖W C̃ − W0 B‖² + γ‖W − W0‖²                                              (1)
    M = γI + C̃C̃ᵀ,   R = γW0 + W0 B C̃ᵀ,   ∇f = 2(W M − R)                         (2)
    UCE:   W_uce = R M⁻¹ = W0 + W0 (B − C̃) K,   K = (γI_n + C̃ᵀC̃)⁻¹C̃ᵀ           (3)
    SPACE: min_W F(W) = f(W) + λ‖W‖₁                                               (4)

Everything built from the embeddings alone is computed once by :func:`gram_factor` and shared
by all layers. It rests on one thin SVD C̃ = U S Vᵀ (rank r ≤ min(n, d_in)):

    K = V diag(h) Uᵀ,  h = s/(γ + s²)        (push-through identity; no inverse formed)  (5)
    F = U diag(s)  (d_in, r),  F Fᵀ = C̃C̃ᵀ    (compressed factor used by SPACE)         (6)

so W_uce = W0 + (W0 (B − C̃) V) diag(h) Uᵀ costs O(d_out·d_in·r) per layer, for n < d_in and
n ≥ d_in alike (then r ≤ d_in: the "compress C̃C̃ᵀ to a d_in-column factor" route).

SPACE row problems
------------------
f is quadratic with Hessian 2M and minimiser W_uce, so with a = a row of W_uce and w the
matching row of W (F from (6)):

    f(W) = Σ_rows (w − a) M (w − a)ᵀ + c0,    c0 = f(W_uce)                          (7)
    P(w) = γ‖w − a‖² + ‖(w − a)F‖² + λ‖w‖₁       (one Lasso problem per row)          (8)

Writing ‖z‖² = max_y (y·z − ‖y‖²/4) gives the r-dimensional, unconstrained, concave dual

    w(y) = S_τ(a − F y/(2γ)),  τ = λ/(2γ),  S_τ(x) = sign(x)·max(|x| − τ, 0)          (9)
    g(y) = γ‖a‖² − (aF)·y − γ‖w(y)‖² − ‖y‖²/4                                       (10)
    ∇g(y) = Fᵀ(w(y) − a)ᵀ − y/2,    −∇²g = (γI + F_Aᵀ F_A)/(2γ)                        (11)
    P(w(y)) − g(y) = ‖∇g(y)‖²                    (the duality gap, exactly)            (12)

(A = {i : w_i ≠ 0}, F_A its rows of F). When |A| is small next to r (many token columns, high
sparsity) the Newton system is solved through the push-through identity instead,

    (γI_r + F_AᵀF_A)⁻¹ = (I_r − F_Aᵀ(γI_|A| + F_A F_Aᵀ)⁻¹F_A)/γ,                        (13)

an |A| × |A| factorisation in place of an r × r one. Any y gives a lower bound g(y) ≤ P*, so
G(Y) = Σ_rows g + c0 ≤ F* and (F(W) − G(Y))/G(Y) ≥ (F(W) − F*)/F* is a rigorous certificate.

Solvers
-------
``solver="ssn"`` (default): semi-smooth Newton ascent on (10), rows in batches. Each row's
Newton matrix γI + F_AᵀF_A (r × r) is built in float32 over its own active set only, kept
current by signed rank updates (± f_i f_iᵀ for coordinates entering / leaving A), and
refactored (Cholesky) only for rows whose set moved — or, while every row of the batch has
|A| ≤ r/2, replaced by the |A|-dimensional system (13) built afresh; an inexact float32 direction is fine
because the Armijo line search (on exact differences of (10)) only accepts ascent and the
certificate is float64. The duals y are float64; the (b, d_in) iterates u, w and their products
with F are float32 when tol ≥ 1e-9 (float64 below: float32 could not resolve such a gap), and a
row whose float64 certificate then misses tol goes on in float64. A row stops as soon as its gap
‖∇g‖² ≤ tol·(g + its share of c0), so the layer certificate (F − G)/G ≤ tol holds.
Cold start: y = 2(κ − 1)(aF)(I + κ diag(s²)/γ)⁻¹, the dual of a linear shrink w ≈ κ·u, with κ picked per call by the largest dual value on a row
sample, then two steps with a diagonal model of the Newton matrix before the first factorisation;
or warm start from given duals (λ scans). On a CPU the row chunks run side by side on
torch's thread count of worker threads, every op single-threaded; see :func:`_ssn` for what
is bit-identical across worker and thread counts and why.
``solver="fista"``: the paper's "iterative closed-form" proximal-gradient step (FISTA with
per-row O'Donoghue–Candès gradient restart), all rows at once as matrix products, warm
started at W_uce — the faithful reference; it needs ~√cond(M)·log(1/tol) iterations.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "GramFactor",
    "gram_factor",
    "uce_weight",
    "uce_delta_factors",
    "space_objective",
    "SpaceSolve",
    "space_solve",
    "lam_for_sparsity",
    "space_solve_sparsity",
    "energy_shares",
    "spectral_expansion",
    "spectral_basis",
    "weighted_projector",
    "projector_delta_right",
    "null_space_basis",
]

_F64 = torch.float64
_COND_RAISE = 1e12  # cond(M) above which float64 solves lose every digit the tolerances need
_COND_WARN = 1e8  # cond(M) above which SSN builds its Newton systems in float64 (slower)
_KAPPAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # candidate shrink factors for the cold dual start (1: y = 0)
_ARMIJO = 1e-4  # sufficient-increase constant of the dual line search
_FIRST_ORDER_STEPS = 2  # diagonal-model steps before Newton on a cold start (see _ssn_rows)
_F32_ITERATE_TOL = 1e-9  # SSN iterates in float32 for gap tolerances at least this loose (see _ssn_rows)


# ----------------------------------------------------------------------------------------
# Embedding-side factorisation, computed once and shared by every layer
# ----------------------------------------------------------------------------------------


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

    def to(self, device: torch.device | str) -> "GramFactor":
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
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); check the text encoder output or the weight before editing")


def _as_matrix(name: str, x, d_in: int | None = None) -> Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (d_in, columns), got shape {tuple(x.shape)}")
    if d_in is not None and x.shape[0] != d_in:
        raise ValueError(f"{name} has {x.shape[0]} rows but C_E has d_in = {d_in}; all embeddings must be (d_in, columns)")
    if not (x.is_floating_point() or x.numel() == 0):
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    x = x.to(_F64)
    _check_finite(name, x)
    return x


def gram_factor(C_E, C_G, C_P=None, alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.5, prior=None) -> GramFactor:
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
            f"SPACE falls back to float64 Newton systems and FISTA needs many iterations. Increase gamma to avoid this.",
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
    return (U[:, keep] * s[keep]).contiguous()


def _as_weight(W0, gf: GramFactor, name: str = "W0", f64: bool = True) -> Tensor:
    """Validated (d_out, d_in) weight on gf's device; float64 unless f64=False (then converted per chunk)."""
    W0 = torch.as_tensor(W0)
    if W0.ndim != 2 or W0.shape[1] != gf.d_in:
        raise ValueError(f"{name} must be (d_out, d_in={gf.d_in}) to match the embeddings, got shape {tuple(W0.shape)}")
    if not W0.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {W0.dtype}")
    _check_finite(name, W0)
    return W0.to(device=gf.C.device, dtype=_F64 if f64 else W0.dtype)


# ----------------------------------------------------------------------------------------
# UCE
# ----------------------------------------------------------------------------------------


def uce_delta_factors(W0, gf: GramFactor) -> tuple[Tensor, Tensor]:
    """(Bf (d_out, r), Af (r, d_in)), float64, with W_uce = W0 + Bf @ Af  (eqs. 3, 5).

    The rank r = rank(C̃) ≤ min(n, d_in), so the factors always exist (also for n ≥ d_in).
    """
    W0 = _as_weight(W0, gf)
    Z = W0 @ gf.DV  # (d_out, r)   W0 (B − C̃) V
    return Z * gf.h, gf.U.T  # W0 (B − C̃) V diag(h) · Uᵀ = W0 (B − C̃) K


def uce_weight(W0, gf: GramFactor) -> Tensor:
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


# ----------------------------------------------------------------------------------------
# SPACE: objective, result, solvers
# ----------------------------------------------------------------------------------------


def space_objective(W, W0, gf: GramFactor, lam: float) -> float:
    """F(W) = f(W) + λ‖W‖₁ evaluated directly from eq. (1) (constant included), float64."""
    W = _as_weight(W, gf, "W")
    W0 = _as_weight(W0, gf)
    if W.shape != W0.shape:
        raise ValueError(f"W {tuple(W.shape)} and W0 {tuple(W0.shape)} must have the same shape")
    fit = ((W @ gf.C - W0 @ gf.B) ** 2).sum()  # ‖W C̃ − W0 B‖² = α‖WC_E − W0C_G‖² + β‖WC_P − W0C_P‖²
    ridge = gf.gamma * ((W - W0) ** 2).sum()  # γ‖W − W0‖²
    return float(fit + ridge + lam * W.abs().sum())  # eq. (4)


@dataclass
class SpaceSolve:
    """Result of :func:`space_solve` for one layer."""

    W: Tensor  # (d_out, d_in) float64 edited weight
    y: Tensor  # (d_out, r) float64 row duals (coordinates of gf.F); warm-starts the next solve
    iterations: int  # SSN: most Newton iterations any row needed; FISTA: iterations run
    objective: float  # F(W) = f(W) + λ‖W‖₁, constant f(W_uce) included
    gap: float  # certified relative gap (F(W) − G(y))/G(y) ≥ (F(W) − F*)/F*
    seconds: float
    converged: bool  # gap ≤ tol

    @property
    def sparsity(self) -> float:
        """Share of exact zeros in W."""
        return float((self.W == 0).sum()) / max(self.W.numel(), 1)


def space_solve(
    W0,
    gf: GramFactor,
    lam: float,
    *,
    solver: str = "ssn",
    tol: float = 1e-6,
    max_iter: int | None = None,
    W_uce: Tensor | None = None,
    y0: Tensor | None = None,
    chunk_rows: int | None = None,
    callback: Callable[[int, Tensor], bool | None] | None = None,
    workers: int | None = None,
    first_order_steps: int | None = None,
) -> SpaceSolve:
    """Solve SPACE (eq. 4) for one weight and certify it.

    solver: "ssn" (semi-smooth Newton on the row duals, default) or "fista" (reference).
    tol: stop when the duality-gap certificate (F − G)/G ≤ tol (per row for SSN).
    max_iter: iteration cap (default 100 for SSN, 20000 for FISTA); ``converged`` says if tol was met.
    W_uce: the UCE weight if already computed (else computed here, chunk by chunk).
    y0: (d_out, r) dual warm start, e.g. ``previous.y`` from a nearby λ (SSN only).
    chunk_rows: rows per SSN batch; by default the batch state stays within max(16 MiB, size of W).
    callback: FISTA only, ``callback(k, W)`` after iteration k (for tracing); True stops.
    workers: SSN row chunks solved concurrently (default: torch's CPU thread count; 1 on a GPU).
        On a CPU the result does not depend on it nor on torch's thread count, bit for bit, for a
        given CPU, torch build and environment (see :func:`_ssn`); across CPUs or BLAS code paths
        results agree to rounding (the certificate, not the bits, is what carries over).
    first_order_steps: SSN only, diagonal-model steps before the first Newton factorisation (default:
        2 from a cold start, 0 from y0; pass 2 with a y0 that is cold for most rows).
    """
    t0 = time.perf_counter()
    if solver not in ("ssn", "fista"):
        raise ValueError(f"solver must be 'ssn' or 'fista', got {solver!r}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if first_order_steps is not None and not (isinstance(first_order_steps, int) and first_order_steps >= 0):
        raise ValueError(f"first_order_steps must be an integer >= 0, got {first_order_steps!r}")
    W0 = _as_weight(W0, gf, f64=solver == "fista")
    A = None if W_uce is None else _as_weight(W_uce, gf, "W_uce", f64=solver == "fista")
    if A is not None and A.shape != W0.shape:
        raise ValueError(f"W_uce {tuple(A.shape)} must have the shape of W0 {tuple(W0.shape)}")
    if y0 is not None:
        y0 = torch.as_tensor(y0).to(device=W0.device, dtype=_F64)
        if y0.shape != (W0.shape[0], gf.rank):
            raise ValueError(f"y0 must be (d_out, r) = {(W0.shape[0], gf.rank)} from a solve with the same GramFactor, got {tuple(y0.shape)}")
        _check_finite("y0", y0)
    if solver == "ssn":
        rows = chunk_rows or _chunk_rows(gf, W0.shape[0])
        if workers is None:
            workers = torch.get_num_threads() if W0.device.type == "cpu" else 1
        steps = (0 if y0 is not None else _FIRST_ORDER_STEPS) if first_order_steps is None else int(first_order_steps)
        W, y, its, P, g = _ssn(W0, A, gf, lam, tol, 100 if max_iter is None else max_iter, y0, max(int(rows), 1), max(int(workers), 1), steps)
    else:
        W, y, its, P, g = _fista(W0, A, gf, lam, tol, 20000 if max_iter is None else max_iter, callback)
    gap = max(P - g, 0.0) / g if g > 0 else (0.0 if P <= 0 else math.inf)
    return SpaceSolve(W=W, y=y, iterations=its, objective=P, gap=gap, seconds=time.perf_counter() - t0, converged=gap <= tol)


# ------------------------------- semi-smooth Newton ---------------------------------------


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


@dataclass
class _Rows:
    """SSN state of a batch of rows (in the iterate dtype unless noted)."""

    idx: Tensor  # (b,) row numbers in the chunk
    a: Tensor  # (b, d_in) W_uce rows
    c0: Tensor  # (b,)    this row's share of f(W_uce)
    aC: Tensor  # (b, r)  a F
    aa: Tensor  # (b,)    γ‖a‖²
    y: Tensor  # (b, r)  dual, float64
    u: Tensor  # (b, d_in)  a − F y/(2γ)
    w: Tensor  # (b, d_in)  S_τ(u), eq. (9)
    ww: Tensor  # (b,)    ‖w‖²
    fmask: Tensor  # (b, d_in) bool: active set the Newton matrix H was built on
    H: Tensor  # (b, r, r) γI + F_Aᵀ F_A (Newton dtype)
    L: Tensor  # (b, r, r) Cholesky factor of H
    its: Tensor  # (b,) int iterations done
    stuck: Tensor  # (b,) bool: the line search found no ascent (rounding floor reached)

    def take(self, keep: Tensor) -> "_Rows":
        rows = keep.nonzero(as_tuple=True)[0]
        return _Rows(**{k: getattr(self, k).index_select(0, rows) for k in self.__dataclass_fields__})


def _chunk_rows(gf: GramFactor, d_out: int) -> int:
    """Rows per SSN batch so its state (H, L and their updates: 4·r² float32; ~12 float64
    vectors of d_in per row) stays within max(16 MiB, the float64 result W): the working
    memory of a solve is then at most about twice the size of the layer it returns, or 16 MiB.

    The 16 MiB floor matters for narrow layers (SD 1.x, d_in 768): a (1280 × 768) layer got
    33-row batches under a 4 MiB floor, and Python's per-batch, per-iteration overhead then
    cost ~12 % of the solve (72-row batches: 5.6 → 4.9 s, ``benchmarks/solver.py``)."""
    per_row = 16 * gf.rank**2 + 96 * gf.d_in
    return max(32, min(256, max(16 * 2**20, 8 * d_out * gf.d_in) // per_row))


def _ssn(W0, A, gf, lam, tol, max_iter, y0, chunk_rows, workers, first_order_steps):
    """Semi-smooth Newton on every row dual of one layer, chunk by chunk (eqs. 8–12).

    Rows are independent problems, so with ``workers`` > 1 the chunks run concurrently in that
    many threads. On a CPU every op runs single-threaded: the work is many small LAPACK and GEMM
    calls that intra-op threading barely speeds up (and whose OpenMP barriers stall beside any
    other busy process), while whole chunks side by side scale with the cores.

    Bit-identity across ``workers`` and torch thread counts. Each chunk computes exactly what it
    computes alone and the sums are taken in chunk order; what remains is the thread a chunk runs
    on. ``torch.set_num_threads`` pins MKL through ``mkl_set_num_threads_local``, which is per
    thread: a thread torch never initialised (a plain ``ThreadPoolExecutor`` worker doing only
    small ops, which never reach ``at::parallel_for``'s lazy init) runs MKL GEMMs on MKL's global
    default, every core. MKL then splits a long inner dimension across threads and sums the
    partial products in another order: a (64 × 2048) @ (2048 × 80) product differs in the last
    bit from the single-threaded one on an AVX-512 Xeon, and on MKL's AVX2 path (the one AMD EPYC
    gets, reproduced here with ``MKL_ENABLE_INSTRUCTIONS=AVX2``) already at d_in 768
    (``tests/test_determinism.py`` has the minimal reproduction). So every piece of work, κ and
    chunk 0's rows included, runs on a worker thread that first pins itself to one intra-op and
    one MKL thread (:func:`_pinned_worker`), for every ``workers`` value, 1 included: no chunk
    depends on the calling thread's state either. Bits still depend on the CPU's code path and
    the torch / MKL build, as any BLAS result does.
    """
    d_out, d_in = W0.shape
    gamma, tau, r = gf.gamma, lam / (2 * gf.gamma), gf.rank
    F = gf.F  # (d_in, r)
    hdt = _F64 if gf.cond_M > _COND_WARN else torch.float32
    Fpad = torch.cat([F, F.new_zeros(1, r)]).to(hdt)  # (d_in + 1, r), zero row for padding
    W = torch.empty(d_out, d_in, dtype=_F64, device=W0.device)
    Y = torch.empty(d_out, r, dtype=_F64, device=W0.device)
    chunks = [(lo, min(lo + chunk_rows, d_out)) for lo in range(0, d_out, chunk_rows)]
    if not chunks:  # no rows: nothing to solve, F = G = 0
        return W, Y, 0, 0.0, 0.0

    def rows_of(lo: int, hi: int) -> tuple[Tensor, Tensor]:
        a, c0 = _uce_rows(W0[lo:hi].to(_F64), gf)  # (b, d_in), (b,)
        return (a if A is None else A[lo:hi].to(_F64)), c0

    def cold_start() -> tuple[tuple[Tensor, Tensor] | None, float | None]:
        """One cold-start shrink κ for the layer, picked on chunk 0's rows (kept for its solve)."""
        if y0 is not None:
            return None, None
        first = rows_of(*chunks[0])
        return first, _pick_kappa(first[0], gf, tau)

    def solve_chunk(lo: int, hi: int) -> tuple[float, float, int]:
        a, c0 = first if lo == 0 and first is not None else rows_of(lo, hi)
        aC = a @ F  # (b, r)
        y = y0[lo:hi].clone() if y0 is not None else _cold_dual(aC, gf.s, gamma, kappa)
        P, g, its = _ssn_rows(a, aC, c0, y, F, Fpad, gamma, lam, tau, tol, max_iter, W[lo:hi], Y[lo:hi],
                              first_order_steps=first_order_steps)
        return float(P.sum() + c0.sum()), float(g.sum() + c0.sum()), its  # F(W) = Σ P + f(W_uce), eq. (7); G(Y) likewise

    if W0.device.type == "cpu":
        with _intra_op_threads(1), ThreadPoolExecutor(min(workers, len(chunks)), thread_name_prefix="erasekit-ssn",
                                                      initializer=_pinned_worker) as pool:
            first, kappa = pool.submit(cold_start).result()
            parts = list(pool.map(lambda c: solve_chunk(*c), chunks))
    else:
        first, kappa = cold_start()
        parts = [solve_chunk(*c) for c in chunks]
    P_tot, g_tot, its_max = 0.0, 0.0, 0
    for P, g, its in parts:  # chunk order: the same sums for every ``workers``
        P_tot, g_tot, its_max = P_tot + P, g_tot + g, max(its_max, its)
    return W, Y, its_max, P_tot, g_tot


def _pinned_worker() -> None:
    """Start of every SSN worker thread: one intra-op thread, and (through torch's
    ``mkl_set_num_threads_local``) one MKL thread, so this thread's BLAS calls do not depend on
    MKL's global default or on whatever thread state the caller had."""
    torch.set_num_threads(1)


@contextlib.contextmanager
def _intra_op_threads(n: int):
    """torch's intra-op thread count set to n for the block (its process-wide default for threads
    that start inside it, too), then restored in the calling thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _ssn_rows(a, aC, c0, y, F, Fpad, gamma, lam, tau, tol, max_iter, W_out, Y_out, iterate_dtype=None, first_order_steps=0):
    """Run SSN on rows a (b, d_in) from dual y; write w into W_out, y into Y_out.

    A row stops when its gap ≤ tol·(g + c0) (c0: its share of f(W_uce), so the layer-level
    ratio Σ gap / G ≤ tol follows), at the rounding floor of ∇g, or at max_iter.
    Returns per-row primal P(w) and dual g(y) (float64) and the most iterations used.

    The iterates (u, w and the (b, d_in) products; y stays float64) run in ``iterate_dtype``:
    float32 when the Newton systems are float32 and tol ≥ _F32_ITERATE_TOL, since the stopping
    gap ‖∇g‖² ≤ tol·g then lies far above float32's rounding of ∇g (about 1e-7·‖wF‖, squared:
    1e-14·g); float32 GEMMs and half the bytes per elementwise pass make the iterations about
    10 % faster overall. The certificate is always float64 (eqs. 8–10 from y): a row whose
    float64 gap misses tol is solved on in float64 from its y, so ``converged`` means the same
    for either dtype.

    ``first_order_steps`` (cold starts): the first iterations step with a diagonal model of the
    Newton matrix, γI + 2·E[F_AᵀF_A] for a random active set of the same size (E[F_AᵀF_A] =
    (|A|/d_in)·diag(s²)), instead of the factored one. From the cold dual the first Newton step
    moves a row's active set by about half its size (~140 of ~300 coordinates on SDXL shapes),
    so its factorisation is mostly wasted; two cheap steps settle the sets first, and the Newton
    steps that follow change fewer of them (SDXL shapes: about 15 % faster, SD 1.5 shapes about
    9 %; ``benchmarks/solver.py``).
    """
    hdt = Fpad.dtype
    vdt = iterate_dtype or (torch.float32 if hdt == torch.float32 and tol >= _F32_ITERATE_TOL else _F64)
    b, d_in = a.shape
    r = F.shape[1]
    a64, aC64 = a, aC  # float64, for the certificate
    Fv = F.to(vdt)  # (d_in, r)
    av, aCv = a.to(vdt), aC.to(vdt)  # y stays float64: the duals returned (and certified) are the ones iterated
    u = av - y.to(vdt) @ Fv.T / (2 * gamma)  # (b, d_in)  eq. (9)
    w = _soft(u, tau)
    eye = torch.eye(r, dtype=hdt, device=a.device)
    Fpad64 = Fpad if hdt == _F64 else torch.cat([F, F.new_zeros(1, r)])  # (d_in + 1, r) float64
    st = _Rows(
        idx=torch.arange(b, device=a.device), a=av, c0=c0.to(vdt), aC=aCv, aa=gamma * (av * av).sum(1), y=y, u=u, w=w, ww=(w * w).sum(1),
        fmask=torch.zeros(b, d_in, dtype=torch.bool, device=a.device),
        H=(gamma * eye).expand(b, r, r).clone(), L=(math.sqrt(gamma) * eye).expand(b, r, r).clone(),  # factor of the empty set
        its=torch.zeros(b, dtype=torch.long, device=a.device), stuck=torch.zeros(b, dtype=torch.bool, device=a.device),
    )
    P_out = a.new_zeros(b)
    g_out = a.new_zeros(b)
    its_max = 0
    eps = 1e-13 if vdt == _F64 else 1e-6  # relative rounding of ∇g's terms
    k = 0  # iterations of this batch
    retry = []  # float32 rows whose float64 certificate missed tol
    s2 = (Fv * Fv).sum(0)  # (r,)  s², the squared norms of F's columns
    while True:
        wF = st.w @ Fv  # (b, r)
        grad = wF - st.aC - st.y / 2  # (b, r)  ∇g, eq. (11)
        gap = (grad * grad).sum(1)  # P − g, eq. (12)
        g = st.aa - (st.aC * st.y).sum(1) - gamma * st.ww - (st.y * st.y).sum(1) / 4  # eq. (10)
        floor = (eps * (wF.norm(dim=1) + st.aC.norm(dim=1) + st.y.norm(dim=1))) ** 2  # rounding level of ∇g
        done = (gap <= tol * (g + st.c0).clamp_min(0)) | (gap <= floor) | (st.its >= max_iter) | st.stuck
        if done.any():
            rows = st.idx[done]
            P, gd, W_rows = _certify(a64[rows], aC64[rows], st.y[done], F, gamma, lam, tau)
            P_out[rows], g_out[rows], W_out[rows], Y_out[rows] = P, gd, W_rows, st.y[done]
            if vdt != _F64:
                miss = (P - gd > tol * (gd + c0[rows]).clamp_min(0)) & (st.its[done] < max_iter)
                if miss.any():
                    retry.append(rows[miss])
            its_max = max(its_max, int(st.its[done].max()))
            if done.all():
                break
            st, grad = st.take(~done), grad[~done]
        mask = st.w != 0  # (b, d_in)  active sets A
        counts = mask.sum(1)
        if k < first_order_steps:  # H ≈ γI + 2·E[F_AᵀF_A], E[F_AᵀF_A] = (|A|/d_in)·diag(s²) for a random A (FᵀF = diag(s²))
            # twice the mean: F_AᵀF_A's spread about its mean adds curvature; with the mean alone most of these
            # steps backtracked (SDXL shapes: 362 of 464 row-steps; ×2: 41), and each backtrack is a pass over (b, d_in)
            d = 2 * gamma * grad.to(vdt) / (gamma + 2 * (counts.to(vdt) / d_in)[:, None] * s2)  # (b, r)
        elif int(counts.max()) <= r // 2:  # small active sets: solve in the |A|-dim form, eq. (13)
            d = 2 * gamma * _active_solve(Fpad64, mask, counts, grad.to(_F64), gamma).to(vdt)
        else:
            _refresh_newton(st, Fpad, gamma, eye, mask)
            d = 2 * gamma * _chol_solve(st.L, grad.to(hdt)).to(vdt)  # (b, r)  Newton step −(∇²g)⁻¹∇g
        _line_search(st, d, grad, Fv, gamma, tau)
        st.its += 1
        k += 1
    if retry:  # on in float64 from the float32 duals
        rows = torch.cat(retry)
        W_rows, Y_rows = W_out.new_empty(rows.numel(), d_in), Y_out.new_empty(rows.numel(), r)
        P, gd, its = _ssn_rows(a64[rows], aC64[rows], c0[rows], Y_out[rows].clone(), F, Fpad, gamma, lam, tau, tol, max_iter,
                               W_rows, Y_rows, iterate_dtype=_F64)
        P_out[rows], g_out[rows], W_out[rows], Y_out[rows] = P, gd, W_rows, Y_rows
        its_max = max(its_max, its)
    return P_out, g_out, its_max


def _certify(a: Tensor, aC: Tensor, y: Tensor, F: Tensor, gamma: float, lam: float, tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """(P(w), g(y), w) per row with w = w(y) recomputed from scratch (eqs. 8–10).

    The iterations update u incrementally; recomputing makes W a function of the returned duals
    (a warm start from them reproduces it) and keeps rounding drift out of the certificate.
    """
    w = _soft(a - y @ F.T / (2 * gamma), tau)  # (k, d_in)  eq. (9)
    e = w - a
    z = w @ F - aC  # (k, r)  (w − a) F
    P = gamma * (e * e).sum(1) + (z * z).sum(1) + lam * w.abs().sum(1)  # eq. (8)
    return P, _dual_value(gamma * (a * a).sum(1), aC, y, w, gamma), w  # eq. (10)


def _refresh_newton(st: _Rows, Fpad: Tensor, gamma: float, eye: Tensor, mask: Tensor) -> None:
    """Bring H = γI + F_Aᵀ F_A to the current active sets and refactor the rows that changed.

    A row whose active set moved by fewer coordinates than it holds gets a rank update
    (+ newly active, − newly inactive coordinates); otherwise H is rebuilt from scratch.
    """
    # mask (b, d_in): the current active sets A, st.w != 0
    added, removed = mask & ~st.fmask, st.fmask & ~mask  # (b, d_in)
    n_chg = added.sum(1) + removed.sum(1)
    redo = (n_chg > 0).nonzero(as_tuple=True)[0]
    if not redo.numel():
        return
    full = redo.numel() == mask.shape[0]
    pick = (lambda x: x) if full else (lambda x: x.index_select(0, redo))
    mask_r, added, removed = pick(mask), pick(added), pick(removed)  # (k, d_in)
    rebuild = pick(n_chg) >= mask_r.sum(1)  # (k,)  cheaper to start over
    H = pick(st.H)  # (k, r, r)  the old H (in place when full)
    if rebuild.any():
        H[rebuild] = gamma * eye
    removed &= ~rebuild.unsqueeze(1)
    sel = torch.where(rebuild.unsqueeze(1), mask_r, added | removed)  # (k, d_in) coordinates whose f_i f_iᵀ moves H
    _add_gram(H, Fpad, sel, removed if removed.any() else None)  # + newly active, − newly inactive, in one pass
    L, info = torch.linalg.cholesky_ex(H)
    bad = (info > 0).nonzero(as_tuple=True)[0]
    if bad.numel():  # float32 breakdown (rounding drift of the updates): rebuild those in float64
        H64 = _add_gram(gamma * eye.to(_F64).expand(bad.numel(), -1, -1).clone(), Fpad.to(_F64), mask_r.index_select(0, bad))
        H[bad] = H64.to(H.dtype)
        L[bad] = torch.linalg.cholesky(H64).to(L.dtype)
    if full:
        st.H, st.L, st.fmask = H, L, mask
    else:
        st.H[redo], st.L[redo], st.fmask[redo] = H, L, mask_r


_GRAM_GROUP = 32  # rows per gather in _gram (each group padded to its longest index list)


def _add_gram(H: Tensor, Fpad: Tensor, sel: Tensor, negative: Tensor | None = None) -> Tensor:
    """H[k] += Σ_{i ∈ sel_k} ±f_i f_iᵀ in place, over rows f_i of F; − where ``negative`` (⊆ sel). Returns H.

    H (b, r, r); sel, negative (b, d_in) bool. Rows are sorted by |sel| and gathered in groups
    into (g, m, r) blocks, each padded to its own longest list with Fpad's trailing zero row, so
    padding and memory stay small; each block adds Xᵀ(σ ⊙ X) with one batched product.
    """
    counts, order = torch.sort(sel.sum(1))
    idx = _padded_indices(sel.index_select(0, order), counts, Fpad.shape[0] - 1)  # (b, m_max)
    if negative is not None:  # σ = −1 on the removed coordinates, +1 elsewhere (the pad index reads +1 of a zero row)
        sigma = 1 - 2 * torch.nn.functional.pad(negative.index_select(0, order), (0, 1)).gather(1, idx).to(Fpad.dtype)  # (b, m_max)
    for lo in range(0, sel.shape[0], _GRAM_GROUP):
        hi = min(lo + _GRAM_GROUP, sel.shape[0])
        m = int(counts[hi - 1])
        X = Fpad.index_select(0, idx[lo:hi, :m].flatten()).view(hi - lo, m, Fpad.shape[1])  # (g, m, r)
        Xs = X if negative is None else X * sigma[lo:hi, :m, None]
        H.index_add_(0, order[lo:hi], X.transpose(1, 2) @ Xs)
    return H


def _padded_indices(sel: Tensor, counts: Tensor, pad: int) -> Tensor:
    """(b, m) column indices of the True entries of sel (b, d) (row sums ``counts``), padded with ``pad``."""
    rows, cols = sel.nonzero(as_tuple=True)
    pos = torch.arange(rows.numel(), device=sel.device) - (torch.cumsum(counts, 0) - counts)[rows]
    idx = torch.full((sel.shape[0], int(counts.max()) if counts.numel() else 0), pad, dtype=torch.long, device=sel.device)
    idx[rows, pos] = cols
    return idx


def _active_solve(Fpad: Tensor, mask: Tensor, counts: Tensor, g: Tensor, gamma: float) -> Tensor:
    """(b, r) (γI + F_AᵀF_A)⁻¹ g per row through the |A| × |A| system of eq. (13), float64.

    Rows are padded to the longest active set with Fpad's zero row; a padded coordinate adds γ on
    K's diagonal and nothing else, so it changes no solution.
    """
    m = int(counts.max())
    if m == 0:
        return g / gamma  # every active set empty: H = γI
    X = Fpad.index_select(0, _padded_indices(mask, counts, Fpad.shape[0] - 1).flatten()).view(g.shape[0], m, -1)  # (b, m, r)  F_A
    K = X @ X.transpose(1, 2)  # (b, m, m)  F_A F_Aᵀ
    K.diagonal(dim1=1, dim2=2).add_(gamma)  # γI + F_A F_Aᵀ
    z = torch.cholesky_solve((X @ g.unsqueeze(2)), torch.linalg.cholesky(K))  # (b, m, 1)  K⁻¹ F_A g
    return (g - (X.transpose(1, 2) @ z).squeeze(2)) / gamma  # eq. (13)


def _chol_solve(L: Tensor, rhs: Tensor) -> Tensor:
    """(b, r) solution of L Lᵀ x = rhs for lower-triangular L (b, r, r)."""
    x = torch.linalg.solve_triangular(L, rhs.unsqueeze(2), upper=False)
    return torch.linalg.solve_triangular(L.transpose(1, 2), x, upper=True).squeeze(2)


def _step_gain(
    u0: Tensor, w0: Tensor, du: Tensor, t: float, lin: Tensor, quad: Tensor, gamma: float, tau: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(u1, w1, Δ‖w‖², g(y + t d) − g(y)) for the step u → u + du, from eq. (10).

    Δg = −t (aF·d + y·d/2) − γ Δ‖w‖² − t²‖d‖²/4, with Δ‖w‖² = Σ (w1 − w0)(w1 + w0) and
    w1 − w0 = du exactly where both are active with one sign: exact to rounding even when tiny.
    """
    u1 = u0 + du
    w1 = _soft(u1, tau)  # eq. (9)
    dw = torch.where(w0 * w1 > 0, du, w1 - w0)
    dww = (dw * (w1 + w0)).sum(1)
    return u1, w1, dww, -t * lin - gamma * dww - t * t * quad


def _line_search(st: _Rows, d: Tensor, grad: Tensor, F: Tensor, gamma: float, tau: float) -> None:
    """Armijo backtracking on g along y + t·d (t = 1, 1/2, …) per row; takes the step in place."""
    du = d @ F.T / (-2 * gamma)  # (b, d_in)  change of u = a − F y/(2γ) per unit step
    slope = (grad * d).sum(1)  # ∇g·d > 0
    lin = (st.aC * d).sum(1) + (d * st.y).sum(1) / 2  # aF·d + y·d/2
    quad = (d * d).sum(1) / 4
    u1, w1, dww, gain = _step_gain(st.u, st.w, du, 1.0, lin, quad, gamma, tau)  # t = 1 for all rows
    ok = gain >= _ARMIJO * slope
    if bool(ok.all()):
        st.y += d
        st.u, st.w, st.ww = u1, w1, st.ww + dww
        return
    todo = (~ok).nonzero(as_tuple=True)[0]
    take = ok.nonzero(as_tuple=True)[0]
    st.y[take] += d[take]
    st.u[take], st.w[take], st.ww[take] = u1[take], w1[take], st.ww[take] + dww[take]
    t = 0.5
    while todo.numel() and t > 1e-12:
        u1, w1, dww, gain = _step_gain(st.u[todo], st.w[todo], t * du[todo], t, lin[todo], quad[todo], gamma, tau)
        ok = gain >= _ARMIJO * t * slope[todo]
        take = todo[ok]
        st.y[take] += t * d[take]
        st.u[take], st.w[take], st.ww[take] = u1[ok], w1[ok], st.ww[take] + dww[ok]
        todo = todo[~ok]
        t /= 2
    st.stuck[todo] = True


# ----------------------------------------------------------------------------------------
# FISTA reference
# ----------------------------------------------------------------------------------------

_FISTA_CHECK = 10  # certificate every this many FISTA iterations (two extra GEMMs each)


def _fista(W0, A, gf, lam, tol, max_iter, callback):
    """Proximal gradient with momentum and per-row gradient restart, all rows at once.

    W ← S_{λ/L}(Y − (2/L)(Y M − R)),  Y M − R = (Y − W_uce) M = γ(Y − A) + ((Y − A)F)Fᵀ,  L = 2λ_max(M).
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


def _fista_certificate(X: Tensor, A: Tensor, c0: Tensor, F: Tensor, gamma: float, lam: float) -> tuple[float, float, Tensor]:
    """(F(X), G(y), y) with the natural dual point y = 2 (X − A) F (eqs. 7, 8, 10)."""
    E = X - A  # (d_out, d_in)
    Z = E @ F  # (d_out, r)
    P = gamma * (E * E).sum() + (Z * Z).sum() + lam * X.abs().sum() + c0.sum()  # eq. (7)+(8)
    y = 2 * Z  # (d_out, r)
    aC = A @ F
    w = _soft(A - y @ F.T / (2 * gamma), lam / (2 * gamma))  # eq. (9)
    g = _dual_value(gamma * (A * A).sum(1), aC, y, w, gamma).sum() + c0.sum()  # eq. (10)
    return float(P), float(g), y


# ----------------------------------------------------------------------------------------
# λ for a target sparsity
# ----------------------------------------------------------------------------------------


def lam_for_sparsity(
    W0s: Sequence[Tensor],
    gf: GramFactor,
    target: float,
    *,
    tol_points: float = 0.005,
    lam0: float | None = None,
    sample_rows: int = 512,
    solve_tol: float = 1e-5,
    max_steps: int = 40,
) -> float:
    """λ such that the SPACE solutions of W0s have ``target`` share of exact zeros (± tol_points).

    One matrix gives a per-layer λ; several give one shared λ (zeros counted over all of them).
    Sparsity is measured on about ``sample_rows`` evenly spaced rows (rows are independent
    problems; each matrix gets a share ∝ d_out, at least 4, and keeps its weight in the
    count), with loose SSN solves (``solve_tol``) warm-started from the previous λ's duals.
    Only the sampled rows are converted to float64 (never a float64 copy of every matrix).
    The search runs on log λ from ``lam0`` (default: the λ at which soft-thresholding W_uce
    alone would reach the target; pass the previous layer's λ when scanning layers): see
    :func:`_lam_search`. It stops once the sample is within tol_points/2 of the target (a
    margin for the final full solve, which is the caller's) and returns the closest λ seen if
    max_steps runs out. For one layer, :func:`space_solve_sparsity` also does that final solve.
    """
    _check_target(target, tol_points, lam0)
    if isinstance(W0s, Tensor):
        raise ValueError("W0s must be a list of weight matrices; pass [W0] for a per-layer λ")
    if not len(W0s):
        raise ValueError("W0s is empty: pass at least one weight matrix")
    for i, W0 in enumerate(W0s):  # validate shapes / dtypes without converting the matrices
        W0 = torch.as_tensor(W0)
        if W0.ndim != 2 or W0.shape[1] != gf.d_in or not W0.is_floating_point():
            _as_weight(W0, gf, f"W0s[{i}]")  # raises the descriptive error
    total = sum(W0.shape[0] for W0 in W0s)
    rows, weights = [], []
    for i, W0 in enumerate(W0s):
        k = min(W0.shape[0], max(4, round(sample_rows * W0.shape[0] / total)))
        pick = torch.linspace(0, W0.shape[0] - 1, k).round().long().unique()
        rows.append(_as_weight(torch.as_tensor(W0).index_select(0, pick.to(torch.as_tensor(W0).device)), gf, f"W0s[{i}]"))
        weights.append(torch.full((pick.numel(),), W0.shape[0] / pick.numel(), dtype=_F64, device=gf.device))
    S = torch.cat(rows)  # (N, d_in) sampled rows, float64
    wt = torch.cat(weights) / (total * gf.d_in)  # zeros per sampled row → share of all entries
    A, _ = _uce_rows(S, gf)
    return _lam_search(S, A, wt, gf, target, tol_points, lam0, solve_tol, max_steps)[0]


def _check_target(target: float, tol_points: float, lam0: float | None) -> None:
    if not 0.0 < target < 1.0:
        raise ValueError(f"target sparsity must be in (0, 1), e.g. 0.85, got {target}")
    if not tol_points > 0:
        raise ValueError(f"tol_points must be > 0, got {tol_points}")
    if lam0 is not None and not (math.isfinite(lam0) and lam0 > 0):
        raise ValueError(f"lam0 must be a finite number > 0, got {lam0}")


def _lam_search(S: Tensor, A: Tensor, wt: Tensor, gf: GramFactor, target: float, tol_points: float, lam0: float | None,
                solve_tol: float, max_steps: int, y: Tensor | None = None) -> tuple[float, Tensor | None, float]:
    """(λ, duals of S at λ, sparsity of the sample at λ): the warm-started λ path of a target-sparsity search.

    S (N, d_in) float64 rows, A their W_uce rows, wt (N,) the weight of one zero of each row.
    Steps in log λ: while the target is not bracketed, a secant extrapolation through the last two
    points (×4 from the first; each step a factor in [1.25, 16]); then safeguarded secant. Each solve
    is warm-started from the previous λ's duals.
    """
    def sparsity(lam: float, y0: Tensor | None) -> tuple[float, Tensor]:
        res = space_solve(S, gf, lam, tol=solve_tol, W_uce=A, y0=y0)
        return float(((res.W == 0).sum(1).to(_F64) * wt).sum()), res.y

    if lam0 is None:  # τ = λ/(2γ) at the target quantile of |W_uce|: soft-thresholding W_uce alone would hit the target
        flat = A.abs().flatten()
        lam0 = 2 * gf.gamma * float(flat.kthvalue(max(1, int(target * flat.numel()))).values)
    lam = max(lam0, 1e-12)
    lo = hi = last = None  # (log λ, sparsity) on each side of the target; the previous point
    best = (math.inf, lam, y, math.nan)
    for _ in range(max_steps):
        s, y = sparsity(lam, y)
        if abs(s - target) < best[0]:
            best = (abs(s - target), lam, y, s)
        if abs(s - target) <= tol_points / 2:
            return lam, y, s
        x = math.log(lam)
        prev, last = last, (x, s)
        if s < target:
            lo = last
        else:
            hi = last
        if hi is None or lo is None:  # not bracketed: secant extrapolation through the last two points, else ×4
            up = hi is None
            step = math.log(4)
            if prev is not None and (last[1] - prev[1]) * (last[0] - prev[0]) > 0:
                step = abs((target - s) * (last[0] - prev[0]) / (last[1] - prev[1])) * 1.1  # overshoot a little: bracket
            step = min(max(step, math.log(1.25)), math.log(16))
            x += step if up else -step
        else:
            width = hi[0] - lo[0]
            x = lo[0] + (target - lo[1]) * width / max(hi[1] - lo[1], 1e-12)  # secant in log λ
            x = min(max(x, lo[0] + 0.1 * width), hi[0] - 0.1 * width)  # stay inside the bracket
        lam = math.exp(x)
    return best[1], best[2], best[3]


# Entries a per-layer λ search counts zeros over: a fixed count gives a fixed binomial error of the
# sample's sparsity, √(0.85·0.15/2¹⁸) ≈ 0.07 points, well inside tol_points/2 (0.25 points); the
# rows a layer needs for it shrink as d_in grows (SD 1.x: 342 rows, SDXL: 128).
_SAMPLE_ENTRIES = 2**18


def space_solve_sparsity(
    W0,
    gf: GramFactor,
    target: float,
    *,
    tol: float = 1e-6,
    tol_points: float = 0.005,
    lam0: float | None = None,
    sample_rows: int | None = None,
    solve_tol: float = 1e-5,
    max_iter: int | None = None,
    max_steps: int = 40,
) -> tuple[SpaceSolve, float]:
    """(solve, λ): SPACE on one weight with λ chosen so that ``target`` of its entries are exact zeros (± tol_points).

    The per-layer target-sparsity fit as one warm-started λ path instead of a search followed by
    an unrelated solve: λ is searched (:func:`_lam_search`) on ``sample_rows`` evenly spaced rows
    (all rows when d_out ≤ sample_rows; default: _SAMPLE_ENTRIES / d_in rows, within [64, 512])
    with loose solves, and the final solve at ``tol`` starts from the search's duals on those
    rows (cold start elsewhere), so it mostly tightens. If the
    whole layer then misses the target by more than tol_points (an unrepresentative sample), the
    search continues on every row from the final duals.
    """
    t0 = time.perf_counter()
    _check_target(target, tol_points, lam0)
    W0 = _as_weight(W0, gf)
    d_out = W0.shape[0]
    A, _ = _uce_rows(W0, gf)  # (d_out, d_in)  W_uce
    if sample_rows is None:
        sample_rows = min(512, max(64, math.ceil(_SAMPLE_ENTRIES / gf.d_in)))
    pick = torch.linspace(0, d_out - 1, min(d_out, sample_rows), device=W0.device).round().long().unique()
    wt = torch.full((pick.numel(),), 1.0 / (pick.numel() * gf.d_in), dtype=_F64, device=W0.device)
    lam, yS, _ = _lam_search(W0[pick], A[pick], wt, gf, target, tol_points, lam0, solve_tol, max_steps)
    if pick.numel() == d_out:
        y0 = yS
    else:
        tau = lam / (2 * gf.gamma)
        y0 = _cold_dual(A @ gf.F, gf.s, gf.gamma, _pick_kappa(A, gf, tau))  # (d_out, r)
        y0[pick] = yS
    # most rows start cold (the sample's duals cover pick.numel() of d_out): they get the cold start's first-order steps
    res = space_solve(W0, gf, lam, tol=tol, W_uce=A, y0=y0, max_iter=max_iter,
                      first_order_steps=None if pick.numel() == d_out else _FIRST_ORDER_STEPS)
    if abs(res.sparsity - target) > tol_points:  # the sample misled: continue the path on all rows
        wt = torch.full((d_out,), 1.0 / (d_out * gf.d_in), dtype=_F64, device=W0.device)
        lam, y, _ = _lam_search(W0, A, wt, gf, target, tol_points, lam, solve_tol, max_steps, y=res.y)
        res = space_solve(W0, gf, lam, tol=tol, W_uce=A, y0=y, max_iter=max_iter)
    res.seconds = time.perf_counter() - t0  # the whole path, search included
    return res, lam


# ----------------------------------------------------------------------------------------
# Projectors in the text-embedding space (CURE, PURE's text basis, SPEED's null space)
# ----------------------------------------------------------------------------------------
#
# A (soft) projector is given by an orthonormal basis V (d, k) and weights w ∈ [0, 1]^k:
#
#     P = V diag(w) Vᵀ                                                                  (14)
#
# hard projectors have w = 1. The edit right-multiplies W0 by E = I − P_F (I − P_R):
#
#     W0 E − W0 = −W0 V_F diag(w_F) [V_Fᵀ − (V_Fᵀ V_R) diag(w_R) V_Rᵀ] = B A            (15)
#
# with B (d_out, k_F), A (k_F, d_in): a low-rank delta of rank ≤ k_F.


def energy_shares(s: Tensor) -> Tensor:
    """r_i = σ_i² / Σ_j σ_j², the share of the total energy on each singular direction (CURE's r)."""
    s2 = s.to(_F64) ** 2
    return s2 / s2.sum().clamp_min(1e-300)


def spectral_expansion(r: Tensor, alpha: float) -> Tensor:
    """CURE's expansion f(r) = α r / ((α − 1) r + 1) of energy shares r ∈ [0, 1] (α ≥ 1).

    f(0) = 0, f(1) = 1, monotone; α = 1 leaves r as is, α → ∞ tends to the hard projector (f = 1 on r > 0).
    """
    if not (math.isfinite(alpha) and alpha >= 1.0):
        raise ValueError(f"alpha must be a finite number >= 1 (1 keeps the energy shares, larger strengthens the projector), got {alpha}")
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


def projector_delta_right(W0: Tensor, V_F: Tensor, V_R: Tensor, w_F: Tensor | None = None, w_R: Tensor | None = None) -> tuple[Tensor, Tensor]:
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
