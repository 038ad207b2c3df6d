"""Noise-based probing's samplers (evaluate/sampling.py): the generalised DDIM step on rectified flow (SD3, FLUX)
against DDIM's own σ formula and diffusers' Euler step, seeded draws, and the probe end to end on the tiny FLUX build;
the sampler follows the scheduler's kind, and a kind neither sampler supports is refused in one line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

import erasekit
from erasekit.errors import AttackError
from erasekit.evaluate.attacks import AttackContext, get_attack, make_attack_config
from erasekit.evaluate.render import GenerationSettings, render_batch
from erasekit.evaluate.sampling import (
    NoisyDDIMScheduler,
    NoisyFlowScheduler,
    ddim_sigma,
    noisy_flow_step,
    noisy_sampler,
    noisy_scheduler_class,
    posterior_std,
)
from erasekit.evaluate.suites import suites_from_concepts

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def _flux_schedule(steps: int, shift: float = 3.0) -> FlowMatchEulerDiscreteScheduler:
    """A scheduler set up as FluxPipeline does it: custom σ = linspace(1, 1/steps, steps), shifted."""
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=list(np.linspace(1.0, 1.0 / steps, steps)))
    return sched


# ----------------------------------------------------------------------------- the maths, against oracles
@pytest.mark.parametrize("eta", [0.5, 1.0, 1.5])
def test_the_general_posterior_std_is_ddims_sigma_for_ddpm(eta):
    """With a = √ᾱ, b = √(1 − ᾱ) the generalised σ_t(η) is DDIM eq. 16 (what noisy_ddim_step uses), on SD's
    schedule at every step of a 10-step DDIM."""
    sched = DDIMScheduler(**SD_BETAS)
    sched.set_timesteps(10)
    abar = sched.alphas_cumprod.double()
    for t in sched.timesteps.tolist():
        prev = t - 1000 // 10
        at, ap = abar[t], (abar[prev] if prev >= 0 else sched.final_alpha_cumprod.double())
        got = posterior_std(at.sqrt(), (1 - at).sqrt(), ap.sqrt(), (1 - ap).sqrt(), eta)
        torch.testing.assert_close(got, ddim_sigma(at, ap, eta), rtol=1e-10, atol=1e-12)


def test_the_flow_posterior_std_is_the_gaussian_posterior():
    """An independent oracle: for x_{σ'} = a' x₀ + b' ε₁ and x_σ = (a / a') x_{σ'} + √(b² − (a b' / a')²) ε₂ the
    conditional variance Var(x_{σ'} | x_σ, x₀) = b'² − Cov² / Var is the square of posterior_std at η = 1, on the
    flow's a = 1 − σ, b = σ along a shifted FLUX schedule."""
    sig = _flux_schedule(6).sigmas.double()
    for s, sp in zip(sig[:-1], sig[1:], strict=True):
        a, b, ap, bp = 1 - s, s, 1 - sp, sp
        var = bp**2 - ((a / ap) * bp**2) ** 2 / b**2  # Var(x' | x₀) − Cov(x', x | x₀)² / Var(x | x₀)
        torch.testing.assert_close(posterior_std(a, b, ap, bp, 1.0) ** 2, var.clamp_min(0), rtol=1e-9, atol=1e-12)
    assert posterior_std(sig[0], sig[0], sig[0], sig[0], 1.0) == 0  # σ' = σ: no noise to add


@pytest.mark.parametrize("setup", ["flux-sigmas", "sd3-spacing", "bfloat16"])
def test_eta_zero_is_diffusers_euler_step(setup):
    """At η = 0 (any variance scale) the probe's flow step is FlowMatchEulerDiscreteScheduler.step: the whole
    trajectory, the step index, σ' = 0 at the end, and the dtype the step returns."""
    if setup == "sd3-spacing":  # StableDiffusion3Pipeline lets the scheduler space its σ
        ref, probe = FlowMatchEulerDiscreteScheduler(shift=3.0), NoisyFlowScheduler(shift=3.0)
        for s in (ref, probe):
            s.set_timesteps(5)
    else:
        ref, probe = _flux_schedule(5), NoisyFlowScheduler.from_config(_flux_schedule(5).config)
        probe.set_timesteps(sigmas=list(np.linspace(1.0, 1.0 / 5, 5)))
    probe.probe_eta, probe.variance_scale = 0.0, 1.04
    dtype = torch.bfloat16 if setup == "bfloat16" else torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, generator=g).to(dtype)  # FLUX's packed latents (B, L, C·4)
    x_ref = x_probe = x
    for t in ref.timesteps:
        v = torch.randn(2, 16, 8, generator=g).to(dtype)
        x_ref = ref.step(v, t, x_ref).prev_sample
        x_probe = probe.step(v, t, x_probe).prev_sample
        assert x_probe.dtype == x_ref.dtype == dtype and probe.step_index == ref.step_index
        tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
        torch.testing.assert_close(x_probe.float(), x_ref.float(), **tol)
    assert float(ref.sigmas[-1]) == 0.0


def test_the_flow_step_lands_on_x0_and_scales_its_noise():
    """At σ' = 0 the step returns x̂₀ = x_σ − σ v whatever η; for η > 1 it stays finite and its noise term is
    s · γ z, linear in the variance scale s; at the first step (σ = 1, a = 0) γ = η σ'."""
    g = torch.Generator().manual_seed(1)
    x, v, z = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    s, zero = torch.tensor(0.3), torch.tensor(0.0)
    for eta in (0.0, 1.0, 1.7):
        x_prev, x0 = noisy_flow_step(v, x, s, zero, eta, 1.04, z)
        torch.testing.assert_close(x_prev, x - 0.3 * v)
        torch.testing.assert_close(x0, x - 0.3 * v)
    sp = torch.tensor(0.2)
    a, _ = noisy_flow_step(v, x, s, sp, 1.7, 1.04, z)
    b, _ = noisy_flow_step(v, x, s, sp, 1.7, 1.0, torch.zeros_like(z))
    c, _ = noisy_flow_step(v, x, s, sp, 1.7, 1.0, z)
    assert torch.isfinite(a).all() and not torch.allclose(b, c)
    torch.testing.assert_close(a - b, 1.04 * (c - b), rtol=1e-4, atol=1e-6)
    one = torch.tensor(1.0)
    torch.testing.assert_close(posterior_std(1 - one, one, 1 - sp, sp, 1.3), 1.3 * sp)


# ----------------------------------------------------------------------------- which sampler
def test_the_sampler_follows_the_schedulers_kind():
    """DDPM-trained schedulers (ε or v) sample as DDIM, FlowMatchEulerDiscreteScheduler as flow; a scheduler whose
    kind neither supports (flow prediction on DPM-Solver, EDM) is refused in one line that names it."""
    assert noisy_scheduler_class(DDIMScheduler(**SD_BETAS)) is NoisyDDIMScheduler
    assert noisy_scheduler_class(DPMSolverMultistepScheduler(prediction_type="v_prediction")) is NoisyDDIMScheduler
    assert noisy_scheduler_class(FlowMatchEulerDiscreteScheduler(shift=3.0)) is NoisyFlowScheduler
    sana_like = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    for sched in (sana_like, EDMEulerScheduler()):
        with pytest.raises(AttackError) as e:
            noisy_scheduler_class(sched)
        assert "\n" not in str(e.value) and type(sched).__name__ in str(e.value)


def test_nbp_refuses_an_unsupported_scheduler_before_any_draw(all_tiny_pipes):
    pipe = all_tiny_pipes["flux"]
    own = pipe.scheduler
    target = suites_from_concepts(erasekit.ConceptSet(erase=("circle",), kind="object"), seeds=[0])[0].head(1)
    attack = get_attack("nbp")(config=make_attack_config("nbp", etas=(1.0,), variance_scales=(1.0,), samples=1))
    try:
        pipe.scheduler = EDMEulerScheduler()
        with pytest.raises(AttackError, match="EDMEulerScheduler"):
            attack.suites(AttackContext(pipe, target, None, settings=GenerationSettings(steps=2), progress=False))
        with pytest.raises(AttackError), noisy_sampler(pipe, eta=1.0, variance_scale=1.0):
            pass
        assert isinstance(pipe.scheduler, EDMEulerScheduler)  # nothing half-applied
    finally:
        pipe.scheduler = own


# ----------------------------------------------------------------------------- end to end on tiny FLUX and SD3
def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(im, dtype=np.int16) for im in images]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_nbp_draws_on_rectified_flow(all_tiny_pipes, family):
    """The probe builds its draws on FLUX (custom σ) and SD3 (the scheduler's own spacing), and the runner renders
    them through the pipeline with the flow sampler: a draw is reproducible from its seed alone (its noise comes from
    the draw's generator, not torch's global one), η > 0 moves it away from the η = 0 draw, which is the pipeline's
    own Euler sampler, and the pipeline's scheduler is put back."""
    pipe = all_tiny_pipes[family]
    own = pipe.scheduler
    settings = GenerationSettings(steps=3, guidance=3.0)
    target = suites_from_concepts(erasekit.ConceptSet(erase=("circle",), kind="object"), seeds=[0])[0].head(1)
    attack = get_attack("nbp")(
        config=make_attack_config("nbp", etas=(1.0, 1.5), variance_scales=(1.0, 1.04), samples=1)
    )
    (suite,) = attack.suites(AttackContext(pipe, target, None, settings=settings, progress=False))
    assert suite.kind == "adversarial" and len(suite) == 4
    assert [it.sampling[:2] for it in suite.items] == [(1.0, 1.0), (1.0, 1.04), (1.5, 1.0), (1.5, 1.04)]
    torch.manual_seed(1)
    first = _pixels(render_batch(pipe, suite.items, {}, settings))
    torch.manual_seed(2)  # the global RNG moved: the draws must not care
    assert all(np.array_equal(a, b) for a, b in zip(first, _pixels(render_batch(pipe, suite.items, {}, settings))))
    assert pipe.scheduler is own

    item = suite.items[0]  # the item's own seed, η = 1
    plain = _pixels(render_batch(pipe, [dataclasses.replace(item, sampling=None)], {}, settings))[0]
    eta0 = _pixels(render_batch(pipe, [dataclasses.replace(item, sampling=(0.0, 1.0, None))], {}, settings))[0]
    assert np.abs(eta0 - plain).max() <= 1  # η = 0: the Euler sampler, up to float rounding in the pixels
    assert np.abs(first[0] - eta0).mean() > 5  # η = 1: the injected noise moves the draw
