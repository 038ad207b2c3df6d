"""Shared plumbing of the closed-form methods: gather token columns once, edit layer by layer.

Also home of the UCE presets' column plans (``uce --preset v1|v2|erasekit``; SPACE uses the
``erasekit`` plan), of kind-dependent defaults (config fields left ``None`` are filled from a
per-kind table when the concepts are known) and of the storage choice for a sum of low-rank deltas.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import linalg
from ..edit import Edit, LayerEdit
from ..errors import MethodError
from ..models.record import model_record

PRESETS = ("v2", "v1", "erasekit")


def token_columns(adapter, concepts, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C_E, C_G, C_P), each (d_in, n·), float64 — encoded once, shared by every layer."""
    pairs = concepts.erase_pairs()
    C_E, C_G = adapter.token_columns([e for e, _ in pairs], [g for _, g in pairs], config.token)
    C_P = adapter.preserve_columns(concepts.preserve_prompts(), config.token)
    return C_E, C_G, C_P


# ------------------------------------------------------------------ UCE presets
@dataclass(frozen=True)
class ColumnPlan:
    """What a UCE preset turns a ConceptSet into: prompts, token selections and the preserve weight β."""

    pairs: tuple[tuple[str, str], ...]  # aligned (erase prompt, guide prompt)
    preserve: tuple[str, ...]  # preserve prompts
    token: str  # selection of the erase / guide columns
    preserve_token: str  # selection of the preserve columns
    preserve_scale: float  # β
    templates: tuple[str, ...]  # the template list the erase prompts were expanded with

    def summary(self) -> dict:
        return {
            "erase_prompts": len(self.pairs),
            "preserve_prompts": len(self.preserve),
            "token": self.token,
            "preserve_token": self.preserve_token,
            "preserve_scale": self.preserve_scale,
            "templates": list(self.templates),
        }


def column_plan(
    concepts, preset: str, token: str, preserve_token: str | None, preserve_scale: float | None
) -> ColumnPlan:
    """The prompts and token selections of a UCE preset (see ``methods/uce.py``).

    * ``v2``  (trainscripts/uce_sd_erase.py): the reference template list on erase *and* guide
      prompts, preserve prompts bare; β = 1.
    * ``v1``  (train-scripts/train_erase.py): the reference template list on the erase prompt only
      (guide bare); preserve prompts ``[''] + preserve`` bare, all 77 positions;
      β = max(0.1, 1/len([''] + preserve)).
    * ``erasekit``: erasekit's template lists on erase, guide *and* preserve prompts; β = 1.
    """
    if preset not in PRESETS:
        raise MethodError(f"preset must be one of {PRESETS}, got {preset!r}")
    if preset == "v1":
        tpl = concepts.templates_for(reference=True)
        pairs = concepts.erase_pairs(templates=tpl, template_guide=False)
        preserve = ("",) + tuple(concepts.preserve)
        beta = max(0.1, 1.0 / len(preserve)) if preserve_scale is None else preserve_scale
        return ColumnPlan(tuple(pairs), preserve, token, preserve_token or "all", beta, tpl)
    if preset == "v2":
        tpl = concepts.templates_for(reference=True)
        pairs, preserve = concepts.erase_pairs(templates=tpl), tuple(concepts.preserve)
    else:
        tpl = concepts.templates_for(reference=False)
        pairs, preserve = concepts.erase_pairs(templates=tpl), tuple(concepts.preserve_prompts(templates=tpl))
    return ColumnPlan(
        tuple(pairs), preserve, token, preserve_token or token, 1.0 if preserve_scale is None else preserve_scale, tpl
    )


