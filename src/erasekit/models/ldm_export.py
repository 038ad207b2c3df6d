"""Export a diffusers SD 1.x pipeline as one single-file checkpoint (the "original LDM" layout).

A1111, ComfyUI, Forge and diffusers' own ``from_single_file`` read Stable Diffusion as a single
``.safetensors`` file whose keys follow the original latent-diffusion code::

    model.diffusion_model.*            the UNet      (input_blocks / middle_block / output_blocks)
    first_stage_model.*                the VAE       (encoder.down / mid / decoder.up)
    cond_stage_model.transformer.*     the CLIP text encoder (transformers' own names)

:func:`export_single_file` writes a pipeline (typically one with an erasekit edit applied) in that
layout. It is the exact inverse of what diffusers does on load (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint`` in
``diffusers/loaders/single_file_utils.py``): every tensor is renamed, never changed, except the VAE
mid-block attention weights, which the original layout stores as 1×1 convolutions. Block indices are
derived from the pipeline's own config (``layers_per_block``, block count, which blocks have
attention), so non-standard but expressible SD 1.x shapes export correctly; layouts the original
format cannot express (SDXL, SD 2.x's OpenCLIP text encoder, per-block ``layers_per_block``,
class / addition embeddings ...) are refused with an error that names the problem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .._atomic import atomic_path
from ..errors import ModelError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# UNet tensors outside the down / mid / up blocks.
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# ResnetBlock2D sub-module names, diffusers -> original (UNet).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# VAE tensors outside the blocks.
_VAE_TOP = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_norm_out": "encoder.norm_out",
    "encoder.conv_out": "encoder.conv_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_norm_out": "decoder.norm_out",
    "decoder.conv_out": "decoder.conv_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
# VAE mid-block attention, diffusers -> original (weights become 1x1 convolutions).
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

_UNET_DOWN = {"DownBlock2D", "CrossAttnDownBlock2D"}
_UNET_UP = {"UpBlock2D", "CrossAttnUpBlock2D"}


def _split(key: str, n: int) -> tuple[list[str], str]:
    """The first ``n`` dot-separated parts of ``key`` and the rest."""
    parts = key.split(".")
    return parts[:n], ".".join(parts[n:])


def _resnet_rest(rest: str, table: dict[str, str], where: str) -> str:
    module, _, leaf = rest.rpartition(".")
    if module not in table:
        raise ModelError(f"cannot export {where}: resnet tensor {rest!r} has no counterpart in the original LDM layout")
    return f"{table[module]}.{leaf}"


# ------------------------------------------------------------------- checks
def _check_pipeline(pipe) -> None:
    name = type(pipe).__name__
    for comp in ("unet", "vae", "text_encoder"):
        if getattr(pipe, comp, None) is None:
            raise ModelError(f"cannot export {name} to a single file: it has no {comp}")
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise ModelError(f"cannot export {name}: SDXL single files (conditioner.embedders.*) are not supported; export SD 1.x pipelines")
    kinds = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel"}
    for comp, cls in kinds.items():
        got = type(getattr(pipe, comp)).__name__
        if got != cls:
            raise ModelError(f"cannot export {name}: its {comp} is a {got}, the SD 1.x single-file layout needs a {cls}")
    c = pipe.unet.config
    problems = []
    if not isinstance(c.layers_per_block, int):
        problems.append(f"per-block layers_per_block {tuple(c.layers_per_block)} (the original layout has one value for all blocks)")
    if c.use_linear_projection:
        problems.append("use_linear_projection=True (an SD 2.x UNet; its single files carry an OpenCLIP text encoder, which this exporter does not write)")
    bad_down = [t for t in c.down_block_types if t not in _UNET_DOWN]
    bad_up = [t for t in c.up_block_types if t not in _UNET_UP]
    if bad_down or bad_up:
        problems.append(f"block types {bad_down + bad_up} (only {sorted(_UNET_DOWN | _UNET_UP)})")
    if c.mid_block_type != "UNetMidBlock2DCrossAttn":
        problems.append(f"mid_block_type {c.mid_block_type!r} (only UNetMidBlock2DCrossAttn)")
    for opt in ("class_embed_type", "addition_embed_type", "num_class_embeds", "time_cond_proj_dim", "encoder_hid_dim"):
        if c.get(opt) is not None:
            problems.append(f"{opt}={c.get(opt)!r}")
    vc = pipe.vae.config
    if any(t != "DownEncoderBlock2D" for t in vc.down_block_types) or any(t != "UpDecoderBlock2D" for t in vc.up_block_types):
        problems.append(f"VAE block types {list(vc.down_block_types)} / {list(vc.up_block_types)}")
    if problems:
        raise ModelError(f"cannot export {name} to the original LDM single-file layout: " + "; ".join(problems))


# --------------------------------------------------------------- converters
def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Rename a ``UNet2DConditionModel`` state dict to the original ``model.diffusion_model.*`` keys."""
    per = config.layers_per_block + 1  # LDM input_blocks per down block: the resnets (+attention), then the downsampler
    up_has_attn = {i: t.startswith("CrossAttn") for i, t in enumerate(config.up_block_types)}
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        module, _, leaf = key.rpartition(".")
        if module in _UNET_TOP:
            new = f"{_UNET_TOP[module]}.{leaf}"
        elif key.startswith("down_blocks."):
            (_, i, kind, j), rest = _split(key, 4)
            i, j = int(i), int(j)
            if kind == "resnets":
                new = f"input_blocks.{1 + i * per + j}.0.{_resnet_rest(rest, _UNET_RESNET, key)}"
            elif kind == "attentions":
                new = f"input_blocks.{1 + i * per + j}.1.{rest}"
            elif kind == "downsamplers" and j == 0 and rest.startswith("conv."):
                new = f"input_blocks.{(i + 1) * per}.0.op.{rest[len('conv.'):]}"
            else:
                raise ModelError(f"cannot export UNet tensor {key!r}: no counterpart in the original LDM layout")
        elif key.startswith("mid_block."):
            (_, kind, j), rest = _split(key, 3)
            j = int(j)
            if kind == "resnets" and j in (0, 1):
                new = f"middle_block.{2 * j}.{_resnet_rest(rest, _UNET_RESNET, key)}"
            elif kind == "attentions" and j == 0:
                new = f"middle_block.1.{rest}"
            else:
                raise ModelError(f"cannot export UNet tensor {key!r}: the original mid block is resnet, attention, resnet")
        elif key.startswith("up_blocks."):
            (_, i, kind, j), rest = _split(key, 4)
            i, j = int(i), int(j)
            if kind == "resnets":
                new = f"output_blocks.{i * per + j}.0.{_resnet_rest(rest, _UNET_RESNET, key)}"
            elif kind == "attentions":
                new = f"output_blocks.{i * per + j}.1.{rest}"
            elif kind == "upsamplers" and j == 0 and rest.startswith("conv."):
                # the upsampler follows the block's last resnet (and its attention, when there is one)
                new = f"output_blocks.{i * per + per - 1}.{2 if up_has_attn[i] else 1}.{rest}"
            else:
                raise ModelError(f"cannot export UNet tensor {key!r}: no counterpart in the original LDM layout")
        else:
            raise ModelError(f"cannot export UNet tensor {key!r}: no counterpart in the original LDM layout")
        out[UNET_PREFIX + new] = t
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Rename an ``AutoencoderKL`` state dict to the original ``first_stage_model.*`` keys."""
    n_up = len(config.up_block_types)
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        module, _, leaf = key.rpartition(".")
        if module in _VAE_TOP:
            new = f"{_VAE_TOP[module]}.{leaf}"
        elif key.startswith("encoder.down_blocks."):
            (_, _, i, kind, j), rest = _split(key, 5)
            if kind == "resnets":
                new = f"encoder.down.{i}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            elif kind == "downsamplers" and j == "0":
                new = f"encoder.down.{i}.downsample.{rest}"
            else:
                raise ModelError(f"cannot export VAE tensor {key!r}: no counterpart in the original LDM layout")
        elif key.startswith("decoder.up_blocks."):
            (_, _, i, kind, j), rest = _split(key, 5)
            block = n_up - 1 - int(i)  # the original decoder numbers its up blocks from the lowest resolution
            if kind == "resnets":
                new = f"decoder.up.{block}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            elif kind == "upsamplers" and j == "0":
                new = f"decoder.up.{block}.upsample.{rest}"
            else:
                raise ModelError(f"cannot export VAE tensor {key!r}: no counterpart in the original LDM layout")
        elif ".mid_block." in key:
            (part, _, kind, j), rest = _split(key, 4)
            if kind == "resnets":
                new = f"{part}.mid.block_{int(j) + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            elif kind == "attentions" and j == "0":
                module, _, leaf = rest.rpartition(".")
                if module not in _VAE_ATTN:
                    raise ModelError(f"cannot export VAE tensor {key!r}: no counterpart in the original LDM layout")
                new = f"{part}.mid.attn_1.{_VAE_ATTN[module]}.{leaf}"
                if leaf == "weight" and module != "group_norm":
                    t = t.reshape(*t.shape, 1, 1)  # Linear (out, in) -> Conv2d 1x1 (out, in, 1, 1)
            else:
                raise ModelError(f"cannot export VAE tensor {key!r}: no counterpart in the original LDM layout")
        else:
            raise ModelError(f"cannot export VAE tensor {key!r}: no counterpart in the original LDM layout")
        out[VAE_PREFIX + new] = t
    return out


def clip_to_ldm(state: dict[str, torch.Tensor], max_positions: int) -> dict[str, torch.Tensor]:
    """Prefix a ``CLIPTextModel`` state dict with ``cond_stage_model.transformer.text_model.``.

    transformers >= 5.6 flattened ``CLIPTextModel`` (no ``text_model.`` level); both forms are accepted.
    ``embeddings.position_ids`` (a non-persistent buffer in recent transformers) is written as in
    the original checkpoints, for loaders that expect it.
    """
    out = {CLIP_PREFIX + "text_model." + k.removeprefix("text_model."): t for k, t in state.items()}
    pos = CLIP_PREFIX + "text_model.embeddings.position_ids"
    out.setdefault(pos, torch.arange(max_positions, dtype=torch.int64).unsqueeze(0))
    return out


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline's weights in the original LDM single-file layout (tensors are shared, not copied)."""
    _check_pipeline(pipe)
    unet_sd, vae_sd, te_sd = pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict()
    ldm = {
        **unet_to_ldm(unet_sd, pipe.unet.config),
        **vae_to_ldm(vae_sd, pipe.vae.config),
        **clip_to_ldm(te_sd, pipe.text_encoder.config.max_position_embeddings),
    }
    _self_check(ldm, pipe, unet_sd, vae_sd, te_sd)
    return ldm


