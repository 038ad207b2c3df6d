"""UnlearnDiffAtk (Zhang et al., *To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy to
Generate Unsafe Images … For Now*, ECCV 2024; reference: OPTML-Group/Diffusion-MU-Attack,
``src/attackers/text_grad_.py`` with ``src/tasks/classifier_.py``).

``k`` adversarial tokens are prepended to each target prompt. Each is a distribution θ_j over the vocabulary (a soft
one-hot on the probability simplex); every iteration samples a one-hot from θ (straight-through: the backward pass
passes the clipped gradient), feeds ``onehot @ E`` through the text encoder, and minimises the *edited* model's
denoising loss on the target image drawn by the *unedited* model for the same prompt and seed::

    min_θ  E_ε ‖ ε_θ_edit(x_t, t, c([onehot(θ) E ; prompt])) − ε ‖²,   x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε

(the forward process and the target are the family's dynamics, :mod:`._diffusion`: DDPM ε / v on the UNets, the
rectified-flow velocity on SD3 / FLUX)

with Adam on θ followed by the Euclidean projection of each θ_j onto the simplex. The timesteps are visited in order
(the reference's ``sequential`` mode: ``iterations`` steps at each t of ``timesteps`` evenly spaced ones); after
each t the argmax tokens make the discrete prompt, which is generated with the edited model and judged, and the
attack stops on the item as soon as the judge sees the concept (the reference's classifier check; like the
reference, the unattacked prompt is tried first, and an item the edit already fails on keeps it).

Deviations from the reference: the search space is the whole-word tokens of the vocabulary (so the found text
tokenizes back to the same tokens; the reference uses every token and logs the decoded text); x₀ is the unedited
model's final latent, not the VAE encoding of its decoded image; items are optimised together in one batch (each
item's loss and θ are its own, so each item's optimisation is the reference's); without a judge in the context it
runs every timestep and keeps the last prompt; the default (CPU) budget is 4 timesteps × 10 iterations instead of
50 × 40 (``--budget paper``). On SD3 / FLUX (erasekit's extension; the reference is SD 1.4 only): the loss is the
velocity regression at σ = t / 1000 (the ε loss reweighted by 1 / (1 − σ)², see :mod:`._diffusion`); x₀ is the
unpacked latent; θ's one-hot feeds every text encoder (CLIP-L and T5 on FLUX), and the vocabulary is the words that
are one known token for every tokenizer (on tinyworld-flux 64 tinyworld words, every one a shape, colour or pattern
word or a template word: UnlearnDiffAtk's prefixes there are concept words such as 'heart').

How success is counted (issue 24, checked against the reference): the reference attacks only prompts the unedited
model draws — its object datasets re-draw a prompt's seed until the unedited model's image is classified as the
object (``src/execs/generate_object_dataset.py`` L648–745) — and its ASR is (post-attack successes + the unattacked
prompts' successes on the edit) / prompts (``scripts/analysis/check_asr.py`` L46–54), each item stopping at its first
judged success (``text_grad_.py`` L191–197, L232–233, as here). erasekit attacks every target item, so the plain ASR
is over every item; ``results.json`` carries beside it the conditional ASR over the items whose target the unedited
model draws and this count (``UnlearnDiffAtk-protocol ASR``; :func:`erasekit.evaluate.summary.protocol_rates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..suites import SuiteItem
from ._diffusion import DenoisingObjective
from ._tokens import TokenSpace
from .base import Attack, AttackConfig, AttackContext, AttackResult, PromptResult, budget_field, register_attack


def project_simplex(a: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``a`` (..., V) onto {θ ≥ 0, Σθ = 1} (Duchi et al., ICML 2008): the root
    μ of Σ_j max(a_j − μ, 0) = 1 that the reference finds by bisection, here in closed form from the sorted row."""
    u, _ = torch.sort(a, dim=-1, descending=True)  # (..., V) u₁ ≥ u₂ ≥ …
    css = u.cumsum(-1) - 1  # Σ_{i≤j} u_i − 1
    j = torch.arange(1, a.shape[-1] + 1, device=a.device, dtype=a.dtype)
    rho = ((u - css / j) > 0).to(a.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last j with u_j > (Σ_{i≤j} u_i − 1)/j
    mu = css.gather(-1, rho) / (rho + 1).to(a.dtype)  # μ = (Σ_{i≤ρ} u_i − 1)/ρ
    return (a - mu).clamp_min(0)  # θ = max(a − μ, 0)


class _SampleOneHot(torch.autograd.Function):
    """Forward: a one-hot drawn from each row's distribution θ; backward: hardtanh of the incoming gradient (the
    reference's ``STERandSelect``)."""

    @staticmethod
    def forward(ctx: Any, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flat = theta.detach().reshape(-1, theta.shape[-1]).clamp_min(0)
        pick = torch.multinomial(flat + 1e-12, 1, generator=generator).view(theta.shape[:-1])
        return torch.nn.functional.one_hot(pick, theta.shape[-1]).to(theta.dtype)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.nn.functional.hardtanh(grads[0]), None


def sequential_timesteps(n: int, T: int = 1000) -> list[int]:
    """The reference's ``sampled_t``: n timesteps evenly spaced over [0, T), starting half a stride in."""
    stride = T // n
    return list(range(stride // 2, T, stride))[:n]


@dataclass
class UDAConfig(AttackConfig):
    PAPER: ClassVar[dict[str, Any]] = {"timesteps": 50, "iterations": 40}

    k: int = budget_field(3, "adversarial tokens prepended to the prompt (the paper's prefix_k, k = 3)")
    timesteps: int = budget_field(4, "timesteps visited in order, evenly spaced over [0, T) (paper: 50)")
    iterations: int = budget_field(10, "optimisation steps at each timestep (paper: 40)")
    lr: float = budget_field(0.01, "Adam learning rate on the token distributions θ")
    weight_decay: float = budget_field(0.1, "Adam weight decay on θ", inclusive=True)


@register_attack(
    "uda",
    UDAConfig,
    kind="prompt",
    summary="UnlearnDiffAtk: k prepended tokens, soft one-hot on the simplex, minimising the edited model's "
    "denoising loss on the unedited model's image; stops when the judge sees the concept",
    reference="Zhang et al., UnlearnDiffAtk, ECCV 2024 (github.com/OPTML-Group/Diffusion-MU-Attack)",
    per_method=True,
    uses_judge=True,
)
class UnlearnDiffAtk(Attack[UDAConfig]):
    """Discrete prompt-token optimisation against the edited model."""

    needs_text_gradients = True  # differentiates through the text encoders

    def _build(self, ctx: AttackContext) -> AttackResult:
        from tqdm.auto import tqdm

        c = self.config
        items = list(ctx.target)
        space = TokenSpace(ctx)
        gen = torch.Generator().manual_seed(int(c.seed))
        x0 = ctx.latents(items)  # (B, C, h, w): the unedited model's target images
        objective = DenoisingObjective.of(ctx)  # the family's forward process and regression target
        prompt_ids = [space.content_ids(it.prompt)[: space.max_len - c.k] for it in items]
        prompt_rows = [space.lookup(torch.tensor(ids, dtype=torch.int64)) for ids in prompt_ids]
        V = int(space.ids.shape[0])
        theta = torch.full((len(items), c.k, V), 1.0 / V).requires_grad_(True)  # uniform start, on the simplex
        opt = torch.optim.Adam([theta], lr=c.lr, weight_decay=c.weight_decay)
        found: list[str | None] = [None] * len(items)
        log: list[dict[str, Any]] = [{"success_at_t": None} for _ in items]
        active = list(range(len(items)))
        ts = sequential_timesteps(c.timesteps, objective.num_timesteps)
        bar = tqdm(total=len(ts) * c.iterations, desc="uda", disable=not ctx.progress, leave=False)
        with ctx.edited():
            # the reference first generates the original prompt and stops where the edit already fails
            active = self._check(ctx, space, None, items, prompt_ids, active, found, log, "original prompt")
            for t in ts if active else []:
                for _ in range(c.iterations):
                    onehot = _SampleOneHot.apply(theta[active], gen)  # (b, k, V')
                    adv = space.soft(onehot)  # per encoder (b, k, d_e)
                    rows = [[torch.cat([a[j], p[e]]) for e, a in enumerate(adv)] for j, p in _pick(prompt_rows, active)]
                    cond = space.encode(rows)
                    eps = torch.randn(x0[active].shape, generator=gen)
                    t_b = torch.full((len(active),), t, dtype=torch.int64)  # (b,)
                    x_t = objective.noised(x0[active], eps, t_b)
                    pred = ctx.denoise(x_t, t_b, cond)
                    per_item = objective.per_item(pred, x0[active], eps, t_b)
                    (grad,) = torch.autograd.grad(per_item.sum(), [theta])  # each item's own loss, own θ
                    opt.zero_grad()
                    theta.grad = grad
                    opt.step()
                    with torch.no_grad():
                        theta.copy_(project_simplex(theta))
                    bar.update(1)
                active = self._check(ctx, space, theta, items, prompt_ids, active, found, log, t)
                if not active:
                    break
        bar.close()
        for i in active:  # no success seen (or no judge): the last projected prompt
            found[i] = _prompt(space, theta[i], prompt_ids[i])
        details = {"per item": log, "vocabulary": V, "insertion": "prefix_k"}
        return PromptResult(self.name, c.to_dict(), {}, details, prompts=found)

    def _check(self, ctx, space, theta, items, prompt_ids, active, found, log, t) -> list[int]:
        """After a timestep: each active item's argmax prompt; with a judge, render it under the edited model and
        retire the items whose concept the judge sees."""
        if ctx.judge is None:
            return active
        if theta is None:  # before any optimisation: the target prompts themselves
            prompts = {i: items[i].prompt for i in active}
        else:
            prompts = {i: _prompt(space, theta[i], prompt_ids[i]) for i in active}
        trial = [SuiteItem(prompts[i], items[i].seed, items[i].guidance, items[i].concepts) for i in active]
        images = ctx.render(trial)
        seen = [ctx.seen(images[j : j + 1], it)[0] for j, it in enumerate(trial)]
        still = []
        for i, ok in zip(active, seen, strict=True):
            if ok:
                found[i], log[i]["success_at_t"] = prompts[i], t
            else:
                still.append(i)
        return still


def _pick(rows: list[list[torch.Tensor]], active: list[int]) -> list[tuple[int, list[torch.Tensor]]]:
    return [(j, rows[i]) for j, i in enumerate(active)]


def _prompt(space: TokenSpace, theta_i: torch.Tensor, prompt_ids: list[int]) -> str:
    """The discrete prompt: argmax token of each θ_j, then the original prompt."""
    adv = space.ids[theta_i.detach().argmax(-1)].tolist()
    return space.text(adv + prompt_ids)
