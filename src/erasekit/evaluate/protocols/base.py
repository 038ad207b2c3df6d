"""Protocols as data (DESIGN §11): prompt sources, suites, judges and metrics, declared, checked, recorded whole.

A :class:`Protocol` is what a paper's evaluation *is*: which prompt files (by path or URL, pinned by checksum), how
many images per prompt and with which seeds, which sampler / steps / guidance / size, which judges with which pinned
settings, which metrics. It is a frozen value: :meth:`Protocol.to_dict` goes into ``results.json`` whole, and
:meth:`Protocol.check` validates every file *before* any model loads — a missing file, a wrong checksum or a gated
set without the user's path is a :class:`~erasekit.errors.ProtocolError` that names the file and the fix.

Protocols register by name (:func:`register_protocol`), one module each: ``hub``, ``space-nudity``, ``mace-styles``,
``tinyworld``. Seeds are per image (``seeds='per-image'``: item ``i``'s image ``j`` uses
``base_seed + i * images_per_prompt + j``), unlike HUB's one global seed, so any image can be regenerated alone.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ProtocolError
from ..suites import KINDS

FORMATS = (
    "lines",  # one prompt per line, no header, universal newlines (HUB target_image/, attack_robustness/)
    "csv",  # erasekit's CSV loader: I2P, ESD, UnlearnDiffAtk (suites.load_prompts)
    "hub-multilingual",  # Original,Spanish,French,German,Italian,Portuguese,Index
    "hub-selective",  # JSON list of {prompt, nouns, index}
    "hub-pinpoint",  # noun,similarity -> templates filled with each noun
    "coco",  # image_id,text
    "names",  # one concept name per line -> templates filled with each name
)
SEED_RULES = ("per-image", "file")
_HEX = re.compile(r"[0-9a-f]+")
_JSON_SCALARS = (str, int, float, bool, type(None))


def _freeze(value: Any, what: str) -> Any:
    """A JSON-like value made hashable: dicts to sorted pairs, lists to tuples; anything else refused."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v, what)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, what) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{what}: {value!r} is not a finite number")
    if not isinstance(value, _JSON_SCALARS):
        raise ProtocolError(f"{what}: {type(value).__name__} is not a setting a protocol can record (use str / number)")
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        if all(isinstance(p[0], str) for p in value):
            return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _check_hex(name: str, value: str | None, length: int) -> str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if len(v) != length or not _HEX.fullmatch(v):
        raise ProtocolError(f"{name} must be {length} hexadecimal digits, got {value!r}")
    return v


