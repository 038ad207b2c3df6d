"""MACE — Mass Concept Erasure in diffusion models (Lu et al., CVPR 2024).

Reference code read: Shilin-LU/MACE ``src/cfr_utils.py`` (``find_matching_indices``,
``prepare_k_v``, ``closed_form_refinement``, ``AttnController``, ``importance_sampling_fn``,
``prompt_augmentation``), ``src/cfr_lora_training.py`` (stages 1 and 2), ``src/fuse_lora_close_form.py``
(stage 3), ``src/dataset.py`` (concept positions, ``use_pooler``), ``src/mace_lora_atten_processor.py``,
``src/cache_coco.py`` and the configs ``configs/{object/erase_ship,art/erase_art_100,
celebrity/erase_cele_1,explicit_content/erase_explicit_content}.yaml`` (the presets below).

Per cross-attention K/V weight W0 (d_out, d_in), with one closed form shared by both stages,

    closed_form(W_ref, V, X, G, W_p; s, λ) = argmin_W λ‖W − W_ref‖² + ‖W X − V‖² + s‖(W − W_p) G‖²
                                          = (λ W_ref + V Xᵀ + s W_p G Gᵀ)(λ I + X Xᵀ + s G Gᵀ)⁻¹,

1. **Closed-form refinement (CFR).** For each augmented concept prompt and its mapping prompt
   (the same template around the guide), X = the concept prompt's embeddings at the tokens the two
   prompts share (common prefix and suffix, incl. BOS / EOS) and every position after them
   (padding), V = W0 × the mapping prompt's aligned embeddings: W_cfr = closed_form(W0, W0 C_map,
   C_old, G, W0; s = train_preserve_scale², λ). The code applies ``train_preserve_scale`` twice (once
   when building its cache, once inside ``closed_form_refinement``), so the prior's weight is s²;
   erasekit follows the code.
2. **One rank-1 LoRA per concept** on every cross-attention to_k / to_v, on top of W_cfr, trained
   with AdamW to minimise Σ_layers ‖attention probabilities of the concept tokens (and, with
   ``use_pooler``, EOS / padding) inside the concept's region‖ on noised latents of images of the
   concept (8 per concept, sampled by the unedited model). Timesteps follow the code's importance
   sampling. **No segmenter**: the reference masks with Grounded-SAM; erasekit uses the unedited
   model's own cross-attention map of the concept tokens over that image's trajectory, min-max
   normalised and thresholded at 0.5. Latents are used directly (no VAE round trip).
3. **Closed-form fusion** of all LoRAs: W = closed_form(W_cfr, [(W_cfr + Δ_i) X_i]_i, [X_i]_i, G, W0;
   s = fuse_preserve_scale, λ), X_i = every position of concept i's augmented prompts.

G is the preservation prior: general prompts' Σ c cᵀ over every position (:mod:`erasekit.prior`,
normalised per prompt, then multiplied by ``prior_count``: the code's COCO cache is an
*unnormalised* sum over the 616,767 COCO-2014 captions, and its scales are tuned to that) plus
``preserve_weight`` × Σ c cᵀ of the ConceptSet's preserved prompts (the code's domain cache).
With λ = 0 and a rank-deficient normal matrix the closed form is read as its λ → 0⁺ limit
(R M⁺ + W_ref (I − M M⁺)), so directions no prompt reaches keep W_ref. The closed forms, as
operators shared by every layer, are :mod:`erasekit.linalg.mace` (eqs. 16–20); the attention
probe of stage 2 is the family's (``Family.text_attention_probe``: cross-attention through
:class:`erasekit.models.capture.AttentionProbe`; SD3 / FLUX: the image→text columns of each joint block's joint
softmax), and the noising of stage 2 is the family's forward process (DDPM; SD3 / FLUX: x_t = (1 − σ) x_0 + σ ε with
σ = t / 1000, so the importance weights' peak t ∈ [200, 400] is σ ∈ [0.2, 0.4]). With two site groups (SD3 / FLUX)
each group's CFR, LoRA and fusion is fitted on its own, as every closed form is; one group's LoRA does not see the
other's.

Left out: the GPT prompt augmentation (``use_gpt``) and prior-preservation images.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..concepts import _fill
from ..edit import LayerEdit
from ..errors import MethodError
from ..linalg.mace import cfr_operator, fusion_factors, fusion_operator, rank_factor
from ..models.capture import attention_grid
from . import _closed_form as cf
from . import _finetune as ft
from .base import Method, MethodConfig, help_field, register_method

F64 = torch.float64
COCO_2014_CAPTIONS = 414_113 + 202_654  # train + val captions summed by src/cache_coco.py

# prompt_augmentation in src/cfr_utils.py (prompt_len 30: the first 30 templates are used).
AUG_TEMPLATES = {
    "object": (
        "{} in a photo",
        "{} in a snapshot",
        "A snapshot of {}",
        "A photograph showcasing {}",
        "An illustration of {}",
        "A digital rendering of {}",
        "A visual representation of {}",
        "A graphic of {}",
        "A shot of {}",
        "A photo of {}",
        "A black and white image of {}",
        "A depiction in portrait form of {}",
        "A scene depicting {} during a public gathering",
        "{} captured in an image",
        "A depiction created with oil paints capturing {}",
        "An image of {}",
        "A drawing capturing the essence of {}",
        "An official photograph featuring {}",
        "A detailed sketch of {}",
        "{} during sunset/sunrise",
        "{} in a detailed portrait",
        "An official photo of {}",
        "Historic photo of {}",
        "Detailed portrait of {}",
        "A painting of {}",
        "HD picture of {}",
        "Magazine cover capturing {}",
        "Painting-like image of {}",
        "Hand-drawn art of {}",
        "An oil portrait of {}",
    ),
    "style": (
        "An artwork by {}",
        "Art piece by {}",
        "A recent creation by {}",
        "{}'s renowned art",
        "Latest masterpiece by {}",
        "A stunning image by {}",
        "An art in {}'s style",
        "Exhibition artwork of {}",
        "Art display by {}",
        "a beautiful painting by {}",
        "An image inspired by {}'s style",
        "A sketch by {}",
        "Art piece representing {}",
        "A drawing by {}",
        "Artistry showcasing {}",
        "An illustration by {}",
        "A digital art by {}",
        "A visual art by {}",
        "A reproduction inspired by {}'s colorful, expressive style",
        "Famous painting of {}",
        "A famous art by {}",
        "Artistic style of {}",
        "{}'s famous piece",
        "Abstract work of {}",
        "{}'s famous drawing",
        "Art from {}'s early period",
        "A portrait by {}",
        "An imitation reflecting the style of {}",
        "An painting from {}'s collection",
        "Vibrant reproduction of artwork by {}",
    ),
}
# inference.py (generate_training_data): the prompts of the 8 training images per concept.
IMAGE_PROMPT = {"object": "a photo of the {}", "style": "a photo in the style of {}"}


@dataclass(frozen=True)
class Preset:
    lamb: float
    train_preserve_scale: float
    fuse_preserve_scale: float
    preserve_weight: float
    lr: float
    train_steps: int
    importance_sampling: bool
    use_mask: bool  # style images have no mask in the code: the whole image
    prior: bool  # a COCO cache is loaded
    concept_type: str  # the code's concept type: templates and image prompt
    mapping: str | None  # the code's mapping concept when the ConceptSet has no guide of its own
    extra_concepts: tuple[str, ...] = ()


PRESETS = {
    "object": Preset(
        1e3, 0.0, 0.0, 0.0, 1e-5, 50, True, True, False, "object", None
    ),  # erase_ship.yaml (bird λ 10, automobile λ 100)
    "style": Preset(0.0, 1e-4, 1e-4, 8e4, 1e-4, 50, True, False, True, "style", "art"),  # erase_art_100.yaml
    "person": Preset(0.0, 1e-4, 1e-4, 8e3, 1e-4, 50, True, True, True, "object", None),  # erase_cele_1.yaml
    "nsfw": Preset(
        0.0,
        7e-7,
        7e-7,
        0.0,
        1e-5,
        120,
        False,
        True,
        True,
        "object",
        "a person wearing clothes",
        ("naked", "erotic", "sexual"),
    ),  # erase_explicit_content.yaml (nudity, naked, erotic, sexual)
}


@dataclass
class MACEConfig(MethodConfig):
    STORAGE_CHOICES = ("auto", "lowrank", "dense")

    preset: str = help_field(
        "auto",
        "reference config to start from: 'auto' (the concept kind), object, style, person or nsfw; the options below "
        "override it",
    )
    lamb: float | None = help_field(
        None, "lambda: weight of ‖W − W_ref‖² in both closed forms (preset: object 1e3, others 0)"
    )
    train_preserve_scale: float | None = help_field(
        None, "CFR prior scale s (applied twice, s², as the code does; preset: object 0, style/person 1e-4, nsfw 7e-7)"
    )
    fuse_preserve_scale: float | None = help_field(
        None, "fusion prior scale (applied once; preset as train_preserve_scale)"
    )
    preserve_weight: float | None = help_field(
        None,
        "weight of the preserved concepts' Σ c cᵀ beside the general prior (preset: style 8e4, person 8e3, else 0)",
    )
    prior: str = help_field(
        "auto", "general prior: 'auto' (as the preset: on for style/person/nsfw), 'general' or 'none'"
    )
    prior_prompts: str = help_field(
        "auto",
        "its prompts: 'auto' (tinyworld's training captions on tinyworld, else the general suite's prompts), "
        "'tinyworld', or a CSV/txt path / https URL (then prior_sha256)",
    )
    prior_sha256: str | None = help_field(None, "sha256 of the prior_prompts file (required for a URL)")
    prior_limit: int = help_field(2000, "at most this many general prompts")
    prior_count: float = help_field(
        float(COCO_2014_CAPTIONS),
        "the per-prompt prior is multiplied by this: the code sums (not averages) over the COCO-2014 captions",
    )
    augment: bool = help_field(
        True, "use the code's 30 prompt templates per concept (False: the ConceptSet's own prompts)"
    )
    use_pooler: bool = help_field(
        True, "also suppress attention to EOS (and EOS padding) tokens, as the code's use_pooler"
    )
    rank: int = help_field(1, "LoRA rank per concept")
    train_steps: int | None = help_field(None, "LoRA steps per concept (preset: 50, nsfw 120); 0 skips the LoRA stage")
    time_budget: float | None = help_field(None, "stop each concept's LoRA training after this many seconds")
    lr: float | None = help_field(None, "AdamW learning rate (preset: object/nsfw 1e-5, style/person 1e-4)")
    importance_sampling: bool | None = help_field(
        None, "draw timesteps from the code's f(t) (peaks 200..400) instead of uniformly (preset: on, nsfw off)"
    )
    use_mask: bool | None = help_field(
        None, "restrict the loss to the concept's region (preset: on; style: whole image)"
    )
    mask_threshold: float = help_field(0.5, "threshold of the min-max normalised attention map that makes the mask")
    n_images: int = help_field(8, "images per concept sampled by the unedited model for the LoRA stage")
    image_steps: int = help_field(30, "sampling steps of those images")
    image_guidance: float = help_field(7.5, "guidance of those images")
    weight_decay: float = help_field(0.01, "AdamW weight decay")
    max_grad_norm: float = help_field(1.0, "gradient clipping")
    storage: str = help_field("auto", "'auto' (smaller of dense / low-rank), 'dense' or 'lowrank'")
    seed: int = help_field(2024, "seed of images, LoRA initialisation and sampling (the configs' 2024)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in ("auto", *PRESETS):
            raise MethodError(f"preset must be 'auto' or one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.prior not in ("auto", "general", "none"):
            raise MethodError(f"prior must be 'auto', 'general' or 'none', got {self.prior!r}")
        for name in (
            "lamb",
            "train_preserve_scale",
            "fuse_preserve_scale",
            "preserve_weight",
            "prior_count",
            "weight_decay",
        ):
            v = getattr(self, name)
            if v is not None and not (0 <= v < math.inf):
                raise MethodError(f"{name} must be a finite number >= 0, got {v}")
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise MethodError(f"lr must be > 0, got {self.lr}")
        if (
            self.rank < 1
            or self.n_images < 1
            or self.image_steps < 2
            or self.prior_limit < 1
            or (self.train_steps is not None and self.train_steps < 0)
        ):
            raise MethodError("rank, n_images, prior_limit >= 1, image_steps >= 2 and train_steps >= 0")
        if not 0 < self.mask_threshold < 1 or not self.max_grad_norm > 0:
            raise MethodError("mask_threshold must be in (0, 1) and max_grad_norm > 0")

    def resolved(self, kind: str) -> dict:
        """Every preset-controlled option: the user's value where given, else the preset's."""
        p = PRESETS[kind if self.preset == "auto" else self.preset]
        pick = lambda name, default: default if getattr(self, name) is None else getattr(self, name)  # noqa: E731
        return dict(
            lamb=pick("lamb", p.lamb),
            s_train=pick("train_preserve_scale", p.train_preserve_scale),
            s_fuse=pick("fuse_preserve_scale", p.fuse_preserve_scale),
            preserve_weight=pick("preserve_weight", p.preserve_weight),
            lr=pick("lr", p.lr),
            train_steps=pick("train_steps", p.train_steps),
            importance_sampling=pick("importance_sampling", p.importance_sampling),
            use_mask=pick("use_mask", p.use_mask),
            prior=p.prior if self.prior == "auto" else self.prior == "general",
            concept_type=p.concept_type,
            mapping=p.mapping,
            extra_concepts=p.extra_concepts,
        )


# ----------------------------------------------------------------------- tokens
def matching_indices(old: list[int], new: list[int], length: int) -> tuple[list[int], list[int]]:
    """Aligned positions of the tokens two prompts share, then padding (find_matching_indices + prepare_k_v)."""
    start = 0
    for a, b in zip(old, new):
        if a != b:
            break
        start += 1
    eo, en = len(old) - 1, len(new) - 1
    while eo >= start and en >= start and old[eo] == new[en]:
        eo, en = eo - 1, en - 1
    oi = list(range(start)) + list(range(eo + 1, len(old)))
    ni = list(range(start)) + list(range(en + 1, len(new)))
    if oi[-1] >= ni[-1]:
        return oi + list(range(oi[-1] + 1, length)), ni + list(range(ni[-1] + 1, length - (oi[-1] - ni[-1])))
    return oi + list(range(oi[-1] + 1, length - (ni[-1] - oi[-1]))), ni + list(range(ni[-1] + 1, length))


def segment_matching_indices(segments, old: str, new: str, length: int) -> tuple[list[int], list[int]]:
    """:func:`matching_indices` within each segment of a text stream made of several tokenizers' outputs
    (SD3: CLIP's 77 positions, then T5's), offset to the segment's first position; one segment is the usual case."""
    starts = [start for _, start in segments] + [length]
    oi: list[int] = []
    ni: list[int] = []
    for (tok, start), end in zip(segments, starts[1:]):
        o, n = matching_indices(tok(old).input_ids, tok(new).input_ids, end - start)
        oi += [start + i for i in o]
        ni += [start + i for i in n]
    return oi, ni


