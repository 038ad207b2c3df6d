"""The family registry (models/families, DESIGN §10): the same property checks on every registered family.

Each family's tiny offline build (models/tiny.py) is checked for: site discovery by structure (and never an
image self-attention named ``attn2``: the SD3 build has SD3.5-Medium's), static site inputs that ignore timestep
and latent (SD3 / FLUX: the text stream and the pooled vector, two site groups), an exact erase → guide mapping
with γ → 0 for every closed-form method, preserved outputs kept, refusals (unsupported pipelines, other families'
edits, methods a family cannot run yet) and exports that round-trip through the consumer's own loader.
The fit / save / strict-load / apply / revert matrix over every method is tests/test_engine.py.
"""

from __future__ import annotations

import dataclasses

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
from method_settings import CHEAP

CONCEPTS = dict(concepts=["Van Gogh"], preserve=["Claude Monet", "Pablo Picasso"], kind="style")
EXPECTED_FAMILY = {
    "sd": "sd",
    "sd2": "sd",
    "sdxl": "sdxl",
    "pixart": "pixart",
    "sana": "sana",
    "sd3": "sd3",
    "flux": "flux",
    "flux-schnell": "flux",
}
DIT_SITES = [f"transformer_blocks.{i}.attn2.{p}" for i in range(2) for p in ("to_k", "to_v")]
MMDIT = ("sd3", "flux")  # no cross-attention: the text-stream and pooled embedders, two site groups
MMDIT_SITES = ["context_embedder", "time_text_embed.text_embedder.linear_1"]


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


def test_sites_are_found_by_structure(pipe, build):
    """Cross-attention families: every cross-attention K / V. SD3 / FLUX: the one Linear reading the text encoders'
    width and the pooled embedder's first Linear, in two groups; no attention projection (SD3.5-M's attn2 included)."""
    from diffusers.models.attention_processor import Attention

    adapter = PipelineAdapter(pipe)
    paths = adapter.paths
    cross = [n for n, m in _den(pipe).named_modules() if isinstance(m, Attention) and m.is_cross_attention]
    assert paths == [f"{a}.{p}" for a in cross for p in ("to_k", "to_v")] or build in MMDIT
    if build in ("pixart", "sana"):
        assert paths == DIT_SITES
    if build in MMDIT:
        assert not cross and paths == MMDIT_SITES
        assert adapter.groups == {"text": MMDIT_SITES[:1], "pooled": MMDIT_SITES[1:]}
        assert [adapter.for_group(g).input_kind for g in adapter.groups] == ["static_text", "pooled_text"]
        attns = [n for n, m in _den(pipe).named_modules() if isinstance(m, Attention)]
        assert not any(p.startswith(a + ".") for p in paths for a in attns)
    if build == "sd3":  # the build has SD3.5-Medium's image self-attention attn2, and it is not a site
        attn2 = _den(pipe).transformer_blocks[0].attn2
        assert isinstance(attn2, Attention) and not attn2.is_cross_attention


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


@torch.no_grad()
def test_prior_cache_key_covers_every_module_that_makes_the_site_inputs(pipe):
    """The general prior's cache is keyed by a fingerprint of what the sites read: changing any site-input module
    (SD3's third encoder, PixArt / Sana's caption projection included) changes it; changing an edited site does
    not (the prior is a statistic of the inputs)."""
    from erasekit.prior import encoder_fingerprint

    fam = identify(pipe)
    before = encoder_fingerprint(pipe)
    modules = fam.site_input_modules(pipe)
    assert modules and all(isinstance(m, nn.Module) for m in modules.values())
    for name, module in modules.items():
        p = next(iter(module.parameters()), None)
        if p is None:  # a parameter-free norm: nothing to fingerprint
            continue
        old = p.view(-1)[0].clone()
        p.view(-1)[0] += 1.0
        try:
            assert encoder_fingerprint(pipe) != before, name
        finally:
            p.view(-1)[0] = old
    site = fam.edit_sites(pipe)[0]
    w = _den(pipe).get_submodule(site.path).weight
    old = w.view(-1)[0].clone()
    w.view(-1)[0] += 1.0
    try:
        assert encoder_fingerprint(pipe) == before
    finally:
        w.view(-1)[0] = old


