"""Low-rank factors of an edit's weight change ΔW = W − W0, for the LoRA formats.

A LoRA carries ΔW = B A (B: d_out × r, A: r × d_in; loaders add (alpha / r) · B A with alpha = r).
Per layer:

* a ``lowrank`` edit already is B A (UCE, PURE, ACE): written as stored, exact;
* a ``dense`` or ``csr`` edit is examined numerically: a randomized range finder (Halko, Martinsson
  & Tropp 2011, alg. 4.1) probes ΔW with k Gaussian vectors; when the residual is at fp32 rounding
  level, ΔW has a small numerical rank and is written exactly (dense UCE, whose ΔW has rank ≤ the
  number of token columns, is such a case);
* otherwise (SPACE: a sparse new weight has a full-rank delta) only ``rank=k`` gives a LoRA: the
  truncated SVD ΔW_k = U_k S_k V_kᵀ, the best rank-k approximation (Eckart–Young), with its relative
  error ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F reported per layer and in total.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._common import ExportError

_EPS32 = torch.finfo(torch.float32).eps
_OVERSAMPLE = 8
MAX_PROBE_RANK = (
    256  # without --rank, a dense / CSR delta of higher numerical rank is refused (probing costs O(d_out·d_in·k))
)


@dataclass
class Factors:
    """ΔW ≈ B A for one layer, with how well it holds."""

    B: torch.Tensor  # (d_out, r) float32
    A: torch.Tensor  # (r, d_in) float32
    delta_norm: float  # ‖ΔW‖_F
    residual: float  # ‖ΔW − B A‖_F
    exact: bool  # residual at fp32 rounding level of the edited weight

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def rel_error(self) -> float:
        return self.residual / self.delta_norm if self.delta_norm > 0 else 0.0


def layer_delta(le, W0: torch.Tensor) -> torch.Tensor:
    """ΔW = W − W0 (d_out, d_in) in float64, from the layer's stored new weight and the live base weight."""
    W0 = W0.detach().to("cpu", torch.float64)
    if le.kind == "lowrank":
        return le.tensors["weight.lora_B"].double() @ le.tensors["weight.lora_A"].double()
    return le.materialize(W0).double() - W0


def tolerance(W_new_norm: float, dtype: torch.dtype = torch.float32) -> float:
    """Frobenius residual accepted as exact: one epsilon of the pipeline's dtype times ‖W‖_F
    (rounding W to that dtype already leaves ≈ 0.3 ε ‖W‖_F)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else _EPS32
    return max(eps, _EPS32) * W_new_norm


def _split(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced factors B = U √S (d_out, r), A = √S Vᵀ (r, d_in)."""
    root = S.sqrt()
    return (U * root).to(torch.float32).contiguous(), (root[:, None] * Vh).to(torch.float32).contiguous()


def _smallest_rank(S: torch.Tensor, base_residual2: float, tol: float) -> int:
    """Smallest r with ‖tail of S beyond r‖² + base_residual² ≤ tol² (S descending)."""
    tail2 = torch.flip(torch.cumsum(torch.flip(S.double() ** 2, [0]), 0), [0])  # tail2[i] = Σ_{j ≥ i} S_j²
    for r in range(S.numel() + 1):
        rest = float(tail2[r]) if r < S.numel() else 0.0
        if rest + base_residual2 <= tol * tol:
            return r
    return S.numel()


def numerical_factors(dW: torch.Tensor, tol: float, max_rank: int, seed: int = 0) -> Factors | None:
    """Exact factors of ΔW when its numerical rank is ≤ ``max_rank`` (residual ≤ ``tol``), else None.

    Cost O(d_out · d_in · k) with k = max_rank + 8: a range finder, not a full SVD.
    """
    d_out, d_in = dW.shape
    norm = float(dW.norm())
    if norm <= tol:
        return Factors(
            dW.new_zeros(d_out, 0, dtype=torch.float32), dW.new_zeros(0, d_in, dtype=torch.float32), norm, norm, True
        )
    k = min(max_rank + _OVERSAMPLE, d_out, d_in)
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(d_in, k, generator=gen, dtype=torch.float64)  # (d_in, k) Gaussian test matrix
    Q, _ = torch.linalg.qr(dW @ omega)  # (d_out, k) orthonormal basis of the sampled range
    small = Q.T @ dW  # (k, d_in)
    base2 = max(norm**2 - float(small.norm()) ** 2, 0.0)  # ‖(I − QQᵀ) ΔW‖²
    if base2 > tol * tol:
        return None
    U, S, Vh = torch.linalg.svd(small, full_matrices=False)  # small = U S Vh, so ΔW ≈ (Q U) S Vh
    r = _smallest_rank(S, base2, tol)
    if r > max_rank:
        return None
    B, A = _split(Q @ U[:, :r], S[:r], Vh[:r])
    return Factors(B, A, norm, float((dW - B.double() @ A.double()).norm()), True)


