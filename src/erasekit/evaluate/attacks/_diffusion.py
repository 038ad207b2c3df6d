"""The denoising objective the white-box attacks share (UnlearnDiffAtk, P4D, CCE): the forward process of DDPM and the
model's regression target, for the pipeline's own noise schedule and prediction type."""

from __future__ import annotations

import torch


def alphas_cumprod(pipe) -> torch.Tensor:
    """ᾱ_t for t = 0 … T−1 (T,), float32, from the pipeline scheduler's training schedule."""
    from diffusers import DDPMScheduler

    sched = pipe.scheduler
    abar = getattr(sched, "alphas_cumprod", None)
    if abar is None:
        abar = DDPMScheduler.from_config(sched.config).alphas_cumprod
    return torch.as_tensor(abar, dtype=torch.float32).cpu()


def prediction_type(pipe) -> str:
    return str(pipe.scheduler.config.get("prediction_type", "epsilon"))


def q_sample(x0: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (DDPM eq. 4); x0, eps (B, C, h, w), abar_t (B,)."""
    a = abar_t.view(-1, 1, 1, 1).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def regression_target(x0: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, kind: str) -> torch.Tensor:
    """What the denoiser is trained to output at x_t: ε (``epsilon``) or v = √ᾱ_t ε − √(1 − ᾱ_t) x₀
    (``v_prediction``, Salimans & Ho 2022); shapes (B, C, h, w)."""
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        a = abar_t.view(-1, 1, 1, 1).to(x0.dtype)
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    return x0  # "sample"
