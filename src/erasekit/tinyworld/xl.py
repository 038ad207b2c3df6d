"""tinyworld-xl: the SDXL architecture on the tinyworld world (issue 11).

A genuine diffusers ``StableDiffusionXLPipeline``:

* ``tokenizer`` / ``tokenizer_2``: the real CLIP BPE tokenizer (identical ids to SDXL);
* ``text_encoder``: ``CLIPTextModel``, hidden :data:`TE1_HIDDEN`;
* ``text_encoder_2``: ``CLIPTextModelWithProjection``, hidden :data:`TE2_HIDDEN`, 3 layers; its
  projected pooled output conditions the UNet through ``add_embedding`` (``text_time``), as in SDXL;
* UNet context = the penultimate hidden states of both encoders, concatenated
  (:data:`CONTEXT` = 64 + 128 = 192, as SDXL's 768 + 1280 = 2048);
* cross-attention at 8x8 (2 transformer layers per block), 4x4 and mid;
* tinyworld's VAE and judge.

The model is warm-started from tinyworld by :func:`warm_start`, a map that preserves the noise
prediction (see its docstring), then fine-tuned by ``python -m erasekit.tinyworld.train --arch xl``.
"""

from __future__ import annotations

from pathlib import Path

import torch

TE1_HIDDEN = 64
TE2_HIDDEN = 128
CONTEXT = TE1_HIDDEN + TE2_HIDDEN  # (192,) the UNet's cross-attention input width
ADD_TIME_DIM = 8  # addition_time_embed_dim (SDXL: 256)
MAX_TOKENS = 77
SIZE = 32
# SDXL's micro-conditioning ids: (original_size, crop top-left, target_size); constant in training
TIME_IDS = (SIZE, SIZE, 0, 0, SIZE, SIZE)
# new (zero-output) blocks in the warm start: the second transformer layer of the 8x8 blocks
_NEW_BLOCK_TAGS = (".transformer_blocks.1.",)


def make_text_encoder_1():
    from transformers import CLIPTextModel

    from ._training import clip_text_config

    return CLIPTextModel(clip_text_config(TE1_HIDDEN, 2, MAX_TOKENS))


def make_text_encoder_2():
    from transformers import CLIPTextModelWithProjection

    from ._training import clip_text_config

    return CLIPTextModelWithProjection(clip_text_config(TE2_HIDDEN, 3, MAX_TOKENS))


def make_unet_xl():
    from diffusers import UNet2DConditionModel

    # The tinyworld UNet (channels 48/96/144, no attention at 16x16) with SDXL's conditioning:
    # a wider context, the pooled text embedding + micro-conditioning ids added to the time
    # embedding ("text_time"), and depth that varies per block (2 transformer layers at 8x8).
    return UNet2DConditionModel(
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(48, 96, 144),
        layers_per_block=1,
        cross_attention_dim=CONTEXT,
        transformer_layers_per_block=(1, 2, 1),
        attention_head_dim=4,
        norm_num_groups=16,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADD_TIME_DIM,
        projection_class_embeddings_input_dim=TE2_HIDDEN + 6 * ADD_TIME_DIM,
    )


def encode(te1, te2, ids1: torch.Tensor, ids2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (n,77,192), pooled (n,128)) exactly as ``StableDiffusionXLPipeline.encode_prompt`` builds them."""
    h1 = te1(ids1, output_hidden_states=True).hidden_states[-2]  # (n, 77, 64) penultimate layer
    o2 = te2(ids2, output_hidden_states=True)
    return torch.cat([h1, o2.hidden_states[-2]], dim=-1), o2.text_embeds  # (n,77,192), (n,128)


def time_ids(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor([TIME_IDS] * n, device=device, dtype=dtype)  # (n, 6)


# ----------------------------------------------------------------------------- warm start
@torch.no_grad()
def layernorm_linear_fit(te_sd1, tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Least-squares affine fit ``LN(h) ≈ A h + b`` of SD1's final LayerNorm over real token states.

    ``h``: the last encoder layer's output (before the final LayerNorm) at every position of
    ``captions``. Returns ``A`` (128,128), ``b`` (128,) and the relative residual
    ``||LN(h) - (A h + b)|| / ||LN(h) - mean||``.
    """
    ids = tokenizer(
        captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    out = te_sd1(ids, output_hidden_states=True)
    h = out.hidden_states[-1].reshape(-1, te_sd1.config.hidden_size).double()  # (N, 128) pre-LN
    y = out.last_hidden_state.reshape(-1, te_sd1.config.hidden_size).double()  # (N, 128) = LN(h)
    X = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)  # (N, 129)
    sol = torch.linalg.lstsq(X, y).solution  # (129, 128)
    A, b = sol[:-1].T, sol[-1]  # (128,128), (128,)
    resid = (y - X @ sol).norm() / (y - y.mean(0)).norm()
    return A.float(), b.float(), float(resid)


