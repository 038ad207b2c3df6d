"""tinyworld-xl: the SDXL-architecture sibling of tinyworld (issue 11)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import erasekit
from erasekit import tinyworld
from erasekit.tinyworld import weights_dir, weights_xl_dir, xl

SHIPPED = (weights_xl_dir() / "pipeline" / "model_index.json").is_file()
needs_xl = pytest.mark.skipif(not SHIPPED, reason="tinyworld-xl weights not shipped")


def _folder_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- warm start (no weights needed beyond
# tinyworld)
def _sd1():
    return tinyworld.load_pipeline()


@torch.no_grad()
def test_warm_start_reproduces_tinyworld_given_the_folded_context():
    """The map is exact up to the LayerNorm fold: feeding the XL UNet the context the fold
    assumes (``A^-1 (LN(h) - b)`` in text_encoder_2's columns, anything in text_encoder's, any pooled
    embedding) gives tinyworld's noise prediction, because the new inputs and layers start at zero."""
    from erasekit.models.tokenizer import build_clip_tokenizer
    from erasekit.tinyworld import world

    sd1 = _sd1()
    tok = build_clip_tokenizer(77)
    caps = world.sample_batch(64, np.random.default_rng(0), 32, synonyms=True)[2] + [""]
    te1, te2, unet, resid = xl.warm_start(sd1.unet, sd1.text_encoder, tok, caps)
    assert 0 < resid < 0.5
    A, b, _ = xl.layernorm_linear_fit(sd1.text_encoder, tok, caps)
    prompts = ["a striped red circle", "an illustration of a jade box with dots"]
    ids = tok(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    y = sd1.text_encoder(ids).last_hidden_state  # LN(h), (2, 77, 128)
    g = torch.linalg.solve(A.double(), (y - b).double().transpose(1, 2)).transpose(1, 2).float()
    ctx = torch.cat([torch.randn(2, 77, xl.TE1_HIDDEN), g], -1)  # text_encoder's columns: anything
    z, t = torch.randn(2, 4, 16, 16), torch.tensor([100, 700])
    ref = sd1.unet(z, t, y).sample
    out = unet(
        z, t, ctx, added_cond_kwargs={"text_embeds": torch.randn(2, xl.TE2_HIDDEN), "time_ids": xl.time_ids(2)}
    ).sample
    assert (out - ref).norm() / ref.norm() < 1e-4
    # and text_encoder_2's context is tinyworld's pre-LayerNorm state before the distillation
    ctx_xl, pooled = xl.encode(te1, te2, ids, ids)
    h = sd1.text_encoder(ids, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(ctx_xl[..., xl.TE1_HIDDEN :], h, atol=1e-5) and pooled.shape == (2, xl.TE2_HIDDEN)


@pytest.mark.slow
@torch.no_grad()
def test_warm_start_with_distillation_matches_tinyworld_within_5_percent():
    from erasekit.models.tokenizer import build_clip_tokenizer
    from erasekit.tinyworld import world
    from erasekit.tinyworld.train_xl import caption_batch

    sd1 = _sd1()
    tok = build_clip_tokenizer(77)
    caps = world.sample_batch(128, np.random.default_rng(0), 32, synonyms=True)[2] + [""]
    te1, te2, unet, _ = xl.warm_start(
        sd1.unet, sd1.text_encoder, tok, caps, distill_steps=300, caption_fn=caption_batch
    )
    prompts = world.sample_batch(16, np.random.default_rng(5), 32, synonyms=True, split="eval")[2]
    ids = tok(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ctx, pooled = xl.encode(te1, te2, ids, ids)
    z, t = torch.randn(16, 4, 16, 16), torch.randint(0, 1000, (16,))
    ref = sd1.unet(z, t, sd1.text_encoder(ids)[0]).sample
    out = unet(z, t, ctx, added_cond_kwargs={"text_embeds": pooled, "time_ids": xl.time_ids(16)}).sample
    assert (out - ref).norm() / ref.norm() < 0.05


def test_xl_training_script_runs_end_to_end_and_writes_a_loadable_sdxl_folder(tmp_path):
    """`train --arch xl` on a minimal budget: warm start, distillation, diffusion steps with both
    dropouts, a folder plain diffusers loads as StableDiffusionXLPipeline, the log and the card."""
    from diffusers import StableDiffusionXLPipeline

    from erasekit.tinyworld import train

    train.main(
        [
            "--arch",
            "xl",
            "--init-from",
            str(weights_dir()),
            "--out",
            str(tmp_path),
            "--steps",
            "2",
            "--distill-steps",
            "2",
            "--minutes",
            "5",
            "--batch",
            "4",
            "--threads",
            "2",
        ]
    )
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tmp_path / "pipeline"), local_files_only=True)
    assert pipe.unet.config.addition_embed_type == "text_time" and pipe.unet.config.cross_attention_dim == xl.CONTEXT
    out = pipe("a red circle", num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["diffusion"]["steps"] == 2 and log["init_from"]["diffusion"]["steps"] > 0
    assert (tmp_path / "preview.png").is_file() and "--arch xl" in (tmp_path / "MODEL_CARD.md").read_text()


# ----------------------------------------------------------------------------- the shipped folder
@needs_xl
def test_shipped_folder_is_an_sdxl_pipeline_and_all_weights_fit_the_budget():
    pdir = weights_xl_dir() / "pipeline"
    idx = json.loads((pdir / "model_index.json").read_text())
    assert idx["_class_name"] == "StableDiffusionXLPipeline"
    assert idx["text_encoder"][1] == "CLIPTextModel" and idx["text_encoder_2"][1] == "CLIPTextModelWithProjection"
    unet = json.loads((pdir / "unet" / "config.json").read_text())
    assert unet["addition_embed_type"] == "text_time" and unet["cross_attention_dim"] == xl.CONTEXT
    assert max(np.ravel(unet["transformer_layers_per_block"])) > 1
    total = _folder_bytes(weights_dir()) + _folder_bytes(weights_xl_dir())  # tinyworld + judge + tinyworld-xl
    assert total < 75e6, total
    assert (weights_xl_dir() / "MODEL_CARD.md").is_file()


@needs_xl
@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float16])
def test_plain_diffusers_loads_and_generates(dtype, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import StableDiffusionXLPipeline

    kw = {} if dtype is None else {"torch_dtype": dtype}
    pipe = StableDiffusionXLPipeline.from_pretrained(str(weights_xl_dir() / "pipeline"), local_files_only=True, **kw)
    want = dtype or torch.float32
    assert {p.dtype for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2) for p in m.parameters()} == {want}
    kv = [m for n, m in pipe.unet.named_modules() if n.endswith("attn2.to_k")]
    res = {m.weight.shape[0] for m in kv}
    assert len(res) >= 2 and all(m.in_features == xl.CONTEXT for m in kv)  # cross-attention at two or more widths
    g = torch.Generator().manual_seed(0)
    out = pipe(
        ["a striped red circle", "a blue square"],
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=g,
        output_type="np",
    ).images
    assert out.shape == (2, 32, 32, 3) and np.isfinite(out).all() and out.std() > 0.01


