"""Single-file checkpoints (A1111 / ComfyUI "original LDM" layout), offline and end to end.

A pipeline is exported with ``export_single_file`` and read back through erasekit's real loading
path, ``load_pipeline(file, config=<diffusers folder>)`` -> diffusers' ``from_single_file``: every
UNet / VAE / text-encoder tensor must come back bit-identical, and edits fitted on the original
must load strictly onto the single-file pipeline.
"""

import json
import os

import pytest
import torch
from safetensors import safe_open

import erasekit
from erasekit.errors import EditFileError, EraseKitError, ModelError
from erasekit.export.single_file import export_single_file
from erasekit.models.loading import _single_file_class
from erasekit.models.tiny import build_tiny_pipeline

COMPONENTS = ("unet", "vae", "text_encoder")


def _assert_same_weights(want, got):
    for comp in COMPONENTS:
        a, b = getattr(want, comp).state_dict(), getattr(got, comp).state_dict()
        assert sorted(a) == sorted(b), (
            f"{comp}: missing {sorted(set(a) - set(b))[:3]}, extra {sorted(set(b) - set(a))[:3]}"
        )
        differ = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
        assert not differ, f"{comp}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def _keys(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_slice(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A diffusers folder of tiny SD1 seed 0 (config only) and a single file of seed 1 (same architecture)."""
    root = tmp_path_factory.mktemp("single")
    folder_pipe, file_pipe = build_tiny_pipeline("sd", seed=0), build_tiny_pipeline("sd", seed=1)
    folder_pipe.save_pretrained(root / "folder")
    path = export_single_file(file_pipe, root / "tiny-sd1.safetensors")
    return folder_pipe, file_pipe, root / "folder", path


def test_exported_keys_follow_the_original_ldm_layout(tiny_pair):
    _, _, _, path = tiny_pair
    slices, meta = _keys(path)
    assert all(
        k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."))
        for k in slices
    )
    for k in (  # keys diffusers / A1111 use to recognise the parts
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",  # downsampler of block 0 (layers_per_block=1; SD 1.5: 3)
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.1.2.conv.weight",  # upsampler after an attention (SD 1.5: 2.2)
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
    ):
        assert k in slices, k
    assert len(slices["first_stage_model.encoder.mid.attn_1.q.weight"].get_shape()) == 4  # 1x1 conv in the original
    assert json.loads(meta["erasekit_applied_edits"]) == []
    assert _single_file_class(path).__name__ == "StableDiffusionPipeline"


def test_tiny_sd1_loads_back_bit_identical_from_the_file(tiny_pair):
    folder_pipe, file_pipe, folder, path = tiny_pair
    loaded = erasekit.load_pipeline(str(path), config=str(folder))
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    _assert_same_weights(file_pipe, loaded)
    # The folder holds other (seed 0) weights: every component really was read from the file.
    for comp in COMPONENTS:
        a, b = getattr(folder_pipe, comp).state_dict(), getattr(loaded, comp).state_dict()
        assert any(a[k].is_floating_point() and not torch.equal(a[k], b[k]) for k in a), comp


