"""Sana: a linear-attention DiT whose ``transformer_blocks.*.attn2`` cross-attend to the normalised caption.

Gemma-2's states (with the pipeline's own complex-human-instruction prefix, then ``select_index``:
BOS plus the last ``max_sequence_length - 1`` positions) pass ``caption_projection`` and ``caption_norm``
once; every block's ``attn2.to_k / to_v`` reads that, the same at every block and timestep.
Gemma adds no EOS, so the last real token is the last concept token.

The kept stream is ``[BOS, prompt tokens..., padding]``: the pipeline keeps the last ``max_sequence_length − 1`` of
``len(tokenizer(instruction)) + max_sequence_length − 2`` positions, which start at the prompt's first token because
the instruction's trailing space joins the prompt's first word (``: ▁`` + ``a`` → ``:`` ``▁a``). So positions follow
``tokenizer(prompt)`` (:meth:`SanaFamily.token_segments`; MACE aligns by them) while Gemma, being causal, still reads
the whole instruction before the prompt.

What is the papers' and what is ours on Sana. The model is Sana's (Xie et al. 2024): flow matching (velocity;
``timestep_scale`` applied as the pipeline does), guided by classifier-free guidance against the pipeline's own
negative — ``""`` *without* the instruction prefix (:meth:`SanaFamily.encode_unconditional`) — in one batched call.
Here:

* **Text gradients**: :meth:`SanaFamily.encode_graph` is the pipeline's ``encode_prompt`` with the graph kept;
  :meth:`SanaFamily.encode_substituted` hides the instruction prefix from ``substitute``, which sees each prompt as
  ``tokenizer(prompt)`` lays it out (BOS, its tokens, padding) and whose output is put back behind the prefix: the
  attacks' per-encoder templates, carrier words and positions are the prompt's, and a carrier word inside the
  instruction is never replaced.
* **Dynamics** (:meth:`SanaFamily.dynamics`): the rectified-flow forward process and velocity target of SD3 / FLUX;
  our sampler is Euler on the scheduler's shifted σ (Sana ships DPM-Solver++ in flow mode; its ``flow_shift`` is
  read as the Euler scheduler's ``shift``), which is exactly SanaPipeline's own call with a flow-matching Euler
  scheduler.
* **Fine-tuning**: ESD-x trains every Linear of ``attn2`` (the cross-attention; ``attn1`` is Sana's *linear*
  self-attention over the image, which ESD-u trains with the rest), MACE's LoRA stage reads ``attn2``'s softmax
  attention (a ``SanaAttnProcessor2_0``: its query / key norms and the Gemma padding mask as the processor applies
  them), PURE's activation basis records ``attn2``'s output before ``to_out``. Our choices, as on PixArt.
* **Size**: SanaPipeline defaults to 1024 px and takes multiples of 32 px; for a model of another native size (the
  tiny test Sana) generation and sampling use its native size rounded up to 32 px (:meth:`SanaFamily.sample_size`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .base import Conditioning, Family, Pipeline, Sampling, Site
from .dynamics import FlowDynamics
from .pixart import binning_kwargs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
from .sd import detached


@dataclass(frozen=True)
class SanaFamily(Family):
    binned: tuple[int, ...] = (16, 32, 64, 128)  # sample sizes SanaPipeline has aspect-ratio bins for

    def generation_kwargs(
        self, pipe: Pipeline, guidance: float | None, batch: int, embeds: bool = False
    ) -> dict[str, Any]:
        """As the base (``guidance_scale``; the pipeline makes the empty negative itself), without resolution binning
        where the pipeline has no bins for the model's size, at the model's native size (:meth:`_native_size`)."""
        base = super().generation_kwargs(pipe, guidance, batch, embeds)
        return {**base, **binning_kwargs(pipe, self.binned), **self._native_size(pipe)}

    def sampling(self, pipe: Pipeline, scale: float) -> Sampling:
        base = super().sampling(pipe, scale)
        return Sampling({**base.kwargs, **binning_kwargs(pipe, self.binned), **self._native_size(pipe)}, base.cfg)

    def sample_size(self, pipe: Pipeline) -> int:
        """The latent side of the image the pipeline renders (:meth:`_native_size`): the config's ``sample_size``
        for the released models; the tiny test model's 8 rounds up to 16 (32 px), the least size SanaPipeline takes."""
        f = int(pipe.vae_scale_factor)
        return -(-int(self.get_denoiser(pipe).config.sample_size) * f // 32) * 32 // f

    def _native_size(self, pipe: Pipeline) -> dict[str, int]:
        """``height`` / ``width`` of the model's native image where ``__call__``'s default (1024 px) is not it (a
        model of another size: the tiny test Sana, 16 px, rendered at 32 px, the least size the pipeline takes);
        nothing for the released 1024-px models. An explicit size asked by the caller goes after these and wins."""
        side = self.sample_size(pipe) * int(pipe.vae_scale_factor)  # a multiple of 32 px, as SanaPipeline takes
        if int(self._call_default(pipe, "height", side)) == side == int(self._call_default(pipe, "width", side)):
            return {}
        return {"height": side, "width": side}

    def _call_default(self, pipe: Pipeline, name: str, fallback: object) -> Any:  # whatever __call__ declares
        p = inspect.signature(type(pipe).__call__).parameters.get(name)
        return fallback if p is None else p.default

    def _instruction(self, pipe: Pipeline) -> str:
        """The complex-human-instruction prefix ``__call__`` puts before every prompt by default ('' for none)."""
        chi = self._call_default(pipe, "complex_human_instruction", None)
        return "\n".join(chi) if chi else ""

    def _max_length(self, pipe: Pipeline) -> int:
        return int(self._call_default(pipe, "max_sequence_length", 300))

    def encode(self, pipe: Pipeline, prompts: Sequence[str]) -> Conditioning:
        with torch.no_grad():
            return detached(self.encode_graph(pipe, prompts))

    def encode_graph(
        self, pipe: Pipeline, prompts: Sequence[str], per_encoder: Sequence[Sequence[str]] | None = None
    ) -> Conditioning:
        """The pipeline's ``encode_prompt`` with the graph kept through Gemma-2: the instruction prefix and sequence
        length ``__call__`` uses by default (the context generation sees), then ``select_index``."""
        out = pipe.encode_prompt(
            self.encoder_prompts(pipe, prompts, per_encoder)[0],
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=self.get_denoiser(pipe).device,
            clean_caption=False,
            max_sequence_length=self._max_length(pipe),
            complex_human_instruction=self._call_default(pipe, "complex_human_instruction", None),
        )  # (Gemma states (B, L, d_g), mask (B, L), negative, negative mask)
        return Conditioning(out[0], out[1].to(torch.int64))

    def encode_unconditional(self, pipe: Pipeline, n: int = 1) -> Conditioning:
        """SanaPipeline's negative branch: the empty prompt *without* the instruction prefix and without
        ``select_index``, padded to ``max_sequence_length`` (what its classifier-free guidance subtracts)."""
        with torch.no_grad():
            embeds, mask = pipe._get_gemma_prompt_embeds(
                [""] * n,
                device=self.get_denoiser(pipe).device,
                dtype=pipe.text_encoder.dtype,
                clean_caption=False,
                max_sequence_length=self._max_length(pipe),
                complex_human_instruction=None,
            )  # (n, L, d_g), (n, L)
        return Conditioning(embeds.detach(), mask.detach().to(torch.int64))

    def text_positions(self, pipe: Pipeline) -> tuple[int, ...]:
        """Positions of ``tokenizer(prompt)`` (BOS + words) that ``select_index`` keeps: ``max_sequence_length``."""
        return (self._max_length(pipe),)

    def prompt_starts(self, pipe: Pipeline, prompts: Sequence[str]) -> list[int]:
        """Where each prompt's own first token stands in the ids Gemma reads (``instruction + prompt`` tokenized
        whole): the tokens of the whole string less the prompt's own (without BOS), so a boundary the tokenizer merges
        (the instruction's trailing space joins the first word: ``▁the``) is counted once. 1 without an instruction."""
        chi, tok = self._instruction(pipe), self.tokenizer(pipe)
        texts = pipe._text_preprocessing(list(prompts), clean_caption=False)  # lower-cased, stripped, as encode_prompt
        return [
            len(tok(chi + p).input_ids) - len(tok(p, add_special_tokens=False).input_ids) if chi else 1 for p in texts
        ]

    def prompt_ids(self, pipe: Pipeline, prompts: Sequence[str]) -> list[list[int]]:
        """Gemma's ids of each prompt where it stands, behind the instruction prefix: a tokenizer without a prefix
        space (Gemma's) reads the first word there as ``▁word``, alone as ``word``."""
        chi, tok = self._instruction(pipe), self.tokenizer(pipe)
        texts = pipe._text_preprocessing(list(prompts), clean_caption=False)
        if not chi:
            return super().prompt_ids(pipe, texts)
        starts = self.prompt_starts(pipe, texts)
        return [list(tok(chi + p).input_ids)[s:] for p, s in zip(texts, starts, strict=True)]

    def token_segments(self, pipe: Pipeline) -> tuple[tuple[PreTrainedTokenizerBase, int], ...] | None:
        """One segment from position 0 when the stream ``select_index`` keeps is ``[BOS, prompt tokens...]``: the
        pipeline keeps the last ``max_sequence_length − 1`` of ``len(tokenizer(instruction)) + max_sequence_length − 2``
        positions, so its tail starts at ``len(tokenizer(instruction)) − 1``, which is where the prompt starts when the
        instruction's trailing space joins the prompt's first word (``: ▁`` + ``a`` → ``:`` ``▁a``; Gemma's and the
        stand-in's tokenizers). Otherwise (an instruction whose last token stays its own) None: MACE refuses."""
        chi = self._instruction(pipe)
        if not chi:
            return ((self.tokenizer(pipe), 0),)
        kept_from = len(self.tokenizer(pipe)(chi).input_ids) - 1
        probes = ["a", "a photo of a cat"]
        aligned = all(s == kept_from for s in self.prompt_starts(pipe, probes))
        return ((self.tokenizer(pipe), 0),) if aligned else None

    def encode_substituted(
        self,
        pipe: Pipeline,
        prompts: Sequence[str],
        substitute: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
        per_encoder: Sequence[Sequence[str]] | None = None,
    ) -> Conditioning:
        """As the base, with the instruction prefix hidden from ``substitute``: it sees, per prompt, BOS then the
        prompt's own tokens and padding, (B, L', ·), as ``tokenizer(prompt)`` lays them out (so templates, carrier ids
        and positions are the prompt's, and a carrier word in the instruction is never replaced); what it returns is
        put back in place, and the instruction's embeddings stay the table's."""
        starts = self.prompt_starts(pipe, self.encoder_prompts(pipe, prompts, per_encoder)[0])

        def in_place(enc: int, ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            n = ids.shape[1] - max(starts)  # prompt positions every row has: (B, 1 + n) views

            def view(x: torch.Tensor) -> torch.Tensor:
                return torch.stack([torch.cat([x[b, :1], x[b, s : s + n]]) for b, s in enumerate(starts)])

            new = substitute(enc, view(ids), view(embeds))  # (B, 1 + n, d_g)
            rows = [
                torch.cat([new[b, :1], embeds[b, 1:s], new[b, 1:], embeds[b, s + n :]]) for b, s in enumerate(starts)
            ]
            return torch.stack(rows)

        return super().encode_substituted(pipe, prompts, in_place, per_encoder)

    def dynamics(self, pipe: Pipeline) -> FlowDynamics:
        """Flow matching (velocity; Sana trains rectified flow, Xie et al. 2024, §2.3), sampled by Euler steps on the
        scheduler's own σ spacing with its shift (SanaPipeline hands the scheduler no σ), classifier-free guidance in
        one batched call. Sana ships DPM-Solver++ in flow mode (``flow_shift``): its shift is read into the Euler
        scheduler's ``shift`` and its σ grid, shift(1 − k / steps), is the σ ramp (our sampler; the σ schedule and
        the model are Sana's)."""
        cfg = pipe.scheduler.config
        if "flow_shift" in cfg or "shift" not in cfg:  # DPMSolverMultistepScheduler(use_flow_sigmas, flow_shift)
            shift = float(cfg.get("flow_shift", 1.0) or 1.0)
            cfg = {"num_train_timesteps": int(cfg.get("num_train_timesteps", 1000)), "shift": shift}  # Euler's config
            return FlowDynamics(cfg, sigma_ramp=True)  # its σ grid: shift(1 − k / steps), k = 0 .. steps − 1
        return FlowDynamics(cfg, sigma_ramp=False)  # a flow-matching Euler scheduler: SanaPipeline's own call

    def trailing_specials(self) -> int:
        return 0

    def text_kwargs(self, cond: Conditioning) -> dict[str, torch.Tensor]:
        """The text stream and its mask (``encoder_attention_mask``): a twin call with another prompt's stream must
        mask that prompt's padding, not the recorded one's."""
        return {"encoder_hidden_states": cond.embeds, "encoder_attention_mask": cond.mask}

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
    fine_tunes_denoiser=True,
    masked_text=True,
    lora_loader=True,  # SanaLoraLoaderMixin
)