def plan_columns(adapter, plan: ColumnPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C_E, C_G, C_P) of a plan, each (d_in, n·) float64."""
    C_E, C_G = adapter.token_columns([e for e, _ in plan.pairs], [g for _, g in plan.pairs], plan.token)
    C_P = adapter.preserve_columns(list(plan.preserve), plan.preserve_token)
    return C_E, C_G, C_P


def gram_factor(C_E, C_G, C_P, alpha: float, beta: float, gamma: float, prior=None) -> linalg.GramFactor:
    """linalg.gram_factor with its ValueErrors turned into MethodErrors."""
    try:
        return linalg.gram_factor(C_E, C_G, C_P, alpha=alpha, beta=beta, gamma=gamma, prior=prior)
    except ValueError as e:
        raise MethodError(str(e)) from None


def general_prior(adapter, concepts, config, progress: bool = False):
    """The config's general-prompt prior (:mod:`erasekit.prior`), or None when ``config.prior`` is 'none'.

    Prompts that name an erased concept (or, on tinyworld's vocabulary, one of its synonyms) are
    dropped, so the prior never protects what is being erased.
    """
    if getattr(config, "prior", "none") == "none":
        return None
    from .. import prior as pr

    source, prompts = prior_prompt_list(adapter, config)
    exclude = [a for c in concepts.erase for a in pr.concept_aliases(c)]
    return pr.general_prior(
        adapter, prompts, limit=config.prior_limit, exclude=exclude, source=source, progress=progress
    )


def prior_prompt_list(adapter, config, fallback: str | None = None) -> tuple[str, list[str]]:
    """(source name, prompts) of ``config.prior_prompts``, for every method with a general-prompt prior.

    'auto' is the model's own general prompts (tinyworld's captions) or else ``fallback`` (None: refused);
    'general-suite' is erasekit's built-in list (:data:`erasekit.prompts.GENERAL_PROMPTS`); anything else is a
    CSV / txt path or an https URL, read with its ``prior_sha256``.
    """
    from .. import prior as pr
    from ..prompts import GENERAL_PROMPTS

    source = config.prior_prompts
    if source == "auto":
        source = model_record(adapter.pipe).prior_prompts or fallback
        if source is None:
            raise MethodError(
                "prior='general' needs a general prompt list for this model: set prior_prompts to a CSV/txt path "
                "(e.g. COCO captions) or an https URL with prior_sha256"
            )
    if source == "general-suite":
        return source, list(GENERAL_PROMPTS)
    limit = config.prior_limit if source == "tinyworld" else None
    return source, pr.general_prompts(source, sha256=config.prior_sha256, limit=limit)


def gram_and_plan(adapter, concepts, config) -> tuple[linalg.GramFactor, ColumnPlan, dict]:
    """(shared Gram factor on the pipeline's device, the preset's column plan, stats entry).

    The stats entry is {'prior': record} when a general prior is used (``config.prior``), else {}.
    """
    plan = column_plan(concepts, config.preset, config.token, config.preserve_token, config.preserve_scale)
    C_E, C_G, C_P = plan_columns(adapter, plan)
    gp = general_prior(adapter, concepts, config)
    P = None if gp is None else gp.factor * math.sqrt(config.prior_weight)  # (d_in, m)  √ρ F
    gf = gram_factor(C_E, C_G, C_P, alpha=config.erase_scale, beta=plan.preserve_scale, gamma=config.lamb, prior=P)
    gf = gf.to(adapter.device)  # every layer's solve runs where the pipeline lives (GPU included)
    return gf, plan, ({} if gp is None else {"prior": {**gp.record(), "weight": config.prior_weight}})


def gram_and_prior(adapter, concepts, config) -> tuple[linalg.GramFactor, dict]:
    gf, _, prior_stats = gram_and_plan(adapter, concepts, config)
    return gf, prior_stats


# ------------------------------------------------------------ kind-dependent defaults
def resolve_for_kind(config, kind: str, table: dict[str, dict]):
    """A copy of ``config`` whose ``None`` fields are filled from ``table[kind]`` (else ``table['default']``).

    Methods whose reference sets options per concept kind (nsfw / person / style / object) leave
    those fields ``None``; the fitted Edit records the resolved, concrete config.
    """
    row = {**table.get("default", {}), **table.get(kind, {})}
    fill = {k: v for k, v in row.items() if getattr(config, k) is None}
    return dataclasses.replace(config, **fill) if fill else config


# ------------------------------------------------------------------ layers
def edit_layers(
    adapter, paths, fit_layer: Callable[[str, torch.Tensor], LayerEdit], desc: str, progress: bool
) -> list[LayerEdit]:
    """Run ``fit_layer(path, W0)`` over the layers with a progress bar; the pipeline is read, never written."""
    out = []
    for path in tqdm(paths, desc=desc, unit="layer", disable=not progress, leave=False):
        w0 = adapter.linear(path).weight.detach()
        t0 = time.perf_counter()
        le = fit_layer(path, w0)
        le.stats.setdefault("seconds", round(time.perf_counter() - t0, 4))
        out.append(le)
    return out


def lowrank_is_chosen(storage: str, rank: int, d_out: int, d_in: int) -> bool:
    """Store a rank-``rank`` delta as factors? 'lowrank' always, 'dense' never, 'auto' when the factors are smaller."""
    return storage == "lowrank" or (storage == "auto" and rank * (d_out + d_in) < d_out * d_in)


def store_delta(
    path: str, W0: torch.Tensor, factors: list[tuple[torch.Tensor, torch.Tensor]], storage: str = "auto", **stats
) -> LayerEdit:
    """The layer W0 + Σ_i B_i A_i as a low-rank delta (factors concatenated) or dense, whichever is smaller.

    factors: [(B_i (d_out, r_i), A_i (r_i, d_in))]; ``storage`` 'auto' | 'lowrank' | 'dense'.
    """
    d_out, d_in = W0.shape
    r = sum(B.shape[1] for B, _ in factors)
    if lowrank_is_chosen(storage, r, d_out, d_in):
        B = (
            torch.cat([B.double() for B, _ in factors], dim=1)
            if factors
            else W0.new_zeros(d_out, 0, dtype=torch.float64)
        )
        A = (
            torch.cat([A.double() for _, A in factors], dim=0)
            if factors
            else W0.new_zeros(0, d_in, dtype=torch.float64)
        )
        return LayerEdit.lowrank(path, B, A, rank=r, **stats)
    W = W0.detach().double().clone()
    for B, A in factors:
        W += B.double() @ A.double()
    return LayerEdit.dense(path, W, rank=r, **stats)


def make_edit(method: str, adapter, concepts, config, layers: list[LayerEdit], stats: dict) -> Edit:
    return Edit(
        method=method,
        config=config.to_dict(),
        concepts=concepts.to_dict(),
        base=adapter.describe(),
        layers=layers,
        fingerprints=adapter.fingerprint([le.path for le in layers]),
        stats=stats,
    )
