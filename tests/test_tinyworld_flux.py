"""tinyworld-flux: the FLUX.1-architecture sibling of tinyworld (issue 29)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from erasekit.tinyworld import flux, weights_dir, weights_flux_dir, weights_xl_dir, world

SHIPPED = (weights_flux_dir() / "pipeline" / "model_index.json").is_file()
needs_flux = pytest.mark.skipif(not SHIPPED, reason="tinyworld-flux weights not shipped")
ROOT = Path(__file__).resolve().parents[1]


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- pieces (no weights needed)
def test_t5_tokenizer_covers_every_caption_and_round_trips_through_from_pretrained(tmp_path):
    from transformers import T5TokenizerFast

    tok = flux.build_t5_tokenizer()
    tok.save_pretrained(str(tmp_path))
    loaded = T5TokenizerFast.from_pretrained(str(tmp_path))
    rng = np.random.default_rng(0)
    caps = [
        world.caption(s, c, p, rng, synonyms=syn, split=split)
        for s in world.SHAPE_NAMES
        for c in world.COLOR_NAMES
        for p in world.PATTERN_NAMES
        for syn in (False, "only")
        for split in ("train", "eval")
    ]
    ids = loaded(caps, padding="max_length", max_length=flux.T5_MAX_TOKENS).input_ids
    assert ids == tok(caps, padding="max_length", max_length=flux.T5_MAX_TOKENS).input_ids
    for cap, row in zip(caps, ids):
        n = len(flux.word_units(cap))
        assert loaded.unk_token_id not in row, cap  # every word is in the vocabulary
        assert row[n] == loaded.eos_token_id and all(t == loaded.pad_token_id for t in row[n + 1 :]), cap
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)  # T5's special ids


def test_time_shift_matches_the_scheduler_the_pipeline_uses():
    """Training samples t with FLUX's shift at 64 image tokens; the scheduler (independent code) must agree."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = flux.mu_for(64)
    assert mu == pytest.approx(calculate_shift(64, 256, 4096, 0.5, 1.15))
    sched = FlowMatchEulerDiscreteScheduler(**flux.SCHEDULER_KW)
    sigmas = np.linspace(1.0, 1 / 20, 20)
    sched.set_timesteps(sigmas=sigmas, mu=mu)
    ours = flux.shift_sigma(torch.tensor(sigmas, dtype=torch.float64), mu)
    torch.testing.assert_close(sched.sigmas[:-1].double(), ours, atol=1e-6, rtol=1e-6)


def test_packing_is_the_pipelines_and_inverts():
    from diffusers import FluxPipeline

    z = torch.randn(3, 4, 16, 16)
    tokens = flux.pack(z)  # (3, 64, 16)
    assert tokens.shape == (3, 64, 16)
    back = FluxPipeline._unpack_latents(tokens, flux.SIZE, flux.SIZE, 2)
    assert torch.equal(back, z)
    ids = flux.image_ids()
    assert ids.shape == (64, 3) and torch.equal(ids[:, 0], torch.zeros(64)) and ids[:, 1:].max() == 7


def test_adaln_zero_makes_a_fresh_transformer_output_zero():
    tr = flux.make_transformer(128)
    out = tr(
        hidden_states=torch.randn(2, 64, 16),
        encoder_hidden_states=torch.randn(2, 8, flux.T5_D_MODEL),
        pooled_projections=torch.randn(2, 128),
        timestep=torch.tensor([0.3, 0.9]),
        img_ids=flux.image_ids(),
        txt_ids=torch.zeros(8, 3),
        return_dict=False,
    )[0]
    assert out.shape == (2, 64, 16) and torch.count_nonzero(out) == 0


