"""λ for a target sparsity: the warm-started λ path of SPACE (eq. 4) over one or several weights."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor

from .dual import _cold_dual, _pick_kappa
from .gram import _F64, GramFactor, TensorLike, _as_weight
from .space import SpaceSolve, space_solve
from .ssn import _FIRST_ORDER_STEPS
from .uce import _uce_rows

__all__ = ["lam_for_sparsity", "space_solve_sparsity"]


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
        picked = torch.as_tensor(W0).index_select(0, pick.to(torch.as_tensor(W0).device))
        rows.append(_as_weight(picked, gf, f"W0s[{i}]"))
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


def _lam_search(
    S: Tensor,
    A: Tensor,
    wt: Tensor,
    gf: GramFactor,
    target: float,
    tol_points: float,
    lam0: float | None,
    solve_tol: float,
    max_steps: int,
    y: Tensor | None = None,
) -> tuple[float, Tensor | None, float]:
    """(λ, duals of S at λ, sparsity of the sample at λ): the warm-started λ path of a target-sparsity search.

    S (N, d_in) float64 rows, A their W_uce rows, wt (N,) the weight of one zero of each row.
    Steps in log λ: while the target is not bracketed, a secant extrapolation through the last two
    points (×4 from the first; each step a factor in [1.25, 16]); then safeguarded secant. Each solve
    is warm-started from the previous λ's duals.
    """

    def sparsity(lam: float, y0: Tensor | None) -> tuple[float, Tensor]:
        res = space_solve(S, gf, lam, tol=solve_tol, W_uce=A, y0=y0)
        return float(((res.W == 0).sum(1).to(_F64) * wt).sum()), res.y

    if lam0 is None:  # τ = λ/(2γ) at the target quantile of |W_uce|: soft-thresholding W_uce alone hits the target
        flat = A.abs().flatten()
        lam0 = 2 * gf.gamma * float(flat.kthvalue(max(1, int(target * flat.numel()))).values)
    lam = max(lam0, 1e-12)
    lo: tuple[float, float] | None
    hi: tuple[float, float] | None
    last: tuple[float, float] | None
    prev: tuple[float, float] | None
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
                # overshoot a little: bracket
                step = abs((target - s) * (last[0] - prev[0]) / (last[1] - prev[1])) * 1.1
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
    W0: TensorLike,
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
    """(solve, λ): SPACE on one weight, λ chosen so that ``target`` of its entries are exact zeros (± tol_points).

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
        if yS is not None:
            y0[pick] = yS
    # most rows start cold (the sample's duals cover pick.numel() of d_out): they get the cold start's first-order steps
    res = space_solve(
        W0,
        gf,
        lam,
        tol=tol,
        W_uce=A,
        y0=y0,
        max_iter=max_iter,
        first_order_steps=None if pick.numel() == d_out else _FIRST_ORDER_STEPS,
    )
    if abs(res.sparsity - target) > tol_points:  # the sample misled: continue the path on all rows
        wt = torch.full((d_out,), 1.0 / (d_out * gf.d_in), dtype=_F64, device=W0.device)
        lam, y, _ = _lam_search(W0, A, wt, gf, target, tol_points, lam, solve_tol, max_steps, y=res.y)
        res = space_solve(W0, gf, lam, tol=tol, W_uce=A, y0=y, max_iter=max_iter)
    res.seconds = time.perf_counter() - t0  # the whole path, search included
    return res, lam