def test_static_site_inputs_do_not_depend_on_timestep_or_latent(pipe):
    """What every site reads during denoise() is site_inputs(encode(prompt), site), for any x_t and t, in every block
    (a pooled site reads its one vector per prompt)."""
    fam, den = identify(pipe), _den(pipe)
    sites = fam.edit_sites(pipe)
    cond = fam.encode(pipe, ["a painting by Van Gogh", "a cat"])
    seen: dict[str, list[torch.Tensor]] = {s.path: [] for s in sites}
    hooks = [
        den.get_submodule(s.path).register_forward_pre_hook(
            lambda m, a, p=s.path: seen[p].append(a[0].detach().clone())
        )
        for s in sites
    ]
    c, side = fam.latent_channels(pipe), fam.sample_size(pipe)
    try:
        with torch.no_grad():
            for seed, t in ((0, 10), (1, 900)):
                x = torch.randn(2, c, side, side, generator=torch.Generator().manual_seed(seed))
                out = fam.denoise(pipe, x, torch.tensor([t, t]), cond)
                assert out.shape == x.shape
    finally:
        for h in hooks:
            h.remove()
    for s in sites:
        want = fam.site_inputs(pipe, cond, s).detach()  # (B, L, d_in); pooled: (B, 1, d_pool)
        assert len(seen[s.path]) == 2
        for x in seen[s.path]:
            torch.testing.assert_close(x.reshape(want.shape), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ differentiable encoding (the attacks' way in)
GRADIENT_FAMILIES = ("sd", "sd2", "sdxl", "sd3", "flux", "pixart", "sana")  # every family: encode_graph


def _cond_tensors(cond):
    return (
        [cond.embeds, cond.mask]
        + [x for x in (cond.pooled, cond.guidance) if x is not None]
        + list(cond.added.values())
    )


def test_text_gradients_are_offered_where_encode_graph_is(pipe, build):
    fam = identify(pipe)
    assert fam.text_gradients() == (build in GRADIENT_FAMILIES)
    assert len(fam.text_tokenizers(pipe)) == len(fam.text_encoders(pipe)) == len(fam.input_embeddings(pipe))
    if not fam.text_gradients():
        with pytest.raises(ModelError) as e:
            fam.encode_graph(pipe, ["a cat"])
        assert "\n" not in str(e.value) and fam.name in str(e.value)


@pytest.mark.parametrize("build", GRADIENT_FAMILIES)
def test_identity_substitution_is_encode_and_every_encoder_is_substitutable(all_tiny_pipes, build):
    """encode_substituted with the identity is encode (bit for bit without grad; to float tolerance with it, where
    another attention kernel may run), hands each encoder its own tokenizer's ids, and moving any one encoder's input
    embeddings moves the conditioning, with a gradient back to them (FLUX: CLIP's reaches the pooled vector, T5's the
    stream)."""
    pipe = all_tiny_pipes[build]
    fam = identify(pipe)
    prompts = ["a painting by Van Gogh", "a cat"]
    ref = fam.encode(pipe, prompts)
    seen: list[tuple[int, torch.Tensor]] = []

    def identity(enc, ids, embeds):
        seen.append((enc, ids))
        return embeds

    with torch.no_grad():
        same = fam.encode_substituted(pipe, prompts, identity)
    for a, b in zip(_cond_tensors(ref), _cond_tensors(same), strict=True):
        assert torch.equal(a, b)
    n = len(fam.text_encoders(pipe))
    assert sorted(e for e, _ in seen) == list(range(n)), "each encoder's token table is looked up exactly once"
    for (enc, ids), tok in zip(sorted(seen, key=lambda x: x[0]), fam.text_tokenizers(pipe), strict=True):
        want = list(tok("a cat").input_ids)  # CLIP: BOS a cat EOS; T5: a cat EOS
        assert ids[1, : len(want)].tolist() == want, f"encoder {enc} was not handed its own tokenizer's ids"
    tables = fam.input_embeddings(pipe)  # substitute hands over rows of these tables (Gemma: before its √d scale)
    with torch.no_grad():
        rows = fam.encode_substituted(pipe, prompts, lambda e, i, x: tables[e][i.to(x.device)].to(x.dtype))
    for a, b in zip(_cond_tensors(ref), _cond_tensors(rows), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-6, atol=1e-6)
    graph = fam.encode_substituted(pipe, prompts, lambda e, i, x: x)
    for a, b in zip(_cond_tensors(ref), _cond_tensors(graph), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5)
    for k in range(n):
        delta = torch.zeros(fam.input_embeddings(pipe)[k].shape[1], requires_grad=True)
        g = torch.Generator().manual_seed(k)
        push = torch.randn(delta.shape, generator=g)

        def move(enc, ids, embeds, k=k, delta=delta, push=push):
            return embeds + (delta + push)[None, None, :] if enc == k else embeds

        moved = fam.encode_substituted(pipe, prompts, move)
        parts = [moved.embeds] + ([moved.pooled] if moved.pooled is not None else [])
        refs = [ref.embeds] + ([ref.pooled] if ref.pooled is not None else [])
        shift = max(float((m.detach() - r).abs().max()) for m, r in zip(parts, refs, strict=True))
        assert shift > 1e-4, f"{build}: encoder {k}'s substitution does not reach the conditioning"
        (grad,) = torch.autograd.grad(sum(x.float().pow(2).sum() for x in parts), [delta])
        assert float(grad.abs().max()) > 0


def test_sana_substitution_sees_the_prompt_not_the_instruction(all_tiny_pipes):
    """Sana's Gemma reads the instruction prefix, then the prompt; ``substitute`` sees BOS and the prompt's own tokens
    (``tokenizer(prompt)``'s layout), and the stream ``select_index`` keeps is laid out the same way: Gemma is causal,
    so replacing the embedding at view position k moves the stream at position k and at none before it."""
    pipe = all_tiny_pipes["sana"]
    fam = identify(pipe)
    assert fam._instruction(pipe), "the pipeline's default instruction prefix is used"
    prompts = ["a cat on a striped mat", "a dog"]
    ref = fam.encode(pipe, prompts)
    for k in (1, 3, 5):
        seen = []

        def poke(enc, ids, embeds, k=k):
            seen.append(ids.clone())
            out = embeds.clone()
            out[:, k] = out[:, k] + 1.0
            return out

        with torch.no_grad():
            moved = fam.encode_substituted(pipe, prompts, poke)
        assert seen[0][0, : len(ids := pipe.tokenizer(prompts[0]).input_ids)].tolist() == ids
        diff = (moved.embeds - ref.embeds).abs().amax(-1)  # (B, L)
        assert bool((diff[:, :k] == 0).all()), "a position before the substituted token moved"
        assert bool((diff[:, k] > 1e-4).all()), "the substituted token's own stream position did not move"


# ------------------------------------------------------------------ the closed form on every family
def _residuals(pipe, edit, erase=("Van Gogh",), guide=("art",), preserve=()):
    """(worst ‖W C_E − W0 C_G‖ / ‖W0 C_E − W0 C_G‖, worst ‖W C_P − W0 C_P‖ / ‖W0 C_P‖) over the edit's layers, each
    layer against the columns of its own site group's input."""
    full = PipelineAdapter(pipe)
    worst_e = worst_p = 0.0
    for group, paths in full.groups.items():
        adapter = full.for_group(group)
        C_E, C_G = adapter.token_columns(list(erase), list(guide), "last")
        C_P = adapter.preserve_columns(list(preserve), "last")
        for path in paths:
            W0 = adapter.linear(path).weight.detach().double()
            W = edit.layers[path].materialize(W0).double()
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
@pytest.mark.parametrize(
    "build,method",
    [("sd3", "pure"), ("flux", "pure")],
)
def test_denoiser_methods_are_refused_on_the_dits_naming_where_they_run(all_tiny_pipes, build, method):
    """Fine-tuning (ESD, ACE, MACE's LoRA stage) runs on every family; PURE's activation basis where its capture is
    validated and the sites are attention keys / values (the UNets, PixArt, Sana; SD3 / FLUX with sites='joint'), so
    on the MMDiTs' static sites (the two embedders) it is refused, naming sites='joint'."""
    pipe = all_tiny_pipes[build]
    before = _state(pipe)
    with pytest.raises(MethodError) as e:
        erasekit.erase(pipe, method, progress=False, **CONCEPTS)
    msg = str(e.value)
    if method == "pure":
        joint = build in ("sd3", "flux")  # capture validated, but the static sites are embedders: the joint ones run
        hint = "use sites='joint'" if joint else f"not on {build}; use basis='text'"
        assert "\n" not in msg and "sd, sdxl, pixart, sana, sd3, flux" in msg and hint in msg
    else:
        where = "supports on sd, sdxl, pixart, sana, sd3, flux only"
        assert "\n" not in msg and (where in msg or "tokenizer position" in msg)
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
    builds = ("pixart", "sana", "sd", "sd3", "flux")
    return {b: erasekit.erase(all_tiny_pipes[b], "uce", progress=False, **CONCEPTS) for b in builds}


def test_an_edit_for_one_family_refuses_another(all_tiny_pipes, dit_edits):
    pairs = (("pixart", "sana"), ("sana", "pixart"), ("sd", "pixart"), ("pixart", "sdxl"), ("sd3", "flux"))
    for made, other in (*pairs, ("flux", "sd3"), ("flux", "sana"), ("sd", "flux")):
        before = _state(all_tiny_pipes[other])
        with pytest.raises(EditFileError, match=f"made for a {EXPECTED_FAMILY[made]} pipeline"):
            dit_edits[made].apply(all_tiny_pipes[other])
        assert all(torch.equal(before[k], v) for k, v in _den(all_tiny_pipes[other]).state_dict().items())


def test_edit_records_family_and_denoiser_and_round_trips(all_tiny_pipes, dit_edits, tmp_path):
    from safetensors import safe_open

    for b in ("pixart", "sana", "sd3", "flux"):
        pipe, edit = all_tiny_pipes[b], dit_edits[b]
        sites = MMDIT_SITES if b in MMDIT else DIT_SITES
        assert edit.base["family"] == b and edit.base["denoiser"] == "transformer"
        base = _state(pipe)
        path = edit.save(tmp_path / f"{b}.safetensors")
        with safe_open(str(path), "pt") as f:  # format 3: every tensor names its component
            assert {k.split("/", 1)[0] for k in f.keys()} == {"transformer"}
        loaded = erasekit.load_edit(path, pipe)
        try:
            assert loaded.base == edit.base
            changed = [k for k, v in _den(pipe).state_dict().items() if not torch.equal(base[k], v)]
            assert sorted(changed) == sorted(f"{p}.weight" for p in sites)
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


# ------------------------------------------------------------------ SD3 / FLUX
CLOSED_FORMS = ("uce", "space", "rece", "speed", "cure", "mace", "pure")


def _closed_form(method: str) -> dict:
    """The method's shared cheap settings, as a closed form (MACE without its LoRA stage, PURE on its text basis)."""
    extra = {"mace": {"train_steps": 0}, "pure": {"basis": "text", "n_latents": 1, "steps": 1}}
    return {**CHEAP[method], **extra.get(method, {})}


@pytest.mark.parametrize("method", CLOSED_FORMS)
@pytest.mark.parametrize("build", MMDIT, indirect=False)
def test_every_closed_form_fits_both_site_groups_and_reverts_bit_exactly(all_tiny_pipes, build, method, tmp_path):
    """Each closed form edits both static sites, each from its own input; the saved file strict-loads to the weights
    apply gives, and revert restores the bytes."""
    pipe = all_tiny_pipes[build]
    base = _state(pipe)
    edit = erasekit.erase(pipe, method, progress=False, **CONCEPTS, **_closed_form(method))
    assert sorted(edit.layers) == sorted(MMDIT_SITES) and set(edit.stats["groups"]) == {"text", "pooled"}
    assert all(torch.equal(base[k], v) for k, v in _den(pipe).state_dict().items())  # fit reads, never writes
    want = _applied(pipe, edit)
    loaded = erasekit.load_edit(edit.save(tmp_path / "e.safetensors"), pipe)
    try:
        assert _max_diff(want, _state(pipe)) == 0.0
        moved = [k for k in want if not torch.equal(want[k], base[k])]
        assert sorted(moved) == sorted(f"{p}.weight" for p in MMDIT_SITES)
    finally:
        loaded.revert(pipe)
    assert all(torch.equal(base[k], v) for k, v in _den(pipe).state_dict().items())


@pytest.mark.parametrize("method", ["uce", "space"])
def test_mmdit_erase_maps_onto_guide_exactly_with_gamma_to_zero(all_tiny_pipes, method):
    """Empty preserve, γ → 0: W C_E = W0 C_G on both groups (SPACE at λ = 0 is UCE)."""
    for build in MMDIT:
        kw = {"lam": 0.0} if method == "space" else {}
        edit = erasekit.erase(
            all_tiny_pipes[build], method, ["Van Gogh"], kind="style", token="last", lamb=1e-9, storage="dense",
            defaults=None, progress=False, **kw,
        )  # fmt: skip
        erase_res, _ = _residuals(all_tiny_pipes[build], edit)
        assert erase_res < 1e-6, build


def test_pooled_columns_are_one_vector_per_prompt_and_text_columns_the_last_t5_token(all_tiny_pipes):
    """The pooled group's column of a prompt is its pooled vector; the text group's 'last' column is the T5 state of
    the last token before EOS (FLUX: T5 alone; SD3: after CLIP's 77 positions)."""
    for build in MMDIT:
        pipe = all_tiny_pipes[build]
        fam, adapter = identify(pipe), PipelineAdapter(pipe)
        prompts = ["a painting by Van Gogh", "cat"]
        cond = fam.encode(pipe, prompts)
        C_pool = adapter.for_group("pooled").preserve_columns(prompts, "last")  # (d_pool, 2)
        f32 = dict(rtol=1e-5, atol=1e-5)  # float32 encoders; the adapter encodes under its dtype guard
        torch.testing.assert_close(C_pool, cond.pooled.double().T, **f32)
        t5 = pipe.tokenizer_2 if build == "flux" else pipe.tokenizer_3
        offset = 0 if build == "flux" else pipe.tokenizer.model_max_length
        last = [offset + len(t5(p).input_ids) - 2 for p in prompts]  # the token before T5's </s>
        C_text = adapter.for_group("text").preserve_columns(prompts, "last")  # (d_text, 2)
        want = torch.stack([cond.embeds[i, j] for i, j in enumerate(last)]).double().T
        torch.testing.assert_close(C_text, want, **f32)


def test_flux_packing_and_ids_are_the_pipelines(all_tiny_pipes):
    """FLUX's denoise packs latents and builds position ids exactly as FluxPipeline does, and unpacks back."""
    from erasekit.models.families.flux import image_ids, pack_latents, unpack_latents

    pipe = all_tiny_pipes["flux"]
    x = torch.randn(2, 4, 8, 6)
    packed = pack_latents(x)
    assert torch.equal(packed, pipe._pack_latents(x, 2, 4, 8, 6))
    assert torch.equal(unpack_latents(packed, 8, 6), x)
    assert torch.equal(
        image_ids(8, 6, "cpu", torch.float32), pipe._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32)
    )


def test_flux_dev_embeds_guidance_and_schnell_does_not(all_tiny_pipes):
    dev, schnell = all_tiny_pipes["flux"], all_tiny_pipes["flux-schnell"]
    fam = identify(dev)
    assert identify(schnell) is fam
    c_dev, c_s = fam.encode(dev, ["a cat"]), fam.encode(schnell, ["a cat"])
    assert c_dev.guidance is not None and float(c_dev.guidance[0]) == 3.5 and c_s.guidance is None
    assert c_dev.embeds.shape[1] == 512 and c_s.embeds.shape[1] == 256  # BFL's (and UCE-FLUX's) T5 lengths
    x = torch.randn(1, fam.latent_channels(dev), 8, 8)
    with torch.no_grad():
        a = fam.denoise(dev, x, torch.tensor([500.0]), c_dev)
        b = fam.denoise(dev, x, torch.tensor([500.0]), dataclasses.replace(c_dev, guidance=c_dev.guidance * 2))
    assert not torch.allclose(a, b)  # the guidance scale reaches the transformer


# ------------------------------------------------------------------ exports
def _applied(pipe, edit):
    edit.apply(pipe)
    try:
        return _state(pipe)
    finally:
        edit.revert(pipe)


def _max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("b", ["sana", "sd3", "flux"])
def test_lora_round_trips_through_load_lora_weights(all_tiny_pipes, dit_edits, tmp_path, b):
    """PEFT keys under ``transformer.``; diffusers' Sana / SD3 / FLUX loaders fuse them to the applied weights (on
    SD3 / FLUX the targets are the text-stream and pooled embedders)."""
    pipe, edit = all_tiny_pipes[b], dit_edits[b]
    base, want = _state(pipe), _applied(pipe, edit)
    res = export(edit, "lora", tmp_path / f"{b}.safetensors", pipe=pipe)
    from safetensors import safe_open

    with safe_open(str(res.path), "pt") as f:
        modules = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in f.keys()}
        assert all(k.startswith("transformer.") for k in f.keys())
    assert modules == set(MMDIT_SITES if b in MMDIT else DIT_SITES)
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


