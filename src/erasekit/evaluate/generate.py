"""The runner's *generate* stage: render the missing batches, shared between ``accelerate`` processes, into the cache.

Each process takes its share of the missing batches (``PartialState().split_between_processes``), applies each
edit for its own batches and reverts it, and saves every image as soon as its batch finishes.
"""

from __future__ import annotations

from .cache import ImageCache
from .plan import Job
from .render import GenerationSettings, render_batch

_render = render_batch  # the stage renders through this name (tests interrupt it here)
__all__ = ["GenerationSettings", "generate"]


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
