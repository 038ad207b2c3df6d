"""Shared plumbing of the closed-form methods: gather token columns once, edit layer by layer."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import linalg
from ..edit import Edit, LayerEdit
from ..errors import MethodError


def token_columns(adapter, concepts, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C_E, C_G, C_P), each (d_in, n·), float64 — encoded once, shared by every layer."""
    pairs = concepts.erase_pairs()
    C_E, C_G = adapter.token_columns([e for e, _ in pairs], [g for _, g in pairs], config.token)
    C_P = adapter.preserve_columns(concepts.preserve_prompts(), config.token)
    return C_E, C_G, C_P


def general_prior(adapter, concepts, config, progress: bool = False):
    """The config's general-prompt prior (:mod:`erasekit.prior`), or None when ``config.prior`` is 'none'.

    Prompts that name an erased concept (or, on tinyworld's vocabulary, one of its synonyms) are
    dropped, so the prior never protects what is being erased.
    """
    if getattr(config, "prior", "none") == "none":
        return None
    from .. import prior as pr

    source = config.prior_prompts
    if source == "auto":
        source = "tinyworld" if _is_tinyworld(adapter) else None
        if source is None:
            raise MethodError(
                "prior='general' needs a general prompt list for this model: set prior_prompts to a CSV/txt path "
                "(e.g. COCO captions) or an https URL with prior_sha256"
            )
    prompts = pr.general_prompts(source, sha256=config.prior_sha256,
                                 limit=config.prior_limit if source == "tinyworld" else None)
    exclude = [a for c in concepts.erase for a in pr.concept_aliases(c)]
    return pr.general_prior(adapter, prompts, limit=config.prior_limit, exclude=exclude, source=source, progress=progress)


def _is_tinyworld(adapter) -> bool:
    from pathlib import Path

    from ..tinyworld import pipeline_dir

    name = adapter.describe().get("name_or_path")
    try:
        return name is not None and Path(name).resolve() == pipeline_dir().resolve()
    except OSError:
        return False


def gram_and_prior(adapter, concepts, config) -> tuple["linalg.GramFactor", dict]:
    """(shared Gram factor, stats entry) — the entry is {'prior': record} when a general prior is used, else {}."""
    C_E, C_G, C_P = token_columns(adapter, concepts, config)
    gp = general_prior(adapter, concepts, config)
    P = None if gp is None else gp.factor * math.sqrt(config.prior_weight)  # (d_in, m)  √ρ F
    try:
        gf = linalg.gram_factor(C_E, C_G, C_P, alpha=config.erase_scale, beta=config.preserve_scale, gamma=config.lamb, prior=P)
    except ValueError as e:
        raise MethodError(str(e)) from None
    gf = gf.to(adapter.device)  # every layer's solve runs where the pipeline lives (GPU included)
    return gf, ({} if gp is None else {"prior": {**gp.record(), "weight": config.prior_weight}})


def gram(adapter, concepts, config) -> "linalg.GramFactor":
    return gram_and_prior(adapter, concepts, config)[0]


def edit_layers(adapter, paths, fit_layer: Callable[[str, torch.Tensor], LayerEdit], desc: str, progress: bool) -> list[LayerEdit]:
    """Run ``fit_layer(path, W0)`` over the layers with a progress bar; the pipeline is read, never written."""
    out = []
    for path in tqdm(paths, desc=desc, unit="layer", disable=not progress, leave=False):
        w0 = adapter.linear(path).weight.detach()
        t0 = time.perf_counter()
        le = fit_layer(path, w0)
        le.stats.setdefault("seconds", round(time.perf_counter() - t0, 4))
        out.append(le)
    return out


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
