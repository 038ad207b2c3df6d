"""erasekit's discrete token search against the *edited* model (DESIGN §7).

A few free words appended to each target prompt (or placed before it), chosen by greedy coordinate search,
maximising how much the edited model's cross-attention keys for the attacked prompt look like the *unedited* model's
keys for the original prompt (cosine over positions, the prompt's own tokens aligned, averaged over sites). Each step
proposes ``candidates`` words for one position and keeps the best if it improves the score; the budget is
``steps × candidates`` text-encoder queries per prompt (plus one backward pass per step with gradient proposals).
Not a paper's attack: erasekit's own white-box probe, so its ``paper`` budget is its default.

Two options beside the defaults, for the weak-edit sanity bar of issue 24:

* ``proposals='gradient'`` (GCG, Zou et al. 2023): candidates drawn from the ``top_k`` words by the gradient of the
  score with respect to the position's one-hot token (the search objective made differentiable through the family's
  text encoders, :meth:`TokenSearchAttack._soft_score`, exactly the objective at one-hot) instead of uniformly from
  the whole-word vocabulary (32,230 words on tinyworld, of which 67 occur in its captions).
* ``placement='prefix'`` (UnlearnDiffAtk inserts its tokens before the prompt): with a causal text encoder (CLIP)
  words after the prompt cannot change the prompt's own token states, only the positions after them.

Measured on the development concept (``dotted``, weak edit UCE on the mid block and the first two up blocks, 32
prompts searched, ``benchmarks/attack_budget.py --set token-search.…``), ASR with the unedited model's rate on the same
attacked prompts in brackets: suffix / random (the default) 69 % (84 %), suffix / gradient 72 % (84 %), prefix /
random 66 % (81 %), prefix / gradient 62 % (78 %): no option is better than the default beyond the noise (±16 points
at n = 32), so the defaults stay (docs/results.md, "Attack budgets"). Matching the value outputs too
(``projections=('k', 'v')``, or ``('v',)``) reads 72 / 69 / 72 % for k / v / k,v on the same edit (best of 2 restarts,
n = 32) and 58 % for all three on circle: the keys stay the default.

**Restarts** (issue 24): ``restarts`` independent searches per prompt from fresh random words, each judged, an item
recovered when any one's image shows the concept (best of K, as the reference attacks' repeated searches and images);
restart k of a prompt draws from its own stream, so it is the same search whatever the number of restarts or prompts.
Development edit, n = 96, every prompt searched (``benchmarks/attack_best_of.py --attack token-search --knob restarts
--k 4 --n 96 --set token-search.max_prompts=96``), best of k = 1 / 2 / 3 / 4: plain ASR 69 / 72 / 72 / 72 %,
conditional 79 / 83 / 83 / 83 % (the unedited model draws every attacked prompt), P4D's count 46 / 50 / 50 / 50 %.
The default is 2, the smallest k after which one more restart adds under 3 points. (k = 1 reads 79 %, the single
search of before read 76 %: the per-prompt streams draw other words; the difference is noise.)

Counted like the reference attacks (:func:`erasekit.evaluate.summary.protocol_rates`): beside the plain ASR over the
searched items, the conditional ASR over those whose target the unedited model draws and UnlearnDiffAtk's and P4D's
counts. It does not look at the judge while it searches (no early stop, no best-judged choice).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import AttackError
from ...methods.base import help_field
from ...models.families.base import Site
from .base import (
    Attack,
    AttackConfig,
    AttackContext,
    AttackResult,
    PromptResult,
    budget_field,
    drawn_items,
    register_attack,
    search_seed,
)

# a whole word of lower-case letters, 3+ long: CLIP's ``castle</w>`` or a sentencepiece ``▁castle`` (T5, Gemma)
_WORD = re.compile(r"^(?:([a-z]{3,})</w>|\u2581([a-z]{3,}))$")


def vocabulary_words(tokenizer) -> list[str]:
    """Whole-word tokens of the vocabulary (CLIP BPE or sentencepiece; lower-case letters, 3+ long): the search
    space of free tokens."""
    return sorted(m.group(1) or m.group(2) for t in tokenizer.get_vocab() if (m := _WORD.match(t)))


@dataclass
class TokenSearchConfig(AttackConfig):
    n_tokens: int = budget_field(3, "free words appended to each target prompt")
    steps: int = budget_field(12, "coordinate updates per prompt (one position each, cycling)")
    candidates: int = budget_field(32, "random vocabulary words scored at each step")
    max_prompts: int | None = budget_field(8, "distinct target prompts searched (None: every one)")
    projections: tuple[str, ...] = help_field(
        ("k",), "cross-attention projections whose outputs are matched: k, v or both"
    )
    proposals: str = help_field(
        "random",
        "how each step's candidate words are proposed: 'random' (uniform over the vocabulary) or 'gradient' (GCG: "
        "drawn from the top_k words by the objective's gradient with respect to the position's one-hot token; needs "
        "gradients through the text encoders)",
    )
    top_k: int = budget_field(64, "gradient proposals: candidates are drawn from this many best words by gradient")
    restarts: int = budget_field(
        2,
        "independent searches per prompt from fresh random words, the attack succeeding on an item when the judge "
        "sees the concept in any one's image (best of K; 2 chosen on the development concept 'dotted')",
    )
    placement: str = help_field(
        "suffix",
        "where the free words stand: 'suffix' (after the prompt) or 'prefix' (before it: with a causal text encoder "
        "only words before the prompt change its own token states)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.placement not in ("suffix", "prefix"):
            raise AttackError(f"token-search placement must be 'suffix' or 'prefix', got {self.placement!r}")
        if self.proposals not in ("random", "gradient"):
            raise AttackError(f"token-search proposals must be 'random' or 'gradient', got {self.proposals!r}")
        if isinstance(self.projections, str):
            self.projections = tuple(p.strip() for p in self.projections.split(",") if p.strip())
        self.projections = tuple(self.projections)
        if not self.projections or any(p not in ("k", "v") for p in self.projections):
            raise AttackError(f"token-search projections must be a non-empty subset of k, v, got {self.projections!r}")


def _attacked(prompt: str, words: Sequence[str], placement: str = "suffix") -> str:
    return f"{' '.join(words)} {prompt}" if placement == "prefix" else f"{prompt} {' '.join(words)}"


@register_attack(
    "token-search",
    TokenSearchConfig,
    kind="prompt",
    summary="greedy random coordinate search for free words appended to the prompt, matching the edited model's "
    "cross-attention keys to the unedited model's",
    reference="erasekit (DESIGN §7); cf. the discrete searches of UnlearnDiffAtk and P4D",
    per_method=True,
)
class TokenSearchAttack(Attack[TokenSearchConfig]):
    """Greedy random coordinate search for ``n_tokens`` free words appended to each target prompt.

    ``steps`` coordinate updates per prompt, each scoring ``candidates`` random vocabulary words
    at one position (budget: ``steps × candidates`` queries). Words containing an erased
    concept's own words are excluded (``forbidden``, default: the study's erased concepts); synonyms are
    allowed — finding them is the point. Deterministic for a given ``seed``.
    """

    def __init__(
        self,
        n_tokens: int | None = None,
        steps: int | None = None,
        candidates: int | None = None,
        seed: int | None = None,
        forbidden: Sequence[str] = (),
        projections: Sequence[str] | None = None,
        max_prompts: int | None = None,
        name: str = "token-search",
        *,
        config: TokenSearchConfig | None = None,
    ) -> None:
        base = (config or TokenSearchConfig(max_prompts=None)).to_dict()
        given = {"n_tokens": n_tokens, "steps": steps, "candidates": candidates, "seed": seed}
        base.update({k: v for k, v in given.items() if v is not None})
        if config is None:
            base["max_prompts"] = max_prompts
        if projections is not None:
            base["projections"] = tuple(projections)
        base["projections"] = tuple(base["projections"])
        super().__init__(TokenSearchConfig(**base))
        self.forbidden, self.label = tuple(forbidden), name

    @property
    def budget(self) -> str:
        return self.budget_line(self.config.to_dict())

    @classmethod
    def budget_line(cls, config: Mapping[str, Any]) -> str:
        restarts = int(config.get("restarts", 1))
        return (
            f"{config['steps']} steps × {config['candidates']} candidates = "
            f"{config['steps'] * config['candidates']} queries per prompt, {config['n_tokens']} free words"
            + (f", best of {restarts} restarts" if restarts > 1 else "")
        )

    def _layers(self, pipe) -> list[tuple[Site, torch.nn.Linear]]:
        """(site, its projection) for every edit site: what the keys are computed at."""
        from ...models.adapter import PipelineAdapter

        adapter = PipelineAdapter(pipe, projections=tuple(self.config.projections))
        return [(site, adapter.linear(site.path)) for site in adapter.sites]

    @torch.no_grad()
    def _keys(
        self, ctx: AttackContext, layers: list[tuple[Site, torch.nn.Linear]], prompts: list[str]
    ) -> list[torch.Tensor]:
        """Each site's projection of what that site reads for ``prompts`` (the family's site input: the text stream on
        a UNet, the pooled vector at SD3 / FLUX's pooled site), flattened per prompt."""
        cond = ctx.encode(prompts)
        fam = ctx.family
        keys = []
        for site, lin in layers:
            x = fam.site_inputs(ctx.pipe, cond, site)  # (B, L, d_in)
            keys.append(torch.nn.functional.linear(x.to(lin.weight.dtype), lin.weight).float())  # (B, L, d_out)
        return keys

    def _score(self, keys: list[torch.Tensor], refs: list[torch.Tensor]) -> torch.Tensor:
        """(B,) mean over sites of the cosine between each prompt's keys (B, L, d) and the reference's (1, L, d),
        flattened over positions. With ``placement='prefix'`` the free words stand before the prompt, so the attacked
        keys from position n_tokens on are compared with the reference's from 0 on (the prompt's own tokens aligned;
        on a CLIP stream one position, the last free word against BOS, is off); a pooled site (L = 1) as it is."""
        shift = self.config.n_tokens if self.config.placement == "prefix" else 0
        cos = []
        for k, r in zip(keys, refs, strict=True):
            if shift and k.shape[1] > shift:
                k, r = k[:, shift:], r[:, : r.shape[1] - shift]
            cos.append(torch.nn.functional.cosine_similarity(k.flatten(1), r.flatten(1).expand(k.shape[0], -1), dim=1))
        return torch.stack(cos).mean(0)

    def _soft_score(
        self,
        ctx: AttackContext,
        layers: list[tuple[Site, torch.nn.Linear]],
        space: Any,
        prompt: str,
        weights: torch.Tensor,
        refs: list[torch.Tensor],
    ) -> torch.Tensor:
        """The search objective of ``prompt`` followed by free words given as weights over ``space``'s vocabulary,
        (n_tokens, V') -> (): the prompt's own input embeddings, then ``weights`` @ each input table, encoded by the
        family with the graph kept, projected at every site, scored against ``refs``. At one-hot ``weights`` it is the
        score of the discrete prompt (a test holds it to :meth:`_score` of the text)."""
        fam = ctx.family
        prompt_rows = space.lookup(torch.tensor(space.content_ids(prompt), dtype=torch.int64))  # (n_e, d_e) each
        adv = space.soft(weights)  # per encoder (n_tokens, d_e)
        pairs = zip(prompt_rows, adv, strict=True)
        order = (lambda p_e, a_e: (a_e, p_e)) if self.config.placement == "prefix" else (lambda p_e, a_e: (p_e, a_e))
        cond = space.encode([[torch.cat(order(p_e, a_e)) for p_e, a_e in pairs]])
        keys = []
        for site, lin in layers:
            x = fam.site_inputs(ctx.pipe, cond, site)  # (1, L, d_in)
            keys.append(torch.nn.functional.linear(x.to(lin.weight.dtype), lin.weight).float())  # (B, L, d_out)
        score: torch.Tensor = self._score(keys, refs)[0]
        return score

    def _token_gradient(
        self,
        ctx: AttackContext,
        layers: list[tuple[Site, torch.nn.Linear]],
        space: Any,
        prompt: str,
        free_rows: list[int],
        refs: list[torch.Tensor],
    ) -> torch.Tensor:
        """∂ score / ∂ one-hot of each free word, (n_tokens, V') (GCG's token gradient, Zou et al. 2023, eq. 2): entry
        (i, w) is the linearised gain of putting word w at free position i."""
        with torch.enable_grad():
            onehot = torch.zeros(len(free_rows), int(space.ids.shape[0]))  # (n_tokens, V')
            onehot[torch.arange(len(free_rows)), torch.tensor(free_rows)] = 1.0
            onehot.requires_grad_(True)
            (grad,) = torch.autograd.grad(self._soft_score(ctx, layers, space, prompt, onehot, refs), [onehot])
        return grad

    def _build(self, ctx: AttackContext) -> AttackResult:
        """Search against ``ctx.pipe`` with ``ctx.edit`` applied (unedited on entry; left unedited)."""
        from tqdm.auto import tqdm

        if ctx.edit is None:
            raise AttackError("token-search searches against an edited model: give it the edit")
        c = self.config
        if c.proposals == "gradient":
            ctx.require_text_gradients(f"{self.name} with proposals='gradient'")
        pipe, target = ctx.pipe, ctx.target
        layers = self._layers(pipe)
        prompts = list(dict.fromkeys(it.prompt for it in target))[: c.max_prompts]
        refs = {p: self._keys(ctx, layers, [p]) for p in prompts}  # unedited keys
        forbidden = self._forbidden_words(self.forbidden or ctx.concepts)
        space = None
        if c.proposals == "gradient":  # the vocabulary TokenSpace can differentiate through (one token per encoder)
            from ._tokens import TokenSpace

            space = TokenSpace(ctx, ban=sorted(forbidden))
            vocab = [space.text([int(i)]) for i in space.ids]
            keep = [j for j, w in enumerate(vocab) if _WORD.match(w + "</w>")]
            words, rows_of = [vocab[j] for j in keep], torch.tensor(keep, dtype=torch.int64)  # word i = row rows_of[i]
        else:
            words = [
                w
                for w in vocabulary_words(pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2)
                if not any(f in w for f in forbidden)
            ]
        found: dict[str, list[dict]] = {}
        searches = [(p, k) for p in prompts for k in range(c.restarts)]
        with ctx.edited():
            for p, k in tqdm(searches, desc="token-search", disable=not ctx.progress, leave=False):
                # each (prompt, restart) its own stream: restart k is the same search whatever the budget or prompts
                rng = np.random.default_rng(search_seed(c.seed, "token-search", p, k))
                free = [int(i) for i in rng.integers(len(words), size=c.n_tokens)]  # indices into words
                best = float(
                    self._score(
                        self._keys(ctx, layers, [_attacked(p, [words[i] for i in free], c.placement)]), refs[p]
                    )[0]
                )
                start = best
                for step in range(c.steps):
                    pos = step % c.n_tokens
                    if space is None:
                        cands = [int(i) for i in rng.integers(len(words), size=c.candidates)]
                    else:  # GCG: the top_k words by the linearised gain of swapping position pos, then a random draw
                        grad = self._token_gradient(ctx, layers, space, p, [int(rows_of[i]) for i in free], refs[p])
                        top = grad[pos][rows_of].topk(min(c.top_k, len(words))).indices  # (top_k,) into words
                        pick = rng.choice(len(top), size=min(c.candidates, len(top)), replace=False)
                        cands = [int(top[int(j)]) for j in pick]
                    texts = [
                        _attacked(p, [words[i] for i in free[:pos] + [w] + free[pos + 1 :]], c.placement) for w in cands
                    ]
                    scores = self._score(self._keys(ctx, layers, texts), refs[p])
                    j = int(scores.argmax())
                    if float(scores[j]) > best:
                        best, free[pos] = float(scores[j]), cands[j]
                found.setdefault(p, []).append({"words": [words[i] for i in free], "score": best, "start_score": start})
        candidates = [
            [_attacked(it.prompt, f["words"], c.placement) for f in found[it.prompt]] if it.prompt in found else None
            for it in target
        ]
        details = {
            "n_tokens": c.n_tokens,
            "steps": c.steps,
            "candidates": c.candidates,
            "seed": c.seed,
            "objective": f"mean cosine of edited vs unedited cross-attention {'/'.join(c.projections)} outputs",
            "proposals": c.proposals,
            "placement": c.placement,
            "vocabulary": len(words),
            "forbidden": sorted(forbidden),
            "search": {p: f[0] for p, f in found.items()},  # the first search of each prompt (its objective)
        }
        if c.restarts > 1:
            details["restarts"] = found
        adversarial = [None if cs is None else cs[0] for cs in candidates]
        return _TokenSearchResult(
            self.name, c.to_dict(), {}, details, prompts=adversarial, label=self.label, candidates=candidates
        )

    @staticmethod
    def _forbidden_words(forbidden: Sequence[str]) -> set[str]:
        return {w for f in forbidden for w in re.findall(r"[a-z]+", f.lower()) if len(w) >= 3}


@dataclass
class _TokenSearchResult(PromptResult):
    """The token search's prompts; its suite keeps the name, source and info fields it always had."""

    label: str = "token-search"
    candidates: list[list[str] | None] | None = None  # per target item its restarts' prompts (None: not searched)

    def suites(self, target):
        from ..suites import Suite

        per_item = self.candidates or [None if p is None else [p] for p in self.prompts]
        best_of = max((len(c) for c in per_item if c), default=1)
        items = drawn_items(target, per_item, label_draws=best_of > 1)
        info = {"attack": self.label, "budget": TokenSearchAttack.budget_line(self.config), **self.details}
        if best_of > 1:
            info["best_of"] = best_of
        info["record"] = self.record()
        return [
            Suite(
                f"adversarial:{self.label}", "adversarial", items, source=f"{target.name} + searched words", info=info
            )
        ]
