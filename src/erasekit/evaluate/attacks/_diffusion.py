"""The denoising objective the white-box attacks share (UnlearnDiffAtk, P4D, CCE), read from the family's dynamics.

Each attack regresses the denoiser's prediction at a noised latent onto a target::

    x_t = noised(x₀, ε, t),   L = ‖ denoise(x_t, t, c) − target(x₀, ε, t) ‖²

and the family's :meth:`~erasekit.models.families.base.Family.dynamics` says what ``noised`` and ``target`` are: on the
DDPM UNets x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε with ε (SD 2.x: v) as the target (DDPM eq. 4 and 14, as the reference
repositories train); on rectified flow (SD3, FLUX) x_σ = (1 − σ) x₀ + σ ε with σ = t / T and the velocity ε − x₀ as
the target (Esser et al. 2024, eq. 1 with a_t = 1 − t, b_t = t). The references are DDPM-only (SD 1.4); the flow
objective, timesteps drawn uniformly on [0, T) as for DDPM (σ uniform, not FLUX's shifted / logit-normal training
density), is erasekit's extension. It is the references' ε objective reweighted: ε = x_σ + (1 − σ) v, so
ε̂ − ε = (1 − σ)(v̂ − v) and ‖v̂ − v‖² = ‖ε̂ − ε‖² / (1 − σ)² at every t (the same minimiser per t; more weight near
pure noise); P4D's prediction matching carries over the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ...models.families.dynamics import Dynamics
    from .base import AttackContext


@dataclass(frozen=True)
class DenoisingObjective:
    """The forward process and the regression target of the attacked pipeline (its family's dynamics)."""

    dynamics: Dynamics

    @classmethod
    def of(cls, ctx: AttackContext) -> DenoisingObjective:
        return cls(ctx.family.dynamics(ctx.pipe))

    @property
    def num_timesteps(self) -> int:
        """T: the timesteps t ∈ [0, T) the attacks draw (scheduler units; σ = t / T on rectified flow)."""
        return int(self.dynamics.num_train_timesteps)

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t from x₀ (B, C, h, w), ε (B, C, h, w) and t (B,)."""
        return self.dynamics.noised(x0, eps, t)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser regresses onto at x_t (B, C, h, w): ε / v (DDPM) or ε − x₀ (rectified flow)."""
        return self.dynamics.target(x0, eps, t)

    def per_item(self, pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B,) each item's mean squared error ‖ pred − target ‖² / (C h w) (the references' ``F.mse_loss``)."""
        return (pred.float() - self.target(x0, eps, t)).pow(2).flatten(1).mean(1)
