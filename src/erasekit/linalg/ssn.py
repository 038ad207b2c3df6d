"""SPACE's default solver: semi-smooth Newton (SSN) ascent on the row duals of eq. (10), on worker threads.

Rows in batches. Each row's Newton matrix γI + F_AᵀF_A (r × r) is built in float32 over its own
active set only, kept current by signed rank updates (± f_i f_iᵀ for coordinates entering /
leaving A), and refactored (Cholesky) only for rows whose set moved — or, while every row of the
batch has |A| ≤ r/2, replaced by the |A|-dimensional system (13) built afresh. When |A| is small
next to r (many token columns, high sparsity) the Newton system is solved through the
push-through identity instead,

    (γI_r + F_AᵀF_A)⁻¹ = (I_r − F_Aᵀ(γI_|A| + F_A F_Aᵀ)⁻¹F_A)/γ,                        (13)

an |A| × |A| factorisation in place of an r × r one. An inexact float32 direction is fine
because the Armijo line search (on exact differences of (10)) only accepts ascent and the
certificate is float64. The duals y are float64; the (b, d_in) iterates u, w and their products
with F are float32 when tol ≥ 1e-9 (float64 below: float32 could not resolve such a gap), and a
row whose float64 certificate then misses tol goes on in float64. A row stops as soon as its gap
‖∇g‖² ≤ tol·(g + its share of c0), so the layer certificate (F − G)/G ≤ tol holds.
Cold start (:mod:`erasekit.linalg.dual`): y = 2(κ − 1)(aF)(I + κ diag(s²)/γ)⁻¹, the dual of a
linear shrink w ≈ κ·u, with κ picked per call by the largest dual value on a row sample, then two
steps with a diagonal model of the Newton matrix before the first factorisation; or warm start
from given duals (λ scans). On a CPU the row chunks run side by side on torch's thread count of
worker threads, every op single-threaded; see :func:`_ssn` for what is bit-identical across
worker and thread counts and why.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from .dual import _cold_dual, _dual_value, _pick_kappa, _soft
from .gram import _COND_WARN, _F64, GramFactor
from .uce import _uce_rows

_ARMIJO = 1e-4  # sufficient-increase constant of the dual line search
_FIRST_ORDER_STEPS = 2  # diagonal-model steps before Newton on a cold start (see _ssn_rows)
_F32_ITERATE_TOL = 1e-9  # SSN iterates in float32 for gap tolerances at least this loose (see _ssn_rows)


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

    def take(self, keep: Tensor) -> _Rows:
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


def _ssn(
    W0: Tensor,
    A: Tensor | None,
    gf: GramFactor,
    lam: float,
    tol: float,
    max_iter: int,
    y0: Tensor | None,
    chunk_rows: int,
    workers: int,
    first_order_steps: int,
) -> tuple[Tensor, Tensor, int, float, float]:
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
        if y0 is not None:
            y = y0[lo:hi].clone()
        else:
            assert kappa is not None  # cold_start() picks κ whenever there is no y0
            y = _cold_dual(aC, gf.s, gamma, kappa)
        P, g, its = _ssn_rows(
            a,
            aC,
            c0,
            y,
            F,
            Fpad,
            gamma,
            lam,
            tau,
            tol,
            max_iter,
            W[lo:hi],
            Y[lo:hi],
            first_order_steps=first_order_steps,
        )
        return float(P.sum() + c0.sum()), float(g.sum() + c0.sum()), its  # F(W) = Σ P + f(W_uce), eq. (7); G(Y) too

    if W0.device.type == "cpu":
        with (
            _intra_op_threads(1),
            ThreadPoolExecutor(
                min(workers, len(chunks)), thread_name_prefix="erasekit-ssn", initializer=_pinned_worker
            ) as pool,
        ):
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
def _intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to n for the block (its process-wide default for threads
    that start inside it, too), then restored in the calling thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _ssn_rows(
    a: Tensor,
    aC: Tensor,
    c0: Tensor,
    y: Tensor,
    F: Tensor,
    Fpad: Tensor,
    gamma: float,
    lam: float,
    tau: float,
    tol: float,
    max_iter: int,
    W_out: Tensor,
    Y_out: Tensor,
    iterate_dtype: torch.dtype | None = None,
    first_order_steps: int = 0,
) -> tuple[Tensor, Tensor, int]:
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
        idx=torch.arange(b, device=a.device),
        a=av,
        c0=c0.to(vdt),
        aC=aCv,
        aa=gamma * (av * av).sum(1),
        y=y,
        u=u,
        w=w,
        ww=(w * w).sum(1),
        fmask=torch.zeros(b, d_in, dtype=torch.bool, device=a.device),
        H=(gamma * eye).expand(b, r, r).clone(),
        L=(math.sqrt(gamma) * eye).expand(b, r, r).clone(),  # factor of the empty set
        its=torch.zeros(b, dtype=torch.long, device=a.device),
        stuck=torch.zeros(b, dtype=torch.bool, device=a.device),
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
        if k < first_order_steps:
            # H ≈ γI + 2·E[F_AᵀF_A], E[F_AᵀF_A] = (|A|/d_in)·diag(s²) for a random A (FᵀF = diag(s²)).
            # Twice the mean: F_AᵀF_A's spread about its mean adds curvature; with the mean alone most of these
            # steps backtracked (SDXL shapes: 362 of 464 row-steps; ×2: 41), and each backtrack is a pass over
            # (b, d_in)
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
        P, gd, its = _ssn_rows(
            a64[rows],
            aC64[rows],
            c0[rows],
            Y_out[rows].clone(),
            F,
            Fpad,
            gamma,
            lam,
            tau,
            tol,
            max_iter,
            W_rows,
            Y_rows,
            iterate_dtype=_F64,
        )
        P_out[rows], g_out[rows], W_out[rows], Y_out[rows] = P, gd, W_rows, Y_rows
        its_max = max(its_max, its)
    return P_out, g_out, its_max


def _certify(
    a: Tensor, aC: Tensor, y: Tensor, F: Tensor, gamma: float, lam: float, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
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

    def pick(x: Tensor) -> Tensor:
        return x if full else x.index_select(0, redo)

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
        H64 = _add_gram(
            gamma * eye.to(_F64).expand(bad.numel(), -1, -1).clone(), Fpad.to(_F64), mask_r.index_select(0, bad)
        )
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
        neg = torch.nn.functional.pad(negative.index_select(0, order), (0, 1)).gather(1, idx)  # (b, m_max)
        sigma = 1 - 2 * neg.to(Fpad.dtype)  # (b, m_max)
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
    m = int(counts.max()) if counts.numel() else 0
    idx = torch.full((sel.shape[0], m), pad, dtype=torch.long, device=sel.device)
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
    idx = _padded_indices(mask, counts, Fpad.shape[0] - 1)  # (b, m)
    X = Fpad.index_select(0, idx.flatten()).view(g.shape[0], m, -1)  # (b, m, r)  F_A
    K = X @ X.transpose(1, 2)  # (b, m, m)  F_A F_Aᵀ
    K.diagonal(dim1=1, dim2=2).add_(gamma)  # γI + F_A F_Aᵀ
    z = torch.cholesky_solve((X @ g.unsqueeze(2)), torch.linalg.cholesky(K))  # (b, m, 1)  K⁻¹ F_A g
    return (g - (X.transpose(1, 2) @ z).squeeze(2)) / gamma  # eq. (13)


def _chol_solve(L: Tensor, rhs: Tensor) -> Tensor:
    """(b, r) solution of L Lᵀ x = rhs for lower-triangular L (b, r, r)."""
    x = torch.linalg.solve_triangular(L, rhs.unsqueeze(2), upper=False)
    out: Tensor = torch.linalg.solve_triangular(L.transpose(1, 2), x, upper=True)
    return out.squeeze(2)


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
