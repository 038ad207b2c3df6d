"""erasekit's discrete token search against the *edited* model (DESIGN §7).

A few free words appended to each target prompt, chosen by greedy random coordinate search over the CLIP
vocabulary, maximising how much the edited model's cross-attention keys for the attacked prompt look like the
*unedited* model's keys for the original prompt (cosine, averaged over layers). The budget is
``steps × candidates`` text-encoder queries per prompt. Not a paper's attack: erasekit's own cheap white-box
probe, so its ``paper`` budget is its default.

On tinyworld the candidates are drawn uniformly from 32,230 whole words of which 67 occur in tinyworld's captions (the
text encoder never saw the rest), so the default 12 × 32 queries meet about 0.8 of those words per prompt;
with a causal text encoder the appended words cannot change the prompt's own token states, only the positions after
them. On the development concept (``dotted``, issue 24; docs/results.md, "Attack budgets") 12 / 24 / 48 steps all give
55 % ASR on a weak edit that keeps 50 %: the search is not budget-limited, so the default stays.
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
    _meta,
    budget_field,
    register_attack,
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.projections, str):
            self.projections = tuple(p.strip() for p in self.projections.split(",") if p.strip())
        self.projections = tuple(self.projections)
        if not self.projections or any(p not in ("k", "v") for p in self.projections):
            raise AttackError(f"token-search projections must be a non-empty subset of k, v, got {self.projections!r}")


def _attacked(prompt: str, words: Sequence[str]) -> str:
    return f"{prompt} {' '.join(words)}"


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
        c = self.config
        return (
            f"{c.steps} steps × {c.candidates} candidates = {c.steps * c.candidates} queries per prompt, "
            f"{c.n_tokens} free words"
        )

    @classmethod
    def budget_line(cls, config: Mapping[str, Any]) -> str:
        return (
            f"{config['steps']} steps × {config['candidates']} candidates = "
            f"{config['steps'] * config['candidates']} queries per prompt, {config['n_tokens']} free words"
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
            keys.append(torch.nn.functional.linear(x.to(lin.weight.dtype), lin.weight).flatten(1).float())
        return keys

    def _score(self, keys: list[torch.Tensor], refs: list[torch.Tensor]) -> torch.Tensor:
        cos = [torch.nn.functional.cosine_similarity(k, r.expand_as(k), dim=1) for k, r in zip(keys, refs, strict=True)]
        return torch.stack(cos).mean(0)

    def _build(self, ctx: AttackContext) -> AttackResult:
        """Search against ``ctx.pipe`` with ``ctx.edit`` applied (unedited on entry; left unedited)."""
        from tqdm.auto import tqdm

        if ctx.edit is None:
            raise AttackError("token-search searches against an edited model: give it the edit")
        c = self.config
        pipe, target = ctx.pipe, ctx.target
        layers = self._layers(pipe)
        prompts = list(dict.fromkeys(it.prompt for it in target))[: c.max_prompts]
        refs = {p: self._keys(ctx, layers, [p]) for p in prompts}  # unedited keys
        forbidden = self._forbidden_words(self.forbidden or ctx.concepts)
        words = [
            w
            for w in vocabulary_words(pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2)
            if not any(f in w for f in forbidden)
        ]
        rng = np.random.default_rng(c.seed)
        found: dict[str, dict] = {}
        with ctx.edited():
            for p in tqdm(prompts, desc="token-search", disable=not ctx.progress, leave=False):
                free = [words[int(i)] for i in rng.integers(len(words), size=c.n_tokens)]
                best = float(self._score(self._keys(ctx, layers, [_attacked(p, free)]), refs[p])[0])
                start = best
                for step in range(c.steps):
                    pos = step % c.n_tokens
                    cands = [words[int(i)] for i in rng.integers(len(words), size=c.candidates)]
                    texts = [_attacked(p, free[:pos] + [w] + free[pos + 1 :]) for w in cands]
                    scores = self._score(self._keys(ctx, layers, texts), refs[p])
                    j = int(scores.argmax())
                    if float(scores[j]) > best:
                        best, free[pos] = float(scores[j]), cands[j]
                found[p] = {"words": list(free), "score": best, "start_score": start}
        adversarial = [_attacked(it.prompt, found[it.prompt]["words"]) if it.prompt in found else None for it in target]
        details = {
            "n_tokens": c.n_tokens,
            "steps": c.steps,
            "candidates": c.candidates,
            "seed": c.seed,
            "objective": f"mean cosine of edited vs unedited cross-attention {'/'.join(c.projections)} outputs",
            "vocabulary": len(words),
            "forbidden": sorted(forbidden),
            "search": found,
        }
        return _TokenSearchResult(self.name, c.to_dict(), {}, details, prompts=adversarial, label=self.label)

    @staticmethod
    def _forbidden_words(forbidden: Sequence[str]) -> set[str]:
        return {w for f in forbidden for w in re.findall(r"[a-z]+", f.lower()) if len(w) >= 3}


@dataclass
class _TokenSearchResult(PromptResult):
    """The token search's prompts; its suite keeps the name, source and info fields it always had."""

    label: str = "token-search"

    def suites(self, target):
        from ..suites import Suite, SuiteItem

        items = [
            SuiteItem(p, it.seed, it.guidance, it.concepts, None, _meta(it, ("original prompt", it.prompt)))
            for it, p in zip(target.items, self.prompts, strict=True)
            if p is not None
        ]
        info = {"attack": self.label, "budget": TokenSearchAttack.budget_line(self.config), **self.details}
        info["record"] = self.record()
        return [
            Suite(
                f"adversarial:{self.label}", "adversarial", items, source=f"{target.name} + searched words", info=info
            )
        ]
