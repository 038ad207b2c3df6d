"""ACE — gated low-rank nullification plus adversarial fine-tuning (arXiv 2504.11850).

Only the abstract of the paper is public; this module is the project's reconstruction
(DESIGN §5). What comes from the abstract: a closed-form, gated low-rank nullification of
the concept in cross-attention, then a short adversarially augmented fine-tuning. What is
the project's choice:

* Stage 1 (closed form, per K/V layer): the concept directions in the layer's output space
  are the top left-singular vectors U (d_out, r) of W0 (C_E − C_G) after projecting out the
  preserved concepts' outputs W0 C_P (so retained concepts are not nullified). The adapter
  ΔW = B diag(g) A starts at B = −U, A = Uᵀ W0, g = σ(θ) ≈ 1: W = W0 − U diag(g) Uᵀ W0.
* Stage 2 (fine-tuning of θ, B, A; carried by forward hooks that add x·ΔWᵀ to the frozen
  projection, a LoRA without the peft dependency): ESD-style noise matching on x_t drawn
  from the unedited model's own trajectories for the concept prompts,
      ε_θ(x_t, c_concept + δ) → ε0(x_t, c_neutral) − η (ε0(x_t, c_concept) − ε0(x_t, c_neutral)),
  a preservation term ‖ε_θ(x_t, c_retain) − ε0(x_t, c_retain)‖², and adversarial prompt
  embeddings: δ found by a few projected gradient-ascent steps that maximise the concept's
  return (the erase loss), bounded per token by ρ·(mean token norm); plus every template
  and user synonym of the concept as training prompts.
The merged result is a low-rank Edit (rank r per layer), saved / loaded / reverted like any other.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..edit import LayerEdit
from ..errors import MethodError
from . import _closed_form as cf
from .base import Method, MethodConfig, help_field, register_method


# ------------------------------------------------------------ stage 1 maths
def concept_directions(W0: torch.Tensor, C_E: torch.Tensor, C_G: torch.Tensor, C_P: torch.Tensor, rank: int,
                       retain_energy: float = 0.99) -> torch.Tensor:
    """U (d_out, r): top left-singular vectors of (I − Q_R Q_Rᵀ) W0 (C_E − C_G), Q_R spanning W0 C_P."""
    W0 = W0.double()
    D = W0 @ (C_E - C_G)  # (d_out, n_e): how the concept's keys/values differ from the guide's
    if C_P.shape[1]:
        Q, S, _ = torch.linalg.svd(W0 @ C_P, full_matrices=False)  # retained outputs (d_out, n_p)
        keep = int(((S**2).cumsum(0) / (S**2).sum() < retain_energy).sum()) + 1
        Q = Q[:, :keep]
        D = D - Q @ (Q.T @ D)  # do not nullify what preserved concepts use
    U, S, _ = torch.linalg.svd(D, full_matrices=False)
    r = min(rank, int((S > S[0] * 1e-6).sum()) if S.numel() and S[0] > 0 else 0)
    if r == 0:
        raise MethodError("the erase and guide prompts give identical outputs in some layer; nothing to nullify (check the concepts)")
    return U[:, :r].contiguous()


@dataclass
class ACEConfig(MethodConfig):
    rank: int = help_field(4, "directions nullified per layer (rank of the adapter)")
    retain_energy: float = help_field(0.99, "energy of the preserved outputs kept out of the nullified directions")
    train_steps: int = help_field(60, "stage-2 fine-tuning steps (0: stage 1 only)")
    time_budget: float | None = help_field(None, "stop stage 2 after this many seconds")
    lr: float = help_field(2e-3, "Adam learning rate of gates and factors")
    batch_size: int = help_field(4, "x_t samples per step")
    negative_guidance: float = help_field(1.0, "eta: push the concept prediction past the neutral one (ESD)")
    preserve_weight: float = help_field(1.0, "weight of the preservation loss on retain prompts")
    adv_steps: int = help_field(3, "gradient-ascent steps of the adversarial embedding per training step (0 disables)")
    adv_radius: float = help_field(0.1, "rho: bound of the adversarial perturbation per token, relative to the mean token norm")
    synonyms: tuple[str, ...] = help_field((), "extra prompts that evoke the concept ('|'-separated on the command line)")
    pool_latents: int = help_field(2, "unedited trajectories per concept prompt that supply x_t")
    pool_steps: int = help_field(10, "denoising steps of those trajectories")
    guidance: float = help_field(5.0, "guidance of those trajectories")
    seed: int = help_field(0, "seed of the trajectories, sampling and initialisation")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.synonyms, str):
            self.synonyms = tuple(p.strip() for p in self.synonyms.split("|") if p.strip())
        self.synonyms = tuple(self.synonyms)
        if self.rank < 1 or self.train_steps < 0 or self.batch_size < 1 or self.adv_steps < 0 or self.pool_latents < 1 or self.pool_steps < 2:
            raise MethodError("rank, batch_size, pool_latents >= 1, pool_steps >= 2, train_steps and adv_steps >= 0")
        if self.lr <= 0 or self.adv_radius < 0 or self.preserve_weight < 0:
            raise MethodError("lr must be > 0, adv_radius and preserve_weight >= 0")


# --------------------------------------------------------- stage 2 carrier
class _GatedLowRank(torch.nn.Module):
    """ΔW = B diag(σ(θ)) A added to a frozen Linear's output by a forward hook."""

    def __init__(self, U: torch.Tensor, W0: torch.Tensor):
        super().__init__()
        self.B = torch.nn.Parameter(-U.float())  # (d_out, r)
        self.A = torch.nn.Parameter((U.T @ W0.double()).float())  # (r, d_in)
        self.theta = torch.nn.Parameter(torch.full((U.shape[1],), 4.0))  # gates σ(4) ≈ 0.98: nullify at start
        self.enabled = True

    def delta(self) -> torch.Tensor:
        return (self.B * torch.sigmoid(self.theta)) @ self.A  # (d_out, d_in)

    def hook(self, module, args, out):
        if not self.enabled:
            return out
        x = args[0]
        return out + F.linear(x, self.delta().to(dtype=x.dtype, device=x.device))


