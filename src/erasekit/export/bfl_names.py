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
from collections.abc import Callable, Mapping
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
class Layout:
    """Every diffusers tensor of one FLUX transformer -> its segments in the BFL layout, and each BFL tensor's rows."""

    segments: Mapping[str, tuple[Segment, ...]]  # diffusers key (``….weight`` / ``….bias``) -> segments
    heights: Mapping[str, int]  # BFL key -> its row count (fused tensors: the sum of their parts)

    def module(self, path: str) -> tuple[Segment, ...]:
        """The segments of the Linear at ``path`` (its ``.weight``)."""
        key = f"{path}.weight"
        if key not in self.segments:
            raise ExportError(f"module {path!r} has no name in FLUX.1's original (BFL) layout")
        return self.segments[key]


@dataclass(frozen=True)
class Place:
    """Where one diffusers tensor goes in an original layout: tensor ``key``, whole (``slot`` None), q / k / v slot
    0..2 of a fused projection (3: FLUX's single-block MLP rows, after them), or whole with its halves swapped."""

    key: str
    slot: int | None = None
    swapped: bool = False


def make_layout(
    shapes: Mapping[str, tuple[int, ...]], place: Callable[[str], Place | None], width: int | None, model: str
) -> Layout:
    """The layout of a transformer whose state dict has these tensor shapes, ``place`` naming each tensor.

    ``width`` is the model width D (the fused q / k / v slots are D rows each); None when ``shapes`` is only part of
    a state dict (an edit's layers) with no fused tensor among them. The heights of fused tensors are those of the
    parts given: pass the whole state dict to know them.
    """
    segs: dict[str, tuple[Segment, ...]] = {}
    unnamed = []
    for key, shape in shapes.items():
        rows = int(shape[0]) if len(shape) else 1
        where = place(key)
        if where is None:
            unnamed.append(key)
        elif where.swapped:
            half = rows // 2  # diffusers (scale, shift) -> the original's (shift, scale)
            segs[key] = (Segment(where.key, half, 0, half), Segment(where.key, 0, half, half))
        elif where.slot is None:
            segs[key] = (Segment(where.key, 0, 0, rows),)
        else:
            if width is None:
                raise ExportError(
                    f"{key} sits in a fused {model} tensor; its rows need the whole transformer (pipe=...)"
                )
            if where.slot < 3 and rows != width:
                raise ExportError(f"{key}: {rows} rows, not the model width {width}; not a {model} q/k/v projection")
            segs[key] = (Segment(where.key, where.slot * width, 0, rows),)  # slot s: rows [s·D, s·D + rows)
    if unnamed:
        raise ExportError(
            f"this transformer has tensors with no name in {model}'s original layout "
            f"({', '.join(sorted(unnamed)[:3])}); export it as 'diffusers' or 'lora'"
        )
    heights: dict[str, int] = {}
    for parts in segs.values():
        for s in parts:
            heights[s.key] = max(heights.get(s.key, 0), s.dst + s.rows)
    return Layout(segs, heights)


def flux_place(key: str) -> Place | None:
    """The BFL place of diffusers FLUX tensor ``key`` (None: it has none)."""
    path, _, leaf = key.rpartition(".")
    if path in _TOP:
        return Place(f"{_TOP[path]}.{leaf}")
    if path == _SWAPPED[0]:
        return Place(f"{_SWAPPED[1]}.{leaf}", swapped=True)
    m = _BLOCK.fullmatch(key)
    if m is None:
        return None
    kind, n, rest = m.groups()
    double = kind == "transformer_blocks"
    prefix = f"{'double' if double else 'single'}_blocks.{n}"
    norms = _DOUBLE_NORMS if double else _SINGLE_NORMS
    table = _DOUBLE if double else _SINGLE
    if rest in norms:
        return Place(f"{prefix}.{norms[rest]}")
    sub = rest.rpartition(".")[0]
    if sub in table:
        name, slot = table[sub]
        return Place(f"{prefix}.{name}.{leaf}", slot)
    return None


def flux_layout(shapes: Mapping[str, tuple[int, ...]]) -> Layout:
    """The BFL layout of a FLUX transformer whose state dict has these tensor shapes (D = ``context_embedder``'s
    output; a fused tensor needs it among them)."""
    emb = shapes.get("context_embedder.weight")
    return make_layout(shapes, flux_place, int(emb[0]) if emb is not None else None, "FLUX.1 (BFL)")


def is_fused(path: str) -> bool:
    """Whether the Linear at ``path`` is a slice of a fused BFL tensor (q / k / v, a single block's MLP input)."""
    where = flux_place(f"{path}.weight")
    return where is not None and where.slot is not None


def layout_of(transformer: torch.nn.Module) -> Layout:
    return flux_layout({k: tuple(v.shape) for k, v in transformer.state_dict().items()})


def assemble(state: Mapping[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
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
