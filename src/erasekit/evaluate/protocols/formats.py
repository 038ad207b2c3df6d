"""Reading a protocol's prompt files as they are (HUB's layouts, COCO captions, names lists) into suites.

Each reader returns ``[(prompt, labels, meta)]`` rows; :func:`load_suite` turns them into a
:class:`~erasekit.evaluate.suites.Suite` with the suite's images per prompt and seed rule. CSV files in the layouts
erasekit already reads (I2P, ESD, UnlearnDiffAtk) go through :func:`~erasekit.evaluate.suites.load_prompts`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ...errors import ProtocolError
from ..suites import Suite, SuiteItem, load_prompts, read_prompt_text, universal_lines
from .base import PromptSource, SuiteSpec

Row = tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]
HUB_LANGUAGES = ("Spanish", "French", "German", "Italian", "Portuguese")


def _csv_rows(text: str, name: str, need: Sequence[str]) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows:
        raise ProtocolError(f"prompt set {name!r} has no rows")
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise ProtocolError(f"prompt set {name!r} has no column(s) {missing} (columns: {list(rows[0])[:8]})")
    return rows


def read_rows(src: PromptSource, path: Path) -> list[Row]:
    """Every row of ``path`` read in ``src.format`` (before ``limit``), labelled with ``src.concept``."""
    text, _ = read_prompt_text(path)
    label = (src.concept,) if src.concept else ()
    fmt = src.format
    if fmt == "lines":
        return [(p, label, ()) for p in universal_lines(text)]
    if fmt == "coco":
        return [
            (r["text"], (), (("image_id", r["image_id"]),)) for r in _csv_rows(text, src.name, ("image_id", "text"))
        ]
    if fmt == "hub-multilingual":
        rows = _csv_rows(text, src.name, ("Original", "Index", *HUB_LANGUAGES))
        langs = (src.column,) if src.column else HUB_LANGUAGES
        if src.column is not None and src.column not in rows[0]:
            raise ProtocolError(f"prompt set {src.name!r} has no language column {src.column!r}")
        return [(r[lang], label, (("index", r["Index"]), ("language", lang))) for r in rows for lang in langs]
    if fmt == "hub-selective":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProtocolError(f"prompt set {src.name!r} is not JSON: {e}") from None
        if not isinstance(data, list) or not all(isinstance(d, dict) and "prompt" in d for d in data):
            raise ProtocolError(f"prompt set {src.name!r}: expected a JSON list of {{prompt, nouns, index}}")
        return [
            (
                d["prompt"],
                label,
                (("index", str(d.get("index", ""))), ("nouns", "|".join(n.strip() for n in d.get("nouns", [])))),
            )
            for d in data
        ]
    if fmt == "hub-pinpoint":
        rows = _csv_rows(text, src.name, ("noun", "similarity"))
        return [
            (t.format(r["noun"]), (r["noun"],), (("noun", r["noun"]), ("similarity", r["similarity"])))
            for r in rows
            for t in src.templates
        ]
    if fmt == "names":
        return [(t.format(n.strip()), (n.strip(),), ()) for n in universal_lines(text) for t in src.templates]
    raise ProtocolError(f"prompt set {src.name!r}: format {fmt!r} is read by load_prompts, not read_rows")


def _limited(rows: list, src: PromptSource) -> list:
    if src.limit is None:
        return rows
    if src.format in ("hub-pinpoint", "names"):  # limit counts file rows (nouns, names), not filled templates
        return rows[: src.limit * len(src.templates)]
    if src.format == "hub-multilingual" and src.column is None:
        return rows[: src.limit * 5]
    return rows[: src.limit]


def load_suite(spec: SuiteSpec, guidance: float | None = None, cache_dir: str | os.PathLike | None = None) -> Suite:
    """The :class:`Suite` of a file-backed ``spec`` (pins checked), ``images_per_prompt`` items per prompt."""
    src = spec.source
    if src is None:
        raise ProtocolError(f"suite {spec.name!r} is built at evaluation time ({spec.builder}), not read from a file")
    path, info = src.resolve(cache_dir)
    g = spec.guidance if spec.guidance is not None else guidance
    k = spec.images_per_prompt
    if src.format == "csv":
        base = load_prompts(
            path,
            kind=spec.kind,
            name=spec.name,
            concepts=(src.concept,) if src.concept else None,
            seed=spec.base_seed,
            guidance=g,
            limit=src.limit,
        )
        items = []
        for i, it in enumerate(base.items):
            for j in range(k):
                seed = it.seed + j if spec.seeds == "file" else spec.base_seed + i * k + j
                items.append(SuiteItem(it.prompt, seed, it.guidance, it.concepts, None, it.meta))
    else:
        rows = _limited(read_rows(src, path), src)
        items = [
            SuiteItem(p, spec.base_seed + i * k + j, g, labels, None, meta)
            for i, (p, labels, meta) in enumerate(rows)
            for j in range(k)
        ]
    if not items:
        raise ProtocolError(f"prompt set {src.name!r} ({str(path)!r}) holds no prompt")
    return Suite(
        spec.name,
        spec.kind,
        items,
        source=str(path),
        info={
            "format": src.format,
            "sha256": info["sha256"],
            "git_blob": info["git_blob"],
            "prompts": len(items) // k,
            "images_per_prompt": k,
            "seeds": spec.seeds,
            "role": spec.role,
            "category": src.category,
        },
    )
