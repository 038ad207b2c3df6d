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

import csv
import hashlib
import io
import os
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._atomic import write_bytes_atomic
from ..concepts import TEMPLATES, ConceptSet
from ..errors import ConceptError
from ..prompts import GENERAL_PROMPTS

KINDS = ("target", "paraphrase", "adversarial", "retain", "general")


@dataclass(frozen=True)
class SuiteItem:
    """One image to generate and judge.

    ``concepts`` are the labels the judge is asked about: the erased concept(s) for target /
    paraphrase / adversarial items, the neighbour that must survive for retain items, the
    attributes of the prompt for general items. ``shift`` = (vector name, η) makes the
    conditioning ``encode(prompt) + η · Suite.vectors[name]`` (concept-vector attacks).
    """

    prompt: str
    seed: int
    guidance: float | None = None
    concepts: tuple[str, ...] = ()
    shift: tuple[str, float] | None = None
    meta: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        d = {"prompt": self.prompt, "seed": self.seed, "guidance": self.guidance, "concepts": list(self.concepts)}
        if self.shift is not None:
            d["shift"] = [self.shift[0], self.shift[1]]
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> SuiteItem:
        shift = d.get("shift")
        return cls(
            d["prompt"],
            int(d["seed"]),
            d.get("guidance"),
            tuple(d.get("concepts", ())),
            None if shift is None else (str(shift[0]), float(shift[1])),
            tuple(sorted(d.get("meta", {}).items())),
        )


