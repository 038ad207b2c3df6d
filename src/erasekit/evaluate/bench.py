"""``erasekit bench``: erase each concept with each registered method, then evaluate them all together.

Methods are looked up in the registry (:func:`erasekit.list_methods`), so methods registered
later are benchmarked without changes here.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Sequence

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
            raise MethodError(f"method entry {entry!r} is not METHOD or LABEL=METHOD (e.g. pure_text=pure); "
                              "labels use letters, digits, '_' and '-' (they name edit files and --set keys)")
        if label == "unedited":
            raise MethodError("'unedited' is reserved for the unedited model's row; choose another label")
        if label in out:
            raise MethodError(f"method label {label!r} appears twice in --methods; give each variant its own label (LABEL=METHOD)")
        get_method(method)  # unknown method: clear error before anything slow
        out[label] = method
    if not out:
        raise MethodError("--methods is empty: name at least one registered method (see `erasekit methods`)")
    return out


def parse_options(pairs: Sequence[str], methods: Sequence[str]) -> dict[str, dict]:
    """``["space.target_sparsity=0.85", ...]`` -> {"space": {"target_sparsity": 0.85}}; values are JSON when they parse.

    ``methods`` are the labels of :func:`parse_methods` (a variant's options go under its label).
    """
    out: dict[str, dict] = {m: {} for m in methods}
    for p in pairs:
        key, eq, value = p.partition("=")
        method, dot, option = key.partition(".")
        if not eq or not dot or not option:
            raise MethodError(f"option {p!r} is not METHOD.OPTION=VALUE (e.g. space.target_sparsity=0.85)")
        if method not in out:
            raise MethodError(f"option {p!r} is for {method!r}, which is not among the benchmarked methods {list(methods)}")
        try:
            out[method][option] = json.loads(value)
        except json.JSONDecodeError:
            out[method][option] = value
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
            raise ConceptError(f"erasing every {attr} ({', '.join(values)}) leaves nothing to draw or retain; keep at least one")
    preserve = tuple(v for a, vs in erased.items() if vs for v in world.ATTRIBUTES[a] if v not in vs)
    return ConceptSet(erase=tuple(v for _, v in parsed), kind="object", preserve=preserve)


def fit_edits(pipe, methods: dict[str, str] | Sequence[str], concept_sets: dict[str, ConceptSet], options: dict[str, dict], out_dir: Path,
              progress: bool = True, defaults: dict[str, dict] | None = None) -> tuple[dict[str, dict], dict[tuple[str, str], float]]:
    """{study: {label: Edit}} and the fit seconds of each; every edit is also saved to ``out_dir/edits``.

    ``methods`` maps labels to registered methods (:func:`parse_methods`); a plain list uses each method as its label.
    ConceptSet options among a label's options (``templates``) apply to that label's concept set;
    ``defaults`` (label -> record of :func:`erasekit.defaults.resolve`) is stored in each edit's stats.
    """
    import dataclasses

    import erasekit
    from ..defaults import split_concept_options

    methods = dict(methods) if isinstance(methods, dict) else {m: m for m in methods}
    edits: dict[str, dict] = {}
    seconds: dict[tuple[str, str], float] = {}
    for name, cs in concept_sets.items():
        edits[name] = {}
        for m, method in methods.items():
            concept_opts, method_opts = split_concept_options(options.get(m, {}))
            cs_m = dataclasses.replace(cs, **concept_opts) if concept_opts else cs  # e.g. --set M.templates=true
            t0 = time.perf_counter()
            edit = erasekit.erase(pipe, method=method, concepts=cs_m, progress=progress, **method_opts)
            seconds[(name, m)] = time.perf_counter() - t0
            if defaults and m in defaults:
                edit.stats["defaults"] = defaults[m]
            edit.save(out_dir / "edits" / f"{name}-{m}.safetensors".replace(" ", "_"))
            edits[name][m] = edit
    return edits, seconds
