"""PURE — projection-based erasure from cross-attention activations (Moon et al., arXiv 2605.25765).

1. Run a short denoising trajectory for every forget anchor and retain anchor prompt and
   record, per cross-attention layer ℓ, the attention output before ``to_out`` mean-pooled
   over space (conditional branch only): rows of H_F^ℓ, H_R^ℓ.
2. Keep the top right-singular vectors of each up to a cumulative-energy threshold:
   orthonormal V_F^ℓ, V_R^ℓ; P = V Vᵀ.
3. E^ℓ = I − P_F^ℓ (I − P_R^ℓ), left-multiplied into W_K and W_V (the basis lives in the
   layer's output space). W − W0 = −V_F [V_Fᵀ (I − P_R) W0] has rank ≤ rank(V_F) and is stored
   as a low-rank delta.

``basis='text'`` builds the same projector from token embeddings instead (CURE-style,
right-multiplied: W ← W (I − P_F (I − P_R)) with bases in the text-embedding space), so the
paper's central comparison — activation basis vs text basis — runs on the same concepts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..edit import LayerEdit
from ..errors import MethodError
from ..models.capture import CrossAttentionCapture
from . import _closed_form as cf
from .base import Method, MethodConfig, help_field, register_method


# ------------------------------------------------------------------ maths
def energy_basis(H: torch.Tensor, energy: float, max_rank: int | None = None) -> torch.Tensor:
    """Orthonormal V (d, r): top right-singular vectors of H (rows, d) keeping ``energy`` of Σσ²."""
    if H.numel() == 0:
        return H.new_zeros(H.shape[1], 0)
    _, S, Vh = torch.linalg.svd(H.double(), full_matrices=False)  # H = U diag(S) Vh
    share = (S**2).cumsum(0) / (S**2).sum().clamp_min(1e-300)  # cumulative energy
    r = int((share < energy - 1e-12).sum()) + 1  # smallest r with share[r-1] ≥ energy
    r = min(r, int((S > S[0] * 1e-10).sum()), max_rank or r)  # drop numerically null directions
    return Vh[:r].T.contiguous()  # (d, r)


def projector_E(V_F: torch.Tensor, V_R: torch.Tensor) -> torch.Tensor:
    """E = I − P_F (I − P_R), (d, d): removes forget directions except what the retain basis covers."""
    d = V_F.shape[0]
    P_F, P_R = V_F @ V_F.T, V_R @ V_R.T  # (d, d)
    return torch.eye(d, dtype=V_F.dtype) - P_F @ (torch.eye(d, dtype=V_F.dtype) - P_R)


def left_delta(W0: torch.Tensor, V_F: torch.Tensor, V_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with E W0 − W0 = −P_F (I − P_R) W0 = B A;  B (d_out, r), A (r, d_in)."""
    W0 = W0.double()
    A = V_F.T @ W0 - (V_F.T @ V_R) @ (V_R.T @ W0)  # V_Fᵀ (I − P_R) W0
    return -V_F, A


