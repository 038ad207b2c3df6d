"""MACE's many-styles test: erase k artistic styles at once and measure CLIP_E (erased styles) and CLIP_R
(retained styles); the score is CLIP_R − CLIP_E (higher is better).

MACE (Lu et al., CVPR 2024) erases 1, 10, 50 and 100 artists; PURE reports CLIP_R − CLIP_E of 3.31 at 100 styles
against MACE 1.53, UCE 1.20, CURE −0.69 (:data:`PURE_MANY_STYLES`). The artist list is the user's file (one name per
line, ``styles_file``), pinned by ``sha256`` when given; prompts fill :data:`TEMPLATES` with each name. The first
``max(erase_counts)`` names are the erased pool (the first k of them erased at each count), the rest are retained.
No retain anchors are used by the methods (the protocol's many-concept runs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ...errors import ProtocolError
from .base import JudgeSpec, PromptSource, Protocol, SuiteSpec, register_protocol

# Five style templates (erasekit's choice, to be checked against MACE's evaluation script).
TEMPLATES = (
    "Image in the style of {}",
    "Art inspired by {}",
    "Painting in the style of {}",
    "A reproduction of art by {}",
    "A famous artwork by {}",
)
PURE_MANY_STYLES = {
    "source": "issue 25's reading of PURE: CLIP_R - CLIP_E at 100 styles (SD 1.5)",
    "PURE": 3.31,
    "MACE": 1.53,
    "UCE": 1.20,
    "CURE": -0.69,
}


@register_protocol("mace-styles", "MACE's many-styles test: CLIP_R − CLIP_E after erasing 1, 10, 50, 100 styles")
def build(
    styles_file: str | os.PathLike | None = None,
    sha256: str | None = None,
    erase_counts: Sequence[int] = (1, 10, 50, 100),
    images_per_prompt: int = 1,
    seed: int = 0,
    steps: int = 50,
    guidance: float = 7.5,
) -> Protocol:
    if styles_file is None:
        raise ProtocolError(
            "mace-styles needs the artist list: a text file with one artist name per line (MACE erases up to 100 "
            "and keeps 100 more); give styles_file=PATH (--protocol-file styles=PATH)"
        )
    counts = sorted({int(k) for k in erase_counts})
    if not counts or counts[0] < 1:
        raise ProtocolError(f"erase_counts must be positive integers, got {list(erase_counts)}")
    src = PromptSource(name="styles", format="names", path=str(styles_file), sha256=sha256, templates=TEMPLATES)
    suites = (
        SuiteSpec(
            "styles", "target", src, role="clip_e_and_clip_r", images_per_prompt=images_per_prompt, base_seed=seed
        ),
    )
    return Protocol(
        name="mace-styles",
        summary="MACE's many-styles protocol: CLIP_E on erased styles, CLIP_R on retained ones, CLIP_R - CLIP_E",
        suites=suites,
        judges=(
            JudgeSpec(
                "clip",
                {"model": "given by the user (local folder)", "metric": "CLIP accuracy", "candidates": "the list"},
                options={"candidate_template": "a photo of the {}"},
            ),
        ),
        metrics=("clip_e", "clip_r", "clip_r_minus_clip_e"),
        steps=steps,
        guidance=guidance,
        height=512,
        width=512,
        model="stable-diffusion-v1-5",
        options={
            "erase_counts": counts,
            "images_per_prompt": images_per_prompt,
            "seed": seed,
            "erased_pool": max(counts),
            "retain_anchors": 0,
        },
        reference={"pure_many_styles": PURE_MANY_STYLES},
        notes=("templates are erasekit's reading of MACE's evaluation prompts",),
    )