def test_checkpoint_round_trips_bit_exact(tmp_path):
    from erasekit.tinyworld.train_flux import load_ckpt, save_ckpt

    torch.manual_seed(0)
    t5 = flux.make_t5(40)  # tied embeddings: the checkpoint keeps each name
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(list(t5.parameters()) + list(lin.parameters()), lr=1e-3)
    (t5(torch.tensor([[3, 4, 1]])).last_hidden_state.sum() + lin(torch.randn(2, 4)).sum()).backward()
    opt.step()
    state = {"step": 7, "elapsed": 12.5, "loss_ema": 0.3, "rng_numpy": np.random.default_rng(1).bit_generator.state}
    save_ckpt(tmp_path / "c.safetensors", {"t5": t5, "lin": lin}, opt, state)
    expect_rng = torch.get_rng_state()
    torch.manual_seed(123)
    t5b, linb = flux.make_t5(40), torch.nn.Linear(4, 3)
    optb = torch.optim.AdamW(list(t5b.parameters()) + list(linb.parameters()), lr=5.0)
    got = load_ckpt(tmp_path / "c.safetensors", {"t5": t5b, "lin": linb}, optb)
    assert got == json.loads(json.dumps(state))
    for a, b in zip(
        list(t5.state_dict().values()) + list(lin.state_dict().values()),
        list(t5b.state_dict().values()) + list(linb.state_dict().values()),
    ):
        assert torch.equal(a, b)
    sa, sb = opt.state_dict(), optb.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for k in sa["state"][i]:
            assert torch.equal(torch.as_tensor(sa["state"][i][k]), torch.as_tensor(sb["state"][i][k]))
    assert torch.equal(torch.get_rng_state(), expect_rng)


@pytest.mark.slow
def test_train_cli_writes_a_flux_pipeline_and_resumes(tmp_path):
    from diffusers import FluxPipeline

    from erasekit.tinyworld.train import main

    common = ["--arch", "flux", "--init-from", str(weights_dir()), "--out", str(tmp_path), "--batch", "4"]
    common += ["--threads", "2", "--device", "cpu", "--minutes", "5", "--save-every", "10"]
    main([*common, "--steps", "2", "--distill-steps", "2"])
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["diffusion"]["steps"] == 2 and (tmp_path / "ckpt.safetensors").is_file()
    main([*common, "--steps", "3", "--resume"])
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["diffusion"]["steps"] == 3 and len(log["resumed"]) == 1
    pipe = FluxPipeline.from_pretrained(str(tmp_path / "pipeline"), local_files_only=True)
    out = pipe("a red circle", output_type="np", **{**flux.GENERATE_KW, "num_inference_steps": 2}).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    assert "--arch flux" in (tmp_path / "MODEL_CARD.md").read_text()


# ----------------------------------------------------------------------------- the shipped folder
_PLAIN = r"""
import json, sys
import torch
from diffusers import FluxPipeline
dtype = {"none": None, "bf16": torch.bfloat16}[sys.argv[2]]
kw = {} if dtype is None else {"torch_dtype": dtype}
pipe = FluxPipeline.from_pretrained(sys.argv[1], local_files_only=True, **kw)
pipe.set_progress_bar_config(disable=True)
out = pipe(["a striped red circle", "a dotted blue star"], height=32, width=32, num_inference_steps=3,
           true_cfg_scale=5.0, negative_prompt="", max_sequence_length=32,
           generator=torch.Generator().manual_seed(0), output_type="np").images
tr = pipe.transformer
print(json.dumps({
    "erasekit_imported": any(m.split(".")[0] == "erasekit" for m in sys.modules),
    "dtypes": sorted({str(m.dtype) for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae)}),
    "classes": [type(x).__name__ for x in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2,
                                           pipe.tokenizer_2, pipe.scheduler)],
    "blocks": [len(tr.transformer_blocks), len(tr.single_transformer_blocks)],
    "guidance_embeds": tr.config.guidance_embeds,
    "shape": list(out.shape), "finite": bool(torch.isfinite(torch.from_numpy(out)).all()), "std": float(out.std()),
}))
"""


