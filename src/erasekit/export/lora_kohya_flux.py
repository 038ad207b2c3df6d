"""``lora-kohya-flux``: a FLUX.1 edit as a kohya-style LoRA in Black Forest Labs' names (ComfyUI, kohya sd-scripts).

Per BFL tensor ``T`` the edit touches, ``lora_unet_<T with _ for .>.lora_down.weight`` (R, d_in),
``.lora_up.weight`` (rows of T, R) and ``.alpha`` = R, the names kohya sd-scripts' ``networks/lora_flux.py`` writes
(``LORA_PREFIX_FLUX = "lora_unet"``, "make ComfyUI compatible") and ComfyUI's ``comfy/lora.py``
``model_lora_keys_unet`` reads (``lora_unet_`` + the model key with ``_`` for ``.``); both add
(alpha / R) · up · down = up · down to T. The edit's static sites are ``lora_unet_txt_in`` (``context_embedder``)
and ``lora_unet_vector_in_in_layer`` (``time_text_embed.text_embedder.linear_1``); its joint sites
``add_k_proj`` / ``add_v_proj`` are rows [D, 2D) / [2D, 3D) of the fused ``double_blocks.N.txt_attn.qkv``, so both
go into one ``lora_unet_double_blocks_N_txt_attn_qkv``: down = [A_k; A_v] (r_k + r_v, D) and up block-diagonal,
(3D, r_k + r_v) with B_k in rows [D, 2D) × columns [0, r_k), B_v in rows [2D, 3D) × [r_k, r_k + r_v) and zeros
elsewhere, the q block included (kohya's own ``split_qkv`` merge lays out its q / k / v LoRAs the same way). Every
other Linear of the transformer has its name too (:mod:`.bfl_names`), for fine-tuned edits.

What diffusers 0.42's ``FluxPipeline.load_lora_weights`` does with such a file (``lora_state_dict`` →
``_convert_kohya_flux_lora_to_diffusers``, then ``load_lora_adapter(prefix="transformer")``), measured:

* ``double_blocks.N.txt_attn.qkv`` / ``img_attn.qkv``: read correctly. The fused up is split by rows onto
  ``add_q_proj`` / ``add_k_proj`` / ``add_v_proj`` with the whole down copied to each (its block-sparse path when
  the ranks are equal); the q block is an all-zero ``lora_B``, so ``fuse_lora`` adds exactly B_k A_k and B_v A_v.
* ``txt_in`` and ``vector_in.in_layer`` (and every other top-level module: ``img_in``, ``time_in``,
  ``guidance_in``, ``final_layer``): **dropped**. The converter renames them ``context_embedder`` and
  ``time_text_embed.text_embedder.linear_1`` *without* the ``transformer.`` prefix it gives the block keys, and
  ``load_lora_adapter`` keeps only keys starting with ``transformer.``. Nothing is loaded for them: a file with
  only these keys gets no adapter and diffusers' warning "No LoRA keys associated to FluxTransformer2DModel found
  with the prefix='transformer'. This is safe to ignore …"; beside block keys they vanish without a word. A
  static-site edit (every closed-form method's default on FLUX) therefore does nothing in diffusers from this
  file: diffusers users take the ``lora`` export (PEFT keys), which loads exactly.
* ``single_blocks.N.linear1`` (not an edit site; fine-tuned edits only): split at the fixed rows (3072, 3072, 3072,
  12288), so read only at FLUX.1's published width, where it loads exactly.

At FLUX.1's width (``benchmarks/flux_exports_full_width.py``) the fused blocks fuse to ``edit.apply``'s weights
within 3e-8 and the top-level keys leave their weights unmoved, as on the tiny builds (``tests/test_export_flux.py``).
"""

from __future__ import annotations

import torch

from ._common import ExportError, ExportResult, check_output, resolve_save_dtype
from .base import ExportFormat, register_format
from .bfl_names import Layout, flux_layout, is_fused, layout_of
from .lora import family_of, finish, lora_metadata, needs_base_weights
from .lora_import import read_lora_export
from .lowrank import Factors, edit_factors

PREFIX = "lora_unet_"
# The kohya names diffusers' FLUX converter keeps (it prefixes only these with ``transformer.``).
BLOCK_PREFIXES = (PREFIX + "double_blocks_", PREFIX + "single_blocks_")


def kohya_name(bfl_key: str) -> str:
    """``lora_unet_<name>`` of the BFL tensor ``<name>.weight`` (ComfyUI: the model key with ``_`` for ``.``)."""
    return PREFIX + bfl_key.removesuffix(".weight").replace(".", "_")


def needs_pipe(edit, options) -> str | None:
    why = needs_base_weights(edit, options)
    if why is None and any(is_fused(p) for p in edit.layers):
        why = "a fused BFL tensor's rows (q / k / v) come from the transformer"
    return why


