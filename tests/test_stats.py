"""Paired statistics against direct computations: exact McNemar, Holm, cluster-bootstrap coverage."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest

from erasekit.evaluate import stats as S


def _mcnemar_by_enumeration(b: int, c: int) -> float:
    """Exact two-sided binomial test under H0 (p = ½): the probability of every split at least as extreme."""
    n = b + c
    if n == 0:
        return 1.0
    obs = abs(b - n / 2)
    return sum(comb(n, k) for k in range(n + 1) if abs(k - n / 2) >= obs - 1e-12) / 2**n


@pytest.mark.parametrize("b,c", [(0, 0), (0, 5), (5, 0), (3, 3), (1, 9), (7, 2), (12, 30), (40, 41), (0, 1)])
def test_mcnemar_equals_enumerated_binomial_test(b, c):
    assert S.mcnemar_exact(b, c) == pytest.approx(min(1.0, _mcnemar_by_enumeration(b, c)), rel=1e-12)


def test_mcnemar_known_values_and_scipy():
    # 0 vs 5 discordant pairs: 2 · (½)^5 = 0.0625; 1 vs 9: 2 · 11/1024
    assert S.mcnemar_exact(0, 5) == pytest.approx(0.0625)
    assert S.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in [(4, 17), (10, 10), (2, 25)]:
        assert S.mcnemar_exact(b, c) == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_discordant_counts_from_decisions():
    a = np.array([1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 1, 0, 0, 0], bool)
    assert S.discordant(a, b) == (2, 1)
    with pytest.raises(ValueError):
        S.discordant(a, b[:3])


def test_holm_textbook_steps():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    assert S.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    # Holm never rejects less than Bonferroni, never more than uncorrected
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.uniform(0, 0.2, size=7)
        h = np.array(S.holm(q))
        assert (h >= q - 1e-15).all() and (h <= np.minimum(1, 7 * q) + 1e-15).all()


def test_correct_marks_only_adjusted_significance():
    cs = [S.Comparison("erase rate", "x", "y", 0, 0, 0, 0, 0, 10, 10, 0, 0, p) for p in (0.02, 0.03, 0.5)]
    S.correct(cs)
    assert [c.significant for c in cs] == [False, False, False]  # 0.02·3 = 0.06, not < 0.05
    cs = [S.Comparison("erase rate", "x", "y", 0, 0, 0, 0, 0, 10, 10, 0, 0, p) for p in (0.001, 0.02, 0.5)]
    S.correct(cs)
    assert [c.significant for c in cs] == [True, True, False]


def test_paired_bootstrap_point_and_degenerate_cases():
    a = np.array([1, 1, 1, 0], bool)
    d, lo, hi = S.paired_bootstrap(a, a, n_boot=200)
    assert (d, lo, hi) == (0.0, 0.0, 0.0)
    b = np.array([0, 0, 1, 0], bool)
    d, lo, hi = S.paired_bootstrap(a, b, n_boot=500)
    assert d == pytest.approx(0.5) and lo <= d <= hi
    # one cluster holding every image: every resample is the full set
    d, lo, hi = S.paired_bootstrap(a, b, np.zeros(4, int), n_boot=100)
    assert lo == hi == pytest.approx(0.5)


def _simulate(rng, prompts: int, seeds: int):
    """Clustered paired decisions: a prompt's difficulty p ~ Beta(3, 2) drives both methods' images of it.

    a ~ Bern(p); b copies a with prob. 0.7, else ~ Bern(p / 2).  E[a] − E[b] = 0.6 − (0.7·0.6 + 0.3·0.3) = 0.09.
    """
    p = np.repeat(rng.beta(3, 2, size=prompts), seeds)
    a = rng.random(p.size) < p
    copy = rng.random(p.size) < 0.7
    b = np.where(copy, a, rng.random(p.size) < p / 2)
    return a, b, np.repeat(np.arange(prompts), seeds)


def test_cluster_bootstrap_covers_true_difference_at_nominal_rate():
    rng = np.random.default_rng(1)
    truth, sims = 0.09, 300
    hits = 0
    for s in range(sims):
        a, b, cl = _simulate(rng, 60, 2)
        _, lo, hi = S.paired_bootstrap(a, b, cl, n_boot=600, seed=s)
        hits += lo <= truth <= hi
    # nominal 95 %; with 300 simulations the binomial sd is 1.3 points
    assert 0.90 <= hits / sims <= 0.99, hits / sims


def test_mcnemar_rejects_at_most_alpha_under_null():
    """Exchangeable methods (H0 true): the exact test's type-I error stays at or below α."""
    rng = np.random.default_rng(2)
    rejections = 0
    sims = 400
    for _ in range(sims):
        a, b, _ = _simulate(rng, 40, 1)
        swap = rng.random(a.size) < 0.5  # exchangeable pairs
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        rejections += S.mcnemar_exact(*S.discordant(a, b)) < 0.05
    assert rejections / sims <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / sims)


