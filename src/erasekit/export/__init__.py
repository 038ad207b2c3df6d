"""Export an edit where people run their models: one module per format, one entry point.

============  ==========================================================  =====================================
format        what is written                                             read by
============  ==========================================================  =====================================
single-file   the whole pipeline, edit baked in (SD 1.x / 2.x / XL)        A1111, ComfyUI, Forge, from_single_file
diffusers     a merged ``save_pretrained`` folder, edit baked in            DiffusionPipeline.from_pretrained
lora          PEFT LoRA of the edit (exact for low-rank edits)             pipe.load_lora_weights
lora-kohya    kohya LoRA of the edit (LDM names for SDXL)                  A1111, ComfyUI, Forge, diffusers
diff          the full ΔW per module (kohya / LyCORIS ``.diff``)           A1111, ComfyUI, LyCORIS
============  ==========================================================  =====================================

    erasekit.export(edit, "lora", "vangogh-lora.safetensors", pipe=pipe)
    erasekit.export(edit, "single-file", "model-erased.safetensors", pipe=pipe, save_dtype="float16")
    erasekit.export(pipe, "diffusers", "model-erased/")        # a pipeline: written as it is (edits applied are baked in)

A sparse or dense edit whose ΔW is not numerically low-rank cannot be an exact LoRA: ``rank=k``
writes its truncated SVD (the relative error is returned and stored in the file), otherwise the
export is refused with the exact alternatives. Every file carries the erasekit record (method,
concepts, base fingerprints) under the ``erasekit_export`` metadata key; LoRA exports read back
with :func:`erasekit.load_edit`.
"""

from __future__ import annotations

import os

from . import diff, diffusers_folder, lora, lora_kohya, single_file
from ._common import ExportError, ExportResult, check_output, edit_record, path_size

FORMATS = ("single-file", "diffusers", "lora", "lora-kohya", "diff")
_EDIT_ONLY = {"lora": lora.write, "lora-kohya": lora_kohya.write, "diff": diff.write}

__all__ = ["FORMATS", "ExportError", "ExportResult", "export"]


def _needs_pipe(edit, format: str, kohya_names: str | None) -> str | None:
    """Why ``format`` needs the base pipeline for ``edit`` (None when the edit alone suffices)."""
    if format == "diff":
        return "ΔW of every layer is computed against the base weights"
    if any(le.kind != "lowrank" for le in edit.layers.values()):
        return "dense / sparse layers are factored against the base weights"
    if format == "lora-kohya" and (kohya_names or lora_kohya.default_spelling(None, edit)) == "ldm":
        return "LDM-spelled kohya names take their block indices from the UNet config"
    return None


def export(edit_or_pipe, format: str = "single-file", path: str | os.PathLike | None = None, *, pipe=None, rank: int | None = None,
           save_dtype=None, kohya_names: str | None = None, layout: str | None = None, progress: bool = False) -> ExportResult:
    """Write an :class:`~erasekit.Edit` (with ``pipe=`` its base pipeline) or a pipeline in ``format``.

    Args:
        edit_or_pipe: the edit to export, or a pipeline (whole-model formats only; edits applied
            to it are baked in).
        format: one of :data:`FORMATS`.
        path: output file (a folder for ``diffusers``); written atomically, checked before any work.
        pipe: the base pipeline the edit was made for (checked strictly against the edit's
            fingerprints). Needed for the whole-model formats, ``diff``, kohya SDXL names, and LoRAs
            of dense / sparse edits.
        rank: LoRA formats only: the largest rank to write; layers whose ΔW has a higher numerical
            rank get their truncated SVD (relative error reported and stored).
        save_dtype: float32 / float16 / bfloat16 for the written tensors (default: float32 for
            edit-only formats, the pipeline's dtype for whole models).
        kohya_names: ``diffusers`` or ``ldm`` spelling of kohya module names (default: ``ldm`` for
            SDXL, ``diffusers`` for SD 1.x / 2.x).
        layout: single-file only: ``sd1``, ``sd2`` or ``sdxl`` (default: from the pipeline).
    """
    from ..edit import Edit

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if path is None:
        raise ExportError("no output path given")
    if rank is not None and format not in ("lora", "lora-kohya"):
        raise ExportError(f"rank applies to the LoRA formats only; the {format!r} format carries the edit exactly")
    if layout is not None and format != "single-file":
        raise ExportError("layout applies to the single-file format only")
    if kohya_names is not None and format not in ("lora-kohya", "diff"):
        raise ExportError("kohya_names applies to the lora-kohya and diff formats only")
    if isinstance(edit_or_pipe, Edit):
        edit = edit_or_pipe
    elif getattr(edit_or_pipe, "unet", None) is not None:
        if pipe is not None:
            raise ExportError("pass either an edit with pipe=<its base pipeline>, or a pipeline alone, not two pipelines")
        edit, pipe = None, edit_or_pipe
    else:
        raise ExportError(f"cannot export a {type(edit_or_pipe).__name__}: pass an erasekit Edit or a diffusers UNet pipeline")
    check_output(path, folder=format == "diffusers")

    if format in _EDIT_ONLY:
        if edit is None:
            raise ExportError(f"the {format!r} format carries an edit, not a whole pipeline: pass the Edit and pipe=<its base pipeline>")
        odd = [k for k, le in edit.layers.items() if getattr(le, "param", "weight") != "weight" or len(le.shape) != 2]
        if odd:
            raise ExportError(f"the {format!r} format carries Linear weight changes only; this edit also changes {odd[0]!r}: "
                              "export it as 'diffusers' or 'single-file'")
        why = _needs_pipe(edit, format, kohya_names)
        if pipe is None and why:
            raise ExportError(f"the {format!r} export of this edit needs its base pipeline (pipe=...): {why}")
        if pipe is not None:
            edit.check_compatible(pipe)  # strict: the base weights this edit was made for
        return _EDIT_ONLY[format](edit, pipe, path, rank=rank, save_dtype=save_dtype, kohya_names=kohya_names, progress=progress)

    if pipe is None:
        raise ExportError(f"the {format!r} format writes a whole model: pass pipe=<the base pipeline> with the edit")
    record = edit_record(edit) if edit is not None else None
    if format == "single-file":
        single_file._check_pipeline(pipe, layout or single_file.detect_layout(pipe))  # refuse before applying anything
    if edit is not None:
        edit.apply(pipe)
    try:
        if format == "single-file":
            out = single_file.export_single_file(pipe, path, save_dtype, layout=layout, record=record)
            return ExportResult(out, f"single-file ({layout or single_file.detect_layout(pipe)})", path_size(out))
        return diffusers_folder.write_folder(pipe, path, save_dtype=save_dtype, record=record, progress=progress)
    finally:
        if edit is not None:
            edit.revert(pipe)
