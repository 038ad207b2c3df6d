"""Stable Diffusion 3 / 3.5: an MMDiT whose text enters through two Linears that read the prompt alone.

SD3 has no cross-attention. The text stream — CLIP-L and CLIP-G penultimate states concatenated,
zero-padded to T5's width, then joined with T5's states along the sequence (T5 unmasked) — passes
``context_embedder`` once before the joint blocks; the pooled vector (CLIP-L ⊕ CLIP-G pooled) passes
``time_text_embed.text_embedder.linear_1`` once, added to the timestep embedding. Both are static
sites (DESIGN §10): their inputs are functions of the prompt alone, whatever the timestep and latent.
They read *different* inputs, so they are two site groups ("text", "pooled") and a closed form is
solved per group. The joint blocks' ``add_k_proj / add_v_proj`` read a timestep-modulated text
stream: they are opt-in *joint* sites (``sites='joint'`` or ``'all'``; :func:`mmdit_joint_sites`), one group per
block, whose columns are captured during sampling (:mod:`erasekit.models.joint`).
SD3.5-Medium's ``attn2`` is a second *image* self-attention
(``is_cross_attention`` false) and is never a site: sites are found by structure, not by name.

**Fine-tuning** (ESD, ACE, MACE's LoRA stage) runs here as on FLUX. What is the papers' or the reference code's:
rectified flow (Esser et al. 2024: x_σ = (1 − σ) x_0 + σ ε, the transformer predicts v = ε − x_0 at timestep
1000 σ), sampled as StableDiffusion3Pipeline samples (``FlowMatchEulerDiscreteScheduler`` spacing and ``shift``,
true CFG against the empty prompt in one batched [unconditional, conditional] call: :meth:`MMDiTFamily.dynamics`);
ESD's objective on it (linear in the prediction, so unchanged); ESD-x trains every Linear of each block's joint
attention ``attn`` and ESD-u every other Linear / Conv2d, as rohitgandikota/erasing ``esd_sd35.py`` selects by
``'.attn.' in name`` (its defaults: lr 3e-5 for both, η 2, guidance 7.5, 28 steps; ``methods/esd.py``
``REFERENCE``). What is our choice for a DiT with no cross-attention: the joint attentions are found by structure
(:func:`joint_attention_blocks`: the attentions whose keys include the text stream), so SD3.5-M's ``attn2`` (image
self-attention) is never trained as "cross attention" by ESD-x and goes to ESD-u, as in ``esd_sd35.py``;
ESD-x-strict (not in ``esd_sd35.py``) trains the two static sites; the frozen unconditional prediction reads the
empty prompt's pooled vector where ``esd_sd35.py`` passes the concept's; MACE reads the image→text columns of
every joint block's softmax (:class:`JointAttentionProbe`) at the concept's tokens in both segments of the text
stream, CLIP-L's and T5's (:meth:`SD3Family.token_segments`), where the original reads UNet cross-attention maps.

:class:`MMDiTFamily` holds what SD3 and FLUX share (:mod:`.flux` subclasses it).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ...errors import ModelError
from .base import PROJECTIONS, Conditioning, Family, Pipeline, Sampling, Site, check_site_set
from .dynamics import FlowDynamics
from .sd import clip_mask, detached

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


JOINT_PROJECTIONS = {p: f"add_{p}_proj" for p in PROJECTIONS}  # k -> add_k_proj, v -> add_v_proj


def joint_attention_blocks(den: Any) -> list[str]:  # a diffusers model: its config is dynamic
    """Module paths of the attentions whose keys and values include a second, text stream: an attention module with
    Linear ``add_k_proj`` and ``add_v_proj`` reading the transformer's hidden width and an image output ``to_out``.

    Found by structure: SD3.5-M's image-only ``attn2`` and FLUX's single-stream attentions have no ``add_*_proj``;
    an ``add_k_proj`` reading another width (an IP-adapter's image tokens) is not the text stream.
    """
    inner = int(den.config.num_attention_heads) * int(den.config.attention_head_dim)  # the joint stream's width
    out = []
    for name, m in den.named_modules():
        k, v = getattr(m, "add_k_proj", None), getattr(m, "add_v_proj", None)
        if isinstance(k, nn.Linear) and isinstance(v, nn.Linear) and k.in_features == v.in_features == inner:
            if isinstance(getattr(m, "to_out", None), nn.ModuleList):
                out.append(name)
    return out


def mmdit_joint_sites(den: Any, projections: Sequence[str] = ("k", "v")) -> list[Site]:
    """The opt-in joint sites: ``add_k_proj`` / ``add_v_proj`` of every joint-attention block, one group per block
    (the block's two projections read the same modulated text stream; another block reads another one)."""
    blocks = joint_attention_blocks(den)
    if not blocks:
        raise ModelError(f"{type(den).__name__} has no joint-attention block with add_k_proj / add_v_proj")
    return [Site(f"{b}.{JOINT_PROJECTIONS[p]}", "joint_text", b) for b in blocks for p in projections]


def joint_attention_probs(
    attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, rope: Any = None
) -> torch.Tensor:
    """(B, heads, N, L + N): the image queries' attention over the joint [text, image] keys of an MMDiT joint block,
    softmax(q kᵀ / √d), as the block's processor computes it: per-head q / k norms where the block has them (FLUX,
    SD3.5; SD3.0 has none), RoPE on the joint sequence where the model has it (FLUX; SD3 has none: ``rope`` None).

    ``hidden_states`` (B, N, D) and ``encoder_hidden_states`` (B, L, D): the block's normed image and text streams.
    The text keys come first here, as ``FluxAttnProcessor`` joins them; ``JointAttnProcessor2_0`` (SD3) puts them
    last, which permutes the keys and changes no probability.
    """
    from diffusers.models.embeddings import apply_rotary_emb as rotary

    rotate: Callable[..., Any] = rotary  # diffusers annotates its return as a pair; it is one tensor
    d, L = attn.to_k.out_features // attn.heads, encoder_hidden_states.shape[1]

    def heads(x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:  # (B, n, h·d) -> (B, n, h, d), normed
        x = x.unflatten(-1, (-1, d))
        return x if norm is None else norm(x)

    q = heads(attn.to_q(hidden_states), attn.norm_q)  # (B, N, h, d) image queries
    k_img = heads(attn.to_k(hidden_states), attn.norm_k)  # (B, N, h, d)
    k_txt = heads(attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)  # (B, L, h, d)
    k = torch.cat([k_txt, k_img], dim=1)  # (B, L + N, h, d): text first
    if rope is not None:  # (cos, sin), each (L + N, d): the image queries sit at positions L ..
        q, k = rotate(q, (rope[0][L:], rope[1][L:]), sequence_dim=1), rotate(k, rope, sequence_dim=1)
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(d)  # (B, h, N, L + N)
    return scores.softmax(dim=-1)


class JointAttentionProbe:
    """Pre-hooks on MMDiT joint-attention modules (FLUX's double-stream blocks, every SD3 block's ``attn``) passing
    each call's image→text attention probabilities, (B, heads, N, L) (the text columns of the joint softmax), to
    ``sink(block, P)``; removed on exit (also on error).
    """

    def __init__(self, den: nn.Module, blocks: Sequence[str], sink: Callable[[str, torch.Tensor], None]) -> None:
        self.den, self.blocks, self.sink = den, list(blocks), sink
        self._handles: list[RemovableHandle] = []

    def _hook(self, block: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hs = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            ehs = kwargs.get("encoder_hidden_states")
            if not isinstance(ehs, torch.Tensor):
                raise ModelError(f"{block}: a joint-attention call without the text stream")
            P = joint_attention_probs(module, hs, ehs, kwargs.get("image_rotary_emb"))
            self.sink(block, P[..., : ehs.shape[1]])  # (B, h, N, L)

        return hook

    def __enter__(self) -> JointAttentionProbe:
        try:
            for b in self.blocks:
                self._handles.append(
                    self.den.get_submodule(b).register_forward_pre_hook(self._hook(b), with_kwargs=True)
                )
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


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

    ``sites='joint'`` / ``'all'`` add the joint blocks' ``add_k_proj`` / ``add_v_proj`` (one group per block;
    ``projections`` pick K / V among them); the two static sites are always both edited when included.
    """

    def edit_sites(self, pipe: Pipeline, projections: Sequence[str] = ("k", "v"), sites: str = "static") -> list[Site]:
        check_site_set(sites)
        den = self.get_denoiser(pipe)
        static = mmdit_static_sites(den) if sites in ("static", "all") else []
        joint = mmdit_joint_sites(den, projections) if sites in ("joint", "all") else []
        return static + joint

    def encode_pooled(self, pipe: Pipeline, prompts: Sequence[str]) -> torch.Tensor:  # pragma: no cover - abstract
        """(B, d_pool) the pooled vector of :meth:`encode`, computed as the pipeline's ``encode_prompt`` does it, by the
        CLIP encoders alone."""
        raise NotImplementedError

    def encode_for_site(self, pipe: Pipeline, prompts: Sequence[str], site: Site) -> Conditioning:
        """The pooled site reads CLIP's pooled vector alone: only the CLIP encoders run (T5, the most of an encoding's
        time at full size, does not); the text stream and the joint sites get :meth:`encode`. The pooled vector is the
        one ``encode`` gives, to the bit: the same calls on the same prompts (a test checks it)."""
        if site.input_kind != "pooled_text":
            return self.encode(pipe, prompts)
        with torch.no_grad():
            pooled = self.encode_pooled(pipe, prompts).detach()  # (B, d_pool)
        one = torch.ones(pooled.shape[0], 1, dtype=torch.int64)
        return Conditioning(pooled[:, None, :], one, pooled)  # a stream of one token: what the site reads

    def text_kwargs(self, cond: Conditioning) -> dict[str, torch.Tensor]:
        """The text stream and the pooled vector: both carry the prompt into an MMDiT call."""
        if cond.pooled is None:
            raise ModelError(f"{self.name}: a denoiser call needs the pooled text, which encode() did not give")
        return {"encoder_hidden_states": cond.embeds, "pooled_projections": cond.pooled}

    def sampling(self, pipe: Pipeline, scale: float) -> Sampling:
        """As the base, at the T5 length :meth:`encode` uses, so captured streams align with encoded ones."""
        base = super().sampling(pipe, scale)
        return Sampling({**base.kwargs, "max_sequence_length": self.max_sequence_length(pipe)}, base.cfg)

    def max_sequence_length(self, pipe: Pipeline) -> int:
        """T5 positions of the text stream: what ``__call__`` uses by default."""
        return int(call_default(pipe, "max_sequence_length", 256))

    def text_positions(self, pipe: Pipeline) -> tuple[int, ...]:
        """CLIP's 77 per CLIP encoder, and for T5 (the last) the positions :meth:`encode` keeps,
        :meth:`max_sequence_length` (SD3: 256; FLUX.1-dev 512, schnell 256), not its tokenizer's ``model_max_length``
        (512 on every published SD3 / FLUX T5): a longer attack sequence would be cut by the encoder, not refused."""
        *clip, t5 = super().text_positions(pipe)
        return (*clip, min(t5, self.max_sequence_length(pipe)))

    def dynamics(self, pipe: Pipeline) -> FlowDynamics:
        """Rectified flow (velocity), sampled on the scheduler's own σ spacing (StableDiffusion3Pipeline) with true
        CFG."""
        return FlowDynamics(pipe.scheduler.config, sigma_ramp=False)

    def text_attention_modules(self, pipe: Pipeline) -> list[str]:
        """Every attention module of the transformer: an MMDiT has no cross-attention, text and image tokens meet in
        joint attention (double-stream) or in one mixed sequence (FLUX's single-stream blocks). ESD's FLUX port
        (rohitgandikota/erasing ``esd_flux.py``) trains these as ESD-x; SD3 narrows them to its joint attentions."""
        from diffusers.models.attention import AttentionModuleMixin
        from diffusers.models.attention_processor import Attention

        den = self.get_denoiser(pipe)
        return [n for n, m in den.named_modules() if isinstance(m, (Attention, AttentionModuleMixin))]

    def text_attention_probe(
        self, pipe: Pipeline, site_paths: Sequence[str], sink: Callable[[str, torch.Tensor], None]
    ) -> JointAttentionProbe:
        """The image→text columns of the joint attention of every joint block (:func:`joint_attention_blocks`: FLUX's
        double-stream blocks, every SD3 block's ``attn``, its last, ``context_pre_only`` block included, whose image
        queries still read the text). Not probed: FLUX's single-stream blocks (one mixed sequence whose text length
        the block does not know) and SD3.5's ``attn2`` (image only)."""
        den = self.get_denoiser(pipe)
        return JointAttentionProbe(den, joint_attention_blocks(den), sink)


@dataclass(frozen=True)
class SD3Family(MMDiTFamily):
    def tokenizer(self, pipe: Pipeline) -> PreTrainedTokenizerBase:
        tok: PreTrainedTokenizerBase = pipe.tokenizer  # CLIP-L: the first 77 positions of the text stream
        return tok

    def token_segments(self, pipe: Pipeline) -> tuple[tuple[PreTrainedTokenizerBase, int], ...] | None:
        clip = ((pipe.tokenizer, 0),)
        n_clip = int(pipe.tokenizer.model_max_length)
        return clip if pipe.text_encoder_3 is None else (*clip, (pipe.tokenizer_3, n_clip))

    TEXT_ENCODER_ATTRS = (*Family.TEXT_ENCODER_ATTRS, ("text_encoder_3", "tokenizer_3"))  # CLIP-L, CLIP-G, T5

    def text_attention_modules(self, pipe: Pipeline) -> list[str]:
        """The joint attention ``attn`` of every block (ESD-x trains its Linears: to_q / to_k / to_v, add_q / add_k /
        add_v_proj, to_out, to_add_out), as ``esd_sd35.py`` selects ``'.attn.'``; found by structure, so SD3.5-M's
        ``attn2``, an image self-attention, is not among them."""
        return joint_attention_blocks(self.get_denoiser(pipe))

    def encode(self, pipe: Pipeline, prompts: Sequence[str]) -> Conditioning:
        with torch.no_grad():
            return detached(self.encode_graph(pipe, prompts))

    def encode_graph(
        self, pipe: Pipeline, prompts: Sequence[str], per_encoder: Sequence[Sequence[str]] | None = None
    ) -> Conditioning:
        """StableDiffusion3Pipeline's ``encode_prompt`` with the graph kept through CLIP-L, CLIP-G and T5
        (``per_encoder``: their own prompts, ``prompt`` / ``prompt_2`` / ``prompt_3``)."""
        length = self.max_sequence_length(pipe)
        texts = self.encoder_prompts(pipe, prompts, per_encoder)
        t5_text = texts[2] if len(texts) == 3 else list(prompts)
        out = pipe.encode_prompt(
            prompt=texts[0],
            prompt_2=texts[1],
            prompt_3=t5_text,
            device=self.get_denoiser(pipe).device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=length,
        )  # (embeds (B, 77 + length, d_t5), negative, pooled (B, d_L + d_G), negative pooled)
        if pipe.text_encoder_3 is None:  # the pipeline feeds zeros in T5's place: no real token there
            t5 = torch.zeros(len(prompts), length, dtype=torch.int64)
        else:
            t5 = t5_mask(pipe.tokenizer_3, t5_text, length)
        mask = torch.cat([clip_mask(pipe.tokenizer, texts[0]), t5], dim=1)  # (B, 77 + length)
        return Conditioning(out[0], mask, out[2])

    def encode_pooled(self, pipe: Pipeline, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP-L's and CLIP-G's pooled vectors, concatenated (B, d_L + d_G), as ``encode_prompt`` computes them."""
        texts = self.encoder_prompts(pipe, prompts)
        device = self.get_denoiser(pipe).device
        pooled = [
            pipe._get_clip_prompt_embeds(
                prompt=texts[i], device=device, num_images_per_prompt=1, clip_skip=None, clip_model_index=i
            )[1]
            for i in (0, 1)
        ]
        return torch.cat(pooled, dim=-1)

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
    lora_loader=True,  # SD3LoraLoaderMixin
    fine_tunes_denoiser=True,
    original_names=(
        ("context_embedder", "context_embedder"),
        ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
    ),
)
