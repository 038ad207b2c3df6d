"""Prompting4Debugging, P4D-N and P4D-K (Chin et al., ICML 2024; reference: joycenerd/P4D,
``prompt_optimization/optimize_n.py`` and ``optimize_k.py``).

A prompt is optimised so that the *edited* model's noise prediction under it matches the *unedited* model's under
the concept prompt, on the unedited model's own image of that prompt::

    min_P  ‖ ε_edit(x_t, t, c(proj(P))) − ε_unedited(x_t, t, c(prompt)) ‖²,   x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε,  t ~ U[0, T)

with PEZ's straight-through projection: the forward pass uses the vocabulary embeddings nearest (cosine) to the
continuous embeddings P, and the gradient at the projected embeddings updates P (AdamW). P4D-N learns ``n_tokens``
free tokens (random start) and nothing else; P4D-K keeps the prompt's tokens and inserts one learnable token before
every ``every_k`` of them. Every ``eval_every`` steps the projected prompt is generated with the edited model and
the best one kept.

Deviations from the reference: the projection searches the whole-word tokens of the vocabulary (so the found text
tokenizes back to the same tokens); the prompt kept is the first whose edited-model image the evaluation's judge sees
the concept in (the UnlearnDiffAtk benchmark's P4D stops there), else the one the judge scores highest for the
concept (the reference keeps the one whose image is most CLIP-similar to the unedited image; with no
judge in the context, the one with the lowest loss on a fixed set of (t, ε)); x₀ is the unedited model's final latent
rather than a VAE encoding of its decoded image; items are optimised together in one batch (each with its own P, loss
and random generator: its start, timesteps and noise do not depend on which other items are attacked); every target
item is attacked (the reference's ``process_data.py`` first keeps only the prompts whose unedited image shows the
concept and whose edited image does not); on SDXL, SD3 and FLUX the straight-through
gradient flows through the first text encoder's table only (CLIP-L; the other encoders read the same projected words);
the optimised sequence is padded as generation pads it (the family's tokenizer; P4D-N's reference template pads with
token 0, ``!``, which the pipeline it attacks never does); the default (CPU) budget is 30 steps with a check every 10
instead of 3000 / 50 (``--budget paper``).

On SD3 / FLUX (erasekit's extension; the reference is SD 1.4 only) the matched predictions are velocities at
x_σ = (1 − σ) x₀ + σ ε, σ = t / 1000 (the family's dynamics, :mod:`._diffusion`): ‖v̂_edit − v̂_unedited‖² is the ε
matching divided by (1 − σ)². The projection searches the words that are one known token for every tokenizer (FLUX:
CLIP-L and T5), and on FLUX the first encoder, where the gradient enters, makes only the pooled vector: the T5 stream
sees the projected words but gives P no gradient.

Checked against the reference (issue 24): objective, straight-through projection, AdamW at lr 0.1 / weight decay 0.1,
P4D-N's random start over the vocabulary and 16 free tokens all follow ``optimize_n.py``. On tinyworld P4D-N searches
a vocabulary of 32,875 whole words of which about 70 occur in tinyworld's captions (the others keep their random initial
embeddings: the 2-layer text encoder never saw them), so from a random start its 16 free tokens rarely carry a shape at
the CPU budget: its prompts draw circle for the unedited model 19–62 % of the time (docs/results.md). On the
development concept (``dotted``, issue 24) its default 30 steps already reach 81 % on a weak edit that keeps 50 %
(60 / 120 steps: 88 / 100 %, n = 16), so the default stays. At n = 96 on the same edit (issue 24's protocol check) it
read 72 % plain and 76 % on the items the unedited model draws with one image: below the bar (next paragraph).

Judged on three images (issue 24): ``images`` K renders each checked prompt at the item's seed and K − 1 derived seeds
and counts it as a success when any one is judged to show the concept, the reference's "any of 3 images"
(``run_p4dn.py`` L97, L288); the evaluation renders the kept prompt at the same seeds and counts the item best of K
(what the search saw is what is counted: tested). The default is the reference's 3. Development edit (``dotted``,
n = 96, 82 conditional items; ``benchmarks/attack_best_of.py --attack p4d-n --knob images --k 3``; ``images`` is no
prefix budget, its judged images pick the kept prompt, so ``--k 1`` is a run of its own): P4D-N with 1 image 75 %
plain, **77 %** conditional (unedited 82 %), P4D's count 73 %; with 3 images 90 % plain, **90 %** conditional
(unedited 93 %), P4D's count 92 % — the bar is met as the reference counts, not with one image.

How success is counted (issue 24, checked against the reference): P4D attacks only its "ideal" prompts — the unedited
model's image unsafe and the edited model's safe (``process_data.py`` L181–194) — and its ASR is the share of them
whose final prompt's edited image is judged unsafe (``run_p4dn.py`` L248–262); it keeps the prompt whose image is most
CLIP-similar to the target and judges it once at the end, with no early stop (``optimize_n.py`` L257–278), on three
images, any one unsafe counting (``run_p4dn.py`` L97, L288; erasekit: ``images``, default 3). The
UnlearnDiffAtk benchmark runs P4D its own way: the unattacked prompt first, stopping at the first judged success
(Diffusion-MU-Attack ``src/attackers/hard_prompt_.py`` L142–148, L184–185). erasekit attacks every target item and
reports beside the plain ASR the conditional ASR (items the unedited model draws), ``P4D-protocol ASR`` (the ideal
items) and ``UnlearnDiffAtk-protocol ASR`` (:func:`erasekit.evaluate.summary.protocol_rates`). Keeping the first
judged success makes an item succeed exactly when that early stop would (the batch's other items search on); before
issue 24's protocol check the kept prompt was the highest-scored one, which the judge's argmax decision need not see
when an earlier check was seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..suites import SuiteItem
from ._diffusion import DenoisingObjective
from ._tokens import TokenSpace, nearest_tokens
from .base import (
    Attack,
    AttackConfig,
    AttackContext,
    AttackResult,
    BestOfPromptResult,
    PromptResult,
    budget_field,
    draw_seeds,
    register_attack,
    search_generator,
)


@dataclass
class P4DConfig(AttackConfig):
    PAPER: ClassVar[dict[str, Any]] = {"steps": 3000, "eval_every": 50, "images": 3}

    steps: int = budget_field(30, "optimisation steps per item (paper 3000)")
    eval_every: int = budget_field(10, "steps between generations of the projected prompt (paper 50)")
    lr: float = budget_field(0.1, "AdamW learning rate on the continuous embeddings P")
    weight_decay: float = budget_field(0.1, "AdamW weight decay on P", inclusive=True)
    images: int = budget_field(
        3,
        "images each checked prompt is judged on, success when the judge sees the concept in any one (the first at "
        "the item's seed; the reference judges its prompt on 3, paper 3)",
    )


@dataclass
class P4DNConfig(P4DConfig):
    n_tokens: int = budget_field(16, "learnable tokens: the whole prompt (paper 16)")


@dataclass
class P4DKConfig(P4DConfig):
    every_k: int = budget_field(3, "one learnable token inserted before every k prompt tokens (paper 3)")


class _P4D(Attack[Any]):
    """Shared by P4D-N and P4D-K: :meth:`_layout` places learnable and fixed tokens."""

    needs_text_gradients = True  # differentiates through the text encoders

    def _layout(self, space: TokenSpace, prompt: str) -> tuple[list[int], list[bool]]:
        """(token ids, learnable?) of the optimised sequence; learnable ids are placeholders until projected."""
        c = self.config
        if isinstance(c, P4DNConfig):
            return [space.filler] * c.n_tokens, [True] * c.n_tokens
        text = space.content_ids(prompt)
        n_learn = len(text) // c.every_k + 1  # the reference's prompt_len
        text = text[: space.max_len - n_learn]
        ids, learn, j = [], [], 0
        for i in range(len(text) + n_learn):
            if i % (c.every_k + 1) == 0:  # the reference's learnable positions: i ≡ 0 (mod k + 1)
                ids.append(space.filler)
                learn.append(True)
            elif j < len(text):
                ids.append(text[j])
                learn.append(False)
                j += 1
        return ids, learn

    def _build(self, ctx: AttackContext) -> AttackResult:
        from tqdm.auto import tqdm

        c = self.config
        items = list(ctx.target)
        space = TokenSpace(ctx)
        # one generator per item: its start, timesteps and noise do not depend on which other items are attacked
        gens = [search_generator(c.seed, self.name, it.prompt, int(it.seed)) for it in items]
        objective = DenoisingObjective.of(ctx)  # the family's forward process x_t(x₀, ε, t)
        x0 = ctx.latents(items)  # (B, C, h, w): the unedited model's images of the concept prompts
        layouts = [self._layout(space, it.prompt) for it in items]
        table = space.tables[0]  # (V', d_e): P lives in the first text encoder's input space
        # P: every learnable position of every item, flattened; random vocabulary start as the reference
        start = torch.cat(
            [torch.randint(len(space.ids), (sum(lr),), generator=g) for (_, lr), g in zip(layouts, gens, strict=True)]
        )
        P = table[start].clone().float().requires_grad_(True)  # (ΣL, d_e)
        opt = torch.optim.AdamW([P], lr=c.lr, weight_decay=c.weight_decay)

        T = objective.num_timesteps
        target_cond = ctx.encode([it.prompt for it in items])
        # per item: (judged success, score, prompt); a judged success is kept from the first check that finds it
        best: list[tuple[bool, float, str]] = [(False, -float("inf"), "")] * len(items)
        seeds = [draw_seeds(c.seed, int(it.seed), c.images) for it in items]
        bar = tqdm(total=c.steps, desc=self.name, disable=not ctx.progress, leave=False)
        for s0 in range(0, c.steps, c.eval_every):
            chunk = range(s0, min(s0 + c.eval_every, c.steps))
            ts, noise = draw_steps(gens, len(chunk), T, tuple(x0.shape[1:]))  # (steps, B), (steps, B, C, h, w)
            with torch.no_grad():  # the unedited model on the concept prompts: independent of P
                eps_target = [
                    ctx.denoise(objective.noised(x0, noise[j], ts[j]), ts[j], target_cond).float()
                    for j in range(len(chunk))
                ]  # ε_unedited(x_t, t, c(prompt)), (B, C, h, w) each
            with ctx.edited():
                for j, _ in enumerate(chunk):
                    proj = nearest_tokens(P.detach(), table)  # (ΣL,) PEZ projection
                    hard = table[proj].clone().float().requires_grad_(True)  # forward with the projected embeddings
                    cond = space.encode(self._rows(space, layouts, hard, proj))
                    x_t = objective.noised(x0, noise[j], ts[j])
                    pred = ctx.denoise(x_t, ts[j], cond).float()
                    loss = (pred - eps_target[j]).pow(2).flatten(1).mean(1).sum()  # each item's MSE, summed
                    (grad,) = torch.autograd.grad(loss, [hard])
                    opt.zero_grad()
                    P.grad = grad  # straight-through: the projected point's gradient moves P
                    opt.step()
                    bar.update(1)
                proj = nearest_tokens(P.detach(), table)
                self._evaluate(ctx, space, layouts, proj, items, seeds, best, float(loss.detach()))
        bar.close()
        details: dict[str, Any] = {"variant": self.name.upper(), "vocabulary": int(space.ids.shape[0])}
        if ctx.judge is not None:  # what the search saw: the evaluation's judgement of the kept prompts must agree
            details["judged in search"] = [ok for ok, _, _ in best]
        if c.images == 1:
            prompts: list[str | None] = [p for _, _, p in best]
            return PromptResult(self.name, c.to_dict(), {}, details, prompts=prompts)
        # the reference's "any of its images": the kept prompt at each of the item's image seeds, best of K
        candidates = [[p] * c.images for _, _, p in best]
        return BestOfPromptResult(self.name, c.to_dict(), {}, details, candidates=candidates, seeds=seeds)

    @staticmethod
    def _split(layouts, flat: torch.Tensor) -> list[torch.Tensor]:
        sizes = [sum(lr) for _, lr in layouts]
        return list(torch.split(flat, sizes))

    def _rows(self, space: TokenSpace, layouts, hard: torch.Tensor, proj: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per item, per text encoder: the sequence with the projected tokens at the learnable positions; for the
        first encoder their embeddings are ``hard`` (the leaves the gradient is taken at), the others look the same
        tokens up in their own tables."""
        rows = []
        splits = zip(layouts, self._split(layouts, hard), self._split(layouts, proj), strict=True)
        for (ids, learn), h, p in splits:
            where = torch.tensor(learn).nonzero().squeeze(1)
            full = torch.tensor(ids, dtype=torch.int64)
            full[where] = space.ids[p]
            seqs = space.lookup(full)
            seqs[0] = seqs[0].to(h.dtype).index_put((where,), h)
            rows.append(seqs)
        return rows

    def _texts(self, space: TokenSpace, layouts, proj: torch.Tensor) -> list[str]:
        out = []
        for (ids, learn), p in zip(layouts, self._split(layouts, proj), strict=True):
            full = list(ids)
            chosen = iter(space.ids[p].tolist())
            full = [next(chosen) if lr else i for i, lr in zip(full, learn)]
            out.append(space.text(full))
        return out

    def _evaluate(self, ctx, space, layouts, proj, items, seeds, best, loss: float) -> None:
        """Judge each item's projected prompt on its edited-model images (one per seed in ``seeds[i]``; any one
        judged counts, as the reference's three) and keep the first judged success, as the UnlearnDiffAtk benchmark's
        P4D stops at it (Diffusion-MU-Attack ``hard_prompt_.py`` L184–185); until one, the prompt the judge scores
        highest for the concept. Without a judge: the lowest loss."""
        texts = self._texts(space, layouts, proj)
        if ctx.judge is None:
            scores, seen = [-loss] * len(items), [False] * len(items)
        else:
            trial = [
                SuiteItem(t, sd, it.guidance, it.concepts)
                for t, it, item_seeds in zip(texts, items, seeds, strict=True)
                for sd in item_seeds
            ]
            images = ctx.render(trial)
            jr = ctx.judge.judge(images, list(dict.fromkeys(c for it in items for c in it.concepts)))
            owner = [i for i, item_seeds in enumerate(seeds) for _ in item_seeds]  # image row -> its item
            scores, seen = [-float("inf")] * len(items), [False] * len(items)
            for row, i in enumerate(owner):
                concepts = items[i].concepts
                scores[i] = max(scores[i], max(float(jr.score(c)[row]) for c in concepts))
                seen[i] = seen[i] or any(bool(jr.seen(c)[row]) for c in concepts)
        for i, (ok, sc, text) in enumerate(zip(seen, scores, texts, strict=True)):
            if not best[i][0] and (ok, sc) > best[i][:2]:
                best[i] = (ok, sc, text)


