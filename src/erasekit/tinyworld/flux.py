"""tinyworld-flux: the FLUX.1 architecture on the tinyworld world (issue 29).

A genuine diffusers ``FluxPipeline``:

* ``tokenizer`` / ``text_encoder``: tinyworld's trained ``CLIPTextModel`` and the real CLIP BPE
  tokenizer (copied, frozen); its pooled output (the final-LayerNorm state at the end token) enters
  the transformer through ``time_text_embed`` (pooled_projections), as CLIP-L does in FLUX.1;
* ``tokenizer_2`` / ``text_encoder_2``: a tiny ``T5EncoderModel`` (T5 v1.1 layout: gated-GELU
  feed-forward, RMS norms, relative position buckets) over a word vocabulary that covers the
  world's captions (:func:`t5_vocabulary`), read by ``T5TokenizerFast``; its last hidden states are
  the transformer's text tokens (``context_embedder``), as T5-XXL's are in FLUX.1;
* ``transformer``: ``FluxTransformer2DModel`` with double-stream (MM-DiT) and single-stream blocks,
  3-axis RoPE, latents packed 2x2 (4 channels x 2 x 2 = 16 per token; 8x8 = 64 tokens at 32 px);
* ``vae``: tinyworld's ``AutoencoderKL`` with FLUX's latent normalisation (``shift_factor`` and
  ``scaling_factor`` measured on renders);
* ``scheduler``: ``FlowMatchEulerDiscreteScheduler`` with FLUX's resolution-dependent shift.

True classifier-free guidance (FLUX.1-schnell-like: no guidance embedding; the pipeline's
``true_cfg_scale`` with ``negative_prompt=""``), trained with caption dropout. See :data:`GENERATE_KW`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

SIZE = 32
MAX_TOKENS_CLIP = 77
T5_MAX_TOKENS = 32  # the T5 length used in training; pass it as the pipeline's max_sequence_length
WIDTH = 192  # transformer width = heads x head_dim
HEAD_DIM = 32
N_DOUBLE = 3
N_SINGLE = 3
AXES_DIMS_ROPE = (8, 12, 12)  # FLUX: (16, 56, 56) for head_dim 128; (index, row, column) axes, sum = HEAD_DIM
T5_D_MODEL = 128
T5_LAYERS = 2
T5_D_FF = 256
# FLUX.1's scheduler config (base/max image sequence lengths and shifts): the shift mu follows the
# number of image tokens, so training samples timesteps with the mu that inference will use.
SCHEDULER_KW: dict[str, Any] = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
# How the pipeline should be called (the validity measurement and the tests use these)
GENERATE_KW: dict[str, Any] = dict(
    height=SIZE,
    width=SIZE,
    num_inference_steps=20,
    true_cfg_scale=5.0,  # chosen on 96 prompts per set with seeds the validity measurement does not use
    negative_prompt="",
    max_sequence_length=T5_MAX_TOKENS,
)


# ----------------------------------------------------------------------------- the T5 tokenizer
def t5_vocabulary() -> list[str]:
    """Every word and punctuation mark of the world's captions (train *and* held-out templates, all
    synonyms), sorted: a tokenizer covers its language; held-out templates stay unseen in training."""
    from . import world

    texts = list(world.TRAIN_TEMPLATES) + list(world.EVAL_TEMPLATES) + ["a an shape"]
    for d in (world.SHAPES, world.COLORS, world.PATTERNS):
        for names in d.values():
            texts += names
    units: set[str] = set()
    for t in texts:
        units.update(word_units(re.sub(r"\{np(_bare)?\}", " ", t)))
    return sorted(units)


def word_units(text: str) -> list[str]:
    """The units the T5 tokenizer splits into: runs of letters, and single other characters."""
    return re.findall(r"[a-z]+|[^a-z\s]", text)


def build_t5_tokenizer():
    """A ``T5TokenizerFast`` (Unigram over whole words, T5's Metaspace pre-tokenizer, T5's special ids
    <pad>=0, </s>=1, <unk>=2, no sentinels). Case-sensitive, as T5's: the world's captions are lower case."""
    from transformers import T5TokenizerFast

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    for w in t5_vocabulary():
        if w.isalpha():
            vocab += [("▁" + w, -1.0), (w, -2.0)]  # word start, and after a hyphen ("three-sided")
        else:
            vocab.append((w, -1.0))
    vocab.append(("▁", -3.0))
    # model_max_length: the T5 length the model is trained and called at (the FLUX family encodes at it)
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_TOKENS)


# ----------------------------------------------------------------------------- models
def make_t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    kw: dict[str, Any] = dict(
        vocab_size=vocab_size,
        d_model=T5_D_MODEL,
        d_kv=T5_D_MODEL // 4,
        d_ff=T5_D_FF,
        num_layers=T5_LAYERS,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX's T5-XXL
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(T5Config(**kw))


def make_transformer(pooled_dim: int = 128):
    from diffusers import FluxTransformer2DModel

    tr = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x 2 x 2 packing
        num_layers=N_DOUBLE,
        num_single_layers=N_SINGLE,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=WIDTH // HEAD_DIM,
        joint_attention_dim=T5_D_MODEL,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=False,
        axes_dims_rope=AXES_DIMS_ROPE,
    )
    adaln_zero(tr)
    return tr


@torch.no_grad()
def adaln_zero(tr) -> None:
    """DiT's adaLN-Zero initialisation (Peebles & Xie, 2023): every modulation layer (shift, scale,
    gate) and the output projection start at zero, so each block starts as the identity and the
    model's first output is zero. Found by type, not by name."""
    from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle

    for m in tr.modules():
        if isinstance(m, (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous)):
            m.linear.weight.zero_()
            m.linear.bias.zero_()
    tr.proj_out.weight.zero_()
    tr.proj_out.bias.zero_()


