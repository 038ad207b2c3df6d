"""``single-file``: the whole pipeline as one A1111 / ComfyUI / Forge ``.safetensors`` checkpoint.

Three layouts, chosen from the pipeline (or forced with ``layout=``):

* ``sd1``  — SD 1.x: UNet + VAE + OpenAI CLIP under ``cond_stage_model.transformer.``
* ``sd2``  — SD 2.x: the UNet with linear projections, and the text encoder in the OpenCLIP
  layout under ``cond_stage_model.model.`` (fused ``in_proj``), as the original v2 checkpoints
* ``sdxl`` — SDXL: both conditioners (``conditioner.embedders.0`` OpenAI CLIP,
  ``conditioner.embedders.1`` OpenCLIP bigG with its ``text_projection``) and ``label_emb``

Edits applied to the pipeline are baked in. Before anything is written, diffusers' own loader
conversion is run on the result and must give back every tensor bit-identical (a self-check), so a
file that diffusers would misread is never produced. Only weights travel: the scheduler, tokenizer
and VAE scaling factor come from the loader's config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import ModelError
from . import ldm_names as N
from ._common import (
    ExportResult,
    baked,
    check_output,
    edit_record,
    export_metadata,
    path_size,
    resolve_save_dtype,
    save_safetensors,
)
from .base import ExportFormat, register_format

LAYOUTS = ("sd1", "sd2", "sdxl")
_UNET_DOWN = {"DownBlock2D", "CrossAttnDownBlock2D"}
_UNET_UP = {"UpBlock2D", "CrossAttnUpBlock2D"}


def detect_layout(pipe) -> str:
    """``sdxl`` with a second text encoder, ``sd2`` for a UNet with linear projections (SD 2.x), else ``sd1``."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    unet = getattr(pipe, "unet", None)
    return "sd2" if unet is not None and unet.config.use_linear_projection else "sd1"


def _check_pipeline(pipe, layout: str) -> None:
    name = type(pipe).__name__
    comps = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel"}
    if layout == "sdxl":
        comps["text_encoder_2"] = "CLIPTextModelWithProjection"
    for comp, cls in comps.items():
        got = getattr(pipe, comp, None)
        if got is None:
            raise ModelError(f"cannot export {name} as an {layout.upper()} single file: it has no {comp}")
        if type(got).__name__ != cls:
            raise ModelError(
                f"cannot export {name}: its {comp} is a {type(got).__name__}, the {layout.upper()} single-file layout "
                f"needs a {cls}"
            )
    if layout != "sdxl" and getattr(pipe, "text_encoder_2", None) is not None:
        raise ModelError(
            f"cannot export {name} in the {layout.upper()} layout: it has a second text encoder (an SDXL pipeline); "
            "use layout 'sdxl'"
        )
    c = pipe.unet.config
    problems = []
    if not isinstance(c.layers_per_block, int):
        problems.append(
            f"per-block layers_per_block {tuple(c.layers_per_block)} (the original layout has one value for all blocks)"
        )
    if layout == "sd1" and c.use_linear_projection:
        problems.append(
            "use_linear_projection=True (an SD 2.x UNet; export it in the 'sd2' layout, whose text encoder is OpenCLIP)"
        )
    bad = [t for t in c.down_block_types if t not in _UNET_DOWN] + [t for t in c.up_block_types if t not in _UNET_UP]
    if bad:
        problems.append(f"block types {bad} (only {sorted(_UNET_DOWN | _UNET_UP)})")
    if c.mid_block_type != "UNetMidBlock2DCrossAttn":
        problems.append(f"mid_block_type {c.mid_block_type!r} (only UNetMidBlock2DCrossAttn)")
    allowed = {"addition_embed_type": "text_time"} if layout == "sdxl" else {}
    for opt in ("class_embed_type", "addition_embed_type", "num_class_embeds", "time_cond_proj_dim", "encoder_hid_dim"):
        if c.get(opt) is not None and c.get(opt) != allowed.get(opt):
            problems.append(f"{opt}={c.get(opt)!r}")
    if layout == "sdxl" and c.get("addition_embed_type") != "text_time":
        problems.append("an SDXL UNet needs addition_embed_type='text_time' (label_emb)")
    vc = pipe.vae.config
    if any(t != "DownEncoderBlock2D" for t in vc.down_block_types) or any(
        t != "UpDecoderBlock2D" for t in vc.up_block_types
    ):
        problems.append(f"VAE block types {list(vc.down_block_types)} / {list(vc.up_block_types)}")
    if problems:
        raise ModelError(
            f"cannot export {name} to the original {layout.upper()} single-file layout: " + "; ".join(problems)
        )


