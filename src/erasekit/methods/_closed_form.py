"""Shared plumbing of the closed-form methods: gather token columns once, edit layer by layer."""

from __future__ import annotations

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


def gram(adapter, concepts, config) -> "linalg.GramFactor":
    C_E, C_G, C_P = token_columns(adapter, concepts, config)
    try:
        gf = linalg.gram_factor(C_E, C_G, C_P, alpha=config.erase_scale, beta=config.preserve_scale, gamma=config.lamb)
    except ValueError as e:
        raise MethodError(str(e)) from None
    return gf.to(adapter.device)  # every layer's solve runs where the pipeline lives (GPU included)


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
