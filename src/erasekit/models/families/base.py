"""What a family is: the typed conditioning, an edit site, and the :class:`Family` interface.

A family is the one place that knows how a pipeline's text reaches its denoiser (DESIGN §10):
which component denoises (``unet`` / ``transformer``), which Linear layers read text (its *edit
sites*, found by module structure, never by name), what feeds them, how the pipeline encodes a
prompt, how to call the denoiser, and what the sites are called in export formats. Methods see
matrices through :class:`~erasekit.models.adapter.PipelineAdapter`, which asks the family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import torch
from torch import nn

from ...errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .dynamics import Dynamics

# A live diffusers pipeline. Any, on purpose: its components (``unet`` / ``transformer``, ``tokenizer``,
# ``encode_prompt``, ``vae_scale_factor``, ...) are set per pipeline class at run time, which no static type of
# ``DiffusionPipeline`` describes (and ``from diffusers import X`` gives mypy X's placeholder class); a family is the
# one place that reads them, and gives what it returns a type.
Pipeline: TypeAlias = Any
# What selects prompts of a batch: one index, an int list, a slice or an index tensor.
BatchIndex: TypeAlias = int | slice | Sequence[int] | torch.Tensor

# What feeds a site; both kinds are functions of the prompt alone, the same in every block and at every timestep:
# "static_text": a token stream (B, L, d) (UNet cross-attention, PixArt / Sana attn2 on the projected caption, the
#   SD3 / FLUX context_embedder);
# "pooled_text": one vector per prompt (B, d), seen as a stream of one token (SD3 / FLUX's pooled text embedder).
# "joint_text": the text stream as one joint-attention block reads it (SD3 / FLUX ``add_k_proj`` / ``add_v_proj``):
#   after the earlier blocks and this block's timestep-modulated norm, so a function of the prompt, the latent and the
#   timestep; its columns are gathered by hooks during sampling (:mod:`erasekit.models.joint`), and a closed form
#   solved on them is exact only for the trajectories it saw (an approximation elsewhere).
INPUT_KINDS = ("static_text", "pooled_text", "joint_text")
# Which sites an adapter edits: the static ones (the default), the per-block joint ones (SD3 / FLUX), or both.
SITE_SETS = ("static", "joint", "all")
# How a pipeline lays out classifier-free guidance in its denoiser calls: "none" (one conditional call per step),
# "batch" (one call on [unconditional, conditional] stacked on dim 0: diffusers' UNet pipelines, SD3) or "calls"
# (two calls per step, the conditional first: FluxPipeline's true CFG).
CFG_LAYOUTS = ("none", "batch", "calls")
# What a fine-tuning method trains (:meth:`Family.fine_tune_layers`): the attention where text meets image (ESD-x) or
# every other layer (ESD-u).
FINE_TUNE_PARTS = ("attention", "rest")
PROJECTIONS = {"k": "to_k", "v": "to_v"}


@dataclass(frozen=True)
class Conditioning:
    """A batch of prompts as the pipeline hands them to its denoiser (no CFG branch).

    ``embeds``: the text stream (B, L, d_text) exactly as the denoiser receives it;
    ``mask``: (B, L) int64, 1 on real tokens (the tokenizer's mask, selected as the pipeline selects);
    ``pooled``: (B, d_pool) or None (SDXL's pooled CLIP-G; SD3's ``pooled_projections``, CLIP-L ⊕ CLIP-G;
    FLUX's pooled CLIP-L);
    ``guidance``: (B,) float32 or None: a guidance-distilled model's embedded guidance scale (FLUX.1-dev);
    ``added``: further denoiser keyword tensors, each batched on dim 0 (SDXL ``text_embeds`` / ``time_ids``).
    """

    embeds: torch.Tensor  # (B, L, d_text)
    mask: torch.Tensor  # (B, L) int64
    pooled: torch.Tensor | None = None  # (B, d_pool)
    added: Mapping[str, torch.Tensor] = field(default_factory=dict)
    guidance: torch.Tensor | None = None  # (B,)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def index(self, idx: BatchIndex) -> Conditioning:
        """The prompts ``idx`` selects (an int list, a slice or an index tensor), every tensor alike."""

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x[idx : idx + 1] if isinstance(idx, int) else x[idx]

        return Conditioning(
            pick(self.embeds),
            pick(self.mask),
            None if self.pooled is None else pick(self.pooled),
            {k: pick(v) for k, v in self.added.items()},
            None if self.guidance is None else pick(self.guidance),
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
    """One edit site: a Linear at ``path`` (relative to the denoiser) and what feeds it.

    Sites of one ``group`` read the same input (the same columns C, so the same Gram statistics); a closed form is
    solved per group (:meth:`~erasekit.models.adapter.PipelineAdapter.for_group`).
    """

    path: str
    input_kind: str = "static_text"
    group: str = "text"

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ModelError(f"site {self.path!r}: input kind {self.input_kind!r} is not one of {INPUT_KINDS}")


@dataclass(frozen=True)
class Sampling:
    """How to run the pipeline's own sampler with guidance ``scale``: the keyword arguments of ``pipe(...)`` that
    set it, and how the denoiser calls lay out the conditional branch (:data:`CFG_LAYOUTS`)."""

    kwargs: Mapping[str, Any]
    cfg: str

    def __post_init__(self) -> None:
        if self.cfg not in CFG_LAYOUTS:
            raise ModelError(f"cfg layout {self.cfg!r} is not one of {CFG_LAYOUTS}")

    @property
    def calls_per_step(self) -> int:
        return 2 if self.cfg == "calls" else 1


def is_cross_attention(module: nn.Module) -> bool:
    """A diffusers ``Attention`` that attends to another sequence (``is_cross_attention``) with a Linear ``to_k``.

    Structure, not names: SD3.5-Medium's ``attn2`` is image self-attention (``is_cross_attention`` false)
    and must never be edited as if it read text.
    """
    return bool(getattr(module, "is_cross_attention", False)) and isinstance(getattr(module, "to_k", None), nn.Linear)


def check_site_set(sites: str) -> None:
    if sites not in SITE_SETS:
        raise ModelError(f"sites must be one of {SITE_SETS}, got {sites!r}")


def cross_attention_sites(denoiser: nn.Module, projections: Sequence[str] = ("k", "v")) -> list[Site]:
    """``to_k`` / ``to_v`` of every cross-attention module, in module order."""
    attns = [n for n, m in denoiser.named_modules() if is_cross_attention(m)]
    return [Site(f"{a}.{PROJECTIONS[p]}") for a in attns for p in projections]


def _token_table(encoder: nn.Module) -> nn.Module:
    """A transformers text encoder's input-token embedding (``get_input_embeddings()``), checked to be a Module."""
    table = encoder.get_input_embeddings()  # type: ignore[operator]  # transformers' PreTrainedModel method
    if not isinstance(table, nn.Module):
        raise ModelError(f"{type(encoder).__name__} has no input-token embedding table")
    return table


def _token_lookups(encoder: nn.Module) -> list[nn.Module]:
    """Every embedding module of ``encoder`` that looks tokens up in its input table: the table itself and any module
    sharing its weight (T5's stack embeds with ``encoder.embed_tokens``, a module tied to ``shared``, the one
    ``get_input_embeddings()`` names); the encoder calls one of them, so a hook on each fires exactly once."""
    weight = _token_table(encoder).weight
    return [m for m in encoder.modules() if isinstance(m, nn.Embedding) and m.weight is weight]


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
    # Site path -> its module's name in the model's original checkpoint layout (Black Forest Labs' FLUX, Stability's
    # SD3), checked against diffusers' single-file conversion (tests/test_families.py); the UNets' LDM names are
    # export/ldm_names.py's.
    original_names: tuple[tuple[str, str], ...] = ()
    lora_loader: bool = True  # whether the pipeline has diffusers' load_lora_weights for its denoiser
    # Whether the fine-tuning methods (ESD, ACE, MACE's LoRA stage) are validated here: they sample the frozen model's
    # own trajectories and train through ``denoise`` with the family's :meth:`dynamics` (DDPM ε / v, rectified-flow
    # velocity), edit the layers :meth:`fine_tune_layers` declares and, for MACE, read :meth:`text_attention_probe`.
    fine_tunes_denoiser: bool = False
    # Whether activations can be captured along the pipeline's own sampler (PURE's activation basis, joint-site
    # columns): the pipeline's guidance layout is declared by :meth:`sampling` and the twin call by
    # :meth:`text_kwargs` (PixArt / Sana: the stream and its mask).
    captures_activations: bool = True
    # Whether the pipeline takes the text mask beside ``prompt_embeds`` (``prompt_attention_mask``: PixArt, Sana).
    masked_text: bool = False
    # Whether position i of the site input is token i of ``tokenizer(prompt)`` (MACE aligns prompts by it).
    positions_follow_tokenizer: bool = True

    # ---------------------------------------------------------------- identity
    def matches(self, pipe: Pipeline) -> bool:
        """Whether ``pipe`` is of this family: its class (or a base class) is one of ``pipelines``."""
        names = {c.__name__ for c in type(pipe).__mro__}
        return bool(names & set(self.pipelines)) and isinstance(getattr(pipe, self.denoiser, None), nn.Module)

    def fallback(self, pipe: Pipeline) -> bool:
        """Whether to accept ``pipe`` when no family recognises its class (fine-tunes' own pipeline classes)."""
        return False

    def get_denoiser(self, pipe: Pipeline) -> Any:  # a diffusers model: its attributes (config, dtype, ...) are dynamic
        den = getattr(pipe, self.denoiser, None)
        if not isinstance(den, nn.Module):
            raise ModelError(f"{type(pipe).__name__} has no {self.denoiser!r}; a {self.name} pipeline needs one")
        return den

    def component(self, pipe: Pipeline, name: str) -> nn.Module:
        """The pipeline component an edit file's ``<component>/<path>`` key names: the family's denoiser (the only
        component methods edit); any other name is refused naming it."""
        if name == self.denoiser:
            den: nn.Module = self.get_denoiser(pipe)
            return den
        raise ModelError(
            f"erasekit edits the {self.denoiser!r} of a {self.name} pipeline, not its {name!r}; this edit was made "
            "for another model or by a newer erasekit"
        )

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
    def edit_sites(self, pipe: Pipeline, projections: Sequence[str] = ("k", "v"), sites: str = "static") -> list[Site]:
        """The static-text sites: ``to_k`` / ``to_v`` of every cross-attention module of the denoiser.

        ``sites`` (:data:`SITE_SETS`): cross-attention reads the encoder's output directly, so these families have no
        joint sites and only 'static' is offered."""
        check_site_set(sites)
        if sites != "static":
            raise ModelError(
                f"the {self.name} family has no joint-attention sites (its cross-attention reads the text encoder's "
                "output at every step); sites='joint' / 'all' is for SD3 and FLUX: use sites='static'"
            )
        return cross_attention_sites(self.get_denoiser(pipe), projections)

    # ---------------------------------------------------------------- sampling with hooks
    def sampling(self, pipe: Pipeline, scale: float) -> Sampling:
        """How ``pipe(...)`` runs with classifier-free guidance ``scale``: diffusers' ``guidance_scale``, the
        unconditional and conditional branches stacked in one denoiser call (conditional second)."""
        return Sampling({"guidance_scale": scale}, "batch" if scale > 1.0 else "none")

    def text_kwargs(self, cond: Conditioning) -> dict[str, torch.Tensor]:
        """The denoiser-call keyword arguments that carry the text of ``cond`` (a paired twin call replaces these and
        keeps the rest): the text stream as ``encoder_hidden_states``."""
        return {"encoder_hidden_states": cond.embeds}

    # ---------------------------------------------------------------- text
    def tokenizer(self, pipe: Pipeline) -> PreTrainedTokenizerBase:
        tok: PreTrainedTokenizerBase = pipe.tokenizer
        return tok

    def encode(self, pipe: Pipeline, prompts: Sequence[str]) -> Conditioning:  # pragma: no cover - abstract
        raise NotImplementedError

    # (text encoder, its tokenizer) pipeline attributes whose input-token embeddings encode_substituted hands over
    TEXT_ENCODER_ATTRS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("text_encoder", "tokenizer"),
        ("text_encoder_2", "tokenizer_2"),
    )

    def _text_pairs(self, pipe: Pipeline) -> list[tuple[nn.Module, PreTrainedTokenizerBase]]:
        """(encoder, its tokenizer) for every text encoder the pipeline has, in :attr:`TEXT_ENCODER_ATTRS` order."""
        out: list[tuple[nn.Module, PreTrainedTokenizerBase]] = []
        for enc_name, tok_name in self.TEXT_ENCODER_ATTRS:
            enc = getattr(pipe, enc_name, None)
            if isinstance(enc, nn.Module):
                tok = getattr(pipe, tok_name, None)
                if tok is None:
                    raise ModelError(f"{type(pipe).__name__} has {enc_name!r} but no {tok_name!r} to tokenize for it")
                out.append((enc, tok))
        return out

    def text_encoders(self, pipe: Pipeline) -> tuple[nn.Module, ...]:
        """The text encoders whose input-token embeddings :meth:`encode_substituted` hands over, in order."""
        return tuple(e for e, _ in self._text_pairs(pipe))

    def text_tokenizers(self, pipe: Pipeline) -> tuple[PreTrainedTokenizerBase, ...]:
        """The tokenizer of each of :meth:`text_encoders`, in the same order: what indexes each encoder's input-token
        table (the ids :meth:`encode_substituted` hands to ``substitute``). FLUX: CLIP-L then T5."""
        return tuple(t for _, t in self._text_pairs(pipe))

    def site_input_modules(self, pipe: Pipeline) -> dict[str, nn.Module]:
        """Every module whose weights shape what the edit sites read (name -> module): the pipeline's text
        encoders (``text_encoder``, ``_2``, ``_3``: SD3 reads T5 as the third), and in families whose sites read a
        projection of the encoder output, that projection. What a cache of site-input statistics is keyed by."""
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return {n: m for n in names if isinstance(m := getattr(pipe, n, None), nn.Module)}

    def encoder_prompts(
        self, pipe: Pipeline, prompts: Sequence[str], per_encoder: Sequence[Sequence[str]] | None = None
    ) -> list[list[str]]:
        """The prompts each of :meth:`text_encoders` reads: ``prompts`` for all, or ``per_encoder[e]`` for encoder e
        (the pipelines' ``prompt`` / ``prompt_2`` / ``prompt_3``; attacks give encoders with different tokenizers
        templates of their own length)."""
        n = len(self.text_encoders(pipe))
        if per_encoder is None:
            return [list(prompts)] * n
        if len(per_encoder) != n or any(len(p) != len(prompts) for p in per_encoder):
            raise ModelError(
                f"{self.name}: per-encoder prompts must be {n} lists of {len(prompts)} prompts (one per text encoder)"
            )
        return [list(p) for p in per_encoder]

    def encode_graph(
        self, pipe: Pipeline, prompts: Sequence[str], per_encoder: Sequence[Sequence[str]] | None = None
    ) -> Conditioning:
        """:meth:`encode` keeping the autograd graph through the text encoder(s): what attacks that optimise prompts
        or token embeddings differentiate (``per_encoder``: :meth:`encoder_prompts`). Families that do not offer it
        refuse in one line."""
        raise ModelError(
            f"the {self.name} family does not offer gradients through its text encoder yet; "
            "attacks that optimise prompts or tokens run on SD 1.x / 2.x, SDXL, SD3, FLUX, PixArt and Sana pipelines"
        )

    def encode_unconditional(self, pipe: Pipeline, n: int = 1) -> Conditioning:
        """The unconditional branch of the pipeline's classifier-free guidance, ``n`` times: the empty prompt, encoded
        as any prompt here (Sana's pipeline encodes it without its instruction prefix)."""
        return self.encode(pipe, [""] * n)

    def text_positions(self, pipe: Pipeline) -> tuple[int, ...]:
        """Per text encoder, how many positions of ``tokenizer(prompt)`` (its special tokens included) can reach the
        conditioning: each tokenizer's ``model_max_length`` here (CLIP: 77); PixArt and Sana: the pipeline's
        ``max_sequence_length``. What bounds the attacks' token sequences."""
        return tuple(int(min(t.model_max_length, 10**6)) for t in self.text_tokenizers(pipe))

    def prompt_ids(self, pipe: Pipeline, prompts: Sequence[str]) -> list[list[int]]:
        """Each prompt's own token ids (no special tokens) as the first of :meth:`text_encoders` reads them in the
        pipeline's context: ``tokenizer(prompt)`` here (PixArt: after the pipeline's lower-casing; Sana: behind its
        instruction prefix). What the token attacks search and substitute."""
        tok = self.text_tokenizers(pipe)[0]
        return [list(tok(p, add_special_tokens=False).input_ids) for p in prompts]

    def input_embeddings(self, pipe: Pipeline) -> tuple[torch.Tensor, ...]:
        """Each text encoder's input-token table (V, d_e), in :meth:`text_encoders` order (read-only use)."""
        tables = (_token_table(enc).weight for enc in self.text_encoders(pipe))
        return tuple(w for w in tables if isinstance(w, torch.Tensor))

    def text_gradients(self) -> bool:
        """Whether :meth:`encode_graph` (and so :meth:`encode_substituted`) is offered by this family."""
        return type(self).encode_graph is not Family.encode_graph

    def encode_substituted(
        self,
        pipe: Pipeline,
        prompts: Sequence[str],
        substitute: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
        per_encoder: Sequence[Sequence[str]] | None = None,
    ) -> Conditioning:
        """:meth:`encode_graph` with each text encoder's input-token embeddings (B, L, d_e) replaced by
        ``substitute(encoder index, token ids (B, L), embeddings) -> (B, L, d_e)``: the way in for soft prompts and
        learned tokens, whatever the encoder does after its token table (positions, pooling at EOS, masks). The
        embeddings are rows of the table :meth:`input_embeddings` gives, also where the lookup scales them (Gemma's
        √d: Sana), which is applied to what ``substitute`` returns. The grad mode is the caller's."""
        hooks = []
        for i, enc in enumerate(self.text_encoders(pipe)):

            def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor, i: int = i) -> torch.Tensor:
                scale = getattr(module, "embed_scale", None)  # Gemma multiplies its looked-up rows by √d
                if not isinstance(scale, torch.Tensor | float):
                    return substitute(i, args[0], out)
                assert isinstance(module, nn.Embedding)  # _token_lookups keeps nn.Embedding modules only
                rows = nn.functional.embedding(args[0], module.weight, module.padding_idx)  # the table's own rows
                scale = scale.to(module.weight.dtype) if isinstance(scale, torch.Tensor) else scale
                return substitute(i, args[0], rows) * scale  # as the module scales them

            for table in _token_lookups(enc):
                hooks.append(table.register_forward_hook(hook))
        try:
            return self.encode_graph(pipe, prompts, per_encoder)
        finally:
            for h in hooks:
                h.remove()

    def encode_for_site(self, pipe: Pipeline, prompts: Sequence[str], site: Site) -> Conditioning:
        """:meth:`encode` as far as ``site`` reads it (:meth:`site_inputs`, :meth:`site_tokens`): everything by default;
        SD3 / FLUX's pooled site runs only the CLIP encoders (:meth:`~.sd3.MMDiTFamily.encode_for_site`)."""
        return self.encode(pipe, prompts)

    def site_inputs(self, pipe: Pipeline, cond: Conditioning, site: Site | None = None) -> torch.Tensor:
        """What ``site`` reads, (B, L, d_in), for ``cond``: the text stream itself by default; a pooled site reads
        ``cond.pooled`` as a stream of one token, (B, 1, d_pool)."""
        if site is not None and site.input_kind == "pooled_text":
            if cond.pooled is None:
                raise ModelError(f"{self.name}: site {site.path!r} reads the pooled text, which encode() did not give")
            return cond.pooled[:, None, :]
        return cond.embeds

    def site_tokens(self, cond: Conditioning, site: Site | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """((B,) index of each prompt's last concept token, (B,) its number of real tokens) in what ``site`` reads.

        A token stream: the last real token less :meth:`trailing_specials` (CLIP / T5's EOS), and the mask's count;
        a pooled site: its one position (0), one token.
        """
        if site is not None and site.input_kind == "pooled_text":
            b = cond.mask.shape[0]
            return torch.zeros(b, dtype=torch.int64), torch.ones(b, dtype=torch.int64)
        last = (cond.last_real().cpu() - self.trailing_specials()).clamp(min=0)
        return last, cond.mask.sum(dim=1).cpu().to(torch.int64)

    def trailing_specials(self) -> int:
        """How many special tokens follow the last concept token (CLIP and T5: EOS; Gemma: none)."""
        return 1

    def token_segments(self, pipe: Pipeline) -> tuple[tuple[PreTrainedTokenizerBase, int], ...] | None:
        """How the text stream's positions follow tokenizers: ``((tokenizer, first position), ...)``, each segment
        running to the next one's start (the last to the end); None when they do not (Sana reorders them).

        MACE aligns a concept prompt with its mapping prompt token by token within each segment.
        """
        return ((self.tokenizer(pipe), 0),) if self.positions_follow_tokenizer else None

    # ---------------------------------------------------------------- denoiser
    def denoise(
        self, pipe: Pipeline, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:  # pragma: no cover
        """The denoiser's prediction for latents ``x_t`` (B, C, h, w) at timesteps ``t`` (B,) under ``cond``."""
        raise NotImplementedError

    def output_latents(
        self, pipe: Pipeline, latents: torch.Tensor, height: int | None, width: int | None
    ) -> torch.Tensor:
        """The latents ``pipe(..., output_type='latent')`` returned as :meth:`denoise` takes them, (B, C, h, w), for
        an image of ``height`` × ``width`` pixels (None: the pipeline's default): here they already are."""
        return latents

    def sample_size(self, pipe: Pipeline) -> int:
        """The denoiser's native latent side."""
        return int(self.get_denoiser(pipe).config.sample_size)

    def latent_channels(self, pipe: Pipeline) -> int:
        """Channels of the latents ``denoise`` takes, (B, C, h, w) (FLUX packs 2 × 2 patches: in_channels / 4)."""
        return int(self.get_denoiser(pipe).config.in_channels)

    # ---------------------------------------------------------------- fine-tuning
    def dynamics(self, pipe: Pipeline) -> Dynamics:
        """The forward process, prediction parameterisation, guidance and sampler the fine-tuning methods train with
        (the UNets: DDPM ε / v; SD3 / FLUX: rectified flow). A family that fine-tunes declares its own."""
        raise ModelError(
            f"the {self.name} family declares no training dynamics, so no method can fine-tune its denoiser; use a "
            "closed-form method (uce, space, rece, speed, cure)"
        )

    def text_attention_modules(self, pipe: Pipeline) -> list[str]:
        """The attention modules where the text meets the image (ESD-x trains their Linears): cross-attention here."""
        return [n for n, m in self.get_denoiser(pipe).named_modules() if is_cross_attention(m)]

    def fine_tune_layers(self, pipe: Pipeline, part: str) -> list[str]:
        """Paths of the Linear / Conv2d layers a fine-tuning method trains (ESD's parameter selection).

        ``part``: 'attention', every Linear inside :meth:`text_attention_modules` (ESD-x); 'rest', every Linear and
        Conv2d outside them (ESD-u, as esd_sd.py's ``get_esd_trainable_parameters``).
        """
        if part not in FINE_TUNE_PARTS:
            raise ModelError(f"unknown fine-tuning part {part!r}; expected one of {FINE_TUNE_PARTS}")
        den = self.get_denoiser(pipe)
        blocks = self.text_attention_modules(pipe)
        inside = {id(m) for b in blocks for m in den.get_submodule(b).modules()}
        kinds = (nn.Linear,) if part == "attention" else (nn.Linear, nn.Conv2d)
        allowed = self.trainable_outside_attention(den)

        def keep(m: nn.Module) -> bool:
            return id(m) in inside if part == "attention" else id(m) not in inside and allowed(m)

        return [n for n, m in den.named_modules() if isinstance(m, kinds) and keep(m)]

    def trainable_outside_attention(self, den: nn.Module) -> Callable[[nn.Module], bool]:
        """Which layers outside the text attention ESD-u may train: all of them here (a family narrows the
        reference's choice: SDXL)."""

        def every(module: nn.Module) -> bool:
            return True

        return every

    def text_attention_probe(
        self, pipe: Pipeline, site_paths: Sequence[str], sink: Callable[[str, torch.Tensor], None]
    ) -> AbstractContextManager[Any]:
        """A context manager passing, per denoiser call and probed block, the image queries' attention probabilities
        over the text tokens, P (B, heads, N_image, L_text), to ``sink(block, P)`` (MACE's LoRA loss).

        Here: the cross-attention modules holding the sites (:class:`~erasekit.models.capture.AttentionProbe`).
        Register it *after* any carriers on the same modules, so it sees their output.
        """
        from ..capture import AttentionProbe

        blocks = sorted({p.rsplit(".", 1)[0] for p in site_paths})
        return AttentionProbe(self.get_denoiser(pipe), blocks, sink)

    # ---------------------------------------------------------------- generation
    def generation_kwargs(
        self, pipe: Pipeline, guidance: float | None, batch: int, embeds: bool = False
    ) -> dict[str, Any]:
        """The ``pipe(...)`` keywords that guide a batch of ``batch`` prompts at scale ``guidance`` (None: the
        pipeline's default): the one place erasekit's generation learns how a family is guided and what text
        length it encodes (``erasekit.generate``, the runner's ``render_batch``, the attacks' sampling).

        ``embeds``: the batch is handed over as ``prompt_embeds`` (attacks' shifted / learned-token items), so a
        negative branch the pipeline would not make itself must be handed over as embeddings too.

        Here: ``guidance_scale``, the classifier-free guidance of the UNets, PixArt, Sana and SD3, whose pipelines
        make the negative (empty prompt) branch themselves, also under ``prompt_embeds``.
        """
        return {} if guidance is None else {"guidance_scale": float(guidance)}

    def embeds_kwargs(self, cond: Conditioning) -> dict[str, torch.Tensor]:
        """``cond`` as ``pipe(...)`` keywords in place of ``prompt``: ``prompt_embeds`` and, where the family has one,
        ``pooled_prompt_embeds``; PixArt and Sana also need the text mask (``prompt_attention_mask``)."""
        out = {"prompt_embeds": cond.embeds}
        if cond.pooled is not None:
            out["pooled_prompt_embeds"] = cond.pooled
        if self.masked_text:
            out["prompt_attention_mask"] = cond.mask
        return out

    # ---------------------------------------------------------------- export names
    def original_name(self, path: str) -> str:
        """The module at ``path`` as the original checkpoint names it (FLUX: ``txt_in``, ``vector_in.in_layer``)."""
        names = dict(self.original_names)
        if path not in names:
            raise ModelError(f"{self.name}: no original checkpoint name is known for {path!r}")
        return names[path]

    def peft_key(self, path: str, part: str) -> str:
        """A PEFT / diffusers LoRA tensor name: ``<prefix>.<module>.lora_A.weight`` (part 'lora_A' / 'lora_B')."""
        return f"{self.lora_prefix}.{path}.{part}.weight"
