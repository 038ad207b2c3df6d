"""``single-file-sd3``: the SD3 / SD3.5 transformer, edit baked in, as one file in Stability AI's original layout.

The transformer alone under ``model.diffusion_model.`` (the text encoders and VAE travel separately), q / k / v
fused per stream (``joint_blocks.N.x_block.attn.qkv``, ``….context_block.attn.qkv``; SD3.5-Medium's second image
attention ``x_block.attn2.qkv``), ``context_embedder`` and ``y_embedder.mlp.0`` for the two static edit sites
(:mod:`.sd3_names` has the whole table). diffusers' ``SD3Transformer2DModel.from_single_file(path,
config=<folder>, subfolder="transformer")`` reads it at any width (diffusers 0.42, measured: its converter takes the
widths from the tensors and the rest from the config). ComfyUI's "Load Diffusion Model" recognises it by
``joint_blocks.0.context_block.attn.qkv.weight`` and derives the configuration from the shapes under MMDiT's own
convention (depth = width / 64), which Stability's published models follow and the tiny test build does not.
``save_dtype`` float8_e4m3fn / float8_e5m2 stores every floating-point tensor in plain float8, as for FLUX
(:mod:`.single_file_flux` says why every tensor and not only the matrices); ``from_single_file(...,
torch_dtype=...)`` casts it up.
"""

from __future__ import annotations

from ._common import ExportResult, check_output
from .base import ExportFormat, register_format
from .sd3_names import sd3_layout_of
from .single_file_flux import family_transformer, write_transformer


def write(edit, pipe, path, *, save_dtype=None, progress: bool = False) -> ExportResult:
    """``pipe``'s transformer with ``edit`` (None: as it is) baked in, in the original SD3 layout."""
    check_output(path)
    tr = family_transformer(pipe, "sd3", "single-file-sd3")
    layout = sd3_layout_of(tr)  # refuses tensors the original layout does not name, before applying anything
    return write_transformer(edit, pipe, path, "single-file-sd3", tr, layout, save_dtype, checkpoint_layout="sai-mmdit")


register_format(
    ExportFormat(
        name="single-file-sd3",
        kind="model",
        write=write,
        options=("save_dtype",),
        families=("sd3",),
        float8=True,
        help="the SD3 / SD3.5 transformer, edit baked in, in Stability's original layout (ComfyUI 'Load Diffusion "
        "Model', diffusers from_single_file); float8 storage as ComfyUI's fp8 files",
    )
)