@pytest.fixture(scope="module")
def xl_world():
    from erasekit.tinyworld.judge import TinyworldJudge

    return erasekit.load_pipeline("tinyworld-xl"), TinyworldJudge.load()


@needs_xl
def test_judge_reads_xl_images_as_prompted(xl_world):
    from erasekit.tinyworld.validity import generate, prompt_set, score

    pipe, judge = xl_world
    prompts, labels = prompt_set("canonical", 12, seed=1)
    res = score(judge, generate(pipe, prompts, seed=0, steps=12), labels)
    assert res["shape"] >= 0.75 and res["color"] >= 0.75, res


@needs_xl
@torch.no_grad()
def test_pooled_conditionings_reproduce_the_pipeline_and_swap_one_path(xl_world):
    """The measurement's 'prompt + prompt' row is exactly what the pipeline does from the text;
    the swapped rows change only the path they name."""
    from erasekit.tinyworld.pooled import CONDITIONS, conditionings

    pipe, _ = xl_world
    prompts = ["a striped red circle", "a dotted blue star"]
    kw = conditionings(pipe, prompts)
    assert set(kw) == set(CONDITIONS)
    run = dict(num_inference_steps=3, guidance_scale=5.0, output_type="np")
    ref = pipe(prompts, generator=torch.Generator().manual_seed(3), **run).images
    same = pipe(**kw["prompt context + prompt pooled"], generator=torch.Generator().manual_seed(3), **run).images
    np.testing.assert_allclose(same, ref, atol=1e-5)
    a, b = kw["prompt context + neutral pooled"], kw["neutral context + prompt pooled"]
    assert torch.equal(a["prompt_embeds"], kw["prompt context + prompt pooled"]["prompt_embeds"])
    assert torch.equal(b["pooled_prompt_embeds"], kw["prompt context + prompt pooled"]["pooled_prompt_embeds"])
    assert not torch.equal(a["pooled_prompt_embeds"], b["pooled_prompt_embeds"])


@needs_xl
def test_concept_vector_covers_context_and_pooled_embedding(xl_world):
    from erasekit.evaluate.attacks import concept_vector, tinyworld_pairs

    pipe, _ = xl_world
    with_c, without = tinyworld_pairs("circle", 4)
    vec = concept_vector(pipe, with_c, without)
    assert set(vec) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert vec["prompt_embeds"].shape == (77, xl.CONTEXT) and vec["pooled_prompt_embeds"].shape == (xl.TE2_HIDDEN,)
    assert vec["pooled_prompt_embeds"].norm() > 0


@needs_xl
def test_cli_accepts_tinyworld_xl(tmp_path, capsys):
    from erasekit.cli import main

    out = tmp_path / "e.safetensors"
    assert (
        main(
            [
                "erase",
                "--model",
                "tinyworld-xl",
                "--method",
                "uce",
                "--erase",
                "circle",
                "--kind",
                "object",
                "--preserve",
                "square",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    edit = erasekit.load_edit(out, erasekit.load_pipeline("tinyworld-xl"), apply=False)
    assert edit.method == "uce" and edit.layers
