"""SPACE (Novello & Tonello, arXiv 2605.10198) on one weight: the objective, the result, the solver choice.

    SPACE: min_W F(W) = f(W) + λ‖W‖₁                                               (4)

with f from eq. (1). Only the abstract and figure captions of the paper are public; this
formulation (UCE's three quadratic terms plus an elementwise L1 penalty on the edited weight) is
erasekit's reconstruction, not the authors' code (DESIGN §5). Solvers: ``"ssn"``
(:mod:`erasekit.linalg.ssn`, default) and ``"fista"`` (:mod:`erasekit.linalg.fista`, the reference);
both certify their result with the duality gap of :mod:`erasekit.linalg.dual`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .fista import _fista
from .gram import _F64, GramFactor, TensorLike, _as_weight, _check_finite
from .ssn import _FIRST_ORDER_STEPS, _chunk_rows, _ssn

__all__ = ["space_objective", "SpaceSolve", "space_solve"]


def space_objective(W: TensorLike, W0: TensorLike, gf: GramFactor, lam: float) -> float:
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
    W0: TensorLike,
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
            raise ValueError(
                f"y0 must be (d_out, r) = {(W0.shape[0], gf.rank)} from a solve with the same "
                f"GramFactor, got {tuple(y0.shape)}"
            )
        _check_finite("y0", y0)
    if solver == "ssn":
        rows = chunk_rows or _chunk_rows(gf, W0.shape[0])
        if workers is None:
            workers = torch.get_num_threads() if W0.device.type == "cpu" else 1
        steps = (0 if y0 is not None else _FIRST_ORDER_STEPS) if first_order_steps is None else int(first_order_steps)
        W, y, its, P, g = _ssn(
            W0,
            A,
            gf,
            lam,
            tol,
            100 if max_iter is None else max_iter,
            y0,
            max(int(rows), 1),
            max(int(workers), 1),
            steps,
        )
    else:
        W, y, its, P, g = _fista(W0, A, gf, lam, tol, 20000 if max_iter is None else max_iter, callback)
    gap = max(P - g, 0.0) / g if g > 0 else (0.0 if P <= 0 else math.inf)
    return SpaceSolve(
        W=W, y=y, iterations=its, objective=P, gap=gap, seconds=time.perf_counter() - t0, converged=gap <= tol
    )
