"""Metrics with seeded bootstrap confidence intervals and the counts behind them.

Every metric is an :class:`Estimate`: the point value, a percentile-bootstrap interval
(resampling images with replacement, ``n_boot`` draws from a seeded generator), the number of
images ``n`` and, for rates, the number of images ``k`` that count as a success.

* erase rate            share of target images where the judge no longer sees the concept
* paraphrase erase rate the same on paraphrase prompts
* retain rate           share of retain images where the judge still sees the neighbour
* harmonic mean         of the erase, paraphrase erase (when measured) and retain rates;
                        its interval resamples each suite independently
* attack success rate   share of attacked images where the judge sees the concept again
* drift                 on general prompts: judge agreement with the unedited model (same seeds),
                        and mean absolute pixel difference in [0, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    name: str
    value: float
    low: float
    high: float
    n: int
    k: int | None = None  # successes behind a rate (None for non-count metrics)
    level: float = LEVEL
    n_boot: int = N_BOOT
    seed: int = 0
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., float],
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high): ``statistic(*samples)`` and its percentile interval, resampling each sample independently.

    Statistics that depend on the samples only through their means (:func:`_mean`, :func:`_hmean`) are
    computed for all draws at once from the (n_boot,) resampled means; any other statistic draw by draw.
    The draws (and so the interval) are the same either way.
    """
    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    if any(len(s) == 0 for s in samples):
        return float("nan"), float("nan"), float("nan")
    point = float(statistic(*samples))
    rng = _rng(seed)
    idx = [rng.integers(0, len(s), size=(n_boot, len(s))) for s in samples]
    of_means = _FROM_MEANS.get(statistic)
    if of_means is not None:
        draws = of_means([s[i].mean(axis=1) for s, i in zip(samples, idx, strict=True)])  # (n_boot,)
    else:
        draws = np.empty(n_boot)
        for b in range(n_boot):
            draws[b] = statistic(*(s[i[b]] for s, i in zip(samples, idx, strict=True)))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return point, float(low), float(high)


def _mean(x: np.ndarray) -> float:
    return float(x.mean())


def rate(name: str, successes: np.ndarray, *, seed: int = 0, n_boot: int = N_BOOT, note: str = "") -> Estimate:
    """Share of True in ``successes`` with its bootstrap interval."""
    s = np.asarray(successes, dtype=bool)
    point, low, high = bootstrap([s], _mean, n_boot=n_boot, seed=seed)
    return Estimate(name, point, low, high, int(s.size), int(s.sum()), n_boot=n_boot, seed=seed, note=note)


def mean(name: str, values: np.ndarray, *, seed: int = 0, n_boot: int = N_BOOT, note: str = "") -> Estimate:
    v = np.asarray(values, dtype=np.float64)
    point, low, high = bootstrap([v], _mean, n_boot=n_boot, seed=seed)
    return Estimate(name, point, low, high, int(v.size), None, n_boot=n_boot, seed=seed, note=note)


def erase_rate(seen_edited: np.ndarray, *, name: str = "erase rate", **kw) -> Estimate:
    """Share of images where the judge does not see the erased concept."""
    return rate(name, ~np.asarray(seen_edited, dtype=bool), **kw)


def retain_rate(seen_edited: np.ndarray, *, name: str = "retain rate", **kw) -> Estimate:
    """Share of images where the judge still sees the preserved concept."""
    return rate(name, np.asarray(seen_edited, dtype=bool), **kw)


def attack_success_rate(
    seen_attacked: np.ndarray, *, name: str = "attack success rate", budget: str = "", **kw
) -> Estimate:
    """Share of attacked images in which the judge sees the erased concept; ``budget`` is recorded as the note."""
    return rate(name, np.asarray(seen_attacked, dtype=bool), note=budget, **kw)


def _hmean(*rates: np.ndarray) -> float:
    m = np.array([r.mean() for r in rates])
    return 0.0 if (m <= 0).any() else float(len(m) / (1.0 / m).sum())


def _hmean_of_means(means: list[np.ndarray]) -> np.ndarray:
    m = np.stack(means)  # (rates, n_boot)
    with np.errstate(divide="ignore"):
        h = m.shape[0] / (1.0 / m).sum(axis=0)
    return np.where((m <= 0).any(axis=0), 0.0, h)


_FROM_MEANS: dict = {_mean: lambda means: means[0], _hmean: _hmean_of_means}


def harmonic_mean(
    components: Sequence[np.ndarray], *, name: str = "harmonic mean", seed: int = 0, n_boot: int = N_BOOT
) -> Estimate:
    """Harmonic mean of several rates, each given as its per-image 0/1 successes (suites resampled independently)."""
    comps = [np.asarray(c, dtype=bool) for c in components]
    point, low, high = bootstrap(comps, _hmean, n_boot=n_boot, seed=seed)
    return Estimate(
        name,
        point,
        low,
        high,
        int(sum(c.size for c in comps)),
        None,
        n_boot=n_boot,
        seed=seed,
        note=f"of {len(comps)} rates",
    )


def judge_agreement(decisions_edited: np.ndarray, decisions_unedited: np.ndarray, **kw) -> Estimate:
    """Share of images whose decisions on every asked concept are the same for both models."""
    a, b = np.asarray(decisions_edited, dtype=bool), np.asarray(decisions_unedited, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"decision arrays differ in shape: {a.shape} vs {b.shape}")
    same = (a == b).all(axis=1) if a.ndim == 2 else a == b
    return rate("drift: judge agreement", same, **kw)


def pixel_distance(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two images' RGB values, in [0, 1]."""
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape} vs {y.shape}")
    return float(np.abs(x - y).mean() / 255.0)