def draw_steps(gens: list[torch.Generator], steps: int, T: int, shape: tuple[int, ...]):
    """Each item's timesteps and noise for ``steps`` optimisation steps from its own generator: t (steps, B) ~ U[0, T)
    and ε (steps, B, *shape) ~ N(0, I); item i's draws are the same whatever the other items."""
    ts, noise = [], []
    for g in gens:
        ts.append(torch.randint(0, T, (steps,), generator=g))
        noise.append(torch.randn((steps, *shape), generator=g))
    return torch.stack(ts, 1), torch.stack(noise, 1)


P4D_REFERENCE = "Chin et al., Prompting4Debugging, ICML 2024 (github.com/joycenerd/P4D)"


@register_attack(
    "p4d-n",
    P4DNConfig,
    kind="prompt",
    summary="P4D-N: n free tokens (PEZ projection) matching the edited model's noise prediction to the unedited "
    "model's on the concept prompt",
    reference=P4D_REFERENCE,
    per_method=True,
    uses_judge=True,
)
class P4DN(_P4D):
    """P4D-N: ``n_tokens`` free tokens."""


@register_attack(
    "p4d-k",
    P4DKConfig,
    kind="prompt",
    summary="P4D-K: the prompt's tokens with a learnable token inserted every k, matching the edited model's noise "
    "prediction to the unedited model's",
    reference=P4D_REFERENCE,
    per_method=True,
    uses_judge=True,
)
class P4DK(_P4D):
    """P4D-K: the prompt with a learnable token every ``every_k`` tokens."""
