"""UCE — Unified Concept Editing (Gandikota et al., WACV 2024), the closed-form baseline.

    W = (γ W0 + α W0 C_G C_Eᵀ + β W0 C_P C_Pᵀ) (γ I + α C_E C_Eᵀ + β C_P C_Pᵀ)⁻¹      (DESIGN §5)

The edit W − W0 = W0 (B − C̃) K has rank ≤ n (number of token columns), so it is stored
as a low-rank delta whenever that is smaller than the dense weight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .. import linalg
from ..edit import LayerEdit
from ..errors import MethodError
from . import _closed_form as cf
from .base import Method, MethodConfig, help_field, register_method


@dataclass
class UCEConfig(MethodConfig):
    erase_scale: float = help_field(1.0, "alpha: weight of the erase term ‖W C_E − W0 C_G‖²")
    preserve_scale: float = help_field(1.0, "beta: weight of the preservation term ‖W C_P − W0 C_P‖²")
    lamb: float = help_field(0.5, "gamma: weight of ‖W − W0‖², keeps the solve well-posed (UCE's 'lamb')")
    storage: str = help_field("auto", "how to store each layer: 'auto' (smaller of dense / lowrank), 'dense' or 'lowrank'")
    prior: str = help_field("none", "'general': also preserve a broad set of general prompts, ρ‖(W − W0)F‖² with F Fᵀ = their Σ c cᵀ per prompt over every token (erasekit.prior); 'none': off")
    prior_weight: float = help_field(1.0, "rho: weight of the general prior (1 = one extra preserved prompt, all 77 positions)")
    prior_prompts: str = help_field("auto", "general prompts of the prior: 'auto' (tinyworld's training captions on tinyworld, otherwise required), 'tinyworld', a CSV/txt path or an https URL (then prior_sha256)")
    prior_sha256: str | None = help_field(None, "sha256 of the prior_prompts file (required for a URL)")
    prior_limit: int = help_field(2000, "at most this many general prompts (after dropping those that name an erased concept)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prior not in ("none", "general"):
            raise MethodError(f"prior must be 'none' or 'general', got {self.prior!r}")
        if not (self.prior_weight >= 0 and self.prior_weight < float("inf")):
            raise MethodError(f"prior_weight must be a finite number >= 0, got {self.prior_weight}")
        if self.prior_limit < 1:
            raise MethodError(f"prior_limit must be >= 1, got {self.prior_limit}")
        if self.lamb <= 0:
            raise MethodError(f"lamb (gamma) must be > 0 so the closed-form solve exists, got {self.lamb}")
        if self.erase_scale < 0 or self.preserve_scale < 0:
            raise MethodError("erase_scale and preserve_scale must be >= 0")
        if self.storage not in ("auto", "dense", "lowrank"):
            raise MethodError(f"storage must be 'auto', 'dense' or 'lowrank' for UCE, got {self.storage!r}")


def uce_layer_edit(path, W0, gf, storage: str) -> LayerEdit:
    d_out, d_in = W0.shape
    r = gf.rank  # W_uce − W0 = Bf Af has rank ≤ rank(C̃) ≤ min(n, d_in)
    if storage == "lowrank" or (storage == "auto" and r * (d_out + d_in) < d_out * d_in):
        Bf, Af = linalg.uce_delta_factors(W0, gf)  # (d_out, r), (r, d_in)
        return LayerEdit.lowrank(path, Bf, Af, rank=r)
    return LayerEdit.dense(path, linalg.uce_weight(W0, gf))


@register_method("uce", UCEConfig, "Unified Concept Editing: closed-form ridge edit of to_k/to_v (Gandikota et al., WACV 2024)")
class UCE(Method):
    def fit(self, adapter, concepts, config: UCEConfig, progress: bool = True):
        t0 = time.perf_counter()
        gf, prior_stats = cf.gram_and_prior(adapter, concepts, config)
        layers = cf.edit_layers(adapter, adapter.paths, lambda p, w0: uce_layer_edit(p, w0, gf, config.storage), "uce", progress)
        stats = {"seconds": round(time.perf_counter() - t0, 4), "token_columns": gf.n, **prior_stats}
        return cf.make_edit(self.name, adapter, concepts, config, layers, stats)