# ----------------------------------------------------------------------------- latents and text
def mu_for(image_seq_len: int) -> float:
    """FLUX's shift parameter mu at this many image tokens (``FluxPipeline``'s ``calculate_shift``)."""
    k = SCHEDULER_KW
    m = (k["max_shift"] - k["base_shift"]) / (k["max_image_seq_len"] - k["base_image_seq_len"])
    return image_seq_len * m + k["base_shift"] - m * k["base_image_seq_len"]


def shift_sigma(sigma: torch.Tensor, mu: float) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's exponential time shift: sigma' = e^mu / (e^mu + 1/sigma - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))


def image_ids(device=None) -> torch.Tensor:
    """(64, 3) RoPE positions of the packed 8x8 latent tokens, as ``FluxPipeline`` makes them."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, SIZE // 4, SIZE // 4, device, torch.float32)


def pack(z: torch.Tensor) -> torch.Tensor:
    """(n, 4, 16, 16) latents -> (n, 64, 16) tokens, as ``FluxPipeline._pack_latents``."""
    from diffusers import FluxPipeline

    n, c, h, w = z.shape
    return FluxPipeline._pack_latents(z, n, c, h, w)


@torch.no_grad()
def latent_stats(vae, n: int = 512, seed: int = 99) -> tuple[float, float]:
    """(shift_factor, scaling_factor) so that (z - shift) * scale has mean 0 and std 1 on renders."""
    from . import world
    from ._images import to_tensor

    imgs, _, _ = world.sample_batch(n, np.random.default_rng(seed), SIZE)
    z = vae.encode(to_tensor(imgs, "cpu")).latent_dist.mean
    return float(z.mean()), float(1.0 / (z - z.mean()).std())


def t5_ids(tok, captions: list[str], length: int = T5_MAX_TOKENS) -> torch.Tensor:
    return tok(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


def clip_ids(tok, captions: list[str]) -> torch.Tensor:
    return tok(
        captions, padding="max_length", max_length=MAX_TOKENS_CLIP, truncation=True, return_tensors="pt"
    ).input_ids


# ----------------------------------------------------------------------------- T5 warm start
class _Spans:
    """For a caption, which CLIP positions hold each T5 word unit (CLIP splits words into BPE pieces)."""

    def __init__(self, clip_tok):
        self.clip_tok = clip_tok
        self.cache: dict[str, int] = {}

    def n_pieces(self, unit: str) -> int:
        if unit not in self.cache:
            self.cache[unit] = len(self.clip_tok(unit, add_special_tokens=False).input_ids)
        return self.cache[unit]

    def matrix(self, caption: str, length: int) -> torch.Tensor | None:
        """(length, 77) averaging matrix: T5 position i <- mean of its unit's CLIP pieces; the end token
        </s> <- CLIP's end token. None when the two tokenisations do not line up."""
        units = word_units(caption)
        if len(units) + 1 > length:
            return None
        counts = [self.n_pieces(u) for u in units]
        if 1 + sum(counts) + 1 > MAX_TOKENS_CLIP:
            return None
        M = torch.zeros(length, MAX_TOKENS_CLIP)
        pos = 1  # CLIP position 0 is the start token
        for i, c in enumerate(counts):
            M[i, pos : pos + c] = 1.0 / c
            pos += c
        M[len(units), pos] = 1.0  # </s> <- CLIP's end token
        return M


