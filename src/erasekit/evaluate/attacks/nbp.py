"""Noise-based probing (Lu et al., *When Are Concepts Erased From Diffusion Models?*, NeurIPS 2025): the prompt stays
fixed and the sampling trajectory is perturbed — DDIM with stochasticity η up to and beyond 1 and its injected noise
scaled by a variance factor — and the probe keeps the best of the draws (reference:
kevinlu4588/WhenAreConceptsErased, ``src/probes/noise_based_probe.py`` and its ``eta_ddim_scheduler.py``).

Per target item the probe makes one draw per (η, variance scale) pair of its grid (× ``samples``); it succeeds on
the item when the judge sees the concept in any draw. The paper ranks the draws with a classifier and judges the top
one, which is the same decision when the ranking classifier is the judge. The step (DDIM eqs. 12 and 16, with the
probe's two changes)::

    x̂₀      = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t
    σ_t     = η · √((1 − ᾱ_{t−1}) / (1 − ᾱ_t)) · √(1 − ᾱ_t / ᾱ_{t−1})
    x_{t−1} = √ᾱ_{t−1} x̂₀ + √|1 − ᾱ_{t−1} − σ_t²| ε̂ + s · σ_t z,    z ~ N(0, I)

(the absolute value keeps η > 1 defined; ``s`` is the variance scale).

On rectified-flow models (SD3, FLUX: FlowMatchEulerDiscreteScheduler) erasekit extends the probe — the paper
defines only DDIM — with the same generalised DDIM step (DDIM eq. 12 for x_t = a_t x₀ + b_t ε) on a = 1 − σ,
b = σ of the pipeline's own σ schedule, the model's velocity v = ε − x₀ giving x̂₀ and ε̂::

    x̂₀   = x_σ − σ v,    ε̂ = x_σ + (1 − σ) v                       (σ → σ' < σ: one step of the σ schedule)
    γ    = η · (σ' / σ) · √max(σ² − ((1 − σ) σ' / (1 − σ'))², 0)     (DDIM's σ_t: η × the DDPM posterior std)
    x_σ' = (1 − σ') x̂₀ + √|σ'² − γ²| ε̂ + s · γ z

(γ is b'/b · √max(b² − (a b' / a')², 0) · η for x = a x₀ + b ε, which for a = √ᾱ, b = √(1 − ᾱ) is DDIM's σ_t
above). At η = 0 the step is the scheduler's Euler step x_σ + (σ' − σ) v, and at σ' = 0 it lands on x̂₀. The probe
uses the sampler of the pipeline scheduler's kind; any other kind is refused in one line before a draw is made. The
samplers live in :mod:`erasekit.evaluate.sampling`, below the runner's render stage, which draws the probe's items
with them; a draw's injected noise comes from its own seeded generator.

Deviations from the reference: draw 0 of an item uses the item's own seed and draw k > 0 a seed derived from
(attack seed, item seed, k), where the reference continues one generator through its 24 draws (so draws here do not
depend on how many came before); the draws are judged by the evaluation's judge instead of a ResNet-50 ranker; the
default (CPU) budget is a 3 × 2 grid drawn twice (12 draws) at the evaluation's steps instead of the paper's 6 × 4 grid
once (24 draws) at 50 steps (``--budget paper``); at 10 steps η above ~1.5 already destroys the unedited model's images
on tinyworld.

Checked against the reference (issue 24): the step (η, the absolute value, the variance scale on the injected noise),
the grid and best-of-K follow ``noise_based_probe.py`` and ``eta_ddim_scheduler.py``. One defect of erasekit's own was
fixed: the draws were grid-point-major, so a larger ``samples`` moved every draw's seed and grid point and best-of-K
could fall as K grew; they are sample-major now (a larger budget's draws start with the smaller one's). Its weak-edit
result is a matter of draws: on the development concept (``dotted``, UCE on the mid block and the first two up
blocks, which keeps 50 % of the named prompts against the unedited 81 %; ``benchmarks/attack_budget.py``, n = 16)
best of 6 draws recovers 69 %, of 12 88 %, of 24 88 %, of 48 94 %, so the default draws each grid point twice (12
draws: 12 images per target prompt and model, about one more minute of generation in ``erasekit bench`` with four
methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..sampling import (  # noqa: F401  (the probe's samplers)
    NoisyDDIMScheduler,
    NoisyFlowScheduler,
    noisy_ddim_step,
    noisy_flow_step,
    noisy_sampler,
    noisy_scheduler_class,
)
from .base import (
    Attack,
    AttackConfig,
    AttackContext,
    AttackResult,
    SamplingResult,
    budget_field,
    draw_seeds,
    register_attack,
)


@dataclass
class NBPConfig(AttackConfig):
    PAPER: ClassVar[dict[str, Any]] = {
        "etas": (1.0, 1.17, 1.34, 1.51, 1.68, 1.85),
        "variance_scales": (1.0, 1.02, 1.03, 1.04),
        "samples": 1,
        "steps": 50,
    }

    etas: tuple[float, ...] = budget_field(
        (1.0, 1.17, 1.34), "DDIM stochasticity η of the draws (η = 1 is DDPM-like; the probe goes beyond)"
    )
    variance_scales: tuple[float, ...] = budget_field(
        (1.0, 1.04), "factors s on the injected noise σ_t z of every step"
    )
    samples: int = budget_field(
        2,
        "draws per (η, variance scale) pair (default 2: 12 draws; chosen on the development concept 'dotted', "
        "issue 24: 1 → 69 %, 2 → 88 %, 4 → 88 %, 8 → 94 % ASR on a weak edit)",
    )
    steps: int | None = budget_field(None, "DDIM steps of the draws (None: the evaluation's steps)")


@register_attack(
    "nbp",
    NBPConfig,
    kind="sampling",
    summary="noise-based probing: the prompt fixed, DDIM (or flow) draws with η ≥ 1 and scaled noise; "
    "best of K by the judge",
    reference="Lu et al., When Are Concepts Erased From Diffusion Models?, NeurIPS 2025 "
    "(github.com/kevinlu4588/WhenAreConceptsErased)",
    per_method=False,
)
class NoiseBasedProbe(Attack[NBPConfig]):
    """Perturb the sampling trajectory with the prompt fixed; the draws are the same for every method."""

    def _build(self, ctx: AttackContext) -> AttackResult:
        c = self.config
        sampler = noisy_scheduler_class(ctx.pipe.scheduler)  # refuse an unsupported scheduler before any draw
        # sample-major: draw k of a larger budget is draw k of a smaller one, so more draws never lose a success
        grid = [(float(e), float(s)) for _ in range(c.samples) for e in c.etas for s in c.variance_scales]
        variants = [
            [(seed, eta, scale) for seed, (eta, scale) in zip(draw_seeds(c.seed, int(it.seed), len(grid)), grid)]
            for it in ctx.target
        ]
        kind = "noisy DDIM" if sampler is NoisyDDIMScheduler else "noisy rectified-flow DDIM"
        details = {"draws per item": len(grid), "sampler": f"{kind} (η, variance scale)"}
        return SamplingResult(self.name, c.to_dict(), {}, details, variants=variants, steps=c.steps)