# ------------------------------------------------------------------ prompt sources
@dataclass(frozen=True)
class PromptSource:
    """One prompt file: where it is (``path``, or ``url`` with ``sha256``), how it is pinned, how it is read.

    * ``sha256``: of the bytes as stored; ``git_blob``: ``git hash-object`` of the decompressed content (a pin that
      holds for an upstream file and a gzipped copy alike). Either or both; a URL needs ``sha256``.
    * ``format``: one of :data:`FORMATS`; ``concept`` / ``category``: the labels the judge is asked about;
      ``limit``: the first N prompts; ``column``: ``hub-multilingual``'s language (None: every translation);
      ``templates``: what ``hub-pinpoint`` / ``names`` fill with each row.
    * ``gated``: a set that is not redistributable (Ring-A-Bell, MMA-Diffusion, P4D): no path or URL is declared,
      the user gives one; the text says where it comes from and is shown in the refusal when none is given.
    """

    name: str
    format: str
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    git_blob: str | None = None
    concept: str | None = None
    category: str | None = None
    limit: int | None = None
    column: str | None = None
    templates: tuple[str, ...] = ()
    gated: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ProtocolError("a prompt source needs a name")
        if self.format not in FORMATS:
            raise ProtocolError(f"source {self.name!r}: format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.path is not None and self.url is not None:
            raise ProtocolError(f"source {self.name!r}: give a path or a URL, not both")
        if self.path is None and self.url is None and self.gated is None:
            raise ProtocolError(f"source {self.name!r}: no path and no URL")
        object.__setattr__(self, "sha256", _check_hex(f"source {self.name!r}: sha256", self.sha256, 64))
        object.__setattr__(self, "git_blob", _check_hex(f"source {self.name!r}: git_blob", self.git_blob, 40))
        if self.url is not None:
            scheme = urllib.parse.urlparse(self.url).scheme
            if scheme not in ("http", "https", "file"):
                raise ProtocolError(f"source {self.name!r}: URL scheme {scheme!r} is not http(s) or file")
            if self.sha256 is None:
                raise ProtocolError(
                    f"source {self.name!r}: a URL needs its sha256 so the prompts cannot change silently"
                )
        if self.limit is not None and (isinstance(self.limit, bool) or int(self.limit) != self.limit or self.limit < 1):
            raise ProtocolError(f"source {self.name!r}: limit must be a positive integer or None, got {self.limit!r}")
        object.__setattr__(self, "templates", tuple(self.templates))
        if self.format in ("hub-pinpoint", "names"):
            if not self.templates or any(t.count("{}") != 1 for t in self.templates):
                raise ProtocolError(
                    f"source {self.name!r}: format {self.format!r} needs templates with exactly one '{{}}' each"
                )
        elif self.templates:
            raise ProtocolError(f"source {self.name!r}: templates apply to hub-pinpoint and names files only")
        if self.column is not None and self.format != "hub-multilingual":
            raise ProtocolError(f"source {self.name!r}: column applies to hub-multilingual files only")

    def resolve(self, cache_dir: str | os.PathLike | None = None) -> tuple[Path, dict]:
        """(local path, file info) with every pin checked; a URL is downloaded once into the cache.

        Raises :class:`ProtocolError` naming the file and the fix: a gated set without a path, a missing file, a
        checksum that differs.
        """
        from ..suites import fetch, read_prompt_text

        if self.path is None and self.url is None:
            raise ProtocolError(
                f"prompt set {self.name!r} is not redistributable and erasekit does not ship it: {self.gated} "
                f"Give its path (protocol option paths={{{self.name!r}: PATH}}, command line "
                f"--protocol-file {self.name}=PATH), or leave the set out (sets=...)."
            )
        if self.url is not None:
            try:
                path = fetch(self.url, self.sha256, cache_dir)
            except ProtocolError:
                raise
            except Exception as e:  # ConceptError from the downloader: re-raised as the protocol's refusal
                raise ProtocolError(f"prompt set {self.name!r}: {e}") from None
        else:
            path = Path(self.path).expanduser()  # type: ignore[arg-type]
            if not path.is_file():
                raise ProtocolError(
                    f"prompt set {self.name!r}: file {str(path)!r} does not exist; give the folder or file that "
                    "holds it (e.g. --hub-dir for HUB's prompts/ folder)"
                )
        _, info = read_prompt_text(path)
        if self.sha256 is not None and info["sha256"] != self.sha256:
            raise ProtocolError(
                f"prompt set {self.name!r}: {str(path)!r} has sha256 {info['sha256']}, the protocol pins "
                f"{self.sha256}; the file is not the one the protocol was declared with (re-download it)"
            )
        if self.git_blob is not None and info["git_blob"] != self.git_blob:
            raise ProtocolError(
                f"prompt set {self.name!r}: {str(path)!r} holds content with git blob id {info['git_blob']}, the "
                f"protocol pins {self.git_blob}; the file is not the upstream one (re-download it)"
            )
        return path, {"path": str(path), **info}

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "name": self.name,
            "format": self.format,
            "path": self.path,
            "url": self.url,
            "sha256": self.sha256,
            "git_blob": self.git_blob,
            "concept": self.concept,
            "category": self.category,
            "limit": self.limit,
        }
        if self.column is not None:
            d["column"] = self.column
        if self.templates:
            d["templates"] = list(self.templates)
        if self.gated is not None:
            d["gated"] = self.gated
        return d


# ------------------------------------------------------------------ suites, judges
@dataclass(frozen=True)
class SuiteSpec:
    """One suite of a protocol: a prompt ``source`` (or a ``builder`` run at evaluation time, e.g. an attack
    against the edit), its kind (:data:`erasekit.evaluate.suites.KINDS`), the metric ``role`` it feeds, images per
    prompt, the seed rule (``'per-image'``: ``base_seed + i * images_per_prompt + j``; ``'file'``: the file's own
    seed column, image ``j`` adding ``j``) and the guidance (None: the protocol's)."""

    name: str
    kind: str
    source: PromptSource | None = None
    builder: str | None = None
    role: str = ""
    images_per_prompt: int = 1
    seeds: str = "per-image"
    base_seed: int = 0
    guidance: float | None = None
    concepts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProtocolError(f"suite {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if (self.source is None) == (self.builder is None):
            raise ProtocolError(f"suite {self.name!r}: give exactly one of a prompt source and a builder")
        if isinstance(self.images_per_prompt, bool) or int(self.images_per_prompt) != self.images_per_prompt:
            raise ProtocolError(f"suite {self.name!r}: images_per_prompt must be an integer")
        if self.images_per_prompt < 1:
            raise ProtocolError(f"suite {self.name!r}: images_per_prompt must be >= 1, got {self.images_per_prompt}")
        if self.seeds not in SEED_RULES:
            raise ProtocolError(f"suite {self.name!r}: seeds must be one of {', '.join(SEED_RULES)}")
        if self.seeds == "file" and (self.source is None or self.source.format != "csv"):
            raise ProtocolError(f"suite {self.name!r}: seeds='file' needs a CSV source with a seed column")
        if self.base_seed < 0:
            raise ProtocolError(f"suite {self.name!r}: base_seed must be >= 0")
        object.__setattr__(self, "concepts", tuple(self.concepts))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "role": self.role,
            "source": None if self.source is None else self.source.to_dict(),
            "builder": self.builder,
            "images_per_prompt": self.images_per_prompt,
            "seeds": self.seeds,
            "base_seed": self.base_seed,
            "guidance": self.guidance,
            "concepts": list(self.concepts),
        }