def test_float16_export(tiny_pair, tmp_path):
    _, file_pipe, folder, _ = tiny_pair
    path = export_single_file(file_pipe, tmp_path / "half.safetensors", dtype="float16")
    with safe_open(str(path), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16", "I64"}  # I64: the CLIP position ids
    loaded = erasekit.load_pipeline(str(path), dtype="float16", config=str(folder))
    for comp in COMPONENTS:
        want, got = getattr(file_pipe, comp).state_dict(), getattr(loaded, comp).state_dict()
        assert all(torch.equal(want[k].half(), got[k]) for k in want), comp


@pytest.fixture(scope="module")
def tinyworld_edit(tmp_path_factory):
    """The bundled tinyworld pipeline (DownBlock2D first, UpBlock2D last, VAE without mid attention) and a UCE edit of
    it."""
    pipe = erasekit.load_pipeline("tinyworld")
    edit = erasekit.erase(pipe, "uce", ["circle"], kind="object", progress=False)
    return pipe, edit, edit.save(tmp_path_factory.mktemp("edit") / "circle.safetensors")


def test_tinyworld_round_trip_and_edits_fit_the_single_file_pipeline(tinyworld_edit, tmp_path):
    from erasekit.tinyworld import pipeline_dir

    pipe, edit, edit_path = tinyworld_edit

    plain = export_single_file(pipe, tmp_path / "tinyworld.safetensors")
    loaded = erasekit.load_pipeline(str(plain), config=str(pipeline_dir()))
    _assert_same_weights(pipe, loaded)
    assert type(loaded.scheduler).__name__ == type(pipe.scheduler).__name__

    # The edit fitted on the original loads strictly (fingerprints match) and gives the same weights.
    loaded_edit = erasekit.load_edit(edit_path, loaded)
    edit.apply(pipe)
    try:
        _assert_same_weights(pipe, loaded)
        # Exporting the edited pipeline bakes the edit in, and records it in the metadata.
        baked = export_single_file(pipe, tmp_path / "tinyworld-circle.safetensors")
    finally:
        edit.revert(pipe)
    loaded_edit.revert(loaded)
    _, meta = _keys(baked)
    assert json.loads(meta["erasekit_applied_edits"]) == [repr(edit)]
    erased = erasekit.load_pipeline(str(baked), config=str(pipeline_dir()))
    for path in edit.layers:
        w_erased = erased.unet.get_submodule(path).weight
        assert torch.equal(w_erased, edit.layers[path].materialize(pipe.unet.get_submodule(path).weight))
    with pytest.raises(EditFileError, match="weights differ from the base model"):
        erasekit.load_edit(edit_path, erased)  # already erased: the base fingerprints no longer match


def test_cli_export_bakes_the_edit_in(tinyworld_edit, tmp_path, capsys):
    from erasekit.cli import main
    from erasekit.tinyworld import pipeline_dir

    pipe, edit, edit_path = tinyworld_edit
    out = tmp_path / "tinyworld-circle.safetensors"
    assert main(["export", "--model", "tinyworld", "--edit", str(edit_path), "--out", str(out)]) == 0
    assert "single-file (sd1)" in capsys.readouterr().err
    erased = erasekit.load_pipeline(str(out), config=str(pipeline_dir()))
    edit.apply(pipe)
    try:
        _assert_same_weights(pipe, erased)
    finally:
        edit.revert(pipe)
    bad = tmp_path / "sdxl.safetensors"
    assert main(["export", "--model", "tiny-sdxl", "--edit", str(edit_path), "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "Traceback" not in err and not bad.exists()


@pytest.mark.parametrize("fam", ["sd2", "sdxl"])
def test_sd2_and_sdxl_single_files_round_trip(fam, tmp_path):
    """SD 2.x (OpenCLIP text encoder) and SDXL (both conditioners) come back bit-identical; an edit fitted on the
    original loads strictly onto the reloaded pipeline, and a baked export refuses it."""
    folder_pipe, file_pipe = build_tiny_pipeline(fam, seed=0), build_tiny_pipeline(fam, seed=1)
    folder_pipe.save_pretrained(tmp_path / "folder")
    path = export_single_file(file_pipe, tmp_path / "m.safetensors")
    slices, _ = _keys(path)
    te_prefix = "cond_stage_model.model." if fam == "sd2" else "conditioner.embedders.1.model."
    assert any(k.startswith(te_prefix) and k.endswith("attn.in_proj_weight") for k in slices)
    loaded = erasekit.load_pipeline(str(path), config=str(tmp_path / "folder"))
    comps = COMPONENTS + (("text_encoder_2",) if fam == "sdxl" else ())
    for comp in comps:
        a, b = getattr(file_pipe, comp).state_dict(), getattr(loaded, comp).state_dict()
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), comp
    edit = erasekit.erase(file_pipe, "uce", ["a cat"], progress=False)
    erasekit.load_edit(edit.save(tmp_path / "e.safetensors"), loaded).revert(loaded)
    baked = erasekit.export(
        edit, "single-file", tmp_path / "baked.safetensors", pipe=file_pipe, save_dtype="float32"
    ).path
    erased = erasekit.load_pipeline(str(baked), config=str(tmp_path / "folder"))
    with pytest.raises(EditFileError, match="weights differ from the base model"):
        erasekit.load_edit(tmp_path / "e.safetensors", erased)


def test_an_sd2_unet_is_refused_in_the_sd1_layout(tiny_pipes, tmp_path):
    with pytest.raises(ModelError, match="use_linear_projection=True"):
        export_single_file(tiny_pipes["sd2"], tmp_path / "x.safetensors", layout="sd1")
    assert os.listdir(tmp_path) == []


def test_per_block_layers_are_refused(tmp_path):
    from diffusers import UNet2DConditionModel

    pipe = build_tiny_pipeline("sd")
    pipe.unet = UNet2DConditionModel(
        sample_size=16,
        layers_per_block=(1, 2),
        block_out_channels=(16, 32),
        norm_num_groups=8,
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    with pytest.raises(ModelError, match="per-block layers_per_block"):
        export_single_file(pipe, tmp_path / "x.safetensors")


def test_a_failed_write_leaves_nothing_behind(tiny_pair, tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(EraseKitError, match="disk full"):
        export_single_file(tiny_pair[1], tmp_path / "x.safetensors")
    assert os.listdir(tmp_path) == []