def test_compare_fills_counts_and_clusters():
    a = np.array([1, 1, 1, 1, 0, 0], bool)
    b = np.array([0, 0, 1, 1, 0, 0], bool)
    c = S.compare("erase rate", "space", "uce", a, b, ["p1", "p1", "p2", "p2", "p3", "p3"], n_boot=300)
    assert (c.a_only, c.b_only, c.n, c.clusters) == (2, 0, 6, 3)
    assert c.diff == pytest.approx(2 / 6) and c.rate_a == pytest.approx(4 / 6)
    assert c.p == pytest.approx(0.5)


def test_holm_matches_statsmodels_style_reference_on_all_small_tables():
    """For every ordering of a small p table, adjusted p equals the brute-force step-down definition."""
    base = [0.001, 0.012, 0.02, 0.3]
    for perm in itertools.permutations(base):
        adj = S.holm(perm)
        srt = sorted(perm)
        for i, p in enumerate(perm):
            r = srt.index(p)
            ref = max(min(1.0, (len(base) - j) * srt[j]) for j in range(r + 1))
            assert adj[i] == pytest.approx(ref)


def test_vectorised_bootstrap_equals_draw_by_draw():
    """Mean and harmonic-mean statistics take the all-draws-at-once path; a wrapped statistic takes the loop: same
    interval."""
    from erasekit.evaluate import metrics as M

    rng = np.random.default_rng(3)
    a, b, c = rng.random(50) < 0.6, rng.random(30) < 0.1, rng.random(40)
    for stat, samples in ((M._mean, [a]), (M._mean, [c]), (M._hmean, [a, b]), (M._hmean, [a, np.zeros(5, bool)])):
        fast = M.bootstrap(samples, stat, n_boot=400, seed=5)
        slow = M.bootstrap(samples, lambda *x, f=stat: f(*x), n_boot=400, seed=5)
        assert fast == pytest.approx(slow, abs=1e-12)


def test_pipeline_fingerprint_memo_sees_every_weight_change(tiny_pipes):
    import torch

    from erasekit.evaluate import cache as C

    sd = tiny_pipes["sd"]
    fp = C.pipeline_fingerprint(sd)
    assert C.pipeline_fingerprint(sd) == fp == C._hash_pipeline(sd)
    w = sd.unet.conv_in.weight
    try:
        with torch.no_grad():
            w[0, 0, 0, 0] += 1.0  # an in-place write bumps the version counter: the memo must not be used
        changed = C.pipeline_fingerprint(sd)
        assert changed != fp and changed == C._hash_pipeline(sd)
    finally:
        with torch.no_grad():
            w[0, 0, 0, 0] -= 1.0
    assert C.pipeline_fingerprint(sd) == C._hash_pipeline(sd)
    edit = __import__("erasekit").erase(sd, "uce", ["circle"], kind="object", progress=False)
    edit.apply(sd)
    try:
        assert C.pipeline_fingerprint(sd) == C._hash_pipeline(sd) != fp
    finally:
        edit.revert(sd)


def _score_test_accepts(p: float, k: int, n: int, z: float) -> bool:
    """The score test of H0: rate = p does not reject at level z: |k/n − p| ≤ z·√(p(1 − p)/n)."""
    return abs(k / n - p) <= z * np.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("n", [1, 2, 5, 16, 40])
def test_wilson_interval_is_the_score_tests_acceptance_region(n):
    """Wilson's interval is, by definition, the set of rates the score test accepts: found here independently by
    bisection on each side of k/n, and checked to contain k/n, stay in [0, 1] and not collapse at 0 or n."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.975)
    for k in range(n + 1):
        low, high = S.wilson(k, n, 0.95)
        p_hat = k / n

        def edge(inside: float, outside: float) -> float:
            for _ in range(80):
                mid = (inside + outside) / 2
                inside, outside = (mid, outside) if _score_test_accepts(mid, k, n, z) else (inside, mid)
            return inside

        want_low = 0.0 if _score_test_accepts(0.0, k, n, z) else edge(p_hat, 0.0)
        want_high = 1.0 if _score_test_accepts(1.0, k, n, z) else edge(p_hat, 1.0)
        assert low == pytest.approx(want_low, abs=1e-9) and high == pytest.approx(want_high, abs=1e-9), (k, n)
        assert 0.0 <= low <= p_hat <= high <= 1.0 and high - low > 0
    assert S.wilson(3, 10, 0.99)[1] > S.wilson(3, 10, 0.9)[1]  # a higher level gives a wider interval
    assert np.isnan(S.wilson(0, 0)).all()
    for bad in ((5, 4), (-1, 4)):
        with pytest.raises(ValueError):
            S.wilson(*bad)
