"""`erasekit methods`: the registered methods and their options."""

from __future__ import annotations

import dataclasses

from ..text import shown


def cmd_methods(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..methods import get_method, list_methods

    table = Table(title="erasekit methods")
    table.add_column("method", style="bold")
    table.add_column("description")
    for name, summary in list_methods().items():
        table.add_row(shown(name), shown(summary))  # a plugin's text is not erasekit's: shown as data
    console = Console()
    console.print(table)
    if args.verbose:
        for name in list_methods():
            cfg = get_method(name).config_class
            t = Table(title=f"{shown(name)} options")
            t.add_column("option")
            t.add_column("default")
            t.add_column("help")
            for f in dataclasses.fields(cfg):
                # default_factory is set whenever default is MISSING (mypy cannot narrow the sentinel)
                factory = f.default_factory
                default = f.default if f.default is not dataclasses.MISSING else factory()  # type: ignore[operator]
                t.add_row(
                    shown("--" + f.name.replace("_", "-")), shown(repr(default)), shown(f.metadata.get("help", ""))
                )
            console.print(t)
    return 0


def add_parser(sub) -> None:
    """Register `methods`."""
    m = sub.add_parser("methods", help="list registered methods")
    m.add_argument("-v", "--verbose", action="store_true", help="also list every method's options")
    m.set_defaults(func=cmd_methods)