@needs_flux
@pytest.mark.parametrize("dtype", ["none", "bf16"])
def test_plain_diffusers_loads_and_generates_without_erasekit(dtype):
    """The shipped folder is a FluxPipeline that plain diffusers loads and runs (no erasekit import)."""
    proc = subprocess.run(
        [sys.executable, "-c", _PLAIN, str(weights_flux_dir() / "pipeline"), dtype],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not res["erasekit_imported"]
    assert res["dtypes"] == ["torch.float32" if dtype == "none" else "torch.bfloat16"]
    assert (
        res["classes"]
        == [
            "FluxTransformer2DModel",
            "CLIPTextModel",
            "T5EncoderModel",
            "T5Tokenizer",  # transformers 5: T5TokenizerFast is this class
            "FlowMatchEulerDiscreteScheduler",
        ]
        or res["classes"][3] == "T5TokenizerFast"
    )
    assert min(res["blocks"]) >= 2 and res["guidance_embeds"] is False
    assert res["shape"] == [2, 32, 32, 3] and res["finite"] and res["std"] > 0.01  # a picture, not a blank


@needs_flux
def test_shipped_folder_configs_and_the_package_size_bound():
    pdir = weights_flux_dir() / "pipeline"
    idx = json.loads((pdir / "model_index.json").read_text())
    assert idx["_class_name"] == "FluxPipeline"
    assert idx["tokenizer_2"] == ["transformers", "T5TokenizerFast"] and idx["text_encoder_2"][1] == "T5EncoderModel"
    vae = json.loads((pdir / "vae" / "config.json").read_text())
    assert (
        vae["shift_factor"] is not None
        and vae["latent_channels"] * 4 == json.loads((pdir / "transformer" / "config.json").read_text())["in_channels"]
    )
    assert all(f.suffix in {".json", ".safetensors", ".txt"} for f in pdir.rglob("*") if f.is_file())
    # the whole package's shipped weights stay under 110 MB
    total = sum(_folder_bytes(d) for d in (weights_dir(), weights_xl_dir(), weights_flux_dir()))
    assert total < 110e6, total
    assert (weights_flux_dir() / "MODEL_CARD.md").is_file() and (weights_flux_dir() / "train_log.json").is_file()


def test_packaging_includes_the_flux_folder():
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; the package supports 3.10)
    section = text[text.index("[tool.setuptools.package-data]") :].split("\n[", 1)[0]
    line = next(x for x in section.splitlines() if x.startswith("erasekit"))
    assert '"tinyworld/weights_flux/**/*"' in line


def _card_validity() -> dict:
    """The JSON measurement inside the shipped card's validity section."""
    text = (weights_flux_dir() / "MODEL_CARD.md").read_text()
    section = text[text.index("<!-- validity:start -->") : text.index("<!-- validity:end -->")]
    return json.loads(section.split("```json", 1)[1].split("```", 1)[0])


@needs_flux
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")
def test_validity_on_a_small_seeded_sample_agrees_with_the_card_and_the_bar():
    """48 prompts per set (canonical; synonyms + held-out templates) through the pipeline call the card
    documents. The shares must agree with the card's full measurement (288 per set) within three binomial
    standard errors, and the bar must hold (within one standard error) exactly when the card says it does;
    a card that says it does not must show the miss (✗)."""
    from erasekit.tinyworld import load_pipeline_flux
    from erasekit.tinyworld.judge import TinyworldJudge
    from erasekit.tinyworld.validity import BAR_CANONICAL, BAR_GAP, call_kwargs, generate, prompt_set, score

    card = _card_validity()
    meta = card["meta"]
    pipe, judge = load_pipeline_flux(), TinyworldJudge.load()
    n, res = 48, {}
    for kind in ("canonical", "synonym_heldout"):
        prompts, labels = prompt_set(kind, n, seed=meta["seed"] + 1)
        kw = call_kwargs("tinyworld-flux", meta["guidance"])
        imgs = generate(pipe, prompts, seed=meta["seed"], steps=meta["steps"], call_kw=kw)
        res[kind] = score(judge, imgs, labels)

    def se(p: float) -> float:
        return max(float(np.sqrt(p * (1 - p) / n)), 1 / n)

    for kind in res:
        for a in BAR_CANONICAL:
            assert abs(res[kind][a] - card[kind][a]) <= 3 * se(card[kind][a]), (kind, a, res, card[kind])
    if meta["meets_bar"]:
        for a, bar in BAR_CANONICAL.items():
            assert res["canonical"][a] >= bar - se(bar), res
            assert res["synonym_heldout"][a] >= res["canonical"][a] - BAR_GAP - 2 * se(bar), res
    else:
        text = (weights_flux_dir() / "MODEL_CARD.md").read_text()
        assert "✗" in text.split("<!-- validity:start -->", 1)[1].split("<!-- validity:end -->", 1)[0]