def _self_check(ldm, pipe, unet_sd, vae_sd, te_sd) -> None:
    """Run diffusers' own loader conversion on the result: it must give back exactly the pipeline's keys and shapes."""
    try:
        from diffusers.loaders.single_file_utils import (
            convert_ldm_clip_checkpoint,
            convert_ldm_unet_checkpoint,
            convert_ldm_vae_checkpoint,
        )
    except ImportError:  # a diffusers without these helpers: the renaming above still stands
        return
    back = {
        "UNet": (convert_ldm_unet_checkpoint(ldm, pipe.unet.config), unet_sd),
        "VAE": (convert_ldm_vae_checkpoint(ldm, pipe.vae.config), vae_sd),
        "text encoder": ({k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ldm).items()},
                         {k.removeprefix("text_model."): v for k, v in te_sd.items()}),
    }
    for comp, (got, want) in back.items():
        got = {k: v for k, v in got.items() if v is not None and k != "embeddings.position_ids"}
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        shapes = [k for k in set(want) & set(got) if tuple(got[k].shape) != tuple(want[k].shape)]
        if missing or extra or shapes:
            raise ModelError(
                f"cannot export this {comp} layout to a single file: diffusers would not read it back "
                f"(missing {missing[:3]}, unexpected {extra[:3]}, shape mismatch {shapes[:3]})"
            )


