"""SDXL: a UNet whose cross-attention reads both CLIP encoders' penultimate states concatenated.

The pooled CLIP-G vector and the size / crop ids reach the UNet through ``add_embedding``
(``added_cond_kwargs``), never through cross-attention: they travel in :class:`Conditioning.added`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .base import Conditioning, Pipeline
from .sd import UNetFamily, clip_mask


@dataclass(frozen=True)
class SDXLFamily(UNetFamily):
    def trainable_outside_attention(self, den: nn.Module) -> Callable[[nn.Module], bool]:
        """ESD-u on SDXL trains only inside the down / mid / up blocks and never a resnet's timestep projection
        (esd_sdxl.py keeps names with 'block' and without 'emb': the same layers, found by structure)."""
        from diffusers.models.resnet import ResnetBlock2D

        blocks = [getattr(den, a, None) for a in ("down_blocks", "mid_block", "up_blocks")]
        inside = {id(m) for b in blocks if isinstance(b, nn.Module) for m in b.modules()}
        time_proj = {id(r.time_emb_proj) for r in den.modules() if isinstance(r, ResnetBlock2D) and r.time_emb_proj}

        def allowed(module: nn.Module) -> bool:
            return id(module) in inside and id(module) not in time_proj

        return allowed

    def encode_graph(
        self, pipe: Pipeline, prompts: Sequence[str], per_encoder: Sequence[Sequence[str]] | None = None
    ) -> Conditioning:
        out = self._encode_prompt(pipe, prompts, per_encoder)  # (embeds, negative, pooled (B, d_pool), neg. pooled)
        assert out[0] is not None and out[2] is not None  # the positive prompts' tensors are always computed
        embeds, pooled = out[0], out[2]
        # The time ids a square generation at the UNet's native size builds: (orig h, orig w, crop top, left, h, w).
        h = w = self.sample_size(pipe) * pipe.vae_scale_factor
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=embeds.dtype, device=embeds.device).repeat(len(prompts), 1)
        return Conditioning(
            embeds,
            clip_mask(self.tokenizer(pipe), self.encoder_prompts(pipe, prompts, per_encoder)[0]),
            pooled,
            {"text_embeds": pooled, "time_ids": time_ids},
        )


SDXL = SDXLFamily(
    name="sdxl",
    denoiser="unet",
    pipelines=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    description="Stable Diffusion XL (UNet, CLIP-L + CLIP-G)",
    lora_prefix="unet",
    kohya=True,
    two_encoders=True,
    fine_tunes_denoiser=True,
)
