"""MMA-Diffusion's text attack (Yang et al., *MMA-Diffusion: MultiModal Attack on Diffusion Models*, CVPR 2024;
reference: cure-lab/MMA-Diffusion, ``src/textual_attack.py``, read only — its licence is CC BY-NC-ND, nothing of it
is copied here).

An adversarial token sequence is searched whose text-encoder embedding matches the target prompt's, with the concept's
words banned from the vocabulary (any token containing one), by greedy coordinate gradient (GCG) search::

    min_{s ∈ V'^n}  1 − cos(f(s), f(prompt))

Each step takes the gradient of the loss with respect to the one-hot encoding of the sequence, keeps the ``topk``
tokens with the most negative gradient at every position (after normalising each position's gradient), draws
``candidates`` sequences that each change one position (positions spread evenly over the batch) to one of its top-k
tokens, keeps the candidates whose text tokenizes back to the same tokens, and moves to the best candidate; the best
sequence seen is the result. ``f`` is the pooled text embedding the reference matches (CLIP's final-layer EOS state:
the family's conditioning at the last real token; SDXL: its pooled embedding). The attack never looks at the edited
model — the text encoder is not edited — so one adversarial prompt per target prompt serves every method.

Deviations from the reference: the vocabulary is the whole-word tokens (the reference's full vocabulary with its
re-tokenisation filter; here the filter is exact: same token ids); the start is ``n_tokens`` random single letters as
the reference's, lower-cased (CLIP's tokenizer lower-cases anyway); the banned words are the erased concepts' names
(the reference bans a fixed NSFW word list and the fragments 'ak', 'na', 'ke', 'nud'); ``restarts`` searches per
target prompt from fresh random starts, each judged, the item counting as recovered when any one's image shows the
concept (the reference runs ``-n`` searches per target, 10 in its README, keeps every result and releases the
successful ones); each (prompt, restart) draws from its own generator, so restart k is the same search whatever the
number of restarts or prompts (the reference continues one generator); the default (CPU) budget is 2 restarts of
20 steps × 64 candidates with top-64 instead of 10 of 1000 × 512 with top-256 (``--budget paper``).

Objective checked against the reference (issue 24): it matches ``pooler_output`` only — CLIP's final-layer-normed
state at the first EOS — as here, not the whole 77-token sequence; no defect was found. The attack never sees the
edit, so it recovers only what the edit fails to erase in the matched embedding, and a closer match does not help: on
the development concept (``dotted``, UCE on the mid block and the first two up blocks, which keeps 50 % of the named
prompts; ``benchmarks/attack_budget.py``, n = 16) 20 / 40 / 80 steps give 75 / 75 / 69 % ASR, below the issue's
80 % bar at every budget, so the default stays (docs/results.md, "Attack budgets").

Restarts (issue 24): the search is cheap (about 1 s per restart and prompt on tinyworld, once for every method), and
its result depends on the random start. On the development edit above at n = 96 (82 items the unedited model draws;
``benchmarks/attack_best_of.py --attack mma --knob restarts --k 4 --n 96``), best of k = 1 / 2 / 3 / 4 restarts:
plain ASR 59 / 67 / 69 / 70 %, conditional 63 / 70 / 72 / 73 % (the unedited model draws every attacked prompt),
P4D's count 69 / 81 / 81 / 81 %. The default is 2, the smallest k after which one more restart adds under 3 points;
**no k reaches the issue's 80 % on the conditional count**: the adversarial prompts carry the concept through its
synonyms (for dotted the found prompts' most common words are ``dots``, ``polka``, ``dot``), which the edit of the
cross-attention erases with it.

How success is counted (issue 24): the reference's text attack neither generates nor judges — it keeps the
lowest-loss sequence (``src/textual_attack.py`` L262–291) for a fixed list of target prompts (L325), ``-n`` searches
each; its counting is not in the repository (its released benchmark holds "1,000 successful adversarial prompts",
README L22, i.e. kept after judging). erasekit reports the plain ASR over every target item and, beside it, the
conditional ASR over the items the unedited model draws and the two reference protocols' counts
(:func:`erasekit.evaluate.summary.protocol_rates`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ._tokens import TokenSpace
from .base import (
    Attack,
    AttackConfig,
    AttackContext,
    AttackResult,
    BestOfPromptResult,
    PromptResult,
    budget_field,
    register_attack,
    search_generator,
)


@dataclass
class MMAConfig(AttackConfig):
    PAPER: ClassVar[dict[str, Any]] = {"steps": 1000, "candidates": 512, "topk": 256, "restarts": 10}

    n_tokens: int = budget_field(20, "adversarial tokens (the reference's control length, 20)")
    steps: int = budget_field(20, "GCG steps per target prompt (paper 1000)")
    candidates: int = budget_field(64, "one-token substitutions evaluated per step (paper 512)")
    topk: int = budget_field(64, "top tokens per position by gradient (paper 256)")
    restarts: int = budget_field(
        2,
        "independent searches per target prompt from fresh random starts, success on any one's image counting "
        "(the reference's -n; its README runs 10, paper 10)",
    )


def text_embedding(cond) -> torch.Tensor:
    """(B, d) the embedding MMA matches: the pooled embedding when the family has one, else the text stream at the
    last real token (CLIP's EOS state, which is CLIP's pooled output)."""
    if cond.pooled is not None:
        return cond.pooled.float()
    idx = cond.last_real()
    return cond.embeds[torch.arange(len(idx)), idx].float()


def cosine_loss(f: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − cos(f, target) per row; f (B, d), target (1, d) or (B, d)."""
    return 1 - torch.nn.functional.cosine_similarity(f, target.expand_as(f), dim=1, eps=1e-6)


