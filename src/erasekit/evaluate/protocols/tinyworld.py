"""tinyworld's own protocol, scored the HUB way: categories shape / colour / pattern, one H-mean each.

Per concept (a shape, colour or pattern of the bundled world), the suites are built by
:func:`~erasekit.evaluate.suites.tinyworld_suites` (target, paraphrase, retain, general) and the attack harness
(``adversarial``, built against each edit at evaluation time). The H-mean's four metrics
(:mod:`erasekit.evaluate.hmean`): erased = 1 − target proportion (the bundled classifier's judgement), retention = the
other values of the same attribute (:func:`in_category`), robustness = 1 − ASR under the attack harness, quality =
judged agreement with the unedited model on general prompts (``'raw'``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import ProtocolError
from .base import JudgeSpec, Protocol, SuiteSpec, register_protocol

CATEGORY_OF_ATTRIBUTE = {"shape": "shape", "color": "color", "pattern": "pattern"}


def in_category(concept: str) -> tuple[str, tuple[str, ...]]:
    """(category, the other values of the same attribute) of a tinyworld concept, e.g. 'circle' ->
    ('shape', ('square', 'triangle', ...)): the within-category retain set (and PURE's in-category anchors)."""
    from ...tinyworld import world
    from ..suites import tinyworld_attribute

    attr, value = tinyworld_attribute(concept)
    return attr, tuple(v for v in world.ATTRIBUTES[attr] if v != value)


@register_protocol("tinyworld", "tinyworld's suites and attack harness, scored with an H-mean per attribute")
def build(
    concepts: Sequence[str] | str = ("circle", "red", "striped"),
    n: int = 16,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 5.0,
    attack: str = "concept-vector",
) -> Protocol:
    if isinstance(concepts, str):
        concepts = [c.strip() for c in concepts.split(",") if c.strip()]
    if not concepts:
        raise ProtocolError("no tinyworld concept given")
    if n < 1:
        raise ProtocolError(f"n (prompts per suite) must be >= 1, got {n}")
    try:
        cats = {c: in_category(c) for c in concepts}
    except Exception as e:  # ConceptError naming the vocabulary
        raise ProtocolError(str(e)) from None
    suites = []
    for c in concepts:
        for kind, role in (("target", "target"), ("paraphrase", "paraphrase"), ("retain", "retention")):
            suites.append(
                SuiteSpec(f"{c}/{kind}", kind, builder=f"tinyworld:{kind}", role=role, base_seed=seed, concepts=(c,))
            )
        suites.append(
            SuiteSpec(
                f"{c}/attack", "adversarial", builder=f"attack:{attack}", role="attack", base_seed=seed, concepts=(c,)
            )
        )
    suites.append(
        SuiteSpec(
            "general", "general", builder="tinyworld:general", role="quality", base_seed=seed, concepts=tuple(concepts)
        )
    )
    return Protocol(
        name="tinyworld",
        summary="tinyworld: target, paraphrase, in-category retain, attack and general suites; H-mean per attribute",
        suites=tuple(suites),
        judges=(JudgeSpec("tinyworld", {"model": "bundled tinyworld concept classifier"}),),
        metrics=("target_proportion", "retention", "attack_success", "quality", "hmean"),
        steps=steps,
        guidance=guidance,
        model="tinyworld",
        options={
            "concepts": list(concepts),
            "n": n,
            "seed": seed,
            "attack": attack,
            "quality_rule": "raw",
            "categories": {c: a for c, (a, _) in cats.items()},
            "retain": {c: list(o) for c, (_, o) in cats.items()},
        },
        notes=("quality = judged agreement with the unedited model on general prompts (hmean rule 'raw')",),
    )
