"""PixArt-α / Σ: a DiT whose ``transformer_blocks.*.attn2`` are true cross-attention on the projected caption.

The transformer projects the T5 states once (``caption_projection``, T5 width → model width) and every
block's ``attn2.to_k / to_v`` reads that projection: a function of the prompt alone, the same in every
block and at every timestep, so the closed forms apply with X = caption_projection(T5). T5 is masked.

What is the papers' and what is ours on PixArt. The model is PixArt's (Chen et al. 2024): DDPM ε-prediction with
learned sigma (2C output channels; the first C are ε, as the pipeline reads them), guided by classifier-free
guidance against the empty prompt in one batched call. The erasure methods were written for SD's UNet; here:

* **Text gradients** (:meth:`PixArtFamily.encode_graph`): the pipeline's ``encode_prompt`` (T5 at ``__call__``'s
  ``max_sequence_length``, masked) under the caller's grad mode, so substituted input-token embeddings reach the
  stream: the attacks (UnlearnDiffAtk, P4D, CCE, MMA) search T5's whole-word pieces (``▁castle``).
* **Dynamics** (:meth:`PixArtFamily.dynamics`): the DDPM forward process and ε target of the UNets; our sampler for
  fine-tuning's trajectories is the pipeline's own call with a DDIM scheduler built from its DPM-Solver config (the
  same training schedule), as on the UNets.
* **Fine-tuning**: ESD-x trains every Linear of ``attn2`` (the cross-attention, as ESD-x trains SD's ``attn2``),
  ESD-u the rest; MACE's LoRA stage reads ``attn2``'s attention maps with the T5 padding masked, as the processor
  masks it (:class:`~erasekit.models.capture.AttentionProbe`); PURE's activation basis records ``attn2``'s output
  before ``to_out`` (mean over image tokens), as on the UNets. Which layers and which maps are our choice for this DiT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import Conditioning, Family, Pipeline, Sampling, Site
from .dynamics import DDPMDynamics
from .sd import detached


def binning_kwargs(pipe: Pipeline, binned: tuple[int, ...]) -> dict[str, Any]:
    """``use_resolution_binning=False`` where the pipeline would refuse to bin (a transformer ``sample_size`` outside
    its aspect-ratio tables: the tiny test models); nothing where it bins (a square native size is its own bin)."""
    side = int(pipe.transformer.config.sample_size)
    return {} if side in binned else {"use_resolution_binning": False}


@dataclass(frozen=True)
class PixArtFamily(Family):
    max_sequence_length: int = 300  # PixArt-Σ's; PixArt-α uses 120 (read from the pipeline's __call__ below)
    binned: tuple[int, ...] = (32, 64, 128, 256)  # sample sizes PixArtSigmaPipeline has aspect-ratio bins for

    def generation_kwargs(
        self, pipe: Pipeline, guidance: float | None, batch: int, embeds: bool = False
    ) -> dict[str, Any]:
        """As the base (``guidance_scale``; the pipeline makes the empty negative itself), without resolution binning
        where the pipeline has no bins for the model's size."""
        return {**super().generation_kwargs(pipe, guidance, batch, embeds), **binning_kwargs(pipe, self.binned)}

    def sampling(self, pipe: Pipeline, scale: float) -> Sampling:
        base = super().sampling(pipe, scale)
        return Sampling({**base.kwargs, **binning_kwargs(pipe, self.binned)}, base.cfg)

    def _max_length(self, pipe: Pipeline) -> int:
        import inspect

        default = inspect.signature(type(pipe).__call__).parameters.get("max_sequence_length")
        return int(default.default) if default is not None else self.max_sequence_length

    def encode(self, pipe: Pipeline, prompts: Sequence[str]) -> Conditioning:
        with torch.no_grad():
            return detached(self.encode_graph(pipe, prompts))

    def encode_graph(
        self, pipe: Pipeline, prompts: Sequence[str], per_encoder: Sequence[Sequence[str]] | None = None
    ) -> Conditioning:
        """The pipeline's ``encode_prompt`` (T5, masked, at ``__call__``'s ``max_sequence_length``) with the graph
        kept: T5's input-token embeddings reach the stream (``encode_prompt`` runs under the caller's grad mode)."""
        # clean_caption=False: the pipeline's default cleaning needs Beautiful Soup and falls back to False without it
        out = pipe.encode_prompt(
            self.encoder_prompts(pipe, prompts, per_encoder)[0],
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=self.get_denoiser(pipe).device,
            clean_caption=False,
            max_sequence_length=self._max_length(pipe),
        )  # (T5 states (B, L, d_t5), mask (B, L), negative, negative mask)
        return Conditioning(out[0], out[1].to(torch.int64))

    def prompt_ids(self, pipe: Pipeline, prompts: Sequence[str]) -> list[list[int]]:
        """T5's ids of each prompt as ``encode_prompt`` reads it: lower-cased and stripped first."""
        return super().prompt_ids(pipe, pipe._text_preprocessing(list(prompts), clean_caption=False))

    def text_positions(self, pipe: Pipeline) -> tuple[int, ...]:
        """T5 positions the stream keeps: ``max_sequence_length`` (words + EOS)."""
        return (self._max_length(pipe),)

    def dynamics(self, pipe: Pipeline) -> DDPMDynamics:
        """DDPM ε-prediction (the first C of the learned-sigma 2C output channels, as ``denoise`` reads it), sampled
        by DDIM with classifier-free guidance in one batched call, as the UNets (:class:`DDPMDynamics`)."""
        return DDPMDynamics.of(pipe, binning_kwargs(pipe, self.binned))

    def text_kwargs(self, cond: Conditioning) -> dict[str, torch.Tensor]:
        """The text stream and its mask (``encoder_attention_mask``): a twin call with another prompt's stream must
        mask that prompt's padding, not the recorded one's."""
        return {"encoder_hidden_states": cond.embeds, "encoder_attention_mask": cond.mask}

    def site_input_modules(self, pipe: Pipeline) -> dict[str, nn.Module]:
        """The text encoder and the transformer's caption modules (:meth:`site_inputs` applies them)."""
        tr = self.get_denoiser(pipe)
        own = {f"transformer.{n}": getattr(tr, n) for n in ("caption_projection",)}
        return {**super().site_input_modules(pipe), **own}

    def site_inputs(self, pipe: Pipeline, cond: Conditioning, site: Site | None = None) -> torch.Tensor:
        tr = self.get_denoiser(pipe)
        x = cond.embeds.to(tr.dtype)
        out: torch.Tensor = tr.caption_projection(x)  # (B, L, d_model): what every attn2.to_k / to_v reads
        return out

    def denoise(self, pipe: Pipeline, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        tr = self.get_denoiser(pipe)
        added: dict[str, torch.Tensor | None] = {
            "resolution": None,
            "aspect_ratio": None,
        }  # PixArt-α 1024 adds size conditions; not at tiny sizes
        if getattr(tr.config, "use_additional_conditions", False):
            side = float(self.sample_size(pipe) * pipe.vae_scale_factor)
            b = x_t.shape[0]
            added = {
                "resolution": torch.tensor([[side, side]], dtype=x_t.dtype, device=x_t.device).repeat(b, 1),
                "aspect_ratio": torch.tensor([[1.0]], dtype=x_t.dtype, device=x_t.device).repeat(b, 1),
            }
        t = self.batch_timesteps(t, x_t.shape[0])
        kw = {"encoder_hidden_states": cond.embeds, "encoder_attention_mask": cond.mask, "added_cond_kwargs": added}
        out: torch.Tensor = tr(x_t, timestep=t, **kw).sample
        return self.first_half_if_learned_sigma(out, x_t)


PIXART = PixArtFamily(
    name="pixart",
    denoiser="transformer",
    pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
    description="PixArt-α / Σ (DiT, T5; attn2 on caption_projection)",
    lora_prefix="transformer",
    kohya=False,
    fine_tunes_denoiser=True,
    masked_text=True,
    lora_loader=False,  # diffusers 0.42 has no PixArt LoRA loader mixin
)
