"""How a family's denoiser moves through noise: the forward process, what the denoiser predicts, the sampler.

The fine-tuning methods (ESD, ACE, MACE's LoRA stage) need four things of a model beyond its conditioning, and
each family declares them through :meth:`~erasekit.models.families.base.Family.dynamics`:

* the **forward process** x_t(x_0, ε, t) (:meth:`Dynamics.noised`);
* the **parameterisation** of the prediction (:attr:`Dynamics.prediction`) and its regression target
  (:meth:`Dynamics.target`): ε for DDPM UNets (SD 2.x: v), the velocity v = ε − x_0 for rectified flow (SD3, FLUX;
  Esser et al. 2024, eq. 1 with a_t = 1 − t, b_t = t) — also the white-box attacks' denoising objective
  (:mod:`erasekit.evaluate.attacks._diffusion`);
* the **sampler** that makes the frozen model's own partial trajectories (:meth:`Dynamics.trajectory`);
* the **guidance** combination (:meth:`Dynamics.guided`): classifier-free guidance ε_u + s (ε_c − ε_u) for the
  UNets and FLUX.1-schnell-style models ("true CFG"), the guidance scale as an input for guidance-distilled
  FLUX.1-dev (one conditional call).

:class:`DDPMDynamics` keeps the UNets on the pipeline's own call with a DDIM scheduler, exactly as before;
:class:`FlowDynamics` samples with the Euler rule of ``FlowMatchEulerDiscreteScheduler`` written out
(:func:`euler_step`, checked against the scheduler's ``step`` in the tests) around the family's ``denoise``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .base import Conditioning, Pipeline

if TYPE_CHECKING:
    from .base import Family

PREDICTIONS = ("epsilon", "v_prediction", "flow")


@dataclass
class Trajectory:
    """One prompt's sampled trajectories: every denoiser input along them, and where they ended."""

    xs: list[torch.Tensor]  # per step i: the denoiser input x_{t_i}, (n, C, h, w); xs[0] is the initial noise
    ts: torch.Tensor  # (steps,) the timestep of each input (scheduler units, 0..1000)
    final: torch.Tensor  # (n, C, h, w): the last latents (x_0 of the sampler)


