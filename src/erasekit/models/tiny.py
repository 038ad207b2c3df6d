"""Tiny, randomly initialised SD 1.x / 2.x / XL pipelines built offline from configs.

They have the exact module structure of the real families (same classes, cross-attention
layout, SDXL's two encoders and 2-part embeddings, the real CLIP tokenizer) at a size
that runs in milliseconds: the project's test matrix and the CLI's smoke runs use them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .tokenizer import CLIP_VOCAB_SIZE, write_clip_tokenizer_files

FAMILIES = ("sd", "sd2", "sdxl")


def _text_config(hidden: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=projection_dim or hidden,
        hidden_act="quick_gelu",
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )


def _tokenizer(pad_token: str):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(tmp, pad_token=pad_token)
        return CLIPTokenizer.from_pretrained(tmp)


def build_tiny_pipeline(family: str = "sd", seed: int = 0):
    """A randomly initialised pipeline of ``family`` (``sd`` = SD 1.x, ``sd2``, ``sdxl``)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {FAMILIES}")
    torch.manual_seed(seed)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    common = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    if family == "sdxl":
        # Two encoders of 24 and 40 dims: prompt embeddings are their concatenation (64-d), like SDXL's 768 + 1280.
        unet = UNet2DConditionModel(
            **common,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=64,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 40,
        )
        return StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=CLIPTextModel(_text_config(24)),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(40, 40)),
            tokenizer=_tokenizer("<|endoftext|>"),
            tokenizer_2=_tokenizer("!"),
            unet=unet,
            scheduler=scheduler,
        )
    hidden = 32 if family == "sd" else 48
    unet = UNet2DConditionModel(
        **common,
        attention_head_dim=(2, 4) if family == "sd2" else 8,
        use_linear_projection=family == "sd2",
        cross_attention_dim=hidden,
    )
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(hidden)),
        tokenizer=_tokenizer("<|endoftext|>" if family == "sd" else "!"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(folder: str | Path, family: str = "sd", seed: int = 0) -> Path:
    """Build and save a tiny pipeline as a regular diffusers folder (loads with ``from_pretrained``)."""
    folder = Path(folder)
    build_tiny_pipeline(family, seed).save_pretrained(folder)
    return folder
