"""Stable Diffusion 3 / 3.5: an MMDiT whose text enters through two Linears that read the prompt alone.

SD3 has no cross-attention. The text stream — CLIP-L and CLIP-G penultimate states concatenated,
zero-padded to T5's width, then joined with T5's states along the sequence (T5 unmasked) — passes
``context_embedder`` once before the joint blocks; the pooled vector (CLIP-L ⊕ CLIP-G pooled) passes
``time_text_embed.text_embedder.linear_1`` once, added to the timestep embedding. Both are static
sites (DESIGN §10): their inputs are functions of the prompt alone, whatever the timestep and latent.
They read *different* inputs, so they are two site groups ("text", "pooled") and a closed form is
solved per group. The joint blocks' ``add_k_proj / add_v_proj`` read a timestep-modulated text
stream and are not sites here. SD3.5-Medium's ``attn2`` is a second *image* self-attention
(``is_cross_attention`` false) and is never a site: sites are found by structure, not by name.

:class:`MMDiTFamily` holds what SD3 and FLUX share (:mod:`.flux` subclasses it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import ModelError
from .base import Conditioning, Family, Pipeline, Site
from .dynamics import FlowDynamics
from .sd import clip_mask

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEXT_GROUP, POOLED_GROUP = "text", "pooled"


def _text_projection_embedders() -> tuple[type[nn.Module], ...]:
    """diffusers' timestep + pooled-text embedders (SD3's, and FLUX.1-dev's with a guidance embedder)."""
    from diffusers.models.embeddings import (
        CombinedTimestepGuidanceTextProjEmbeddings,
        CombinedTimestepTextProjEmbeddings,
    )

    return (CombinedTimestepTextProjEmbeddings, CombinedTimestepGuidanceTextProjEmbeddings)


def mmdit_static_sites(den: Any) -> list[Site]:  # a diffusers model: its config is dynamic
    """The two static-text sites of an MMDiT (SD3, FLUX), found by structure.

    * the text stream's embedder: the one Linear child of the transformer whose input width is the text encoders'
      (``config.joint_attention_dim``): what every joint block's text stream starts from;
    * the pooled embedder: the first Linear (``linear_1``) of the ``PixArtAlphaTextProjection`` inside the
      timestep + pooled-text embedder (``CombinedTimestep[Guidance]TextProjEmbeddings``), which reads the pooled vector.
    """
    from diffusers.models.embeddings import PixArtAlphaTextProjection

    width = int(den.config.joint_attention_dim)
    context = [n for n, m in den.named_children() if isinstance(m, nn.Linear) and m.in_features == width]
    names = {id(m): n for n, m in den.named_modules()}
    pooled = [
        names[id(m.text_embedder.linear_1)]
        for m in den.modules()
        if isinstance(m, _text_projection_embedders()) and isinstance(m.text_embedder, PixArtAlphaTextProjection)
    ]
    if len(context) != 1 or len(pooled) != 1:
        raise ModelError(
            f"{type(den).__name__}: expected one text-stream embedder (a Linear child reading {width}-d text) and one "
            f"pooled-text embedder, found {context} and {pooled}; this transformer's structure is not SD3's or FLUX's"
        )
    return [Site(context[0], "static_text", TEXT_GROUP), Site(pooled[0], "pooled_text", POOLED_GROUP)]


def call_default(pipe: Pipeline, name: str, fallback: Any) -> Any:
    """The default of ``pipe.__call__``'s argument ``name``: what generation uses unless told otherwise."""
    p = inspect.signature(type(pipe).__call__).parameters.get(name)
    return fallback if p is None else p.default


def t5_mask(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], length: int) -> torch.Tensor:
    """(B, length) the T5 tokenizer's mask, padded as the pipelines pad (words + EOS are real)."""
    enc = tokenizer(
        list(prompts), padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
        return_tensors="pt",
    )  # fmt: skip
    mask: torch.Tensor = enc.attention_mask
    return mask.to(torch.int64)


