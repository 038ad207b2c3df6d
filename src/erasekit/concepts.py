"""Concepts to erase, their guides, the concepts to preserve, and prompt templates per kind.

A :class:`ConceptSet` is the one input every method shares. It validates itself on
construction (empty, duplicate or contradictory concepts are refused) and expands
templates into aligned (erase prompt, guide prompt) pairs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ConceptError
from .text import plain, text_problem

KINDS = ("style", "object", "person", "nsfw")

# The UCE reference templates for artistic styles; the others follow the same idea.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "style": ("{}", "painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"),
    "object": ("{}", "a photo of a {}", "an image of a {}", "a picture of a {}", "a drawing of a {}"),
    "person": ("{}", "a photo of {}", "a portrait of {}", "an image of {}", "a picture of {}"),
    "nsfw": ("{}", "a photo of {}", "an image showing {}", "a picture with {}"),
}

# UCE's defaults: styles are steered towards generic "art", everything else towards the empty prompt.
DEFAULT_GUIDE = {"style": "art", "object": "", "person": "", "nsfw": ""}

# The UCE reference scripts' own template lists (the bare concept first). Both versions use the
# same two lists: trainscripts/uce_sd_erase.py (v2, ``--expand_prompts``: 'art' gets the style list,
# every other type the object list) and train-scripts/train_erase.py (v1, ``--add_prompts``: 'art'
# and 'object'). ``uce --preset v1|v2`` uses these; TEMPLATES above are erasekit's extensions.
REFERENCE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "style": ("{}", "painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"),
    "object": ("{}", "image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"),
}


def reference_templates(kind: str) -> tuple[str, ...]:
    """The UCE reference scripts' template list for ``kind`` (styles: the 'art' list; any other kind: the object
    list)."""
    if kind not in KINDS:
        raise ConceptError(f"unknown concept kind {kind!r}; choose one of {', '.join(KINDS)}")
    return REFERENCE_TEMPLATES["style" if kind == "style" else "object"]


def normalize(concept: str) -> str:
    """Case- and whitespace-insensitive key used to detect duplicates and contradictions."""
    return re.sub(r"\s+", " ", concept.strip()).lower()


def _fill(template: str, concept: str) -> str:
    return re.sub(r"\s+", " ", template.format(concept)).strip()


@dataclass(frozen=True)
class ConceptSet:
    """What to erase, what to steer it to, and what must survive.

    Args:
        erase: concepts to remove, e.g. ``["Van Gogh"]``.
        kind: one of ``style``, ``object``, ``person``, ``nsfw``; picks templates and the default guide.
        guide: one guide for all erased concepts, or one per concept (same order). ``None`` uses
            the kind's default (``"art"`` for styles, ``""`` otherwise).
        preserve: concepts whose outputs must not change (e.g. neighbouring artists).
        templates: ``False`` uses the bare concepts, ``True`` the kind's templates, or a list of
            format strings with one ``{}``.
    """

    erase: tuple[str, ...]
    kind: str = "style"
    guide: str | tuple[str, ...] | None = None
    preserve: tuple[str, ...] = ()
    templates: bool | tuple[str, ...] = False
    _guides: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        erase = (self.erase,) if isinstance(self.erase, str) else tuple(self.erase)
        preserve = (self.preserve,) if isinstance(self.preserve, str) else tuple(self.preserve)
        object.__setattr__(self, "erase", erase)
        object.__setattr__(self, "preserve", preserve)
        if self.kind not in KINDS:
            raise ConceptError(f"unknown concept kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not erase:
            raise ConceptError("no concept to erase: pass at least one, e.g. erase=['Van Gogh']")
        for label, items in (("erase", erase), ("preserve", preserve)):
            for c in items:
                if not isinstance(c, str) or not normalize(c):
                    raise ConceptError(f"empty {label} concept {c!r}: every concept must be a non-empty string")
                _check_text(f"{label} concept", c)
            seen: dict[str, str] = {}
            for c in items:
                if normalize(c) in seen:
                    raise ConceptError(
                        f"duplicate {label} concept {c!r} (same as {seen[normalize(c)]!r}); list each concept once"
                    )
                seen[normalize(c)] = c
        for a in erase:
            for b in erase:
                if a is not b and re.search(rf"(^|\W){re.escape(normalize(a))}($|\W)", normalize(b)):
                    raise ConceptError(
                        f"erase concept {a!r} is contained in {b!r}; erasing {a!r} already covers it, list it once"
                    )
        both = sorted({normalize(c) for c in erase} & {normalize(c) for c in preserve})
        if both:
            raise ConceptError(
                f"concept(s) {both} are both erased and preserved; remove them from one of the two lists"
            )
        object.__setattr__(self, "_guides", self._resolve_guides(erase))
        for g in self._guides:
            _check_text("guide", g)
        if isinstance(self.templates, (list, tuple)):
            tpl = tuple(self.templates)
            if not tpl or any(t.count("{}") != 1 for t in tpl):
                raise ConceptError(
                    "custom templates must be a non-empty list of strings that each contain '{}' exactly once"
                )
            object.__setattr__(self, "templates", tpl)

    def _resolve_guides(self, erase: tuple[str, ...]) -> tuple[str, ...]:
        if self.guide is None:
            guides = (DEFAULT_GUIDE[self.kind],) * len(erase)
        elif isinstance(self.guide, str):
            guides = (self.guide,) * len(erase)
        else:
            guides = tuple(self.guide)
            if len(guides) != len(erase):
                raise ConceptError(
                    f"{len(guides)} guides for {len(erase)} erased concepts: give one guide for all, or one per concept"
                )
            object.__setattr__(self, "guide", guides)
        for c, g in zip(erase, guides):
            if normalize(c) == normalize(g):
                raise ConceptError(
                    f"concept {c!r} is its own guide; pick a different guide (e.g. {DEFAULT_GUIDE[self.kind]!r})"
                )
        return guides

    @property
    def guides(self) -> tuple[str, ...]:
        """One guide per erased concept."""
        return self._guides

    @property
    def template_list(self) -> tuple[str, ...]:
        return self.templates_for(reference=False)

    def templates_for(self, reference: bool = False) -> tuple[str, ...]:
        """The templates to expand with: ``("{}",)`` when off, the user's list when given, else the
        kind's list — erasekit's (``reference=False``) or the UCE reference scripts' (``reference=True``)."""
        if self.templates is True:
            return reference_templates(self.kind) if reference else TEMPLATES[self.kind]
        if self.templates is False:
            return ("{}",)
        return self.templates

    def erase_pairs(
        self, templates: tuple[str, ...] | None = None, template_guide: bool = True
    ) -> list[tuple[str, str]]:
        """Aligned (erase prompt, guide prompt) pairs after template expansion.

        ``templates`` overrides :attr:`template_list`; ``template_guide=False`` keeps the guide bare
        (UCE v1 templates the erase prompt only).
        """
        tpl = self.template_list if templates is None else templates
        return [
            (_fill(t, c), _fill(t, g) if template_guide else g) for c, g in zip(self.erase, self.guides) for t in tpl
        ]

    def preserve_prompts(self, templates: tuple[str, ...] | None = None) -> list[str]:
        """Preserve prompts after template expansion (``templates`` overrides :attr:`template_list`)."""
        tpl = self.template_list if templates is None else templates
        return [_fill(t, c) for c in self.preserve for t in tpl]

    def to_dict(self) -> dict:
        return {
            "erase": list(self.erase),
            "kind": self.kind,
            "guides": list(self.guides),
            "preserve": list(self.preserve),
            "templates": list(self.template_list),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ConceptSet:
        tpl = tuple(d.get("templates", ("{}",)))
        return cls(
            erase=tuple(d["erase"]),
            kind=d.get("kind", "style"),
            guide=tuple(d["guides"]) if "guides" in d else d.get("guide"),
            preserve=tuple(d.get("preserve", ())),
            templates=False if tpl == ("{}",) else tpl,
        )


def _check_text(label: str, value: str) -> None:
    """Concepts are prompt text: no bytes that were not UTF-8, no lone surrogates, no control characters
    (erasekit.text).
    The CLI refuses them at the command line; this catches the Python API and edit files."""
    problem = text_problem(value)
    if problem:
        raise ConceptError(f"{label} '{plain(value)}': {problem}; give concepts as plain text")