@torch.no_grad()
def warm_start(
    unet_sd1, te_sd1, tokenizer, captions: list[str], seed: int = 0, distill_steps: int = 0, caption_fn=None
):
    """Build (te1, te2, unet_xl) whose noise prediction equals tinyworld's up to the LayerNorm fit.

    * ``text_encoder_2``: embeddings and layers 0-1 copied from tinyworld's encoder, so its
      penultimate hidden state (what SDXL feeds the UNet) is tinyworld's pre-LayerNorm state;
      layer 2, the final LayerNorm and the projection (pooled path only) start as new/copied.
    * tinyworld's final LayerNorm, which SDXL's penultimate-state context skips, is folded into
      the cross-attention K/V columns of the text_encoder_2 block of the context by its affine
      fit ``LN(h) ≈ A h + b`` (``W_k <- W_k A``, ``W_v <- W_v A``); ``W_k b`` adds the same vector
      to every key, which softmax ignores, and ``W_v b`` becomes ``W_o W_v b`` in ``to_out``'s bias.
    * the text_encoder (64-d) columns of K/V, the second transformer layer of the 8x8 blocks
      (its residual branches' output layers) and ``add_embedding.linear_2`` start at zero, so the
      new inputs and layers contribute nothing at initialisation.
    """
    torch.manual_seed(seed)
    te1, te2, unet = make_text_encoder_1(), make_text_encoder_2(), make_unet_xl()
    # -- text_encoder_2 <- tinyworld's encoder
    sd_te = te_sd1.state_dict()
    tgt = te2.state_dict()
    copied = 0
    for k, v in sd_te.items():
        k2 = k if k in tgt else "text_model." + k  # CLIPTextModel's keys may lack the prefix
        if k2 in tgt and tgt[k2].shape == v.shape:
            tgt[k2] = v.clone()
            copied += 1
    if copied != len(sd_te):
        raise RuntimeError(f"warm start copied {copied} of {len(sd_te)} text-encoder tensors")
    te2.load_state_dict(tgt)
    # -- UNet
    A, b, resid = layernorm_linear_fit(te_sd1, tokenizer, captions)
    src = unet_sd1.state_dict()
    dst = unet.state_dict()
    for k in dst:
        if any(t in k for t in _NEW_BLOCK_TAGS):
            continue
        if k in src and src[k].shape == dst[k].shape:
            dst[k] = src[k].clone()
    for k in dst:
        if k.endswith("attn2.to_k.weight") or k.endswith("attn2.to_v.weight"):
            if any(t in k for t in _NEW_BLOCK_TAGS):
                continue
            W = src[k]  # (d, 128)
            new = torch.zeros_like(dst[k])  # (d, 192)
            new[:, TE1_HIDDEN:] = W @ A  # W A: the LN fit folded in
            dst[k] = new
            if k.endswith("to_v.weight"):
                ob = k.replace("to_v.weight", "to_out.0.bias")
                ow = k.replace("to_v.weight", "to_out.0.weight")
                dst[ob] = src[ob] + src[ow] @ (W @ b)  # W_o W_v b: the fit's intercept
    for k in dst:  # new transformer layers: zero residual outputs -> identity
        if any(t in k for t in _NEW_BLOCK_TAGS) and (".to_out.0." in k or ".ff.net.2." in k):
            dst[k] = torch.zeros_like(dst[k])
    for k in ("add_embedding.linear_2.weight", "add_embedding.linear_2.bias"):
        dst[k] = torch.zeros_like(dst[k])
    unet.load_state_dict(dst)
    if distill_steps:
        distill_penultimate(te2, te_sd1, tokenizer, A, b, distill_steps, caption_fn, seed)
    return te1, te2, unet, resid


@torch.enable_grad()
def distill_penultimate(
    te2, te_sd1, tokenizer, A, b, steps: int, caption_fn, seed: int = 0, batch: int = 64, lr: float = 2e-3, log=None
):
    """Make the affine LayerNorm fold exact on real prompts by regression.

    A per-token LayerNorm is not affine (token scales differ ~3x), so ``W A h`` alone loses much
    of the conditioning. Train text_encoder_2's layers 0-1 so that its penultimate state ``g``
    meets ``A g + b = LN(h_sd1)``, i.e. ``g* = A^-1 (LN(h_sd1) - b)`` (MSE, AdamW, fresh captions
    from ``caption_fn(n, rng)`` each step); embeddings and the SD1 encoder stay fixed.
    """
    import numpy as np

    rng = np.random.default_rng(seed + 7)
    params = [p for layer in te2.text_model.encoder.layers[:2] for p in layer.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    A_inv = torch.linalg.inv(A.double()).float()  # (128, 128)
    te2.train()
    first = last = None
    for step in range(steps):
        caps = caption_fn(batch, rng)
        ids = tokenizer(
            caps, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            y = te_sd1(ids).last_hidden_state  # (n, 77, 128) = LN(h)
            g_star = (y - b) @ A_inv.T  # (n, 77, 128)
        g = te2(ids, output_hidden_states=True).hidden_states[-2]
        loss = ((g - g_star) ** 2).mean() / (g_star**2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    te2.eval()
    if log:
        log(f"distilled text_encoder_2 penultimate state: relative MSE {first:.4f} -> {last:.4f} in {steps} steps")
    return first, last


# ----------------------------------------------------------------------------- pipeline folder
def build_pipeline(vae, te1, te2, unet, tokenizer, tokenizer_2):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLPipeline

    from ._training import SCHEDULER_KW

    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(**SCHEDULER_KW),
        # unconditional = the encoded empty prompt, as trained (SDXL base uses zeros instead)
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def save_pipeline_xl(folder: Path, vae, te1, te2, unet):
    """Write the XL pipeline folder (fp16 safetensors, configs saying float32), atomically."""
    import copy
    import shutil

    from erasekit.models.tokenizer import build_clip_tokenizer, write_clip_tokenizer_files

    from ._folders import configs_say_float32, fresh_tmp, swap_in

    tmp = fresh_tmp(folder)
    mods = [copy.deepcopy(m).to("cpu", torch.float16) for m in (vae, te1, te2, unet)]
    tok = build_clip_tokenizer(MAX_TOKENS)
    pipe = build_pipeline(mods[0], mods[1], mods[2], mods[3], tok, tok)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(tmp / name)
        write_clip_tokenizer_files(tmp / name, model_max_length=MAX_TOKENS)
    configs_say_float32(tmp, ("text_encoder", "text_encoder_2"))
    swap_in(tmp, folder)
