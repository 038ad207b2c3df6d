"""FLUX.1 dev / schnell: an MMDiT whose text enters through ``context_embedder`` (T5) and the pooled embedder (CLIP-L).

T5's states (unmasked) pass ``context_embedder`` once; CLIP-L's pooled vector passes
``time_text_embed.text_embedder.linear_1`` once. Both read the prompt alone: two static site groups, as on SD3
(:class:`~.sd3.MMDiTFamily`). The variants differ by structure: FLUX.1-dev is guidance-distilled
(``config.guidance_embeds``: the guidance scale is an input, embedded like the timestep; no true CFG), schnell is
not. The T5 length is 512 on dev (FluxPipeline's default) and 256 on schnell, as Black Forest Labs and the
official UCE-FLUX script (``trainscripts/uce_flux_edit.py``) set it. ``denoise`` packs the latents into 2 × 2
patches with position ids, divides the scheduler's timestep by 1000, and unpacks the velocity, as FluxPipeline does.

Gradients through both text encoders (:meth:`FluxFamily.encode_graph`; CLIP-L's and T5's input embeddings substitutable)
let the prompt and token attacks (UnlearnDiffAtk, P4D, CCE, MMA) run here. Fine-tuning (ESD, ACE, MACE's LoRA stage)
runs here: :meth:`FluxFamily.dynamics` is rectified flow on FluxPipeline's
σ ramp (true CFG, or the embedded scale on dev), and :class:`~.sd3.JointAttentionProbe` (shared with SD3) gives MACE
the image→text attention of the double-stream blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...errors import ModelError
from .base import Conditioning, Pipeline, Sampling, Site
from .dynamics import FlowDynamics
from .sd import detached
from .sd3 import MMDiTFamily, call_default, t5_mask

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEV_T5_LENGTH, SCHNELL_T5_LENGTH = 512, 256


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, h/2 · w/2, 4C) tokens of 2 × 2 patches (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h/2 · w/2, 4C) tokens -> (B, C, h, w): the inverse of :func:`pack_latents`."""
    b, _, c4 = tokens.shape
    x = tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)  # (B, C, h/2, 2, w/2, 2)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """(h/2 · w/2, 3) rotary position ids of the packed latent tokens: (0, row, column)
    (FluxPipeline._prepare_latent_image_ids)."""
    rows = torch.arange(h // 2, device=device, dtype=dtype)[:, None].expand(h // 2, w // 2)
    cols = torch.arange(w // 2, device=device, dtype=dtype)[None, :].expand(h // 2, w // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)


@dataclass(frozen=True)
class FluxFamily(MMDiTFamily):
    def tokenizer(self, pipe: Pipeline) -> PreTrainedTokenizerBase:
        tok: PreTrainedTokenizerBase = pipe.tokenizer_2  # T5: the text stream's positions
        return tok

    def guidance_distilled(self, pipe: Pipeline) -> bool:
        """FLUX.1-dev (and its fine-tunes): the transformer embeds the guidance scale."""
        return bool(getattr(self.get_denoiser(pipe).config, "guidance_embeds", False))

    def max_sequence_length(self, pipe: Pipeline) -> int:
        """T5 positions of the text stream: 512 on dev, 256 on schnell, or fewer where the pipeline's T5 tokenizer
        declares a shorter ``model_max_length`` (a model trained on shorter T5 sequences: tinyworld-flux, 32).

        FLUX attends to every T5 position, padding included, so the length is part of the conditioning: encode()
        and generation (:meth:`generation_kwargs`) use this one value.
        """
        variant = DEV_T5_LENGTH if self.guidance_distilled(pipe) else SCHNELL_T5_LENGTH
        declared = getattr(getattr(pipe, "tokenizer_2", None), "model_max_length", None)
        return min(variant, int(declared)) if isinstance(declared, int) and declared > 0 else variant

    def dynamics(self, pipe: Pipeline) -> FlowDynamics:
        """Rectified flow on FluxPipeline's σ ramp with its resolution shift; dev embeds the guidance scale."""
        return FlowDynamics(pipe.scheduler.config, sigma_ramp=True, embedded_guidance=self.guidance_distilled(pipe))

    def generation_kwargs(
        self, pipe: Pipeline, guidance: float | None, batch: int, embeds: bool = False
    ) -> dict[str, Any]:
        """FLUX.1-dev embeds the scale (``guidance_scale``); a transformer without the guidance embedding (schnell,
        tinyworld-flux) is guided by true classifier-free guidance: ``true_cfg_scale`` against the empty negative
        prompt, which FluxPipeline runs only when it is given one (``negative_prompt``, or under ``prompt_embeds``
        the empty prompt's own ``negative_prompt_embeds`` / ``negative_pooled_prompt_embeds``). Always the family's
        T5 length, as :meth:`encode` gave it to the edit (FluxPipeline's default is 512 on every variant)."""
        kw: dict[str, Any] = {"max_sequence_length": self.max_sequence_length(pipe)}
        if guidance is None:
            return kw
        if self.guidance_distilled(pipe):
            kw["guidance_scale"] = float(guidance)
            return kw
        kw["true_cfg_scale"] = float(guidance)
        if embeds:
            empty = self.encode(pipe, [""] * batch)  # (batch, L, d_t5), (batch, d_clip)
            kw["negative_prompt_embeds"], kw["negative_pooled_prompt_embeds"] = empty.embeds, empty.pooled
        else:
            kw["negative_prompt"] = [""] * batch
        return kw

    def encode(self, pipe: Pipeline, prompts: Sequence[str]) -> Conditioning:
        with torch.no_grad():
            return detached(self.encode_graph(pipe, prompts))

    def encode_graph(
        self, pipe: Pipeline, prompts: Sequence[str], per_encoder: Sequence[Sequence[str]] | None = None
    ) -> Conditioning:
        """FluxPipeline's ``encode_prompt`` with the graph kept through both encoders: the T5 stream and CLIP-L's
        pooled vector (pooled at CLIP's EOS, so substituted input embeddings reach it; the T5 stream is unmasked).
        ``per_encoder``: CLIP's and T5's own prompts (``prompt`` / ``prompt_2``)."""
        length = self.max_sequence_length(pipe)
        tr = self.get_denoiser(pipe)
        clip_text, t5_text = self.encoder_prompts(pipe, prompts, per_encoder)
        out = pipe.encode_prompt(
            prompt=clip_text, prompt_2=t5_text, device=tr.device, num_images_per_prompt=1, max_sequence_length=length
        )  # (T5 states (B, length, d_t5), pooled CLIP-L (B, d_clip), text ids)
        embeds, pooled = out[0], out[1]
        guidance = None
        if self.guidance_distilled(pipe):  # the scale generation embeds by default (no true CFG on dev)
            scale = float(call_default(pipe, "guidance_scale", 3.5))
            guidance = torch.full((embeds.shape[0],), scale, device=embeds.device, dtype=torch.float32)
        mask = t5_mask(pipe.tokenizer_2, t5_text, length)
        return Conditioning(embeds, mask, pooled, guidance=guidance)

    def encode_pooled(self, pipe: Pipeline, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP-L's pooled vector (B, d_clip), as FluxPipeline's ``encode_prompt`` computes it."""
        clip_text = self.encoder_prompts(pipe, prompts)[0]
        out: torch.Tensor = pipe._get_clip_prompt_embeds(
            prompt=clip_text, device=self.get_denoiser(pipe).device, num_images_per_prompt=1
        )
        return out

    def sampling(self, pipe: Pipeline, scale: float) -> Sampling:
        """dev embeds ``scale`` as its guidance input (one call per step); schnell-like models run FluxPipeline's
        true CFG against the empty prompt: two calls per step, the conditional first."""
        length = {"max_sequence_length": self.max_sequence_length(pipe)}
        if self.guidance_distilled(pipe):
            return Sampling({"guidance_scale": scale, **length}, "none")
        if scale > 1.0:
            return Sampling({"true_cfg_scale": scale, "negative_prompt": "", **length}, "calls")
        return Sampling({"true_cfg_scale": 1.0, **length}, "none")

    def site_tokens(self, cond: Conditioning, site: Site | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """As the base, except a prompt with no token before T5's EOS (the empty prompt: T5 adds no BOS) takes the
        stream's last position, as the official UCE-FLUX script's ``mask.sum() - 2`` indexes it (−1: the final padding
        position, whose unmasked T5 state is a function of the prompt)."""
        last, count = super().site_tokens(cond, site)
        if site is None or site.input_kind == "static_text":
            wraps = (cond.last_real().cpu() - self.trailing_specials()) < 0
            last = torch.where(wraps, torch.full_like(last, cond.mask.shape[1] - 1), last)
        return last, count

    def output_latents(
        self, pipe: Pipeline, latents: torch.Tensor, height: int | None, width: int | None
    ) -> torch.Tensor:
        """FluxPipeline returns latents packed, (B, h/2 · w/2, 4C): unpacked to (B, C, h, w) as its decoder does
        (h = 2 ⌊height / (2 · vae_scale_factor)⌋)."""
        if latents.dim() == 4:
            return latents
        side = self.sample_size(pipe) * pipe.vae_scale_factor
        f = 2 * pipe.vae_scale_factor
        h, w = 2 * ((height or side) // f), 2 * ((width or side) // f)
        return unpack_latents(latents, h, w)

    def latent_channels(self, pipe: Pipeline) -> int:
        return int(self.get_denoiser(pipe).config.in_channels) // 4

    def sample_size(self, pipe: Pipeline) -> int:
        """The latent side of the pipeline's default image (``default_sample_size``; FLUX's config has none)."""
        return int(pipe.default_sample_size)

    def denoise(self, pipe: Pipeline, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The velocity for latents (B, C, h, w) at scheduler timesteps ``t`` (0..1000), as FluxPipeline calls its
        transformer: packed 2 × 2 patches, ``timestep / 1000``, the guidance scale on dev, text ids all zero."""
        tr = self.get_denoiser(pipe)
        b, _, h, w = x_t.shape
        t = self.batch_timesteps(t, b).to(x_t.dtype)
        kw: dict[str, Any] = {}
        if self.guidance_distilled(pipe):
            if cond.guidance is None:
                raise ModelError("FLUX.1-dev needs cond.guidance (the embedded guidance scale); encode() gives it")
            kw["guidance"] = cond.guidance.to(x_t.device)
        out: torch.Tensor = tr(
            hidden_states=pack_latents(x_t),  # (B, h/2 · w/2, 4C)
            timestep=t / 1000,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.embeds,
            txt_ids=torch.zeros(cond.embeds.shape[1], 3, device=x_t.device, dtype=x_t.dtype),  # (L, 3)
            img_ids=image_ids(h, w, x_t.device, x_t.dtype),  # (h/2 · w/2, 3)
            **kw,
        ).sample  # (B, h/2 · w/2, 4C)
        return unpack_latents(out, h, w)


FLUX = FluxFamily(
    name="flux",
    denoiser="transformer",
    pipelines=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    description="FLUX.1 dev / schnell (MMDiT, CLIP-L pooled + T5; context_embedder and the pooled embedder)",
    lora_prefix="transformer",
    kohya=False,
    fine_tunes_denoiser=True,
    lora_loader=True,  # FluxLoraLoaderMixin
    original_names=(("context_embedder", "txt_in"), ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer")),
)
