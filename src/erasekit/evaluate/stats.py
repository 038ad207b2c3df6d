"""Paired statistics: every method sees the same prompts and seeds, so compare them image by image.

For two image sets made from the same items (method A vs method B, or a method vs the
unedited model), with a 0/1 success per image (erased / retained / attacked):

* the paired difference of rates ``mean(a) − mean(b)`` with a percentile interval from a
  **cluster bootstrap over prompts** — images that share a prompt (several seeds) are drawn
  together, and the two methods' images of one item are always drawn together (paired by seed);
* an **exact McNemar test** on the discordant pairs (``b`` = A succeeds where B fails, ``c`` = the
  reverse): two-sided p = min(1, 2·P[Bin(b + c, ½) ≤ min(b, c)]) (McNemar 1947; the exact
  binomial form of Edwards 1948 / Fagerland et al. 2013), computed with integers, no approximation;
* the **Wilson score interval** of one rate (Wilson 1927), beside the bootstrap one: with few images and a rate at
  0 or 1 (an attack that never / always succeeds) the percentile bootstrap collapses to a point, Wilson's does not;
* the **Holm** step-down correction over every comparison of one table (Holm 1979): a difference
  is called significant only when its adjusted p is below ``alpha``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from math import comb

import numpy as np

ALPHA = 0.05


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` (A only) and ``c`` (B only)."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(comb(n, k) for k in range(min(b, c) + 1)), 2**n)  # P[Bin(n, ½) ≤ min(b, c)]
    return float(min(Fraction(1), 2 * tail))


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for ``k`` successes in ``n`` trials; (nan, nan) when ``n`` is 0.

    With p̂ = k / n and z the standard normal's (1 + level) / 2 quantile:
    centre = (p̂ + z² / 2n) / (1 + z² / n), half-width = z / (1 + z² / n) · √(p̂ (1 − p̂) / n + z² / 4n²).
    """
    from statistics import NormalDist

    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf((1.0 + level) / 2.0)
    p = k / n
    denom = 1.0 + z * z / n  # 1 + z²/n
    centre = (p + z * z / (2 * n)) / denom  # (p̂ + z²/2n) / (1 + z²/n)
    half = z / denom * np.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))  # z/(1 + z²/n) · √(p̂(1−p̂)/n + z²/4n²)
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exactly 0 / 1 at the ends (no rounding residue)
    high = 1.0 if k == n else min(1.0, centre + half)
    return float(low), float(high)


def discordant(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(#items where ``a`` succeeds and ``b`` fails, #items where ``b`` succeeds and ``a`` fails)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired decisions differ in shape: {a.shape} vs {b.shape}")
    return int((a & ~b).sum()), int((~a & b).sum())


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order as given): p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)) over the sorted
    p."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def clusters_of(keys: Sequence[Hashable]) -> np.ndarray:
    """Cluster index per image: images with the same key (e.g. the same prompt) share a cluster."""
    ids: dict = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    clusters: np.ndarray | None = None,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean(a) − mean(b), low, high): percentile interval resampling whole clusters (prompts) with replacement.

    A drawn cluster brings every image it holds, of both methods: the pairing by seed is kept.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        return float("nan"), float("nan"), float("nan")
    cl = np.arange(a.size) if clusters is None else np.asarray(clusters, dtype=np.int64)
    k = int(cl.max()) + 1
    d_sum = np.bincount(cl, weights=a - b, minlength=k)  # (K,) per-cluster sum of differences
    size = np.bincount(cl, minlength=k).astype(np.float64)  # (K,) images per cluster
    keep = size > 0
    d_sum, size = d_sum[keep], size[keep]
    k = d_sum.size
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(
        np.float64
    )  # (n_boot, K): times each cluster is drawn
    draws = (counts @ d_sum) / (counts @ size)  # (n_boot,)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(a.mean() - b.mean()), float(low), float(high)


@dataclass
class Comparison:
    """``a`` vs ``b`` on one metric: the paired difference (a − b) with interval, discordant counts, p-values."""

    metric: str
    a: str
    b: str
    rate_a: float
    rate_b: float
    diff: float
    low: float
    high: float
    n: int  # paired images
    clusters: int  # prompts
    a_only: int  # McNemar b
    b_only: int  # McNemar c
    p: float
    p_holm: float = float("nan")
    significant: bool = False
    level: float = 0.95
    alpha: float = ALPHA

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    metric: str,
    a_label: str,
    b_label: str,
    a: np.ndarray,
    b: np.ndarray,
    prompts: Sequence[Hashable] | None = None,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """One paired comparison (uncorrected; :func:`correct` fills ``p_holm`` and ``significant``)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    cl = clusters_of(prompts) if prompts is not None else np.arange(a.size)
    diff, low, high = paired_bootstrap(a, b, cl, n_boot=n_boot, level=level, seed=seed)
    x, y = discordant(a, b)
    return Comparison(
        metric,
        a_label,
        b_label,
        float(a.mean()) if a.size else float("nan"),
        float(b.mean()) if b.size else float("nan"),
        diff,
        low,
        high,
        int(a.size),
        int(cl.max() + 1) if cl.size else 0,
        x,
        y,
        mcnemar_exact(x, y),
        level=level,
    )


def correct(comparisons: Sequence[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm-correct the p-values of one table's comparisons in place; returns them."""
    for c, p in zip(comparisons, holm([c.p for c in comparisons]), strict=True):
        c.p_holm, c.alpha = p, alpha
        c.significant = bool(p < alpha)
    return list(comparisons)
