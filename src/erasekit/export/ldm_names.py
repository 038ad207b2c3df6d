"""diffusers → original LDM / SGM key names (the single-file layout A1111, ComfyUI and Forge read).

Every function here is the exact inverse of what diffusers does on load
(``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint`` in ``diffusers/loaders/single_file_utils.py``): tensors are renamed,
never changed, except where the original layout stores them differently (the VAE mid-block
attention as 1×1 convolutions; OpenCLIP's fused ``in_proj`` and transposed ``text_projection``).
Block indices come from the pipeline's own config, so any layout the original code can express
converts, and the rest is refused with a :class:`~erasekit.errors.ModelError` naming the tensor.

    model.diffusion_model.*                  UNet   (input_blocks / middle_block / output_blocks)
    first_stage_model.*                      VAE    (encoder.down / mid / decoder.up)
    cond_stage_model.transformer.*           SD 1.x text encoder (OpenAI CLIP, transformers names)
    cond_stage_model.model.*                 SD 2.x text encoder (OpenCLIP layout)
    conditioner.embedders.0.transformer.*    SDXL text encoder 1 (OpenAI CLIP)
    conditioner.embedders.1.model.*          SDXL text encoder 2 (OpenCLIP bigG)
"""

from __future__ import annotations

import torch

from ..errors import ModelError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

# UNet tensors outside the down / mid / up blocks (label_emb: SDXL's added-conditioning MLP).
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
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
# OpenCLIP residual-block sub-modules, transformers -> open_clip (q/k/v are fused separately).
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def _split(key: str, n: int) -> tuple[list[str], str]:
    """The first ``n`` dot-separated parts of ``key`` and the rest."""
    parts = key.split(".")
    return parts[:n], ".".join(parts[n:])


def _resnet_rest(rest: str, table: dict[str, str], where: str) -> str:
    module, _, leaf = rest.rpartition(".")
    if module not in table:
        raise ModelError(f"cannot export {where}: resnet tensor {rest!r} has no counterpart in the original LDM layout")
    return f"{table[module]}.{leaf}"


def _no_counterpart(what: str, key: str) -> ModelError:
    return ModelError(f"cannot export {what} tensor {key!r}: no counterpart in the original LDM layout")