def pipeline_to_ldm(pipe, layout: str | None = None) -> dict[str, torch.Tensor]:
    """The whole pipeline's weights in the original single-file layout (tensors shared, not copied, except fused
    q/k/v)."""
    layout = layout or detect_layout(pipe)
    if layout not in LAYOUTS:
        raise ModelError(f"unknown single-file layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    _check_pipeline(pipe, layout)
    unet_sd, vae_sd, te_sd = pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict()
    ldm = {**N.unet_to_ldm(unet_sd, pipe.unet.config), **N.vae_to_ldm(vae_sd, pipe.vae.config)}
    n_pos = pipe.text_encoder.config.max_position_embeddings
    if layout == "sd1":
        ldm.update(N.clip_to_ldm(te_sd, n_pos))
    elif layout == "sd2":
        ldm.update(N.openclip_to_ldm(te_sd, N.OPENCLIP_PREFIX))
    else:
        ldm.update(N.clip_to_ldm(te_sd, n_pos, prefix=N.SDXL_CLIP_PREFIX))
        ldm.update(N.openclip_to_ldm(pipe.text_encoder_2.state_dict(), N.SDXL_OPENCLIP_PREFIX))
    _self_check(ldm, pipe, layout, unet_sd, vae_sd, te_sd)
    return ldm


def _self_check(ldm, pipe, layout, unet_sd, vae_sd, te_sd) -> None:
    """Run diffusers' own loader conversion on the result: it must give back every tensor, bit-identical."""
    from diffusers.loaders import single_file_utils as sfu

    def strip(sd):
        return {k.removeprefix("text_model."): v for k, v in sd.items() if not k.endswith("position_ids")}

    back = {
        "UNet": (sfu.convert_ldm_unet_checkpoint(ldm, pipe.unet.config), unet_sd),
        "VAE": (sfu.convert_ldm_vae_checkpoint(ldm, pipe.vae.config), vae_sd),
    }
    if layout == "sd2":
        back["text encoder"] = (
            sfu.convert_open_clip_checkpoint(pipe.text_encoder, ldm, prefix=N.OPENCLIP_PREFIX),
            te_sd,
        )
    else:
        back["text encoder"] = (sfu.convert_ldm_clip_checkpoint(ldm), te_sd)
    if layout == "sdxl":
        back["text encoder 2"] = (
            sfu.convert_open_clip_checkpoint(pipe.text_encoder_2, ldm, prefix=N.SDXL_OPENCLIP_PREFIX),
            pipe.text_encoder_2.state_dict(),
        )
    for comp, (got, want) in back.items():
        got, want = strip({k: v for k, v in got.items() if v is not None}), strip(want)
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        differ = [
            k
            for k in set(want) & set(got)
            if got[k].shape != want[k].shape or not torch.equal(got[k].to(want[k].dtype), want[k])
        ]
        if missing or extra or differ:
            raise ModelError(
                f"cannot export this {comp} to a {layout.upper()} single file: diffusers would not read it back "
                f"(missing {missing[:3]}, unexpected {extra[:3]}, changed {sorted(differ)[:3]})"
            )


def export_single_file(
    pipe,
    path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    *,
    layout: str | None = None,
    record: dict | None = None,
) -> Path:
    """Write ``pipe`` as one single-file ``.safetensors`` checkpoint (SD 1.x, SD 2.x or SDXL layout).

    It loads in A1111, ComfyUI, Forge, or diffusers' ``from_single_file`` /
    ``erasekit.load_pipeline(path, config=<diffusers folder>)``. Edits applied to ``pipe`` are baked in
    (listed in the metadata under ``erasekit_applied_edits``; ``record``, the applied edit's identity,
    goes under ``erasekit_export``). ``dtype`` (``"float16"``, ``"bfloat16"``, ``"float32"``; default:
    as the pipeline) casts floating-point tensors. Written atomically; layouts the original format
    cannot express raise :class:`~erasekit.errors.ModelError` and write nothing.
    """
    from ..edit import Edit
    from ..models.sites_only import refuse_sites_only

    refuse_sites_only(getattr(pipe, "unet", None), "a single-file export")
    path = check_output(path)
    cast = resolve_save_dtype(dtype)
    layout = layout or detect_layout(pipe)
    ldm = pipeline_to_ldm(pipe, layout)
    tensors = {}
    for k, t in ldm.items():
        t = t.detach()
        if cast is not None and t.is_floating_point():
            t = t.to(cast)
        tensors[k] = t.to("cpu").contiguous()
    meta = export_metadata("single-file", layout=layout, edits=[record] if record else [])
    header = {
        "format": "pt",
        "erasekit_applied_edits": json.dumps(Edit.applied(pipe)),
        "erasekit_export": json.dumps(meta, sort_keys=True),
    }
    return save_safetensors(tensors, path, header)


def write(edit, pipe, path, *, save_dtype=None, layout: str | None = None, progress: bool = False) -> ExportResult:
    """``pipe`` with ``edit`` (None: as it is) baked in, as one single-file checkpoint; the layout is checked first."""
    layout = layout or detect_layout(pipe)
    if layout not in LAYOUTS:
        raise ModelError(f"unknown single-file layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    _check_pipeline(pipe, layout)  # refuse before applying anything
    from ..models.sites_only import refuse_sites_only

    refuse_sites_only(getattr(pipe, "unet", None), "a single-file export")  # the layouts are the UNets'
    record = edit_record(edit) if edit is not None else None
    with baked(edit, pipe):
        out = export_single_file(pipe, path, save_dtype, layout=layout, record=record)
    return ExportResult(out, f"single-file ({layout})", path_size(out))


register_format(
    ExportFormat(
        name="single-file",
        kind="model",
        write=write,
        options=("save_dtype", "layout"),
        help="the whole model, edit baked in, one .safetensors "
        "(A1111, ComfyUI, Forge, from_single_file; SD 1.x/2.x/XL)",
    )
)
