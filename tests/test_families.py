"""The family registry (models/families, DESIGN §10): the same property checks on every registered family.

Each family's tiny offline build (models/tiny.py) is checked for: site discovery by structure (and never an
image self-attention named ``attn2``), static site inputs that ignore timestep and latent, an exact
erase → guide mapping with γ → 0, preserved outputs kept, refusals (unsupported pipelines, other families'
edits, methods a family cannot run yet) and exports that round-trip through the consumer's own loader.
The fit / save / strict-load / apply / revert matrix over every method is tests/test_engine.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import erasekit
from conftest import ALL_TINY, _guarded
from erasekit.errors import EditFileError, MethodError, ModelError
from erasekit.export import ExportError, export
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.families import (
    UnsupportedPipelineError,
    cross_attention_sites,
    families,
    get_family,
    identify,
)

CONCEPTS = dict(concepts=["Van Gogh"], preserve=["Claude Monet", "Pablo Picasso"], kind="style")
EXPECTED_FAMILY = {"sd": "sd", "sd2": "sd", "sdxl": "sdxl", "pixart": "pixart", "sana": "sana"}
DIT_SITES = [f"transformer_blocks.{i}.attn2.{p}" for i in range(2) for p in ("to_k", "to_v")]


@pytest.fixture(params=ALL_TINY)
def build(request):
    return request.param


@pytest.fixture
def pipe(all_tiny_pipes, build):
    yield from _guarded(all_tiny_pipes[build])


def _den(pipe):
    return identify(pipe).get_denoiser(pipe)


def _state(pipe):
    return {k: v.clone() for k, v in _den(pipe).state_dict().items()}


# ------------------------------------------------------------------ identity and sites
def test_identify_names_the_family_and_its_denoiser(pipe, build):
    fam = identify(pipe)
    assert fam.name == EXPECTED_FAMILY[build] and get_family(fam.name) is fam
    assert fam.denoiser == ("unet" if build in ("sd", "sd2", "sdxl") else "transformer")
    assert PipelineAdapter(pipe).describe()["denoiser"] == fam.denoiser


def test_sites_are_every_cross_attention_kv_found_by_structure(pipe, build):
    from diffusers.models.attention_processor import Attention

    paths = PipelineAdapter(pipe).paths
    cross = [n for n, m in _den(pipe).named_modules() if isinstance(m, Attention) and m.is_cross_attention]
    assert paths == [f"{a}.{p}" for a in cross for p in ("to_k", "to_v")]
    if build in ("pixart", "sana"):
        assert paths == DIT_SITES


def test_an_image_self_attention_named_attn2_is_never_a_site():
    """SD3.5-Medium's ``attn2`` is image self-attention: discovery goes by structure, so it is not picked."""
    from diffusers.models.attention_processor import Attention

    block = nn.Module()
    block.attn = Attention(query_dim=8, heads=2, dim_head=4)  # self-attention
    block.attn2 = Attention(query_dim=8, heads=2, dim_head=4)  # SD3.5-M: a second image self-attention
    block.cross = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)  # reads text
    tree = nn.Module()
    tree.transformer_blocks = nn.ModuleList([block])
    assert [s.path for s in cross_attention_sites(tree)] == [
        "transformer_blocks.0.cross.to_k",
        "transformer_blocks.0.cross.to_v",
    ]


def test_static_site_inputs_do_not_depend_on_timestep_or_latent(pipe):
    """What every site reads during denoise() is site_inputs(encode(prompt)), for any x_t and t, in every block."""
    fam, den = identify(pipe), _den(pipe)
    sites = fam.edit_sites(pipe)
    cond = fam.encode(pipe, ["a painting by Van Gogh"])
    want = fam.site_inputs(pipe, cond).detach()
    seen: list[torch.Tensor] = []
    hooks = [
        den.get_submodule(s.path).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
        for s in sites
    ]
    c = den.config.in_channels
    side = fam.sample_size(pipe)
    try:
        with torch.no_grad():
            for seed, t in ((0, 10), (1, 900)):
                x = torch.randn(1, c, side, side, generator=torch.Generator().manual_seed(seed))
                out = fam.denoise(pipe, x, torch.tensor([t]), cond)
                assert out.shape == x.shape
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == 2 * len(sites)
    for x in seen:
        torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the closed form on every family