def _unet_inputs(adapter, prompts: list[str]):
    """(encoder_hidden_states (b, L, d), added_cond_kwargs or None) exactly as the pipeline builds them."""
    pipe = adapter.pipe
    out = pipe.encode_prompt(prompts, device=adapter.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
    if adapter.family != "sdxl":
        return out[0].detach(), None
    embeds, pooled = out[0].detach(), out[2].detach()
    h = w = adapter.unet.config.sample_size * pipe.vae_scale_factor
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=embeds.dtype, device=embeds.device).repeat(len(prompts), 1)
    return embeds, {"text_embeds": pooled, "time_ids": time_ids}


def _index(cond, idx):
    embeds, added = cond
    return embeds[idx], (None if added is None else {k: v[idx] for k, v in added.items()})


@torch.no_grad()
def _trajectory_pool(adapter, prompts: list[str], config: ACEConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t (m, c, h, w), t (m,), prompt index (m,)) from the unedited model's DDIM trajectories."""
    from diffusers import DDIMScheduler

    pipe = adapter.pipe
    saved_sched, saved_bar = pipe.scheduler, dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.scheduler = DDIMScheduler.from_config(saved_sched.config)  # unscaled model input: x_t is the UNet input
    pipe.set_progress_bar_config(disable=True)
    xs, ts, ids = [], [], []
    try:
        for pi, prompt in enumerate(prompts):
            gens = [torch.Generator(device="cpu").manual_seed(config.seed + 1000 * pi + j) for j in range(config.pool_latents)]
            steps: list[tuple[torch.Tensor, int]] = []

            def keep(p, i, t, kw):
                steps.append((kw["latents"].detach().clone(), i))
                return kw

            pipe(prompt=[prompt] * config.pool_latents, generator=gens, num_inference_steps=config.pool_steps,
                 guidance_scale=config.guidance, output_type="latent", callback_on_step_end=keep,
                 callback_on_step_end_tensor_inputs=["latents"])
            timesteps = pipe.scheduler.timesteps
            for lat, i in steps[:-1]:  # latents after step i are the UNet input at step i + 1
                xs.append(lat)
                ts.append(torch.full((lat.shape[0],), int(timesteps[i + 1])))
                ids.append(torch.full((lat.shape[0],), pi))
    finally:
        pipe.scheduler = saved_sched
        pipe.set_progress_bar_config(**saved_bar)
    return torch.cat(xs), torch.cat(ts), torch.cat(ids)


def _adversarial_delta(eps_fn, embeds: torch.Tensor, target: torch.Tensor, config: ACEConfig) -> torch.Tensor:
    """δ maximising the erase loss (the concept's return), ‖δ_token‖ ≤ ρ·mean token norm (projected ascent)."""
    radius = config.adv_radius * embeds.norm(dim=-1).mean()
    delta = torch.zeros_like(embeds, requires_grad=True)
    step = 2.5 * radius / max(config.adv_steps, 1)
    for _ in range(config.adv_steps):
        loss = F.mse_loss(eps_fn(embeds + delta), target)
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += step * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            norms = delta.norm(dim=-1, keepdim=True)
            delta *= (radius / norms.clamp_min(1e-12)).clamp(max=1.0)  # project onto the per-token ball
    return delta.detach()


