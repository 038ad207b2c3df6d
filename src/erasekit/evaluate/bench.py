"""``erasekit bench``: erase each concept with each registered method, then evaluate them all together.

Methods are looked up in the registry (:func:`erasekit.list_methods`), so methods registered
later are benchmarked without changes here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..concepts import ConceptSet
from ..errors import ConceptError, MethodError


def parse_methods(spec: str | None) -> dict[str, str]:
    """``"uce,space,pure_text=pure"`` -> {"uce": "uce", "space": "space", "pure_text": "pure"} (label -> method).

    ``LABEL=METHOD`` runs a registered method under another name, so that variants of one method
    (``--set pure_text.basis=text``) are compared side by side on the same seeds. Default: every
    registered method under its own name.
    """
    from ..methods import get_method, list_methods

    if not spec:
        return {m: m for m in list_methods()}
    out: dict[str, str] = {}
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        label, eq, method = entry.partition("=")
        label, method = label.strip(), (method.strip() if eq else label.strip())
        if not method or not re.fullmatch(r"[A-Za-z0-9_-]+", label):
            raise MethodError(
                f"method entry {entry!r} is not METHOD or LABEL=METHOD (e.g. pure_text=pure); "
                "labels use letters, digits, '_' and '-' (they name edit files and --set keys)"
            )
        if label == "unedited":
            raise MethodError("'unedited' is reserved for the unedited model's row; choose another label")
        if label in out:
            raise MethodError(
                f"method label {label!r} appears twice in --methods; give each variant its own label (LABEL=METHOD)"
            )
        get_method(method)  # unknown method: clear error before anything slow
        out[label] = method
    if not out:
        raise MethodError("--methods is empty: name at least one registered method (see `erasekit methods`)")
    return out


def parse_options(pairs: Sequence[str], methods: Mapping[str, str] | Sequence[str]) -> dict[str, dict]:
    """``["space.target_sparsity=0.85", ...]`` -> {"space": {"target_sparsity": 0.85}}.

    ``methods``: label -> registered method (:func:`parse_methods`; a plain list uses each method as its
    label); a variant's options go under its label. Values are typed by the option's config field
    (the shared parse of :mod:`erasekit.methods.base`); ``templates`` is a yes/no concept-set option.
    """
    from ..defaults import CONCEPT_OPTIONS
    from ..methods import get_method
    from ..methods.base import OptionType, not_an_option, option_types

    labels = dict(methods) if isinstance(methods, Mapping) else {m: m for m in methods}
    out: dict[str, dict] = {m: {} for m in labels}
    for p in pairs:
        key, eq, value = p.partition("=")
        label, dot, option = key.partition(".")
        option = option.strip().replace("-", "_")
        if not eq or not dot or not option:
            raise MethodError(f"option {p!r} is not METHOD.OPTION=VALUE (e.g. space.target_sparsity=0.85)")
        if label not in out:
            raise MethodError(
                f"option {p!r} is for {label!r}, which is not among the benchmarked methods {list(labels)}"
            )
        types = option_types(get_method(labels[label]).config_class)
        if option in CONCEPT_OPTIONS:
            out[label][option] = OptionType.of("bool").parse(option, value)
        elif option in types:
            out[label][option] = types[option].parse(option, value)
        else:
            raise not_an_option(labels[label], [option])
    return out


def split_concepts(spec: str) -> tuple[str, ...]:
    """``"circle+red"`` -> ("circle", "red"): the concepts one edit erases together."""
    parts = tuple(p.strip() for p in spec.split("+") if p.strip())
    if not parts:
        raise ConceptError(f"empty concept entry {spec!r}; write CONCEPT or A+B for several in one edit")
    return parts


def tinyworld_concept_set(concept: str | Sequence[str]) -> ConceptSet:
    """Erase one or several tinyworld values in one edit (``"circle+red"`` or a list), preserving
    the values left of each attribute touched (guide: the empty prompt).

    Refuses a value named twice (also through a synonym, ``circle+disc``) and erasing every value
    of an attribute (nothing would be left to draw or to retain).
    """
    from ..tinyworld import world
    from .suites import tinyworld_attribute

    names = split_concepts(concept) if isinstance(concept, str) else tuple(concept)
    parsed = [tinyworld_attribute(c) for c in names]
    seen: dict[str, str] = {}
    for name, (_, value) in zip(names, parsed):
        if value in seen:
            raise ConceptError(f"{name!r} and {seen[value]!r} are the same tinyworld concept ({value}); list it once")
        seen[value] = name
    erased = {a: [v for b, v in parsed if b == a] for a in world.ATTRIBUTES}
    for attr, values in erased.items():
        if values and len(values) == len(world.ATTRIBUTES[attr]):
            raise ConceptError(
                f"erasing every {attr} ({', '.join(values)}) leaves nothing to draw or retain; keep at least one"
            )
    preserve = tuple(v for a, vs in erased.items() if vs for v in world.ATTRIBUTES[a] if v not in vs)
    return ConceptSet(erase=tuple(v for _, v in parsed), kind="object", preserve=preserve)


def fit_edits(
    pipe,
    methods: dict[str, str] | Sequence[str],
    concept_sets: dict[str, ConceptSet],
    options: dict[str, dict],
    out_dir: Path,
    progress: bool = True,
    defaults: str | None = "erasekit",
) -> tuple[dict[str, dict], dict[tuple[str, str], float]]:
    """{study: {label: Edit}} and the fit seconds of each; every edit is also saved to ``out_dir/edits``.

    ``methods`` maps labels to registered methods (:func:`parse_methods`); a plain list uses each method as its label.
    ``options`` (label -> the user's options, ``templates`` included) go to :func:`erasekit.erase` with
    ``defaults`` (its per-model defaults: 'erasekit', 'published' or None), which records what was applied
    in each edit's ``stats['defaults']``.
    """
    import erasekit

    methods = dict(methods) if isinstance(methods, dict) else {m: m for m in methods}
    edits: dict[str, dict] = {}
    seconds: dict[tuple[str, str], float] = {}
    for name, cs in concept_sets.items():
        edits[name] = {}
        for m, method in methods.items():
            t0 = time.perf_counter()
            edit = erasekit.erase(
                pipe, method=method, concepts=cs, defaults=defaults, progress=progress, **options.get(m, {})
            )
            seconds[(name, m)] = time.perf_counter() - t0
            edit.save(out_dir / "edits" / f"{name}-{m}.safetensors".replace(" ", "_"))
            edits[name][m] = edit
    return edits, seconds
