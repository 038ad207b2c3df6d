"""The ``erasekit`` command.

erasekit methods [-v]
erasekit attacks [-v]
erasekit erase    --model M --method space --erase "Van Gogh" --preserve Monet --target-sparsity 0.85
                  --out e.safetensors
erasekit inspect  e.safetensors [--layers] [--json]
erasekit generate --model M --edit e.safetensors --prompt "a painting by Van Gogh" --seed 0 --out grid.png
erasekit evaluate --model M --edit e.safetensors [--suite target,paraphrase,...]
                  [--judge tinyworld|nudenet|clip:PATH] --out DIR
erasekit bench    --model tinyworld --methods uce,space --concepts circle,red,striped --out DIR
erasekit export   --model M --edit e.safetensors --format FORMAT --out PATH
                  (FORMAT: lora, lora-kohya, diff, diffusers, single-file, lora-kohya-flux,
                  single-file-flux, single-file-sd3)
                  [--rank K]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from ..errors import EraseKitError
from ..text import plain, plain_lines
from . import attacks, bench, demo, erase, evaluate, export, generate, inspect, methods
from ._common import _method_options, _parse_sets

__all__ = ["main", "build_parser", "_method_options", "_parse_sets", "_erase_method"]


def build_parser(erase_method: str = "uce") -> argparse.ArgumentParser:
    """The command's parser; `erase` carries the options of ``erase_method`` only
    (:func:`main` reads ``--method`` first). Each subcommand's module registers itself."""
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="erasekit", description="Erase concepts from diffusion models by editing cross-attention."
    )
    p.add_argument("--version", action="version", version=f"erasekit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    methods.add_parser(sub)
    attacks.add_parser(sub)
    erase.add_parser(sub, erase_method)
    inspect.add_parser(sub)
    generate.add_parser(sub)
    demo.add_parser(sub)
    evaluate.add_parser(sub)
    bench.add_parser(sub)
    export.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep library chatter out of the command's output
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_erase_method(argv))
        args, rest = parser.parse_known_args(argv)
        if rest:
            _refuse_unknown(parser, args, rest)
        _check_text_arguments(args)
        return args.func(args)
    except EraseKitError as e:
        print(f"erasekit: error: {plain_lines(e)}", file=sys.stderr)  # messages quote user text: shown escaped
        return 2
    except KeyboardInterrupt:
        print("erasekit: interrupted; nothing was written", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a vanished folder: every write is atomic, so nothing partial is left
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"erasekit: error: {plain(e.strerror or e)}{plain(where)}; no partial file was written", file=sys.stderr)
        return 1


# arguments whose text becomes a concept name or a prompt: checked once, here, before any model loads
_TEXT_ARGUMENTS = ("erase", "guide", "preserve", "concept", "concepts", "prompt", "prompts_concept")


def _check_text_arguments(args) -> None:
    """Refuse (exit 2, naming the argument) text that is not valid UTF-8, or holds surrogates or control characters."""
    from ..text import check_user_text

    for name in _TEXT_ARGUMENTS:
        value = getattr(args, name, None)
        for item in [value] if isinstance(value, str) else value or ():
            check_user_text("--" + name.replace("_", "-"), item)


def _erase_method(argv: list[str]) -> str:
    """Stage one of `erase`'s parse: its ``--method`` (registered; default uce), whose options stage two offers."""
    from ..methods import get_method

    command = next((a for a in argv if not a.startswith("-")), None)
    if command != "erase":
        return "uce"
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--method", default="uce")
    known, _ = pre.parse_known_args(argv[argv.index("erase") + 1 :])
    return get_method(known.method).name  # MethodError naming the registered methods


def _refuse_unknown(parser: argparse.ArgumentParser, args, rest: list[str]) -> None:
    """Arguments no parser took: another method's options are refused naming this method's;
    the rest as argparse does."""
    from ..methods.base import _REGISTRY, not_an_option

    if getattr(args, "command", None) == "erase":
        every = {f.name for cls in _REGISTRY.values() for f in dataclasses.fields(cls.config_class)}
        names = [a[2:].split("=")[0].replace("-", "_") for a in rest if a.startswith("--")]
        others = [n for n in names if n in every]
        if others:
            raise not_an_option(args.method, others)
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
