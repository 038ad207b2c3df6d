"""`erasekit demo`: erase a shape from tinyworld, judge before / after, a grid and a page."""

from __future__ import annotations

from ..text import shown
from ._common import (
    _check_positive,
    _info,
    _parse_sets,
)


def cmd_demo(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..demo import run_demo

    options = _parse_sets(
        args.set or [], args.method
    )  # run_demo plans the edit (and refuses bad options) before any load
    _check_positive(args, "n", "steps")
    res = run_demo(
        concept=args.concept,
        method=args.method,
        n=args.n,
        steps=args.steps,
        out_dir=args.out,
        model=args.model,
        published_defaults=args.published_defaults,
        **options,
    )
    t = Table(
        title=f"erasekit demo: {shown(res.method)} erases '{shown(res.concept)}' from {shown(args.model)} "
        "(same seeds, tinyworld judge)"
    )
    t.add_column("measure")
    t.add_column("value", justify="right")
    for a, b in res.table_rows():
        t.add_row(shown(a), shown(b))
    Console().print(t)
    _info(f"grid: {res.grid_path}\npage: {res.html_path}")
    return 0


def add_parser(sub) -> None:
    """Register `demo`."""
    d = sub.add_parser(
        "demo", help="erase a shape from the bundled tinyworld model, judge before/after, write a grid and a page"
    )
    d.add_argument("--concept", default="circle", help="tinyworld shape to erase (default circle)")
    d.add_argument(
        "--model",
        default="tinyworld",
        choices=("tinyworld", "tinyworld-xl", "tinyworld-flux"),
        help="bundled model: tinyworld (SD 1.x architecture), tinyworld-xl (SDXL) or tinyworld-flux (FLUX.1)",
    )
    d.add_argument("--method", default="space", help="registered method (default space)")
    d.add_argument("--n", type=int, default=16, help="prompts per suite (named, paraphrased, retained)")
    d.add_argument("--steps", type=int, default=15, help="denoising steps")
    d.add_argument("--out", default="erasekit-demo", help="folder for demo_grid.png, demo.html, demo.json")
    d.add_argument(
        "--set",
        action="append",
        metavar="OPTION=VALUE",
        help="method option, e.g. --set target_sparsity=0.9 (repeatable)",
    )
    d.add_argument(
        "--published-defaults",
        action="store_true",
        help="the papers' settings instead of erasekit's tinyworld defaults",
    )
    d.set_defaults(func=cmd_demo)