def right_delta(W0: torch.Tensor, V_F: torch.Tensor, V_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with W0 E − W0 = −W0 P_F (I − P_R) = B A;  B (d_out, r), A (r, d_in)."""
    W0 = W0.double()
    A = V_F.T - (V_F.T @ V_R) @ V_R.T  # V_Fᵀ (I − P_R)
    return -(W0 @ V_F), A


# ----------------------------------------------------------------- config
@dataclass
class PUREConfig(MethodConfig):
    basis: str = help_field("activation", "'activation' (PURE: cross-attention outputs, left-multiplied) or 'text' (token embeddings, right-multiplied, CURE-style)")
    forget_energy: float = help_field(0.9, "cumulative energy kept in the forget basis V_F")
    retain_energy: float = help_field(0.99, "cumulative energy kept in the retain basis V_R")
    max_rank: int | None = help_field(None, "cap on the rank of V_F (and V_R)")
    n_latents: int = help_field(2, "random starting latents per anchor prompt (activation basis)")
    steps: int = help_field(5, "denoising steps of each anchor trajectory; every step is recorded")
    guidance: float = help_field(7.5, "classifier-free guidance of the anchor trajectories (conditional branch recorded)")
    height: int | None = help_field(None, "anchor image height (pipeline default if omitted)")
    width: int | None = help_field(None, "anchor image width (pipeline default if omitted)")
    seed: int = help_field(0, "seed of the anchor latents")
    forget_prompts: tuple[str, ...] = help_field((), "forget anchor prompts (default: the ConceptSet's erase prompts)")
    retain_prompts: tuple[str, ...] = help_field((), "retain anchor prompts (default: the ConceptSet's preserve prompts)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.basis not in ("activation", "text"):
            raise MethodError(f"basis must be 'activation' or 'text', got {self.basis!r}")
        for name in ("forget_energy", "retain_energy"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise MethodError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.n_latents < 1 or self.steps < 1 or (self.max_rank is not None and self.max_rank < 1):
            raise MethodError("n_latents, steps and max_rank must be >= 1")
        self.forget_prompts = _prompt_tuple(self.forget_prompts)
        self.retain_prompts = _prompt_tuple(self.retain_prompts)


def _prompt_tuple(x) -> tuple[str, ...]:
    if isinstance(x, str):  # CLI passes '|'-separated prompts
        return tuple(p.strip() for p in x.split("|") if p.strip())
    return tuple(x)


# --------------------------------------------------------------- activations
@torch.no_grad()
def anchor_activations(adapter, prompts: list[str], config: PUREConfig, desc: str, progress: bool) -> dict[str, torch.Tensor]:
    """Attention block -> H (len(prompts)·n_latents·steps, d_ℓ) recorded along short trajectories."""
    if not prompts:
        return {}
    pipe = adapter.pipe
    jobs = [(p, config.seed + j) for p in prompts for j in range(config.n_latents)]
    size = {k: v for k, v in dict(height=config.height, width=config.width).items() if v is not None}
    batch = 8
    saved_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)  # one bar over anchors instead of one per trajectory
    try:
        with CrossAttentionCapture(adapter.unet, adapter.attention_layers(), cfg=config.guidance > 1.0) as cap:
            for i in tqdm(range(0, len(jobs), batch), desc=desc, unit="batch", disable=not progress, leave=False):
                chunk = jobs[i : i + batch]
                gens = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
                pipe(prompt=[p for p, _ in chunk], generator=gens, num_inference_steps=config.steps, guidance_scale=config.guidance,
                     output_type="latent", **size)
    finally:
        pipe.set_progress_bar_config(**saved_bar)
    return cap.stacked()


def _bases_activation(adapter, concepts, config, progress):
    forget = list(config.forget_prompts) or [e for e, _ in concepts.erase_pairs()]
    retain = list(config.retain_prompts) or concepts.preserve_prompts()
    H_F = anchor_activations(adapter, forget, config, "pure: forget anchors", progress)
    H_R = anchor_activations(adapter, retain, config, "pure: retain anchors", progress)
    out = {}
    for block in adapter.attention_layers():
        V_F = energy_basis(H_F[block], config.forget_energy, config.max_rank)
        d = V_F.shape[0]
        V_R = energy_basis(H_R[block], config.retain_energy, config.max_rank) if block in H_R else V_F.new_zeros(d, 0)
        out[block] = (V_F, V_R)
    return out


def _bases_text(adapter, concepts, config):
    if config.forget_prompts or config.retain_prompts:
        C_F = adapter.preserve_columns(list(config.forget_prompts) or [e for e, _ in concepts.erase_pairs()], config.token)
        C_R = adapter.preserve_columns(list(config.retain_prompts) or concepts.preserve_prompts(), config.token)
    else:
        C_F, _, C_R = cf.token_columns(adapter, concepts, config)
    V_F = energy_basis(C_F.T, config.forget_energy, config.max_rank)
    V_R = energy_basis(C_R.T, config.retain_energy, config.max_rank) if C_R.shape[1] else V_F.new_zeros(V_F.shape[0], 0)
    return V_F, V_R


@register_method("pure", PUREConfig, "PURE: project concept directions out of cross-attention activations, E = I − P_F(I − P_R) (Moon et al., 2026)")
class PURE(Method):
    def uses_unet(self, config: PUREConfig) -> bool:
        return config.basis == "activation"

    def fit(self, adapter, concepts, config: PUREConfig, progress: bool = True):
        t0 = time.perf_counter()
        if config.basis == "activation":
            bases = _bases_activation(adapter, concepts, config, progress)
            delta, where = left_delta, lambda path: bases[path.rsplit(".", 1)[0]]
        else:
            text_bases = _bases_text(adapter, concepts, config)
            delta, where = right_delta, lambda path: text_bases

        def fit_layer(path, W0):
            V_F, V_R = where(path)
            if V_F.shape[0] != (W0.shape[0] if config.basis == "activation" else W0.shape[1]):
                raise MethodError(f"{path}: basis dimension {V_F.shape[0]} does not match the weight {tuple(W0.shape)}")
            B, A = delta(W0, V_F, V_R)
            return LayerEdit.lowrank(path, B, A, rank_forget=V_F.shape[1], rank_retain=V_R.shape[1])

        layers = cf.edit_layers(adapter, adapter.paths, fit_layer, "pure", progress)
        stats = {"seconds": round(time.perf_counter() - t0, 4), "basis": config.basis,
                 "mean_rank_forget": sum(le.stats["rank_forget"] for le in layers) / len(layers)}
        return cf.make_edit(self.name, adapter, concepts, config, layers, stats)
