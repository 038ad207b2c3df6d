"""Full-size pipeline builder (benchmarks/full_scale_models.py).

Default run: a scaled-down copy of each published config (fewer channels, same block structure and
context width) goes through the same meta build, streamed safetensors and ``from_pretrained``; layer
discovery and prompt encoding are checked against what each family's published config implies.
Slow: SD 1.5 at full size, erase -> save -> strict load -> apply -> revert (bit-exact) with UCE and SPACE.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _builder():
    spec = importlib.util.spec_from_file_location("full_scale_models", ROOT / "benchmarks" / "full_scale_models.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("full_scale_models", mod)
    spec.loader.exec_module(mod)
    return mod


fsm = _builder()
UNET_FAMILIES = tuple(f for f in fsm.FAMILIES if f not in fsm.DIT_FAMILIES)

# What each published architecture must show, stated from the model cards rather than read from the configs.
EXPECTED = {
    "sd15": dict(blocks=16, d_in=768, linear_proj=False, pipeline="StableDiffusionPipeline"),
    "sd21": dict(blocks=16, d_in=1024, linear_proj=True, pipeline="StableDiffusionPipeline"),
    "sdxl": dict(blocks=70, d_in=2048, linear_proj=True, pipeline="StableDiffusionXLPipeline"),
}


def _expected_depths(unet_cfg: dict) -> dict[str, list[int]]:
    """Transformer blocks per cross-attention module of the down / mid / up path, from the block lists."""
    depth = unet_cfg.get("transformer_layers_per_block", 1)
    n = len(unet_cfg["down_block_types"])
    depth = [depth] * n if isinstance(depth, int) else list(depth)
    lpb = unet_cfg["layers_per_block"]
    out = {"down": [], "mid": [depth[-1]], "up": []}
    for t, d in zip(unet_cfg["down_block_types"], depth):
        out["down"] += [d] * lpb if t.startswith("CrossAttn") else []
    for t, d in zip(unet_cfg["up_block_types"], reversed(depth)):  # up blocks mirror the down path
        out["up"] += [d] * (lpb + 1) if t.startswith("CrossAttn") else []
    return out


@pytest.fixture(scope="module", params=UNET_FAMILIES)
def scaled(request, tmp_path_factory):
    from erasekit.models.loading import load_pipeline

    family = request.param
    cfg = fsm.scaled_config(fsm.published_config(family))
    folder = fsm.pipeline_folder(family, tmp_path_factory.mktemp("fs"), config=cfg, progress=False)
    return family, cfg, folder, load_pipeline(str(folder), dtype="float32")


def test_scaled_copy_keeps_structure():
    for family in UNET_FAMILIES:
        pub = fsm.published_config(family)
        small = fsm.scaled_config(pub)
        for key in ("down_block_types", "up_block_types", "layers_per_block", "cross_attention_dim"):
            assert small["unet"][key] == pub["unet"][key]
        assert small["unet"].get("transformer_layers_per_block") == pub["unet"].get("transformer_layers_per_block")
        assert small["unet"].get("use_linear_projection") == pub["unet"].get("use_linear_projection")
        assert sum(small["unet"]["block_out_channels"]) * 8 == sum(pub["unet"]["block_out_channels"])


def test_folder_layout_and_dtype(scaled):
    family, cfg, folder, pipe = scaled
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == EXPECTED[family]["pipeline"] == type(pipe).__name__
    from safetensors import safe_open

    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"F16"}
    assert set(keys) == set(pipe.unet.state_dict())  # every parameter written, nothing extra
    # the cache folder is complete and reused: a second call does not rebuild
    assert fsm.pipeline_folder(family, folder.parent, config=cfg, progress=False) == folder
    assert not list(folder.parent.glob(".*partial*"))


def test_layer_discovery(scaled):
    from erasekit.models.adapter import PipelineAdapter

    family, cfg, _, pipe = scaled
    exp = EXPECTED[family]
    adapter = PipelineAdapter(pipe)
    blocks = adapter.attention_layers()
    assert len(blocks) == exp["blocks"] and len(adapter.paths) == 2 * exp["blocks"]
    assert adapter.d_in == exp["d_in"]
    # per-module transformer depth (SDXL: 1 / 2 / 10) from the published block lists
    per_module: dict[str, int] = {}
    for b in blocks:
        per_module[b.split(".transformer_blocks.")[0]] = per_module.get(b.split(".transformer_blocks.")[0], 0) + 1
    by_path = {part: [n for m, n in per_module.items() if m.startswith(part)] for part in ("down", "mid", "up")}
    assert by_path == _expected_depths(cfg["unet"])
    # to_k / to_v output widths: the channel width of the block they sit in
    for path in adapter.paths:
        parent = pipe.unet.get_submodule(path.split(".transformer_blocks.")[0])
        assert isinstance(parent.proj_in, nn.Linear) is exp["linear_proj"]
        width = parent.proj_in.out_features if exp["linear_proj"] else parent.proj_in.out_channels
        assert adapter.linear(path).out_features == width


def test_prompt_encoding(scaled):
    from erasekit.models.adapter import PipelineAdapter

    family, _, _, pipe = scaled
    adapter = PipelineAdapter(pipe)
    enc = adapter.encode(["a painting of a lighthouse", "a photo of a cat on a red sofa at night"])
    assert tuple(enc.embeds.shape) == (2, 77, EXPECTED[family]["d_in"])
    assert torch.isfinite(enc.embeds).all() and enc.embeds.std() > 0
    assert enc.n_tokens.tolist() == [7, 13]  # BOS + words + EOS with the real CLIP tokenizer
    # "painting" vs "photo" at position 2: the encoder really reads the tokens
    assert torch.equal(enc.embeds[0, 1], enc.embeds[1, 1]) and not torch.allclose(enc.embeds[0, 2], enc.embeds[1, 2])
    if family == "sdxl":  # the 2048-d context is both encoders' states side by side: 768 + 1280
        assert pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size == 2048


def test_streamed_writer_matches_safetensors(tmp_path):
    """The hand-written streaming writer produces files that safetensors reads back tensor for tensor."""
    from safetensors.torch import load_file

    model = nn.Sequential(nn.Embedding(50, 7), nn.Linear(7, 5), nn.LayerNorm(5))
    with torch.device("meta"):
        meta = nn.Sequential(nn.Embedding(50, 7), nn.Linear(7, 5), nn.LayerNorm(5))
    n = fsm.stream_safetensors(tmp_path / "m.safetensors", meta, torch.float16, seed=3)
    back = load_file(str(tmp_path / "m.safetensors"))
    assert set(back) == set(model.state_dict()) and n == sum(t.numel() * 2 for t in back.values())
    assert torch.equal(back["2.weight"], torch.ones(5, dtype=torch.float16)) and not back["1.bias"].any()
    assert back["1.weight"].float().std().item() == pytest.approx(7**-0.5, rel=0.5)
    assert back["0.weight"].float().std().item() == pytest.approx(0.02, rel=0.5)
    again = fsm.stream_safetensors(tmp_path / "n.safetensors", meta, torch.float16, seed=3)
    assert again == n and all(torch.equal(back[k], v) for k, v in load_file(str(tmp_path / "n.safetensors")).items())


# ------------------------------------------------------------------ memory paths and device refusal


def test_fingerprint_hashes_the_stored_bytes():
    import hashlib

    from erasekit.models.adapter import weight_fingerprint

    w = torch.randn(300, 17).to(torch.float16)  # more rows than one sketch block
    fp = weight_fingerprint(w)
    assert fp["sha256"] == hashlib.sha256(w.numpy().tobytes()).hexdigest()
    assert fp["fro"] == pytest.approx(float(w.double().norm()), rel=1e-12)
    assert weight_fingerprint(w.float())["sketch"] == pytest.approx(fp["sketch"], abs=1e-6)  # same values, other dtype


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without a GPU")
def test_benchmarks_refuse_cuda_without_a_gpu(capsys):
    spec = importlib.util.spec_from_file_location("full_scale_bench", ROOT / "benchmarks" / "full_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--family", "sd15", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    import subprocess

    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "solver.py"), "--device", "cuda", "--baseline", "HEAD"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "no CUDA GPU" in out.stderr


@pytest.mark.parametrize("family", UNET_FAMILIES)
@pytest.mark.slow  # drives the benchmark script
def test_full_scale_benchmark_runs_every_phase_on_a_scaled_copy(family, tmp_path, capsys):
    """benchmarks/full_scale.py as its user runs it (``--scaled``): every phase of both closed-form
    methods appears in the table, and revert is bit-exact."""
    spec = importlib.util.spec_from_file_location("full_scale_bench", ROOT / "benchmarks" / "full_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(
        ["--family", family, "--scaled", "--methods", "uce,space", "--cache-dir", str(tmp_path), "--threads", "2"]
    ) in (0, None)
    table = capsys.readouterr().out
    for method in ("uce", "space"):
        phases = {line.split("|")[2].strip() for line in table.splitlines() if line.startswith(f"| {method} |")}
        assert {"encode", "fit", "save", "load_edit", "apply", "revert"} <= phases, (method, phases)
    assert table.count("bit-exact") == 2


@pytest.mark.parametrize("family", fsm.DIT_FAMILIES)
@pytest.mark.parametrize("denoiser", ["full", "sites"])
@pytest.mark.slow  # drives the benchmark script
def test_full_scale_benchmark_runs_every_closed_form_on_a_scaled_dit(family, denoiser, tmp_path, capsys):
    """benchmarks/full_scale.py on a scaled DiT: all six closed forms through every phase, each revert bit-exact,
    the ratio to the weights an erasure reads printed."""
    spec = importlib.util.spec_from_file_location("full_scale_bench", ROOT / "benchmarks" / "full_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    methods = ",".join(mod.DIT_CLOSED_FORM)
    argv = ["--family", family, "--scaled", "--methods", methods, "--preserve", "1", "--denoiser", denoiser]
    assert mod.main([*argv, "--cache-dir", str(tmp_path), "--encode-phase", "first"]) in (0, None)
    table = capsys.readouterr().out
    for method in mod.DIT_CLOSED_FORM:
        phases = {line.split("|")[2].strip() for line in table.splitlines() if line.startswith(f"| {method} |")}
        assert {"fit", "save", "load_edit", "apply", "revert"} <= phases, (method, phases)
    assert table.count("bit-exact") == len(mod.DIT_CLOSED_FORM) and "÷ touched" in table
    assert f"denoiser {denoiser}" in table


@pytest.mark.slow  # drives the benchmark script
def test_full_scale_benchmark_runs_unet_methods_at_their_reduced_budget(tmp_path, capsys):
    """PURE, ACE and ESD-x go through every phase but the closed-form encode one, and each fit row states its reduced
    budget."""
    spec = importlib.util.spec_from_file_location("full_scale_bench", ROOT / "benchmarks" / "full_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(
        ["--family", "sd15", "--scaled", "--methods", "pure,ace,esd-x", "--cache-dir", str(tmp_path), "--threads", "2"]
    ) in (0, None)
    table = capsys.readouterr().out
    for method in ("pure", "ace", "esd-x"):
        rows = [line for line in table.splitlines() if line.startswith(f"| {method} |")]
        phases = {line.split("|")[2].strip() for line in rows}
        assert {"fit", "save", "load_edit", "apply", "revert"} <= phases and "encode" not in phases, (method, phases)
        fit = next(line for line in rows if line.split("|")[2].strip() == "fit")
        assert "reduced: " + mod.REDUCED[method][1] in fit
    assert table.count("bit-exact") == 3
    assert (
        mod.main(["--family", "sd15", "--scaled", "--methods", "uce,mace", "--cache-dir", str(tmp_path)]) == 2
    )  # refused before loading
    assert "mace not measured here" in capsys.readouterr().err


# ------------------------------------------------------------------ full size (slow)


@pytest.mark.slow
@pytest.mark.parametrize("method,options", [("uce", {}), ("space", {"target_sparsity": 0.85})])
def test_sd15_full_size_end_to_end(method, options, tmp_path):
    """Full-size SD 1.5 (random weights, fp16): erase -> save -> strict load -> apply -> revert, bit-exact."""
    import hashlib

    import erasekit
    from erasekit.edit import Edit

    folder = fsm.pipeline_folder("sd15", progress=False)  # cached under ~/.cache/erasekit/full_scale
    pipe = erasekit.load_pipeline(str(folder), dtype="float16")
    adapter = erasekit.PipelineAdapter(pipe)
    assert len(adapter.attention_layers()) == 16 and adapter.d_in == 768

    def digest() -> dict:
        return {
            p: hashlib.sha256(adapter.linear(p).weight.detach().numpy().tobytes()).hexdigest() for p in adapter.paths
        }

    before = digest()
    edit = erasekit.erase(pipe, method, ["Van Gogh"], preserve=["Claude Monet", "Rembrandt"], progress=False, **options)
    assert digest() == before and len(edit.layers) == 32  # fitting never touches the pipeline
    path = edit.save(tmp_path / f"{method}.safetensors")
    loaded = Edit.load(path)
    loaded.check_compatible(pipe)  # strict: fingerprints of all 32 layers
    expected = {p: le.materialize(adapter.linear(p).weight).to(torch.float16) for p, le in loaded.layers.items()}
    loaded.apply(pipe)
    changed = digest()
    assert sum(changed[p] != before[p] for p in before) == 32
    for p, w in expected.items():  # what was written is the stored weight, cast to the pipeline's dtype
        assert torch.equal(adapter.linear(p).weight, w)
    loaded.revert(pipe)
    assert digest() == before
    if method == "space":
        assert abs(loaded.sparsity() - 0.85) <= 0.01


# ------------------------------------------------------------------ the DiTs: FLUX.1-dev, SD3.5-Medium

# What each published DiT must show, from the model cards: the pipeline class, erasekit's family, the T5-XXL context
# width (scaled ÷ 8 in the default tests) and the pooled width (CLIP-L 768; SD3: CLIP-L ⊕ CLIP-G 768 + 1280).
DIT_EXPECTED = {
    "flux1-dev": dict(pipeline="FluxPipeline", family="flux", t5="text_encoder_2", pooled=768, t5_len=512),
    "sd35-medium": dict(
        pipeline="StableDiffusion3Pipeline", family="sd3", t5="text_encoder_3", pooled=2048, t5_len=256
    ),
}
STATIC_SITES = {"context_embedder", "time_text_embed.text_embedder.linear_1"}
MMDITS = ("flux1-dev", "sd35-medium")
# PixArt-Σ and Sana: one text encoder, a caption projection, cross-attention (attn2) in every block. From the model
# cards and papers: PixArt-Σ 0.6 B (28 blocks, width 1152, T5-XXL 4096-d); Sana-1600M 1.6 B (20 blocks, width 2240,
# Gemma-2-2B 2304-d, 2.6 B with its 256000-row embedding).
CAPTION_DITS = {
    "pixart-sigma": dict(pipeline="PixArtSigmaPipeline", family="pixart", blocks=28, width=1152, text=4096,
                         params=(0.6e9, 0.62e9), text_params=(4.7e9, 4.9e9), length=300),
    "sana-1600m": dict(pipeline="SanaPipeline", family="sana", blocks=20, width=2240, text=2304,
                       params=(1.55e9, 1.65e9), text_params=(2.55e9, 2.65e9), length=300),
}  # fmt: skip


@pytest.fixture(scope="module")
def dit_cache(tmp_path_factory):
    """The scaled DiTs built into one cache (FLUX.1-dev, SD3.5-M and PixArt-Σ share the T5 component)."""
    root = tmp_path_factory.mktemp("fs-dit")
    return {
        f: fsm.pipeline_folder(f, root, config=fsm.scaled_config(fsm.published_config(f)), progress=False)
        for f in fsm.DIT_FAMILIES
    }


def test_dit_configs_are_the_published_architectures():
    flux, sd35 = (fsm.published_config(f) for f in MMDITS)
    tr = flux["transformer"]
    assert (tr["num_layers"], tr["num_single_layers"], tr["num_attention_heads"] * tr["attention_head_dim"]) == (
        19,
        38,
        3072,
    )
    assert tr["guidance_embeds"] and tr["joint_attention_dim"] == flux["text_encoder_2"]["d_model"] == 4096
    tr = sd35["transformer"]
    assert (tr["num_layers"], tr["num_attention_heads"] * tr["attention_head_dim"], tr["caption_projection_dim"]) == (
        24,
        1536,
        1536,
    )
    assert tr["dual_attention_layers"] == list(range(13)) and tr["pooled_projection_dim"] == 768 + 1280
    # one T5-XXL: the same architecture in both, so the builder stores it once
    strip = {"torch_dtype"}
    assert {k: v for k, v in flux["text_encoder_2"].items() if k not in strip} == {
        k: v for k, v in sd35["text_encoder_3"].items() if k not in strip
    }

    def stored(family_cfg: dict, name: str) -> int:  # what the weight files hold: parameters and saved buffers
        return sum(t.numel() for t in fsm._meta_model(name, family_cfg).state_dict().values())

    # the published sizes: 11.9 B (FLUX.1-dev), 2.5 B (SD3.5-M, its 384² position table included), T5-XXL 4.7 B
    n_flux, n_sd35, n_t5 = stored(flux, "transformer"), stored(sd35, "transformer"), stored(flux, "text_encoder_2")
    assert 11.8e9 < n_flux < 12.0e9 and 2.4e9 < n_sd35 < 2.6e9 and 4.6e9 < n_t5 < 4.9e9


@pytest.mark.parametrize("family", MMDITS)
def test_scaled_dit_loads_with_its_own_pipeline_class(family, dit_cache):
    """The scaled build loads with the plain diffusers pipeline class; erasekit identifies it and finds the two static
    sites by structure, reading T5's width and the pooled CLIP width."""
    import diffusers

    from erasekit.models.adapter import PipelineAdapter
    from erasekit.models.families import identify

    exp, folder = DIT_EXPECTED[family], dit_cache[family]
    cfg = fsm.scaled_config(fsm.published_config(family))
    pipe = getattr(diffusers, exp["pipeline"]).from_pretrained(str(folder), torch_dtype=torch.bfloat16)
    assert type(pipe).__name__ == exp["pipeline"] and identify(pipe).name == exp["family"]
    adapter = PipelineAdapter(pipe)
    assert set(adapter.paths) == STATIC_SITES and set(adapter.groups) == {"text", "pooled"}
    d_t5 = cfg[exp["t5"]]["d_model"]
    assert adapter.for_group("text").d_in == d_t5 == fsm.published_config(family)[exp["t5"]]["d_model"] // 8
    assert adapter.for_group("pooled").d_in * 8 == exp["pooled"]
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.bfloat16}
    # the offline T5 tokenizer has the real T5-XXL vocabulary size, and the encoder's table that many rows
    t5 = getattr(pipe, exp["t5"])
    tok = pipe.tokenizer_2 if family == "flux1-dev" else pipe.tokenizer_3
    assert len(tok) == t5.config.vocab_size == 32128 == t5.get_input_embeddings().weight.shape[0]
    enc = adapter.for_group("text").encode(["a painting of a lighthouse", "a photo of a cat on a red sofa"])
    n_clip = 0 if family == "flux1-dev" else 77  # SD3's stream: CLIP-L ⊕ CLIP-G (77), then T5
    assert tuple(enc.embeds.shape) == (2, n_clip + exp["t5_len"], d_t5)
    assert torch.isfinite(enc.embeds).all() and not torch.allclose(enc.embeds[0], enc.embeds[1])
    pooled = adapter.for_group("pooled").encode(["a painting of a lighthouse"])
    assert tuple(pooled.embeds.shape) == (1, 1, exp["pooled"] // 8)


def test_dits_share_one_t5_build(dit_cache):
    flux, sd35, pixart = (dit_cache[f] for f in ("flux1-dev", "sd35-medium", "pixart-sigma"))
    assert (flux / "text_encoder_2").is_symlink() and (sd35 / "text_encoder_3").is_symlink()
    assert (flux / "text_encoder_2").resolve() == (sd35 / "text_encoder_3").resolve()
    assert (pixart / "text_encoder").resolve() == (flux / "text_encoder_2").resolve()
    assert (flux / "transformer").resolve() != (sd35 / "transformer").resolve()
    assert (dit_cache["sana-1600m"] / "text_encoder").resolve() != (pixart / "text_encoder").resolve()


def test_caption_dit_configs_are_the_published_architectures():
    """PixArt-Σ and Sana-1600M: block count, width, caption width = the text encoder's, the cross-attention reading
    the model width, and the published parameter counts (what the weight files hold)."""

    def stored(cfg: dict, name: str) -> int:  # parameters and saved buffers; a tied tensor once
        return sum(math.prod(shape) for _, shape, _ in fsm._entries(fsm._meta_model(name, cfg), torch.bfloat16))

    for family, exp in CAPTION_DITS.items():
        cfg = fsm.published_config(family)
        tr, te = cfg["transformer"], cfg["text_encoder"]
        assert tr["num_layers"] == exp["blocks"]
        assert tr["num_attention_heads"] * tr["attention_head_dim"] == exp["width"]
        assert tr["cross_attention_dim"] == exp["width"] and tr["caption_channels"] == exp["text"]
        assert te.get("d_model", te.get("hidden_size")) == exp["text"]
        lo, hi = exp["params"]
        assert lo < stored(cfg, "transformer") < hi, family
        lo, hi = exp["text_params"]
        assert lo < stored(cfg, "text_encoder") < hi, family
    sana = fsm.published_config("sana-1600m")["transformer"]
    assert sana["num_cross_attention_heads"] * sana["cross_attention_head_dim"] == 2240
    strip = {"torch_dtype"}  # PixArt-Σ's T5 is FLUX.1-dev's: one build
    assert {k: v for k, v in fsm.published_config("pixart-sigma")["text_encoder"].items() if k not in strip} == {
        k: v for k, v in fsm.published_config("flux1-dev")["text_encoder_2"].items() if k not in strip
    }


@pytest.mark.parametrize("family", CAPTION_DITS)
def test_scaled_caption_dit_loads_with_its_own_pipeline_class(family, dit_cache):
    """The scaled PixArt-Σ / Sana build loads with the plain diffusers pipeline class; erasekit identifies it and finds
    every block's attn2 K / V (one site group) reading the caption projected to the model width."""
    import diffusers

    from erasekit.models.adapter import PipelineAdapter
    from erasekit.models.families import identify

    exp, folder = CAPTION_DITS[family], dit_cache[family]
    cfg = fsm.scaled_config(fsm.published_config(family))
    pipe = getattr(diffusers, exp["pipeline"]).from_pretrained(str(folder), torch_dtype=torch.bfloat16)
    assert type(pipe).__name__ == exp["pipeline"] and identify(pipe).name == exp["family"]
    adapter = PipelineAdapter(pipe)
    blocks = cfg["transformer"]["num_layers"]
    assert set(adapter.paths) == {f"transformer_blocks.{i}.attn2.to_{p}" for i in range(blocks) for p in "kv"}
    assert len(adapter.groups) == 1
    width = cfg["transformer"]["num_attention_heads"] * cfg["transformer"]["attention_head_dim"]
    assert adapter.d_in == width < exp["width"]  # the caption projected to the (scaled) model width
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.bfloat16}
    assert pipe.text_encoder.config.vocab_size == fsm.published_config(family)["text_encoder"]["vocab_size"]
    assert len(pipe.tokenizer) <= pipe.text_encoder.get_input_embeddings().weight.shape[0]
    from erasekit.models.tokenizer import gemma_tokenizer, t5_tokenizer

    text = "Given a user prompt, generate an 'Enhanced prompt' of Van Gogh"  # the saved tokenizer is the stand-in
    stand_in = t5_tokenizer(vocab_size=32128) if family == "pixart-sigma" else gemma_tokenizer()
    ids = stand_in(text)["input_ids"]
    assert pipe.tokenizer(text)["input_ids"] == ids and len(ids) < len(text) // 2  # words, not characters
    enc = adapter.encode(["a painting of a lighthouse", "a photo of a cat on a red sofa"])
    assert tuple(enc.embeds.shape) == (2, exp["length"], width)
    assert torch.isfinite(enc.embeds).all() and not torch.allclose(enc.embeds[0], enc.embeds[1])


