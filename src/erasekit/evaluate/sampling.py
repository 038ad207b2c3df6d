"""Samplers an attacked item can ask for instead of the pipeline's own: the noisy samplers of noise-based probing
(Lu et al., *When Are Concepts Erased From Diffusion Models?*, NeurIPS 2025; :mod:`erasekit.evaluate.attacks.nbp`).

Both are generalised DDIM (Song et al., *Denoising Diffusion Implicit Models*, ICLR 2021, eq. 12) on a forward
process x_t = a_t x₀ + b_t ε, with the probe's two changes (an absolute value that keeps η > 1 defined, and the
injected noise scaled by a factor s)::

    x_{t−1} = a_{t−1} x̂₀ + √|b_{t−1}² − σ_t²| ε̂ + s · σ_t z,                       z ~ N(0, I)
    σ_t     = η · (b_{t−1} / b_t) · √max(b_t² − (a_t b_{t−1} / a_{t−1})², 0)   (the DDPM posterior std × η)

* DDPM-trained models (:class:`NoisyDDIMScheduler`): a = √ᾱ, b = √(1 − ᾱ), and σ_t is DDIM's eq. 16
  η · √((1 − ᾱ_{t−1}) / (1 − ᾱ_t)) · √(1 − ᾱ_t / ᾱ_{t−1}) — the paper's sampler.
* Rectified flow, SD3 / FLUX (:class:`NoisyFlowScheduler`, erasekit's extension; the paper defines only DDIM):
  a = 1 − σ, b = σ on the scheduler's σ schedule; the model predicts v = ε − x₀, so x̂₀ = x_σ − σ v and
  ε̂ = x_σ + (1 − σ) v. At η = 0 the step is FlowMatchEulerDiscreteScheduler's Euler step x_σ + (σ' − σ) v.

:func:`noisy_sampler` swaps in the one that matches the pipeline scheduler's kind (:func:`noisy_scheduler_class`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..errors import AttackError

DDPM_PREDICTIONS = ("epsilon", "v_prediction", "sample")  # what a DDPM-trained model's scheduler may declare


def ddim_sigma(abar_t: torch.Tensor, abar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t(η) of DDIM eq. 16 from the cumulative ᾱ (scalars)."""
    return eta * ((1 - abar_prev) / (1 - abar_t)).sqrt() * (1 - abar_t / abar_prev).sqrt()


def posterior_std(
    a_t: torch.Tensor, b_t: torch.Tensor, a_prev: torch.Tensor, b_prev: torch.Tensor, eta: float
) -> torch.Tensor:
    """σ_t(η) for a general forward process x_t = a_t x₀ + b_t ε: η times the std of q(x_{t−1} | x_t, x₀) (scalars).

    q(x_t | x_{t−1}) has mean (a_t / a_{t−1}) x_{t−1} and variance b_t² − (a_t b_{t−1} / a_{t−1})²; the posterior
    variance is that times b_{t−1}² / b_t² (Kingma et al., *Variational Diffusion Models*, 2021, appendix A, with
    α = a, σ = b). a_{t−1} = 0 can only follow a_t = 0 (σ = σ' = 1 on a flow); the clamp makes that 0 / 0 a 0.
    """
    ratio = a_t * b_prev / a_prev.clamp_min(torch.finfo(a_prev.dtype).tiny)  # a_t b_{t−1} / a_{t−1}
    return eta * (b_prev / b_t) * (b_t**2 - ratio**2).clamp_min(0).sqrt()  # max(·, 0): rounding at σ_{t−1} = σ_t


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
    sigma = ddim_sigma(abar_t, abar_prev, eta)  # σ_t(η), DDIM eq. 16
    return ddim_update(x0, eps, abar_prev.sqrt(), (1 - abar_prev).sqrt(), sigma, eta, scale, z), x0


def ddim_update(
    x0: torch.Tensor,
    eps: torch.Tensor,
    a_prev: torch.Tensor,
    b_prev: torch.Tensor,
    sigma: torch.Tensor,
    eta: float,
    scale: float,
    z: torch.Tensor | None,
) -> torch.Tensor:
    """DDIM eq. 12 for a process x = a x₀ + b ε: x_prev = a' x̂₀ + √|b'² − σ²| ε̂ + s σ z (|·| keeps η > 1
    defined; the noise only for η > 0), shared by the VP (DDIM) and rectified-flow steps of the probe."""
    x_prev = a_prev * x0 + (b_prev**2 - sigma**2).abs().sqrt() * eps  # deterministic part
    if z is not None and eta > 0:
        x_prev = x_prev + scale * sigma * z  # injected noise, scaled by the variance factor s
    return x_prev


