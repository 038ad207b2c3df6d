"""SD3 / SD3.5 as one original-layout file (``single-file-sd3``), read back by diffusers' own
``SD3Transformer2DModel.from_single_file`` (diffusers 0.42 reads it at any width): the weights are ``edit.apply``'s,
bit for bit, and the pipeline built on them generates as the edited one. The tiny build has SD3.5-Medium's layout
(a second image attention ``attn2`` in block 0, QK-norm), so every row of :mod:`erasekit.export.sd3_names` is read."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import erasekit
from erasekit.errors import EditFileError
from erasekit.export import ExportError, export
from mmdit_exports import export_record, generates_as_the_edit  # tests/mmdit_exports.py


@pytest.fixture(scope="module")
def sd3(all_tiny_pipes, tmp_path_factory):
    p = all_tiny_pipes["sd3"]
    p.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("sd3") / "pipe"
    p.save_pretrained(str(folder))
    return p, folder


@pytest.fixture(scope="module")
def edit(sd3):
    return erasekit.erase(sd3[0], "uce", ["Van Gogh"], preserve=["Claude Monet"], progress=False, sites="all")


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _latents(p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return p("Van Gogh", num_inference_steps=2, generator=g, output_type="latent", guidance_scale=2.0).images


def test_single_file_loads_in_diffusers_to_the_applied_weights_and_generates_as_the_edit(sd3, edit, tmp_path):
    from diffusers import SD3Transformer2DModel

    p, folder = sd3
    edit.apply(p)
    want, want_latents = _state(p.transformer), _latents(p)
    edit.revert(p)
    plain = _latents(p)
    res = export(edit, "single-file-sd3", tmp_path / "sd3.safetensors", pipe=p)
    keys = set(load_file(str(res.path)))
    assert "model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight" in keys
    assert "model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight" in keys  # SD3.5-M's second attention
    assert "model.diffusion_model.y_embedder.mlp.0.weight" in keys and not res.notes
    tr = SD3Transformer2DModel.from_single_file(str(res.path), config=str(folder), subfolder="transformer")
    got = _state(tr)
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    generates_as_the_edit(p, tr, _latents, want_latents, plain)
    meta = export_record(res.path)
    assert meta["export_format"] == "single-file-sd3" and sorted(meta["edits"][0]["layers"]) == sorted(edit.layers)


def test_the_last_blocks_context_adaln_and_the_final_adaln_are_swapped(sd3, tmp_path):
    """diffusers (scale, shift) against the original's (shift, scale): a layout without the swap would load a model
    whose last block mixes shift into scale; check the halves directly."""
    p, _ = sd3
    res = export(p, "single-file-sd3", tmp_path / "s.safetensors")
    f = load_file(str(res.path))
    last = max(int(k.split(".")[1]) for k in p.transformer.state_dict() if k.startswith("transformer_blocks."))
    for ours, theirs in (
        ("norm_out.linear.weight", "final_layer.adaLN_modulation.1.weight"),
        (
            f"transformer_blocks.{last}.norm1_context.linear.weight",
            f"joint_blocks.{last}.context_block.adaLN_modulation.1.weight",
        ),
    ):
        scale, shift = p.transformer.state_dict()[ours].chunk(2)
        assert torch.equal(f[f"model.diffusion_model.{theirs}"], torch.cat([shift, scale]))


def test_refusals_write_nothing(sd3, edit, all_tiny_pipes, tmp_path):
    from erasekit.models.tiny import build_tiny_pipeline

    p, _ = sd3
    with pytest.raises(ExportError, match="writes sd3 models"):
        export(all_tiny_pipes["flux"], "single-file-sd3", tmp_path / "f.safetensors")
    with pytest.raises(ExportError, match="'single-file-sd3'"):  # the SD layout's refusal names SD3's own
        export(edit, "single-file", tmp_path / "s.safetensors", pipe=p)
    other = build_tiny_pipeline("sd3", seed=1)
    with pytest.raises(EditFileError):
        export(edit, "single-file-sd3", tmp_path / "o.safetensors", pipe=other)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_writes_it(sd3, tmp_path):
    from erasekit.cli import main

    _, folder = sd3
    out = tmp_path / "sd3.safetensors"
    assert main(["export", "--model", str(folder), "--format", "single-file-sd3", "--out", str(out)]) == 0
    assert "model.diffusion_model.context_embedder.weight" in load_file(str(out))


def test_the_layout_names_the_sites_as_the_family_does(sd3):
    from erasekit.export.sd3_names import PREFIX, sd3_layout_of
    from erasekit.models.families import get_family

    layout = sd3_layout_of(sd3[0].transformer)
    for path, original in get_family("sd3").original_names:
        assert [s.key for s in layout.module(path)] == [f"{PREFIX}{original}.weight"]
