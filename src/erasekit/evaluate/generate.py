"""The runner's *generate* stage: render the missing batches, shared between ``accelerate`` processes, into the cache.

Each process takes its share of the missing batches (``PartialState().split_between_processes``), applies each
edit for its own batches and reverts it, and saves every image as soon as its batch finishes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..models.precision import generating_in_compute_dtype
from .attacks.conditioning import shifted_conditioning, token_conditioning
from .cache import ImageCache
from .plan import Job
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
def _render(pipe, items: Sequence[SuiteItem], vectors: dict, settings: GenerationSettings) -> list[Image.Image]:
    """One batch; every item has the same guidance, conditioning kind (prompt, shifted, learned token) and sampler."""
    gens = [torch.Generator(device="cpu").manual_seed(int(it.seed)) for it in items]
    first = items[0]
    guidance = first.guidance if first.guidance is not None else settings.guidance
    asked = {
        "num_inference_steps": settings.steps,
        "guidance_scale": guidance,
        "height": settings.height,
        "width": settings.width,
    }
    if first.sampling is not None and first.sampling[2] is not None:
        asked["num_inference_steps"] = first.sampling[2]
    kw = {k: v for k, v in asked.items() if v is not None}
    if first.shift is not None:
        cond: dict[str, Any] = shifted_conditioning(pipe, items, vectors)
    elif first.token is not None:
        cond = token_conditioning(pipe, items, vectors)
    else:
        cond = {"prompt": [it.prompt for it in items]}
    with generating_in_compute_dtype(pipe), _sampler(pipe, first):  # float16 on a CPU runs in float32
        return pipe(**cond, generator=gens, output_type="pil", **kw).images


@contextmanager
def _sampler(pipe, item: SuiteItem) -> Iterator[None]:
    """The pipeline's own sampler, or for a sampling intervention the noisy DDIM sampler of noise-based probing."""
    if item.sampling is None:
        yield
        return
    from .attacks.nbp import noisy_sampler

    with noisy_sampler(pipe, eta=item.sampling[0], variance_scale=item.sampling[1]):
        yield


def generate(
    state,
    pipe,
    todo: list[list[Job]],
    edits: dict,
    cache: ImageCache,
    settings: GenerationSettings,
    *,
    progress: bool = True,
) -> int:
    """Render this process's share of ``todo`` into ``cache``; returns how many images it wrote.
    ``edits``: model state -> the Edit applied for that state's batches (reverted afterwards, also on an error)."""
    from tqdm.auto import tqdm

    generated = 0
    with state.split_between_processes(todo) as mine:
        bar = tqdm(
            total=sum(len(b) for b in mine),
            desc=f"generating ({state.process_index + 1}/{state.num_processes})",
            disable=not progress or not state.is_main_process,
        )
        for st in dict.fromkeys(b[0].state for b in mine):
            edit = edits.get(st)
            if edit is not None:
                edit.apply(pipe)
            try:
                for batch in (b for b in mine if b[0].state == st):
                    vectors = {k: v for j in batch for k, v in j.vectors.items()}
                    for j, im in zip(batch, _render(pipe, [j.item for j in batch], vectors, settings), strict=True):
                        if not j.path.is_file():  # a batch cut short by an interruption keeps its finished images
                            cache.save(j.path, im, j.spec)
                            generated += 1
                    bar.update(len(batch))
            finally:
                if edit is not None:
                    edit.revert(pipe)
        bar.close()
    return generated
