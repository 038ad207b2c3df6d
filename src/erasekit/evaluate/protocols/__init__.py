"""The founding papers' evaluation protocols as data (DESIGN §11): ``hub``, ``space-nudity``, ``mace-styles``,
``tinyworld``.

>>> from erasekit.evaluate.protocols import build_protocol
>>> p = build_protocol("tinyworld", concepts=["circle"])  # doctest: +SKIP
>>> p.to_dict()["metrics"]  # doctest: +SKIP
['target_proportion', 'retention', 'attack_success', 'quality', 'hmean']

:func:`add_arguments` / :func:`run_protocol` are the command line's ``erasekit bench --protocol NAME``: the protocol is
built, every file resolved and pinned, every file-backed suite read, and the plan written (``protocol.json``) before
anything loads a model.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ...errors import ProtocolError
from ..suites import Suite
from . import hub, mace_styles, space_nudity, tinyworld  # noqa: F401  (registration)
from .base import (
    PROTOCOLS,
    JudgeSpec,
    PromptSource,
    Protocol,
    SuiteSpec,
    UserPaths,
    available,
    build_protocol,
    register_protocol,
)
from .formats import load_suite

__all__ = [
    "PROTOCOLS",
    "JudgeSpec",
    "PromptSource",
    "Protocol",
    "SuiteSpec",
    "add_arguments",
    "available",
    "build_protocol",
    "load_suites",
    "protocol_options",
    "register_protocol",
    "run_protocol",
]


def load_suites(protocol: Protocol, cache_dir: str | os.PathLike | None = None) -> dict[str, Suite]:
    """Every file-backed suite of ``protocol``, read (suite name -> :class:`Suite`); suites with a builder (tinyworld's,
    attacks against an edit) are built by the evaluation itself."""
    return {s.name: load_suite(s, protocol.guidance, cache_dir) for s in protocol.suites if s.source is not None}


# ------------------------------------------------------------------ the command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``erasekit bench --protocol NAME`` (added to the bench parser)."""
    g = parser.add_argument_group("protocols (the papers' own evaluations, erasekit/evaluate/protocols)")
    g.add_argument("--protocol", default=None, choices=available(), help="run a paper's evaluation protocol")
    g.add_argument("--hub-dir", default=None, help="HUB's prompts/ folder (default: ../shared/data/prompts/hub)")
    g.add_argument(
        "--protocol-file",
        action="append",
        metavar="SET=PATH",
        help="a prompt file for a set of the protocol: the gated ones (ring-a-bell, mma-diffusion, p4d), "
        "mace-styles' artist list (styles=PATH), or a replacement for a declared file",
    )
    g.add_argument("--protocol-sets", default=None, help="comma-separated sets of the protocol to run")
    g.add_argument("--protocol-limit", type=int, default=None, help="prompts per file (default: the protocol's)")
    g.add_argument("--protocol-concepts", default=None, help="comma-separated concepts (hub, tinyworld)")
    g.add_argument(
        "--protocol-option",
        action="append",
        metavar="KEY=VALUE",
        help="any build option of the protocol (e.g. hub: retain_limit=2, general_limit=4, images_per_prompt=1; "
        "tinyworld: n=4, attack=concept-vector); values read as JSON numbers / booleans, else text",
    )
    g.add_argument("--protocol-plan-only", action="store_true", help="resolve, check and write the plan; no images")
    g.add_argument(
        "--judge-path",
        action="append",
        metavar="JUDGE=PATH[,key=value]",
        help="where a protocol judge's model is, e.g. vlm=/models/InternVL2_5-8B-MPO-hf, "
        "aesthetics=/m/sac+logos+ava1-l14-linearMSE.safetensors, clip=/models/clip-vit-large-patch14 (also the "
        "aesthetic predictor's CLIP); key=value sets a judge option over the protocol's (recorded)",
    )


def protocol_options(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol's build options from the parsed command line."""
    name = args.protocol
    files = UserPaths.parse(getattr(args, "protocol_file", None) or [])
    opts: dict[str, Any] = {}
    sets = getattr(args, "protocol_sets", None)
    if sets:
        opts["sets"] = tuple(s.strip() for s in sets.split(",") if s.strip())
    if getattr(args, "protocol_limit", None) is not None:
        key = "n" if name == "tinyworld" else "limit"
        opts[key] = args.protocol_limit
    concepts = getattr(args, "protocol_concepts", None)
    if concepts:
        opts["concepts"] = concepts
    if name in ("hub", "tinyworld", "space-nudity", "mace-styles"):
        for key in ("steps", "guidance"):
            if getattr(args, key, None) is not None:
                opts[key] = getattr(args, key)
    if name == "hub":
        opts["hub_dir"] = getattr(args, "hub_dir", None)
        if getattr(args, "height", None) is not None:
            opts["size"] = args.height
    if name == "space-nudity" and files.paths:
        opts["paths"] = dict(files.paths)
    for item in getattr(args, "protocol_option", None) or []:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ProtocolError(f"--protocol-option takes KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        opts[key.strip()] = value
    if name == "mace-styles":
        extra = files.unknown(["styles"])
        if extra:
            raise ProtocolError(f"mace-styles takes --protocol-file styles=PATH only, got {extra}")
        if "styles" in files.paths:
            opts["styles_file"] = files.paths["styles"]
    elif name != "space-nudity" and files.paths:
        raise ProtocolError(f"protocol {name!r} takes no --protocol-file (got {sorted(files.paths)})")
    return opts


def run_protocol(args: argparse.Namespace) -> int:
    """``erasekit bench --protocol NAME``: build the protocol, resolve and check every file, read every file-backed
    suite, write ``OUT/protocol.json`` (the protocol whole, each file's checksums, each suite's size); then, unless
    ``--protocol-plan-only``, run it end to end (:func:`.run.execute`: judges, fit, generate, judge, the H-mean,
    ``OUT/results.json``); returns the exit code."""
    protocol = build_protocol(args.protocol, cache_dir=getattr(args, "cache", None), **protocol_options(args))
    files = protocol.check(getattr(args, "cache", None))
    suites = load_suites(protocol, getattr(args, "cache", None))
    plan = {
        "protocol": protocol.to_dict(),
        "files": files,
        "suites": {n: {"kind": s.kind, "items": len(s), **s.info} for n, s in suites.items()},
        "built_at_evaluation": [s.name for s in protocol.suites if s.source is None],
    }
    out = Path(getattr(args, "out", None) or ".")
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(json.dumps(plan, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    n_images = sum(len(s) for s in suites.values())
    print(
        f"protocol {protocol.name}: {len(protocol.suites)} suites, {len(files)} files checked, "
        f"{n_images} images from files; plan written to {out / 'protocol.json'}"
    )
    if getattr(args, "protocol_plan_only", False):
        return 0
    from .run import execute

    return execute(args, protocol, plan, suites)
