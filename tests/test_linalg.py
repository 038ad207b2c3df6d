"""Property tests of erasekit.linalg (UCE closed form, SPACE solvers, λ for a target sparsity)."""

from __future__ import annotations

import math

import pytest
import torch

from erasekit import linalg
from erasekit.linalg import lam_search, ssn, uce

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def make_problem(d_out=12, d_in=32, n_e=3, n_p=6, seed=0, scale=3.0, duplicate=False):
    g = torch.Generator().manual_seed(seed)
    W0 = 0.02 * torch.randn(d_out, d_in, generator=g, dtype=F64)
    C_E = scale * torch.randn(d_in, n_e, generator=g, dtype=F64) / math.sqrt(d_in) * 4
    C_G = scale * torch.randn(d_in, n_e, generator=g, dtype=F64) / math.sqrt(d_in) * 4
    C_P = scale * torch.randn(d_in, n_p, generator=g, dtype=F64) / math.sqrt(d_in) * 4
    if duplicate:  # repeated preserve tokens: C̃ loses column rank
        C_P = torch.cat([C_P, C_P[:, :2]], dim=1)
    return W0, C_E, C_G, C_P


def dense_uce(W0, gf):
    """R M⁻¹ straight from the definition, with a dense solve."""
    M = gf.gamma * torch.eye(gf.d_in, dtype=F64) + gf.C @ gf.C.T
    R = gf.gamma * W0 + W0 @ gf.B @ gf.C.T
    return torch.linalg.solve(M, R.T).T


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ------------------------------------------------------------------------------------ UCE


@pytest.mark.parametrize(
    "d_in,n_e,n_p,duplicate",
    [(32, 3, 6, False), (32, 3, 6, True), (10, 6, 14, False)],  # n < d_in, rank-deficient C̃, n ≥ d_in
)
def test_uce_equals_dense_formula(d_in, n_e, n_p, duplicate):
    W0, C_E, C_G, C_P = make_problem(d_in=d_in, n_e=n_e, n_p=n_p, duplicate=duplicate)
    gf = linalg.gram_factor(C_E, C_G, C_P, alpha=1.7, beta=0.6, gamma=0.3)
    W = linalg.uce_weight(W0.float(), gf)
    assert W.dtype == F64 and W.shape == W0.shape
    assert rel(W, dense_uce(W0.float().double(), gf)) < 1e-10
    Bf, Af = linalg.uce_delta_factors(W0, gf)
    assert Bf.shape == (W0.shape[0], gf.rank) and Af.shape == (gf.rank, d_in)
    assert rel(W0 + Bf @ Af, dense_uce(W0, gf)) < 1e-10
    # the constant f(W_uce) used by the SPACE certificate equals the objective evaluated directly
    A, c0 = uce._uce_rows(W0, gf)
    assert c0.sum().item() == pytest.approx(linalg.space_objective(A, W0, gf, 0.0), rel=1e-10)


def test_uce_maps_erase_to_guide_and_keeps_preserve():
    W0, C_E, C_G, C_P = make_problem(d_in=48, n_e=4, n_p=8)
    W = linalg.uce_weight(W0, linalg.gram_factor(C_E, C_G, C_P, gamma=1e-4))
    assert rel(W @ C_E, W0 @ C_G) < 1e-3  # erased tokens now produce the guide's keys/values
    assert rel(W @ C_P, W0 @ C_P) < 1e-3  # preserved tokens are untouched
    W_soft = linalg.uce_weight(W0, linalg.gram_factor(C_E, C_G, C_P, gamma=100.0))
    assert rel(W_soft, W0) < rel(W, W0)  # a large γ keeps the weight closer to W0


# ---------------------------------------------------------------------------------- SPACE


@pytest.mark.parametrize("solver", ["ssn", "fista"])
def test_space_with_zero_lambda_is_uce(solver):
    W0, C_E, C_G, C_P = make_problem()
    gf = linalg.gram_factor(C_E, C_G, C_P)
    res = linalg.space_solve(W0, gf, 0.0, solver=solver, tol=1e-12)
    assert res.converged
    assert rel(res.W, linalg.uce_weight(W0, gf)) < 1e-8


