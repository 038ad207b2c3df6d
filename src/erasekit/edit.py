"""Edit: the result of every method — new denoiser parameters, stored compactly.

Per edited parameter the new value is kept as one of three storage kinds (DESIGN §6):

* ``dense``   — ``<module>.<param>``, any rank (a Linear or Conv2d weight, a bias)
* ``csr``     — ``<module>.weight.crow_indices / .col_indices / .values``: the new matrix itself
  is sparse (SPACE), values fp32 + int32 indices
* ``lowrank`` — ``<module>.weight.lora_B`` (d_out, r) and ``.lora_A`` (r, d_in): W = W0 + B A

The file format and its one parser live in :mod:`erasekit.edit_format`; :func:`erasekit.load_edit`
(:mod:`erasekit.io`) reads edit files and erasekit's LoRA exports alike. Applying is a
transaction: every new value is materialised in the pipeline's dtype and checked before
anything is written, the originals are recorded, and any failure midway (Ctrl-C included)
restores them; :meth:`Edit.revert` restores the exact original bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._atomic import atomic_path
from ._version import __version__
from .edit_format import (
    FLOAT_DTYPES,
    FORMAT,
    FORMAT_VERSION,
    STORAGE_KINDS,
    EditMeta,
    Fingerprint,
    LayerMeta,
    canonical_json,
    content_sha256,
    file_key,
    layer_key,
    legacy_component,
    parse_metadata,
    read_edit_file,
    tensor_digest,
    thaw,
)
from .errors import EditError, EditFileError, ModelError
from .models.adapter import fingerprints_match, weight_fingerprint
from .models.families import Pipeline, families, identify

__all__ = ["Edit", "LayerEdit", "StorageLoss", "FORMAT", "FORMAT_VERSION", "STORAGE_KINDS", "STORAGE_LOSS_LIMIT"]

# Fusing an edit into low-precision weights rounds W0 + ΔW to the storage grid, and a small ΔW partly rounds away
# (measured on the tiny builds, default UCE: bfloat16 loses ≈ 1 % of ‖ΔW‖, float8_e4m3fn 12–17 %; UCE at
# erase_scale 0.001: bfloat16 17–55 %, float8 ≈ 100 %). apply() and the merged exports (a save_dtype below float32,
# float8 single files included) refuse an edit that would lose more than this share of its norm; an unfused LoRA
# keeps all of it.
STORAGE_LOSS_LIMIT = 0.25

_APPLIED_ATTR = "_erasekit_applied"  # list of _Record kept on the denoiser, oldest first
_DIGEST_DOMAIN = "erasekit.edit-content/1"  # Edit.digest: what an edit writes, whatever its metadata


def _content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Digest of the tensors alone (evaluate/runner.py keys its cache by it; :attr:`Edit.digest` is the edit's id)."""
    return tensor_digest(tensors)