@needs_flux
@torch.no_grad()
def test_pooled_measurement_reproduces_the_pipeline_and_its_site_groups_split_the_edit():
    """The pooled-path measurement's 'prompt + prompt' row renders exactly what FluxPipeline renders from the text
    (true CFG against "", T5 length 32); the swapped rows change only the path they name; the site groups of the
    edit table partition UCE's layers between the T5 site and the pooled site."""
    import erasekit
    from erasekit.evaluate.bench import tinyworld_concept_set
    from erasekit.tinyworld import load_pipeline_flux
    from erasekit.tinyworld.pooled import SITE_GROUPS, conditionings, group_layers, render
    from erasekit.tinyworld.validity import call_kwargs

    torch.set_num_threads(1)
    pipe = load_pipeline_flux()
    call_kw = call_kwargs("tinyworld-flux")
    prompts = ["a striped red circle", "a dotted blue star"]
    kw = conditionings(pipe, prompts, call_kw["max_sequence_length"])
    g = torch.Generator().manual_seed(0 * 100003)
    ref = pipe(prompts, num_inference_steps=3, generator=g, output_type="np", **call_kw).images
    ref = (np.clip(ref, 0, 1) * 255).round().astype(np.uint8)
    same = render(pipe, kw["prompt context + prompt pooled"], 3, 0, 48, call_kw)
    assert np.abs(same.astype(int) - ref.astype(int)).max() <= 1
    a, b = kw["prompt context + neutral pooled"], kw["neutral context + prompt pooled"]
    full = kw["prompt context + prompt pooled"]
    assert torch.equal(a["prompt_embeds"], full["prompt_embeds"])
    assert torch.equal(b["pooled_prompt_embeds"], full["pooled_prompt_embeds"])
    assert not torch.equal(a["pooled_prompt_embeds"], b["pooled_prompt_embeds"])
    edit = erasekit.erase(pipe, method="uce", concepts=tinyworld_concept_set("circle"), progress=False)
    t5 = group_layers(edit, SITE_GROUPS["T5 site only (context_embedder)"])
    pooled = group_layers(edit, SITE_GROUPS["pooled site only (text_embedder)"])
    assert t5 and pooled and not t5 & pooled and t5 | pooled == set(edit.layers)


def test_shape_weights_change_only_the_shape_distribution_and_bad_weights_are_refused():
    import argparse

    from erasekit.tinyworld.train import _shape_weights

    w = _shape_weights("star=3,cross=2")
    p = np.array([w.get(s, 1.0) for s in world.SHAPE_NAMES])
    p = p / p.sum()
    lab = world.sample_labels(60000, np.random.default_rng(0), p)
    freq = np.bincount(lab.shape, minlength=len(world.SHAPE_NAMES)) / 60000
    np.testing.assert_allclose(freq, p, atol=0.01)
    np.testing.assert_allclose(np.bincount(lab.color) / 60000, 1 / len(world.COLOR_NAMES), atol=0.01)
    for bad in ("blob=2", "star=0", "star=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _shape_weights(bad)
