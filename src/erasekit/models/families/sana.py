"""Sana: a linear-attention DiT whose ``transformer_blocks.*.attn2`` cross-attend to the normalised caption.

Gemma-2's states (with the pipeline's own complex-human-instruction prefix, then ``select_index``:
BOS plus the last ``max_sequence_length - 1`` positions) pass ``caption_projection`` and ``caption_norm``
once; every block's ``attn2.to_k / to_v`` reads that, the same at every block and timestep.
Gemma adds no EOS, so the last real token is the last concept token.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import Conditioning, Family, Pipeline, Site


@dataclass(frozen=True)
class SanaFamily(Family):
    def _call_default(self, pipe: Pipeline, name: str, fallback: object) -> Any:  # whatever __call__ declares
        p = inspect.signature(type(pipe).__call__).parameters.get(name)
        return fallback if p is None else p.default

    def encode(self, pipe: Pipeline, prompts: Sequence[str]) -> Conditioning:
        # The instruction prefix and sequence length __call__ uses by default: the context generation sees.
        out = pipe.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=self.get_denoiser(pipe).device,
            clean_caption=False,
            max_sequence_length=int(self._call_default(pipe, "max_sequence_length", 300)),
            complex_human_instruction=self._call_default(pipe, "complex_human_instruction", None),
        )  # (Gemma states (B, L, d_g), mask (B, L), negative, negative mask)
        return Conditioning(out[0].detach(), out[1].detach().to(torch.int64))

    def trailing_specials(self) -> int:
        return 0

    def site_input_modules(self, pipe: Pipeline) -> dict[str, nn.Module]:
        """The text encoder and the transformer's caption modules (:meth:`site_inputs` applies them)."""
        tr = self.get_denoiser(pipe)
        own = {f"transformer.{n}": getattr(tr, n) for n in ("caption_projection", "caption_norm")}
        return {**super().site_input_modules(pipe), **own}

    def site_inputs(self, pipe: Pipeline, cond: Conditioning, site: Site | None = None) -> torch.Tensor:
        tr = self.get_denoiser(pipe)
        out: torch.Tensor = tr.caption_norm(tr.caption_projection(cond.embeds.to(tr.dtype)))  # (B, L, d_model)
        return out

    def denoise(self, pipe: Pipeline, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The velocity (Sana is flow matching); ``t`` in the scheduler's units, scaled as the pipeline does."""
        tr = self.get_denoiser(pipe)
        t = self.batch_timesteps(t, x_t.shape[0])
        t = t * float(getattr(tr.config, "timestep_scale", 1.0))
        out: torch.Tensor = tr(
            x_t, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask, timestep=t
        ).sample
        return self.first_half_if_learned_sigma(out, x_t)


SANA = SanaFamily(
    name="sana",
    denoiser="transformer",
    pipelines=("SanaPipeline", "SanaPAGPipeline"),
    description="Sana (linear DiT, Gemma-2; attn2 on caption_norm(caption_projection))",
    lora_prefix="transformer",
    kohya=False,
    captures_activations=False,
    positions_follow_tokenizer=False,  # [BOS, last instruction token, prompt...]: see encode()
    lora_loader=True,  # SanaLoraLoaderMixin
)