# --------------------------------------------------------------------- UNet
def unet_key_to_ldm(key: str, config) -> str:
    """One ``UNet2DConditionModel`` state-dict key (or module path + leaf) in the original layout, unprefixed."""
    per = config.layers_per_block + 1  # LDM input_blocks per down block: the resnets (+attention), then the downsampler
    module, _, leaf = key.rpartition(".")
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{leaf}"
    if key.startswith("down_blocks."):
        (_, si, kind, sj), rest = _split(key, 4)
        i, j = int(si), int(sj)
        if kind == "resnets":
            return f"input_blocks.{1 + i * per + j}.0.{_resnet_rest(rest, _UNET_RESNET, key)}"
        if kind == "attentions":
            return f"input_blocks.{1 + i * per + j}.1.{rest}"
        if kind == "downsamplers" and j == 0 and rest.startswith("conv."):
            return f"input_blocks.{(i + 1) * per}.0.op.{rest[len('conv.') :]}"
    elif key.startswith("mid_block."):
        (_, kind, sj), rest = _split(key, 3)
        j = int(sj)
        if kind == "resnets" and j in (0, 1):
            return f"middle_block.{2 * j}.{_resnet_rest(rest, _UNET_RESNET, key)}"
        if kind == "attentions" and j == 0:
            return f"middle_block.1.{rest}"
        raise ModelError(f"cannot export UNet tensor {key!r}: the original mid block is resnet, attention, resnet")
    elif key.startswith("up_blocks."):
        (_, si, kind, sj), rest = _split(key, 4)
        i, j = int(si), int(sj)
        if kind == "resnets":
            return f"output_blocks.{i * per + j}.0.{_resnet_rest(rest, _UNET_RESNET, key)}"
        if kind == "attentions":
            return f"output_blocks.{i * per + j}.1.{rest}"
        if kind == "upsamplers" and j == 0 and rest.startswith("conv."):
            # the upsampler follows the block's last resnet (and its attention, when there is one)
            has_attn = config.up_block_types[i].startswith("CrossAttn")
            return f"output_blocks.{i * per + per - 1}.{2 if has_attn else 1}.{rest}"
    raise _no_counterpart("UNet", key)


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Rename a ``UNet2DConditionModel`` state dict to the original ``model.diffusion_model.*`` keys."""
    return {UNET_PREFIX + unet_key_to_ldm(k, config): t for k, t in state.items()}


# ---------------------------------------------------------------------- VAE
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
                raise _no_counterpart("VAE", key)
        elif key.startswith("decoder.up_blocks."):
            (_, _, i, kind, j), rest = _split(key, 5)
            block = n_up - 1 - int(i)  # the original decoder numbers its up blocks from the lowest resolution
            if kind == "resnets":
                new = f"decoder.up.{block}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            elif kind == "upsamplers" and j == "0":
                new = f"decoder.up.{block}.upsample.{rest}"
            else:
                raise _no_counterpart("VAE", key)
        elif ".mid_block." in key:
            (part, _, kind, j), rest = _split(key, 4)
            if kind == "resnets":
                new = f"{part}.mid.block_{int(j) + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            elif kind == "attentions" and j == "0":
                module, _, leaf = rest.rpartition(".")
                if module not in _VAE_ATTN:
                    raise _no_counterpart("VAE", key)
                new = f"{part}.mid.attn_1.{_VAE_ATTN[module]}.{leaf}"
                if leaf == "weight" and module != "group_norm":
                    t = t.reshape(*t.shape, 1, 1)  # Linear (out, in) -> Conv2d 1x1 (out, in, 1, 1)
            else:
                raise _no_counterpart("VAE", key)
        else:
            raise _no_counterpart("VAE", key)
        out[VAE_PREFIX + new] = t
    return out


# ------------------------------------------------------------ text encoders
def clip_to_ldm(
    state: dict[str, torch.Tensor], max_positions: int, prefix: str = CLIP_PREFIX
) -> dict[str, torch.Tensor]:
    """An OpenAI-CLIP ``CLIPTextModel`` state dict under ``<prefix>text_model.`` (transformers' own names).

    transformers >= 5.6 flattened ``CLIPTextModel`` (no ``text_model.`` level); both forms are accepted.
    ``embeddings.position_ids`` (a non-persistent buffer in recent transformers) is written as in
    the original checkpoints, for loaders that expect it.
    """
    out = {prefix + "text_model." + k.removeprefix("text_model."): t for k, t in state.items()}
    out.setdefault(
        prefix + "text_model.embeddings.position_ids", torch.arange(max_positions, dtype=torch.int64).unsqueeze(0)
    )
    return out


def openclip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` state dict in the OpenCLIP layout under ``prefix``.

    q / k / v projections are fused into ``attn.in_proj_weight`` (3·d, d) and ``in_proj_bias`` in that
    order, and ``text_projection`` is stored transposed (d, proj), exactly as open_clip keeps them.
    """
    state = {k.removeprefix("text_model."): t for k, t in state.items() if not k.endswith("embeddings.position_ids")}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        if key in _OPENCLIP_TOP:
            out[prefix + _OPENCLIP_TOP[key]] = t
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = t.T.contiguous()  # Linear (proj, d) -> open_clip parameter (d, proj)
        elif key.startswith("encoder.layers."):
            (_, _, i), rest = _split(key, 3)
            module, _, leaf = rest.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((int(i), leaf), {})[module[len("self_attn.") :][0]] = t
            elif module in _OPENCLIP_LAYER:
                out[f"{prefix}transformer.resblocks.{i}.{_OPENCLIP_LAYER[module]}.{leaf}"] = t
            else:
                raise ModelError(f"cannot export text-encoder tensor {key!r}: no counterpart in the OpenCLIP layout")
        else:
            raise ModelError(f"cannot export text-encoder tensor {key!r}: no counterpart in the OpenCLIP layout")
    for (n, leaf), parts in sorted(qkv.items()):
        if sorted(parts) != ["k", "q", "v"]:
            raise ModelError(f"cannot export text-encoder layer {n}: q/k/v projections incomplete ({sorted(parts)})")
        out[f"{prefix}transformer.resblocks.{n}.attn.in_proj_{leaf}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out
