"""Numerical core of the closed-form edits: UCE and SPACE on one cross-attention weight, the
text-space projectors of CURE / PURE / SPEED, and MACE's closed forms.

Methods
-------
UCE  — Unified Concept Editing (Gandikota et al., "Unified Concept Editing in Diffusion
       Models", WACV 2024): the ridge-regularised least-squares edit below, in closed form.
SPACE — sparse closed-form erasure (Novello & Tonello, arXiv 2605.10198). Only the abstract
       and figure captions are public; the formulation here (UCE's three quadratic terms plus
       an elementwise L1 penalty on the edited weight) is erasekit's reconstruction, not the
       authors' code (DESIGN §5).

Notation (DESIGN §4)
--------------------
W0 (d_out, d_in) the original to_k / to_v weight; C_E, C_G (d_in, n_e) paired erase / guide
token embeddings; C_P (d_in, n_p) preserve embeddings; n = n_e + n_p. With
C̃ = [√α C_E, √β C_P] and B = [√α C_G, √β C_P] (both (d_in, n)):

    f(W) = α‖W C_E − W0 C_G‖² + β‖W C_P − W0 C_P‖² + γ‖W − W0‖²
         = ‖W C̃ − W0 B‖² + γ‖W − W0‖²                                              (1)
    M = γI + C̃C̃ᵀ,   R = γW0 + W0 B C̃ᵀ,   ∇f = 2(W M − R)                         (2)
    UCE:   W_uce = R M⁻¹ = W0 + W0 (B − C̃) K,   K = (γI_n + C̃ᵀC̃)⁻¹C̃ᵀ           (3)
    SPACE: min_W F(W) = f(W) + λ‖W‖₁                                               (4)

Modules, one job each (the equation numbers run across them)
------------------------------------------------------------
``gram``        :class:`GramFactor`, :func:`gram_factor`: the embedding side, once for all layers (5)–(6)
``uce``         UCE's edited weight and its low-rank delta (3), (5)
``dual``        SPACE's row problems, their dual and its certificate (7)–(12); the cold dual start
``ssn``         semi-smooth Newton on the row duals, on pinned worker threads (11)–(13)
``fista``       the proximal-gradient reference solver
``space``       :func:`space_solve`: SPACE on one weight (4), either solver, certified
``lam_search``  λ for a target sparsity: :func:`lam_for_sparsity`, :func:`space_solve_sparsity`
``projectors``  soft and hard projectors in the text-embedding space (14)–(15)
``mace``        MACE's closed-form refinement and fusion (16)–(20)

Every name below is importable from the package (``from erasekit import linalg; linalg.space_solve``);
the private helpers live in their modules (patch them there: ``erasekit.linalg.ssn._ssn_rows``). The
package imports nothing but torch, so an old copy of it can be loaded beside the current one
(``benchmarks/solver.py --baseline``).
"""

from __future__ import annotations

from . import mace
from .gram import GramFactor, gram_factor
from .lam_search import lam_for_sparsity, space_solve_sparsity
from .projectors import (
    energy_shares,
    null_space_basis,
    projector_delta_right,
    spectral_basis,
    spectral_expansion,
    weighted_projector,
)
from .space import SpaceSolve, space_objective, space_solve
from .uce import uce_delta_factors, uce_weight

__all__ = [
    "GramFactor",
    "gram_factor",
    "uce_weight",
    "uce_delta_factors",
    "space_objective",
    "SpaceSolve",
    "space_solve",
    "lam_for_sparsity",
    "space_solve_sparsity",
    "energy_shares",
    "spectral_expansion",
    "spectral_basis",
    "weighted_projector",
    "projector_delta_right",
    "null_space_basis",
    "mace",
]
