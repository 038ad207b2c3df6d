"""Edit: the result of every method — new cross-attention weights, stored compactly.

Per layer the new weight is kept as one of three storage kinds (DESIGN §6):

* ``dense``   — ``<path>.weight``                                   (d_out, d_in)
* ``csr``     — ``<path>.weight.crow_indices / .col_indices / .values``: the new weight itself
  is sparse (SPACE), values fp32 + int32 indices
* ``lowrank`` — ``<path>.weight.lora_B`` (d_out, r) and ``.lora_A`` (r, d_in): W = W0 + B A

An edit file is one ``.safetensors`` file whose metadata holds a single JSON document
(method, config, concepts, base model, per-layer shape / dtype / fingerprint / statistics,
and a SHA-256 of the tensor contents). Loading is strict and changes nothing on failure;
applying records the original weights so that :meth:`Edit.revert` restores the exact bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from ._atomic import atomic_path
from .errors import EditFileError
from .models.adapter import fingerprints_match, weight_fingerprint

FORMAT = "erasekit.edit"
FORMAT_VERSION = 1
STORAGE_KINDS = ("dense", "csr", "lowrank")
_SUFFIXES = {
    "dense": ("weight",),
    "csr": ("weight.crow_indices", "weight.col_indices", "weight.values"),
    "lowrank": ("weight.lora_A", "weight.lora_B"),
}
_APPLIED_ATTR = "_erasekit_applied"  # stack of (edit id, {path: original weight on cpu}) kept on the UNet


def _version() -> str:
    from . import __version__

    return __version__


@dataclass
class LayerEdit:
    """The new weight of one Linear layer, in one storage kind."""

    path: str
    kind: str
    shape: tuple[int, int]
    tensors: dict[str, torch.Tensor]  # suffix -> tensor
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def dense(cls, path: str, weight: torch.Tensor, **stats) -> "LayerEdit":
        w = weight.detach().to("cpu", torch.float32).contiguous()
        return cls(path, "dense", tuple(w.shape), {"weight": w}, stats)

    @classmethod
    def csr(cls, path: str, weight: torch.Tensor, **stats) -> "LayerEdit":
        w = weight.detach().to("cpu", torch.float32)
        nz = w != 0  # exact zeros of the solver's output are not stored
        counts = nz.sum(dim=1)
        tensors = {
            "weight.crow_indices": torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32),
            "weight.col_indices": nz.nonzero()[:, 1].to(torch.int32).contiguous(),  # row-major order
            "weight.values": w[nz].contiguous(),
        }
        return cls(path, "csr", tuple(w.shape), tensors, stats)

    @classmethod
    def lowrank(cls, path: str, lora_B: torch.Tensor, lora_A: torch.Tensor, **stats) -> "LayerEdit":
        B = lora_B.detach().to("cpu", torch.float32).contiguous()  # (d_out, r)
        A = lora_A.detach().to("cpu", torch.float32).contiguous()  # (r, d_in)
        if B.shape[1] != A.shape[0]:
            raise ValueError(f"low-rank factors do not chain: B {tuple(B.shape)} and A {tuple(A.shape)}")
        return cls(path, "lowrank", (B.shape[0], A.shape[1]), {"weight.lora_B": B, "weight.lora_A": A}, stats)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def rank(self) -> int | None:
        return self.tensors["weight.lora_A"].shape[0] if self.kind == "lowrank" else None

    def materialize(self, base: torch.Tensor) -> torch.Tensor:
        """The new weight, float32 on cpu, given the live base weight (used by low-rank deltas)."""
        if self.kind == "dense":
            return self.tensors["weight"]
        if self.kind == "csr":
            t = self.tensors
            crow = t["weight.crow_indices"].to(torch.int64)
            rows = torch.repeat_interleave(torch.arange(self.shape[0]), crow[1:] - crow[:-1])
            dense = torch.zeros(self.shape, dtype=torch.float32)
            dense[rows, t["weight.col_indices"].to(torch.int64)] = t["weight.values"]
            return dense
        B, A = self.tensors["weight.lora_B"], self.tensors["weight.lora_A"]
        return (base.detach().to("cpu", torch.float64) + B.double() @ A.double()).to(torch.float32)

    def validate(self) -> None:
        """Structural checks of the stored tensors; raises EditFileError naming the problem."""
        d_out, d_in = self.shape
        t = self.tensors
        expected = set(_SUFFIXES[self.kind])
        if set(t) != expected:
            raise EditFileError(f"layer {self.path!r}: tensors {sorted(t)} do not match storage kind {self.kind!r} (expected {sorted(expected)})")
        for name, x in t.items():
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise EditFileError(f"layer {self.path!r}: tensor {name!r} contains NaN or Inf")
        if self.kind == "dense" and tuple(t["weight"].shape) != (d_out, d_in):
            raise EditFileError(f"layer {self.path!r}: weight has shape {tuple(t['weight'].shape)}, metadata says {(d_out, d_in)}")
        if self.kind == "lowrank":
            B, A = t["weight.lora_B"], t["weight.lora_A"]
            if B.dim() != 2 or A.dim() != 2 or B.shape[0] != d_out or A.shape[1] != d_in or B.shape[1] != A.shape[0]:
                raise EditFileError(f"layer {self.path!r}: low-rank factors B {tuple(B.shape)}, A {tuple(A.shape)} do not make a {(d_out, d_in)} matrix")
        if self.kind == "csr":
            crow, col, val = t["weight.crow_indices"], t["weight.col_indices"], t["weight.values"]
            if crow.dtype not in (torch.int32, torch.int64) or col.dtype not in (torch.int32, torch.int64):
                raise EditFileError(f"layer {self.path!r}: CSR indices must be integers")
            nnz = col.numel()
            ok = (
                crow.dim() == 1 and crow.numel() == d_out + 1 and int(crow[0]) == 0 and int(crow[-1]) == nnz
                and val.numel() == nnz and bool((crow[1:] >= crow[:-1]).all())
                and (nnz == 0 or (int(col.min()) >= 0 and int(col.max()) < d_in))
            )
            if not ok:
                raise EditFileError(f"layer {self.path!r}: CSR structure is inconsistent with shape {(d_out, d_in)} (corrupted file?)")


def _content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        x = tensors[key].contiguous()
        h.update(f"{key}|{x.dtype}|{tuple(x.shape)}|".encode())
        h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


class Edit:
    """A concept-erasure edit of a pipeline's cross-attention weights.

    Build one with :func:`erasekit.erase`, apply it to a live pipeline with :meth:`apply`,
    undo it bit-exactly with :meth:`revert`, store it with :meth:`save` and read it back
    with :func:`erasekit.load_edit`.
    """

    def __init__(self, method: str, config: dict, concepts: dict, base: dict, layers: Iterable[LayerEdit],
                 fingerprints: dict[str, dict], stats: dict | None = None):
        self.method = method
        self.config = config
        self.concepts = concepts
        self.base = base
        self.layers: dict[str, LayerEdit] = {le.path: le for le in layers}
        self.fingerprints = fingerprints
        self.stats = stats or {}
        missing = set(self.layers) - set(fingerprints)
        if missing:
            raise ValueError(f"no base fingerprint for layers {sorted(missing)[:3]}")

    # ---------------------------------------------------------------- summary
    @property
    def nbytes(self) -> int:
        return sum(le.nbytes for le in self.layers.values())

    @property
    def dense_nbytes(self) -> int:
        """What the same layers take as dense fp32 weights."""
        return sum(4 * le.shape[0] * le.shape[1] for le in self.layers.values())

    def sparsity(self) -> float | None:
        """Share of exact zeros over CSR layers (None when no layer is sparse)."""
        csr = [le for le in self.layers.values() if le.kind == "csr"]
        if not csr:
            return None
        total = sum(le.shape[0] * le.shape[1] for le in csr)
        return 1.0 - sum(le.tensors["weight.values"].numel() for le in csr) / total

    def summary(self) -> dict:
        kinds: dict[str, int] = {}
        for le in self.layers.values():
            kinds[le.kind] = kinds.get(le.kind, 0) + 1
        return {
            "method": self.method,
            "concepts": self.concepts,
            "base": self.base,
            "layers": len(self.layers),
            "storage": kinds,
            "sparsity": self.sparsity(),
            "bytes": self.nbytes,
            "dense_fp32_bytes": self.dense_nbytes,
            "stats": self.stats,
        }

    def __repr__(self) -> str:
        erase = ", ".join(self.concepts.get("erase", []))
        return f"Edit(method={self.method!r}, erase=[{erase}], layers={len(self.layers)}, bytes={self.nbytes:,})"

    # ------------------------------------------------------- apply / revert
    def check_compatible(self, pipe) -> None:
        """Raise EditFileError unless every edited layer exists in ``pipe`` with the base weights this edit was made for."""
        unet = getattr(pipe, "unet", None)
        if unet is None:
            raise EditFileError(f"{type(pipe).__name__} has no UNet; this edit is for a {self.base.get('pipeline', 'diffusers UNet')} pipeline")
        problems = []
        for path, le in self.layers.items():
            try:
                lin = unet.get_submodule(path)
            except AttributeError:
                problems.append(f"{path}: no such layer")
                continue
            w = getattr(lin, "weight", None)
            if w is None or tuple(w.shape) != tuple(le.shape):
                problems.append(f"{path}: shape {None if w is None else tuple(w.shape)} != {tuple(le.shape)}")
                continue
            same, _ = fingerprints_match(self.fingerprints[path], weight_fingerprint(w))
            if not same:
                problems.append(f"{path}: weights differ from the base model the edit was made for")
        if problems:
            stack = getattr(unet, _APPLIED_ATTR, [])
            hint = (
                f" Another edit is applied to this pipeline ({stack[-1][1]}); revert it first."
                if stack else " Load the base model named in the edit file (erasekit inspect shows it)."
            )
            base = self.base.get("name_or_path") or self.base.get("pipeline")
            raise EditFileError(
                f"this edit does not fit the pipeline ({len(problems)} of {len(self.layers)} layers differ; edit made for {base!r}): "
                + "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "") + "." + hint
            )

    @torch.no_grad()
    def apply(self, pipe) -> "Edit":
        """Write the new weights into ``pipe``'s UNet (in place); checked first, all-or-nothing."""
        self.check_compatible(pipe)
        unet = pipe.unet
        stack = getattr(unet, _APPLIED_ATTR, None)
        if stack is None:
            stack = []
            setattr(unet, _APPLIED_ATTR, stack)
        originals, new = {}, {}
        for path, le in self.layers.items():
            w = unet.get_submodule(path).weight
            originals[path] = w.detach().to("cpu", copy=True)
            new[path] = le.materialize(w).to(device=w.device, dtype=w.dtype)
        for path, value in new.items():  # all computed before anything is written
            unet.get_submodule(path).weight.copy_(value)
        stack.append((id(self), repr(self), originals))
        return self

    @torch.no_grad()
    def revert(self, pipe) -> None:
        """Restore the exact original bytes of every layer this edit changed."""
        stack = getattr(pipe.unet, _APPLIED_ATTR, [])
        ids = [s[0] for s in stack]
        if id(self) not in ids:
            raise EditFileError("this edit is not applied to this pipeline; nothing to revert")
        if ids[-1] != id(self):
            raise EditFileError(f"another edit was applied after this one ({stack[-1][1]}); revert that one first")
        _, _, originals = stack.pop()
        for path, w0 in originals.items():
            pipe.unet.get_submodule(path).weight.copy_(w0)

    @staticmethod
    def applied(pipe) -> list[str]:
        """Descriptions of the edits currently applied to ``pipe``, oldest first."""
        return [s[1] for s in getattr(pipe.unet, _APPLIED_ATTR, [])]

    # ------------------------------------------------------------- storage
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f"{path}.{suffix}": t for path, le in self.layers.items() for suffix, t in le.tensors.items()}

    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "erasekit_version": _version(),
            "method": self.method,
            "config": self.config,
            "concepts": self.concepts,
            "base": self.base,
            "stats": self.stats,
            "layers": {
                path: {"kind": le.kind, "shape": list(le.shape), "fingerprint": self.fingerprints[path], "stats": le.stats}
                for path, le in self.layers.items()
            },
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the edit as one safetensors file (atomically: temp file + rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = self._tensors()
        meta = self.metadata()
        meta["content_sha256"] = _content_sha256(tensors)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"erasekit": json.dumps(meta, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Edit":
        """Read and fully validate an edit file; raises EditFileError naming what is wrong."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise EditFileError(f"edit file {str(path)!r} does not exist")
        from .export.lora_import import is_lora_export, read_lora_export

        if is_lora_export(path):  # an erasekit LoRA export (erasekit export --format lora / lora-kohya) reads back too
            return read_lora_export(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for truncated / garbled files
            raise EditFileError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupted?): {e}") from None
        if "erasekit" not in header:
            raise EditFileError(f"{str(path)!r} is a safetensors file but not an erasekit edit (no 'erasekit' metadata)")
        try:
            meta = json.loads(header["erasekit"])
        except json.JSONDecodeError as e:
            raise EditFileError(f"{str(path)!r}: edit metadata is not valid JSON ({e}); the file is corrupted") from None
        if meta.get("format") != FORMAT:
            raise EditFileError(f"{str(path)!r}: unknown format {meta.get('format')!r}")
        if int(meta.get("format_version", -1)) > FORMAT_VERSION:
            raise EditFileError(
                f"{str(path)!r} uses edit format v{meta.get('format_version')}, this erasekit reads up to v{FORMAT_VERSION}; upgrade erasekit"
            )
        if meta.get("content_sha256") != _content_sha256(tensors):
            raise EditFileError(f"{str(path)!r}: tensor contents do not match the recorded checksum (the file was modified or corrupted)")
        layers, fps = [], {}
        expected_keys = set()
        for lpath, info in meta["layers"].items():
            kind = info.get("kind")
            if kind not in STORAGE_KINDS:
                raise EditFileError(f"layer {lpath!r}: unknown storage kind {kind!r}")
            keys = {s: f"{lpath}.{s}" for s in _SUFFIXES[kind]}
            expected_keys |= set(keys.values())
            missing = [k for k in keys.values() if k not in tensors]
            if missing:
                raise EditFileError(f"{str(path)!r}: missing tensor(s) {missing} for layer {lpath!r}")
            le = LayerEdit(lpath, kind, tuple(info["shape"]), {s: tensors[k] for s, k in keys.items()}, info.get("stats", {}))
            le.validate()
            layers.append(le)
            fps[lpath] = info["fingerprint"]
        extra = sorted(set(tensors) - expected_keys)
        if extra:
            raise EditFileError(f"{str(path)!r}: unexpected tensor(s) {extra[:3]} not described by the metadata")
        return cls(meta["method"], meta.get("config", {}), meta.get("concepts", {}), meta.get("base", {}), layers, fps, meta.get("stats", {}))


def load_edit(path: str | os.PathLike, pipe=None, *, apply: bool = True) -> Edit:
    """Load an edit file strictly; with ``pipe``, check it fits and (by default) apply it.

    Nothing is changed unless every check passes.
    """
    edit = Edit.load(path)
    if pipe is not None:
        edit.check_compatible(pipe)
        if apply:
            edit.apply(pipe)
    return edit