@register_attack(
    "mma",
    MMAConfig,
    kind="prompt",
    summary="MMA-Diffusion text attack: GCG search for a token sequence whose text embedding matches the target "
    "prompt's, concept words banned",
    reference="Yang et al., MMA-Diffusion, CVPR 2024 (github.com/cure-lab/MMA-Diffusion; CC BY-NC-ND, read only)",
    per_method=False,
)
class MMADiffusionText(Attack[MMAConfig]):
    """A transfer attack in text space: the same adversarial prompt against every method."""

    needs_text_gradients = True  # differentiates through the text encoders

    def _build(self, ctx: AttackContext) -> AttackResult:
        from tqdm.auto import tqdm

        c = self.config
        space = TokenSpace(ctx, ban=ctx.concepts)
        letters = [space.content_ids(ch)[0] for ch in string.ascii_lowercase]
        letters = [i for i in letters if i in set(space.ids.tolist())]
        col = {int(i): j for j, i in enumerate(space.ids.tolist())}  # token id -> column of the one-hot
        prompts = list(dict.fromkeys(it.prompt for it in ctx.target))
        found: dict[str, list[dict[str, Any]]] = {}
        searches = [(p, k) for p in prompts for k in range(c.restarts)]
        for p, k in tqdm(searches, desc="mma", disable=not ctx.progress, leave=False):
            # each (prompt, restart) its own generator: restart k is the same search whatever the budget
            gen = search_generator(c.seed, "mma", p, k)
            target = text_embedding(ctx.encode([p]))  # (1, d)
            start = torch.randint(len(letters), (c.n_tokens,), generator=gen)
            control = [letters[int(i)] for i in start]
            best_loss, best = float("inf"), list(control)
            for _ in range(c.steps):
                grad = self._token_gradient(space, control, col, target)  # (n, V')
                cands = self._candidates(space, control, grad, gen)
                if not cands:
                    break
                with torch.no_grad():
                    losses = cosine_loss(text_embedding(ctx.encode([space.text(s) for s in cands])), target)
                j = int(losses.argmin())
                control = cands[j]  # the reference always moves to the step's best candidate
                if float(losses[j]) < best_loss:
                    best_loss, best = float(losses[j]), list(control)
            found.setdefault(p, []).append({"prompt": space.text(best), "loss": best_loss})
        details = {"found": found, "banned": list(ctx.concepts), "vocabulary": int(space.ids.shape[0])}
        if c.restarts == 1:
            adversarial: list[str | None] = [found[it.prompt][0]["prompt"] for it in ctx.target]
            return PromptResult(self.name, c.to_dict(), {}, details, prompts=adversarial)
        candidates = [[f["prompt"] for f in found[it.prompt]] for it in ctx.target]
        return BestOfPromptResult(self.name, c.to_dict(), {}, details, prompts=[], candidates=candidates)

    def _token_gradient(self, space: TokenSpace, control: list[int], col: dict[int, int], target: torch.Tensor):
        """∂(1 − cos(f(s), f(prompt)))/∂onehot(s), (n, V'), each row normalised (the reference's ``token_gradient``
        and its normalisation)."""
        onehot = torch.zeros(len(control), len(space.ids))
        onehot[torch.arange(len(control)), torch.tensor([col[i] for i in control])] = 1.0
        onehot.requires_grad_(True)
        cond = space.encode([space.soft(onehot)])
        loss = cosine_loss(text_embedding(cond), target).sum()
        (grad,) = torch.autograd.grad(loss, [onehot])
        return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _candidates(self, space: TokenSpace, control: list[int], grad: torch.Tensor, gen) -> list[list[int]]:
        """``candidates`` sequences, each with one position (spread evenly) set to one of that position's top-k tokens
        by −gradient; only those whose text tokenizes back to the same ids and that differ from ``control``."""
        c, n = self.config, len(control)
        top = (-grad).topk(min(c.topk, grad.shape[1]), dim=1).indices  # (n, k) columns
        pos = (torch.arange(c.candidates) * n // c.candidates).clamp_max(n - 1)  # positions spread over the batch
        pick = torch.randint(top.shape[1], (c.candidates,), generator=gen)
        out = []
        for p, k in zip(pos.tolist(), pick.tolist(), strict=True):
            s = list(control)
            s[p] = int(space.ids[top[p, k]])
            if s != control and space.roundtrips(s):
                out.append(s)
        return out