def lasso_row_reference(a, gf, lam):
    """The row problem (w − a) M (w − a)ᵀ + λ‖w‖₁ solved by scikit-learn's coordinate descent."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    M = gf.gamma * torch.eye(gf.d_in, dtype=F64) + gf.C @ gf.C.T
    X = torch.linalg.cholesky(M).T  # XᵀX = M
    t = X @ a  # ‖X w − t‖² = (w − a) M (w − a)ᵀ
    n_samples = X.shape[0]
    model = sklearn.Lasso(alpha=lam / (2 * n_samples), fit_intercept=False, tol=1e-14, max_iter=1_000_000)
    model.fit(X.numpy(), t.numpy())
    return torch.from_numpy(model.coef_).to(F64)


@pytest.mark.parametrize("d_in,n_e,n_p", [(24, 2, 5), (10, 6, 14)])
def test_space_rows_agree_with_sklearn_lasso(d_in, n_e, n_p):
    W0, C_E, C_G, C_P = make_problem(d_out=4, d_in=d_in, n_e=n_e, n_p=n_p, scale=1.0, seed=3)
    gf = linalg.gram_factor(C_E, C_G, C_P, gamma=0.5)
    A = linalg.uce_weight(W0, gf)
    for lam in (0.002, 0.01, 0.04):
        res = linalg.space_solve(W0, gf, lam, tol=1e-13)
        for i in range(W0.shape[0]):
            ref = lasso_row_reference(A[i], gf, lam)
            assert torch.allclose(res.W[i], ref, atol=1e-7), (lam, i)


def test_active_set_newton_form_matches_the_r_dimensional_solve():
    """Eq. (13): (γI + F_AᵀF_A)⁻¹g through the |A| × |A| system equals the direct r × r solve,
    also for empty and padded (unequal) active sets."""
    g = torch.Generator().manual_seed(5)
    F = torch.randn(30, 12, generator=g, dtype=F64)
    Fpad = torch.cat([F, F.new_zeros(1, 12)])
    mask = torch.rand(7, 30, generator=g) < 0.2
    mask[0] = False  # empty active set
    grad = torch.randn(7, 12, generator=g, dtype=F64)
    got = ssn._active_solve(Fpad, mask, mask.sum(1), grad, 0.3)
    for i in range(7):
        FA = F[mask[i]]
        want = torch.linalg.solve(0.3 * torch.eye(12, dtype=F64) + FA.T @ FA, grad[i])
        assert torch.allclose(got[i], want, rtol=1e-10, atol=1e-12), i


def test_space_rows_agree_with_lasso_when_columns_outnumber_d_in(monkeypatch):
    """n ≥ d_in (token='all', many templates): r = d_in and the active sets are small, so SSN
    takes the |A|-dimensional Newton form; its rows must still be the Lasso solutions."""
    calls = []
    real = ssn._active_solve
    monkeypatch.setattr(ssn, "_active_solve", lambda *a: calls.append(1) or real(*a))
    W0, C_E, C_G, C_P = make_problem(d_out=5, d_in=16, n_e=10, n_p=30, scale=1.0, seed=4)
    gf = linalg.gram_factor(C_E, C_G, C_P, gamma=0.5)
    assert gf.rank == 16
    A = linalg.uce_weight(W0, gf)
    for target in (0.7, 0.9):
        lam = linalg.lam_for_sparsity([W0], gf, target)
        res = linalg.space_solve(W0, gf, lam, tol=1e-13)
        assert res.converged and res.sparsity > 0.6
        for i in range(W0.shape[0]):
            assert torch.allclose(res.W[i], lasso_row_reference(A[i], gf, lam), atol=1e-7), (lam, i)
    assert calls, "the |A|-dimensional Newton form was never used"


def test_ssn_and_fista_agree_and_certificate_bounds_true_gap():
    W0, C_E, C_G, C_P = make_problem(d_out=16, d_in=40, n_e=4, n_p=10, seed=1)
    gf = linalg.gram_factor(C_E, C_G, C_P)
    lam = 0.02
    ref = linalg.space_solve(W0, gf, lam, tol=1e-14)  # tight reference F*
    F_star = ref.objective
    assert ref.objective == pytest.approx(linalg.space_objective(ref.W, W0, gf, lam), rel=1e-12)
    assert 0.2 < ref.sparsity < 0.95
    for solver, tol in (("ssn", 1e-6), ("ssn", 1e-3), ("fista", 1e-6)):
        res = linalg.space_solve(W0, gf, lam, solver=solver, tol=tol, max_iter=200_000)
        true_gap = (linalg.space_objective(res.W, W0, gf, lam) - F_star) / F_star
        assert res.converged and res.gap <= tol, (solver, tol)
        assert res.gap >= true_gap - 1e-13, (solver, tol)  # the certificate is an upper bound
        assert res.objective == pytest.approx(linalg.space_objective(res.W, W0, gf, lam), rel=1e-11)
    fista = linalg.space_solve(W0, gf, lam, solver="fista", tol=1e-9, max_iter=200_000)
    assert torch.allclose(fista.W, ref.W, atol=5e-5)  # objective gap 1e-9 ⇒ ‖W − W*‖ ≲ 5e-5


def _iterate_dtypes(monkeypatch) -> set:
    """Record the dtype of every SSN line search (the dtype the iterates run in)."""
    seen, real = set(), ssn._line_search
    monkeypatch.setattr(ssn, "_line_search", lambda st, d, *a: seen.add(d.dtype) or real(st, d, *a))
    return seen


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_float32_iterates_are_certified_in_float64(tol, monkeypatch):
    """At loose tolerances SSN iterates in float32; the certificate is float64 and bounds the true gap,
    and the solution is the float64-iterate one to within what tol allows."""
    W0, C_E, C_G, C_P = make_problem(d_out=64, d_in=96, n_e=6, n_p=20, seed=4)
    gf = linalg.gram_factor(C_E, C_G, C_P)
    lam = 0.01
    ref = linalg.space_solve(W0, gf, lam, tol=1e-14)
    seen = _iterate_dtypes(monkeypatch)
    f32 = linalg.space_solve(W0, gf, lam, tol=tol)
    assert seen == {torch.float32}
    monkeypatch.setattr(ssn, "_F32_ITERATE_TOL", math.inf)
    seen.clear()
    f64 = linalg.space_solve(W0, gf, lam, tol=tol)
    assert seen == {F64}
    for res in (f32, f64):
        true_gap = (linalg.space_objective(res.W, W0, gf, lam) - ref.objective) / ref.objective
        assert res.converged and true_gap <= res.gap <= tol
        assert res.W.dtype == F64 and res.objective == pytest.approx(
            linalg.space_objective(res.W, W0, gf, lam), rel=1e-11
        )
    # ‖W − W*‖²_M ≤ F(W) − F*: both are within tol of the optimum, hence of each other
    bound = 2 * math.sqrt(tol * ref.objective / gf.gamma)
    assert float((f32.W - ref.W).norm()) <= bound and float((f64.W - ref.W).norm()) <= bound


def test_rows_that_float32_cannot_certify_are_finished_in_float64(monkeypatch):
    """Float32 iterates asked for a gap below their rounding stop short; the float64 certificate
    catches it and those rows go on in float64 from their duals, so ``converged`` still means gap ≤ tol."""
    W0, C_E, C_G, C_P = make_problem(d_out=32, d_in=64, n_e=4, n_p=12, seed=2)
    gf = linalg.gram_factor(C_E, C_G, C_P)
    ref = linalg.space_solve(W0, gf, 0.02, tol=1e-14)
    monkeypatch.setattr(ssn, "_F32_ITERATE_TOL", 0.0)  # float32 iterates even at tol 1e-13
    seen = _iterate_dtypes(monkeypatch)
    res = linalg.space_solve(W0, gf, 0.02, tol=1e-13)
    assert seen == {torch.float32, F64}
    assert res.converged and res.gap <= 1e-13
    assert torch.allclose(res.W, ref.W, atol=1e-7)
    assert torch.equal(
        res.W, linalg.space_solve(W0, gf, 0.02, tol=1e-13, y0=res.y).W
    )  # W is a function of the returned duals


def test_cold_starts_take_diagonal_steps_first_and_reach_the_same_optimum(monkeypatch):
    """A cold SSN start takes _FIRST_ORDER_STEPS diagonal-model steps before Newton; a warm start takes none;
    either way the solve is certified and lands on the optimum."""
    W0, C_E, C_G, C_P = make_problem(d_out=48, d_in=80, n_e=4, n_p=16, seed=9)
    gf = linalg.gram_factor(C_E, C_G, C_P)
    ref = linalg.space_solve(W0, gf, 0.015, tol=1e-14)
    steps, real = [], ssn._ssn_rows
    monkeypatch.setattr(ssn, "_ssn_rows", lambda *a, **k: steps.append(k.get("first_order_steps", 0)) or real(*a, **k))
    cold = linalg.space_solve(W0, gf, 0.015, tol=1e-10)
    assert steps and set(steps) == {ssn._FIRST_ORDER_STEPS} and ssn._FIRST_ORDER_STEPS > 0
    steps.clear()
    warm = linalg.space_solve(W0, gf, 0.015, tol=1e-10, y0=ref.y)
    assert set(steps) == {0}
    steps.clear()
    mostly_cold = linalg.space_solve(W0, gf, 0.015, tol=1e-10, y0=torch.zeros_like(ref.y), first_order_steps=2)
    assert set(steps) == {2}
    for res in (cold, warm, mostly_cold):
        assert res.converged and res.gap <= 1e-10
        assert torch.allclose(res.W, ref.W, atol=1e-6)


def test_warm_start_from_dual_saves_iterations():
    W0, C_E, C_G, C_P = make_problem(d_out=32, d_in=64, n_e=4, n_p=12, seed=2)
    gf = linalg.gram_factor(C_E, C_G, C_P)
    first = linalg.space_solve(W0, gf, 0.02, tol=1e-10)
    same = linalg.space_solve(W0, gf, 0.02, tol=1e-10, y0=first.y)
    assert same.iterations == 0 and torch.allclose(same.W, first.W, rtol=0, atol=1e-15)
    cold = linalg.space_solve(W0, gf, 0.021, tol=1e-10)
    warm = linalg.space_solve(W0, gf, 0.021, tol=1e-10, y0=first.y)
    assert warm.converged and warm.iterations < cold.iterations
    assert torch.allclose(warm.W, cold.W, atol=1e-9)


def kkt_violation(W, W0, gf, lam):
    """Largest violation of 0 ∈ 2(W − W_uce)M + λ∂‖W‖₁, relative to λ."""
    A = linalg.uce_weight(W0, gf)
    G = 2 * (gf.gamma * (W - A) + ((W - A) @ gf.C) @ gf.C.T)  # ∇f(W) = 2(W − W_uce) M
    on = W != 0
    return float(torch.where(on, (G + lam * torch.sign(W)).abs(), (G.abs() - lam).clamp_min(0)).max()) / lam


def test_ill_conditioned_system_warns_and_still_solves():
    W0, C_E, C_G, C_P = make_problem(d_out=8, d_in=40, n_e=4, n_p=8, seed=6)
    with pytest.warns(RuntimeWarning, match="ill-conditioned"):
        gf = linalg.gram_factor(30 * C_E, 30 * C_G, 30 * C_P, gamma=1e-3)  # cond(M) ≈ 1e9: float64 Newton systems
    assert gf.cond_M > 1e8
    res = linalg.space_solve(W0, gf, 0.01, tol=1e-10)
    assert res.converged and 0.1 < res.sparsity < 0.95
    assert kkt_violation(res.W, W0, gf, 0.01) < 1e-5


def test_half_precision_weights_are_solved_in_float64():
    W0, C_E, C_G, C_P = make_problem()
    gf = linalg.gram_factor(C_E.half(), C_G.half(), C_P.half())
    res = linalg.space_solve(W0.half(), gf, 0.01)
    assert res.W.dtype == F64 and res.converged


# ------------------------------------------------------------------------ target sparsity


@pytest.mark.parametrize("target", [0.5, 0.85])
def test_lam_for_sparsity_shared_and_per_layer(target):
    gf_parts = make_problem(d_in=96, n_e=4, n_p=12, seed=4)[1:]
    gf = linalg.gram_factor(*gf_parts)
    g = torch.Generator().manual_seed(5)
    weights = [0.02 * torch.randn(d_out, 96, generator=g, dtype=F64) for d_out in (24, 40, 64)]
    lam = linalg.lam_for_sparsity(weights, gf, target)
    zeros = sum(int((linalg.space_solve(W, gf, lam).W == 0).sum()) for W in weights)
    assert abs(zeros / sum(W.numel() for W in weights) - target) <= 0.01
    lam_one = linalg.lam_for_sparsity([weights[2]], gf, target)
    assert abs(linalg.space_solve(weights[2], gf, lam_one).sparsity - target) <= 0.01


@pytest.mark.parametrize("d_in", [256, 1024])
def test_per_layer_target_sparsity_solve_hits_the_target_and_is_the_fixed_lambda_solve(d_in):
    """space_solve_sparsity searches λ on a row sample (2¹⁸ / d_in rows, ≥ 64) and finishes on every row:
    the layer lands within tol_points of the target and is the certified solve at the λ it returns."""
    W0, C_E, C_G, C_P = make_problem(d_out=300, d_in=d_in, n_e=4, n_p=12, seed=7)
    gf = linalg.gram_factor(C_E, C_G, C_P)
    res, lam = linalg.space_solve_sparsity(W0, gf, 0.85, tol=1e-8)
    assert res.converged and res.gap <= 1e-8 and abs(res.sparsity - 0.85) <= 0.005
    fixed = linalg.space_solve(W0, gf, lam, tol=1e-8)
    bound = 2 * math.sqrt(1e-8 * fixed.objective / gf.gamma)  # both within tol of the same optimum
    assert res.objective == pytest.approx(fixed.objective, rel=2e-8) and float((res.W - fixed.W).norm()) <= bound


def test_per_layer_target_sparsity_recovers_from_an_unrepresentative_sample(monkeypatch):
    """When the sampled rows differ from the rest, the whole layer misses the target after the sampled
    search; the search then continues on every row, and the layer still lands on the target."""
    W0, C_E, C_G, C_P = make_problem(d_out=200, d_in=64, n_e=4, n_p=12, seed=8)
    gf = linalg.gram_factor(C_E, C_G, C_P)
    searches, real = [], lam_search._lam_search
    monkeypatch.setattr(lam_search, "_lam_search", lambda S, *a, **k: searches.append(S.shape[0]) or real(S, *a, **k))
    res, _ = linalg.space_solve_sparsity(W0, gf, 0.85, sample_rows=64)
    assert searches == [64] and abs(res.sparsity - 0.85) <= 0.005  # a fair sample: one search
    pick = torch.linspace(0, 199, 64).round().long().unique()  # the rows a sample of 64 takes
    W0[pick] *= 20  # far denser than the others at any λ
    searches.clear()
    res, _ = linalg.space_solve_sparsity(W0, gf, 0.85, sample_rows=64)
    assert searches == [64, 200]  # the sample misled; the search went on over every row
    assert res.converged and abs(res.sparsity - 0.85) <= 0.005


# ------------------------------------------------------------------------------ bad input


def test_bad_inputs_raise_helpful_errors():
    W0, C_E, C_G, C_P = make_problem()
    bad = C_E.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="C_E contains 1 NaN"):
        linalg.gram_factor(bad, C_G, C_P)
    with pytest.raises(ValueError, match="C_G .* must pair"):
        linalg.gram_factor(C_E, C_G[:, :2], C_P)
    with pytest.raises(ValueError, match="C_P has 31 rows"):
        linalg.gram_factor(C_E, C_G, C_P[:31])
    with pytest.raises(ValueError, match="gamma must be > 0"):
        linalg.gram_factor(C_E, C_G, C_P, gamma=0.0)
    with pytest.raises(ValueError, match="numerically singular.*increase gamma"):
        linalg.gram_factor(1e4 * C_E, C_G, C_P, gamma=1e-8)
    gf = linalg.gram_factor(C_E, C_G, C_P)
    with pytest.raises(ValueError, match=r"W0 must be \(d_out, d_in=32\)"):
        linalg.uce_weight(W0[:, :31], gf)
    W_bad = W0.clone()
    W_bad[3, 3] = float("inf")
    with pytest.raises(ValueError, match="W0 contains 1 NaN/Inf"):
        linalg.space_solve(W_bad, gf, 0.01)
    with pytest.raises(ValueError, match="lam must be"):
        linalg.space_solve(W0, gf, -1.0)
    with pytest.raises(ValueError, match="y0 must be"):
        linalg.space_solve(W0, gf, 0.01, y0=torch.zeros(3, 3))
    for steps in (-1, 1.5):
        with pytest.raises(ValueError, match="first_order_steps must be an integer >= 0"):
            linalg.space_solve(W0, gf, 0.01, first_order_steps=steps)
    with pytest.raises(ValueError, match="target sparsity must be in"):
        linalg.lam_for_sparsity([W0], gf, 85)


def test_ssn_workers_give_bit_identical_results_and_restore_threads():
    """Row chunks solved concurrently (workers > 1) compute exactly what one worker computes,
    whatever torch's thread count, and leave torch's thread count as it was."""
    W0, C_E, C_G, C_P = make_problem(d_out=37, d_in=24, n_e=3, n_p=8, scale=1.0, seed=7)
    gf = linalg.gram_factor(C_E, C_G, C_P, gamma=0.5)
    lam = linalg.lam_for_sparsity([W0], gf, 0.7)
    before = torch.get_num_threads()
    ref = linalg.space_solve(W0, gf, lam, chunk_rows=5, workers=1)
    assert ref.converged and 0.5 < ref.sparsity < 0.9
    for workers, threads in ((2, before), (4, 1), (3, 2)):
        torch.set_num_threads(threads)
        try:
            got = linalg.space_solve(W0, gf, lam, chunk_rows=5, workers=workers)
            assert torch.get_num_threads() == threads
        finally:
            torch.set_num_threads(before)
        assert torch.equal(got.W, ref.W) and torch.equal(got.y, ref.y), workers
        assert got.objective == ref.objective and got.gap == ref.gap and got.iterations == ref.iterations
