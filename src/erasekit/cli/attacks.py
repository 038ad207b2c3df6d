"""`erasekit attacks`: the registered attacks, their kind, budgets (default and paper) and reference."""

from __future__ import annotations

from ..text import shown


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_value(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def cmd_attacks(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..evaluate.attacks import list_attacks

    # columns fold rather than cut with "…": a budget or a repository address stays whole on a narrow terminal
    table = Table(title="erasekit attacks (--attack NAME,…; --budget default|paper; --attack-set NAME.OPTION=VALUE)")
    table.add_column("attack", style="bold", no_wrap=True)
    table.add_column("kind", overflow="fold")
    table.add_column("searched", overflow="fold")
    table.add_column("default budget", overflow="fold")
    table.add_column("paper budget", overflow="fold")
    table.add_column("reference", overflow="fold")
    for name, cls in list_attacks().items():
        cfg = cls.config_class
        default, paper = cfg.defaults("default"), cfg.defaults("paper")
        table.add_row(
            shown(name),
            shown(cls.kind),
            "per method" if cls.per_method else "once per study",
            shown(cls.budget_line(default)),
            shown(cls.budget_line(paper)) if paper != default else "(same)",
            shown(cls.reference),
        )
    console = Console()
    console.print(table)
    if args.verbose:
        for name, cls in list_attacks().items():
            cfg = cls.config_class
            default, paper = cfg.defaults("default"), cfg.defaults("paper")
            t = Table(title=f"{shown(name)}: {shown(cls.summary)}")
            t.add_column("option", overflow="fold")
            t.add_column("default", overflow="fold")
            t.add_column("paper", overflow="fold")
            t.add_column("help", overflow="fold")
            for option, text in cfg.field_help().items():
                t.add_row(
                    shown(f"{name}.{option}"), shown(_value(default[option])), shown(_value(paper[option])), shown(text)
                )
            console.print(t)
    return 0


def add_parser(sub) -> None:
    """Register `attacks`."""
    a = sub.add_parser("attacks", help="list registered attacks: kind, budgets (default and paper), reference")
    a.add_argument("-v", "--verbose", action="store_true", help="also list every attack's options with their help")
    a.set_defaults(func=cmd_attacks)
