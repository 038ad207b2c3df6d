"""Read an erasekit LoRA export (``lora`` or ``lora-kohya``) back as an :class:`~erasekit.Edit`.

The file's ``erasekit_export`` record names the original edit (method, config, concepts, base
model and the fingerprint of every edited layer) and, per layer, the tensor key it was written
under; its checksum covers that record and every tensor. The result is a low-rank edit
W = W0 + B A (B = ``lora_B`` / ``lora_up``, A = ``lora_A`` / ``lora_down``, scale alpha / r = 1) that
loads, applies and reverts like any other: it is the ``read_back`` of the ``lora`` and ``lora-kohya``
formats, which :func:`erasekit.load_edit` picks when the metadata says the file is such an export. A
truncated-SVD export reads back as what it is, the approximation (``stats["export"]`` keeps its
relative error). Export format 1 files (an export-only checksum) still read back.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..errors import EditFileError
from ._common import META_FORMAT, META_KEY, META_VERSION, content_sha256

LORA_FORMATS = ("lora", "lora-kohya", "lora-kohya-flux")


def _v1_checksum(meta: dict, tensors: dict[str, torch.Tensor]) -> str:
    """The checksum of export format 1 (read back only; format 2 writes :func:`._common.content_sha256`)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "content_sha256"}, sort_keys=True).encode())
    for key in sorted(tensors):
        x = tensors[key].detach().to("cpu").contiguous()
        h.update(f"|{key}|{x.dtype}|{tuple(x.shape)}|".encode())
        h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


def _tensor(tensors: dict, key: str, where: str) -> torch.Tensor:
    if key not in tensors:
        raise EditFileError(f"{where}: missing tensor {key!r}")
    t = tensors[key]
    if not t.is_floating_point() or not torch.isfinite(t).all():
        raise EditFileError(f"{where}: tensor {key!r} is not finite floating point")
    return t.to(torch.float32)


def _layer_factors(up: torch.Tensor, down: torch.Tensor, out: dict, d_out: int, r: int, where: str):
    """(B, A) of one layer inside a fused kohya tensor (lora-kohya-flux): its columns ``cols`` = [c, r] of up /
    rows of down, and its rows ``rows`` = [[row in the fused tensor, row in the layer, count], ...]."""
    c, width = (int(x) for x in out["cols"])
    if width != r or c < 0 or c + r > down.shape[0]:
        raise EditFileError(
            f"{where}: columns {out['cols']} do not fit a rank-{r} layer in a rank-{down.shape[0]} tensor"
        )
    B = torch.zeros(d_out, r)
    for dst, src, n in ((int(x) for x in seg) for seg in out["rows"]):
        if min(dst, src, n) < 0 or dst + n > up.shape[0] or src + n > d_out:
            raise EditFileError(
                f"{where}: rows {out['rows']} do not fit a {d_out}-row layer in a {up.shape[0]}-row tensor"
            )
        B[src : src + n] = up[dst : dst + n, c : c + r]
    return B, down[c : c + r]


def read_lora_export(path: str | os.PathLike):
    """The :class:`~erasekit.Edit` an erasekit LoRA export carries; raises EditFileError naming what is wrong."""
    from safetensors import safe_open

    from ..edit import Edit, LayerEdit

    path = Path(path)
    where = repr(str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(header[META_KEY])
        fmt = meta["export_format"]
        if meta.get("format") != META_FORMAT or fmt not in LORA_FORMATS:
            raise EditFileError(f"{where} is not an erasekit LoRA export")
        if not isinstance(meta.get("format_version"), int) or not 1 <= meta["format_version"] <= META_VERSION:
            raise EditFileError(
                f"{where}: export format version {meta.get('format_version')!r} is not supported (this erasekit reads "
                f"1..{META_VERSION})"
            )
        expected = (content_sha256 if meta["format_version"] >= 2 else _v1_checksum)(meta, tensors)
        if meta.get("content_sha256") != expected:
            raise EditFileError(
                f"{where}: tensors or metadata do not match the recorded checksum (the file was modified or corrupted)"
            )
        rec, per_layer = meta["edit"], meta["layers"]
        layers, fingerprints = [], {}
        used: set[str] = set()
        for lpath, info in rec["layers"].items():
            out = per_layer[lpath]
            d_out, d_in = (int(x) for x in info["shape"])
            r, key = int(out["rank"]), out["key"]
            if r == 0:
                continue  # ΔW = 0 at export: the layer is left as it is
            if fmt == "lora":
                names: tuple[str, ...] = (f"{key}.lora_B.weight", f"{key}.lora_A.weight")
                scale = 1.0
                B, A = (_tensor(tensors, n, where) for n in names)
            else:
                names = (f"{key}.lora_up.weight", f"{key}.lora_down.weight", f"{key}.alpha")
                up, down = (_tensor(tensors, n, where) for n in names[:2])
                scale = float(_tensor(tensors, names[2], where)) / down.shape[0]  # kohya alpha / R (1 as written)
                B, A = _layer_factors(up, down, out, d_out, r, where) if "rows" in out else (up, down)
            used.update(names)
            if tuple(B.shape) != (d_out, r) or tuple(A.shape) != (r, d_in):
                raise EditFileError(
                    f"{where}: layer {lpath!r} factors {tuple(B.shape)} × {tuple(A.shape)} do not make the recorded "
                    f"{(d_out, d_in)} of rank {r}"
                )
            layers.append(
                LayerEdit.lowrank(
                    lpath, B * scale, A, rank=r, exact=bool(out["exact"]), rel_error=float(out["rel_error"])
                )
            )
            fingerprints[lpath] = info["fingerprint"]
        extra = sorted(set(tensors) - used)
        if extra:
            raise EditFileError(f"{where}: unexpected tensor(s) {extra[:3]} not described by the erasekit record")
        stats = dict(rec.get("stats") or {})
        stats["export"] = {
            "format": fmt,
            "exact": bool(meta["exact"]),
            "rel_error": float(meta["rel_error"]),
            "rank_requested": meta.get("rank_requested"),
        }
        return Edit(
            rec["method"],
            rec.get("config", {}),
            rec.get("concepts", {}),
            rec.get("base", {}),
            layers,
            fingerprints,
            stats,
        )
    except EditFileError:
        raise
    except Exception as e:  # truncated file, missing field, wrong type: one clear error, whatever the bytes
        raise EditFileError(f"{where} is not a readable erasekit LoRA export ({type(e).__name__}: {e})") from None
