"""PixArt-α / Σ: a DiT whose ``transformer_blocks.*.attn2`` are true cross-attention on the projected caption.

The transformer projects the T5 states once (``caption_projection``, T5 width → model width) and every
block's ``attn2.to_k / to_v`` reads that projection: a function of the prompt alone, the same in every
block and at every timestep, so the closed forms apply with X = caption_projection(T5). T5 is masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .base import Conditioning, Family, Pipeline, Site


@dataclass(frozen=True)
class PixArtFamily(Family):
    max_sequence_length: int = 300  # PixArt-Σ's; PixArt-α uses 120 (read from the pipeline's __call__ below)

    def _max_length(self, pipe: Pipeline) -> int:
        import inspect

        default = inspect.signature(type(pipe).__call__).parameters.get("max_sequence_length")
        return int(default.default) if default is not None else self.max_sequence_length

    def encode(self, pipe: Pipeline, prompts: Sequence[str]) -> Conditioning:
        # clean_caption=False: the pipeline's default cleaning needs Beautiful Soup and falls back to False without it
        out = pipe.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=self.get_denoiser(pipe).device,
            clean_caption=False,
            max_sequence_length=self._max_length(pipe),
        )  # (T5 states (B, L, d_t5), mask (B, L), negative, negative mask)
        return Conditioning(out[0].detach(), out[1].detach().to(torch.int64))

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
    captures_activations=False,
    lora_loader=False,  # diffusers 0.42 has no PixArt LoRA loader mixin
)