def noisy_flow_step(
    v: torch.Tensor,
    x_t: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_prev: torch.Tensor,
    eta: float,
    scale: float,
    z: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_{σ'}, x̂₀) of the probe's step on rectified flow x_σ = (1 − σ) x₀ + σ ε, from σ = ``sigma_t`` to
    σ' = ``sigma_prev`` < σ; ``v`` the velocity ε − x₀; tensors of any one shape ((B, C, h, w), or FLUX's packed
    (B, L, C·4)) but the σ scalars."""
    a_t, b_t = 1 - sigma_t, sigma_t  # x_t = a_t x₀ + b_t ε
    a_prev, b_prev = 1 - sigma_prev, sigma_prev
    x0 = x_t - sigma_t * v  # x̂₀ = x_σ − σ v
    eps = x_t + (1 - sigma_t) * v  # ε̂ = x_σ + (1 − σ) v
    gamma = posterior_std(a_t, b_t, a_prev, b_prev, eta)  # γ: DDIM's σ_t(η) for this (a, b) (eq. 16 generalised)
    x_prev = ddim_update(x0, eps, a_prev, b_prev, gamma, eta, scale, z)  # DDIM eq. 12 with (a, b)
    return x_prev, x0  # at σ' = 0: γ = 0 and x_prev = x̂₀; at η = 0: x_σ + (σ' − σ) v (Euler)


def _noise(me: Any, shape: torch.Size, generator: Any, like: torch.Tensor) -> torch.Tensor:
    """z ~ N(0, I) from the generator the pipeline passed to ``step``, else from the draw's own (the pipeline's
    ``generator``, given to :func:`noisy_sampler`: FluxPipeline and SD3's pipeline pass none to ``step``)."""
    gen = generator if generator is not None else me.probe_generator
    return randn_tensor(shape, generator=gen, device=like.device, dtype=like.dtype)


class NoisyDDIMScheduler(DDIMScheduler):
    """DDIM whose step is :func:`noisy_ddim_step` with the probe's ``probe_eta`` and ``variance_scale`` (the
    pipeline's own ``eta`` argument is ignored: a probe draw's η is part of its item)."""

    probe_eta: float = 0.0
    variance_scale: float = 1.0
    probe_generator: Any = None  # the draw's generator(s), used where the pipeline passes none to step

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
            z = variance_noise if variance_noise is not None else _noise(me, model_output.shape, generator, sample)
        x_prev, x0 = noisy_ddim_step(eps, sample, abar_t, abar_prev, self.probe_eta, self.variance_scale, z)
        if not return_dict:
            return (x_prev, x0)
        return DDIMSchedulerOutput(prev_sample=x_prev, pred_original_sample=x0)


class NoisyFlowScheduler(FlowMatchEulerDiscreteScheduler):
    """FlowMatchEulerDiscreteScheduler whose step is :func:`noisy_flow_step` with the probe's ``probe_eta`` and
    ``variance_scale``; the schedule (set_timesteps with the pipeline's σ or μ), the step index and the per-step
    dtype are diffusers' own. The config's ``stochastic_sampling`` is ignored: the probe's η decides the noise."""

    probe_eta: float = 0.0
    variance_scale: float = 1.0
    probe_generator: Any = None  # the draw's generator(s): FluxPipeline and SD3's pipeline pass none to step

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Any = None,
        per_token_timesteps: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        me: Any = self  # diffusers' scheduler attributes are dynamic
        if per_token_timesteps is not None:
            raise AttackError("nbp's flow sampler steps every token at one σ; this pipeline asks for per-token σ")
        if isinstance(timestep, int) or (torch.is_tensor(timestep) and not torch.is_floating_point(timestep)):
            raise ValueError("pass one of scheduler.timesteps to step, not an integer index")  # as diffusers
        if me.step_index is None:
            me._init_step_index(timestep)
        x_t = sample.to(torch.float32)  # diffusers' upcast for the update
        sigma_t, sigma_prev = me.sigmas[me.step_index], me.sigmas[me.step_index + 1]  # σ, σ' (scalars)
        z = _noise(me, x_t.shape, generator, x_t) if self.probe_eta > 0 else None  # (B, …) like the latents
        v = model_output.to(torch.float32)
        x_prev, _ = noisy_flow_step(v, x_t, sigma_t, sigma_prev, self.probe_eta, self.variance_scale, z)
        me._step_index += 1
        x_prev = x_prev.to(model_output.dtype)  # back to the model's dtype, as diffusers
        if not return_dict:
            return (x_prev,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=cast(torch.FloatTensor, x_prev))  # its annotation


def noisy_scheduler_class(scheduler: Any) -> type[NoisyDDIMScheduler] | type[NoisyFlowScheduler]:
    """The probe's scheduler for a pipeline scheduler of this kind: :class:`NoisyFlowScheduler` for
    FlowMatchEulerDiscreteScheduler (the rectified-flow families, SD3 and FLUX), :class:`NoisyDDIMScheduler` for a
    DDPM-trained scheduler (a β schedule and an ε / v / x₀ prediction); AttackError (one line) for any other."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return NoisyFlowScheduler
    cfg = getattr(scheduler, "config", {})
    prediction = cfg.get("prediction_type")
    if "beta_schedule" in cfg and prediction in DDPM_PREDICTIONS and not cfg.get("use_flow_sigmas", False):
        return NoisyDDIMScheduler
    raise AttackError(
        f"nbp has no noisy sampler for {type(scheduler).__name__} (prediction {prediction!r}): it samples "
        "DDPM-trained schedulers (as DDIM) and FlowMatchEulerDiscreteScheduler (rectified flow); load the pipeline "
        "with one of these"
    )


@contextmanager
def noisy_sampler(pipe, *, eta: float, variance_scale: float, generator: Any = None) -> Iterator[None]:
    """The pipeline samples with the noisy scheduler of its scheduler's kind (:func:`noisy_scheduler_class`), made
    from its own scheduler's config, for the block; its own scheduler is put back afterwards, also on an error.

    ``generator``: the generator(s) given to the pipeline call, so a draw's injected noise continues the draw's own
    stream (reproducible per seed) where the pipeline does not pass them to ``step``. DDIM keeps Stable Diffusion's
    setting: no clipping, ``set_alpha_to_one`` as configured.
    """
    own = pipe.scheduler
    cls = noisy_scheduler_class(own)
    if cls is NoisyDDIMScheduler:
        set_alpha = bool(own.config.get("set_alpha_to_one", False))
        sched: Any = NoisyDDIMScheduler.from_config(own.config, clip_sample=False, set_alpha_to_one=set_alpha)
    else:
        sched = cls.from_config(own.config)
    sched.probe_eta, sched.variance_scale, sched.probe_generator = float(eta), float(variance_scale), generator
    pipe.scheduler = sched
    try:
        yield
    finally:
        pipe.scheduler = own
