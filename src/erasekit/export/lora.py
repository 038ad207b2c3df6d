"""``lora``: the edit as a diffusers / PEFT LoRA (``pipe.load_lora_weights(file)``).

Keys are PEFT's ``<prefix>.<module path>.lora_A.weight`` (r, d_in) and ``.lora_B.weight`` (d_out, r),
the prefix asked of the model's family (``unet`` for SD 1.x / 2.x / XL, ``transformer`` for the DiTs);
the safetensors metadata carries diffusers' ``lora_adapter_metadata`` (the ``LoraConfig``) with
``lora_alpha`` = r for every module (``rank_pattern`` / ``alpha_pattern`` per module), so the
loader's scale alpha / r is exactly 1 and ``fuse_lora()`` gives W0 + B A. The erasekit record
(method, concepts, base fingerprints, per-layer rank and error) sits beside it under
``erasekit_export``, which is what :mod:`erasekit.export.lora_import` reads back.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import torch

from ._common import (
    ExportResult,
    check_output,
    content_sha256,
    edit_record,
    export_metadata,
    path_size,
    resolve_save_dtype,
    save_safetensors,
)
from .base import ExportError, ExportFormat, register_format
from .lora_import import read_lora_export
from .lowrank import Factors, edit_factors, total_rel_error

UNET = "unet"


def family_of(edit, pipe=None):
    """The model family an export writes for: the pipeline's, else the one the edit records (UNet for old files)."""
    from ..models.families import families, identify

    if pipe is not None:
        return identify(pipe)
    name = edit.base.get("family") if edit is not None else None
    return families().get(name) or families()["sd"]


def peft_prefix(path: str, prefix: str = UNET) -> str:
    return f"{prefix}.{path}"


def adapter_config(factors: dict[str, Factors], prefix: str = UNET) -> dict:
    """diffusers' ``lora_adapter_metadata`` for the denoiser: a ``LoraConfig`` with alpha = r per module."""
    ranks = {p: f.rank for p, f in factors.items() if f.rank > 0}
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    pattern = {p: k for p, k in ranks.items() if k != r}
    cfg = {
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_dora": False,
    }
    return {f"{prefix}.{k}": v for k, v in cfg.items()}


def lora_metadata(
    export_format: str,
    edit,
    factors: dict[str, Factors],
    keys: dict[str, str],
    rank: int | None,
    cast: torch.dtype | None,
    **extra,
) -> dict:
    """The ``erasekit_export`` record of a LoRA export (read back by ``lora_import``)."""
    layers = {
        p: {"key": keys[p], "rank": f.rank, "exact": f.exact, "rel_error": round(f.rel_error, 8)}
        for p, f in factors.items()
    }
    return export_metadata(
        export_format,
        edit=edit_record(edit),
        layers=layers,
        rank_requested=rank,
        exact=all(f.exact for f in factors.values()),
        rel_error=round(total_rel_error(factors), 8),
        save_dtype=str(cast or torch.float32).replace("torch.", ""),
        **extra,
    )


def finish(
    tensors: dict[str, torch.Tensor],
    meta: dict,
    header: dict[str, str],
    path: Path,
    export_format: str,
    factors: dict[str, Factors],
) -> ExportResult:
    meta["content_sha256"] = content_sha256(meta, tensors)
    header = {"format": "pt", **header, "erasekit_export": json.dumps(meta, sort_keys=True)}
    save_safetensors(tensors, path, header)
    exact = meta["exact"]
    res = ExportResult(
        path,
        export_format,
        path_size(path),
        layers=sum(f.rank > 0 for f in factors.values()),
        rank=max((f.rank for f in factors.values()), default=0),
        rel_error=meta["rel_error"],
        exact=exact,
    )
    if not exact:
        worst = max(factors.items(), key=lambda kv: kv[1].rel_error)
        res.notes.append(
            f"truncated SVD: worst layer {worst[0]} relative error {worst[1].rel_error:.4g} (written into the metadata)"
        )
    return res


def needs_base_weights(edit, options) -> str | None:
    """A LoRA of a dense / sparse layer is factored against its base weight; a low-rank edit is its own LoRA."""
    if any(le.kind != "lowrank" for le in edit.layers.values()):
        return "dense / sparse layers are factored against the base weights"
    return None


def write(edit, pipe, path, *, rank: int | None = None, save_dtype=None, progress: bool = False, **_) -> ExportResult:
    """Write ``edit`` (checked against ``pipe`` when given) as a PEFT LoRA file."""
    path = check_output(path)
    cast = resolve_save_dtype(save_dtype) or torch.float32
    fam = family_of(edit, pipe)
    if not fam.lora_loader:
        raise ExportError(
            f"diffusers has no LoRA loader for {fam.name} pipelines ({fam.description}: no load_lora_weights), so a "
            "'lora' file would have no consumer; export the edit merged as a 'diffusers' folder (format='diffusers')"
        )
    factors = edit_factors(edit, None if pipe is None else edit.denoiser(pipe), rank, progress)
    tensors, keys = {}, {}
    for p, f in factors.items():
        keys[p] = peft_prefix(p, fam.lora_prefix)
        if f.rank == 0:
            continue  # ΔW = 0: nothing to carry (recorded with rank 0)
        tensors[f"{keys[p]}.lora_A.weight"] = f.A.to(cast).contiguous()
        tensors[f"{keys[p]}.lora_B.weight"] = f.B.to(cast).contiguous()
    meta = lora_metadata("lora", edit, factors, keys, rank, cast)
    header = (
        {"lora_adapter_metadata": json.dumps(adapter_config(factors, fam.lora_prefix), sort_keys=True)}
        if tensors
        else {}
    )
    return finish(tensors, meta, header, path, "lora", factors)


register_format(
    ExportFormat(
        name="lora",
        kind="edit",
        write=write,
        options=("save_dtype", "rank"),
        needs_pipe=needs_base_weights,
        read_back=read_lora_export,
        help="PEFT LoRA keys, pipe.load_lora_weights (exact for low-rank edits; --rank K: truncated SVD)",
    )
)