def _residuals(pipe, edit, erase=("Van Gogh",), guide=("art",), preserve=()):
    adapter = PipelineAdapter(pipe)
    C_E, C_G = adapter.token_columns(list(erase), list(guide), "last")
    C_P = adapter.preserve_columns(list(preserve), "last")
    worst_e = worst_p = 0.0
    for path, le in edit.layers.items():
        W0 = adapter.linear(path).weight.detach().double()
        W = le.materialize(W0).double()
        worst_e = max(worst_e, float((W @ C_E - W0 @ C_G).norm() / (W0 @ C_E - W0 @ C_G).norm()))
        if C_P.shape[1]:
            worst_p = max(worst_p, float((W @ C_P - W0 @ C_P).norm() / (W0 @ C_P).norm()))
    return worst_e, worst_p


def test_uce_maps_erase_onto_guide_exactly_as_gamma_goes_to_zero(pipe):
    edit = erasekit.erase(
        pipe, "uce", ["Van Gogh"], kind="style", token="last", lamb=1e-9, storage="dense", defaults=None, progress=False
    )
    erase_res, _ = _residuals(pipe, edit)
    assert erase_res < 1e-6


def test_uce_keeps_preserved_outputs(pipe):
    edit = erasekit.erase(
        pipe, "uce", token="last", lamb=1e-6, storage="dense", defaults=None, progress=False, **CONCEPTS
    )
    erase_res, drift = _residuals(pipe, edit, preserve=CONCEPTS["preserve"])
    assert erase_res < 1e-3 and drift < 1e-3


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("method", ["esd", "ace", "pure", "mace"])
@pytest.mark.parametrize("build", ["pixart", "sana"], indirect=False)
def test_denoiser_methods_are_refused_on_the_dits_naming_where_they_run(all_tiny_pipes, build, method):
    pipe = all_tiny_pipes[build]
    before = _state(pipe)
    with pytest.raises(MethodError) as e:
        erasekit.erase(pipe, method, progress=False, **CONCEPTS)
    msg = str(e.value)
    assert "\n" not in msg and ("sd, sdxl" in msg or "tokenizer position" in msg)
    assert all(torch.equal(before[k], v) for k, v in _den(pipe).state_dict().items())


def test_mace_closed_form_runs_on_pixart(all_tiny_pipes):
    edit = erasekit.erase(all_tiny_pipes["pixart"], "mace", train_steps=0, progress=False, **CONCEPTS)
    assert list(edit.layers) == DIT_SITES and edit.base["family"] == "pixart"


def test_an_unsupported_pipeline_gets_one_line_naming_the_families():
    class OtherPipeline:
        transformer = nn.Linear(2, 2)

    with pytest.raises(UnsupportedPipelineError) as e:
        identify(OtherPipeline())
    msg = str(e.value)
    assert "\n" not in msg and all(name in msg for name in families())
    with pytest.raises(ModelError):
        erasekit.erase(OtherPipeline(), "uce", ["x"], progress=False)


@pytest.fixture(scope="module")
def dit_edits(all_tiny_pipes):
    return {b: erasekit.erase(all_tiny_pipes[b], "uce", progress=False, **CONCEPTS) for b in ("pixart", "sana", "sd")}


def test_an_edit_for_one_family_refuses_another(all_tiny_pipes, dit_edits):
    for made, other in (("pixart", "sana"), ("sana", "pixart"), ("sd", "pixart"), ("pixart", "sdxl")):
        before = _state(all_tiny_pipes[other])
        with pytest.raises(EditFileError, match=f"made for a {EXPECTED_FAMILY[made]} pipeline"):
            dit_edits[made].apply(all_tiny_pipes[other])
        assert all(torch.equal(before[k], v) for k, v in _den(all_tiny_pipes[other]).state_dict().items())


