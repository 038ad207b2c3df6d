"""`erasekit generate`: unedited | edited images side by side, same seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import (
    _add_model_options,
    _check_finite,
    _check_image_size,
    _check_model_options,
    _check_positive,
    _info,
    _load,
    _load_edit_file,
)


def cmd_generate(args) -> int:
    from .._atomic import atomic_path, check_writable
    from ..generate import generate, image_grid
    from ..models.record import describe_model

    _check_model_options(args)
    _check_positive(args, "steps", "height", "width")
    _check_finite(args, "guidance")
    check_writable(args.out, "image grid", "grid.png")
    edit = _load_edit_file(args.edit) if args.edit else None
    pipe = _load(args)
    _check_image_size(pipe, args.height, args.width)
    prompts, seeds = args.prompt, args.seed or [0]
    own = describe_model(args.model).generation  # a bundled model's settings (tinyworld-flux: its GENERATE_KW)
    given = dict(steps=args.steps, guidance=args.guidance, height=args.height, width=args.width)
    kw: dict[str, Any] = {k: v if v is not None else own.get(k) for k, v in given.items()}
    if edit is not None:
        edit.check_compatible(pipe)
    before = generate(pipe, prompts, seeds, **kw)
    columns, images = ["unedited"], [before]
    if edit is not None:
        edit.apply(pipe)
        try:
            images.append(generate(pipe, prompts, seeds, **kw))
        finally:
            edit.revert(pipe)
        columns.append(f"edited ({edit.method})")
    rows, labels = [], []
    for i, (p, s) in enumerate((p, s) for p in prompts for s in seeds):
        rows.append([col[i] for col in images])
        labels.append(f"{p[:40]} | seed {s}")
    out = Path(args.out)
    with atomic_path(out) as tmp:
        image_grid(rows, labels, columns).save(tmp, format="PNG")
    _info(f"wrote {out} ({len(rows)} rows: {' | '.join(columns)})")
    return 0


def add_parser(sub) -> None:
    """Register `generate`."""
    g = sub.add_parser("generate", help="generate unedited | edited images side by side, same seeds")
    _add_model_options(g)
    g.add_argument("--edit", default=None, help="edit file to compare against the unedited model")
    g.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    g.add_argument("--seed", action="append", type=int, help="seed (repeatable; default 0)")
    g.add_argument(
        "--steps", type=int, default=None, help="denoising steps (omitted: a bundled model's own, else the pipeline's)"
    )
    g.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (true CFG on FLUX without a guidance embedding); omitted: a bundled "
        "model's own, else the pipeline's",
    )
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--out", default="grid.png", help="PNG grid to write")
    g.set_defaults(func=cmd_generate)
