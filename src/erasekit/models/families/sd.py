"""Stable Diffusion 1.x / 2.x: a UNet whose cross-attention ``attn2.to_k / to_v`` read CLIP's last states.

The site input is the text stream itself (identity): the same at every block and timestep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .base import Conditioning, Family, Pipeline
from .dynamics import DDPMDynamics

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def clip_mask(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> torch.Tensor:
    """(B, 77) the CLIP tokenizer's mask, padded as ``encode_prompt`` pads (BOS + words + EOS are real)."""
    enc = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    mask: torch.Tensor = enc.attention_mask
    return mask.to(torch.int64)


def detached(cond: Conditioning) -> Conditioning:
    """``cond`` with every tensor cut from the autograd graph (what :meth:`Family.encode` promises)."""
    return dataclasses.replace(
        cond,
        embeds=cond.embeds.detach(),
        pooled=None if cond.pooled is None else cond.pooled.detach(),
        added={k: v.detach() for k, v in cond.added.items()},
        guidance=None if cond.guidance is None else cond.guidance.detach(),
    )


@dataclass(frozen=True)
class UNetFamily(Family):
    """The UNet families: ``encode_prompt``'s first tensor is the cross-attention context."""

    two_encoders: bool = False  # SDXL: CLIP-L + CLIP-G

    def tokenizer(self, pipe: Pipeline) -> PreTrainedTokenizerBase:
        tok: PreTrainedTokenizerBase = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
        return tok

    def dynamics(self, pipe: Pipeline) -> DDPMDynamics:
        """DDPM: ε- or v-prediction as the scheduler says, DDIM sampling with classifier-free guidance in a batch."""
        return DDPMDynamics.of(pipe)

    def _encode_prompt(
        self, pipe: Pipeline, prompts: Sequence[str], per_encoder: Sequence[Sequence[str]] | None = None
    ) -> tuple[torch.Tensor | None, ...]:
        """``encode_prompt``'s tensors; the negative ones are None (no CFG branch). ``per_encoder``: SDXL's
        ``prompt`` / ``prompt_2`` (:meth:`encoder_prompts`)."""
        device = self.get_denoiser(pipe).device
        texts = self.encoder_prompts(pipe, prompts, per_encoder)
        kw = {"prompt_2": texts[1]} if self.two_encoders and len(texts) == 2 else {}
        out: tuple[torch.Tensor | None, ...] = pipe.encode_prompt(
            texts[0], device=device, num_images_per_prompt=1, do_classifier_free_guidance=False, **kw
        )
        return out

    def encode_graph(
        self, pipe: Pipeline, prompts: Sequence[str], per_encoder: Sequence[Sequence[str]] | None = None
    ) -> Conditioning:
        embeds = self._encode_prompt(pipe, prompts, per_encoder)[0]  # (embeds (B, 77, d), negative)
        assert embeds is not None  # the positive prompts' embeddings are always computed
        return Conditioning(
            embeds, clip_mask(self.tokenizer(pipe), self.encoder_prompts(pipe, prompts, per_encoder)[0])
        )

    def encode(self, pipe: Pipeline, prompts: Sequence[str]) -> Conditioning:
        with torch.no_grad():
            return detached(self.encode_graph(pipe, prompts))

    def fallback(self, pipe: Pipeline) -> bool:
        # any UNet pipeline with encode_prompt (fine-tunes' own classes): SDXL when it has a second text encoder
        is_xl = getattr(pipe, "text_encoder_2", None) is not None
        unet = isinstance(getattr(pipe, "unet", None), nn.Module) and callable(getattr(pipe, "encode_prompt", None))
        return unet and is_xl == self.two_encoders

    def denoise(self, pipe: Pipeline, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        added = dict(cond.added) or None
        out: torch.Tensor = pipe.unet(x_t, t, encoder_hidden_states=cond.embeds, added_cond_kwargs=added).sample
        return out


SD = UNetFamily(
    name="sd",
    denoiser="unet",
    pipelines=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    description="Stable Diffusion 1.x / 2.x (UNet, CLIP)",
    lora_prefix="unet",
    kohya=True,
    fine_tunes_denoiser=True,
)