def test_edit_records_family_and_denoiser_and_round_trips(all_tiny_pipes, dit_edits, tmp_path):
    for b in ("pixart", "sana"):
        pipe, edit = all_tiny_pipes[b], dit_edits[b]
        assert edit.base["family"] == b and edit.base["denoiser"] == "transformer"
        base = _state(pipe)
        loaded = erasekit.load_edit(edit.save(tmp_path / f"{b}.safetensors"), pipe)
        try:
            assert loaded.base == edit.base
            changed = [k for k, v in _den(pipe).state_dict().items() if not torch.equal(base[k], v)]
            assert sorted(changed) == sorted(f"{p}.weight" for p in DIT_SITES)
        finally:
            loaded.revert(pipe)
        assert all(torch.equal(base[k], v) for k, v in _den(pipe).state_dict().items())


def test_an_edit_without_a_recorded_denoiser_is_a_unet_edit(tiny_pipes):
    """Files written before families (format 2, no base.denoiser) still apply to the UNet."""
    from erasekit.edit import Edit

    pipe = tiny_pipes["sd"]
    edit = erasekit.erase(pipe, "uce", progress=False, **CONCEPTS)
    old_base = {k: v for k, v in edit.base.items() if k != "denoiser"}
    old = Edit(edit.method, edit.config, edit.concepts, old_base, edit.layers.values(), edit.fingerprints, edit.stats)
    base = _state(pipe)
    edit.apply(pipe)
    want = _state(pipe)
    edit.revert(pipe)
    old.apply(pipe)
    try:
        assert all(torch.equal(want[k], v) for k, v in _den(pipe).state_dict().items())
    finally:
        old.revert(pipe)
    assert all(torch.equal(base[k], v) for k, v in _den(pipe).state_dict().items())


# ------------------------------------------------------------------ exports
def _applied(pipe, edit):
    edit.apply(pipe)
    try:
        return _state(pipe)
    finally:
        edit.revert(pipe)


def _max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_sana_lora_round_trips_through_load_lora_weights(all_tiny_pipes, dit_edits, tmp_path):
    pipe, edit = all_tiny_pipes["sana"], dit_edits["sana"]
    base, want = _state(pipe), _applied(pipe, edit)
    res = export(edit, "lora", tmp_path / "sana.safetensors", pipe=pipe)
    from safetensors import safe_open

    with safe_open(str(res.path), "pt") as f:
        assert all(k.startswith("transformer.transformer_blocks.") for k in f.keys())
    pipe.load_lora_weights(str(res.path))
    try:
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # the fused weights stay, the LoRA wrappers go
        assert _max_diff(want, _state(pipe)) < 1e-6
    finally:
        _den(pipe).load_state_dict(base)


def test_pixart_lora_is_refused_naming_the_merged_folder(all_tiny_pipes, dit_edits, tmp_path):
    with pytest.raises(ExportError, match="'diffusers'"):
        export(dit_edits["pixart"], "lora", tmp_path / "p.safetensors", pipe=all_tiny_pipes["pixart"])


@pytest.mark.parametrize("b", ["pixart", "sana"])
def test_merged_diffusers_folder_loads_to_the_applied_weights(all_tiny_pipes, dit_edits, tmp_path, b):
    pipe, edit = all_tiny_pipes[b], dit_edits[b]
    want = _applied(pipe, edit)
    res = export(edit, "diffusers", tmp_path / b, pipe=pipe)
    reloaded = type(pipe).from_pretrained(str(res.path))
    assert _max_diff(want, _state(reloaded)) == 0.0


@pytest.mark.parametrize("fmt", ["single-file", "lora-kohya", "diff"])
def test_sd_only_formats_are_refused_on_the_dits(all_tiny_pipes, dit_edits, tmp_path, fmt):
    with pytest.raises(ExportError, match="'lora'.*'diffusers'"):
        export(dit_edits["sana"], fmt, tmp_path / "x.safetensors", pipe=all_tiny_pipes["sana"])