@dataclass
class LayerEdit:
    """The new value of one parameter (``path``'s ``param``) of a pipeline component, in one storage kind.

    ``component`` is the pipeline attribute holding the module; None (the usual case) means the denoiser of the
    edit's family (``unet`` / ``transformer``), and ``path`` is then relative to it, as methods see it.
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    tensors: dict[str, torch.Tensor]  # suffix relative to the module ("weight", "weight.values", ...) -> tensor
    stats: dict[str, Any] = field(default_factory=dict)
    param: str = "weight"
    component: str | None = None

    def __post_init__(self) -> None:
        self.tensors = {k: v.detach() for k, v in self.tensors.items()}  # never keep autograd state (ACE)
        self.shape = tuple(int(s) for s in self.shape)

    @property
    def key(self) -> str:
        """This entry's name in an Edit: the module path, plus ``.param`` unless it is 'weight', prefixed with
        ``<component>/`` for a component other than the denoiser (in a file every key has its component)."""
        key = layer_key(self.path, self.param)
        return key if self.component is None else file_key(self.component, key)

    @classmethod
    def dense(cls, path: str, weight: torch.Tensor, param: str = "weight", **stats: Any) -> LayerEdit:
        """The new value of ``path``'s ``param`` as is (any rank: Linear / Conv2d weights, biases)."""
        w = weight.detach().to("cpu", torch.float32).contiguous()
        return cls(path, "dense", tuple(w.shape), {param: w}, stats, param)

    @classmethod
    def csr(cls, path: str, weight: torch.Tensor, **stats: Any) -> LayerEdit:
        w = weight.detach().to("cpu", torch.float32)
        if w.dim() != 2:
            raise EditError(f"CSR storage holds a matrix, got shape {tuple(w.shape)}")
        nz = w != 0  # exact zeros of the solver's output are not stored
        counts = nz.sum(dim=1)
        tensors = {
            "weight.crow_indices": torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32),
            "weight.col_indices": nz.nonzero()[:, 1].to(torch.int32).contiguous(),  # row-major order
            "weight.values": w[nz].contiguous(),
        }
        return cls(path, "csr", tuple(w.shape), tensors, stats)

    @classmethod
    def lowrank(cls, path: str, lora_B: torch.Tensor, lora_A: torch.Tensor, **stats: Any) -> LayerEdit:
        B = lora_B.detach().to("cpu", torch.float32).contiguous()  # (d_out, r)
        A = lora_A.detach().to("cpu", torch.float32).contiguous()  # (r, d_in)
        if B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0]:
            raise EditError(f"low-rank factors do not chain: B {tuple(B.shape)} and A {tuple(A.shape)}")
        return cls(path, "lowrank", (B.shape[0], A.shape[1]), {"weight.lora_B": B, "weight.lora_A": A}, stats)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rank(self) -> int | None:
        return self.tensors[f"{self.param}.lora_A"].shape[0] if self.kind == "lowrank" else None

    def _exact(self, base: torch.Tensor) -> torch.Tensor:
        """The new value on cpu: float32 for dense / CSR, float64 for a low-rank delta (W0 + B A)."""
        p, t = self.param, self.tensors
        if self.kind == "dense":
            return t[p]
        if self.kind == "csr":
            crow = t[f"{p}.crow_indices"].to(torch.int64)
            rows = torch.repeat_interleave(torch.arange(self.shape[0]), crow[1:] - crow[:-1])  # (nnz,)
            dense = torch.zeros(self.shape, dtype=torch.float32)
            dense[rows, t[f"{p}.col_indices"].to(torch.int64)] = t[f"{p}.values"]
            return dense
        B, A = t[f"{p}.lora_B"].double(), t[f"{p}.lora_A"].double()  # (d_out, r), (r, d_in)
        return base.detach().to("cpu", torch.float64) + B @ A

    def materialize(self, base: torch.Tensor) -> torch.Tensor:
        """The new value, float32 on cpu, given the live base value (used by low-rank deltas)."""
        return self._exact(base).to(torch.float32)

    def materialize_as(self, base: torch.Tensor) -> torch.Tensor:
        """The new value in ``base``'s dtype and device; EditFileError if it is not finite there."""
        exact = self._exact(base)
        if not bool(torch.isfinite(exact).all()):
            raise EditFileError(
                f"layer {self.key!r}: the new weight is not finite (the low-rank product B·A overflows)"
            )
        out = exact.to(dtype=base.dtype)
        if not bool(torch.isfinite(out.float() if out.element_size() == 1 else out).all()):  # float8 has no isfinite
            dt = str(base.dtype).replace("torch.", "")
            raise EditFileError(
                f"layer {self.key!r}: the new weight overflows {dt} (largest |w| {float(exact.abs().max()):.4g}, "
                f"{dt} holds up to {torch.finfo(base.dtype).max:.6g}); load the model in float32 or bfloat16"
            )
        return out.to(base.device)


