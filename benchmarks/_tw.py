"""Shared harness of the issue-13 benchmarks: tinyworld suites, one generation + judge pass per suite.

Images are judged by the evaluation's tinyworld judge (:class:`erasekit.evaluate.judges.TinyworldConceptJudge`)
and measured by :mod:`erasekit.evaluate.metrics` (same seeds before and after the edit):
* erase  (target, paraphrase): :func:`~erasekit.evaluate.metrics.erase_rate`, items not judged as the erased value;
* retain: :func:`~erasekit.evaluate.metrics.retain_rate`, items judged as the neighbouring value they name;
* general: :func:`~erasekit.evaluate.metrics.judge_agreement`, items whose judged shape, colour and pattern all
  match the unedited model's.
Rates are returned as plain shares (the estimate's value); the callers print them.
"""

from __future__ import annotations

import time

import numpy as np
import torch

import erasekit
from erasekit.evaluate import metrics as M
from erasekit.evaluate.judges import TinyworldConceptJudge
from erasekit.evaluate.suites import tinyworld_suites
from erasekit.generate import generate_pairs

KINDS = ("target", "paraphrase", "retain", "general")


class World:
    def __init__(self, steps: int = 10, n: int = 8, guidance: float = 5.0):
        from erasekit.tinyworld import world

        torch.manual_seed(0)
        self.pipe = erasekit.load_pipeline("tinyworld")
        self.judge = TinyworldConceptJudge()
        self.values = [v for vs in world.ATTRIBUTES.values() for v in vs]  # every shape, colour and pattern
        self.steps, self.n, self.guidance = steps, n, guidance
        self._base: dict = {}

    def suites(self, concepts, kinds=KINDS):
        # always built with every kind: the suites share one generator, so a kind's prompts depend on the kinds
        # before it
        return {s.kind: s for s in tinyworld_suites(list(concepts), n=self.n, kinds=KINDS) if s.kind in kinds}

    def decisions(self, suite) -> np.ndarray:
        """(items, every tinyworld value): the judge's decision on each value (one per attribute) for the suite's
        images."""
        images = generate_pairs(
            self.pipe,
            [(it.prompt, it.seed) for it in suite.items],
            steps=self.steps,
            guidance=self.guidance,
            batch_size=16,
        )
        return self.judge.judge(images, self.values).decisions

    def seen(self, suite, decisions: np.ndarray | None = None) -> np.ndarray:
        """Per item: is the value it names (its first concept) judged in its image?"""
        d = self.decisions(suite) if decisions is None else decisions
        return np.array([d[i, self.values.index(it.concepts[0])] for i, it in enumerate(suite.items)], dtype=bool)

    def base(self, concepts, kind):
        key = (tuple(concepts), kind)
        if key not in self._base:
            self._base[key] = self.decisions(self.suites(concepts, (kind,))[kind])
        return self._base[key]

    def rates(self, edit, concepts, kinds=KINDS) -> dict[str, float]:
        """{'target', 'paraphrase': erase rate; 'retain': retain rate; 'general': agreement} for ``edit``
        (None = unedited)."""
        suites = self.suites(concepts, kinds)
        out = {}
        if edit is not None and "general" in kinds:
            self.base(concepts, "general")  # the unedited model's judgement, before the edit is applied
        if edit is not None:
            edit.apply(self.pipe)
        try:
            for kind, suite in suites.items():
                d = self.decisions(suite)
                if kind in ("target", "paraphrase"):
                    out[kind] = M.erase_rate(self.seen(suite, d)).value
                elif kind == "retain":
                    out[kind] = M.retain_rate(self.seen(suite, d)).value
                else:
                    b = self.base(concepts, "general") if edit is not None else d
                    out[kind] = M.judge_agreement(d, b).value
        finally:
            if edit is not None:
                edit.revert(self.pipe)
        return out


def fit(world: World, method: str, concept_set, **opts):
    t0 = time.perf_counter()
    edit = erasekit.erase(world.pipe, method=method, concepts=concept_set, progress=False, **opts)
    return edit, time.perf_counter() - t0


def fmt(x) -> str:
    return "—" if x is None else f"{100 * x:.0f}"
