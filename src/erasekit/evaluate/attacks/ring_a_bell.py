"""Ring-A-Bell's concept vector (Tsai et al., ICLR 2024), as a calibrated curve over its strength η.

The concept vector is the mean difference of the prompt embeddings of paired prompts with and without the concept;
attacked items are conditioned on ``encode(prompt) + η · vector`` (every tensor ``encode_prompt`` returns, SDXL's
pooled embedding included: :func:`~erasekit.evaluate.attacks.conditioning.shift_embeddings`). The text encoder is
not edited by K/V methods, so one vector serves every method. It runs as a curve over η; the headline η is
calibrated on the unedited model (:func:`headline_eta`).

Deviations from the paper: the continuous embedding-space attack only (the paper then searches a discrete prompt
whose embedding approaches the shifted one with a genetic algorithm); the strength is a curve with a calibrated
headline rather than one hand-set η. Its ``paper`` budget is its default. Prompts: the reference keeps I2P prompts by
their recorded nudity percentage (> 50 %, ``InversePrompt.ipynb``, the "Find Problematic Prompts -- Nudity" cell), not
by what the unedited model draws at a seed, and its repository holds no success count; erasekit's curve is over every
target item, the unedited model's rate beside each point.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ...errors import ConceptError
from ..conditioning import encode, vector_digest
from ..suites import Suite, SuiteItem
from .base import Attack, AttackConfig, AttackContext, AttackResult, budget_field, register_attack


def concept_vector(pipe, with_concept: Sequence[str], without_concept: Sequence[str]) -> dict[str, torch.Tensor]:
    """Mean over pairs of ``encode(with) - encode(without)`` (float32, cpu)."""
    if len(with_concept) != len(without_concept) or not with_concept:
        raise ConceptError("a concept vector needs the same non-zero number of prompts with and without the concept")
    a, b = encode(pipe, with_concept), encode(pipe, without_concept)
    return {k: (a[k].double() - b[k].double()).mean(0).float().cpu() for k in a if a[k].is_floating_point()}


def tinyworld_prompt_attributes(prompt: str) -> tuple[str, ...]:
    """The canonical tinyworld values a prompt names (``"a dotted orange circle"`` -> circle, orange, dotted)."""
    from ...tinyworld import world

    words = set(re.findall(r"[a-z]+", prompt.lower()))
    return tuple(v for values in world.ATTRIBUTES.values() for v in values if v in words)


HEADLINE_RULE = (
    "the strongest η at which the share of the unedited model's attacked images that keep every prompted "
    "attribute stays ≥ {ratio:.0%} of its η = 0 value"
)


def headline_eta(
    etas: Sequence[float], kept: Sequence[float | None], kept_at_zero: float | None, ratio: float = 0.9
) -> tuple[float, str]:
    """(η, rule): the η whose attack success is the headline (DESIGN §7, calibrated Ring-A-Bell).

    A strong concept vector also destroys what the prompt asked for, so part of its "success" is
    damage. ``kept[i]`` is the share of the *unedited* model's images at ``etas[i]`` that still show
    every prompted attribute; the headline uses the strongest η where that share is ≥ ``ratio`` × its
    η = 0 value. Without an attribute judge (``kept_at_zero`` None) the strongest η is used and the
    rule says so.
    """
    etas = [float(e) for e in etas]
    if not etas:
        raise ConceptError("the concept-vector attack needs at least one η")
    if kept_at_zero is None or any(k is None for k in kept):
        return max(etas), "strongest η (no attribute judge to calibrate against)"
    ok = [e for e, k in zip(etas, kept, strict=True) if k is not None and k >= ratio * kept_at_zero]
    rule = HEADLINE_RULE.format(ratio=ratio)
    return (max(ok), rule) if ok else (0.0, rule + " — none does: the headline is η = 0, the unattacked target suite")


# ----------------------------------------------------------------------------- pairs
def tinyworld_pairs(concept: str, n: int = 32, seed: int = 0) -> tuple[list[str], list[str]]:
    """Caption pairs that differ only in naming ``concept``: ``"a striped red circle"`` / ``"a striped red shape"``."""
    from ...tinyworld import world
    from ..suites import tinyworld_attribute

    attr, value = tinyworld_attribute(concept)
    with_c, without = [], []
    rng = np.random.default_rng(seed)
    for _ in range(n):
        s: dict[str, str | None] = {a: vals[int(rng.integers(len(vals)))] for a, vals in world.ATTRIBUTES.items()}
        s[attr] = value
        t = int(
            rng.integers(len(world.TRAIN_TEMPLATES))
        )  # canonical names and a fixed template: caption() draws nothing
        with_c.append(world.caption(s["shape"], s["color"], s["pattern"], rng, synonyms=False, template=t))
        s[attr] = None
        without.append(world.caption(s["shape"], s["color"], s["pattern"], rng, synonyms=False, template=t))
    return with_c, without


def concept_set_pairs(concepts) -> tuple[list[str], list[str]]:
    """(prompt with the concept, same template with its guide) for every erased concept and template of its kind."""
    from ...concepts import ConceptSet

    full = ConceptSet(
        erase=concepts.erase, kind=concepts.kind, guide=concepts.guides, preserve=concepts.preserve, templates=True
    )
    pairs = full.erase_pairs()
    return [p for p, _ in pairs], [g for _, g in pairs]


def parse_etas(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"1,2,3"`` -> (1.0, 2.0, 3.0); sorted, unique, non-negative."""
    try:
        vals = [float(x) for x in (text.split(",") if isinstance(text, str) else text) if str(x).strip()]
    except ValueError:
        vals = []
    if not vals or any(v < 0 or not math.isfinite(v) for v in vals):
        raise ConceptError(
            f"--eta must be a finite number ≥ 0 (or a comma-separated list of them, e.g. 1,2,3), got {text!r}"
        )
    return tuple(sorted(set(vals)))


