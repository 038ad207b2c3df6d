"""Evaluation suites: named lists of (prompt, seed, guidance, expected concept labels).

Kinds (DESIGN §7):

* ``target``      prompts that name the erased concept — the judge should no longer see it;
* ``paraphrase``  prompts that evoke it without the anchor wording;
* ``adversarial`` attacked prompts or prompt embeddings (built by :mod:`erasekit.evaluate.attacks`);
* ``retain``      neighbouring concepts that must survive — the judge should still see them;
* ``general``     unrelated prompts, for drift against the unedited model on the same seeds.

Suites come from a :class:`~erasekit.ConceptSet` (:func:`suites_from_concepts`), from the
tinyworld vocabulary (:func:`tinyworld_suites`), or from the standard prompt files of the
concept-erasure literature (:func:`load_prompts`: I2P, ESD, UnlearnDiffAtk CSVs and plain
one-prompt-per-line text files, by path or by URL with a required SHA-256).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..concepts import TEMPLATES, ConceptSet
from ..errors import ConceptError
from ..prompt_files import (  # noqa: F401 — the suite types and the file readers, re-exported here
    KINDS,
    Suite,
    SuiteItem,
    default_cache_dir,
    fetch,
    load_prompts,
    read_prompt_text,
    universal_lines,
)
from ..prompts import GENERAL_PROMPTS


# ----------------------------------------------------------------------------- from concepts
def suites_from_concepts(
    concepts: ConceptSet,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    guidance: float | None = None,
    paraphrases: Mapping[str, Sequence[str]] | None = None,
    general: Sequence[str] = GENERAL_PROMPTS,
) -> list[Suite]:
    """target / paraphrase / retain / general suites for a real model's :class:`ConceptSet`.

    Target and retain prompts fill the kind's templates (``"painting by {}"`` ...) with the erased
    and preserved concepts; every prompt is generated with every seed. Paraphrases cannot be
    invented for arbitrary concepts: pass ``paraphrases={concept: [prompts]}`` to get that suite.
    General items carry no concept label: their drift is measured as pixel distance.
    """
    templates = TEMPLATES[concepts.kind]

    def items(prompts_and_labels: Iterable[tuple[str, tuple[str, ...]]]) -> list[SuiteItem]:
        return [SuiteItem(p, int(s), guidance, labels) for p, labels in prompts_and_labels for s in seeds]

    out = [
        Suite(
            "target",
            "target",
            items((t.format(c), (c,)) for c in concepts.erase for t in templates),
            source="concept templates",
        )
    ]
    if paraphrases:
        unknown = set(paraphrases) - set(concepts.erase)
        if unknown:
            raise ConceptError(
                f"paraphrases given for {sorted(unknown)}, which are not erased concepts {list(concepts.erase)}"
            )
        out.append(
            Suite(
                "paraphrase",
                "paraphrase",
                items((p, (c,)) for c, ps in paraphrases.items() for p in ps),
                source="user paraphrases",
            )
        )
    if concepts.preserve:
        out.append(
            Suite(
                "retain",
                "retain",
                items((t.format(c), (c,)) for c in concepts.preserve for t in templates),
                source="concept templates",
            )
        )
    if general:
        out.append(Suite("general", "general", items((p, ()) for p in general), source="built-in unrelated prompts"))
    return out


# ----------------------------------------------------------------------------- tinyworld
def tinyworld_attribute(concept: str) -> tuple[str, str]:
    """(attribute, canonical value) of a tinyworld concept or one of its synonyms,
    e.g. 'disc' -> ('shape', 'circle')."""
    from ..tinyworld import world

    key = concept.strip().lower()
    for attr, vocab in (("shape", world.SHAPES), ("color", world.COLORS), ("pattern", world.PATTERNS)):
        for canon, names in vocab.items():
            if key in names:
                return attr, canon
    known = ", ".join(world.SHAPE_NAMES + world.COLOR_NAMES + world.PATTERN_NAMES)
    raise ConceptError(f"tinyworld has no concept {concept!r}; choose among {known} (or a synonym)")


def tinyworld_suites(
    concepts: Sequence[str],
    n: int = 16,
    *,
    seed: int = 0,
    guidance: float | None = None,
    kinds: Sequence[str] = ("target", "paraphrase", "retain", "general"),
) -> list[Suite]:
    """Suites for erasing ``concepts`` (shapes, colours or patterns) from tinyworld, ``n`` items each.

    * target: captions that name every attribute canonically (``"a striped red circle"``) and
      contain an erased concept;
    * paraphrase: the same scenes with every attribute named only by a synonym (``"a crimson disc
      with stripes"``), in the held-out caption templates;
    * retain: canonical captions whose erased attribute takes a neighbouring value (another
      shape / colour / pattern), labelled with that neighbour;
    * general: canonical captions that avoid every erased value, labelled with all three
      attributes (judge agreement with the unedited model measures drift).

    Item ``i`` of every suite uses seed ``seed + i``; the other attributes are drawn with a
    fixed generator, so the suites are identical from run to run.
    """
    from ..tinyworld import world

    if not concepts:
        raise ConceptError("no tinyworld concept to evaluate")
    bad = [k for k in kinds if k not in KINDS or k == "adversarial"]
    if bad:
        raise ConceptError(f"tinyworld_suites builds {', '.join(k for k in KINDS if k != 'adversarial')}; not {bad}")
    parsed = [tinyworld_attribute(c) for c in concepts]
    erased = {attr: {v for a, v in parsed if a == attr} for attr in world.ATTRIBUTES}
    rng = np.random.default_rng(seed)
    seeds = [seed + i for i in range(n)]

    def scene(fixed: dict[str, str] | None = None, avoid_erased: bool = False) -> dict[str, str]:
        s = {}
        for attr, values in world.ATTRIBUTES.items():
            if fixed and attr in fixed:
                s[attr] = fixed[attr]
                continue
            allowed = [v for v in values if not (avoid_erased and v in erased[attr])]
            s[attr] = allowed[int(rng.integers(len(allowed)))]
        return s

    def text(s: dict[str, str], synonyms, split: str, template: int | None) -> str:
        return world.caption(
            s["shape"], s["color"], s["pattern"], rng, synonyms=synonyms, split=split, template=template
        )

    out = []
    for kind in kinds:
        items = []
        for i in range(n):
            attr, value = parsed[i % len(parsed)]
            if kind in ("target", "paraphrase"):
                s = scene({attr: value})
                prompt = text(s, False, "train", 0) if kind == "target" else text(s, "only", "eval", None)
                labels: tuple[str, ...] = (value,)
            elif kind == "retain":
                neighbours = [v for v in world.ATTRIBUTES[attr] if v not in erased[attr]]
                if not neighbours:
                    raise ConceptError(f"every {attr} is erased; nothing is left to retain")
                s = scene({attr: neighbours[i // len(parsed) % len(neighbours)]}, avoid_erased=True)
                prompt, labels = text(s, False, "train", 0), (s[attr],)
            else:
                s = scene(avoid_erased=True)
                prompt, labels = text(s, False, "eval", None), (s["shape"], s["color"], s["pattern"])
            items.append(SuiteItem(prompt, seeds[i], guidance, labels))
        out.append(Suite(kind, kind, items, source="tinyworld", info={"concepts": list(concepts), "seed": seed}))
    return out