@pytest.mark.parametrize("b", ["pixart", "sana", "sd3", "flux"])
def test_merged_diffusers_folder_loads_to_the_applied_weights(all_tiny_pipes, dit_edits, tmp_path, b):
    pipe, edit = all_tiny_pipes[b], dit_edits[b]
    want = _applied(pipe, edit)
    res = export(edit, "diffusers", tmp_path / b, pipe=pipe)
    reloaded = type(pipe).from_pretrained(str(res.path))
    assert _max_diff(want, _state(reloaded)) == 0.0


@pytest.mark.parametrize("b", ["sana", "sd3", "flux"])
@pytest.mark.parametrize("fmt", ["single-file", "lora-kohya", "diff"])
def test_sd_only_formats_are_refused_on_the_dits(all_tiny_pipes, dit_edits, tmp_path, fmt, b):
    with pytest.raises(ExportError, match="'lora'.*'diffusers'"):
        export(dit_edits[b], fmt, tmp_path / "x.safetensors", pipe=all_tiny_pipes[b])


class _Checkpoint(dict):
    """An original-layout checkpoint for diffusers' single-file converters, on the meta device: the keys given are
    real entries (a tensor's shape is its tag), every other key the converter pops is an untagged stand-in whose
    shape survives its chunk / split (FLUX.1's fused single-block projection: 3 · 3072 + 12288 rows)."""

    def pop(self, key, *default):
        return super().pop(key) if key in self else torch.empty(3 * 3072 + 12288, 6, device="meta")


@pytest.mark.parametrize(
    "family, converter, blocks",
    [
        ("flux", "convert_flux_transformer_checkpoint_to_diffusers", ("double_blocks.0.x", "single_blocks.0.x")),
        ("sd3", "convert_sd3_transformer_checkpoint_to_diffusers", ("joint_blocks.0.x",)),
    ],
)
def test_original_site_names_are_what_diffusers_single_file_conversion_reads(family, converter, blocks):
    """The family's original names of its sites (FLUX: txt_in, vector_in.in_layer; SD3: context_embedder,
    y_embedder.mlp.0) are the keys diffusers' own single-file conversion turns into those sites."""
    from diffusers.loaders import single_file_utils

    fam = get_family(family)
    ckpt = _Checkpoint({k: torch.empty(1, device="meta") for k in blocks})
    tags = {}
    for i, path in enumerate(MMDIT_SITES):
        tags[path] = (5, 7 + i)  # a shape no other tensor has
        ckpt[f"{fam.original_name(path)}.weight"] = torch.empty(tags[path], device="meta")
    out = getattr(single_file_utils, converter)(ckpt)
    assert {p: tuple(out[f"{p}.weight"].shape) for p in MMDIT_SITES} == tags
