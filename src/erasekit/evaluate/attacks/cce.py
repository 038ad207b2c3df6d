"""CCE — Circumventing Concept Erasure (Pham et al., ICLR 2024; reference: NYU-DICE-Lab/circumventing-concept-erasure,
``uce/concept_inversion.py``, diffusers' textual inversion run on the *edited* model).

Textual inversion on the edited model: a new token embedding v* is learned from images of the concept drawn by the
*unedited* model, with captions in which the concept is replaced by the new token::

    v* = argmin_v  E_{x₀, ε, t} ‖ ε_edit(x_t, t, c(caption with v)) − ε ‖²,   t ~ U[0, T)

(AdamW on v alone, initialised from an initializer word's embedding). Success: the edited model draws the concept
again when prompted with the learned token in place of the concept.

The learned token is carried by an existing one-token word (``carrier``, default ``sks``) whose input embedding is
replaced wherever it stands, so the tokenizer and the pipeline's fingerprint stay untouched. Captions are the
target prompts with each erased concept's name replaced by the carrier (the reference's captioned / I2P mode);
a prompt that does not name the concept gets ``a photo of a <carrier>``, the reference's first object template.

Deviations from the reference: the training images are the unedited model's final latents for the target prompts
and seeds (the reference encodes 25 decoded images with the VAE and samples its posterior); the initializer word is
the erased concept's own name when it is one token (textual inversion's usual start, the class
word; CCE's published scripts learn styles from 'art', kept for kind ``style``) unless given — on tinyworld a generic
start ('shape') does not find the concept within even 400 steps, while the name's embedding is moved off the erased
direction within 100; the default (CPU) budget is 100 steps of batch 8 at lr 0.002 instead of 5000 steps of batch 4 × 4
accumulation at the scaled lr 0.005 × 16 (``--budget paper``): Adam moves every coordinate by about lr per step, and
tinyworld's token embeddings have coordinates of about 0.02.

On SD3 / FLUX (erasekit's extension; the reference is SD 1.4 only) the loss is the rectified-flow velocity regression
(the family's dynamics, :mod:`._diffusion`), one vector is learned per text encoder (FLUX: CLIP-L's and T5's input
embeddings, each at the carrier's id in its own tokenizer), and where ``sks`` is not one known token for every
tokenizer (tinyworld-flux's T5 knows only tinyworld's words) the carrier is the first word that is and that no target
prompt holds (recorded as ``carrier`` in the suite's info). ``lr`` is the first (CLIP-L) encoder's; every other
encoder's vector steps by lr × (its table's RMS / CLIP-L's), since Adam moves each coordinate by about lr per step and
FLUX's T5 table is ~50× CLIP's (tinyworld-flux: 49.9; tinyworld-xl's CLIP-G: 1.0003): at CLIP's lr the T5 vector,
which makes FLUX's text stream, moved 6 % of its norm in 100 steps while the CLIP one moved 100 %. Chosen on the
development concept 'square' (n = 12, UCE: 75 % → 100 % ASR; no-op 100 % both), not on the reported one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import AttackError
from ...methods.base import help_field
from ..conditioning import carrier_ids, place_token
from ._diffusion import DenoisingObjective
from ._tokens import TokenSpace
from .base import Attack, AttackConfig, AttackContext, AttackResult, TokenResult, budget_field, register_attack

KIND_INITIALIZERS = {"style": "art", "object": "object", "person": "person", "nsfw": "person"}
FALLBACK_TEMPLATE = "a photo of a {}"
DEFAULT_CARRIER = "sks"


@dataclass
class CCEConfig(AttackConfig):
    PAPER: ClassVar[dict[str, Any]] = {"steps": 5000, "batch_size": 4, "accumulation": 4, "lr": 0.08}

    steps: int = budget_field(100, "optimisation steps (paper 5000)")
    batch_size: int = budget_field(8, "images per step (paper 4)")
    accumulation: int = budget_field(1, "batches accumulated per step (paper 4)")
    lr: float = budget_field(
        0.002, "AdamW learning rate on the token embedding (paper: 5e-3 scaled by 4 × 4 = 0.08 on SD 1.4)"
    )
    weight_decay: float = budget_field(0.01, "AdamW weight decay (diffusers' default 1e-2)", inclusive=True)
    carrier: str | None = help_field(
        None,
        "an existing one-token word that carries the learned embedding in the prompts (None: 'sks', or where 'sks' "
        "is not one known token for every text encoder, e.g. tinyworld-flux's T5, the first word that is and that no "
        "target prompt holds)",
    )
    initializer: str | None = help_field(None, "word whose embedding starts the token (None: from the concept)")


def caption(prompt: str, concepts: tuple[str, ...], carrier: str) -> str:
    """``prompt`` with every erased concept's name replaced by ``carrier`` (or the fallback template)."""
    out = prompt
    for c in sorted(concepts, key=len, reverse=True):
        out = re.sub(rf"(?i)\b{re.escape(c)}\b", carrier, out)
    return out if out != prompt else FALLBACK_TEMPLATE.format(carrier)


