"""Shared harness of the issue-13 benchmarks: tinyworld suites, one generation + judge pass per suite.

Rates (judge on the generated images, same seeds before and after the edit):
* erase  (target, paraphrase): share of items *not* judged as the erased value;
* retain: share of items judged as the neighbouring value they name;
* general agreement: share of items whose three judged attributes match the unedited model's.
"""

from __future__ import annotations

import time

import torch

import erasekit
from erasekit.evaluate.suites import tinyworld_attribute, tinyworld_suites
from erasekit.generate import generate_pairs


KINDS = ("target", "paraphrase", "retain", "general")


class World:
    def __init__(self, steps: int = 10, n: int = 8, guidance: float = 5.0):
        from erasekit.tinyworld.judge import TinyworldJudge

        torch.manual_seed(0)
        self.pipe = erasekit.load_pipeline("tinyworld")
        self.judge = TinyworldJudge.load()
        self.steps, self.n, self.guidance = steps, n, guidance
        self._base: dict = {}

    def suites(self, concepts, kinds=KINDS):
        # always built with every kind: the suites share one generator, so a kind's prompts depend on the kinds before it
        return {s.kind: s for s in tinyworld_suites(list(concepts), n=self.n, kinds=KINDS) if s.kind in kinds}

    def judged(self, suite) -> dict[str, list[str]]:
        images = generate_pairs(self.pipe, [(it.prompt, it.seed) for it in suite.items], steps=self.steps,
                                guidance=self.guidance, batch_size=16)
        return self.judge.classify(images)

    def base(self, concepts, kind):
        key = (tuple(concepts), kind)
        if key not in self._base:
            self._base[key] = self.judged(self.suites(concepts, (kind,))[kind])
        return self._base[key]

    def rates(self, edit, concepts, kinds=KINDS) -> dict[str, float]:
        """{'target', 'paraphrase': erase rate; 'retain': retain rate; 'general': agreement} for ``edit`` (None = unedited)."""
        suites = self.suites(concepts, kinds)
        out = {}
        if edit is not None and "general" in kinds:
            self.base(concepts, "general")  # the unedited model's judgement, before the edit is applied
        if edit is not None:
            edit.apply(self.pipe)
        try:
            for kind, suite in suites.items():
                j = self.judged(suite)
                items = suite.items
                if kind in ("target", "paraphrase"):
                    hits = [j[tinyworld_attribute(it.concepts[0])[0]][i] == it.concepts[0] for i, it in enumerate(items)]
                    out[kind] = 1 - sum(hits) / len(hits)
                elif kind == "retain":
                    hits = [j[tinyworld_attribute(it.concepts[0])[0]][i] == it.concepts[0] for i, it in enumerate(items)]
                    out[kind] = sum(hits) / len(hits)
                else:
                    b = self.base(concepts, "general") if edit is not None else j
                    same = [all(j[a][i] == b[a][i] for a in ("shape", "color", "pattern")) for i in range(len(items))]
                    out[kind] = sum(same) / len(same)
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
