"""What a family is: the typed conditioning, an edit site, and the :class:`Family` interface.

A family is the one place that knows how a pipeline's text reaches its denoiser (DESIGN §10):
which component denoises (``unet`` / ``transformer``), which Linear layers read text (its *edit
sites*, found by module structure, never by name), what feeds them, how the pipeline encodes a
prompt, how to call the denoiser, and what the sites are called in export formats. Methods see
matrices through :class:`~erasekit.models.adapter.PipelineAdapter`, which asks the family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import ModelError

# What feeds a site. Only "static_text" exists so far: the input is a function of the prompt alone, the
# same in every block and at every timestep (UNet cross-attention, PixArt / Sana attn2 on the projected
# caption). Joint-attention families (SD3, FLUX) will add "text_timestep", "evolving_text", "shared".
INPUT_KINDS = ("static_text",)
PROJECTIONS = {"k": "to_k", "v": "to_v"}


@dataclass(frozen=True)
class Conditioning:
    """A batch of prompts as the pipeline hands them to its denoiser (no CFG branch).

    ``embeds``: the text stream (B, L, d_text) exactly as the denoiser receives it;
    ``mask``: (B, L) int64, 1 on real tokens (the tokenizer's mask, selected as the pipeline selects);
    ``pooled``: (B, d_pool) or None (SDXL's pooled CLIP-G);
    ``added``: further denoiser keyword tensors, each batched on dim 0 (SDXL ``text_embeds`` / ``time_ids``).
    """

    embeds: torch.Tensor  # (B, L, d_text)
    mask: torch.Tensor  # (B, L) int64
    pooled: torch.Tensor | None = None  # (B, d_pool)
    added: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def index(self, idx) -> Conditioning:
        """The prompts ``idx`` selects (an int list, a slice or an index tensor), every tensor alike."""
        pick = (lambda x: x[idx]) if not isinstance(idx, int) else (lambda x: x[idx : idx + 1])
        return Conditioning(
            pick(self.embeds),
            pick(self.mask),
            None if self.pooled is None else pick(self.pooled),
            {k: pick(v) for k, v in self.added.items()},
        )

    def with_embeds(self, embeds: torch.Tensor) -> Conditioning:
        """The same conditioning with another text stream (ACE's adversarial perturbation)."""
        return dataclasses.replace(self, embeds=embeds)

    def last_real(self) -> torch.Tensor:
        """(B,) index of each prompt's last real token (the mask need not be a prefix: Sana selects a tail)."""
        L = self.mask.shape[1]
        return (L - 1 - self.mask.flip(1).to(torch.int64).argmax(dim=1)).to(torch.int64)


@dataclass(frozen=True)
class Site:
    """One edit site: a Linear at ``path`` (relative to the denoiser) and what feeds it."""

    path: str
    input_kind: str = "static_text"
    group: str = "text"  # sites of one group share their input (and so their Gram statistics)


def is_cross_attention(module: nn.Module) -> bool:
    """A diffusers ``Attention`` that attends to another sequence (``is_cross_attention``) with a Linear ``to_k``.

    Structure, not names: SD3.5-Medium's ``attn2`` is image self-attention (``is_cross_attention`` false)
    and must never be edited as if it read text.
    """
    return bool(getattr(module, "is_cross_attention", False)) and isinstance(getattr(module, "to_k", None), nn.Linear)


def cross_attention_sites(denoiser: nn.Module, projections: Sequence[str] = ("k", "v")) -> list[Site]:
    """``to_k`` / ``to_v`` of every cross-attention module, in module order."""
    attns = [n for n, m in denoiser.named_modules() if is_cross_attention(m)]
    return [Site(f"{a}.{PROJECTIONS[p]}") for a in attns for p in projections]


@dataclass(frozen=True)
class Family:
    """A diffusers pipeline family. Subclasses are small frozen dataclasses registered with ``register_family``.

    ``name``: the registry name (recorded as ``base.family`` in edit files);
    ``denoiser``: the pipeline attribute holding the denoiser (``unet`` / ``transformer``);
    ``pipelines``: diffusers pipeline class names of the family (what :meth:`matches` recognises first);
    ``lora_prefix``: the PEFT / diffusers LoRA key prefix; ``kohya``: whether kohya / single-file names exist.
    """

    name: str
    denoiser: str
    pipelines: tuple[str, ...]
    description: str
    lora_prefix: str
    kohya: bool = False
    lora_loader: bool = True  # whether the pipeline has diffusers' load_lora_weights for its denoiser
    # Whether the methods that run the denoiser (ESD, ACE, MACE's LoRA stage, PURE's capture) are validated here:
    # they sample trajectories with the pipeline and a DDIM scheduler (ε-prediction), which PixArt / Sana do not share.
    runs_denoiser_methods: bool = True
    # Whether position i of the site input is token i of ``tokenizer(prompt)`` (MACE aligns prompts by it).
    positions_follow_tokenizer: bool = True

    # ---------------------------------------------------------------- identity
    def matches(self, pipe) -> bool:
        """Whether ``pipe`` is of this family: its class (or a base class) is one of ``pipelines``."""
        names = {c.__name__ for c in type(pipe).__mro__}
        return bool(names & set(self.pipelines)) and isinstance(getattr(pipe, self.denoiser, None), nn.Module)

    def fallback(self, pipe) -> bool:
        """Whether to accept ``pipe`` when no family recognises its class (fine-tunes' own pipeline classes)."""
        return False

    def get_denoiser(self, pipe) -> Any:  # a diffusers model: its attributes (config, dtype, ...) are dynamic
        den = getattr(pipe, self.denoiser, None)
        if not isinstance(den, nn.Module):
            raise ModelError(f"{type(pipe).__name__} has no {self.denoiser!r}; a {self.name} pipeline needs one")
        return den

    # ---------------------------------------------------------------- denoiser helpers
    @staticmethod
    def batch_timesteps(t: torch.Tensor, batch: int) -> torch.Tensor:
        """(B,) timesteps from a scalar or a (B,) tensor."""
        return t.expand(batch) if t.dim() == 0 else t

    @staticmethod
    def first_half_if_learned_sigma(out: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """A learned-sigma DiT (2C output channels) predicts with its first C channels, as pipelines read it."""
        return out.chunk(2, dim=1)[0] if out.shape[1] == 2 * x_t.shape[1] else out

    # ---------------------------------------------------------------- sites
    def edit_sites(self, pipe, projections: Sequence[str] = ("k", "v")) -> list[Site]:
        """The static-text sites: ``to_k`` / ``to_v`` of every cross-attention module of the denoiser."""
        return cross_attention_sites(self.get_denoiser(pipe), projections)

    # ---------------------------------------------------------------- text
    def tokenizer(self, pipe):
        return pipe.tokenizer

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:  # pragma: no cover - abstract
        raise NotImplementedError

    def text_encoders(self, pipe) -> tuple[nn.Module, ...]:
        """The text encoders whose input-token embeddings :meth:`encode_substituted` hands over, in order."""
        encs = (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
        return tuple(e for e in encs if isinstance(e, nn.Module))

    def encode_graph(self, pipe, prompts: Sequence[str]) -> Conditioning:
        """:meth:`encode` keeping the autograd graph through the text encoder(s): what attacks that optimise prompts
        or token embeddings differentiate. Families that do not offer it refuse in one line."""
        raise ModelError(
            f"the {self.name} family does not offer gradients through its text encoder yet; "
            "attacks that optimise prompts or tokens run on SD 1.x / 2.x and SDXL pipelines"
        )

    def input_embeddings(self, pipe) -> tuple[torch.Tensor, ...]:
        """Each text encoder's input-token table (V, d_e), in :meth:`text_encoders` order (read-only use)."""
        return tuple(enc.get_input_embeddings().weight for enc in self.text_encoders(pipe))  # type: ignore[operator]

    def text_gradients(self) -> bool:
        """Whether :meth:`encode_graph` (and so :meth:`encode_substituted`) is offered by this family."""
        return type(self).encode_graph is not Family.encode_graph

    def encode_substituted(self, pipe, prompts: Sequence[str], substitute) -> Conditioning:
        """:meth:`encode_graph` with each text encoder's input-token embeddings (B, L, d_e) replaced by
        ``substitute(encoder index, token ids (B, L), embeddings) -> (B, L, d_e)``: the way in for soft prompts and
        learned tokens, whatever the encoder does after its token table (positions, pooling at EOS, masks). The
        grad mode is the caller's."""
        hooks = []
        for i, enc in enumerate(self.text_encoders(pipe)):
            table: nn.Module = enc.get_input_embeddings()  # type: ignore[operator]  # transformers' PreTrainedModel

            def hook(module, args, out, i=i):
                return substitute(i, args[0], out)

            hooks.append(table.register_forward_hook(hook))
        try:
            return self.encode_graph(pipe, prompts)
        finally:
            for h in hooks:
                h.remove()

    def site_inputs(self, pipe, cond: Conditioning, site: Site | None = None) -> torch.Tensor:
        """What a static-text site reads, (B, L, d_in), for ``cond``: the text stream itself by default."""
        return cond.embeds

    def trailing_specials(self) -> int:
        """How many special tokens follow the last concept token (CLIP and T5: EOS; Gemma: none)."""
        return 1

    # ---------------------------------------------------------------- denoiser
    def denoise(self, pipe, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:  # pragma: no cover
        """The denoiser's prediction for latents ``x_t`` (B, C, h, w) at timesteps ``t`` (B,) under ``cond``."""
        raise NotImplementedError

    def sample_size(self, pipe) -> int:
        """The denoiser's native latent side."""
        return int(self.get_denoiser(pipe).config.sample_size)

    # ---------------------------------------------------------------- export names
    def peft_key(self, path: str, part: str) -> str:
        """A PEFT / diffusers LoRA tensor name: ``<prefix>.<module>.lora_A.weight`` (part 'lora_A' / 'lora_B')."""
        return f"{self.lora_prefix}.{path}.{part}.weight"