@register_attack(
    "cce",
    CCEConfig,
    kind="token",
    summary="CCE: textual inversion on the edited model from the unedited model's images; the concept comes back "
    "under the learned token",
    reference="Pham et al., Circumventing Concept Erasure Methods For Text-To-Image Generative Models, ICLR 2024 "
    "(github.com/NYU-DICE-Lab/circumventing-concept-erasure)",
    per_method=True,
)
class CircumventingConceptErasure(Attack[CCEConfig]):
    """Learn a token embedding on the edited model; the suite prompts with it in place of the concept."""

    needs_text_gradients = True  # differentiates through the text encoders

    def _initializer(self, ctx: AttackContext, tokenizer) -> str:
        """The word whose embedding starts the token: the config's; for styles 'art' (CCE's scripts); otherwise the
        erased concept's own name when it is one token (textual inversion's recipe: start from the class word), else
        the kind's generic word."""
        if self.config.initializer:
            return self.config.initializer
        if ctx.kind != "style" and ctx.concepts:
            name = ctx.concepts[0].strip().lower()
            if len(ctx.family.prompt_ids(ctx.pipe, [name])[0]) == 1:  # one token where it stands in a prompt
                return name
        return KIND_INITIALIZERS.get(ctx.kind, "object")

    def _carrier(self, ctx: AttackContext, toks, items) -> str:
        """The carrier word: the config's; by default 'sks' where every tokenizer reads it as one known token, else
        the first word that is one known token for every tokenizer and stands in no target prompt or concept."""
        if self.config.carrier:
            return self.config.carrier
        try:
            carrier_ids(ctx.pipe, DEFAULT_CARRIER)
            return DEFAULT_CARRIER
        except AttackError:
            pass
        used = {w for it in items for w in it.prompt.lower().split()} | {w.lower() for w in ctx.concepts}
        used |= set(FALLBACK_TEMPLATE.format("").split())
        space = TokenSpace(ctx)
        for i in space.ids.tolist():
            w = space.text([i])
            if w not in used:
                return w
        raise AttackError("cce: no word is one token for every text encoder and free of the prompts; pass cce.carrier")

    def _build(self, ctx: AttackContext) -> AttackResult:
        from tqdm.auto import tqdm

        c = self.config
        fam, pipe = ctx.family, ctx.pipe
        toks = fam.text_tokenizers(pipe)  # one per text encoder (FLUX: CLIP-L, T5): the words' ids differ
        items = list(ctx.target)
        word = self._carrier(ctx, toks, items)
        carrier = carrier_ids(pipe, word)  # each encoder's id of the word inside a prompt
        init_word = self._initializer(ctx, toks[0])
        try:
            init = carrier_ids(pipe, init_word)
        except AttackError:
            raise AttackError(
                f"cce initializer {init_word!r} is not one token for every text encoder; pass cce.initializer=WORD"
            ) from None
        captions = [caption(it.prompt, ctx.concepts, word) for it in items]
        tables = fam.input_embeddings(pipe)
        v = [t[i].detach().clone().float().requires_grad_(True) for t, i in zip(tables, init, strict=True)]  # (d_e,)
        # Adam moves every coordinate by about lr per step: each encoder's step is scaled to its table's coordinate
        # scale, relative to the first (CLIP-L) encoder's, for which lr is given (FLUX's T5 table is ~50× CLIP's)
        rms = [float(t.detach().float().pow(2).mean().sqrt()) for t in tables]  # each table's coordinate scale
        scale = [r / rms[0] for r in rms]
        groups = [{"params": [p], "lr": c.lr * s} for p, s in zip(v, scale, strict=True)]
        opt = torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
        x0 = ctx.latents(items)  # (N, C, h, w): the unedited model's images of the concept
        objective = DenoisingObjective.of(ctx)  # the family's forward process and regression target
        gen = torch.Generator().manual_seed(int(c.seed))
        losses = []

        def substitute(enc: int, ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            return place_token(ids, embeds, carrier[enc], v[enc])

        with ctx.edited():
            for _ in tqdm(range(c.steps), desc="cce", disable=not ctx.progress, leave=False):
                opt.zero_grad()
                total = 0.0
                for _ in range(c.accumulation):
                    pick = torch.randperm(len(items), generator=gen)[: c.batch_size]
                    eps = torch.randn((len(pick), *x0.shape[1:]), generator=gen)
                    t = torch.randint(0, objective.num_timesteps, (len(pick),), generator=gen)
                    x_t = objective.noised(x0[pick], eps, t)
                    cond = ctx.encode_substituted([captions[i] for i in pick.tolist()], substitute)
                    pred = ctx.denoise(x_t, t, cond)
                    loss = objective.per_item(pred, x0[pick], eps, t).mean() / c.accumulation
                    grads = torch.autograd.grad(loss, v)
                    for p, g in zip(v, grads, strict=True):
                        p.grad = g if p.grad is None else p.grad + g
                    total += float(loss.detach())
                opt.step()
                losses.append(total)
        learned = {f"encoder_{i}": p.detach().to(tables[i].dtype).cpu() for i, p in enumerate(v)}
        details = {
            "initializer": init_word,
            "loss first / last": [losses[0], losses[-1]] if losses else [],
            "captions": len(set(captions)),
        }
        details["carrier"] = word
        return TokenResult(self.name, c.to_dict(), {}, details, carrier=word, embeddings=learned, prompts=captions)
