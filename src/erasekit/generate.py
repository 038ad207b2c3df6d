"""Seeded generation and labelled image grids (unedited | edited, same seeds)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
) -> list[Image.Image]:
    """One image per (prompt, seed), prompt-major; each image's noise depends on its seed alone."""
    return generate_pairs(
        pipe,
        [(p, s) for p in prompts for s in seeds],
        steps=steps,
        guidance=guidance,
        height=height,
        width=width,
        batch_size=batch_size,
    )


@torch.no_grad()
def generate_pairs(
    pipe,
    jobs: Sequence[tuple[str, int]],
    *,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
) -> list[Image.Image]:
    """One image per (prompt, seed) job, batched; image i is the same whatever else is in its batch."""
    from .models.families import identify
    from .models.precision import generating_in_compute_dtype

    family = identify(pipe)
    kw = {k: v for k, v in dict(num_inference_steps=steps, height=height, width=width).items() if v is not None}
    images: list[Image.Image] = []
    with generating_in_compute_dtype(pipe):  # float16 on a CPU runs in float32 (models/precision.py)
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i : i + batch_size]
            gens = [torch.Generator(device="cpu").manual_seed(int(s)) for _, s in chunk]
            guided = family.generation_kwargs(pipe, guidance, len(chunk))  # the family's guidance (FLUX: true CFG)
            kwargs = {**guided, **kw}  # an asked size wins over the family's (Sana's native size)
            out = pipe(prompt=[p for p, _ in chunk], generator=gens, output_type="pil", **kwargs)
            images.extend(out.images)
    return images


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    cell: int | None = None,
    pad: int = 4,
) -> Image.Image:
    """A labelled grid; ``rows[r][c]`` goes to row r, column c. Small images are upscaled (nearest) to ``cell`` px."""
    n_cols = max(len(r) for r in rows)
    size = cell or max(96, max(im.width for r in rows for im in r))
    label_w = 8 + 7 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    label_h = 18 if col_labels else 0
    grid = Image.new("RGB", (label_w + n_cols * (size + pad) + pad, label_h + len(rows) * (size + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(col_labels):
        draw.text((label_w + pad + c * (size + pad), 3), text, fill="black")
    for r, row in enumerate(rows):
        y = label_h + pad + r * (size + pad)
        if r < len(row_labels):
            draw.text((4, y + size // 2 - 6), row_labels[r], fill="black")
        for c, im in enumerate(row):
            grid.paste(
                im.convert("RGB").resize((size, size), Image.Resampling.NEAREST), (label_w + pad + c * (size + pad), y)
            )
    return grid
