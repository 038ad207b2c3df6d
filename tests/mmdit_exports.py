"""Checks shared by the MMDiT single-file export tests (tests/test_export_flux.py, tests/test_export_sd3.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open


def generates_as_the_edit(p, tr, latents: Callable, want_latents: torch.Tensor, plain: torch.Tensor) -> None:
    """``p`` with the reloaded transformer ``tr`` in place generates the edited pipeline's latents, bit for bit; and
    the edit changes generation at all (``plain``: the unedited latents), so the comparison can fail."""
    base_tr = p.transformer
    p.transformer = tr.eval()
    try:
        got_latents = latents(p)
    finally:
        p.transformer = base_tr
    assert float((want_latents - plain).abs().max()) > 1e-4  # the edit changes generation, so the next can fail
    assert torch.equal(got_latents, want_latents)


def export_record(path: Path) -> dict:
    """The ``erasekit_export`` metadata a single file carries."""
    with safe_open(str(path), "pt") as f:
        record: dict = json.loads(f.metadata()["erasekit_export"])
    return record
