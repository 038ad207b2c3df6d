"""Prompt suites and the prompt files of the concept-erasure literature, as data.

:class:`SuiteItem` / :class:`Suite` are what an evaluation generates and judges; :func:`load_prompts`
reads the standard prompt files (I2P, ESD, UnlearnDiffAtk CSVs and one-prompt-per-line text files, by
path or by URL with a required SHA-256). They sit below the methods because a method's general-prompt
prior reads the same files (:mod:`erasekit.prior`); :mod:`erasekit.evaluate.suites` builds suites on them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ._atomic import write_bytes_atomic
from .errors import ConceptError

KINDS = ("target", "paraphrase", "adversarial", "retain", "general")


@dataclass(frozen=True)
class SuiteItem:
    """One image to generate and judge.

    ``concepts`` are the labels the judge is asked about: the erased concept(s) for target /
    paraphrase / adversarial items, the neighbour that must survive for retain items, the
    attributes of the prompt for general items. ``shift`` = (vector name, η) makes the
    conditioning ``encode(prompt) + η · Suite.vectors[name]`` (concept-vector attacks); ``token`` names a learned
    token in ``Suite.vectors`` whose vector replaces its carrier word's input embedding (CCE); ``sampling`` =
    (η, variance scale, steps or None) samples with DDIM's stochasticity η and its noise scaled (noise-based probing).
    """

    prompt: str
    seed: int
    guidance: float | None = None
    concepts: tuple[str, ...] = ()
    shift: tuple[str, float] | None = None
    meta: tuple[tuple[str, str], ...] = ()
    token: str | None = None
    sampling: tuple[float, float, int | None] | None = None

    def to_dict(self) -> dict:
        d = {"prompt": self.prompt, "seed": self.seed, "guidance": self.guidance, "concepts": list(self.concepts)}
        if self.shift is not None:
            d["shift"] = [self.shift[0], self.shift[1]]
        if self.meta:
            d["meta"] = dict(self.meta)
        if self.token is not None:
            d["token"] = self.token
        if self.sampling is not None:
            d["sampling"] = list(self.sampling)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> SuiteItem:
        shift, sampling = d.get("shift"), d.get("sampling")
        return cls(
            d["prompt"],
            int(d["seed"]),
            d.get("guidance"),
            tuple(d.get("concepts", ())),
            None if shift is None else (str(shift[0]), float(shift[1])),
            tuple(sorted(d.get("meta", {}).items())),
            None if d.get("token") is None else str(d["token"]),
            None
            if sampling is None
            else (float(sampling[0]), float(sampling[1]), None if sampling[2] is None else int(sampling[2])),
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
        refs = {it.shift[0] for it in self.items if it.shift is not None}
        missing = (refs | {it.token for it in self.items if it.token is not None}) - set(self.vectors)
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
    * anything else (``.txt`` ...): one prompt per non-empty line, seeds ``seed, seed+1, ...``.

    A gzipped file (told by its magic bytes) is read decompressed; ``name.csv.gz`` is a CSV. ``info['sha256']`` is
    the digest of the bytes as stored.

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
    text, file_info = read_prompt_text(path)  # gunzipped when gzip, whatever the name; a clear error when not UTF-8
    digest = file_info["sha256"]  # of the bytes as stored: what a user's --sha256 pins
    override = tuple(concepts) if concepts is not None else None
    if _is_csv(path):
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
        lines = [ln.strip() for ln in universal_lines(text) if ln.strip()]
        items = [
            SuiteItem(p, seed + i, guidance, override or ()) for i, p in enumerate(lines[:limit] if limit else lines)
        ]
    if not items:
        raise ConceptError(f"{src!r} holds no prompt")
    info = {"format": fmt, "sha256": digest, "rows": len(items), "gzip": file_info["gzip"]}
    return Suite(name or _stem(path), kind, items, source=src, info=info)


def _stem(path: Path) -> str:
    """The file name without its format suffixes: ``i2p.csv.gz`` -> ``i2p``."""
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem


def _is_csv(path: Path) -> bool:
    """A CSV prompt file by name, gzipped (``.csv.gz``) or not."""
    name = path.name.lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


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