@dataclass(frozen=True)
class MMDiTFamily(Family):
    """SD3 / FLUX: the static sites ``context_embedder`` (group "text") and the pooled ``linear_1`` (group "pooled").

    ``projections`` select cross-attention K / V projections; these families have none, and their two static sites
    are always both edited.
    """

    def edit_sites(self, pipe: Pipeline, projections: Sequence[str] = ("k", "v")) -> list[Site]:
        return mmdit_static_sites(self.get_denoiser(pipe))

    def max_sequence_length(self, pipe: Pipeline) -> int:
        """T5 positions of the text stream: what ``__call__`` uses by default."""
        return int(call_default(pipe, "max_sequence_length", 256))

    def dynamics(self, pipe: Pipeline) -> FlowDynamics:
        """Rectified flow (velocity), sampled on the scheduler's own σ spacing (StableDiffusion3Pipeline) with true
        CFG."""
        return FlowDynamics(pipe.scheduler.config, sigma_ramp=False)

    def text_attention_modules(self, pipe: Pipeline) -> list[str]:
        """Every attention module of the transformer: an MMDiT has no cross-attention, text and image tokens meet in
        joint attention (double-stream) or in one mixed sequence (FLUX's single-stream blocks). ESD's FLUX and SD3.5
        ports (rohitgandikota/erasing ``esd_flux.py``, ``esd_sd35.py``) train these as ESD-x."""
        from diffusers.models.attention import AttentionModuleMixin
        from diffusers.models.attention_processor import Attention

        den = self.get_denoiser(pipe)
        return [n for n, m in den.named_modules() if isinstance(m, (Attention, AttentionModuleMixin))]

    def text_attention_probe(
        self, pipe: Pipeline, site_paths: Sequence[str], sink: Callable[[str, torch.Tensor], None]
    ) -> AbstractContextManager[Any]:
        raise ModelError(
            f"the {self.name} family has no probe of its joint attention maps yet (MACE's LoRA stage reads them); "
            "pass train_steps=0 for MACE's closed form"
        )


@dataclass(frozen=True)
class SD3Family(MMDiTFamily):
    def tokenizer(self, pipe: Pipeline) -> PreTrainedTokenizerBase:
        tok: PreTrainedTokenizerBase = pipe.tokenizer  # CLIP-L: the first 77 positions of the text stream
        return tok

    def token_segments(self, pipe: Pipeline) -> tuple[tuple[PreTrainedTokenizerBase, int], ...] | None:
        clip = ((pipe.tokenizer, 0),)
        n_clip = int(pipe.tokenizer.model_max_length)
        return clip if pipe.text_encoder_3 is None else (*clip, (pipe.tokenizer_3, n_clip))

    def encode(self, pipe: Pipeline, prompts: Sequence[str]) -> Conditioning:
        length = self.max_sequence_length(pipe)
        out = pipe.encode_prompt(
            prompt=list(prompts),
            prompt_2=None,
            prompt_3=None,
            device=self.get_denoiser(pipe).device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=length,
        )  # (embeds (B, 77 + length, d_t5), negative, pooled (B, d_L + d_G), negative pooled)
        prompts = list(prompts)
        if pipe.text_encoder_3 is None:  # the pipeline feeds zeros in T5's place: no real token there
            t5 = torch.zeros(len(prompts), length, dtype=torch.int64)
        else:
            t5 = t5_mask(pipe.tokenizer_3, prompts, length)
        mask = torch.cat([clip_mask(pipe.tokenizer, prompts), t5], dim=1)  # (B, 77 + length)
        return Conditioning(out[0].detach(), mask, out[2].detach())

    def denoise(self, pipe: Pipeline, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The velocity (flow matching) for latents (B, C, h, w) at scheduler timesteps ``t`` (0..1000), as
        StableDiffusion3Pipeline calls its transformer."""
        tr = self.get_denoiser(pipe)
        t = self.batch_timesteps(t, x_t.shape[0])
        out: torch.Tensor = tr(
            hidden_states=x_t, timestep=t, encoder_hidden_states=cond.embeds, pooled_projections=cond.pooled
        ).sample
        return out


SD3 = SD3Family(
    name="sd3",
    denoiser="transformer",
    pipelines=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
    description="Stable Diffusion 3 / 3.5 (MMDiT, CLIP-L + CLIP-G + T5; context_embedder and the pooled embedder)",
    lora_prefix="transformer",
    kohya=False,
    runs_denoiser_methods=False,
    lora_loader=True,  # SD3LoraLoaderMixin
    original_names=(
        ("context_embedder", "context_embedder"),
        ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
    ),
)
