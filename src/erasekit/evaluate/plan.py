"""Turn "these edits, these suite kinds, these attacks" into :class:`~erasekit.evaluate.runner.Study` objects.

Used by ``erasekit evaluate`` and ``erasekit bench``; on tinyworld the suites come from the
world's vocabulary, on other models from the edit's :class:`~erasekit.ConceptSet` (and prompt files).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..concepts import ConceptSet
from ..errors import ConceptError
from .attacks import ConceptVectorAttack, TokenSearchAttack, concept_set_pairs, parse_etas, tinyworld_pairs, tinyworld_prompt_attributes
from .runner import Study
from .suites import KINDS, Suite, suites_from_concepts, tinyworld_suites

DEFAULT_KINDS = ("target", "paraphrase", "adversarial", "retain", "general")
ATTACKS = ("ring-a-bell", "token-search")


@dataclass(frozen=True)
class Plan:
    """What to evaluate for every study: suite kinds, items per suite, attacks and their budgets."""

    kinds: tuple[str, ...] = DEFAULT_KINDS
    n: int = 16  # tinyworld: items per suite; other models: seeds per prompt is `seeds`
    seeds: int = 2
    seed: int = 0
    attacks: tuple[str, ...] = ATTACKS
    etas: tuple[float, ...] = (1.0, 2.0, 3.0)  # ring-a-bell curve; the headline η is calibrated on the unedited model
    search_steps: int = 12
    search_candidates: int = 32
    search_prompts: int | None = 8

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConceptError(f"unknown suite kind(s) {bad or list(self.kinds)}; choose from {', '.join(KINDS)}")
        object.__setattr__(self, "etas", parse_etas(self.etas))
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad:
            raise ConceptError(f"unknown attack(s) {bad}; choose from {', '.join(ATTACKS)}")


def parse_kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def make_study(name: str, concepts: ConceptSet, edits: dict, plan: Plan, *, tinyworld: bool, extra: Sequence[Suite] = ()) -> Study:
    """Suites and attacks for erasing ``concepts`` (one study), compared over ``edits`` (label -> Edit)."""
    built = [k for k in plan.kinds if k != "adversarial"]
    if tinyworld:
        suites = tinyworld_suites(concepts.erase, plan.n, seed=plan.seed, kinds=built)
        pairs = [tinyworld_pairs(c, 32, plan.seed) for c in concepts.erase]
        with_c, without = [p for w, _ in pairs for p in w], [p for _, wo in pairs for p in wo]
    else:
        suites = [s for s in suites_from_concepts(concepts, seeds=range(plan.seed, plan.seed + plan.seeds)) if s.kind in built]
        with_c, without = concept_set_pairs(concepts)
    suites += list(extra)
    attacks = []
    if "adversarial" in plan.kinds:
        if not any(s.kind == "target" for s in suites):
            raise ConceptError("adversarial suites attack the target prompts: add 'target' to the suite kinds")
        for a in plan.attacks:
            if a == "ring-a-bell":
                attacks.append(ConceptVectorAttack(with_c, without, etas=plan.etas))
            else:
                attacks.append(TokenSearchAttack(steps=plan.search_steps, candidates=plan.search_candidates, seed=plan.seed,
                                                 forbidden=concepts.erase, max_prompts=plan.search_prompts))
    return Study(name, suites, edits, attacks, attributes=tinyworld_prompt_attributes if tinyworld else None)
