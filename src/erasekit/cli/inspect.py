"""`erasekit inspect`: what an edit file holds, every value shown as data."""

from __future__ import annotations

import json

from ..text import shown
from ._common import (
    _load_edit_file,
)


def _print_summary(edit, show_layers: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    s = edit.summary()
    # every value below comes from the file (concepts, paths, stats): shown() keeps it from acting as markup or
    # terminal control
    t = Table(show_header=False, title="edit")
    t.add_column(style="bold")
    t.add_column()
    c = s["concepts"]
    row = lambda key, value: t.add_row(key, shown(value))  # noqa: E731
    row("method", s["method"])
    row("erase", ", ".join(c.get("erase", [])) + f"  (kind {c.get('kind')}, guide {c.get('guides')})")
    row("preserve", ", ".join(c.get("preserve", [])) or "-")
    row(
        "base model", f"{s['base'].get('name_or_path') or '?'} ({s['base'].get('pipeline')}, {s['base'].get('family')})"
    )
    row("base fingerprint", _base_fingerprint(edit))
    row("layers", f"{s['layers']}  storage {s['storage']}")
    if s["sparsity"] is not None:
        row("sparsity", f"{100 * s['sparsity']:.2f} % exact zeros")
    row(
        "bytes",
        f"{s['bytes']:,}  ({100 * s['bytes'] / max(s['dense_fp32_bytes'], 1):.1f} % "
        f"of dense fp32 {s['dense_fp32_bytes']:,})",
    )
    for k in ("seconds", "objective", "iterations", "converged"):
        if k in s["stats"]:
            row(k, str(s["stats"][k]))
    console = Console()
    console.print(t)
    if show_layers:
        lt = Table(title="layers")
        for col in ("layer", "kind", "shape", "bytes", "sparsity", "rank", "seconds"):
            lt.add_column(col)
        for path, le in edit.layers.items():
            sp = le.stats.get("sparsity")
            lt.add_row(
                *map(
                    shown,
                    (
                        path,
                        le.kind,
                        "×".join(map(str, le.shape)),
                        f"{le.nbytes:,}",
                        "-" if sp is None else f"{100 * sp:.1f}%",
                        str(le.rank or "-"),
                        str(le.stats.get("seconds", "-")),
                    ),
                )
            )
        console.print(lt)


def _base_fingerprint(edit) -> str:
    import hashlib

    h = hashlib.sha256("".join(edit.fingerprints[p]["sha256"] for p in sorted(edit.fingerprints)).encode()).hexdigest()
    return h[:16]


def cmd_inspect(args) -> int:
    edit = _load_edit_file(args.file)
    if args.json:
        print(
            json.dumps(
                {**edit.summary(), "base_fingerprint": _base_fingerprint(edit), "config": edit.config},
                indent=2,
                default=str,
            )
        )
    else:
        _print_summary(edit, show_layers=args.layers)
    return 0


def add_parser(sub) -> None:
    """Register `inspect`."""
    i = sub.add_parser("inspect", help="show what an edit file contains")
    i.add_argument("file")
    i.add_argument("--layers", action="store_true", help="per-layer table")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_inspect)