@dataclass(frozen=True)
class StorageLoss:
    """How much of an edit survives being stored: ``lost`` = ‖(cast(W) − cast(W0)) − (W − W0)‖ / ‖W − W0‖ over the
    whole edit, W0 the live value, W the exact new value, cast the storage dtype (a no-op on W0 when the pipeline
    already stores in it); the worst layer's share too."""

    dtype: str  # the storage dtype (the lowest-precision one, when the layers differ)
    lost: float
    worst_key: str | None
    worst: float


@dataclass
class _Record:
    digest: str  # Edit.digest of the applied edit: the same contents, loaded twice, are the same edit
    description: str
    # key -> (component or None for the denoiser, module path, param, original value on cpu)
    originals: dict[str, tuple[str | None, str, str, torch.Tensor]]


def _memory_key(meta: EditMeta, lm: LayerMeta) -> str:
    """A parsed layer's key in an :class:`Edit`: its path (plus param) in the denoiser, else ``<component>/...``."""
    key = layer_key(lm.module, lm.param)
    return key if lm.component == legacy_component(meta.base) else file_key(lm.component, key)


def _jsonable(x: Any) -> Any:
    """Free-form statistics as JSON: tensors / numpy scalars to numbers, NaN / Inf to null."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (TypeError, ValueError):
            pass
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class Edit:
    """A concept-erasure edit of a pipeline's UNet parameters.

    Build one with :func:`erasekit.erase`, apply it to a live pipeline with :meth:`apply`,
    undo it bit-exactly with :meth:`revert`, store it with :meth:`save` and read it back
    with :func:`erasekit.load_edit`. ``layers`` and ``fingerprints`` are keyed by
    :attr:`LayerEdit.key` (the module path for weights).
    """

    format_version: int | None = None  # the file's format version, on an edit read from a file

    def __init__(
        self,
        method: str,
        config: dict[str, Any],
        concepts: dict[str, Any],
        base: dict[str, Any],
        layers: Iterable[LayerEdit],
        fingerprints: Mapping[str, Mapping[str, Any] | Fingerprint],
        stats: dict[str, Any] | None = None,
        *,
        compute_dtype: str | None = None,
    ) -> None:
        self.method = method
        self.config = config
        self.concepts = concepts
        self.base = base
        self.layers: dict[str, LayerEdit] = {}
        for le in layers:
            if le.component == self.component:  # the denoiser's layers are keyed by their path alone
                le.component = None
            if le.key in self.layers:
                raise EditError(f"two entries for {le.key!r}: an edit sets each parameter once")
            self.layers[le.key] = le
        own = f"{self.component}/"  # '<denoiser>/path' names the same layer as 'path'
        self.fingerprints = {
            k.removeprefix(own): (v.to_json() if isinstance(v, Fingerprint) else v) for k, v in fingerprints.items()
        }
        self.stats = stats or {}
        self.compute_dtype = compute_dtype
        self._digest: str | None = None
        missing = set(self.layers) - set(self.fingerprints)
        if missing:
            raise EditError(
                f"no base fingerprint for layers {sorted(missing)[:3]}: pass fingerprints of the base "
                "weights (erasekit.models.adapter.weight_fingerprint) for every edited layer"
            )

    @property
    def component(self) -> str:
        """The pipeline component this edit's denoiser layers live in (``unet`` / ``transformer``): ``base.denoiser``,
        else the denoiser of ``base.family``, else ``unet`` (edits made before families were UNet edits)."""
        return legacy_component(self.base if isinstance(self.base, dict) else {})

    # ---------------------------------------------------------------- summary
    @property
    def nbytes(self) -> int:
        return sum(le.nbytes for le in self.layers.values())

    @property
    def dense_nbytes(self) -> int:
        """What the same parameters take as dense fp32 values."""
        return sum(4 * le.numel for le in self.layers.values())

    def sparsity(self) -> float | None:
        """Share of exact zeros over CSR layers (None when no layer is sparse)."""
        csr = [le for le in self.layers.values() if le.kind == "csr"]
        if not csr:
            return None
        total = sum(le.numel for le in csr)
        return 1.0 - sum(le.tensors[f"{le.param}.values"].numel() for le in csr) / total

    def summary(self) -> dict[str, Any]:
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
            "compute_dtype": self.compute_dtype,
            "stats": self.stats,
        }

    def __repr__(self) -> str:
        erase = self.concepts.get("erase", []) if isinstance(self.concepts, dict) else []
        erase = ", ".join(str(c) for c in erase) if isinstance(erase, (list, tuple)) else str(erase)
        return f"Edit(method={self.method!r}, erase=[{erase}], layers={len(self.layers)}, bytes={self.nbytes:,})"

    @property
    def digest(self) -> str:
        """SHA-256 of what this edit writes: every layer's key, storage, shape and base fingerprint, and its tensors.

        The applied-edit records on a pipeline are keyed by it, so the same edit loaded twice is recognised
        (and a copy can revert it). Computed once: an edit's contents are not meant to change after it is built.
        """
        if getattr(self, "_digest", None) is None:
            layers = {
                k: {"kind": le.kind, "param": le.param, "shape": list(le.shape), "fingerprint": self.fingerprints[k]}
                for k, le in self.layers.items()
            }
            self._digest = content_sha256({"layers": layers}, self._tensors(), domain=_DIGEST_DOMAIN)
        assert self._digest is not None
        return self._digest

    # ------------------------------------------------------- apply / revert
    @staticmethod
    def _records(unet: nn.Module | None) -> list[_Record]:
        records: list[_Record] = getattr(unet, _APPLIED_ATTR, None) or []
        return records

    @staticmethod
    def _live_denoiser(pipe: Pipeline) -> nn.Module | None:
        """The pipeline's denoiser as its family names it, or None for a pipeline of no family."""
        try:
            den: nn.Module = identify(pipe).get_denoiser(pipe)
        except ModelError:
            return None
        return den

    def denoiser(self, pipe: Pipeline) -> nn.Module:
        """The denoiser this edit writes into, resolved through ``pipe``'s family; refused when the pipeline is of
        another family than the one the edit records (``base.family``; files without one are UNet edits)."""
        return self._roots(pipe)[None]

    def _roots(self, pipe: Pipeline) -> dict[str | None, nn.Module]:
        """Each component this edit writes into, resolved through ``pipe``'s family (None: the denoiser)."""
        made_for = self.base.get("pipeline") or "diffusers UNet"
        try:
            live = identify(pipe)
        except ModelError as e:
            raise EditFileError(f"{e}; this edit is for a {made_for} pipeline") from None
        want = self.base.get("family")
        known = families()
        if isinstance(want, str) and want in known and want != live.name:
            raise EditFileError(
                f"this edit does not fit the pipeline: it was made for a {want} pipeline ({known[want].description}, "
                f"{made_for}) but "
                f"{type(pipe).__name__} is {live.name} ({live.description}); load the base model the edit was made "
                "for (erasekit inspect shows it)"
            )
        if self.component != live.denoiser:
            raise EditFileError(
                f"this edit's layers live in the pipeline's {self.component!r}, but a {live.name} pipeline denoises "
                f"with its {live.denoiser!r}; load the base model the edit was made for"
            )
        roots: dict[str | None, nn.Module] = {None: live.get_denoiser(pipe)}
        for le in self.layers.values():
            if le.component is not None and le.component not in roots:
                try:
                    roots[le.component] = live.component(pipe, le.component)
                except ModelError as e:
                    raise EditFileError(f"layer {le.key!r}: {e}") from None
        return roots

    @staticmethod
    def _live(root: nn.Module, le: LayerEdit) -> torch.Tensor | str:
        """The live parameter tensor ``le`` edits in ``root`` (its component), or a string saying why there is none."""
        try:
            module = root.get_submodule(le.path)
        except AttributeError:
            return f"{le.key}: no such module"
        p = getattr(module, le.param, None)
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            return f"{le.key}: {type(module).__name__} has no floating-point parameter {le.param!r}"
        if tuple(p.shape) != tuple(le.shape):
            return f"{le.key}: shape {tuple(p.shape)} != {tuple(le.shape)}"
        return p

    def check_compatible(self, pipe: Pipeline, *, stack: bool = False) -> None:
        """Raise EditFileError unless every edited parameter exists in ``pipe`` with the base values this edit was made
        for.

        A parameter that already carries an applied edit is refused unless ``stack``; with
        ``stack`` its fingerprint is checked against the value it had before the first edit.
        """
        roots = self._roots(pipe)
        records = self._records(roots[None])
        if any(r.digest == self.digest for r in records):
            raise EditFileError(f"{self!r} is already applied to this pipeline; revert it before applying it again")
        carried: dict[str, tuple[torch.Tensor, str]] = {}
        for r in records:
            for key, (_, _, _, w0) in r.originals.items():
                carried.setdefault(key, (w0, r.description))  # the oldest record holds the base value
        if not stack:
            overlap = [k for k in self.layers if k in carried]
            if overlap:
                raise EditFileError(
                    f"{len(overlap)} of {len(self.layers)} layers already carry an applied edit "
                    f"({carried[overlap[0]][1]}); "
                    "revert it first, or pass stack=True to apply this edit on top of it on purpose"
                )
        problems = []
        for key, le in self.layers.items():
            live = self._live(roots[le.component], le)
            if isinstance(live, str):
                problems.append(live)
                continue
            base = carried[key][0] if key in carried else live
            same, _ = fingerprints_match(self.fingerprints[key], weight_fingerprint(base))
            if not same:
                problems.append(f"{key}: weights differ from the base model the edit was made for")
        if problems:
            hint = (
                f" Another edit is applied to this pipeline ({records[-1].description}); revert it first."
                if records
                else " Load the base model named in the edit file (erasekit inspect shows it)."
            )
            base_name = self.base.get("name_or_path") or self.base.get("pipeline")
            raise EditFileError(
                f"this edit does not fit the pipeline ({len(problems)} of {len(self.layers)} layers differ; edit made "
                f"for {base_name!r}): " + "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "") + "." + hint
            )

    @torch.no_grad()
    def storage_loss(self, pipe: Pipeline, dtype: torch.dtype | None = None) -> StorageLoss:
        """The share of this edit's norm lost when its new values are stored in ``dtype`` (default: each parameter's
        live dtype), relative to the live base values: ‖(cast(W) − cast(W0)) − ΔW‖ / ‖ΔW‖, ΔW = W − W0 exact
        (float64), W as :meth:`apply` writes it in the live dtype before the cast.
        Storage of 4 bytes or more loses nothing measurable (float32 rounding of a float32 edit) and is not computed.
        """
        roots = self._roots(pipe)
        err2 = total2 = 0.0
        worst_key: str | None = None
        worst, low = 0.0, None
        for key, le in self.layers.items():
            live = self._live(roots[le.component], le)
            if isinstance(live, str):
                raise EditFileError(f"this edit does not fit the pipeline: {live}")
            to = dtype or live.dtype
            if to.itemsize >= 4:
                continue
            base = live.detach().to("cpu")  # (d_out, d_in): W0 in its live dtype
            exact = le._exact(base)  # W as the edit means it (float32, or float64 for W0 + B A)
            delta = exact.double() - base.double()  # ΔW
            # What storage in ``to`` keeps: W as apply writes it (the live dtype), then cast, against the base stored
            # alike. With ``to`` the live dtype this is cast(W) - W0; below it (a float32 pipeline saved in float8)
            # the base's own rounding cancels and is not counted as a loss of the edit.
            kept = exact.to(base.dtype).to(to).double() - base.to(to).double()
            err = float((kept - delta).norm())  # what rounding to the grid took away
            norm = float(delta.norm())
            err2, total2 = err2 + err * err, total2 + norm * norm
            if norm > 0 and err / norm >= worst:
                worst_key, worst = key, err / norm
            low = to if low is None or to.itemsize < low.itemsize else low
        name = str(low or dtype or "float32").replace("torch.", "")
        return StorageLoss(name, (err2 / total2) ** 0.5 if total2 > 0 else 0.0, worst_key, worst)

    def check_storage_loss(
        self, pipe: Pipeline, limit: float | None = STORAGE_LOSS_LIMIT, dtype: torch.dtype | None = None
    ) -> StorageLoss | None:
        """Refuse (EditError) when storing this edit in ``dtype`` (default: the live dtypes) would lose more than
        ``limit`` of its norm; None: no check. Returns the :class:`StorageLoss`, or None when unchecked."""
        if limit is None:
            return None
        sl = self.storage_loss(pipe, dtype)
        if sl.lost > limit:
            raise EditError(
                f"fusing this edit into {sl.dtype} weights would round away {sl.lost:.0%} of it (worst layer "
                f"{sl.worst_key!r}: {sl.worst:.0%}), more than max_storage_loss={limit:g}; load the model in float32 / "
                "float16, or export the edit as a 'lora' and load it unfused (pipe.load_lora_weights without "
                "fuse_lora), which keeps all of it; max_storage_loss=None fuses it anyway"
            )
        return sl

    @torch.no_grad()
    def apply(
        self, pipe: Pipeline, *, stack: bool = False, max_storage_loss: float | None = STORAGE_LOSS_LIMIT
    ) -> Edit:
        """Write the new values into ``pipe``'s denoiser (UNet or transformer), in place, as one transaction.

        Every check that needs no new value runs first (:meth:`check_compatible`). Then layer by
        layer: the new value is materialised in the live dtype (a value that overflows it is
        refused), the original is recorded and the value written. Any exception midway, Ctrl-C
        included, restores every original written so far and leaves no record, so a refused
        edit leaves the pipeline bit-exact. Working layer by layer keeps the extra memory to the
        record of originals (one copy of the edited layers, in their own dtype) plus one layer:
        materialising every layer first held a second full copy (SDXL: +650 MiB in float16).
        A parameter that already carries an edit is refused unless ``stack=True``.
        Each layer's component is resolved through the pipeline's family (:meth:`Family.component`).
        An edit that low-precision storage (bfloat16, float8) would mostly round away is refused: more than
        ``max_storage_loss`` of ‖ΔW‖ lost (:meth:`storage_loss`; default :data:`STORAGE_LOSS_LIMIT`, None: no check).
        """
        self.check_compatible(pipe, stack=stack)
        self.check_storage_loss(pipe, max_storage_loss)
        roots = self._roots(pipe)
        unet = roots[None]
        record = _Record(self.digest, repr(self), {})  # description first: nothing may fail after a write but a layer
        records: list[_Record] | None = getattr(unet, _APPLIED_ATTR, None)
        if records is None:
            records = []
            setattr(unet, _APPLIED_ATTR, records)
        records.append(record)
        try:
            for key, le in self.layers.items():
                live = self._live(roots[le.component], le)
                if isinstance(live, str):  # check_compatible refused this already
                    raise EditFileError(live)
                value = le.materialize_as(live)  # (d_out, d_in) in the live dtype, checked finite there
                record.originals[key] = (le.component, le.path, le.param, live.detach().to("cpu", copy=True))
                live.copy_(value)
                del value
        except BaseException:
            for component, module, param, w0 in reversed(list(record.originals.values())):
                getattr(roots[component].get_submodule(module), param).copy_(w0)
            records.remove(record)
            raise
        return self

    @torch.no_grad()
    def revert(self, pipe: Pipeline) -> None:
        """Restore the exact original bytes of every parameter this edit changed."""
        unet = self._live_denoiser(pipe)
        records = self._records(unet)
        ids = [r.digest for r in records]
        if unet is None or self.digest not in ids:
            raise EditFileError("this edit is not applied to this pipeline; nothing to revert")
        if ids[-1] != self.digest:
            raise EditFileError(
                f"another edit was applied after this one ({records[-1].description}); revert that one first"
            )
        record = records[-1]
        roots = self._roots(pipe)
        for component, module, param, w0 in record.originals.values():
            getattr(roots[component].get_submodule(module), param).copy_(w0)
        records.pop()

    @staticmethod
    def applied(pipe: Pipeline) -> list[str]:
        """Descriptions of the edits currently applied to ``pipe``, oldest first."""
        return [r.description for r in Edit._records(Edit._live_denoiser(pipe))]

    # ------------------------------------------------------------- storage
    def _tensors(self) -> dict[str, torch.Tensor]:
        """Tensors by their in-memory names (the denoiser's relative to it): what :attr:`digest` covers."""
        return {f"{le.path}.{suffix}": t for le in self.layers.values() for suffix, t in le.tensors.items()}

    def _file_key(self, le: LayerEdit, name: str) -> str:
        """``name`` (a layer key or tensor name relative to ``le``'s component) as the file spells it."""
        return file_key(le.component or self.component, name)

    def _file_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors by their names in a format-3 file: ``<component>/<module>.<suffix>``."""
        return {
            self._file_key(le, f"{le.path}.{suffix}"): t.contiguous()
            for le in self.layers.values()
            for suffix, t in le.tensors.items()
        }

    def metadata(self) -> dict[str, Any]:
        """The format-3 metadata document, without its checksum: layers keyed ``<component>/<module path>``."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "erasekit_version": __version__,
            "method": self.method,
            "config": self.config,
            "concepts": self.concepts,
            "base": self.base,
            "stats": _jsonable(self.stats),
            "compute_dtype": self.compute_dtype,
            "layers": {
                self._file_key(le, layer_key(le.path, le.param)): {
                    "kind": le.kind,
                    "param": le.param,
                    "shape": list(le.shape),
                    "fingerprint": self.fingerprints[key],
                    "stats": _jsonable(le.stats),
                }
                for key, le in self.layers.items()
            },
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the edit as one safetensors file, atomically; the metadata is parsed back before writing."""
        from safetensors.torch import save_file

        path = Path(path)
        if self.compute_dtype is not None and self.compute_dtype not in FLOAT_DTYPES:
            raise EditFileError(f"compute_dtype must be one of {FLOAT_DTYPES} or None, got {self.compute_dtype!r}")
        tensors = self._file_tensors()
        meta = self.metadata()
        try:
            meta["content_sha256"] = content_sha256(meta, tensors)
            text = canonical_json(meta)
        except (TypeError, ValueError) as e:
            raise EditFileError(f"cannot save this edit: its metadata is not plain JSON ({e})") from None
        try:
            parse_metadata(text, tensors)
        except EditFileError as e:
            raise EditFileError(f"refusing to write an edit file the reader would refuse: {e}") from None
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"erasekit": text})
        return path

    @classmethod
    def from_parsed(cls, meta: EditMeta, tensors: dict[str, torch.Tensor]) -> Edit:
        layers = [
            LayerEdit(
                lm.module,
                lm.kind,
                lm.shape,
                {s: tensors[k] for s, k in lm.tensor_keys.items()},
                thaw(lm.stats),
                lm.param,
                lm.component,  # the denoiser's become None in Edit.__init__
            )
            for lm in meta.layers
        ]
        edit = cls(
            meta.method,
            thaw(meta.config),
            thaw(meta.concepts),
            thaw(meta.base),
            layers,
            {_memory_key(meta, lm): lm.fingerprint.to_json() for lm in meta.layers},
            thaw(meta.stats),
            compute_dtype=meta.compute_dtype,
        )
        edit.format_version = meta.format_version
        return edit

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Edit:
        """Read and fully validate an edit file (the format :meth:`save` writes); raises EditFileError naming what is
        wrong. :func:`erasekit.load_edit` also reads erasekit's LoRA exports back."""
        return cls.from_parsed(*read_edit_file(path))
