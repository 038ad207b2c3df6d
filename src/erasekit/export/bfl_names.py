"""FLUX.1's original (Black Forest Labs) checkpoint layout: where each diffusers transformer tensor lives in it.

BFL's ``flux1-dev.safetensors`` / ``flux1-schnell.safetensors`` (and ComfyUI's "Load Diffusion Model" files) name
the transformer as the reference code ``flux/model.py`` builds it, with fused projections:

================================================  ==============================================================
diffusers ``FluxTransformer2DModel``              BFL key (rows: slice of the fused tensor; D = width, M = 4 D)
================================================  ==============================================================
``x_embedder``                                    ``img_in``
``context_embedder``                              ``txt_in``
``time_text_embed.timestep_embedder.linear_1/2``  ``time_in.in_layer`` / ``time_in.out_layer``
``time_text_embed.text_embedder.linear_1/2``      ``vector_in.in_layer`` / ``vector_in.out_layer``
``time_text_embed.guidance_embedder.linear_1/2``  ``guidance_in.in_layer`` / ``guidance_in.out_layer`` (dev only)
``transformer_blocks.N.attn.to_q / to_k / to_v``  ``double_blocks.N.img_attn.qkv`` rows [0, D) / [D, 2D) / [2D, 3D)
``transformer_blocks.N.attn.add_{q,k,v}_proj``    ``double_blocks.N.txt_attn.qkv`` rows likewise
``….attn.norm_q / norm_k`` (``.weight``)          ``….img_attn.norm.query_norm / key_norm`` (``.scale``)
``….attn.norm_added_q / norm_added_k``            ``….txt_attn.norm.query_norm / key_norm`` (``.scale``)
``….attn.to_out.0`` / ``….attn.to_add_out``       ``….img_attn.proj`` / ``….txt_attn.proj``
``….norm1.linear`` / ``….norm1_context.linear``   ``….img_mod.lin`` / ``….txt_mod.lin``
``….ff.net.0.proj`` / ``….ff.net.2``              ``….img_mlp.0`` / ``….img_mlp.2`` (``ff_context``: ``txt_mlp``)
``single_transformer_blocks.N.attn.to_q/k/v``     ``single_blocks.N.linear1`` rows [0, D) / [D, 2D) / [2D, 3D)
``single_transformer_blocks.N.proj_mlp``          ``single_blocks.N.linear1`` rows [3D, 3D + M)
``single_transformer_blocks.N.norm.linear``       ``single_blocks.N.modulation.lin``
``single_transformer_blocks.N.proj_out``          ``single_blocks.N.linear2``
``single_transformer_blocks.N.attn.norm_q/k``     ``single_blocks.N.norm.query_norm / key_norm`` (``.scale``)
``proj_out``                                      ``final_layer.linear``
``norm_out.linear``                               ``final_layer.adaLN_modulation.1``, its halves swapped
================================================  ==============================================================

The last row: BFL's final AdaLN splits its projection into (shift, scale), diffusers' ``AdaLayerNormContinuous``
into (scale, shift), so diffusers rows [0, D) are BFL rows [D, 2D) and back. Read from diffusers' own converter
(``single_file_utils.convert_flux_transformer_checkpoint_to_diffusers``) and ComfyUI's ``comfy/utils.py``
``flux_to_diffusers``, which agree on every row above; the tests check this table against both.

A diffusers tensor maps to one or more :class:`Segment` s (rows of one BFL tensor); the whole layout is built from
the transformer's own state dict (its shapes give D and M), and a tensor the table does not name is refused, so a
FLUX variant with other modules is never written half-named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ._common import ExportError


@dataclass(frozen=True)
class Segment:
    """Rows ``[src, src + rows)`` of a diffusers tensor are rows ``[dst, dst + rows)`` of BFL tensor ``key``."""

    key: str
    dst: int
    src: int
    rows: int


# diffusers suffix inside a double block -> (BFL suffix, q/k/v slot or None for a whole tensor)
_DOUBLE = {
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", None),
    "attn.to_add_out": ("txt_attn.proj", None),
    "norm1.linear": ("img_mod.lin", None),
    "norm1_context.linear": ("txt_mod.lin", None),
    "ff.net.0.proj": ("img_mlp.0", None),
    "ff.net.2": ("img_mlp.2", None),
    "ff_context.net.0.proj": ("txt_mlp.0", None),
    "ff_context.net.2": ("txt_mlp.2", None),
}
_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_SINGLE = {
    "norm.linear": ("modulation.lin", None),
    "proj_out": ("linear2", None),
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),  # rows [3D, 3D + M)
}
_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "proj_out": "final_layer.linear",
}
_SWAPPED = ("norm_out.linear", "final_layer.adaLN_modulation.1")  # (scale, shift) in diffusers, (shift, scale) in BFL
_BLOCK = re.compile(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)")


@dataclass(frozen=True)
class FluxLayout:
    """Every diffusers tensor of one FLUX transformer -> its segments in the BFL layout, and each BFL tensor's rows."""

    segments: Mapping[str, tuple[Segment, ...]]  # diffusers key (``….weight`` / ``….bias``) -> segments
    heights: Mapping[str, int]  # BFL key -> its row count (fused tensors: the sum of their parts)

    def module(self, path: str) -> tuple[Segment, ...]:
        """The segments of the Linear at ``path`` (its ``.weight``)."""
        key = f"{path}.weight"
        if key not in self.segments:
            raise ExportError(f"module {path!r} has no name in FLUX.1's original (BFL) layout")
        return self.segments[key]


