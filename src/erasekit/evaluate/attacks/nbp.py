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

Deviations from the reference: draw 0 of an item uses the item's own seed and draw k > 0 a seed derived from
(attack seed, item seed, k), where the reference continues one generator through its 24 draws (so draws here do not
depend on how many came before); the draws are judged by the evaluation's judge instead of a ResNet-50 ranker; the
default (CPU) budget is a 3 × 2 grid at the evaluation's steps instead of the paper's 6 × 4 grid at 50 steps
(``--budget paper``); at 10 steps η above ~1.5 already destroys the unedited model's images on tinyworld.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from .base import Attack, AttackConfig, AttackContext, AttackResult, SamplingResult, budget_field, register_attack


def noisy_ddim_step(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    abar_t: torch.Tensor,
    abar_prev: torch.Tensor,
    eta: float,
    scale: float,
    z: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_{t−1}, x̂₀) of the noise-based probe's DDIM step; all tensors (B, C, h, w) but the ᾱ scalars."""
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()  # x̂₀, DDIM eq. 12
    sigma = eta * ((1 - abar_prev) / (1 - abar_t)).sqrt() * (1 - abar_t / abar_prev).sqrt()  # σ_t(η), DDIM eq. 16
    x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).abs().sqrt() * eps  # deterministic part, |·| for η > 1
    if z is not None and eta > 0:
        x_prev = x_prev + scale * sigma * z  # injected noise, scaled by the variance factor s
    return x_prev, x0


class NoisyDDIMScheduler(DDIMScheduler):
    """DDIM whose step is :func:`noisy_ddim_step` with the probe's ``probe_eta`` and ``variance_scale`` (the
    pipeline's own ``eta`` argument is ignored: a probe draw's η is part of its item)."""

    probe_eta: float = 0.0
    variance_scale: float = 1.0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Any = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        me: Any = self  # diffusers' scheduler attributes are dynamic
        assert me.num_inference_steps is not None, "set_timesteps first"
        prev_t = int(timestep) - me.config.num_train_timesteps // me.num_inference_steps
        abar_t = me.alphas_cumprod[int(timestep)]
        abar_prev = me.alphas_cumprod[prev_t] if prev_t >= 0 else me.final_alpha_cumprod
        kind = me.config.prediction_type
        if kind == "epsilon":
            eps = model_output
        elif kind == "v_prediction":  # ε̂ = √ᾱ v + √(1 − ᾱ) x_t
            eps = abar_t.sqrt() * model_output + (1 - abar_t).sqrt() * sample
        else:  # "sample": ε̂ from x̂₀
            eps = (sample - abar_t.sqrt() * model_output) / (1 - abar_t).sqrt()
        z = None
        if self.probe_eta > 0:
            z = variance_noise
            if z is None:
                z = randn_tensor(model_output.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        x_prev, x0 = noisy_ddim_step(eps, sample, abar_t, abar_prev, self.probe_eta, self.variance_scale, z)
        if not return_dict:
            return (x_prev, x0)
        return DDIMSchedulerOutput(prev_sample=x_prev, pred_original_sample=x0)


@contextmanager
def noisy_sampler(pipe, *, eta: float, variance_scale: float) -> Iterator[None]:
    """The pipeline samples with :class:`NoisyDDIMScheduler` (made from its own scheduler's config, no clipping, as
    Stable Diffusion's DDIM) for the block; its own scheduler is put back afterwards, also on an error."""
    own = pipe.scheduler
    set_alpha = bool(own.config.get("set_alpha_to_one", False))
    sched = NoisyDDIMScheduler.from_config(own.config, clip_sample=False, set_alpha_to_one=set_alpha)
    sched.probe_eta, sched.variance_scale = float(eta), float(variance_scale)
    pipe.scheduler = sched
    try:
        yield
    finally:
        pipe.scheduler = own


@dataclass
class NBPConfig(AttackConfig):
    PAPER: ClassVar[dict[str, Any]] = {
        "etas": (1.0, 1.17, 1.34, 1.51, 1.68, 1.85),
        "variance_scales": (1.0, 1.02, 1.03, 1.04),
        "steps": 50,
    }

    etas: tuple[float, ...] = budget_field(
        (1.0, 1.17, 1.34), "DDIM stochasticity η of the draws (η = 1 is DDPM-like; the probe goes beyond)"
    )
    variance_scales: tuple[float, ...] = budget_field(
        (1.0, 1.04), "factors s on the injected noise σ_t z of every step"
    )
    samples: int = budget_field(1, "draws per (η, variance scale) pair")
    steps: int | None = budget_field(None, "DDIM steps of the draws (None: the evaluation's steps)")


@register_attack(
    "nbp",
    NBPConfig,
    kind="sampling",
    summary="noise-based probing: the prompt fixed, DDIM draws with η ≥ 1 and scaled noise; best of K by the judge",
    reference="Lu et al., When Are Concepts Erased From Diffusion Models?, NeurIPS 2025 "
    "(github.com/kevinlu4588/WhenAreConceptsErased)",
    per_method=False,
)
class NoiseBasedProbe(Attack[NBPConfig]):
    """Perturb the sampling trajectory with the prompt fixed; the draws are the same for every method."""

    def _build(self, ctx: AttackContext) -> AttackResult:
        c = self.config
        grid = [(float(e), float(s)) for e in c.etas for s in c.variance_scales for _ in range(c.samples)]
        variants = []
        for it in ctx.target:
            draws = []
            for k, (eta, scale) in enumerate(grid):
                seed = int(it.seed) if k == 0 else _derived_seed(c.seed, int(it.seed), k)
                draws.append((seed, eta, scale))
            variants.append(draws)
        details = {"draws per item": len(grid), "sampler": "noisy DDIM (η, variance scale)"}
        return SamplingResult(self.name, c.to_dict(), {}, details, variants=variants, steps=c.steps)


def _derived_seed(seed: int, item_seed: int, k: int) -> int:
    """Draw k's seed: a function of (attack seed, item seed, k) only."""
    return int(np.random.default_rng([seed, item_seed & 0xFFFFFFFF, k]).integers(2**31 - 1))
