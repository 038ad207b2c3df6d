"""The runner's *judge* stage: read every suite's images back from the cache and judge them (main process only).

Each (images, labels) pair is judged once however many runs share it (the unedited images of every method),
general suites also get their per-image pixel distance, and with :attr:`Study.attributes` the unedited target and
concept-vector images are asked whether they keep every prompted attribute (which calibrates the headline η).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import metrics as M
from .cache import ImageCache
from .judges import Judge, JudgeResult
from .plan import Study
from .results import MethodRun


class _Judged:
    """``judge`` with a memo keyed by (image paths, labels), and the seconds spent inside the judge."""

    def __init__(self, judge: Judge, cache: ImageCache):
        self.judge, self.cache = judge, cache
        self.memo: dict[tuple, JudgeResult] = {}
        self.seconds = 0.0

    def __call__(self, paths: list[Path], labels: list[str]) -> JudgeResult:
        key = (tuple(map(str, paths)), tuple(labels))
        if not labels:  # nothing to ask (e.g. general prompts of a real model: drift is pixel distance only)
            return JudgeResult([], np.zeros((len(paths), 0)), np.zeros((len(paths), 0), bool), self.judge.settings)
        if key not in self.memo:
            images = [self.cache.load(p) for p in paths]
            t = time.perf_counter()
            self.memo[key] = self.judge.judge(images, labels)
            self.seconds += time.perf_counter() - t
        return self.memo[key]


def judge_runs(
    studies: Sequence[Study], runs: dict[str, dict[str, MethodRun]], judge: Judge, cache: ImageCache
) -> float:
    """Fill every suite run's judgements (and pixel distances, kept attributes) in place; returns the seconds spent
    inside the judge."""
    judged = _Judged(judge, cache)
    for study in studies:
        for run in runs[study.name].values():
            for s in run.suites.values():
                s.judged_unedited = judged(s.unedited, s.suite.labels)
                s.judged_edited = judged(s.edited, s.suite.labels)
                if s.suite.kind == "general":
                    s.pixel_distance = [
                        M.pixel_distance(cache.load(a), cache.load(b))
                        for a, b in zip(s.unedited, s.edited, strict=True)
                    ]
                if study.attributes is not None and (s.suite.kind == "target" or "eta" in s.suite.info):
                    asked = [tuple(study.attributes(it.prompt)) for it in s.suite.items]
                    jr = judged(s.unedited, list(dict.fromkeys(c for a in asked for c in a)))
                    s.kept_unedited = np.array([all(jr.seen(c)[i] for c in a) for i, a in enumerate(asked)], dtype=bool)
    return judged.seconds
