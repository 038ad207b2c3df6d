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

On a flow-matching family (SD3, FLUX) ε is the family's velocity prediction (models/families/dynamics.py): the targets
are linear in it, so they read the same. With two site groups (SD3 / FLUX: the text stream's and the pooled
embedder), stage 1 is solved per group on that group's columns and stage 2 trains every group's adapter in one loss.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..edit import LayerEdit
from ..errors import MethodError
from . import _closed_form as cf
from . import _finetune as ft
from .base import Method, MethodConfig, help_field, register_method


# ------------------------------------------------------------ stage 1 maths
def concept_directions(
    W0: torch.Tensor, C_E: torch.Tensor, C_G: torch.Tensor, C_P: torch.Tensor, rank: int, retain_energy: float = 0.99
) -> torch.Tensor:
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
        raise MethodError(
            "the erase and guide prompts give identical outputs in some layer; nothing to nullify (check the concepts)"
        )
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
    adv_radius: float = help_field(
        0.1, "rho: bound of the adversarial perturbation per token, relative to the mean token norm"
    )
    synonyms: tuple[str, ...] = help_field(
        (), "extra prompts that evoke the concept ('|'-separated on the command line)"
    )
    pool_latents: int = help_field(2, "unedited trajectories per concept prompt that supply x_t")
    pool_steps: int = help_field(10, "denoising steps of those trajectories")
    guidance: float = help_field(5.0, "guidance of those trajectories")
    seed: int = help_field(0, "seed of the trajectories, sampling and initialisation")
    gradient_checkpointing: bool = help_field(
        True,
        "recompute each UNet block during backward instead of keeping its activations: about a third more time, a "
        "fraction of the memory, the same gradients",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.synonyms, str):
            self.synonyms = tuple(p.strip() for p in self.synonyms.split("|") if p.strip())
        self.synonyms = tuple(self.synonyms)
        if (
            self.rank < 1
            or self.train_steps < 0
            or self.batch_size < 1
            or self.adv_steps < 0
            or self.pool_latents < 1
            or self.pool_steps < 2
        ):
            raise MethodError("rank, batch_size, pool_latents >= 1, pool_steps >= 2, train_steps and adv_steps >= 0")
        if self.lr <= 0 or self.adv_radius < 0 or self.preserve_weight < 0:
            raise MethodError("lr must be > 0, adv_radius and preserve_weight >= 0")


# --------------------------------------------------------- stage 2 carrier
class _GatedLowRank(ft.Carrier):
    """ΔW = B diag(σ(θ)) A added to a frozen Linear's output by a forward hook."""

    def __init__(self, U: torch.Tensor, W0: torch.Tensor):
        super().__init__()
        self.B = torch.nn.Parameter(-U.float())  # (d_out, r)
        self.A = torch.nn.Parameter((U.T @ W0.double()).float())  # (r, d_in)
        self.theta = torch.nn.Parameter(torch.full((U.shape[1],), 4.0))  # gates σ(4) ≈ 0.98: nullify at start

    def delta(self) -> torch.Tensor:
        return (self.B * torch.sigmoid(self.theta)) @ self.A  # (d_out, d_in)

    def extra(self, module, x):
        return F.linear(x, self.delta().to(dtype=x.dtype, device=x.device))


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


@register_method(
    "ace", ACEConfig, "ACE: gated low-rank nullification + adversarial fine-tuning (arXiv 2504.11850, reconstruction)"
)
class ACE(Method[ACEConfig]):
    def uses_unet(self, config: ACEConfig) -> bool:
        return True

    def fits_groups_together(self, config: ACEConfig) -> bool:
        return True  # stage 1 per site group (its own columns), stage 2 trains every group's adapter in one loss

    def fit(self, adapter, concepts, config: ACEConfig, progress: bool = True):
        ft.require_denoiser_methods(adapter, self.name)
        t0 = time.perf_counter()
        carriers: dict[str, _GatedLowRank] = {}
        for group in adapter.groups:
            view = adapter.for_group(group)
            C_E, C_G, C_P = cf.token_columns(view, concepts, config)  # (d_in of the group, n·)
            for path in view.paths:
                W0 = adapter.linear(path).weight.detach()
                carriers[path] = _GatedLowRank(
                    concept_directions(W0.cpu(), C_E, C_G, C_P, config.rank, config.retain_energy), W0.cpu()
                ).to(W0.device)
        train_stats = self._train(adapter, concepts, config, carriers, progress) if config.train_steps else {}

        def fit_layer(path, W0):
            c = carriers[path]
            with torch.no_grad():
                B = (c.B * torch.sigmoid(c.theta)).detach()
            return LayerEdit.lowrank(
                path,
                B,
                c.A.detach(),
                rank=B.shape[1],
                gates=[round(float(g), 4) for g in torch.sigmoid(c.theta.detach())],
            )

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
        cond_c, cond_n = ft.unet_inputs(adapter, concept_prompts), ft.unet_inputs(adapter, neutral_of)
        cond_r = ft.unet_inputs(adapter, retain_prompts) if retain_prompts else None
        pool = ft.trajectory_pool(
            adapter,
            concept_prompts,
            n_latents=config.pool_latents,
            steps=config.pool_steps,
            guidance=config.guidance,
            seed=config.seed,
        )
        parts = list(carriers.values())

        def eps(x, t, cond, enabled=True):
            ft.set_enabled(parts, enabled)
            return ft.eps(adapter, x, t, cond)

        def step_loss(step):
            idx = torch.tensor([rng.randrange(len(pool)) for _ in range(config.batch_size)])
            x, t, pid = pool.x[idx].to(adapter.device), pool.t[idx].to(adapter.device), pool.prompt[idx]
            cc, cn = ft.index_cond(cond_c, pid), ft.index_cond(cond_n, pid)
            with torch.no_grad():  # frozen targets: the unedited model
                e_n, e_c = eps(x, t, cn, False), eps(x, t, cc, False)
                target = e_n - config.negative_guidance * (e_c - e_n)
            embeds = cc.embeds  # (b, L, d): the text stream the adversary perturbs
            if config.adv_steps and config.adv_radius > 0:
                delta = _adversarial_delta(lambda e: eps(x, t, cc.with_embeds(e)), embeds, target, config)
                loss = 0.5 * (
                    F.mse_loss(eps(x, t, cc), target) + F.mse_loss(eps(x, t, cc.with_embeds(embeds + delta)), target)
                )
            else:
                loss = F.mse_loss(eps(x, t, cc), target)
            if cond_r is not None and config.preserve_weight > 0:
                rid = torch.tensor([rng.randrange(len(retain_prompts)) for _ in range(config.batch_size)])
                cr = ft.index_cond(cond_r, rid)
                with torch.no_grad():
                    e_r0 = eps(x, t, cr, False)
                loss = loss + config.preserve_weight * F.mse_loss(eps(x, t, cr), e_r0)
            return loss

        with ft.attached(unet, carriers, checkpointing=config.gradient_checkpointing):
            return ft.train(
                step_loss,
                [q for c in parts for q in c.parameters()],
                steps=config.train_steps,
                seconds=config.time_budget,
                lr=config.lr,
                desc="ace: adversarial fine-tuning",
                progress=progress,
                method="ACE fine-tuning",
            )
