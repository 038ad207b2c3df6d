"""SPACE — sparse closed-form concept erasure (Novello & Tonello, arXiv 2605.10198).

Only the abstract and figure captions of the paper are public, so this is the project's
reconstruction (DESIGN §5): UCE's three quadratic terms plus an L1 penalty on the edited
weights themselves,

    min_W  α‖W C_E − W0 C_G‖² + β‖W C_P − W0 C_P‖² + γ‖W − W0‖² + λ‖W‖₁ ,

which splits into one Lasso problem per output row sharing M = γI + C̃C̃ᵀ. The paper's
"iterative closed-form" step is proximal gradient (``solver='fista'``); the default
``solver='ssn'`` solves each row's n-dimensional dual with a semi-smooth Newton method
and stops on a duality-gap certificate. The new weight is sparse and is stored as CSR.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from .. import linalg
from ..edit import LayerEdit
from ..errors import MethodError
from . import _closed_form as cf
from .base import Method, help_field, register_method
from .uce import UCEConfig


@dataclass
class SPACEConfig(UCEConfig):
    STORAGE_CHOICES = ("csr", "dense")

    preset: str | None = help_field(
        "erasekit",
        "how concepts become token columns, as for UCE: 'erasekit' (default: erasekit's templates on erase, guide and "
        "preserve prompts), 'v2' or 'v1'",
    )
    lam: float | None = help_field(None, "lambda: L1 weight on the edited weights (give this or target_sparsity)")
    target_sparsity: float | None = help_field(
        None, "share of exact zeros to reach, in (0, 1); lambda found by bisection (default 0.85 when lam is not given)"
    )
    sparsity_scope: str = help_field(
        "layer", "'layer': one lambda per layer, each meeting the target; 'shared': one lambda for all layers"
    )
    solver: str = help_field(
        "ssn",
        "'ssn' (semi-smooth Newton on the row duals, fast) or 'fista' (proximal gradient with restart, the reference)",
    )
    tol: float = help_field(1e-6, "relative objective-gap tolerance (duality-gap certificate for ssn)")
    max_iter: int | None = help_field(
        None,
        "iteration cap per layer (solver default: 100 Newton / 20000 FISTA steps); a layer that hits it is reported "
        "as not converged",
    )
    storage: str = help_field("csr", "'csr' (sparse new weight, default) or 'dense'")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lam is not None and self.target_sparsity is not None:
            raise MethodError("give either lam or target_sparsity, not both")
        if self.lam is None and self.target_sparsity is None:
            self.target_sparsity = 0.85
        if self.lam is not None and self.lam < 0:
            raise MethodError(f"lam must be >= 0, got {self.lam}")
        if self.target_sparsity is not None and not 0.0 < self.target_sparsity < 1.0:
            raise MethodError(f"target_sparsity must be in (0, 1), e.g. 0.85, got {self.target_sparsity}")
        if self.sparsity_scope not in ("layer", "shared"):
            raise MethodError(f"sparsity_scope must be 'layer' or 'shared', got {self.sparsity_scope!r}")
        if self.solver not in ("ssn", "fista"):
            raise MethodError(f"solver must be 'ssn' or 'fista', got {self.solver!r}")
        if not 0 < self.tol < 1 or (self.max_iter is not None and self.max_iter < 1):
            raise MethodError("tol must be in (0, 1) and max_iter >= 1")


@register_method(
    "space",
    SPACEConfig,
    "SPACE: sparse closed-form edit, UCE + L1 on the weights, stored as CSR (Novello & Tonello, 2026)",
)
class SPACE(Method[SPACEConfig]):
    def fit(self, adapter, concepts, config: SPACEConfig, progress: bool = True):
        t0 = time.perf_counter()
        gf, prior_stats = cf.gram_and_prior(adapter, concepts, config)
        shared_lam = config.lam
        if config.target_sparsity is not None and config.sparsity_scope == "shared":
            weights = [adapter.linear(p).weight.detach() for p in adapter.paths]
            shared_lam = linalg.lam_for_sparsity(weights, gf, config.target_sparsity)

        lams: dict = {}  # λ of the last layer per (projection, d_out): the next such layer's λ path starts there

        def fit_layer(path, W0):
            if shared_lam is None and config.solver == "ssn":  # per-layer target: one warm-started λ path
                key = (path.rsplit(".", 1)[-1], W0.shape[0])
                lam0 = lams.get(key, lams.get("last"))
                res, lam = linalg.space_solve_sparsity(
                    W0, gf, config.target_sparsity, tol=config.tol, max_iter=config.max_iter, lam0=lam0
                )
                lams[key] = lams["last"] = lam
            else:
                lam = (
                    shared_lam if shared_lam is not None else linalg.lam_for_sparsity([W0], gf, config.target_sparsity)
                )
                res = linalg.space_solve(W0, gf, lam, solver=config.solver, tol=config.tol, max_iter=config.max_iter)
            sparsity = float((res.W == 0).double().mean())
            stats = dict(
                lam=lam,
                sparsity=round(sparsity, 6),
                objective=res.objective,
                gap=res.gap,
                iterations=res.iterations,
                converged=bool(res.converged),
                solve_seconds=round(res.seconds, 4),
            )
            store = LayerEdit.csr if config.storage == "csr" else LayerEdit.dense
            return store(path, res.W, **stats)

        layers = cf.edit_layers(adapter, adapter.paths, fit_layer, "space", progress)
        bad = [le.path for le in layers if not le.stats["converged"]]
        if bad:
            warnings.warn(
                f"SPACE did not reach tol={config.tol} on {len(bad)} layer(s) (e.g. {bad[0]}); raise max_iter",
                RuntimeWarning,
                stacklevel=2,
            )
        total = sum(le.shape[0] * le.shape[1] for le in layers)
        zeros = sum(le.stats["sparsity"] * le.shape[0] * le.shape[1] for le in layers)
        stats = {
            "seconds": round(time.perf_counter() - t0, 4),
            "token_columns": gf.n,
            "sparsity": round(zeros / total, 6),
            "objective": sum(le.stats["objective"] for le in layers),
            "iterations": sum(le.stats["iterations"] for le in layers),
            "converged": not bad,
            **prior_stats,
        }
        return cf.make_edit(self.name, adapter, concepts, config, layers, stats)
