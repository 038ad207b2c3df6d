"""``single-file-flux``: the FLUX.1 transformer, edit baked in, as one file in Black Forest Labs' layout.

The file is what BFL publish as ``flux1-dev.safetensors`` and what ComfyUI's "Load Diffusion Model" node reads:
the transformer alone (VAE, CLIP-L and T5 travel separately, as for the published model), keys without a prefix,
q / k / v fused (``double_blocks.N.img_attn.qkv``, ``txt_attn.qkv``), ``single_blocks.N.linear1`` = [q; k; v;
mlp], ``txt_in`` / ``vector_in.in_layer`` for the two static edit sites, and the final AdaLN's halves swapped
(:mod:`.bfl_names` has the whole table). Edits applied to the pipeline are baked in; the erasekit record sits
under ``erasekit_export``.

Loaders (measured with diffusers 0.42 and read from ComfyUI's code):

* Both read a FLUX at FLUX.1's published width only. ComfyUI's ``comfy/model_detection.py`` recognises the file by
  ``double_blocks.0.img_attn.norm.key_norm.scale`` and counts the blocks from the keys, but fixes ``hidden_size``
  3072, 24 heads and a 4096-wide T5 input. diffusers' ``FluxTransformer2DModel.from_single_file(path,
  config=<folder>, subfolder="transformer")`` converts with ``convert_flux_transformer_checkpoint_to_diffusers``,
  which splits ``single_blocks.N.linear1`` at the fixed sizes (3072, 3072, 3072, 12288): on a narrower FLUX (the
  tiny test builds, tinyworld-flux) it fails with "split_with_sizes expects split_sizes to sum exactly to …" and
  loads nothing (measured, diffusers 0.42). The export says so in its result. At the published width
  ``from_single_file`` reads the file back bit-exact (``benchmarks/flux_exports_full_width.py``: a 0.55 B-parameter
  FLUX.1-width transformer, one block of each kind); the tests check the layout on the narrow builds through the
  same converter (``linear1`` placed at the published row offsets) and through ComfyUI's key map.

Float8 (``save_dtype`` ``float8_e4m3fn`` or ``float8_e5m2``; this format and ``single-file-sd3`` share the writer):
plain float8 as ComfyUI's fp8 checkpoints hold it, without the per-tensor ``scale_weight`` keys and ``scaled_fp8``
marker of ComfyUI's separate "scaled fp8" variant. *Every* floating-point tensor is stored in float8,
biases and norm scales included, not only the matrices, because that is the model ComfyUI runs from such a file:
its loader takes the model's dtype to be the dtype holding most of the file (``comfy/utils.py`` ``weight_dtype``,
counting elements; earlier versions counted keys, and a FLUX block has more bias and norm keys than matrices) and
builds every parameter, biases and RMSNorm scales included, in that dtype (``set_inference_dtype`` sets
``unet_config["dtype"]``). Wider biases would be rounded to float8 at load anyway, or, under key counting, make the
whole model bfloat16: twice the memory float8 was chosen to save. The published FLUX.1 fp8 header quoted in
AUTOMATIC1111 PR #16484 stores biases and ``norm.key_norm.scale`` as F8_E4M3 too. diffusers'
``from_single_file(..., torch_dtype=...)`` casts every tensor to ``torch_dtype`` (``load_model_dict_into_meta``), so
it reads the file either way. The edit is rounded with the rest: :func:`erasekit.export` measures how far float8
storage moves it, as a share of ‖ΔW‖ (:meth:`erasekit.Edit.storage_loss`; UCE's default edit on the tiny FLUX and
SD3 builds: 14 % and 30 % in e4m3fn, 28 % and 57 % in e5m2; at ``erase_scale=1e-3`` the rounding error is 3x the
edit), and refuses above :data:`erasekit.edit.STORAGE_LOSS_LIMIT`, naming the ``lora`` export, which keeps all of
it. A tensor beyond float8's range (e4m3fn: 448, e5m2: 57344; torch saturates e4m3fn and overflows e5m2 to inf) is
refused before anything is written. e4m3fn (3 mantissa bits) is the usual choice; e5m2 (2 bits) trades precision
for range.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ._common import (
    ExportError,
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
from .bfl_names import Layout, assemble, layout_of

PUBLISHED_WIDTH, PUBLISHED_MLP = 3072, 12288  # the only single-block split diffusers 0.42's converter knows


def family_transformer(pipe, family: str, fmt: str) -> torch.nn.Module:
    """The transformer of a ``family`` pipeline; an ExportError naming the formats for other families."""
    from ..models.families import identify
    from ..models.sites_only import refuse_sites_only

    fam = identify(pipe)
    if fam.name != family:
        raise ExportError(
            f"the {fmt!r} layout is {family}'s; this is a {fam.name} pipeline ({fam.description}): "
            "use 'single-file' for SD 1.x / 2.x / XL, 'single-file-flux' for FLUX.1, 'single-file-sd3' for SD3, "
            "'diffusers' for the others"
        )
    tr: torch.nn.Module = fam.get_denoiser(pipe)
    refuse_sites_only(tr, "a single-file export")
    return tr


def diffusers_readable(shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether diffusers 0.42's FLUX converter can split this model's ``linear1`` (only at the published width)."""
    return int(shapes["context_embedder.weight"][0]) == PUBLISHED_WIDTH and all(
        int(s[0]) == PUBLISHED_MLP for k, s in shapes.items() if k.endswith("proj_mlp.weight")
    )


