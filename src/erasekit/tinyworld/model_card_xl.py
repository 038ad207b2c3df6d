"""MODEL_CARD.md of tinyworld-xl (written by ``train --arch xl``;
validity filled in by ``validity --model tinyworld-xl``)."""

from __future__ import annotations

from pathlib import Path

from . import xl
from ._training import CARD_VALIDITY_END, CARD_VALIDITY_START

POOLED_START = "<!-- pooled:start -->"
POOLED_END = "<!-- pooled:end -->"


def _keep(old: str, start: str, end: str, default: str) -> str:
    if start in old and end in old:
        return old[old.index(start) : old.index(end) + len(end)]
    return f"{start}\n{default}\n{end}"


def write_model_card_xl(out: Path, info: dict):
    card = Path(out) / "MODEL_CARD.md"
    old = card.read_text() if card.exists() else ""
    validity = _keep(
        old,
        CARD_VALIDITY_START,
        CARD_VALIDITY_END,
        "_Not measured yet: run `python -m erasekit.tinyworld.validity --model tinyworld-xl`._",
    )
    pooled = _keep(old, POOLED_START, POOLED_END, "_Not measured yet: run `python -m erasekit.tinyworld.pooled`._")
    d, i = info.get("diffusion", {}), info.get("init_from", {})
    sd1_min = i.get("total_minutes") or 0
    total = info.get("total_minutes", 0)
    text = f"""# tinyworld-xl — model card

erasekit's bundled **SDXL-architecture** model (issue 11): a genuine diffusers
`StableDiffusionXLPipeline` trained on the tinyworld world (same shapes, colours, patterns,
synonyms and held-out templates as tinyworld; see `../weights/MODEL_CARD.md`). Its judge is
tinyworld's (`erasekit.tinyworld.TinyworldJudge.load()`).

## Architecture
| part | details | parameters |
|---|---|---|
| tokenizer, tokenizer_2 | the real CLIP BPE tokenizer (49,408 tokens, max length {xl.MAX_TOKENS}); both pad with \
`<\\|endoftext\\|>` (SDXL's second pads with `!`) | – |
| text_encoder | `CLIPTextModel`, hidden {xl.TE1_HIDDEN}, 2 layers; penultimate state -> context | \
{d.get("params_text", 0):,} |
| text_encoder_2 | `CLIPTextModelWithProjection`, hidden {xl.TE2_HIDDEN}, 3 layers; penultimate state -> context, \
projected pooled output -> `add_embedding` | {d.get("params_text_2", 0):,} |
| UNet | `UNet2DConditionModel`, channels (48, 96, 144), `addition_embed_type="text_time"` (pooled {xl.TE2_HIDDEN}-d + \
6 micro-conditioning ids x {xl.ADD_TIME_DIM}), context {xl.CONTEXT}-d (= {xl.TE1_HIDDEN} + {xl.TE2_HIDDEN}, as SDXL's \
768 + 1280); cross-attention at 8x8 (2 transformer layers per block), 4x4 (1) and mid (1) | \
{d.get("params_unet", 0):,} |
| VAE | tinyworld's `AutoencoderKL` (fp16 copy) | – |
| scheduler | DPMSolverMultistep (use 20 steps, guidance 5); trained with DDPM, epsilon prediction | – |

Pipeline folder: {info.get("sizes_mb", {}).get("pipeline", 0):.1f} MB (fp16 safetensors; the configs say float32,
so `StableDiffusionXLPipeline.from_pretrained(path)` with no dtype loads in float32).
`force_zeros_for_empty_prompt` is False: the unconditional branch is the encoded empty prompt, as trained.
Micro-conditioning ids were constant in training ({xl.TIME_IDS}); other sizes / crops are out of distribution.

## Training
Command: `{info.get("command", "")}`
Hardware: {info.get("hardware", "")}; torch threads: {info.get("threads", "")}. No GPU.
1. **Warm start** from tinyworld ({sd1_min:.0f} min of training, `{i.get("command", "")}`) by an output-preserving map
   (`erasekit.tinyworld.xl.warm_start`): text_encoder_2's embeddings and first two layers are tinyworld's encoder;
   tinyworld's final LayerNorm (which SDXL's penultimate-state context skips) is folded into the K/V columns by an \
affine
   fit, and text_encoder_2's first two layers are then regressed for a few hundred steps so that the fold is exact on
   prompts; text_encoder's columns of K/V, the new transformer layers and `add_embedding`'s output layer start at zero.
   {info.get("warm_start_minutes", 0):.1f} min.
2. **Fine-tuning** of UNet + both text encoders jointly, pooled path on (AdamW lr {d.get("lr", 0)}, new parts \
x{d.get("new_lr_mult", 0)},
   warmup + cosine, min-SNR-5, bf16 autocast, EMA shipped): {d.get("steps", 0)} steps of batch {d.get("batch", 0)} in
   {d.get("seconds", 0) / 60:.1f} min; final loss (EMA) {d.get("loss_ema", 0)}. Conditioning dropout per sample: \
context and
   pooled both replaced by the empty prompt's {d.get("p_uncond", 0):.0%} (classifier-free guidance), the context alone
   {d.get("p_drop_context", 0):.0%}, the pooled embedding alone {d.get("p_drop_pooled", 0):.0%} (so that the pooled path
   carries the caption on its own).
- wall time of this run {total:.1f} min; with tinyworld's training {total + sd1_min:.1f} min.

## Validity
{validity}

## The pooled path
{pooled}
"""
    card.write_text(text)