@register_method("ace", ACEConfig, "ACE: gated low-rank nullification + adversarial fine-tuning (arXiv 2504.11850, reconstruction)")
class ACE(Method):
    def uses_unet(self, config: ACEConfig) -> bool:
        return True

    def fit(self, adapter, concepts, config: ACEConfig, progress: bool = True):
        t0 = time.perf_counter()
        C_E, C_G, C_P = cf.token_columns(adapter, concepts, config)
        carriers: dict[str, _GatedLowRank] = {}
        for path in adapter.paths:
            W0 = adapter.linear(path).weight.detach()
            carriers[path] = _GatedLowRank(concept_directions(W0.cpu(), C_E, C_G, C_P, config.rank, config.retain_energy), W0.cpu()).to(W0.device)
        train_stats = self._train(adapter, concepts, config, carriers, progress) if config.train_steps else {}

        def fit_layer(path, W0):
            c = carriers[path]
            with torch.no_grad():
                B = (c.B * torch.sigmoid(c.theta)).detach()
            return LayerEdit.lowrank(path, B, c.A.detach(), rank=B.shape[1], gates=[round(float(g), 4) for g in torch.sigmoid(c.theta.detach())])

        layers = cf.edit_layers(adapter, adapter.paths, fit_layer, "ace", progress)
        stats = {"seconds": round(time.perf_counter() - t0, 4), **train_stats}
        return cf.make_edit(self.name, adapter, concepts, config, layers, stats)

    def _train(self, adapter, concepts, config: ACEConfig, carriers, progress) -> dict:
        unet = adapter.unet
        rng = random.Random(config.seed)
        torch.manual_seed(config.seed)
        pairs = concepts.erase_pairs()
        concept_prompts = [e for e, _ in pairs] + list(config.synonyms)
        neutral_of = [g for _, g in pairs] + [pairs[i % len(pairs)][1] for i in range(len(config.synonyms))]
        retain_prompts = concepts.preserve_prompts()
        cond_c, cond_n = _unet_inputs(adapter, concept_prompts), _unet_inputs(adapter, neutral_of)
        cond_r = _unet_inputs(adapter, retain_prompts) if retain_prompts else None
        x_pool, t_pool, p_pool = _trajectory_pool(adapter, concept_prompts, config)

        requires = [p.requires_grad for p in unet.parameters()]
        unet.requires_grad_(False)
        handles = [adapter.linear(p).register_forward_hook(c.hook) for p, c in carriers.items()]
        params = [q for c in carriers.values() for q in c.parameters()]
        opt = torch.optim.Adam(params, lr=config.lr)

        def eps(x, t, cond, enabled=True):
            for c in carriers.values():
                c.enabled = enabled
            embeds, added = cond
            return unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample

        losses, t_start = [], time.perf_counter()
        bar = tqdm(range(config.train_steps), desc="ace: adversarial fine-tuning", unit="step", disable=not progress, leave=False)
        try:
            for step in bar:
                idx = torch.tensor([rng.randrange(len(x_pool)) for _ in range(config.batch_size)])
                x, t, pid = x_pool[idx].to(adapter.device), t_pool[idx].to(adapter.device), p_pool[idx]
                cc, cn = _index(cond_c, pid), _index(cond_n, pid)
                with torch.no_grad():  # frozen targets: the unedited model
                    e_n, e_c = eps(x, t, cn, False), eps(x, t, cc, False)
                    target = e_n - config.negative_guidance * (e_c - e_n)
                embeds, added = cc
                if config.adv_steps and config.adv_radius > 0:
                    delta = _adversarial_delta(lambda e: eps(x, t, (e, added)), embeds, target, config)
                    loss_erase = 0.5 * (F.mse_loss(eps(x, t, cc), target) + F.mse_loss(eps(x, t, (embeds + delta, added)), target))
                else:
                    loss_erase = F.mse_loss(eps(x, t, cc), target)
                loss = loss_erase
                if cond_r is not None and config.preserve_weight > 0:
                    rid = torch.tensor([rng.randrange(len(retain_prompts)) for _ in range(config.batch_size)])
                    cr = _index(cond_r, rid)
                    with torch.no_grad():
                        e_r0 = eps(x, t, cr, False)
                    loss = loss + config.preserve_weight * F.mse_loss(eps(x, t, cr), e_r0)
                if not math.isfinite(loss.item()):
                    raise MethodError("ACE fine-tuning diverged (loss is NaN/Inf); lower lr or load the model in float32")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if config.time_budget is not None and time.perf_counter() - t_start > config.time_budget:
                    break
        finally:
            for h in handles:
                h.remove()
            for p, r in zip(unet.parameters(), requires):
                p.requires_grad_(r)
        return {"train_steps": len(losses), "train_seconds": round(time.perf_counter() - t_start, 3),
                "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}
