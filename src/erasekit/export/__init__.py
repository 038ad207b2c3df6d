"""Export an edit where people run their models: one module per format, one entry point.

============  ==========================================================  =====================================
format        what is written                                             read by
============  ==========================================================  =====================================
single-file   the whole pipeline, edit baked in (SD 1.x / 2.x / XL)        A1111, ComfyUI, Forge, from_single_file
diffusers     a merged ``save_pretrained`` folder, edit baked in            DiffusionPipeline.from_pretrained
lora          PEFT LoRA of the edit (exact for low-rank edits)             pipe.load_lora_weights
lora-kohya    kohya LoRA of the edit (LDM names for SDXL)                  A1111, ComfyUI, Forge, diffusers
diff          the full ΔW per module (kohya / LyCORIS ``.diff``)           A1111, ComfyUI, LyCORIS
lora-kohya-   FLUX.1 LoRA in kohya / BFL names (``lora_unet_txt_in``,       ComfyUI, kohya sd-scripts (diffusers
flux          fused ``…_txt_attn_qkv``)                                     0.42 drops its top-level keys)
single-file-  the FLUX.1 transformer, edit baked in, BFL layout (fused       ComfyUI, diffusers from_single_file
flux          q/k/v, ``single_blocks.N.linear1`` = [q; k; v; mlp])          (both at FLUX.1's published width)
single-file-  the SD3 / SD3.5 transformer, edit baked in, Stability's       ComfyUI, diffusers from_single_file
sd3           layout (``joint_blocks.N.context_block.attn.qkv`` fused)
============  ==========================================================  =====================================

    erasekit.export(edit, "lora", "vangogh-lora.safetensors", pipe=pipe)
    erasekit.export(edit, "single-file", "model-erased.safetensors", pipe=pipe, save_dtype="float16")
    erasekit.export(pipe, "diffusers", "model-erased/")  # a pipeline: written as it is (edits applied are baked in)

A sparse or dense edit whose ΔW is not numerically low-rank cannot be an exact LoRA: ``rank=k``
writes its truncated SVD (the relative error is returned and stored in the file), otherwise the
export is refused with the exact alternatives. Every file carries the erasekit record (method,
concepts, base fingerprints) under the ``erasekit_export`` metadata key; LoRA exports read back
with :func:`erasekit.load_edit`.

Each format is one module that registers an :class:`ExportFormat` (:mod:`.base`): its kind, options,
writer and read-back. :func:`export` and ``erasekit export --format`` dispatch through the registry.
"""

from __future__ import annotations

import os

# Importing a format's module registers it; this order is the CLI's order of --format choices.
from . import diff, diffusers_folder, lora, lora_kohya, lora_kohya_flux, single_file, single_file_flux, single_file_sd3  # noqa: F401, I001  (registration side effect)
from ._common import ExportError, ExportResult, check_output
from .base import KINDS, ORIGINAL_LAYOUT, SD_ONLY, ExportFormat, get_format, list_formats, register_format

__all__ = [
    "ExportError",
    "ExportFormat",
    "ExportResult",
    "KINDS",
    "export",
    "get_format",
    "list_formats",
    "register_format",
]


def _edit_and_pipe(edit_or_pipe, pipe):
    """(edit or None, pipe or None) from export's first argument and ``pipe=``."""
    from ..edit import Edit

    if isinstance(edit_or_pipe, Edit):
        return edit_or_pipe, pipe
    if any(getattr(edit_or_pipe, c, None) is not None for c in ("unet", "transformer")):
        if pipe is not None:
            raise ExportError(
                "pass either an edit with pipe=<its base pipeline>, or a pipeline alone, not two pipelines"
            )
        return None, edit_or_pipe
    raise ExportError(
        f"cannot export a {type(edit_or_pipe).__name__}: pass an erasekit Edit or a diffusers UNet pipeline"
    )


