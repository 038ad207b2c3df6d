"""The edit file format: one parser from bytes to frozen, validated objects (DESIGN §6).

An edit file is a ``.safetensors`` file whose ``__metadata__`` holds one JSON document under
the key ``erasekit``. :func:`read_edit_file` is the only reader: ``Edit.load``,
``erasekit.load_edit`` and ``erasekit inspect`` all go through it, and ``Edit.save`` parses
its own metadata with :func:`parse_metadata` before writing, so the writer never produces a
file the reader refuses.

Format 3 (written since issue 23; format 2 is the same document with denoiser-relative keys)::

    {"format": "erasekit.edit", "format_version": 3, "erasekit_version": str,
     "method": method name, "config": {str: JSON}, "concepts": a ConceptSet,
     "base": {str: scalar}, "stats": {str: JSON}, "compute_dtype": float dtype name | null,
     "layers": {key: {"kind": dense|csr|lowrank, "param": "weight", "shape": [int, ...],
                      "fingerprint": {sha256, dtype, shape, fro, sketch[8]}, "stats": {...}}},
     "content_sha256": sha256(b"erasekit.edit/3\\n" + canonical metadata + b"\\n" + tensor digest)}

A layer's key is ``<component>/<module path>`` when it edits ``weight`` and
``<component>/<module path>.<param>`` otherwise (a Conv2d bias, say); the component is the
pipeline attribute that holds the module (``unet/down_blocks.0...attn2.to_k``,
``transformer/context_embedder``), resolved through the pipeline's family when the edit is
applied, and ``base.family`` names the family. Stored tensors are ``<component>/<module>.<param>``
(dense, any rank), ``....<param>.crow_indices / .col_indices / .values`` (CSR) and
``....<param>.lora_A / .lora_B`` (low-rank delta). One dtype policy: every floating tensor is
float32 and finite, CSR indices are int32 or int64.

Formats 1 and 2 keyed layers (and tensors) by the module path relative to the denoiser; the
parser maps them to ``<denoiser>/<path>``, the denoiser being ``base.denoiser``, else the
denoiser of ``base.family``, else ``unet`` (files written before families were all UNet edits).

The checksum detects corruption and accidental edits; it is not a signature: whoever can
rewrite the file can recompute it. Format 1 files (checksum over the tensors only) still load,
with a warning that their metadata is unprotected. :func:`content_sha256` is also the checksum of
erasekit's exports (another domain string), so there is one canonical JSON and one tensor digest.

The parser checks structure only: ``method`` is a name and ``config`` a JSON object, kept as
written. It does not ask the methods registry whether the method exists or its options are
current, so a file survives an option's rename and a plugin method's edit reads without the plugin;
:func:`erasekit.load_edit` warns about keys the registered method does not know, and the method
validates its config when it refits.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import torch

from .errors import EditFileError, UnprotectedMetadataWarning
from .fingerprint_spec import SKETCH_N

FORMAT = "erasekit.edit"
FORMAT_VERSION = 3
DOMAIN = f"{FORMAT}/{FORMAT_VERSION}"  # the checksum's domain string for edit files (each version has its own)
READABLE_VERSIONS = (1, 2, 3)
LEGACY_COMPONENT = "unet"  # the component of a format-1 / 2 file that records neither denoiser nor family
STORAGE_KINDS = ("dense", "csr", "lowrank")
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
MAX_DEPTH = 32  # nesting of the metadata JSON
MAX_DIM = 2**31 - 1
_TOP_FIELDS = {
    "format",
    "format_version",
    "erasekit_version",
    "method",
    "config",
    "concepts",
    "base",
    "stats",
    "layers",
    "content_sha256",
    "compute_dtype",
}
_LAYER_FIELDS = {"kind", "param", "shape", "fingerprint", "stats"}
_FP_FIELDS = {"sha256", "dtype", "shape", "fro", "sketch"}
_PATH_RX = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_COMPONENT_RX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PARAM_RX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_INDEX_DTYPES = (torch.int32, torch.int64)


def suffixes(kind: str, param: str = "weight") -> tuple[str, ...]:
    """Tensor names of one layer, relative to its module path."""
    if kind == "dense":
        return (param,)
    if kind == "csr":
        return (f"{param}.crow_indices", f"{param}.col_indices", f"{param}.values")
    return (f"{param}.lora_A", f"{param}.lora_B")


def layer_key(module: str, param: str = "weight") -> str:
    return module if param == "weight" else f"{module}.{param}"


def file_key(component: str, key: str) -> str:
    """A layer's (or tensor's) name in a format-3 file: ``<component>/<key>``."""
    return f"{component}/{key}"


def _domain_of(version: int) -> str:
    """The checksum's domain string of edit format ``version``."""
    return f"{FORMAT}/{version}"