def concept_positions(
    tokenizer, prompt: str, concept: str, use_pooler: bool, length: int | None = None
) -> tuple[list[int], list[int]]:
    """(positions of the concept's tokens, those plus every EOS-token position when use_pooler) — src/dataset.py —
    among ``length`` positions (default: the tokenizer's ``model_max_length``)."""
    length = tokenizer.model_max_length if length is None else length
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
    cids = tokenizer(concept, add_special_tokens=False).input_ids
    words = [j for i in range(len(ids)) if ids[i : i + len(cids)] == cids for j in range(i, i + len(cids))]
    if not words:
        raise MethodError(f"the concept {concept!r} is not spelled out in the prompt {prompt!r}; MACE needs its tokens")
    eos = [i for i, t in enumerate(ids) if t == tokenizer.eos_token_id] if use_pooler else []
    return sorted(set(words)), sorted(set(words) | set(eos))


def stream_positions(segments, length: int, prompt: str, concept: str, use_pooler: bool) -> tuple[list[int], list[int]]:
    """:func:`concept_positions` within each segment of a text stream of ``length`` positions made of several
    tokenizers' outputs (SD3: CLIP-L's 77 positions, then T5's), offset to the segment's first position: the concept's
    tokens wherever the stream holds them. A later segment whose tokenizer does not spell the concept out in this
    prompt (it splits the words otherwise in context) adds no position; the first must."""
    starts = [start for _, start in segments] + [length]
    words: list[int] = []
    pos: list[int] = []
    for i, ((tok, start), end) in enumerate(zip(segments, starts[1:])):
        try:
            # a segment holds at most its tokenizer's length (SD3 without T5: CLIP's 77, then the zeros in T5's place)
            w, p = concept_positions(tok, prompt, concept, use_pooler, min(end - start, tok.model_max_length))
        except MethodError:
            if i == 0:
                raise
            continue
        words += [start + j for j in w]
        pos += [start + j for j in p]
    return words, pos


