"""What every `erasekit` subcommand shares: model options, method options, checks before the model load."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from ..errors import EraseKitError
from ..text import plain_lines


# ----------------------------------------------------------------- options
def _add_method_options(p: argparse.ArgumentParser, method: str) -> None:
    """``method``'s config options as flags, each with its own help (the second stage of `erase`'s parse)."""
    from ..methods import get_method
    from ..methods.base import option_types

    m = get_method(method)
    g = p.add_argument_group(f"{m.name} options (--method {m.name}; `erasekit erase --method M --help` shows M's)")
    types = option_types(m.config_class)
    for f in dataclasses.fields(m.config_class):
        flag, ot = "--" + f.name.replace("_", "-"), types[f.name]
        # default_factory is set whenever default is MISSING (mypy cannot narrow the sentinel)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {default!r})"
        help_text = help_text.replace("%", "%%")
        if ot.base == "bool":
            g.add_argument(
                flag,
                dest=f"opt_{f.name}",
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            g.add_argument(
                flag,
                dest=f"opt_{f.name}",
                type=_flag_type(f.name, ot),
                default=argparse.SUPPRESS,
                help=help_text,
                metavar=f.name.upper(),
            )


def _flag_type(name: str, ot):
    """argparse ``type=``: the shared parse (methods/base.py), its refusal as argparse's message."""
    from ..errors import MethodError

    def parse(text: str):
        try:
            return ot.parse(name, text)
        except MethodError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _parse_sets(items: list[str], method: str) -> dict:
    """``--set OPTION=VALUE`` items as ``method``'s options, typed by the config field each names."""
    from ..errors import MethodError
    from ..methods import get_method
    from ..methods.base import not_an_option, option_types

    types = option_types(get_method(method).config_class)
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise MethodError(f"--set expects OPTION=VALUE with an option of method {method!r}, got {item!r}")
        if name not in types:
            raise not_an_option(method, [name])
        out[name] = types[name].parse(name, value)
    return out


def _method_options(args) -> dict:
    """The method options of a parsed `erase` command line: its flags, then its ``--set`` items."""
    flags = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_")}
    return {**flags, **_parse_sets(args.set or [], args.method)}


def _add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--model",
        required=required,
        default=None if required else "tinyworld",
        help="'tinyworld', 'tinyworld-xl', 'tinyworld-flux', tiny-sd / tiny-sdxl, a diffusers folder, a hub id, "
        "or a single-file .safetensors",
    )
    p.add_argument(
        "--config",
        default=None,
        help="with a single-file checkpoint: a local diffusers folder of the same architecture",
    )
    p.add_argument("--dtype", default="float32", help="float32 (default), float16 or bfloat16")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps ...")


def _load(args):
    from ..models.loading import load_pipeline
    from ..models.precision import denoiser_of, slow_dtype_notice, stored_dtype

    t0 = time.perf_counter()
    denoiser = getattr(args, "denoiser", "full")  # `erasekit erase --denoiser sites`
    pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device, config=args.config, denoiser=denoiser)
    _info(f"loaded {args.model} ({type(pipe).__name__}) in {time.perf_counter() - t0:.1f}s")
    den = denoiser_of(pipe)
    notice = slow_dtype_notice(den.device, stored_dtype(den))
    if notice:
        _info(notice)
    return pipe


def _info(msg: str) -> None:
    print(plain_lines(msg), file=sys.stderr, flush=True)


# ------------------------------------------------- checks before the model load
def _check_model_options(args) -> None:
    from ..models.loading import resolve_dtype

    resolve_dtype(args.dtype)  # ModelError naming the choices


def _check_positive(args, *names: str, minimum: int = 1) -> None:

    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < minimum:
            raise EraseKitError(f"--{name.replace('_', '-')} must be >= {minimum}, got {v}")


def _check_finite(args, *names: str) -> None:
    import math

    for name in names:
        v = getattr(args, name, None)
        if v is not None and not math.isfinite(v):
            raise EraseKitError(f"--{name.replace('_', '-')} must be a finite number, got {v}")


def _check_image_size(pipe, height: int | None, width: int | None) -> None:
    """Sizes must be positive multiples of the VAE's downscaling factor (checked right after the load)."""

    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    for name, v in (("height", height), ("width", width)):
        if v is not None and (v <= 0 or v % factor):
            fix = max(factor, round(v / factor) * factor)
            raise EraseKitError(
                f"{name} must be a positive multiple of {factor} (the VAE's downscaling factor), got {v}; try {fix}"
            )


def _load_edit_file(path: str):
    """Parse an edit file (or an erasekit LoRA export) before the model load: a bad file fails in milliseconds."""
    from ..io import read_edit

    return read_edit(path)