JUDGE_ROLES = (
    "concept",  # decides whether an image shows a concept (target, retain, attack suites)
    "quality",  # scores generation quality (the quality suite; e.g. LAION's aesthetic predictor)
    "score",  # scores each image against its own prompt (SPACE's CLIP score)
)


@dataclass(frozen=True)
class JudgeSpec:
    """A judge of the judge registry (:mod:`erasekit.evaluate.judges`) by its registered name, with

    * ``settings``: what the paper pins and erasekit records (model id, reference images, decoding, ...);
    * ``options``: the registry options the protocol sets (``make_judge(name, **options)``; the user's
      ``--judge-path NAME=PATH,key=value`` wins, and what it changed is recorded);
    * ``categories``: the concept categories it decides (empty: all); ``role``: one of :data:`JUDGE_ROLES`;
    * ``unavailable``: why erasekit cannot run this judge (e.g. weights only as a pickle or a non-transformers
      model); such a judge is declared and recorded, and a run that needs it is refused before any model loads.
    """

    name: str
    settings: Any = ()
    categories: tuple[str, ...] = ()
    options: Any = ()
    role: str = "concept"
    unavailable: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ProtocolError("a judge needs a name")
        object.__setattr__(self, "settings", _freeze(dict(self.settings), f"judge {self.name!r} settings"))
        object.__setattr__(self, "options", _freeze(dict(self.options), f"judge {self.name!r} options"))
        object.__setattr__(self, "categories", tuple(self.categories))
        if self.role not in JUDGE_ROLES:
            raise ProtocolError(f"judge {self.name!r}: role must be one of {', '.join(JUDGE_ROLES)}, got {self.role!r}")
        if self.unavailable is None:
            from ...errors import JudgeError
            from ..judges import get_judge_class

            try:
                get_judge_class(self.name)
            except JudgeError as e:
                raise ProtocolError(
                    f"protocol judge {self.name!r} is not a registered judge ({e}); name a registered one or declare "
                    "it unavailable=REASON"
                ) from None

    @property
    def settings_dict(self) -> dict:
        return {k: _thaw(v) for k, v in self.settings}

    @property
    def options_dict(self) -> dict:
        return {k: _thaw(v) for k, v in self.options}

    def decides(self, category: str | None) -> bool:
        """Whether this judge decides concepts of ``category`` (a judge without categories decides all)."""
        return self.role == "concept" and (not self.categories or category in self.categories)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "settings": self.settings_dict,
            "options": self.options_dict,
            "categories": list(self.categories),
            "unavailable": self.unavailable,
        }