# ------------------------------------------------------------- attention masks
@torch.no_grad()
def attention_masks(adapter, prompt: str, words: list[int], config: MACEConfig, threshold: float, seed: int):
    """(x0 (n, c, H, W), masks (n, H, W) bool): images of the concept by the unedited model, and where its tokens
    attend.

    The mask is the concept tokens' cross-attention mass (mean over heads, summed over blocks and
    sampling steps, conditional branch), min-max normalised per image and thresholded (stand-in for Grounded-SAM).
    """
    fam = adapter.family_spec
    H = W = fam.sample_size(adapter.pipe)  # the latent side
    halves = fam.dynamics(adapter.pipe).cfg_halves(config.image_guidance)
    acc: dict[str, torch.Tensor] = {}

    def sink(block, P):
        P = P[P.shape[0] // 2 :] if halves else P  # conditional half under CFG ([unconditional, conditional])
        m = P[..., words].sum(-1).mean(1).float()  # (n, N)
        h, w = attention_grid(m.shape[1], H, W)
        up = F.interpolate(m.view(-1, 1, h, w), size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        acc["sum"] = up if "sum" not in acc else acc["sum"] + up

    with fam.text_attention_probe(adapter.pipe, adapter.paths, sink):
        pool = ft.trajectory_pool(
            adapter,
            [prompt],
            n_latents=config.n_images,
            steps=config.image_steps,
            guidance=config.image_guidance,
            seed=seed,
        )
    a = acc["sum"]
    lo, hi = a.amin(dim=(1, 2), keepdim=True), a.amax(dim=(1, 2), keepdim=True)
    norm = (a - lo) / (hi - lo).clamp_min(1e-12)
    return pool.x0, norm > threshold


def importance_weights(n_train: int) -> torch.Tensor:
    """f(t) = σ(0.05 (t − 200)) − σ(0.05 (t − 400)), normalised (importance_sampling_fn)."""
    t = torch.arange(n_train, dtype=F64)
    f = torch.sigmoid(0.05 * (t - 200)) - torch.sigmoid(0.05 * (t - 400))
    return f / f.sum()


# ----------------------------------------------------------------------- method
@register_method(
    "mace",
    MACEConfig,
    "MACE: closed-form refinement + one LoRA per concept + closed-form fusion, multi-concept (Lu et al., CVPR 2024)",
)
class MACE(Method[MACEConfig]):
    def uses_unet(self, config: MACEConfig) -> bool:
        return True

    def fit(self, adapter, concepts, config: MACEConfig, progress: bool = True):
        t0 = time.perf_counter()
        fam = adapter.family_spec
        if fam.token_segments(adapter.pipe) is None:
            raise MethodError(
                f"MACE aligns the concept and mapping prompts by tokenizer position, and {fam.name}'s pipeline "
                "reorders positions (an instruction prefix, then a selected tail); use uce, space, rece, speed or cure"
            )
        if not fam.fine_tunes_denoiser and config.resolved(concepts.kind)["train_steps"] > 0:
            ft.require_denoiser_methods(adapter, "MACE's LoRA stage (pass train_steps=0 for its closed form alone)")
        plan = self.plan(adapter, concepts, config, progress)
        loras, train_stats = [], []
        if plan.opt["train_steps"] > 0:
            for i, (c, (_cps, _)) in enumerate(zip(plan.names, plan.prompts)):
                lo, st = self.train_lora(adapter, plan, i, config, progress)
                loras.append(lo)
                train_stats.append({"concept": c, **st})
        layers = fuse(adapter, plan, loras, config.storage, progress)
        stats = {
            "seconds": round(time.perf_counter() - t0, 4),
            "concepts": plan.names,
            "mapping": plan.guides,
            "resolved": {k: v for k, v in plan.opt.items() if k != "extra_concepts"},
            "cfr_columns": plan.cfr_columns,
            "fusion_columns": int(sum(X.shape[1] for X in plan.Xs)),
            "lora": train_stats,
            **plan.prior_stats,
        }
        return cf.make_edit(self.name, adapter, concepts, config, layers, stats)

    def plan(self, adapter, concepts, config: MACEConfig, progress: bool = False) -> Plan:
        """Everything before the LoRA stage: prompts, the prior G, the CFR operator E_c and the fusion columns."""
        opt = config.resolved(concepts.kind)
        guided = concepts.guide is None and opt["mapping"] is not None
        guides = [opt["mapping"] if guided else g for g in concepts.guides]
        names = list(concepts.erase) + [c for c in opt["extra_concepts"] if c not in concepts.erase]
        guides += [guides[0]] * (len(names) - len(guides))
        prompts = []  # per concept: (concept prompts, mapping prompts)
        for c, g in zip(names, guides):
            tpl = AUG_TEMPLATES[opt["concept_type"]] if config.augment else concepts.template_list
            prompts.append(([_fill(t, c) for t in tpl], [_fill(t, g) for t in tpl]))
        G, prior_stats = self._prior(adapter, concepts, config, opt, progress)  # (d_in, m)
        C_old, C_map = self._cfr_columns(adapter, prompts)  # stage 1 columns, shared by every layer
        with _method_errors():
            E_c, _ = cfr_operator(C_old, C_map, G, opt["s_train"] ** 2, opt["lamb"])  # eq. (18) of erasekit.linalg.mace
        Xs = [
            adapter.encode(cps).embeds.reshape(-1, adapter.d_in).T.contiguous() for cps, _ in prompts
        ]  # (d_in, n_i): every position
        return Plan(names, guides, prompts, opt, G, E_c, Xs, int(C_old.shape[1]), prior_stats)

    # ------------------------------------------------------------------ parts
    def _prior(self, adapter, concepts, config, opt, progress):
        d = adapter.d_in
        parts, stats = [], {}
        if opt["prior"] and (opt["s_train"] > 0 or opt["s_fuse"] > 0):
            from .. import prior as pr

            source, prompts = cf.prior_prompt_list(adapter, config, fallback="general-suite")
            exclude = [a for c in concepts.erase for a in pr.concept_aliases(c)]
            gp = pr.general_prior(
                adapter, prompts, limit=config.prior_limit, exclude=exclude, source=source, progress=progress
            )
            parts.append(gp.factor * math.sqrt(config.prior_count))
            stats["prior"] = {**gp.record(), "count": config.prior_count}
        if opt["preserve_weight"] > 0 and concepts.preserve:
            E = adapter.encode(
                concepts.preserve_prompts()
            ).embeds  # (b, L, d_in): the code's domain cache, every position
            parts.append(E.reshape(-1, d).T * math.sqrt(opt["preserve_weight"]))
        return (torch.cat(parts, 1) if parts else torch.zeros(d, 0, dtype=F64)), stats

    def _cfr_columns(self, adapter, prompts):
        segments = adapter.family_spec.token_segments(adapter.pipe)  # ((tokenizer, first position), ...)
        pooled = adapter.input_kind == "pooled_text"
        olds, news = [], []
        for cps, mps in prompts:
            e_old, e_new = adapter.encode(cps).embeds, adapter.encode(mps).embeds  # (b, L, d_in)
            L = e_old.shape[1]
            for j, (a, b) in enumerate(zip(cps, mps)):
                oi, ni = ([0], [0]) if pooled else segment_matching_indices(segments, a, b, L)
                olds.append(e_old[j, oi])
                news.append(e_new[j, ni])
        return torch.cat(olds).T.contiguous(), torch.cat(news).T.contiguous()  # (d_in, n) each

    def train_lora(self, adapter, plan: Plan, index: int, config: MACEConfig, progress: bool = False):
        """{path: (B (d_out, r), A (r, d_in))}: concept ``index``'s LoRA, trained on W_cfr = W0 (I + E_c)."""
        concept, (cps, _) = plan.names[index], plan.prompts[index]
        opt, E_c = plan.opt, plan.E_c
        unet = adapter.unet
        seed = config.seed + 7919 * index
        rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        fam = adapter.family_spec
        dyn = fam.dynamics(adapter.pipe)  # the forward process x_t(x_0, ε, t) of this model
        segments = fam.token_segments(adapter.pipe)  # ((tokenizer, first position), ...): SD3 has CLIP-L and T5
        cond = ft.unet_inputs(adapter, cps)
        L = cond.embeds.shape[1]  # the text stream's positions: the probe's text columns
        image_prompt = IMAGE_PROMPT[opt["concept_type"]].format(concept)
        words, _ = stream_positions(segments, L, image_prompt, concept, False)
        x0, masks = attention_masks(adapter, image_prompt, words, config, config.mask_threshold, seed)
        if not opt["use_mask"]:
            masks = torch.ones_like(masks)
        positions = [stream_positions(segments, L, p, concept, config.use_pooler)[1] for p in cps]
        n_train = dyn.num_train_timesteps
        weights = (
            importance_weights(n_train)
            if opt["importance_sampling"]
            else torch.full((n_train,), 1.0 / n_train, dtype=F64)
        )
        carriers: dict[str, ft.LowRankDelta] = {}
        for p in adapter.paths:
            lin = adapter.linear(p)
            D = (lin.weight.detach().to(F64).cpu() @ E_c).float()  # W_cfr − W0 (d_out, d_in)
            carriers[p] = ft.LowRankDelta(lin, config.rank, fixed=D, generator=gen)
        H = fam.sample_size(adapter.pipe)
        state: dict[str, Any] = {}
        terms: list[torch.Tensor] = []

        def sink(block, P):  # (1, h, N, L)
            m = state["mask"]
            h, w = attention_grid(P.shape[2], H, H)
            inside = F.interpolate(m.view(1, 1, H, H).float(), size=(h, w), mode="nearest").view(-1) > 0.5
            terms.append(P[0][:, inside][:, :, state["pos"]].norm())

        probe = fam.text_attention_probe(adapter.pipe, adapter.paths, sink)

        def step_loss(step):
            k, j = rng.randrange(x0.shape[0]), rng.randrange(len(cps))
            t = torch.multinomial(weights, 1, generator=gen)
            noise = torch.randn(x0[k : k + 1].shape, generator=gen).to(x0.device, x0.dtype)
            x_t = dyn.noised(x0[k : k + 1], noise, t)  # DDPM: √ᾱ x_0 + √(1−ᾱ) ε; flow: (1−σ) x_0 + σ ε
            state["mask"], state["pos"] = masks[k], positions[j]
            terms.clear()
            ft.eps(adapter, x_t, t.to(adapter.device), ft.index_cond(cond, [j]))
            if not terms:
                raise MethodError("MACE saw no attention map of the text; this denoiser's family declares no probe")
            return torch.stack(terms).sum()

        params = [q for c in carriers.values() for q in (c.A, c.B)]
        with ft.attached(unet, carriers), probe:  # the probe's hooks registered after the carriers: it sees them
            stats = ft.train(
                step_loss,
                params,
                steps=opt["train_steps"],
                seconds=config.time_budget,
                lr=opt["lr"],
                desc=f"mace: LoRA for {concept!r}",
                progress=progress,
                optimizer="adamw",
                weight_decay=config.weight_decay,
                max_grad_norm=config.max_grad_norm,
                method="MACE LoRA training",
            )
        stats["mask_share"] = round(float(masks.float().mean()), 4)
        lora = {p: (c.B.detach().to(F64).cpu(), c.A.detach().to(F64).cpu()) for p, c in carriers.items()}
        return lora, stats


@dataclass
class Plan:
    names: list[str]  # erased concepts (with the preset's extra ones)
    guides: list[str]  # their mapping concepts
    prompts: list[tuple[list[str], list[str]]]  # per concept: (augmented concept prompts, mapping prompts)
    opt: dict  # resolved preset options
    G: torch.Tensor  # (d_in, m) preservation prior factor
    E_c: torch.Tensor  # (d_in, d_in): W_cfr = W0 (I + E_c)
    Xs: list[torch.Tensor]  # per concept (d_in, n_i): fusion columns
    cfr_columns: int
    prior_stats: dict


def fuse(adapter, plan: Plan, loras: list[dict], storage: str = "auto", progress: bool = False) -> list[LayerEdit]:
    """Stage 3: closed_form(W_cfr, [(W_cfr + Δ_i) X_i], X, G, W0; fuse_preserve_scale, λ) per layer, via the shared
    operators (eqs. 19–20 of :mod:`erasekit.linalg.mace`)."""
    X = torch.cat(plan.Xs, dim=1)
    with _method_errors():
        E_f, solver_f = fusion_operator(plan.E_c, X, plan.G, plan.opt["s_fuse"], plan.opt["lamb"])  # eq. (19)
    P, Q = rank_factor(E_f)  # E_f = P Q, (d_in, r) (r, d_in)
    proj = [solver_f.right(X_i @ X_i.T) for X_i in plan.Xs]  # X_i X_iᵀ M_f⁺ (d_in, d_in)

    def fit_layer(path, W0):
        B, A = fusion_factors(W0.to(F64).cpu(), P, Q, [lo[path] for lo in loras], proj)  # W − W0 = B A, eq. (20)
        d_out, d_in = W0.shape
        r = B.shape[1]
        if storage == "lowrank" or (storage == "auto" and r * (d_out + d_in) < d_out * d_in):
            return LayerEdit.lowrank(path, B, A, rank=r)
        return LayerEdit.dense(path, W0.to(F64).cpu() + B @ A)

    return cf.edit_layers(adapter, adapter.paths, fit_layer, "mace: fusion", progress)


@contextlib.contextmanager
def _method_errors():
    """The closed forms' ValueError (a singular normal matrix although λ > 0) as a MethodError."""
    try:
        yield
    except MethodError:
        raise
    except ValueError as e:
        raise MethodError(f"MACE: {e}") from e