def cat_conditioning(a: Conditioning, b: Conditioning) -> Conditioning:
    """``a`` and ``b`` stacked on the batch (dim 0), every tensor alike: [unconditional, conditional] for CFG."""

    def cat(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None or y is None else torch.cat([x, y])

    embeds, mask = cat(a.embeds, b.embeds), cat(a.mask, b.mask)
    assert embeds is not None and mask is not None  # both always present
    added = {k: torch.cat([a.added[k], b.added[k]]) for k in a.added}
    return Conditioning(embeds, mask, cat(a.pooled, b.pooled), added, cat(a.guidance, b.guidance))


def classifier_free(pred_u: torch.Tensor, pred_c: torch.Tensor, scale: float) -> torch.Tensor:
    """ε̃ = ε_u + s (ε_c − ε_u)  (Ho & Salimans 2022, eq. 6; linear, so the same for a velocity)."""
    return pred_u + scale * (pred_c - pred_u)


def flow_noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ) x_0 + σ ε  (rectified flow, Liu et al. 2023; σ = t / 1000); σ: (B,) or scalar."""
    s = sigma.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)  # (B, 1, 1, 1)
    return (1 - s) * x0 + s * noise


def flow_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = dx_σ/dσ = ε − x_0: what a rectified-flow denoiser predicts (the training target of SD3 / FLUX)."""
    return noise - x0


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x_{σ'} = x_σ + (σ' − σ) v  (one explicit Euler step of dx/dσ = v: FlowMatchEulerDiscreteScheduler.step)."""
    return x + (sigma_next - sigma) * v


class Dynamics(ABC):
    """The forward process, prediction parameterisation, guidance and sampler of one pipeline."""

    prediction: str  # one of PREDICTIONS
    num_train_timesteps: int = 1000

    @abstractmethod
    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t from x_0 (B, C, h, w), noise (B, C, h, w) and timesteps t (B,) in scheduler units."""

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to output at x_t = :meth:`noised` (x0, noise, t): the regression target of
        the denoising loss ‖ denoise(x_t, t, c) − target ‖² (B, C, h, w); t (B,) in scheduler units."""

    @abstractmethod
    def cfg_halves(self, scale: float) -> bool:
        """Whether sampling with guidance ``scale`` calls the denoiser on [unconditional, conditional] stacked on dim
        0 (so a probe keeps the second half as the conditional branch)."""

    @abstractmethod
    def guided(
        self, family: Family, pipe: Pipeline, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
        uncond: Conditioning, scale: float,
    ) -> torch.Tensor:  # fmt: skip
        """The guided prediction at x_t under ``cond`` with guidance ``scale`` (``uncond``: the empty prompt)."""

    @abstractmethod
    def trajectory(
        self, family: Family, pipe: Pipeline, prompt: str, *, n: int, steps: int, guidance: float, seed: int
    ) -> Trajectory:
        """``n`` trajectories of ``prompt`` sampled by the frozen model (seeds ``seed + j``), every input kept."""


@dataclass(frozen=True)
class DDPMDynamics(Dynamics):
    """A DDPM-trained UNet (ε- or v-prediction): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε; sampled by the pipeline's own call
    with a DDIM scheduler (unscaled model inputs, so the latents after step i are the UNet input at step i + 1)."""

    scheduler_config: Any  # the pipeline scheduler's FrozenDict
    prediction: str = "epsilon"
    num_train_timesteps: int = 1000
    call_kwargs: tuple[tuple[str, Any], ...] = ()  # further ``pipe(...)`` keywords of the sampler (PixArt: binning)

    @classmethod
    def of(cls, pipe: Pipeline, call_kwargs: Mapping[str, Any] | None = None) -> DDPMDynamics:
        cfg = pipe.scheduler.config
        extra = tuple((call_kwargs or {}).items())
        return cls(cfg, str(cfg.get("prediction_type", "epsilon")), int(cfg.get("num_train_timesteps", 1000)), extra)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from diffusers import DDPMScheduler

        x_t: torch.Tensor = DDPMScheduler.from_config(self.scheduler_config).add_noise(x0, noise, t.to(x0.device))
        return x_t

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t for t = 0 … T−1 (T,), float32: the training schedule the scheduler config declares."""
        from diffusers import DDPMScheduler

        abar: torch.Tensor = DDPMScheduler.from_config(self.scheduler_config).alphas_cumprod
        return abar.to(torch.float32)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε (``epsilon``, DDPM eq. 14), v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (``v_prediction``, Salimans & Ho 2022, §4)
        or x_0 (``sample``)."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "v_prediction":
            abar = self.alphas_cumprod()[t.to(torch.int64).cpu()].to(x0.device, x0.dtype)  # (B,)
            a = abar.reshape(-1, *([1] * (x0.dim() - 1)))  # (B, 1, 1, 1)
            return a.sqrt() * noise - (1 - a).sqrt() * x0
        return x0  # "sample"

    def cfg_halves(self, scale: float) -> bool:
        return scale > 1.0  # diffusers' do_classifier_free_guidance

    def guided(
        self, family: Family, pipe: Pipeline, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
        uncond: Conditioning, scale: float,
    ) -> torch.Tensor:  # fmt: skip
        if scale <= 1.0:
            return family.denoise(pipe, x, t, cond)
        b = x.shape[0]
        out = family.denoise(pipe, torch.cat([x, x]), torch.cat([t, t]), cat_conditioning(uncond, cond))
        return classifier_free(out[:b], out[b:], scale)

    @torch.no_grad()
    def trajectory(
        self, family: Family, pipe: Pipeline, prompt: str, *, n: int, steps: int, guidance: float, seed: int
    ) -> Trajectory:
        from diffusers import DDIMScheduler

        saved_sched, saved_bar = pipe.scheduler, dict(getattr(pipe, "_progress_bar_config", {}))
        pipe.scheduler = DDIMScheduler.from_config(saved_sched.config)  # unscaled model input: x_t is the UNet input
        pipe.set_progress_bar_config(disable=True)
        kept: list[torch.Tensor] = []

        def keep(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            kept.append(kw["latents"].detach().clone())
            return kw

        def keep_legacy(i: int, t: Any, latents: torch.Tensor) -> None:  # PixArt's ``callback(step, t, latents)``
            kept.append(latents.detach().clone())

        if "callback_on_step_end" in inspect.signature(type(pipe).__call__).parameters:
            hook: dict[str, Any] = {"callback_on_step_end": keep, "callback_on_step_end_tensor_inputs": ["latents"]}
        else:
            hook = {"callback": keep_legacy, "callback_steps": 1}
        try:
            out = pipe(
                prompt=[prompt] * n,
                generator=[torch.Generator(device="cpu").manual_seed(seed + j) for j in range(n)],
                num_inference_steps=steps,
                guidance_scale=guidance,
                output_type="latent",
                **hook,
                **dict(self.call_kwargs),
            )
            timesteps = pipe.scheduler.timesteps.clone()
            side = family.sample_size(pipe)
            start = pipe.prepare_latents(  # the initial noise, as the pipeline drew it from the same generators
                n,
                family.latent_channels(pipe),
                side * pipe.vae_scale_factor,
                side * pipe.vae_scale_factor,
                kept[0].dtype,
                kept[0].device,
                [torch.Generator(device="cpu").manual_seed(seed + j) for j in range(n)],
            )
        finally:
            pipe.scheduler = saved_sched
            pipe.set_progress_bar_config(**saved_bar)
        final = out.images if torch.is_tensor(out.images) else kept[-1]
        return Trajectory([start, *kept[:-1]], timesteps, final)


@dataclass(frozen=True)
class FlowDynamics(Dynamics):
    """A rectified-flow transformer (SD3, FLUX): x_σ = (1 − σ) x_0 + σ ε with σ = t / 1000, velocity v = ε − x_0,
    sampled by Euler steps on the pipeline scheduler's σ schedule.

    ``sigma_ramp``: FluxPipeline hands the scheduler σ = linspace(1, 1/steps, steps) (then shifted); SD3's pipeline
    lets the scheduler space them. ``embedded_guidance``: FLUX.1-dev takes the guidance scale as an input (one
    conditional call, ``cond.guidance``) instead of true CFG.
    """

    scheduler_config: Any
    sigma_ramp: bool = True
    embedded_guidance: bool = False
    prediction: str = "flow"
    num_train_timesteps: int = 1000

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flow_noised(x0, noise, t.to(x0.device, torch.float32) / self.num_train_timesteps)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity ε − x_0, whatever σ (the rectified-flow target: independent of t)."""
        return flow_velocity(x0, noise)

    def cfg_halves(self, scale: float) -> bool:
        return scale > 1.0 and not self.embedded_guidance

    def guided(
        self, family: Family, pipe: Pipeline, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
        uncond: Conditioning, scale: float,
    ) -> torch.Tensor:  # fmt: skip
        if self.embedded_guidance:  # FLUX.1-dev: the scale is an input; no unconditional branch
            g = torch.full((x.shape[0],), float(scale), device=x.device, dtype=torch.float32)
            return family.denoise(pipe, x, t, replace(cond, guidance=g))
        if scale <= 1.0:
            return family.denoise(pipe, x, t, cond)
        b = x.shape[0]
        out = family.denoise(pipe, torch.cat([x, x]), torch.cat([t, t]), cat_conditioning(uncond, cond))
        return classifier_free(out[:b], out[b:], scale)  # FluxPipeline's true CFG, in one batched call

    def schedule(self, steps: int, image_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ_0 .. σ_steps (steps + 1,), timesteps (steps,)) as the pipeline sets them (FLUX's resolution shift)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        kw: dict[str, Any] = {}
        if sched.config.get("use_dynamic_shifting", False):  # FluxPipeline's calculate_shift: μ linear in tokens
            c = sched.config
            slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
            kw["mu"] = c.base_shift + slope * (image_seq_len - c.base_image_seq_len)
        if self.sigma_ramp:
            sched.set_timesteps(sigmas=list(np.linspace(1.0, 1.0 / steps, steps)), **kw)
        else:
            sched.set_timesteps(steps, **kw)
        return sched.sigmas.to(torch.float32), sched.timesteps.to(torch.float32)

    @torch.no_grad()
    def trajectory(
        self, family: Family, pipe: Pipeline, prompt: str, *, n: int, steps: int, guidance: float, seed: int
    ) -> Trajectory:
        den = family.get_denoiser(pipe)
        side, c = family.sample_size(pipe), family.latent_channels(pipe)
        x = torch.cat(
            [torch.randn(1, c, side, side, generator=torch.Generator().manual_seed(seed + j)) for j in range(n)]
        ).to(den.device, den.dtype)  # (n, C, h, w): x_1 = ε
        cond = family.encode(pipe, [prompt]).index([0] * n)
        uncond = family.encode_unconditional(pipe).index([0] * n)
        sigmas, timesteps = self.schedule(steps, image_seq_len=(side // 2) * (side // 2))
        xs: list[torch.Tensor] = []
        for i, t in enumerate(timesteps):
            xs.append(x)
            v = self.guided(family, pipe, x, t.expand(n).to(x.device), cond, uncond, guidance)  # (n, C, h, w)
            x = euler_step(x, v, float(sigmas[i]), float(sigmas[i + 1]))
        return Trajectory(xs, timesteps, x)
