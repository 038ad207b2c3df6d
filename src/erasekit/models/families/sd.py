"""Stable Diffusion 1.x / 2.x: a UNet whose cross-attention ``attn2.to_k / to_v`` read CLIP's last states.

The site input is the text stream itself (identity): the same at every block and timestep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .base import Conditioning, Family


def clip_mask(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """(B, 77) the CLIP tokenizer's mask, padded as ``encode_prompt`` pads (BOS + words + EOS are real)."""
    enc = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return enc.attention_mask.to(torch.int64)


def _detached(cond: Conditioning) -> Conditioning:
    return Conditioning(
        cond.embeds.detach(),
        cond.mask,
        None if cond.pooled is None else cond.pooled.detach(),
        {k: v.detach() for k, v in cond.added.items()},
    )


@dataclass(frozen=True)
class UNetFamily(Family):
    """The UNet families: ``encode_prompt``'s first tensor is the cross-attention context."""

    two_encoders: bool = False  # SDXL: CLIP-L + CLIP-G

    def tokenizer(self, pipe):
        return pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2

    def _encode_prompt(self, pipe, prompts: Sequence[str]):
        device = self.get_denoiser(pipe).device
        return pipe.encode_prompt(
            list(prompts), device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )

    def encode_graph(self, pipe, prompts: Sequence[str]) -> Conditioning:
        out = self._encode_prompt(pipe, prompts)  # (embeds (B, 77, d), negative)
        return Conditioning(out[0], clip_mask(self.tokenizer(pipe), prompts))

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:
        with torch.no_grad():
            return _detached(self.encode_graph(pipe, prompts))

    def fallback(self, pipe) -> bool:
        # any UNet pipeline with encode_prompt (fine-tunes' own classes): SDXL when it has a second text encoder
        is_xl = getattr(pipe, "text_encoder_2", None) is not None
        unet = isinstance(getattr(pipe, "unet", None), nn.Module) and callable(getattr(pipe, "encode_prompt", None))
        return unet and is_xl == self.two_encoders

    def denoise(self, pipe, x_t, t, cond: Conditioning) -> torch.Tensor:
        added = dict(cond.added) or None
        return pipe.unet(x_t, t, encoder_hidden_states=cond.embeds, added_cond_kwargs=added).sample


SD = UNetFamily(
    name="sd",
    denoiser="unet",
    pipelines=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    description="Stable Diffusion 1.x / 2.x (UNet, CLIP)",
    lora_prefix="unet",
    kohya=True,
)
