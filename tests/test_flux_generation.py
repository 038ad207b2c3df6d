"""How erasekit generates on FLUX: the family's one generation hook (true CFG without a guidance embedding, the
embedded scale on dev, the family's T5 length), and tinyworld-flux as a bundled model (issue 29).

The tiny builds run everywhere; the tests on the bundled model skip when its weights are not shipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import erasekit
from erasekit.generate import generate_pairs
from erasekit.models.families import identify
from erasekit.tinyworld import flux, pipeline_flux_dir, weights_flux_dir

SHIPPED = (weights_flux_dir() / "pipeline" / "model_index.json").is_file()
needs_flux = pytest.mark.skipif(not SHIPPED, reason="tinyworld-flux weights not shipped")


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


# ----------------------------------------------------------------------------- the hook, on the tiny builds
def test_each_family_says_how_it_is_guided(all_tiny_pipes):
    sd, dev, schnell = all_tiny_pipes["sd"], all_tiny_pipes["flux"], all_tiny_pipes["flux-schnell"]
    assert identify(sd).generation_kwargs(sd, 4.0, 2) == {"guidance_scale": 4.0}  # the UNets: unchanged
    assert identify(sd).generation_kwargs(sd, None, 2) == {}  # None: the pipeline's own default
    fam = identify(dev)
    assert fam.generation_kwargs(dev, 4.0, 2) == {"guidance_scale": 4.0, "max_sequence_length": 512}  # embedded
    assert fam.generation_kwargs(schnell, 4.0, 2) == {
        "true_cfg_scale": 4.0,
        "negative_prompt": ["", ""],  # one per prompt: FluxPipeline runs no negative branch without it
        "max_sequence_length": 256,
    }
    assert fam.generation_kwargs(schnell, None, 2) == {"max_sequence_length": 256}
    # under prompt_embeds the empty prompt goes in as embeddings, exactly as encode() gives them
    kw = fam.generation_kwargs(schnell, 4.0, 3, embeds=True)
    empty = fam.encode(schnell, ["", "", ""])
    assert set(kw) == {
        "true_cfg_scale",
        "negative_prompt_embeds",
        "negative_pooled_prompt_embeds",
        "max_sequence_length",
    }
    assert torch.equal(kw["negative_prompt_embeds"], empty.embeds) and kw["negative_prompt_embeds"].shape[0] == 3
    assert torch.equal(kw["negative_pooled_prompt_embeds"], empty.pooled)


def test_the_t5_length_follows_a_shorter_declared_one(all_tiny_pipes):
    """A FLUX model trained on shorter T5 sequences declares it in its tokenizer; encode() and generation use it."""
    pipe = all_tiny_pipes["flux-schnell"]
    fam, tok = identify(pipe), pipe.tokenizer_2
    before = tok.model_max_length
    try:
        tok.model_max_length = 16
        assert fam.max_sequence_length(pipe) == 16
        assert fam.encode(pipe, ["a red circle"]).embeds.shape[1] == 16
        assert fam.generation_kwargs(pipe, 3.0, 1)["max_sequence_length"] == 16
        tok.model_max_length = 10**30  # transformers' "no limit": the variant's own length
        assert fam.max_sequence_length(pipe) == 256
    finally:
        tok.model_max_length = before


def test_generate_guides_a_flux_model_without_guidance_embedding_by_true_cfg(all_tiny_pipes):
    """erasekit's generate path = FluxPipeline called with true_cfg_scale and the empty negative prompt; a scale the
    pipeline would ignore (guidance_scale) is not what reaches it."""
    pipe = all_tiny_pipes["flux-schnell"]
    jobs = [("a red circle", 0), ("a blue square", 1)]
    ours = _pixels(generate_pairs(pipe, jobs, steps=2, guidance=4.0, height=16, width=16))
    gens = [torch.Generator().manual_seed(s) for _, s in jobs]
    plain = pipe(
        prompt=[p for p, _ in jobs], negative_prompt=["", ""], true_cfg_scale=4.0, max_sequence_length=256,
        num_inference_steps=2, height=16, width=16, generator=gens,
    ).images  # fmt: skip
    assert np.array_equal(ours, _pixels(plain))
    unguided = _pixels(generate_pairs(pipe, jobs, steps=2, guidance=1.0, height=16, width=16))
    assert not np.array_equal(ours, unguided)


# ----------------------------------------------------------------------------- the bundled model
@pytest.fixture(scope="module")
def bundled():
    return erasekit.load_pipeline("tinyworld-flux")


def test_tinyworld_flux_is_a_bundled_model_with_its_own_defaults_row_and_generation_settings():
    from erasekit import defaults
    from erasekit.models.record import BUNDLED, describe_model

    assert "tinyworld-flux" in BUNDLED and erasekit.is_tinyworld("tinyworld-flux")
    rec = describe_model("tinyworld-flux")
    assert describe_model(str(pipeline_flux_dir())).bundled == "tinyworld-flux"  # its shipped folder, too
    assert (
        rec.defaults_key == defaults.model_key("tinyworld-flux") == "tinyworld-flux" != defaults.model_key("tinyworld")
    )
    assert rec.prior_prompts == "tinyworld"  # one world, one vocabulary
    g = flux.GENERATE_KW
    assert rec.generation == {
        "steps": g["num_inference_steps"],
        "guidance": g["true_cfg_scale"],
        "height": g["height"],
        "width": g["width"],
    }
    # every default of its own row says why it holds on this model
    row = defaults.ERASEKIT["tinyworld-flux"]
    assert row and all(s.reason for settings in row.values() for s in settings.values())


@needs_flux
def test_the_bundled_model_renders_with_true_cfg_as_plain_diffusers_does(bundled):
    """Loaded by erasekit, tinyworld-flux declares its 32 px and T5 length; erasekit's generate path (guidance 5)
    gives the same pixels as plain diffusers called with GENERATE_KW, and not those of scale 1."""
    pipe = bundled
    fam = identify(pipe)
    assert fam.max_sequence_length(pipe) == flux.GENERATE_KW["max_sequence_length"]
    assert pipe.default_sample_size * pipe.vae_scale_factor == flux.SIZE
    steps, scale = flux.GENERATE_KW["num_inference_steps"], flux.GENERATE_KW["true_cfg_scale"]
    ours = _pixels(generate_pairs(pipe, [("a striped red circle", 3)], steps=steps, guidance=scale))
    plain = pipe("a striped red circle", generator=torch.Generator().manual_seed(3), **flux.GENERATE_KW).images
    assert ours.shape == (1, flux.SIZE, flux.SIZE, 3) and np.array_equal(ours, _pixels(plain))
    assert not np.array_equal(
        ours, _pixels(generate_pairs(pipe, [("a striped red circle", 3)], steps=steps, guidance=1.0))
    )


@needs_flux
def test_the_runner_renders_prompt_and_embedding_items_alike(bundled):
    """An item conditioned by embeddings (an attack's shifted item, here shifted by zero) renders as its prompt does:
    the negative branch goes in as the empty prompt's embeddings, at the family's T5 length."""
    from erasekit.evaluate.render import GenerationSettings, render_batch
    from erasekit.evaluate.suites import SuiteItem
    from erasekit.models.record import describe_model

    pipe = bundled
    settings = GenerationSettings(**describe_model("tinyworld-flux").generation)
    cond = identify(pipe).encode(pipe, ["x"])
    zero = {"prompt_embeds": torch.zeros_like(cond.embeds[0]), "pooled_prompt_embeds": torch.zeros_like(cond.pooled[0])}
    prompts = ["a dotted blue square", "a striped red circle"]
    by_prompt = render_batch(pipe, [SuiteItem(p, i) for i, p in enumerate(prompts)], {}, settings)
    shifted = [SuiteItem(p, i, shift=("zero", 1.0)) for i, p in enumerate(prompts)]
    by_embeds = render_batch(pipe, shifted, {"zero": zero}, settings)
    assert np.abs(_pixels(by_prompt) - _pixels(by_embeds)).max() <= 1  # the same images (float rounding aside)


@needs_flux
@pytest.mark.slow
def test_bench_on_tinyworld_flux_records_its_generation_and_refuses_denoiser_methods(tmp_path, capsys):
    from erasekit.cli import main

    out = tmp_path / "b"
    rc = main(
        ["bench", "--model", "tinyworld-flux", "--methods", "uce", "--concepts", "circle", "--n", "2",
         "--suite", "target", "--bootstrap", "10", "--out", str(out), "--cache", str(tmp_path / "c"), "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    cfg = json.loads((out / "results.json").read_text())["config"]
    g = flux.GENERATE_KW
    assert cfg["settings"]["steps"] == g["num_inference_steps"] and cfg["settings"]["guidance"] == g["true_cfg_scale"]
    assert cfg["settings"]["height"] == cfg["settings"]["width"] == g["height"]
    assert cfg["generation_call"] == {
        "true_cfg_scale": "<guidance>",
        "negative_prompt": [""],
        "max_sequence_length": g["max_sequence_length"],
    }
    assert cfg["defaults"]["uce"]["model"] == "tinyworld-flux"
    capsys.readouterr()
    rc = main(
        ["bench", "--model", "tinyworld-flux", "--methods", "ace", "--concepts", "circle", "--n", "2",
         "--suite", "target", "--out", str(tmp_path / "r"), "--cache", str(tmp_path / "c"), "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "runs the denoiser" in err and "closed-form method" in err and len(err.strip().splitlines()) == 1