def test_sharded_component_loads_as_published(tmp_path):
    """A component above the shard size is written as shards + weight map, which from_pretrained reads back whole."""
    from diffusers import FluxTransformer2DModel
    from safetensors import safe_open

    cfg = fsm.scaled_config(fsm.published_config("flux1-dev"))
    folder = fsm.component_folder("transformer", cfg, tmp_path, progress=False, max_shard=2**20)
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (folder / "diffusion_pytorch_model.safetensors").exists()
    stored = {}
    for name in shards:
        with safe_open(str(folder / name), framework="pt") as f:
            stored.update({k: f.get_tensor(k) for k in f.keys()})
    assert sum(t.numel() * t.element_size() for t in stored.values()) == index["metadata"]["total_size"]
    model = FluxTransformer2DModel.from_pretrained(str(folder), torch_dtype=torch.bfloat16)
    sd = model.state_dict()
    assert set(sd) == set(stored) == set(index["weight_map"])
    assert all(torch.equal(sd[k], stored[k]) for k in stored)


@pytest.mark.slow
def test_flux1_dev_full_size_sites_only_end_to_end(tmp_path):
    """Full-size FLUX.1-dev (random weights, bf16; a 31 GiB build on first use, cached): UCE fitted on the
    sites-only load reads 15 M of the transformer's 11.9 B parameters, and its edit checks, applies and reverts
    bit-exactly on the fully loaded (memory-mapped) pipeline. Minutes on a CPU: T5-XXL encodes at 512 tokens."""
    import hashlib

    import erasekit
    from erasekit.edit import Edit

    folder = fsm.pipeline_folder("flux1-dev", progress=False)
    sites = erasekit.load_pipeline(str(folder), dtype="bfloat16", denoiser="sites")
    read = sum(p.numel() for p in sites.transformer.parameters() if p.device.type != "meta")
    assert read == sum(p.numel() for n in STATIC_SITES for p in sites.transformer.get_submodule(n).parameters())
    assert read < 16e6
    edit = erasekit.erase(sites, "uce", ["Van Gogh"], progress=False)
    assert set(edit.layers) == STATIC_SITES
    full = erasekit.load_pipeline(str(folder), dtype="bfloat16")  # memory-mapped: the sites' pages are all it reads
    adapter = erasekit.PipelineAdapter(full)

    def digest() -> dict:
        return {
            p: hashlib.sha256(adapter.linear(p).weight.detach().view(torch.uint8).numpy().tobytes()).hexdigest()
            for p in adapter.paths
        }

    before = digest()
    loaded = Edit.load(edit.save(tmp_path / "uce.safetensors"))
    loaded.check_compatible(full)
    loaded.apply(full)
    assert all(digest()[p] != before[p] for p in before)
    loaded.revert(full)
    assert digest() == before