def truncated_factors(dW: torch.Tensor, k: int) -> Factors:
    """Best rank-k approximation of ΔW (truncated SVD; Eckart–Young)."""
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    k = min(k, S.numel())
    B, A = _split(U[:, :k], S[:k], Vh[:k])
    norm = float(dW.norm())
    return Factors(B, A, norm, float((dW - B.double() @ A.double()).norm()), False)


def lowrank_truncation(B: torch.Tensor, A: torch.Tensor, k: int) -> Factors:
    """Best rank-k approximation of a stored B A (r > k) via QR of both factors: O((d_out + d_in) r²)."""
    Qb, Rb = torch.linalg.qr(B.double())  # B = Qb Rb, (d_out, r), (r, r)
    Qa, Ra = torch.linalg.qr(A.double().T)  # Aᵀ = Qa Ra
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T)  # B A = Qb (Rb Raᵀ) Qaᵀ
    norm = float(S.norm())
    Bk, Ak = _split(Qb @ U[:, :k], S[:k], Vh[:k] @ Qa.T)
    return Factors(Bk, Ak, norm, float(S[k:].norm()), False)


def _break_even(d_out: int, d_in: int) -> int:
    """The largest rank whose factors (r · (d_out + d_in)) are no larger than the dense matrix."""
    return max(1, (d_out * d_in) // (d_out + d_in))


def exact_formats(edit) -> str:
    """The registered formats that carry any edit of the edit's family exactly (no rank to choose), quoted and joined:
    "'diff', 'diffusers' or 'single-file'" for the UNets, FLUX's / SD3's own single files for them."""
    from ..models.families import families
    from .base import SD_ONLY, list_formats

    name = edit.base.get("family") or "sd"
    fam = families().get(name)
    kohya = fam.kohya if fam is not None else True
    names = [
        repr(n)
        for n, f in list_formats().items()
        if "rank" not in f.options and f.takes(name) and (kohya or n not in SD_ONLY)
    ]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def edit_factors(edit, unet, rank: int | None = None, progress: bool = False) -> dict[str, Factors]:
    """Factors of every layer of ``edit`` against the base weights in ``unet``.

    Without ``rank``: exact factors, or an :class:`ExportError` (at the first layer whose ΔW is not
    numerically low-rank) naming the alternatives. With ``rank``: exact where ΔW has numerical rank
    ≤ ``rank``, else the truncated SVD of rank ``rank``.
    """
    from tqdm.auto import tqdm

    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ExportError(f"rank must be a positive integer, got {rank!r}")
    out: dict[str, Factors] = {}
    for path, le in tqdm(edit.layers.items(), desc="low-rank factors", disable=not progress, leave=False):
        if le.kind == "lowrank":
            B, A = le.tensors["weight.lora_B"], le.tensors["weight.lora_A"]
            if rank is None or B.shape[1] <= rank:
                norm = float((B.double() @ A.double()).norm())
                out[path] = Factors(B.float().contiguous(), A.float().contiguous(), norm, 0.0, True)
            else:
                out[path] = lowrank_truncation(B, A, rank)
            continue
        if unet is None:
            raise ExportError(
                f"layer {path!r} stores a {le.kind} weight: a LoRA of it needs the base pipeline (pass pipe=...)"
            )
        W0 = unet.get_submodule(path).weight
        dW = layer_delta(le, W0)
        tol = tolerance(float(le.materialize(W0).double().norm()), W0.dtype)
        cap = min(_break_even(*dW.shape), MAX_PROBE_RANK if rank is None else rank)
        f = numerical_factors(dW, tol, cap)
        if f is None and rank is None:
            raise ExportError(
                f"this {edit.method} edit cannot be an exact LoRA: layer {path!r} ({le.kind} storage) changes its "
                "weight by a "
                f"ΔW of numerical rank > {cap}. Export it exactly as {exact_formats(edit)}, "
                "or pass --rank K for a truncated-SVD LoRA (its relative error is reported)"
            )
        if f is None:
            assert rank is not None  # refused above otherwise
            f = truncated_factors(dW, rank)
        out[path] = f
    return out


def total_rel_error(factors: dict[str, Factors]) -> float:
    """‖ΔW − B A‖_F / ‖ΔW‖_F over all layers stacked."""
    num = sum(f.residual**2 for f in factors.values())
    den = sum(f.delta_norm**2 for f in factors.values())
    return (num / den) ** 0.5 if den > 0 else 0.0