def stored(key: str, t: torch.Tensor, cast: torch.dtype | None) -> torch.Tensor:
    """``t`` as the file stores it (cast floating-point tensors, cpu, contiguous); a value beyond a float8
    ``cast``'s range is refused (e4m3fn would saturate it silently, e5m2 make it inf)."""
    t = t.detach()
    if cast is not None and t.is_floating_point():
        if cast.itemsize == 1 and t.numel():
            big, top = float(t.abs().max()), torch.finfo(cast).max
            if not big <= top:  # NaN too
                name = str(cast).removeprefix("torch.")
                raise ExportError(
                    f"{key!r} holds |w| up to {big:.6g}, beyond {name}'s largest {top:g}: it cannot be stored in "
                    f"{name}; save in bfloat16 or float16; nothing was written"
                )
        t = t.to(cast)
    return t.to("cpu").contiguous()


def write_transformer(
    edit, pipe, path, fmt: str, tr: torch.nn.Module, layout: Layout, save_dtype=None, **meta_fields
) -> ExportResult:
    """``tr`` with ``edit`` (None: as it is) baked in, written in ``layout`` as format ``fmt``, atomically."""
    from ..edit import Edit

    path = check_output(path)
    cast = resolve_save_dtype(save_dtype, float8=True)
    record = edit_record(edit) if edit is not None else None
    if cast is not None:
        meta_fields["save_dtype"] = str(cast).removeprefix("torch.")
    with baked(edit, pipe):
        tensors = {k: stored(k, t, cast) for k, t in assemble(tr.state_dict(), layout).items()}
        meta = export_metadata(fmt, edits=[record] if record else [], **meta_fields)
        header = {
            "format": "pt",
            "erasekit_applied_edits": json.dumps(Edit.applied(pipe)),
            "erasekit_export": json.dumps(meta, sort_keys=True),
        }
        out = save_safetensors(tensors, Path(os.fspath(path)), header)
    return ExportResult(out, fmt, path_size(out))


def write(edit, pipe, path, *, save_dtype=None, progress: bool = False) -> ExportResult:
    """``pipe``'s transformer with ``edit`` (None: as it is) baked in, in BFL's layout; checked before any work."""
    check_output(path)
    tr = family_transformer(pipe, "flux", "single-file-flux")
    layout = layout_of(tr)  # refuses a transformer with tensors BFL's layout does not name, before applying anything
    res = write_transformer(edit, pipe, path, "single-file-flux", tr, layout, save_dtype, checkpoint_layout="bfl-flux1")
    shapes = {k: tuple(v.shape) for k, v in tr.state_dict().items()}
    if not diffusers_readable(shapes):
        res.notes.append(
            f"width {shapes['context_embedder.weight'][0]}: no loader reads a FLUX this narrow from this layout "
            f"(diffusers 0.42's from_single_file splits single_blocks.N.linear1 at the published "
            f"{PUBLISHED_WIDTH} / {PUBLISHED_MLP} rows; ComfyUI fixes hidden_size {PUBLISHED_WIDTH}); "
            "use 'diffusers' or 'lora'"
        )
    return res


register_format(
    ExportFormat(
        name="single-file-flux",
        kind="model",
        write=write,
        options=("save_dtype",),
        families=("flux",),
        float8=True,
        help="the FLUX.1 transformer, edit baked in, in Black Forest Labs' layout (ComfyUI 'Load Diffusion Model', "
        "diffusers from_single_file; both at FLUX.1's published width); float8 storage as ComfyUI's fp8 files",
    )
)
