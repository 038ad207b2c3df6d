"""UCE — Unified Concept Editing (Gandikota et al., WACV 2024), the closed-form baseline.

    W = (γ W0 + α W0 C_G C_Eᵀ + β W0 C_P C_Pᵀ) (γ I + α C_E C_Eᵀ + β C_P C_Pᵀ)⁻¹      (DESIGN §5)

The edit W − W0 = W0 (B − C̃) K has rank ≤ n (number of token columns), so it is stored
as a low-rank delta whenever that is smaller than the dense weight.

Presets (``preset=``), read from rohitgandikota/unified-concept-editing:

* ``v2`` (default) — ``trainscripts/uce_sd_erase.py`` (current public code): last concept token
  (``attention_mask.sum() − 2``) of erase, guide and preserve prompts; with templates
  (``--expand_prompts``) the reference lists ("painting by {}", … for styles; "image of {}",
  "photo of {}", "portrait of {}", "picture of {}", "painting of {}" otherwise) expand the erase
  *and* the guide prompt, never the preserve prompts; γ 0.5, α 1, β 1.
* ``v1`` — ``train-scripts/train_erase.py`` (the code behind the paper's tables, commit
  4502388^): erase columns from the last concept token through padding, position-aligned with the
  guide (``tail``); the preserve term over **all 77 positions** of ``[''] + preserve``;
  β = max(0.1, 1/len([''] + preserve)); templates (``--add_prompts``) on the erase prompt only,
  the guide stays bare; γ 0.5, α 1. Also the ``nsfw`` preset (UCE's nudity edit,
  ``erased-nudity-towards_uncond-preserve_false``, is a v1 run) and RECE's starting point.
* ``erasekit`` — erasekit's earlier behaviour, kept as an extension: erasekit's own template
  lists (``concepts.TEMPLATES``) on erase, guide *and* preserve prompts; token selection as given.

On FLUX.1, ``v2`` is the official port ``trainscripts/uce_flux_edit.py``: the same two modules (the static sites
``context_embedder`` and the pooled ``time_text_embed.text_embedder.linear_1``, each solved on its own input: the
T5 state of the last token before EOS, the pooled CLIP-L vector; the empty prompt's T5 column is the final padding
position, as the script's ``mask.sum() - 2`` indexes it), T5 lengths 512 (dev) / 256 (schnell), the same templates.
One deviation, deliberate: the script's targets are ``module(c) = W0 c + b``, so its edit maps W c_e onto
W0 c_g + b (the layer adds b again) and pulls preserved outputs by b; erasekit maps onto W0 c_g, so preserved
outputs stay. Its weight is erasekit's plus b sᵀ M⁻¹ (s = α Σ c_e + β Σ c_p); bias-free the two agree to float32
rounding (tests/test_baselines.py). On SD3 (no official port) the columns are chosen the same way.

With no ``preset`` given, ``kind='nsfw'`` uses ``v1`` and every other kind ``v2``.
Explicit options (``token``, ``preserve_token``, ``preserve_scale``, …) override the preset's.
Differences from the scripts that do not change the result: erasekit solves in float64 through a
thin SVD (``linalg.gram_factor``) instead of ``mat1 @ torch.inverse(mat2)`` in float32; the
reference's ``technique='tensor'`` of v1 is not offered; v1's default guide is ' ' for every type,
erasekit's ConceptSet default ("art" for styles) applies instead — pass ``guide=''`` for the v1 run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import ClassVar

from .. import linalg
from ..edit import LayerEdit
from ..errors import MethodError
from ..models.adapter import TOKEN_MODES
from . import _closed_form as cf
from .base import Method, MethodConfig, help_field, register_method

# Each preset's token selections (erase/guide columns, preserve columns); None = same as token.
PRESET_TOKENS = {"v2": ("last", None), "v1": ("tail", "all"), "erasekit": ("last", None)}
# The preset per concept kind when none is given: UCE's nudity edit is a v1 run.
KIND_PRESETS = {"default": {"preset": "v2"}, "nsfw": {"preset": "v1"}}


@dataclass
class UCEConfig(MethodConfig):
    JOINT_SITES = True  # token columns: captured along the sampler at joint sites
    TOKEN_CHOICES = (None, *TOKEN_MODES)  # None: the preset (or, without one, the kind) decides at fit
    STORAGE_CHOICES: ClassVar[tuple[str, ...]] = ("auto", "dense", "lowrank")

    preset: str | None = help_field(
        None,
        "which UCE reference to reproduce: 'v2' (uce_sd_erase.py), 'v1' (train_erase.py, the paper's tables) or "
        "'erasekit' (erasekit's template extensions); default v1 for kind nsfw, v2 otherwise",
    )
    token: str | None = help_field(
        None,
        "erase/guide token selection: 'last', 'tail' or 'all' "
        "(default: the preset's — v2 'last', v1 'tail', erasekit 'last')",
    )
    preserve_token: str | None = help_field(
        None, "preserve token selection (default: v1 'all', otherwise the same as token)"
    )
    erase_scale: float = help_field(1.0, "alpha: weight of the erase term ‖W C_E − W0 C_G‖²")
    preserve_scale: float | None = help_field(
        None,
        "beta: weight of the preservation term ‖W C_P − W0 C_P‖² (default: v1 max(0.1, 1/len(['']+preserve)), "
        "otherwise 1)",
    )
    lamb: float = help_field(0.5, "gamma: weight of ‖W − W0‖², keeps the solve well-posed (UCE's 'lamb')")
    storage: str = help_field(
        "auto", "how to store each layer: 'auto' (smaller of dense / lowrank), 'dense' or 'lowrank'"
    )
    prior: str = help_field(
        "none",
        "'general': also preserve a broad set of general prompts, ρ‖(W − W0)F‖² with F Fᵀ = their Σ c cᵀ per prompt "
        "over every token (erasekit.prior); 'none': off",
    )
    prior_weight: float = help_field(
        1.0, "rho: weight of the general prior (1 = one extra preserved prompt, all 77 positions)"
    )
    prior_prompts: str = help_field(
        "auto",
        "general prompts of the prior: 'auto' (tinyworld's training captions on tinyworld, otherwise required), "
        "'tinyworld', a CSV/txt path or an https URL (then prior_sha256)",
    )
    prior_sha256: str | None = help_field(None, "sha256 of the prior_prompts file (required for a URL)")
    prior_limit: int = help_field(
        2000, "at most this many general prompts (after dropping those that name an erased concept)"
    )

    def __post_init__(self) -> None:
        # preset None: the options it sets stay None until fit() knows the concept kind (KIND_PRESETS).
        if self.preset is not None:
            if self.preset not in cf.PRESETS:
                raise MethodError(
                    f"preset must be one of {', '.join(cf.PRESETS)} (UCE reference versions), got {self.preset!r}"
                )
            token, preserve_token = PRESET_TOKENS[self.preset]
            if self.token is None:
                self.token = token
            if self.preserve_token is None:
                self.preserve_token = preserve_token or self.token
            if (
                self.preserve_scale is None and self.preset != "v1"
            ):  # v1's β depends on the number of preserve prompts: set at fit
                self.preserve_scale = 1.0
        super().__post_init__()
        if self.preserve_token not in (None, "last", "tail", "all"):
            raise MethodError(f"preserve_token must be 'last', 'tail' or 'all', got {self.preserve_token!r}")
        if self.lamb <= 0:
            raise MethodError(f"lamb (gamma) must be > 0 so the closed-form solve exists, got {self.lamb}")
        if self.erase_scale < 0 or (self.preserve_scale is not None and self.preserve_scale < 0):
            raise MethodError("erase_scale and preserve_scale must be >= 0")
        if self.prior not in ("none", "general"):
            raise MethodError(f"prior must be 'none' or 'general', got {self.prior!r}")
        if not (self.prior_weight >= 0 and self.prior_weight < float("inf")):
            raise MethodError(f"prior_weight must be a finite number >= 0, got {self.prior_weight}")
        if self.prior_limit < 1:
            raise MethodError(f"prior_limit must be >= 1, got {self.prior_limit}")


def uce_layer_edit(path, W0, gf, storage: str) -> LayerEdit:
    d_out, d_in = W0.shape
    r = gf.rank  # W_uce − W0 = Bf Af has rank ≤ rank(C̃) ≤ min(n, d_in)
    # not cf.store_delta: the dense form is the solve R M⁻¹ itself (the reference scripts' arithmetic), not W0 + Bf Af
    if cf.lowrank_is_chosen(storage, r, d_out, d_in):
        Bf, Af = linalg.uce_delta_factors(W0, gf)  # (d_out, r), (r, d_in)
        return LayerEdit.lowrank(path, Bf, Af, rank=r)
    return LayerEdit.dense(path, linalg.uce_weight(W0, gf))


@register_method(
    "uce",
    UCEConfig,
    "Unified Concept Editing: closed-form ridge edit of to_k/to_v; presets v2 (default) / v1 / erasekit "
    "(Gandikota et al., WACV 2024)",
)
class UCE(Method[UCEConfig]):
    def fit(self, adapter, concepts, config: UCEConfig, progress: bool = True):
        t0 = time.perf_counter()
        config = cf.resolve_for_kind(config, concepts.kind, KIND_PRESETS)
        gf, plan, prior_stats = cf.gram_and_plan(adapter, concepts, config)
        config = dataclasses.replace(config, preserve_scale=plan.preserve_scale)  # the Edit records the β used
        layers = cf.edit_layers(
            adapter, adapter.paths, lambda p, w0: uce_layer_edit(p, w0, gf, config.storage), "uce", progress
        )
        stats = {"seconds": round(time.perf_counter() - t0, 4), "token_columns": gf.n, **plan.summary(), **prior_stats}
        return cf.make_edit(self.name, adapter, concepts, config, layers, stats)
