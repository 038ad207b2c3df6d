"""MODEL_CARD.md of tinyworld-flux (written by ``train --arch flux``;
validity filled in by ``validity --model tinyworld-flux``)."""

from __future__ import annotations

from pathlib import Path

from . import flux
from ._training import CARD_VALIDITY_END, CARD_VALIDITY_START
from .model_card_xl import _keep

PADDING_START = "<!-- padding:start -->"
PADDING_END = "<!-- padding:end -->"


def write_model_card_flux(out: Path, info: dict) -> Path:
    """Write ``out/MODEL_CARD.md`` from the training record ``info`` (train_log.json); the validity and
    known-limits sections, which later measurements write, are kept."""
    card = Path(out) / "MODEL_CARD.md"
    old = card.read_text() if card.exists() else ""
    validity = _keep(
        old,
        CARD_VALIDITY_START,
        CARD_VALIDITY_END,
        "_Not measured yet: run `python -m erasekit.tinyworld.validity --model tinyworld-flux`._",
    )
    padding = _keep(
        old,
        PADDING_START,
        PADDING_END,
        "_Not measured yet: `python -m erasekit.tinyworld.validity --model tinyworld-flux --padding-check`._",
    )
    d, i = info.get("diffusion", {}), info.get("init_from", {})
    lat = info.get("vae_latent", {})
    sd1_min = i.get("total_minutes") or 0
    total = info.get("total_minutes", 0)
    kw = flux.GENERATE_KW
    resumed = info.get("resumed", [])
    resumed_line = "".join(
        f"\nResumed at step {r.get('from_step')} ({r.get('from_minutes')} min) with `{r.get('command')}`."
        if isinstance(r, dict)
        else f"\nResumed with `{r}`."
        for r in resumed
    )
    text = f"""# tinyworld-flux — model card

erasekit's bundled **FLUX.1-architecture** model (issue 29): a genuine diffusers `FluxPipeline`
trained on the tinyworld world (same shapes, colours, patterns, synonyms and held-out templates as
tinyworld; see `../weights/MODEL_CARD.md`). Its judge is tinyworld's
(`erasekit.tinyworld.TinyworldJudge.load()`).

## How to generate
```python
import torch
from diffusers import FluxPipeline
pipe = FluxPipeline.from_pretrained("src/erasekit/tinyworld/weights_flux/pipeline")  # or torch_dtype=torch.bfloat16
image = pipe("a striped red circle", height={kw["height"]}, width={kw["width"]},
             num_inference_steps={kw["num_inference_steps"]}, true_cfg_scale={kw["true_cfg_scale"]},
             negative_prompt="", max_sequence_length={kw["max_sequence_length"]},
             generator=torch.Generator().manual_seed(0)).images[0]
```
(`erasekit.tinyworld.load_pipeline_flux()` loads it; `erasekit.tinyworld.flux.GENERATE_KW` holds these arguments.)

**True classifier-free guidance, no guidance embedding** (FLUX.1-schnell's layout, `guidance_embeds=False`):
the model was trained with caption dropout ({d.get("p_uncond", 0):.0%} of captions empty for both encoders) and
is guided by the pipeline's `true_cfg_scale` against `negative_prompt=""`. FLUX.1-dev instead distils guidance
into an embedding; that needs a CFG teacher and a second training stage, which would about double the CPU
budget for no gain in what erasekit studies (the text paths are the same either way), so it was not done.
`guidance_scale` is ignored by this model.

## Architecture
| part | details | parameters |
|---|---|---|
| tokenizer | the real CLIP BPE tokenizer (49,408 tokens, max length {flux.MAX_TOKENS_CLIP}) | – |
| text_encoder | tinyworld's trained `CLIPTextModel` (hidden 128, 2 layers), copied and frozen; its pooled output \
-> `time_text_embed` (`pooled_projections`) | {d.get("params_clip", 0):,} |
| tokenizer_2 | `T5TokenizerFast` (Unigram over whole words; {len(flux.t5_vocabulary())} words and marks of the \
world's captions incl. the held-out templates' words, T5's `<pad>`=0, `</s>`=1, `<unk>`=2, no sentinels); \
case-sensitive | – |
| text_encoder_2 | `T5EncoderModel` (T5 v1.1 layout: gated-GELU, RMS norm, relative position buckets), d_model \
{flux.T5_D_MODEL}, {flux.T5_LAYERS} layers, d_ff {flux.T5_D_FF}; last hidden state -> `context_embedder` | \
{d.get("params_t5", 0):,} |
| transformer | `FluxTransformer2DModel`: width {flux.WIDTH} ({flux.WIDTH // flux.HEAD_DIM} heads x {flux.HEAD_DIM}), \
{flux.N_DOUBLE} double-stream + {flux.N_SINGLE} single-stream blocks, RoPE axes {flux.AXES_DIMS_ROPE}, \
in_channels 16 (4 latent channels x 2x2 packing), no guidance embedding; adaLN-Zero initialisation | \
{d.get("params_transformer", 0):,} |
| VAE | tinyworld's `AutoencoderKL` (vae_scale_factor 2: 32 px -> 4x16x16 latents -> 8x8 = 64 packed tokens); \
FLUX's latent normalisation `(z - shift_factor) * scaling_factor` with shift_factor {lat.get("shift_factor", 0):.4f}, \
scaling_factor {lat.get("scaling_factor", 0):.4f} measured on renders | – |
| scheduler | `FlowMatchEulerDiscreteScheduler`, FLUX.1's config (dynamic shifting, base/max shift 0.5/1.15 \
at 256/4096 tokens: mu = {d.get("mu", flux.mu_for(64)):.4f} at 64 tokens) | – |

Pipeline folder: {info.get("sizes_mb", {}).get("pipeline", 0):.1f} MB (fp16 safetensors; the configs say float32,
so `FluxPipeline.from_pretrained(path)` with no dtype loads in float32).

## Training
Command: `{info.get("command", "")}`{resumed_line}
Hardware: {info.get("hardware", "")}; torch threads: {info.get("threads", "")}. No GPU.
Data: the tinyworld world's renders and captions, generated on the fly (training templates only; the pattern left
unnamed in 10 % and the colour in 5 % of captions).
1. **Warm start** from tinyworld ({sd1_min:.0f} min of training, `{i.get("command", "")}`): its VAE and its CLIP text
   encoder are copied; the T5 encoder is regressed for {info.get("distill_steps", 0)} steps onto the CLIP encoder's
   hidden state of each caption word (mean over the word's BPE pieces; `</s>` onto CLIP's end token), so the
   transformer starts from text tokens that already separate the world's concepts and tie their synonyms
   (`erasekit.tinyworld.flux.distill_t5`). The transformer starts from adaLN-Zero (every block the identity).
   {info.get("warm_start_minutes", 0):.1f} min.
2. **Rectified flow** (Esser et al. 2024, as FLUX.1): `x_t = (1 - t) x_0 + t eps`, velocity target `eps - x_0`,
   `t` logit-normal (with `--t-uniform p`, a share p drawn uniformly instead: see the commands above) then shifted
   with FLUX's `exp(mu)` time shift at 64 image tokens; transformer + T5 jointly,
   CLIP frozen (AdamW lr {d.get("lr", 0)}, warmup + cosine over the time budget, fp32, EMA {d.get("ema_decay", 0)}
   shipped): {d.get("steps", 0)} steps of batch {d.get("batch", 0)} in {d.get("seconds", 0) / 60:.1f} min; final loss
   (EMA) {d.get("loss_ema", 0)}. T5 length {flux.T5_MAX_TOKENS}, and {d.get("long_len", 0)} every \
{d.get("long_every", 0)}th step (FLUX attends to padding: see the known limits).
- wall time of this run {total:.1f} min; with tinyworld's training {total + sd1_min:.1f} min.
- Resume: the same command with `--resume` continues from `ckpt.safetensors` in the output folder (weights, AdamW
  moments, step, elapsed time, RNG states; not shipped) within the same `--minutes`; a larger `--minutes` extends
  the run (the cosine schedule is recomputed over the new budget, so the learning rate rises again first).

## Validity
{validity}

## Known limits
- **32x32 only.** The VAE and the 8x8 RoPE grid were trained at 32 px; pass `height=32, width=32` (FluxPipeline's
  default is 256 px, far out of distribution).
- **T5 padding.** FLUX attends to every T5 token, padding included (no attention mask). The model was trained with
  T5 sequences of {flux.T5_MAX_TOKENS} tokens ({d.get("long_len", 0)} every {d.get("long_every", 0)}th step); pass
  `max_sequence_length={flux.T5_MAX_TOKENS}`. The pipeline's default, 512, pads sixteen times more:
{padding}
- **Vocabulary.** The T5 tokenizer knows the world's words only (others become `<unk>`) and is case-sensitive; the
  CLIP tokenizer is the real one, but its encoder was trained on the world's captions only.
- **No guidance embedding.** `guidance_scale` does nothing; guidance is `true_cfg_scale` with a negative prompt,
  which costs two transformer passes per step.
- **Two text paths.** The caption reaches the transformer through the T5 tokens (`context_embedder`, then the
  double blocks' `add_k_proj` / `add_v_proj` and the single blocks' shared `to_k` / `to_v`) and through the pooled
  CLIP vector (`time_text_embed`, which modulates every block); an erasure must cover both (DESIGN.md section 10).
"""
    card.write_text(text)
    return card
