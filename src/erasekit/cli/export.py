"""`erasekit export`: write the edit in a registered format (the format registry gives the choices)."""

from __future__ import annotations

import time

from ._common import (
    _add_model_options,
    _check_model_options,
    _info,
    _load,
    _load_edit_file,
)

EXPORT_OPTIONS = ("save_dtype", "rank", "kohya_names", "layout")  # passed on when given; the format refuses others


def cmd_export(args) -> int:
    from ..export import ExportError, export, get_format
    from ..export._common import check_output

    _check_model_options(args)
    fmt = get_format(args.format)
    # refused before the (slow) model load: options the format does not take, a save dtype it cannot store
    options = fmt.accept({k: getattr(args, k) for k in EXPORT_OPTIONS})
    if fmt.kind == "edit" and not args.edit:
        raise ExportError(f"--format {fmt.name} writes an edit: give --edit FILE")
    if args.rank is not None and args.rank < 1:
        raise ExportError(f"--rank must be >= 1, got {args.rank}")
    check_output(args.out, folder=fmt.folder)
    edit = _load_edit_file(args.edit) if args.edit else None  # parsed before the model load
    pipe = _load(args)
    if edit is not None:
        edit.check_compatible(pipe)  # strict: the base weights this edit was made for
    t0 = time.perf_counter()
    res = export(
        edit if edit is not None else pipe,
        fmt.name,
        args.out,
        pipe=pipe if edit is not None else None,
        progress=True,
        **options,
    )
    baked = f"; {edit!r} baked in" if edit is not None and fmt.kind == "model" else ""
    _info(f"{res.describe()}{baked} in {time.perf_counter() - t0:.1f}s")
    return 0


def add_parser(sub) -> None:
    """Register `export`; its choices and help come from the export-format registry."""
    from ..export import list_formats

    formats = list_formats()

    def takers(option: str) -> str:
        return " / ".join(n for n, f in formats.items() if option in f.options)

    x = sub.add_parser(
        "export",
        help="write the edit where people run models: LoRA (diffusers / kohya; FLUX.1 in kohya / BFL names), .diff, a "
        "merged diffusers folder, or a single file (A1111 / ComfyUI for SD 1.x / 2.x / XL; BFL FLUX.1; SD3)",
    )
    _add_model_options(x)
    x.add_argument(
        "--edit",
        default=None,
        help="edit file (checked strictly against the model first); required for "
        + " / ".join(n for n, f in formats.items() if f.kind == "edit"),
    )
    x.add_argument(
        "--format",
        default="single-file",
        choices=tuple(formats),
        help="; ".join(f"{n}: {f.help}" for n, f in formats.items()) + " (default: single-file)",
    )
    x.add_argument(
        "--out",
        required=True,
        help="file to write (.safetensors); a new folder for "
        + " / ".join(f"--format {n}" for n, f in formats.items() if f.folder),
    )
    x.add_argument(
        "--rank",
        type=int,
        default=None,
        help=f"{takers('rank')}: largest rank; sparse / dense edits of "
        "higher numerical rank get a truncated-SVD LoRA (relative error reported and stored)",
    )
    x.add_argument(
        "--save-dtype",
        default=None,
        help="float32, float16 or bfloat16 for the written tensors (default: float32 for edit formats, the model's "
        f"--dtype for whole models); {' / '.join(n for n, f in formats.items() if f.float8)} also take float8_e4m3fn "
        "or float8_e5m2 (plain float8 in every tensor, as ComfyUI's fp8 files; an edit that float8 would mostly round "
        "away is refused: export it as a 'lora')",
    )
    x.add_argument(
        "--kohya-names",
        default=None,
        choices=("diffusers", "ldm"),
        help=f"{takers('kohya_names')}: "
        "module-name spelling (default ldm for SDXL, diffusers for SD 1.x / 2.x, as kohya's trainers write them)",
    )
    x.add_argument(
        "--layout",
        default=None,
        choices=("sd1", "sd2", "sdxl"),
        help=f"{takers('layout')}: checkpoint layout (default: from the model)",
    )
    x.set_defaults(func=cmd_export)