# ------------------------------------------------------------------ the protocol
@dataclass(frozen=True)
class Protocol:
    """A paper's evaluation as data. ``reference`` holds the paper's published numbers (with where they are from),
    ``notes`` every known difference from the paper's own run (its bugs, its seeding, unpublished choices)."""

    name: str
    summary: str
    suites: tuple[SuiteSpec, ...]
    judges: tuple[JudgeSpec, ...]
    metrics: tuple[str, ...]
    sampler: str = "pipeline default"
    steps: int = 50
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    model: str | None = None
    options: Any = ()
    reference: Any = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "suites", tuple(self.suites))
        object.__setattr__(self, "judges", tuple(self.judges))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "notes", tuple(self.notes))
        if not self.suites:
            raise ProtocolError(f"protocol {self.name!r} declares no suite")
        names = [s.name for s in self.suites]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ProtocolError(f"protocol {self.name!r}: suite names repeat: {dup}")
        if not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise ProtocolError(f"protocol {self.name!r}: metrics must be a non-empty list without repeats")
        if not self.judges:
            raise ProtocolError(f"protocol {self.name!r} declares no judge")
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise ProtocolError(f"protocol {self.name!r}: steps must be a positive integer, got {self.steps!r}")
        if not math.isfinite(float(self.guidance)) or self.guidance < 0:
            raise ProtocolError(f"protocol {self.name!r}: guidance must be a finite number >= 0")
        for side in ("height", "width"):
            v = getattr(self, side)
            if v is not None and (int(v) != v or v < 8 or v % 8):
                raise ProtocolError(f"protocol {self.name!r}: {side} must be a positive multiple of 8, got {v!r}")
        object.__setattr__(self, "options", _freeze(dict(self.options), f"protocol {self.name!r} options"))
        object.__setattr__(self, "reference", _freeze(dict(self.reference), f"protocol {self.name!r} reference"))

    def sources(self) -> list[PromptSource]:
        """Every distinct prompt source, in first-use order."""
        return list({s.source.name: s.source for s in self.suites if s.source is not None}.values())

    def check(self, cache_dir: str | os.PathLike | None = None) -> dict[str, dict]:
        """Resolve every prompt source (files exist, pins hold, gated sets given) before any model loads:
        source name -> file info. Every problem is reported at once, one line each."""
        out, problems = {}, []
        for src in self.sources():
            try:
                out[src.name] = src.resolve(cache_dir)[1]
            except ProtocolError as e:
                problems.append(str(e))
        if problems:
            raise ProtocolError(
                f"protocol {self.name!r} cannot run ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
            )
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "summary": self.summary,
            "model": self.model,
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
            "suites": [s.to_dict() for s in self.suites],
            "judges": [j.to_dict() for j in self.judges],
            "metrics": list(self.metrics),
            "options": {k: _thaw(v) for k, v in self.options},
            "reference": {k: _thaw(v) for k, v in self.reference},
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------ registry
@dataclass(frozen=True)
class ProtocolEntry:
    name: str
    summary: str
    build: Callable[..., Protocol]


PROTOCOLS: dict[str, ProtocolEntry] = {}


def available() -> list[str]:
    """The registered protocols' names."""
    return sorted(PROTOCOLS)


def register_protocol(name: str, summary: str) -> Callable[[Callable[..., Protocol]], Callable[..., Protocol]]:
    """Register ``build(**options) -> Protocol`` under ``name`` (peft-like: one module per protocol)."""

    def deco(fn: Callable[..., Protocol]) -> Callable[..., Protocol]:
        if name in PROTOCOLS:
            raise ProtocolError(f"protocol {name!r} is registered twice")
        PROTOCOLS[name] = ProtocolEntry(name, summary, fn)
        return fn

    return deco


def build_protocol(
    name: str, *, check: bool = True, cache_dir: str | os.PathLike | None = None, **options: Any
) -> Protocol:
    """The protocol ``name`` built with ``options``; with ``check`` (the default) every file is resolved and its pins
    checked here, before any model loads."""
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; choose one of {', '.join(available())}")
    try:
        protocol = PROTOCOLS[name].build(**options)
    except TypeError as e:  # an option the protocol does not take
        raise ProtocolError(f"protocol {name!r}: {e}") from None
    if check:
        protocol.check(cache_dir)
    return protocol


# ------------------------------------------------------------------ finding files
def _project_root() -> Path:
    return Path(__file__).resolve().parents[4]


def shared_prompts_dir() -> Path | None:
    """``../shared/data/prompts`` beside the project (or the working directory), when present."""
    for base in (_project_root(), Path.cwd()):
        p = base.parent / "shared" / "data" / "prompts"
        if p.is_dir():
            return p
    return None


def find_file(root: Path, relpath: str, suffixes: Iterable[str] = ("", ".gz")) -> Path | None:
    """``root/relpath`` as given or gzipped, its name in NFC or NFD (macOS keeps accented names decomposed)."""
    for form in ("NFC", "NFD"):
        rel = unicodedata.normalize(form, relpath)
        for suffix in suffixes:
            p = root / (rel + suffix)
            if p.is_file():
                return p
    return None


@dataclass(frozen=True)
class UserPaths:
    """``{set name: path}`` the user gives for gated sets (or to replace a declared file), checked once."""

    paths: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: Mapping[str, Any] | Iterable[str] | None) -> UserPaths:
        if items is None:
            return cls({})
        if isinstance(items, Mapping):
            return cls({str(k): str(v) for k, v in items.items()})
        out = {}
        for item in items:
            name, sep, path = str(item).partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ProtocolError(f"--protocol-file takes NAME=PATH, got {item!r}")
            out[name.strip()] = path.strip()
        return cls(out)

    def unknown(self, known: Iterable[str]) -> list[str]:
        return sorted(set(self.paths) - set(known))


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