def _layout(edit, pipe) -> Layout:
    fam = family_of(edit, pipe)
    if fam.name != "flux":
        raise ExportError(
            f"the BFL names of 'lora-kohya-flux' are FLUX.1's; this edit is for {fam.name} ({fam.description}): "
            "export it as 'lora' (PEFT keys) or 'lora-kohya' (SD 1.x / 2.x / XL)"
        )
    if pipe is not None:
        return layout_of(fam.get_denoiser(pipe))
    return flux_layout({f"{p}.weight": tuple(le.shape) for p, le in edit.layers.items()})


def fuse_factors(
    factors: dict[str, Factors], layout: Layout
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, dict]]:
    """Per BFL tensor: (up, down) of its edited parts, and per layer where its factors sit (key, columns, rows).

    down = [A_1; …; A_n] (Σ r_i, d_in); up (rows of the BFL tensor, Σ r_i) holds B_i's rows at their BFL rows in
    columns [c_i, c_i + r_i) and zeros elsewhere, so up · down = Σ_i (B_i A_i placed at its rows).
    """
    groups: dict[str, list[str]] = {}
    for p, f in factors.items():
        if f.rank == 0:
            continue  # ΔW = 0: nothing to carry (recorded with rank 0)
        keys = {s.key for s in layout.module(p)}
        if len(keys) != 1:
            raise ExportError(f"module {p!r} spans {len(keys)} BFL tensors; a LoRA cannot carry it")
        groups.setdefault(keys.pop(), []).append(p)
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    where: dict[str, dict] = {}
    for key, paths in groups.items():
        d_in = {factors[p].A.shape[1] for p in paths}
        if len(d_in) != 1:
            raise ExportError(f"BFL tensor {key!r}: its edited parts read different widths {sorted(d_in)}")
        down = torch.cat([factors[p].A for p in paths], dim=0)  # (Σ r_i, d_in)
        up = torch.zeros(layout.heights[key], down.shape[0], dtype=down.dtype)  # (rows of T, Σ r_i)
        col = 0
        for p in paths:
            B, r = factors[p].B, factors[p].rank
            rows = []
            for s in layout.module(p):
                up[s.dst : s.dst + s.rows, col : col + r] = B[s.src : s.src + s.rows]  # B_i's rows at T's rows
                rows.append([s.dst, s.src, s.rows])
            where[p] = {"key": kohya_name(key), "cols": [col, r], "rows": rows}
            col += r
        tensors[kohya_name(key)] = (up, down)
    return tensors, where


def write(edit, pipe, path, *, rank: int | None = None, save_dtype=None, progress: bool = False, **_) -> ExportResult:
    """Write ``edit`` (checked against ``pipe`` when given) as a kohya / BFL-named FLUX LoRA."""
    path = check_output(path)
    cast = resolve_save_dtype(save_dtype) or torch.float32
    layout = _layout(edit, pipe)
    for p in edit.layers:
        layout.module(p)  # every edited module has a BFL name, checked before any factoring
    den = None if pipe is None else family_of(edit, pipe).get_denoiser(pipe)
    factors = edit_factors(edit, den, rank, progress)
    fused, where = fuse_factors(factors, layout)
    tensors = {}
    for name, (up, down) in fused.items():
        tensors[f"{name}.lora_down.weight"] = down.to(cast).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.to(cast).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(down.shape[0]), dtype=cast)  # alpha = R: the scale is 1
    keys = {p: where[p]["key"] if p in where else "" for p in factors}
    meta = lora_metadata("lora-kohya-flux", edit, factors, keys, rank, cast)
    for p, w in where.items():
        meta["layers"][p].update(cols=w["cols"], rows=w["rows"])
    header = {
        "ss_network_module": "networks.lora_flux",
        "ss_network_dim": str(max((up.shape[1] for up, _ in fused.values()), default=0)),
        "ss_network_alpha": "per-module (= rank)",
        "ss_base_model_version": "flux1",
    }
    res = finish(tensors, meta, header, path, "lora-kohya-flux", factors)
    dropped = sorted(name for name in fused if not name.startswith(BLOCK_PREFIXES))
    if dropped:  # what a diffusers user would otherwise find out from an unchanged image
        res.notes.append(
            f"diffusers 0.42's load_lora_weights drops {', '.join(dropped)} from this file (ComfyUI and sd-scripts "
            "read them): to run this edit in diffusers, export it as 'lora'"
        )
    return res


register_format(
    ExportFormat(
        name="lora-kohya-flux",
        kind="edit",
        write=write,
        options=("save_dtype", "rank"),
        needs_pipe=needs_pipe,
        families=("flux",),
        read_back=read_lora_export,
        help="FLUX.1 LoRA in kohya / BFL names (ComfyUI, sd-scripts; diffusers 0.42 drops its txt_in / vector_in "
        "keys: use 'lora' there)",
    )
)
