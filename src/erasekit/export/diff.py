"""``diff``: the full-weight change ΔW = W − W0 per edited module, in the kohya / LyCORIS ``.diff`` form.

``lora_unet_<name>.diff`` (d_out, d_in), names as in :mod:`.lora_kohya`. A1111 (built-in Lora
"full" networks), ComfyUI and LyCORIS add it to the base weight: W = W0 + diff. Every edit fits
(sparse SPACE, dense UCE included), exactly up to the save dtype's rounding of ΔW; it is as large
as the edited matrices (no low-rank saving). diffusers has no reader for it.
"""

from __future__ import annotations

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
from .base import ExportFormat, always, register_format
from .lora_kohya import layer_names
from .lowrank import layer_delta


def write(
    edit, pipe, path, *, save_dtype=None, kohya_names: str | None = None, progress: bool = False, **_
) -> ExportResult:
    import json

    from tqdm.auto import tqdm

    path = check_output(path)
    cast = resolve_save_dtype(save_dtype) or torch.float32
    names, spelling = layer_names(edit, pipe, kohya_names)
    tensors = {}
    for p, le in tqdm(edit.layers.items(), desc="ΔW", disable=not progress, leave=False):
        W0 = pipe.unet.get_submodule(p).weight
        tensors[f"{names[p]}.diff"] = layer_delta(le, W0).to(cast).contiguous()
    meta = export_metadata(
        "diff",
        edit=edit_record(edit),
        layers={p: {"key": names[p]} for p in edit.layers},
        kohya_names=spelling,
        save_dtype=str(cast).replace("torch.", ""),
    )
    meta["content_sha256"] = content_sha256(meta, tensors)
    save_safetensors(tensors, path, {"format": "pt", "erasekit_export": json.dumps(meta, sort_keys=True)})
    return ExportResult(path, "diff", path_size(path), layers=len(tensors))


register_format(
    ExportFormat(
        name="diff",
        kind="edit",
        write=write,
        options=("save_dtype", "kohya_names"),
        help="the full ΔW per module, kohya / LyCORIS .diff (A1111, ComfyUI, LyCORIS); every edit, exactly",
        needs_pipe=always("ΔW of every layer is computed against the base weights"),
    )
)