def _fused_rows(slot: int, width: int) -> tuple[int, int]:
    """(first row, row count) of q / k / v slot ``slot`` (0..2) in a fused projection of width D (3: the MLP's)."""
    return slot * width, width


def flux_layout(shapes: Mapping[str, tuple[int, ...]]) -> FluxLayout:
    """The BFL layout of a FLUX transformer whose state dict has these tensor shapes (D, M read from them).

    ``shapes`` may be part of a state dict (an edit's layers) when none of them sits in a fused tensor; a fused
    one needs ``context_embedder.weight`` among them for the width D (and the heights are then those of the parts
    given: pass the whole state dict to know a fused tensor's full height).
    """
    emb = shapes.get("context_embedder.weight")
    width = int(emb[0]) if emb is not None else None  # D: the model width (context_embedder's output)
    segs: dict[str, tuple[Segment, ...]] = {}
    unnamed = []
    for key, shape in shapes.items():
        path, _, leaf = key.rpartition(".")
        rows = int(shape[0]) if len(shape) else 1
        whole: str | None = None
        slot: int | None = None
        if path in _TOP:
            whole = f"{_TOP[path]}.{leaf}"
        elif path == _SWAPPED[0]:
            half = rows // 2  # diffusers (scale, shift) -> BFL (shift, scale)
            segs[key] = (
                Segment(f"{_SWAPPED[1]}.{leaf}", half, 0, half),
                Segment(f"{_SWAPPED[1]}.{leaf}", 0, half, half),
            )
            continue
        elif m := _BLOCK.fullmatch(key):
            kind, n, rest = m.groups()
            double = kind == "transformer_blocks"
            prefix = f"{'double' if double else 'single'}_blocks.{n}"
            norms = _DOUBLE_NORMS if double else _SINGLE_NORMS
            table = _DOUBLE if double else _SINGLE
            sub = rest.rpartition(".")[0]
            if rest in norms:
                whole = f"{prefix}.{norms[rest]}"
            elif sub in table:
                name, slot = table[sub]
                whole = f"{prefix}.{name}.{leaf}"
        if whole is None:
            unnamed.append(key)
            continue
        if slot is None:
            segs[key] = (Segment(whole, 0, 0, rows),)
        else:
            if width is None:
                raise ExportError(f"{key} sits in a fused BFL tensor; its rows need the whole transformer (pipe=...)")
            first, n_rows = _fused_rows(slot, width)
            if slot < 3 and rows != n_rows:
                raise ExportError(f"{key}: {rows} rows, not the model width {width}; not a FLUX.1 q/k/v projection")
            segs[key] = (Segment(whole, first, 0, rows),)
    if unnamed:
        raise ExportError(
            f"this FLUX transformer has tensors with no name in BFL's layout ({', '.join(sorted(unnamed)[:3])}); "
            "export it as 'diffusers' or 'lora'"
        )
    heights: dict[str, int] = {}
    for parts in segs.values():
        for s in parts:
            heights[s.key] = max(heights.get(s.key, 0), s.dst + s.rows)
    return FluxLayout(segs, heights)


def is_fused(path: str) -> bool:
    """Whether the Linear at ``path`` is a slice of a fused BFL tensor (q / k / v, a single block's MLP input)."""
    m = _BLOCK.fullmatch(f"{path}.weight")
    if m is None:
        return False
    table = _DOUBLE if m.group(1) == "transformer_blocks" else _SINGLE
    entry = table.get(m.group(3).rpartition(".")[0])
    return entry is not None and entry[1] is not None


def layout_of(transformer: torch.nn.Module) -> FluxLayout:
    return flux_layout({k: tuple(v.shape) for k, v in transformer.state_dict().items()})


def to_bfl(state: Mapping[str, torch.Tensor], layout: FluxLayout) -> dict[str, torch.Tensor]:
    """The transformer's tensors in BFL's layout (fused tensors assembled row by row; the rest shared, not copied)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, list[tuple[Segment, torch.Tensor]]] = {}
    for key, t in state.items():
        for s in layout.segments[key]:
            if (
                s.dst == 0
                and s.src == 0
                and s.rows == layout.heights[s.key]
                and s.rows == (t.shape[0] if t.ndim else 1)
            ):
                out[s.key] = t
            else:
                parts.setdefault(s.key, []).append((s, t))
    for key, pieces in parts.items():
        s0, t0 = pieces[0]
        fused = torch.empty((layout.heights[key], *t0.shape[1:]), dtype=t0.dtype, device=t0.device)
        filled = 0
        for s, t in pieces:
            fused[s.dst : s.dst + s.rows] = t[s.src : s.src + s.rows]
            filled += s.rows
        if filled != layout.heights[key]:
            raise ExportError(f"BFL tensor {key!r}: only {filled} of its {layout.heights[key]} rows are known")
        out[key] = fused
    return out