def export(
    edit_or_pipe,
    format: str = "single-file",
    path: str | os.PathLike | None = None,
    *,
    pipe=None,
    progress: bool = False,
    **options,
) -> ExportResult:
    """Write an :class:`~erasekit.Edit` (with ``pipe=`` its base pipeline) or a pipeline in ``format``.

    Args:
        edit_or_pipe: the edit to export, or a pipeline (whole-model formats only; edits applied
            to it are baked in).
        format: a registered format (:func:`list_formats`): single-file, diffusers, lora, lora-kohya, diff,
            lora-kohya-flux, single-file-flux, single-file-sd3.
        path: output file (a folder for ``diffusers``); written atomically, checked before any work.
        pipe: the base pipeline the edit was made for (checked strictly against the edit's
            fingerprints). Needed for the whole-model formats, ``diff``, kohya SDXL names, and LoRAs
            of dense / sparse edits.
        **options: the format's own options (``None`` = not given); one it does not take is refused:

            * ``save_dtype`` (every format): float32 / float16 / bfloat16 for the written tensors
              (default: float32 for edit formats, the pipeline's dtype for whole models); single-file-flux and
              single-file-sd3 also store float8_e4m3fn / float8_e5m2 (plain float8, every tensor). A whole model
              saved below float32 with an edit is refused when the edit would lose more than
              :data:`erasekit.edit.STORAGE_LOSS_LIMIT` of its norm to the rounding; the result notes the share lost;
            * ``rank`` (lora, lora-kohya): the largest rank to write; layers whose ΔW has a higher
              numerical rank get their truncated SVD (relative error reported and stored);
            * ``kohya_names`` (lora-kohya, diff): ``diffusers`` or ``ldm`` spelling of module names
              (default: ``ldm`` for SDXL, ``diffusers`` for SD 1.x / 2.x);
            * ``layout`` (single-file): ``sd1``, ``sd2`` or ``sdxl`` (default: from the pipeline).
    """
    fmt = get_format(format)
    if path is None:
        raise ExportError("no output path given")
    given = fmt.accept(options)
    edit, pipe = _edit_and_pipe(edit_or_pipe, pipe)
    check_output(path, folder=fmt.folder)
    from .lora import family_of

    fam = family_of(edit, pipe)
    if not fmt.takes(fam.name):
        others = [n for n, f in list_formats().items() if f.takes(fam.name) and (fam.kohya or n not in SD_ONLY)]
        raise ExportError(
            f"the {fmt.name!r} format writes {' / '.join(fmt.families)} models; this is {fam.name} "
            f"({fam.description}): export it as {', '.join(repr(n) for n in others)}"
        )
    if fmt.name in SD_ONLY:
        if not fam.kohya:
            own = ORIGINAL_LAYOUT.get(fam.name, {}).get(fmt.name)
            raise ExportError(
                f"the {fmt.name!r} format uses Stable Diffusion's original (LDM / kohya) key names, which "
                f"{fam.name} ({fam.description}) does not have; export as "
                + (f"{own!r} ({fam.name}'s own original layout), " if own else "")
                + "'lora' (PEFT keys) or 'diffusers' (a merged folder)"
            )

    if fmt.kind == "edit":
        if edit is None:
            raise ExportError(
                f"the {fmt.name!r} format carries an edit, not a whole pipeline: pass the Edit and "
                "pipe=<its base pipeline>"
            )
        odd = [k for k, le in edit.layers.items() if getattr(le, "param", "weight") != "weight" or len(le.shape) != 2]
        if odd:
            whole = " or ".join(repr(n) for n, f in list_formats().items() if f.kind == "model")
            raise ExportError(
                f"the {fmt.name!r} format carries Linear weight changes only; this edit also changes "
                f"{odd[0]!r}: export it as {whole}"
            )
        why = fmt.needs_pipe(edit, given)
        if pipe is None and why:
            raise ExportError(f"the {fmt.name!r} export of this edit needs its base pipeline (pipe=...): {why}")
        if pipe is not None:
            edit.check_compatible(pipe)  # strict: the base weights this edit was made for
    elif pipe is None:
        raise ExportError(f"the {fmt.name!r} format writes a whole model: pass pipe=<the base pipeline> with the edit")
    lost = None
    if fmt.kind == "model" and edit is not None and given.get("save_dtype") is not None:
        lost = _check_saved_storage_loss(edit, pipe, given["save_dtype"], fmt.float8)
    res = fmt.write(edit, pipe, path, progress=progress, **given)
    if lost is not None and lost.lost > 0:
        res.notes.append(
            f"the edit stored in {lost.dtype}: rounding changed it by {lost.lost:.1%} of its norm (refused above "
            f"{_storage_loss_limit():.0%}); a 'lora' export keeps all of it"
        )
    return res


def _storage_loss_limit() -> float:
    from ..edit import STORAGE_LOSS_LIMIT  # imported late: erasekit.edit imports the model families

    return STORAGE_LOSS_LIMIT


def _check_saved_storage_loss(edit, pipe, save_dtype, float8: bool):
    """A merged model saved in a low-precision dtype rounds the edit into it: refuse (one line) above
    STORAGE_LOSS_LIMIT, naming the LoRA export; the :class:`~erasekit.edit.StorageLoss` (None below 4 bytes)."""
    from ._common import resolve_save_dtype

    dtype = resolve_save_dtype(save_dtype, float8=float8)
    if dtype is None or dtype.itemsize >= 4:
        return None
    sl = edit.storage_loss(pipe, dtype)
    if sl.lost > _storage_loss_limit():
        raise ExportError(
            f"saving this edit merged into {sl.dtype} weights would change it by {sl.lost:.0%} of its norm in rounding "
            f"(worst layer {sl.worst_key!r}: {sl.worst:.0%}), more than the {_storage_loss_limit():.0%} allowed "
            "(erasekit.edit.STORAGE_LOSS_LIMIT); "
            "export the edit as a 'lora' instead, which keeps all of it (pipe.load_lora_weights without fuse_lora), "
            "or save in a wider dtype; to write the merged model anyway, apply the edit (max_storage_loss=None) and "
            "export the pipeline"
        )
    return sl