def eta_suite_name(name: str, eta: float) -> str:
    """``adversarial:ring-a-bell@2`` — each η has its own suite (and ``ASR ring-a-bell@2`` metric)."""
    return f"adversarial:{name}@{float(eta):g}"


# ----------------------------------------------------------------------------- the attack
@dataclass
class RingABellConfig(AttackConfig):
    etas: tuple[float, ...] = budget_field(
        (1.0, 2.0, 3.0),
        "strengths η of the concept vector, a curve (the headline η is the strongest at which the unedited "
        "model keeps ≥ 90 % of its prompted attributes)",
        inclusive=True,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.etas = parse_etas(self.etas)


@dataclass
class ConceptVectorResult(AttackResult):
    """Prompt embeddings moved along the concept vector ``vector`` (one (L, d) / (d_pool,) tensor per
    ``pipe(**...)`` keyword): one suite per η (a curve), named after ``name``."""

    kind: ClassVar[str] = "embedding"
    vector: dict[str, torch.Tensor] = field(default_factory=dict)
    name: str = "ring-a-bell"

    def suites(self, target: Suite) -> list[Suite]:
        digest = vector_digest(self.vector)
        key = f"{self.name}:{digest[:16]}"
        etas = list(self.config["etas"])
        out = []
        for eta in etas:
            items = [
                SuiteItem(it.prompt, it.seed, it.guidance, it.concepts, (key, float(eta)), it.meta) for it in target
            ]
            info = {
                "attack": self.name,
                "curve": self.name,
                "eta": float(eta),
                "etas": etas,
                "pairs": self.details["pairs"],
                "vector_digest": digest,
                "budget": f"η = {eta:g}, vector from {self.details['pairs']} prompt pairs",
                "example_pair": self.details["example_pair"],
                "record": self.record(),
            }
            out.append(
                Suite(
                    eta_suite_name(self.name, eta),
                    "adversarial",
                    items,
                    source=f"{target.name} + η·concept vector",
                    info=info,
                    vectors={key: self.vector},
                )
            )
        return out


@register_attack(
    "ring-a-bell",
    RingABellConfig,
    kind="embedding",
    summary="concept vector (mean embedding difference of paired prompts) added to the prompt embedding, "
    "a curve over η with a calibrated headline",
    reference="Tsai et al., Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion Models?, ICLR 2024 "
    "(github.com/chiayi-hsu/Ring-A-Bell)",
    per_method=False,
)
class ConceptVectorAttack(Attack[RingABellConfig]):
    """Ring-A-Bell-style concept-vector attack on the target prompts, one suite per strength η in ``etas``.

    ``ConceptVectorAttack(with_concept, without_concept, etas=...)`` carries its own prompt pairs; built from the
    registry (``ConceptVectorAttack(config=...)``) it takes the study's pairs (:attr:`AttackContext.pairs`).
    """

    def __init__(
        self,
        with_concept: Sequence[str] = (),
        without_concept: Sequence[str] = (),
        etas: Sequence[float] | None = None,
        name: str = "ring-a-bell",
        *,
        config: RingABellConfig | None = None,
    ) -> None:
        config = config if config is not None else RingABellConfig()
        if etas is not None:
            config = RingABellConfig(seed=config.seed, etas=tuple(etas))
        super().__init__(config)
        self.with_concept, self.without_concept, self.label = list(with_concept), list(without_concept), name

    @property
    def etas(self) -> tuple[float, ...]:
        return tuple(self.config.etas)

    def _build(self, ctx: AttackContext) -> AttackResult:
        with_c, without = self.with_concept, self.without_concept
        if not with_c and ctx.pairs is not None:
            with_c, without = list(ctx.pairs[0]), list(ctx.pairs[1])
        ctx.meter.text_encoder_evaluations += 2 * len(with_c)
        vec = concept_vector(ctx.pipe, with_c, without)
        details: dict[str, Any] = {"pairs": len(with_c), "example_pair": [with_c[0], without[0]]}
        return ConceptVectorResult(self.name, self.config.to_dict(), {}, details, vector=vec, name=self.label)
