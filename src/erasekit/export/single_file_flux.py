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


def write_transformer(
    edit, pipe, path, fmt: str, tr: torch.nn.Module, layout: Layout, save_dtype=None, **meta_fields
) -> ExportResult:
    """``tr`` with ``edit`` (None: as it is) baked in, written in ``layout`` as format ``fmt``, atomically."""
    from ..edit import Edit

    path = check_output(path)
    cast = resolve_save_dtype(save_dtype)
    record = edit_record(edit) if edit is not None else None
    with baked(edit, pipe):
        tensors = {}
        for k, t in assemble(tr.state_dict(), layout).items():
            t = t.detach()
            if cast is not None and t.is_floating_point():
                t = t.to(cast)
            tensors[k] = t.to("cpu").contiguous()
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
        help="the FLUX.1 transformer, edit baked in, in Black Forest Labs' layout (ComfyUI 'Load Diffusion Model', "
        "diffusers from_single_file; both at FLUX.1's published width)",
    )
)
