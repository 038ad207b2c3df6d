"""Samplers an attacked item can ask for instead of the pipeline's own: the noisy DDIM of noise-based probing (Lu et
al., *When Are Concepts Erased From Diffusion Models?*, NeurIPS 2025; :mod:`erasekit.evaluate.attacks.nbp`).

DDIM eqs. 12 and 16 with the probe's two changes (an absolute value that keeps η > 1 defined, and the injected noise
scaled by a factor s)::

    x̂₀      = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t
    σ_t     = η · √((1 − ᾱ_{t−1}) / (1 − ᾱ_t)) · √(1 − ᾱ_t / ᾱ_{t−1})
    x_{t−1} = √ᾱ_{t−1} x̂₀ + √|1 − ᾱ_{t−1} − σ_t²| ε̂ + s · σ_t z,    z ~ N(0, I)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


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
