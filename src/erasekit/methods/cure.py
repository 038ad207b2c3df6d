"""CURE — Concept Unlearning via orthogonal Representation Editing (Biswas, Roy & Roy, arXiv 2505.12677).

**A reconstruction.** The official unlearning code is not released (the authors' repository,
ShristiDasBiswas/CURE-Concept-Unlearning-via-Orthogonal-Representation-Editing-in-Diffusion-Models,
holds only weights and an image generator). This module follows the paper's "Spectral Eraser" as
the issue states it and as a public third-party reading implements it (``compute_svd`` →
``build_projector`` → ``Pdis = Pf − Pf @ Pr``, applied to every cross-attention K and V):

    C_F = U_F diag(σ) …          thin SVD of the forget token embeddings (d_in, n_F)
    r_i = σ_i² / Σ_j σ_j²         energy share of each direction
    f(r) = α r / ((α − 1) r + 1)  the expansion mechanism (α = 2 objects / styles, 5 nudity)
    P_F = U_F diag(f(r)) U_Fᵀ,    P_R likewise from the retain embeddings
    W ← W (I − P_F + P_F P_R)     for every cross-attention to_k and to_v

What erasekit chose where the paper leaves it open: the token columns follow ``token`` like every
other erasekit method (default ``'last'``; the third-party reading averages the non-padding tokens
of each prompt, an option erasekit's adapter does not have); forget prompts are the ConceptSet's
erase prompts (templates included), retain prompts its preserve prompts; the guide is not used
(CURE projects, it does not redirect). The maths is shared with ``pure --basis text``
(``linalg.projector_delta_right``), which is the same edit with hard projectors (f ≡ 1).

Properties the tests check: the projector equals an eigen-decomposition construction, and on a
retain direction u with weight f(r_u) the edit leaks exactly (1 − f(r_u)) W P_F u — CURE is exact
on retain directions only in the hard-projector limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import linalg
from ..errors import MethodError
from . import _closed_form as cf
from .base import Method, MethodConfig, help_field, register_method

# α per concept kind: 2 for objects, styles (and persons, which the paper groups with them), 5 for nudity.
KIND_DEFAULTS = {"default": {"alpha": 2.0}, "nsfw": {"alpha": 5.0}}


# ------------------------------------------------------------------ maths
def spectral_projector_factors(C: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(V (d, k), f(r) (k,), r (k,)) with P = V diag(f(r)) Vᵀ from the columns C (d, n) (CURE eqs. 3–4)."""
    V, s = linalg.spectral_basis(C)  # C = V diag(s) …
    r = linalg.energy_shares(s)  # (k,)  σ²/Σσ²
    return V, linalg.spectral_expansion(r, alpha), r


# ----------------------------------------------------------------- config
@dataclass
class CUREConfig(MethodConfig):
    JOINT_SITES = True  # token columns: captured along the sampler at joint sites
    STORAGE_CHOICES = ("auto", "lowrank", "dense")

    alpha: float | None = help_field(
        None,
        "expansion α of f(r) = αr/((α−1)r+1): larger → closer to a hard projector (default: 5 for kind nsfw, 2 "
        "otherwise, the paper's)",
    )
    forget_prompts: tuple[str, ...] = help_field(
        (), "forget prompts, '|'-separated on the CLI (default: the ConceptSet's erase prompts)"
    )
    retain_prompts: tuple[str, ...] = help_field(
        (), "retain prompts, '|'-separated on the CLI (default: the ConceptSet's preserve prompts)"
    )
    storage: str = help_field("auto", "'auto' (smaller of low-rank / dense), 'lowrank' or 'dense'")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha is not None and not (
            isinstance(self.alpha, (int, float)) and 1.0 <= float(self.alpha) < float("inf")
        ):
            raise MethodError(
                f"alpha must be a finite number >= 1 (the paper uses 2, and 5 for nudity), got {self.alpha}"
            )
        self.forget_prompts = _prompt_tuple(self.forget_prompts)
        self.retain_prompts = _prompt_tuple(self.retain_prompts)


def _prompt_tuple(x) -> tuple[str, ...]:
    if isinstance(x, str):  # the CLI passes '|'-separated prompts
        return tuple(p.strip() for p in x.split("|") if p.strip())
    return tuple(x)


@register_method(
    "cure",
    CUREConfig,
    "CURE (reconstruction): spectral eraser W ← W(I − P_f + P_f P_r) from text embeddings (Biswas et al., 2025)",
)
class CURE(Method[CUREConfig]):
    def fit(self, adapter, concepts, config: CUREConfig, progress: bool = True):
        t0 = time.perf_counter()
        config = cf.resolve_for_kind(config, concepts.kind, KIND_DEFAULTS)
        assert config.alpha is not None  # filled from KIND_DEFAULTS
        forget = list(config.forget_prompts) or [e for e, _ in concepts.erase_pairs()]
        retain = list(config.retain_prompts) or concepts.preserve_prompts()
        C_F = adapter.preserve_columns(forget, config.token)  # (d_in, n_F)
        C_R = adapter.preserve_columns(retain, config.token)  # (d_in, n_R), (d_in, 0) without retain prompts
        V_F, w_F, r_F = spectral_projector_factors(C_F, config.alpha)
        if V_F.shape[1] == 0:
            raise MethodError("the forget embeddings are all zero: CURE has no direction to remove; check the prompts")
        V_R, w_R, _ = spectral_projector_factors(C_R, config.alpha)

        def fit_layer(path, W0):
            B, A = linalg.projector_delta_right(W0, V_F, V_R, w_F, w_R)  # (d_out, k_F), (k_F, d_in)
            return cf.store_delta(path, W0, [(B, A)], config.storage)

        layers = cf.edit_layers(adapter, adapter.paths, fit_layer, "cure", progress)
        stats = {
            "seconds": round(time.perf_counter() - t0, 4),
            "rank_forget": V_F.shape[1],
            "rank_retain": V_R.shape[1],
            "forget_weights": [round(float(x), 6) for x in w_F[:16]],  # f(r) of the top directions
            "top_energy_share": round(float(r_F[0]), 6),
        }
        return cf.make_edit(self.name, adapter, concepts, config, layers, stats)
