"""SD3 / SD3.5's original (Stability AI "MMDiT") checkpoint layout: where each diffusers transformer tensor lives.

Stability's ``sd3.5_medium.safetensors`` / ``sd3_medium.safetensors`` name the transformer under
``model.diffusion_model.`` as the reference ``mmdit.py`` builds it, with fused projections:

===============================================  ================================================================
diffusers ``SD3Transformer2DModel``              original key (under ``model.diffusion_model.``)
===============================================  ================================================================
``pos_embed.pos_embed`` / ``pos_embed.proj``     ``pos_embed`` / ``x_embedder.proj``
``time_text_embed.timestep_embedder.linear_1/2``  ``t_embedder.mlp.0`` / ``t_embedder.mlp.2``
``time_text_embed.text_embedder.linear_1/2``     ``y_embedder.mlp.0`` / ``y_embedder.mlp.2``
``context_embedder``                             ``context_embedder``
``transformer_blocks.N.attn.to_q / to_k / to_v``  ``joint_blocks.N.x_block.attn.qkv`` rows [0, D) / [D, 2D) / [2D, 3D)
``….attn.add_q_proj / add_k_proj / add_v_proj``  ``joint_blocks.N.context_block.attn.qkv`` rows likewise
``….attn.norm_q / norm_k``                       ``….x_block.attn.ln_q / ln_k`` (``norm_added_*``: context_block)
``….attn.to_out.0`` / ``….attn.to_add_out``      ``….x_block.attn.proj`` / ``….context_block.attn.proj``
``….attn2.to_q / to_k / to_v`` (SD3.5-M)         ``….x_block.attn2.qkv`` rows likewise (``to_out.0``: ``attn2.proj``)
``….norm1.linear`` / ``….norm1_context.linear``  ``….x_block.adaLN_modulation.1`` / ``….context_block.…`` (same)
``….ff.net.0.proj`` / ``….ff.net.2``             ``….x_block.mlp.fc1`` / ``fc2`` (``ff_context``: ``context_block``)
``proj_out`` / ``norm_out.linear``               ``final_layer.linear`` / ``final_layer.adaLN_modulation.1``
===============================================  ================================================================

Swapped halves: ``norm_out.linear`` and the last block's ``norm1_context.linear`` (its context stream ends there,
an ``AdaLayerNormContinuous``) are (scale, shift) in diffusers and (shift, scale) in the original. Read from diffusers'
``single_file_utils.convert_sd3_transformer_checkpoint_to_diffusers`` and ComfyUI's ``comfy/utils.py``
``mmdit_to_diffusers`` (which agree; ComfyUI's older map has no ``ln_q`` / ``attn2`` rows); diffusers' converter
reads it back at any width (checked in the tests through ``from_single_file``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .bfl_names import Layout, Place, make_layout

PREFIX = "model.diffusion_model."
_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
}
_BLOCK = {  # diffusers suffix in a joint block -> (original suffix, q/k/v slot or None)
    "attn.to_q": ("x_block.attn.qkv", 0),
    "attn.to_k": ("x_block.attn.qkv", 1),
    "attn.to_v": ("x_block.attn.qkv", 2),
    "attn.add_q_proj": ("context_block.attn.qkv", 0),
    "attn.add_k_proj": ("context_block.attn.qkv", 1),
    "attn.add_v_proj": ("context_block.attn.qkv", 2),
    "attn.to_out.0": ("x_block.attn.proj", None),
    "attn.to_add_out": ("context_block.attn.proj", None),
    "attn2.to_q": ("x_block.attn2.qkv", 0),
    "attn2.to_k": ("x_block.attn2.qkv", 1),
    "attn2.to_v": ("x_block.attn2.qkv", 2),
    "attn2.to_out.0": ("x_block.attn2.proj", None),
    "norm1.linear": ("x_block.adaLN_modulation.1", None),
    "norm1_context.linear": ("context_block.adaLN_modulation.1", None),
    "ff.net.0.proj": ("x_block.mlp.fc1", None),
    "ff.net.2": ("x_block.mlp.fc2", None),
    "ff_context.net.0.proj": ("context_block.mlp.fc1", None),
    "ff_context.net.2": ("context_block.mlp.fc2", None),
}
_NORMS = {
    "attn.norm_q.weight": "x_block.attn.ln_q.weight",
    "attn.norm_k.weight": "x_block.attn.ln_k.weight",
    "attn.norm_added_q.weight": "context_block.attn.ln_q.weight",
    "attn.norm_added_k.weight": "context_block.attn.ln_k.weight",
    "attn2.norm_q.weight": "x_block.attn2.ln_q.weight",
    "attn2.norm_k.weight": "x_block.attn2.ln_k.weight",
}
_BLOCK_RX = re.compile(r"transformer_blocks\.(\d+)\.(.+)")


def sd3_layout(shapes: Mapping[str, tuple[int, ...]]) -> Layout:
    """The original layout of an SD3 / SD3.5 transformer with this whole state dict's shapes (D =
    ``context_embedder``'s output; the last joint block is the one with the highest index)."""
    emb = shapes.get("context_embedder.weight")
    blocks = [int(m.group(1)) for k in shapes if (m := _BLOCK_RX.fullmatch(k))]
    last = max(blocks, default=-1)

    def place(key: str) -> Place | None:
        path, _, leaf = key.rpartition(".")
        if key == "pos_embed.pos_embed":
            return Place(PREFIX + "pos_embed")
        if path in _TOP:
            return Place(f"{PREFIX}{_TOP[path]}.{leaf}")
        if path == "norm_out.linear":
            return Place(f"{PREFIX}final_layer.adaLN_modulation.1.{leaf}", swapped=True)
        m = _BLOCK_RX.fullmatch(key)
        if m is None:
            return None
        n, rest = int(m.group(1)), m.group(2)
        prefix = f"{PREFIX}joint_blocks.{n}"
        if rest in _NORMS:
            return Place(f"{prefix}.{_NORMS[rest]}")
        sub = rest.rpartition(".")[0]
        if sub not in _BLOCK:
            return None
        name, slot = _BLOCK[sub]
        swapped = sub == "norm1_context.linear" and n == last  # the context stream's final AdaLN
        return Place(f"{prefix}.{name}.{leaf}", slot, swapped)

    return make_layout(shapes, place, int(emb[0]) if emb is not None else None, "SD3 (MMDiT)")


def sd3_layout_of(transformer: torch.nn.Module) -> Layout:
    return sd3_layout({k: tuple(v.shape) for k, v in transformer.state_dict().items()})
