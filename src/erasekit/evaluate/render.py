"""Rendering one batch of suite items exactly as the runner does: their conditioning (prompt, concept-vector shift or
learned token), their sampler (the pipeline's own or an attack's), in the compute dtype. The generate stage and the
attacks that look at images while they search both render through :func:`render_batch`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..models.families import identify
from ..models.precision import generating_in_compute_dtype
from .conditioning import shifted_conditioning, token_conditioning
from .suites import SuiteItem


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings shared by every image (``None`` = the pipeline's default; an item's own guidance wins)."""

    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    batch_size: int = 8

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
            "batch_size": self.batch_size,
        }


@torch.no_grad()
def render_batch(pipe, items: Sequence[SuiteItem], vectors: dict, settings: GenerationSettings) -> list[Image.Image]:
    """One batch; every item has the same guidance, conditioning kind (prompt, shifted, learned token) and sampler."""
    gens = [torch.Generator(device="cpu").manual_seed(int(it.seed)) for it in items]
    first = items[0]
    guidance = first.guidance if first.guidance is not None else settings.guidance
    asked = {"num_inference_steps": settings.steps, "height": settings.height, "width": settings.width}
    if first.sampling is not None and first.sampling[2] is not None:
        asked["num_inference_steps"] = first.sampling[2]
    kw = {k: v for k, v in asked.items() if v is not None}
    if first.shift is not None:
        cond: dict[str, Any] = shifted_conditioning(pipe, items, vectors)
    elif first.token is not None:
        cond = token_conditioning(pipe, items, vectors)
    else:
        cond = {"prompt": [it.prompt for it in items]}
    # how the family is guided at this scale (FLUX without a guidance embedding: true CFG against "")
    # the asked steps and size win over the family's defaults (Sana: its native size where __call__'s default is not)
    kw = {**identify(pipe).generation_kwargs(pipe, guidance, len(items), embeds="prompt" not in cond), **kw}
    with generating_in_compute_dtype(pipe), _sampler(pipe, first, gens):  # float16 on a CPU runs in float32
        return pipe(**cond, generator=gens, output_type="pil", **kw).images


@contextmanager
def _sampler(pipe, item: SuiteItem, generators: list[torch.Generator]) -> Iterator[None]:
    """The pipeline's own sampler, or for a sampling intervention the noisy sampler of noise-based probing (DDIM,
    or its rectified-flow counterpart), drawing its injected noise from the items' own ``generators``."""
    if item.sampling is None:
        yield
        return
    from .sampling import noisy_sampler

    with noisy_sampler(pipe, eta=item.sampling[0], variance_scale=item.sampling[1], generator=generators):
        yield