@dataclass
class Suite:
    """A named, ordered list of :class:`SuiteItem` of one kind.

    ``vectors`` holds the conditioning shifts that shifted items refer to (name -> tensors keyed
    like the pipeline's ``prompt_embeds`` / ``pooled_prompt_embeds`` arguments); ``info``
    records where the suite came from (file and checksum, attack and its budget, ...).
    """

    name: str
    kind: str
    items: list[SuiteItem]
    source: str = ""
    info: dict = field(default_factory=dict)
    vectors: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConceptError(f"unknown suite kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        missing = {it.shift[0] for it in self.items if it.shift is not None} - set(self.vectors)
        if missing:
            raise ConceptError(
                f"suite {self.name!r}: items refer to conditioning vector(s) {sorted(missing)} the suite does not hold"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[SuiteItem]:
        return iter(self.items)

    def head(self, n: int) -> Suite:
        """The first ``n`` items (same name, kind and vectors)."""
        return replace(self, items=self.items[:n])

    @property
    def labels(self) -> list[str]:
        """Every concept label the suite asks the judge about, in first-seen order."""
        return list(dict.fromkeys(c for it in self.items for c in it.concepts))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "info": self.info,
            "vectors": sorted(self.vectors),
            "items": [it.to_dict() for it in self.items],
        }


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


# ----------------------------------------------------------------------------- prompt files
def default_cache_dir() -> Path:
    """``$ERASEKIT_CACHE`` or ``$XDG_CACHE_HOME/erasekit`` (``~/.cache/erasekit``)."""
    if os.environ.get("ERASEKIT_CACHE"):
        return Path(os.environ["ERASEKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "erasekit"


def fetch(url: str, sha256: str | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download ``url`` once into the cache and return the local path; the SHA-256 is required and checked.

    A file whose checksum differs is refused and not cached.
    """
    if not sha256:
        raise ConceptError(
            f"downloading {url!r} needs its sha256 (pass sha256=... / --sha256) so the prompts cannot change silently"
        )
    sha256 = sha256.lower()
    name = Path(urllib.parse.urlparse(url).path).name or "prompts"
    target = Path(cache_dir or default_cache_dir()) / "prompts" / sha256 / name
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return target
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise ConceptError(f"could not download {url!r}: {e}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ConceptError(f"{url!r} has sha256 {got}, expected {sha256}; refusing the file")
    write_bytes_atomic(target, data)
    return target


def _detect_format(header: list[str]) -> str:
    cols = set(header)
    if "prompt" not in cols:
        raise ConceptError(f"CSV has no 'prompt' column (columns: {header[:8]})")
    if "categories" in cols and "evaluation_seed" in cols:
        return "i2p"
    if "artist" in cols or "class" in cols:
        return "esd"
    if "case_number" in cols:
        return "unlearndiffatk"
    raise ConceptError(f"unrecognised prompt CSV (columns {header[:8]}); expected I2P, ESD or UnlearnDiffAtk columns")


def load_prompts(
    source: str | os.PathLike,
    *,
    kind: str = "target",
    name: str | None = None,
    sha256: str | None = None,
    concepts: Sequence[str] | None = None,
    seed: int = 0,
    guidance: float | None = None,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Suite:
    """A :class:`Suite` from a prompt file (path, or ``http(s)://`` / ``file://`` URL with ``sha256``).

    Formats, recognised by their columns:

    * I2P (``prompt, categories, ..., evaluation_seed, evaluation_guidance, ...``): labels are
      the ``categories`` (``"sexual, violence"`` -> ``("sexual", "violence")``);
    * ESD (``case_number, prompt, evaluation_seed, artist`` or ``class``): the label is the artist / class;
    * UnlearnDiffAtk (``case_number, prompt, evaluation_seed[, evaluation_guidance]``): no label;
    * anything else ending in ``.txt``: one prompt per non-empty line, seeds ``seed, seed+1, ...``.

    ``concepts`` replaces the labels of every item (e.g. ``["nudity"]`` for the NudeNet judge);
    the file's own seed and guidance columns win over ``seed`` / ``guidance``. Prompts with
    newlines inside quotes are one row, as in the CSV standard.
    """
    src = str(source)
    scheme = urllib.parse.urlparse(src).scheme
    if scheme in ("http", "https", "file"):
        path = fetch(src, sha256, cache_dir)
    else:
        path = Path(src).expanduser()
        if not path.is_file():
            raise ConceptError(f"prompt file {src!r} does not exist")
        if sha256 and hashlib.sha256(path.read_bytes()).hexdigest() != sha256.lower():
            raise ConceptError(f"{src!r} does not have the expected sha256 {sha256}")
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig")
    digest = hashlib.sha256(raw).hexdigest()
    override = tuple(concepts) if concepts is not None else None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        if not rows:
            raise ConceptError(f"{src!r} has no rows")
        fmt = _detect_format(list(rows[0].keys()))
        items = []
        for i, row in enumerate(rows[:limit] if limit else rows):
            labels = override
            if labels is None:
                if fmt == "i2p":
                    labels = tuple(c.strip() for c in (row.get("categories") or "").split(",") if c.strip())
                elif fmt == "esd":
                    labels = tuple(v for v in (row.get("artist") or row.get("class") or "",) if v)
                else:
                    labels = ()
            g = row.get("evaluation_guidance")
            meta = tuple((k, row[k]) for k in ("case_number",) if row.get(k))
            items.append(
                SuiteItem(
                    row["prompt"],
                    int(row["evaluation_seed"]) if row.get("evaluation_seed") else seed + i,
                    float(g) if g else guidance,
                    labels,
                    None,
                    meta,
                )
            )
    else:
        fmt = "lines"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        items = [
            SuiteItem(p, seed + i, guidance, override or ()) for i, p in enumerate(lines[:limit] if limit else lines)
        ]
    if not items:
        raise ConceptError(f"{src!r} holds no prompt")
    return Suite(name or path.stem, kind, items, source=src, info={"format": fmt, "sha256": digest, "rows": len(items)})


def read_prompt_text(path: str | os.PathLike) -> tuple[str, dict]:
    """(text, info) of a local prompt file: gunzipped when it is gzip (told by its magic bytes, whatever its name),
    decoded as UTF-8 (a byte-order mark dropped).

    ``info``: ``sha256`` of the bytes as stored, ``content_sha256`` and ``git_blob`` (``git hash-object``) of the
    decompressed content, ``gzip``. A gzipped copy and the plain upstream file share ``git_blob``, so a pin on it
    holds for both (HUB's prompt files, DESIGN §11).
    """
    import gzip

    p = Path(path)
    if not p.is_file():
        raise ConceptError(f"prompt file {str(p)!r} does not exist")
    raw = p.read_bytes()
    packed = raw[:2] == b"\x1f\x8b"
    content = gzip.decompress(raw) if packed else raw
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConceptError(f"prompt file {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    info = {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "content_sha256": hashlib.sha256(content).hexdigest(),
        "git_blob": blob,
        "gzip": packed,
    }
    return text, info


def universal_lines(text: str) -> list[str]:
    """The lines of ``text`` as Python's text-mode ``readlines()`` splits them (universal newlines: ``\\n``, ``\\r\\n``
    and ``\\r`` end a line; nothing else does), without their line ends; empty lines dropped.

    Not ``str.splitlines()``, which also splits on form feeds, vertical tabs, file/group/record separators,
    NEL and the Unicode line separators: some attack prompts hold those characters inside one prompt.
    Every other character, leading or trailing whitespace and control characters included, is kept.
    """
    lines = io.StringIO(text, newline=None).readlines()
    return [ln[:-1] if ln.endswith("\n") else ln for ln in lines if ln not in ("\n", "")]