@torch.enable_grad()
def distill_t5(
    t5, t5_tok, clip, clip_tok, steps: int, caption_fn, seed: int = 0, batch: int = 64, lr: float = 2e-3, log=None
) -> tuple[float, float]:
    """Warm start of the T5 encoder: regress its last hidden state at each word onto tinyworld's trained
    CLIP hidden state of the same word (mean over the word's BPE pieces; the end token onto CLIP's),
    relative MSE, AdamW with cosine decay, fresh training captions each step. CLIP stays fixed.

    The transformer then starts from text tokens that already separate the world's concepts and tie
    synonyms together as tinyworld's encoder learned to.
    """
    rng = np.random.default_rng(seed + 7)
    spans = _Spans(clip_tok)
    opt = torch.optim.AdamW(t5.parameters(), lr=lr, weight_decay=0.0)
    t5.train()
    first = last = float("nan")
    for step in range(steps):
        caps = caption_fn(batch, rng)
        pairs = [(c, m) for c in caps if (m := spans.matrix(c, T5_MAX_TOKENS)) is not None]
        caps = [c for c, _ in pairs]
        M = torch.stack([m for _, m in pairs])  # (n, 32, 77)
        with torch.no_grad():
            y = clip(clip_ids(clip_tok, caps)).last_hidden_state  # (n, 77, 128)
            target = M @ y  # (n, 32, 128)
            mask = M.sum(-1) > 0  # (n, 32) positions with a target
        h = t5(t5_ids(t5_tok, caps)).last_hidden_state  # (n, 32, 128)
        loss = ((h - target) ** 2)[mask].mean() / (target[mask] ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step()
        first = loss.item() if step == 0 else first
        last = loss.item()
    t5.eval()
    if log:
        log(f"distilled T5 onto tinyworld's CLIP states: relative MSE {first:.4f} -> {last:.4f} in {steps} steps")
    return first, last


# ----------------------------------------------------------------------------- pipeline folder
def build_pipeline(vae, clip, clip_tok, t5, t5_tok, transformer):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_KW),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def save_pipeline_flux(folder: Path, vae, clip, t5, transformer):
    """Write the FluxPipeline folder (fp16 safetensors, configs saying float32), atomically."""
    import copy
    import shutil

    from erasekit.models.tokenizer import build_clip_tokenizer, write_clip_tokenizer_files

    from ._folders import configs_say_float32, fresh_tmp, swap_in

    tmp = fresh_tmp(folder)
    mods = [copy.deepcopy(m).to("cpu", torch.float16) for m in (vae, clip, t5, transformer)]
    pipe = build_pipeline(
        mods[0], mods[1], build_clip_tokenizer(MAX_TOKENS_CLIP), mods[2], build_t5_tokenizer(), mods[3]
    )
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(tmp / "tokenizer")
    write_clip_tokenizer_files(tmp / "tokenizer", model_max_length=MAX_TOKENS_CLIP)
    configs_say_float32(tmp, ("text_encoder", "text_encoder_2"))
    index_fast_tokenizer(tmp)
    swap_in(tmp, folder)


def index_fast_tokenizer(folder: Path) -> None:
    """Name ``tokenizer_2`` ``T5TokenizerFast`` in ``model_index.json``, as FLUX.1's folders do.

    transformers 5 saves it as ``T5Tokenizer`` (one class there); transformers 4 would then look for a
    SentencePiece ``spiece.model``, which this tokenizer (a ``tokenizer.json``) does not have.
    """
    import json

    path = Path(folder) / "model_index.json"
    index = json.loads(path.read_text())
    index["tokenizer_2"] = ["transformers", "T5TokenizerFast"]
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