# ------------------------------------------------------------------ JSON helpers
def _fail(where: str, problem: str) -> EditFileError:
    return EditFileError(f"edit metadata field {where}: {problem}")


def _type(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def _obj(x: Any, where: str) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise _fail(where, f"must be a JSON object, got {_type(x)}")
    return x


def _str(x: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(x, str) or (not empty and not x):
        raise _fail(where, f"must be a{'' if empty else ' non-empty'} string, got {x!r:.60}")
    return x


def _int(x: Any, where: str, lo: int = 0, hi: int = MAX_DIM) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise _fail(where, f"must be an integer in [{lo}, {hi}], got {x!r:.60}")
    return x


def _num(x: Any, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not lo <= x <= hi:
        raise _fail(where, f"must be a finite number in [{lo}, {hi}], got {x!r:.60}")
    return float(x)


def _no_extra(d: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise _fail(where, f"unknown field(s) {extra[:3]}; this erasekit knows {sorted(allowed)}")


def _depth(x: Any) -> int:
    """Nesting depth, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(x, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate key {dup!r}")
    return dict(pairs)


def _finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(f"number {s[:20]} overflows a float")
    return v


def _bad_constant(s: str) -> NoReturn:
    raise ValueError(f"{s} is not allowed")


def loads_strict(text: str) -> Any:
    """JSON without NaN / Infinity / overflowing numbers / duplicate keys / deep nesting."""
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_float=_finite_float, parse_constant=_bad_constant)
    except RecursionError:
        raise EditFileError(
            f"edit metadata is nested too deeply (more than {MAX_DEPTH} levels); the file is corrupted"
        ) from None
    except (ValueError, TypeError) as e:
        raise EditFileError(f"edit metadata is not valid JSON ({e}); the file is corrupted") from None
    if _depth(doc) > MAX_DEPTH:
        raise EditFileError(f"edit metadata is nested too deeply (more than {MAX_DEPTH} levels); the file is corrupted")
    return doc


def canonical_json(doc: Any) -> str:
    """The one serialisation the checksum covers: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _frozen_json(x: Any, where: str) -> Any:
    """A JSON value as immutable Python (dict -> mapping proxy, list -> tuple)."""
    if isinstance(x, dict):
        return MappingProxyType({_str(k, where, empty=True): _frozen_json(v, f"{where}.{k}") for k, v in x.items()})
    if isinstance(x, list):
        return tuple(_frozen_json(v, where) for v in x)
    if x is None or isinstance(x, (str, bool, int)):
        return x
    if isinstance(x, float):
        return _num(x, where)
    raise _fail(where, f"is not a JSON value ({_type(x)})")


def thaw(x: Any) -> Any:
    """Inverse of the freezing above: plain dicts and lists again."""
    if isinstance(x, Mapping):
        return {k: thaw(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return [thaw(v) for v in x]
    return x


# ------------------------------------------------------------------ checksums
def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (format 1's whole checksum)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        x = tensors[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{x.dtype}|{tuple(x.shape)}|".encode())
        h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b"")  # reshape: 0-d tensors too
    return h.hexdigest()


def content_sha256(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], *, domain: str | None = None) -> str:
    """The checksum of a document and its tensors: ``domain`` (what kind of file), the canonical metadata
    (without this field) and :func:`tensor_digest`. Edit files (format 2 and later) and erasekit exports use it.

    Without ``domain``, an edit document's own: ``erasekit.edit/<its format_version>`` (the current one when the
    document names no readable version), so a format-2 file keeps its checksum.
    """
    if domain is None:
        v = meta.get("format_version")
        domain = _domain_of(v) if isinstance(v, int) and not isinstance(v, bool) and v in READABLE_VERSIONS else DOMAIN
    body = {k: v for k, v in meta.items() if k != "content_sha256"}
    h = hashlib.sha256(f"{domain}\n".encode())
    h.update(canonical_json(body).encode())
    h.update(b"\n" + tensor_digest(tensors).encode())
    return h.hexdigest()


# ------------------------------------------------------------------ typed metadata
@dataclass(frozen=True)
class Fingerprint:
    """Base weights of one edited parameter: exact hash plus a dtype-tolerant sketch (models/adapter.py)."""

    sha256: str
    dtype: str
    shape: tuple[int, ...]
    fro: float
    sketch: tuple[float, ...]

    @classmethod
    def parse(cls, d: Any, where: str) -> Fingerprint:
        d = _obj(d, where)
        _no_extra(d, _FP_FIELDS, where)
        missing = sorted(_FP_FIELDS - set(d))
        if missing:
            raise _fail(where, f"missing {missing}")
        sha = _str(d["sha256"], f"{where}.sha256")
        if not _HEX64.fullmatch(sha):
            raise _fail(f"{where}.sha256", f"must be 64 lowercase hex digits, got {sha!r:.80}")
        dtype = _str(d["dtype"], f"{where}.dtype")
        if dtype not in FLOAT_DTYPES:
            raise _fail(f"{where}.dtype", f"must be one of {FLOAT_DTYPES}, got {dtype!r:.40}")
        shape = _shape(d["shape"], f"{where}.shape")
        sketch = d["sketch"]
        if not isinstance(sketch, list) or len(sketch) != SKETCH_N:
            raise _fail(f"{where}.sketch", f"must be a list of {SKETCH_N} numbers, got {sketch!r:.60}")
        return cls(
            sha,
            dtype,
            shape,
            _num(d["fro"], f"{where}.fro", lo=0.0),
            tuple(_num(x, f"{where}.sketch[{i}]") for i, x in enumerate(sketch)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "fro": self.fro,
            "sketch": list(self.sketch),
        }


def _shape(x: Any, where: str) -> tuple[int, ...]:
    if not isinstance(x, list) or not 1 <= len(x) <= 5:
        raise _fail(where, f"must be a list of 1 to 5 positive integers, got {x!r:.60}")
    return tuple(_int(v, f"{where}[{i}]", lo=1) for i, v in enumerate(x))


_LAYER_STAT_NUMBERS = {"sparsity": (0.0, 1.0), "seconds": (0.0, math.inf), "objective": (-math.inf, math.inf)}
_LAYER_STAT_INTS = ("iterations", "rank", "rank_forget", "rank_retain")


@dataclass(frozen=True)
class LayerMeta:
    """One edited parameter: ``component``'s module ``module``, its ``param``, stored as ``kind``.

    ``key`` is the layer's name in the file (format 3: ``<component>/<module>[.<param>]``; formats 1 / 2: the
    module path relative to the denoiser, whose ``component`` the parser supplies: see :func:`legacy_component`).
    """

    key: str
    component: str
    module: str
    param: str
    kind: str
    shape: tuple[int, ...]
    fingerprint: Fingerprint
    stats: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    qualified: bool = True  # whether the file names its tensors '<component>/...' (format 3)

    @property
    def tensor_keys(self) -> dict[str, str]:
        """suffix (relative to the module) -> key in the file."""
        prefix = f"{self.component}/" if self.qualified else ""
        return {s: f"{prefix}{self.module}.{s}" for s in suffixes(self.kind, self.param)}

    @classmethod
    def parse(cls, key: Any, d: Any, version: int, legacy: str = LEGACY_COMPONENT) -> LayerMeta:
        where = f"layers[{key!r:.80}]"
        if not isinstance(key, str) or len(key) > 500:
            raise _fail(where, "the layer key must be a string of at most 500 characters")
        if version >= 3:
            component, _, path = key.partition("/")
            if not _COMPONENT_RX.fullmatch(component) or not _PATH_RX.fullmatch(path):
                raise _fail(
                    where,
                    "the layer key must be '<component>/<module path>' such as "
                    "'unet/down_blocks.0.attentions.0...attn2.to_k' or 'transformer/context_embedder'",
                )
        elif _PATH_RX.fullmatch(key):
            component, path = legacy, key
        else:
            raise _fail(
                where, "the layer key must be a dotted module path such as 'down_blocks.0.attentions.0...attn2.to_k'"
            )
        d = _obj(d, where)
        _no_extra(d, _LAYER_FIELDS if version >= 2 else _LAYER_FIELDS - {"param"}, where)
        for name in ("kind", "shape", "fingerprint"):
            if name not in d:
                raise _fail(where, f"missing {name!r}")
        kind = d["kind"]
        if kind not in STORAGE_KINDS:
            raise _fail(f"{where}.kind", f"must be one of {STORAGE_KINDS}, got {kind!r:.40}")
        param = _str(d.get("param", "weight"), f"{where}.param")
        if not _PARAM_RX.fullmatch(param):
            raise _fail(f"{where}.param", f"must be a parameter name such as 'weight' or 'bias', got {param!r:.40}")
        if param == "weight":
            module = path
        elif path.endswith("." + param):
            module = path[: -len(param) - 1]
        else:
            raise _fail(where, f"a {param!r} entry must be keyed '<module>.{param}'")
        shape = _shape(d["shape"], f"{where}.shape")
        if kind != "dense" and len(shape) != 2:
            raise _fail(f"{where}.shape", f"a {kind} layer is a matrix (2 dimensions), got {list(shape)}")
        fp = Fingerprint.parse(d["fingerprint"], f"{where}.fingerprint")
        if fp.shape != shape:
            raise _fail(f"{where}.fingerprint.shape", f"{list(fp.shape)} differs from the layer shape {list(shape)}")
        stats = _obj(d.get("stats", {}), f"{where}.stats")
        for name, (lo, hi) in _LAYER_STAT_NUMBERS.items():
            if stats.get(name) is not None:
                _num(stats[name], f"{where}.stats.{name}", lo, hi)
        for name in _LAYER_STAT_INTS:
            if stats.get(name) is not None:
                _int(stats[name], f"{where}.stats.{name}", 0, 2**62)
        return cls(key, component, module, param, kind, shape, fp, _frozen_json(stats, f"{where}.stats"), version >= 3)


def legacy_component(base: Mapping[str, Any]) -> str:
    """The component a format-1 / 2 file's denoiser-relative keys live in: ``base.denoiser``, else the denoiser of
    ``base.family``, else ``unet`` (those files predate the families: every one was a UNet edit)."""
    den = base.get("denoiser")
    if isinstance(den, str) and _COMPONENT_RX.fullmatch(den):
        return den
    fam = base.get("family")
    if isinstance(fam, str):
        from .models.families import families

        known = families().get(fam)
        if known is not None:
            return known.denoiser
    return LEGACY_COMPONENT


@dataclass(frozen=True)
class EditMeta:
    """The whole metadata document of an edit file, validated."""

    format_version: int
    erasekit_version: str
    method: str
    config: Mapping[str, Any]
    concepts: Mapping[str, Any]
    base: Mapping[str, Any]
    stats: Mapping[str, Any]
    layers: tuple[LayerMeta, ...]
    compute_dtype: str | None
    content_sha256: str


def _version(doc: dict[str, Any]) -> int:
    if doc.get("format") != FORMAT:
        raise EditFileError(f"unknown format {doc.get('format')!r:.60}; an erasekit edit file says format {FORMAT!r}")
    if "format_version" not in doc:
        raise _fail("format_version", "is missing")
    v = doc["format_version"]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail("format_version", f"must be an integer such as {FORMAT_VERSION}, got {v!r:.40}")
    if v > FORMAT_VERSION:
        raise EditFileError(
            f"the file uses edit format v{v}; this erasekit reads up to v{FORMAT_VERSION}; upgrade erasekit"
        )
    if v not in READABLE_VERSIONS:
        raise _fail("format_version", f"{v} is not a format version (readable: {READABLE_VERSIONS})")
    return v


_CONCEPT_FIELDS = {"erase", "kind", "guides", "guide", "preserve", "templates"}


def _concepts(d: Any) -> None:
    from .concepts import ConceptSet
    from .errors import ConceptError

    d = _obj(d, "concepts")
    _no_extra(d, _CONCEPT_FIELDS, "concepts")
    if "erase" not in d:
        raise _fail("concepts", "missing 'erase'")
    for name in ("erase", "guides", "preserve", "templates"):
        if name in d and (not isinstance(d[name], list) or not all(isinstance(c, str) for c in d[name])):
            raise _fail(f"concepts.{name}", f"must be a list of strings, got {d[name]!r:.60}")
    if "kind" in d:
        _str(d["kind"], "concepts.kind")
    g = d.get("guide")
    if g is not None and not isinstance(g, str) and not (isinstance(g, list) and all(isinstance(c, str) for c in g)):
        raise _fail("concepts.guide", f"must be a string or a list of strings, got {g!r:.60}")
    try:
        ConceptSet.from_dict(d)
    except ConceptError as e:
        raise _fail("concepts", str(e)) from None


_BASE_TYPES: dict[str, type | tuple[type, ...]] = {
    "pipeline": str,
    "family": str,
    "name_or_path": (str, type(None)),
    "d_in": int,
    "denoiser": str,
}


def _base(x: Any) -> dict[str, Any]:
    d = _obj(x, "base")
    for k, v in d.items():
        if isinstance(v, (dict, list)) or (isinstance(v, float) and not math.isfinite(v)):
            raise _fail(f"base.{k}", f"must be a string, number, boolean or null, got {_type(v)}")
        want = _BASE_TYPES.get(k)
        if want is not None and (isinstance(v, bool) or not isinstance(v, want)):
            raise _fail(f"base.{k}", f"has the wrong type {_type(v)}")
    return d


def parse_metadata(text: str, tensors: Mapping[str, torch.Tensor], *, check_sum: bool = True) -> EditMeta:
    """Validate the metadata JSON against itself and the tensors; raise EditFileError naming the field."""
    doc = _obj(loads_strict(text), "(document)")
    version = _version(doc)
    _no_extra(doc, _TOP_FIELDS if version >= 2 else _TOP_FIELDS - {"compute_dtype"}, "(top level)")
    for name in ("method", "layers", "content_sha256"):
        if name not in doc:
            raise _fail(name, "is missing")
    digest = _str(doc["content_sha256"], "content_sha256")
    if check_sum:
        expected = content_sha256(doc, tensors) if version >= 2 else tensor_digest(tensors)
        if digest != expected:
            what = "metadata and tensor contents do" if version >= 2 else "tensor contents do"
            raise EditFileError(f"the {what} not match the recorded checksum (the file was modified or corrupted)")
    method = _str(doc["method"], "method")
    config = _obj(doc.get("config", {}), "config")  # structure only: the method validates its own config when it refits
    _concepts(doc.get("concepts"))
    base = _base(doc.get("base", {}))
    stats = _obj(doc.get("stats", {}), "stats")
    cdt = doc.get("compute_dtype")
    if cdt is not None and cdt not in FLOAT_DTYPES:
        raise _fail("compute_dtype", f"must be one of {FLOAT_DTYPES} or null, got {cdt!r:.40}")
    layers_doc = _obj(doc["layers"], "layers")
    if not layers_doc:
        raise _fail("layers", "is empty: an edit changes at least one layer")
    legacy = legacy_component(base)
    layers = tuple(LayerMeta.parse(k, v, version, legacy) for k, v in layers_doc.items())
    _check_tensor_names(layers, tensors)
    for lm in layers:
        check_layer_tensors(lm, {s: tensors[k] for s, k in lm.tensor_keys.items()})
    if version < 2 and check_sum:
        warnings.warn(
            "edit file format v1: its metadata (concepts, config, fingerprints) is not covered by the checksum; "
            "re-save it with this erasekit to protect it",
            UnprotectedMetadataWarning,
            stacklevel=3,
        )
    return EditMeta(
        version,
        _str(doc.get("erasekit_version", "?"), "erasekit_version"),
        method,
        _frozen_json(config, "config"),
        _frozen_json(doc["concepts"], "concepts"),
        _frozen_json(doc.get("base", {}), "base"),
        _frozen_json(stats, "stats"),
        layers,
        cdt,
        digest,
    )


def _check_tensor_names(layers: tuple[LayerMeta, ...], tensors: Mapping[str, torch.Tensor]) -> None:
    owner: dict[str, str] = {}
    for lm in layers:
        for k in lm.tensor_keys.values():
            if k in owner:
                raise _fail(f"layers[{lm.key!r}]", f"its tensor {k!r} is also claimed by layer {owner[k]!r}")
            owner[k] = lm.key
        missing = [k for k in lm.tensor_keys.values() if k not in tensors]
        if missing:
            raise EditFileError(f"missing tensor(s) {missing[:3]} for layer {lm.key!r}")
    extra = sorted(set(tensors) - set(owner))
    if extra:
        raise EditFileError(f"unexpected tensor(s) {extra[:3]} not described by the metadata")


def check_layer_tensors(lm: LayerMeta, t: Mapping[str, torch.Tensor]) -> None:
    """Shapes, dtypes (float32 / int32 / int64), finiteness and CSR structure of one layer's tensors."""
    p, where = lm.param, f"layer {lm.key!r}"
    for name, x in t.items():
        want = _INDEX_DTYPES if name.endswith(("crow_indices", "col_indices")) else (torch.float32,)
        if x.dtype not in want:
            raise EditFileError(
                f"{where}: tensor {name!r} is {str(x.dtype)[6:]}, the format stores "
                f"{' or '.join(str(w)[6:] for w in want)}"
            )
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise EditFileError(f"{where}: tensor {name!r} contains NaN or Inf")
    if lm.kind == "dense":
        if tuple(t[p].shape) != lm.shape:
            raise EditFileError(f"{where}: {p} has shape {tuple(t[p].shape)}, metadata says {lm.shape}")
        return
    d_out, d_in = lm.shape
    if lm.kind == "lowrank":
        B, A = t[f"{p}.lora_B"], t[f"{p}.lora_A"]
        if B.dim() != 2 or A.dim() != 2 or B.shape[0] != d_out or A.shape[1] != d_in or B.shape[1] != A.shape[0]:
            raise EditFileError(
                f"{where}: low-rank factors B {tuple(B.shape)}, A {tuple(A.shape)} do not make a {lm.shape} matrix"
            )
        return
    crow, col, val = t[f"{p}.crow_indices"], t[f"{p}.col_indices"], t[f"{p}.values"]
    if crow.dim() != 1 or crow.numel() != d_out + 1:
        raise EditFileError(
            f"{where}: CSR crow_indices must be 1-D of length {d_out + 1}, got shape {tuple(crow.shape)}"
        )
    if col.dim() != 1 or val.dim() != 1 or col.numel() != val.numel():
        raise EditFileError(
            f"{where}: CSR col_indices and values must be 1-D of equal length, got {tuple(col.shape)} and "
            f"{tuple(val.shape)}"
        )
    nnz = col.numel()
    crow64, col64 = crow.to(torch.int64), col.to(torch.int64)
    if int(crow64[0]) != 0 or int(crow64[-1]) != nnz or not bool((crow64[1:] >= crow64[:-1]).all()):
        raise EditFileError(f"{where}: CSR crow_indices must rise monotonically from 0 to nnz={nnz}")
    if nnz and (int(col64.min()) < 0 or int(col64.max()) >= d_in):
        raise EditFileError(f"{where}: CSR col_indices out of range [0, {d_in})")
    rows = torch.repeat_interleave(torch.arange(d_out), crow64[1:] - crow64[:-1])  # (nnz,)
    same_row = rows[1:] == rows[:-1]
    if not bool(((col64[1:] > col64[:-1]) | ~same_row).all()):
        raise EditFileError(
            f"{where}: CSR col_indices must increase strictly within each row (duplicate or unsorted entries)"
        )


# ------------------------------------------------------------------ the reader
def read_edit_file(path: str | os.PathLike[str]) -> tuple[EditMeta, dict[str, torch.Tensor]]:
    """Read and fully validate an edit file; only EditFileError escapes, whatever the bytes."""
    from safetensors import safe_open

    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise EditFileError(
            f"{name!r} is a directory, not an edit file; give the .safetensors file written by `erasekit erase`"
        )
    if not path.is_file():
        raise EditFileError(f"edit file {name!r} does not exist")
    try:
        with safe_open(name, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types (and OSError) for truncated / garbled files
        raise EditFileError(
            f"{name!r} is not a readable safetensors file (truncated or corrupted?): {str(e)[:200]}"
        ) from None
    if "erasekit" not in header and "erasekit_export" in header:
        raise EditFileError(
            f"{name!r} is an erasekit export, not an edit file: read it with erasekit.load_edit "
            "(LoRA exports read back as edits) or `erasekit inspect`"
        )
    if "erasekit" not in header:
        raise EditFileError(f"{name!r} is a safetensors file but not an erasekit edit (no 'erasekit' metadata)")
    try:
        return parse_metadata(header["erasekit"], tensors), tensors
    except EditFileError as e:
        raise EditFileError(f"{name!r}: {e}") from None
    except RecursionError:
        raise EditFileError(f"{name!r}: edit metadata is nested too deeply; the file is corrupted") from None