def export_single_file(pipe, path: str | os.PathLike, dtype: str | torch.dtype | None = None) -> Path:
    """Write ``pipe`` (an SD 1.x ``StableDiffusionPipeline``) as one A1111 / ComfyUI ``.safetensors`` checkpoint.

    The file holds the UNet, VAE and CLIP text encoder in the original LDM key layout, so it loads
    in A1111, ComfyUI, Forge, or diffusers' ``StableDiffusionPipeline.from_single_file`` /
    ``erasekit.load_pipeline(path, config=<diffusers folder>)``. Edits applied to ``pipe`` are baked
    in: export after ``edit.apply(pipe)`` to ship an erased model to tools that know nothing of
    erasekit (the applied edits are listed in the file's metadata under ``erasekit_applied_edits``).

    Only weights travel. The scheduler, tokenizer and the VAE ``scaling_factor`` come from whatever
    config the loader uses (the SD 1.x defaults in A1111 / ComfyUI, 0.18215; the ``config=`` folder
    in diffusers), so a pipeline with a non-standard VAE scaling factor or scheduler needs that config.

    ``dtype`` (``"float16"``, ``"bfloat16"``, ``"float32"``; default: as the pipeline) casts
    floating-point tensors. The file is written atomically (temp file + rename). Layouts the original
    format cannot express raise :class:`~erasekit.errors.ModelError` and write nothing.
    """
    from safetensors.torch import save_file

    from ..edit import Edit
    from .loading import resolve_dtype

    ldm = pipeline_to_ldm(pipe)
    cast = None if dtype is None else resolve_dtype(dtype)
    tensors = {}
    for k, t in ldm.items():
        t = t.detach()
        if cast is not None and t.is_floating_point():
            t = t.to(cast)
        tensors[k] = t.to("cpu").contiguous()
    meta = {"format": "pt", "erasekit_applied_edits": json.dumps(Edit.applied(pipe))}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path
