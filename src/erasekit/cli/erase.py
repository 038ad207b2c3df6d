"""`erasekit erase`: fit an edit with one method (its own options) and save it."""

from __future__ import annotations

import argparse
import time

from ._common import (
    _add_method_options,
    _add_model_options,
    _check_model_options,
    _info,
    _load,
    _method_options,
)
from .inspect import _print_summary


def cmd_erase(args) -> int:
    from .._atomic import check_writable
    from ..api import fit, plan_erase

    # the plan refuses bad options (NaN / Inf included) before the (slow) model load
    plan = plan_erase(
        args.model,
        args.method,
        tuple(args.erase or ()),
        preserve=tuple(args.preserve or ()),
        kind=args.kind,
        guide=_guide(args.guide),
        templates=args.templates,
        defaults=_defaults_source(args),
        **_method_options(args),
    )
    _check_model_options(args)
    check_writable(args.out, "edit file")  # before the fit, not after it
    if plan.record["applied"]:
        _info(
            "defaults ("
            + plan.record["source"]
            + "): "
            + ", ".join(f"{k}={v['value']}" for k, v in plan.record["applied"].items())
        )
    pipe = _load(args)
    t0 = time.perf_counter()
    edit = fit(pipe, plan, progress=True)
    out = edit.save(args.out)
    _info(
        f"{plan.method}: {len(edit.layers)} layers in {time.perf_counter() - t0:.1f}s -> {out} ({edit.nbytes:,} bytes)"
    )
    _print_summary(edit)
    return 0


def _defaults_source(args) -> str:
    return "published" if args.published_defaults else "erasekit"


def _guide(guide: list[str] | None):
    if not guide:
        return None
    return guide[0] if len(guide) == 1 else tuple(guide)


def add_parser(sub, erase_method: str) -> None:
    """Register `erase` with ``erase_method``'s options."""
    e = sub.add_parser(
        "erase",
        help="fit an edit and save it as a .safetensors edit file",
        allow_abbrev=False,
        description="Fit an edit. The options after the common ones are those of --method "
        "(`erasekit erase --method M --help` lists M's).",
    )
    _add_model_options(e)
    e.add_argument(
        "--denoiser",
        choices=("full", "sites"),
        default="full",
        help="'sites': load of the denoiser only its static edit sites (a local diffusers folder; closed-form "
        "methods on the static sites): FLUX.1-dev's 12 B-parameter transformer is then never materialised",
    )
    e.add_argument("--method", default="uce", help="registered method (see `erasekit methods`); its options follow")
    e.add_argument("--erase", action="append", required=True, metavar="CONCEPT", help="concept to erase (repeatable)")
    e.add_argument("--kind", default="style", help="style, object, person or nsfw (templates, default guide)")
    e.add_argument("--guide", action="append", metavar="TEXT", help="guide concept: once for all, or once per --erase")
    e.add_argument("--preserve", action="append", metavar="CONCEPT", help="concept to preserve (repeatable)")
    e.add_argument(
        "--templates",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="expand concepts with the kind's prompt templates "
        "(default: the model's default, see erasekit/defaults.py)",
    )
    e.add_argument(
        "--published-defaults",
        action="store_true",
        help="start from the papers' settings instead of erasekit's per-model defaults",
    )
    e.add_argument("--out", required=True, help="edit file to write (.safetensors)")
    e.add_argument(
        "--set",
        action="append",
        metavar="OPTION=VALUE",
        help="an option of --method, as OPTION=VALUE (repeatable; the same as its flag)",
    )
    _add_method_options(e, erase_method)
    e.set_defaults(func=cmd_erase)
