"""The ``erasekit`` command.

erasekit methods [-v]
erasekit erase    --model M --method space --erase "Van Gogh" --preserve Monet --target-sparsity 0.85 --out e.safetensors
erasekit inspect  e.safetensors [--layers] [--json]
erasekit generate --model M --edit e.safetensors --prompt "a painting by Van Gogh" --seed 0 --out grid.png
erasekit evaluate --model M --edit e.safetensors [--suite target,paraphrase,...] [--judge tinyworld|nudenet|clip:PATH] --out DIR
erasekit bench    --model tinyworld --methods uce,space --concepts circle,red,striped --out DIR
erasekit export   --model M --edit e.safetensors --format lora|lora-kohya|diff|diffusers|single-file --out PATH [--rank K]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import EraseKitError
from .models.record import is_tinyworld
from .text import plain, shown


# ----------------------------------------------------------------- options
def _add_method_options(p: argparse.ArgumentParser, method: str) -> None:
    """``method``'s config options as flags, each with its own help (the second stage of `erase`'s parse)."""
    from .methods import get_method
    from .methods.base import option_types

    m = get_method(method)
    g = p.add_argument_group(f"{m.name} options (--method {m.name}; `erasekit erase --method M --help` shows M's)")
    types = option_types(m.config_class)
    for f in dataclasses.fields(m.config_class):
        flag, ot = "--" + f.name.replace("_", "-"), types[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
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
    from .errors import MethodError

    def parse(text: str):
        try:
            return ot.parse(name, text)
        except MethodError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _parse_sets(items: list[str], method: str) -> dict:
    """``--set OPTION=VALUE`` items as ``method``'s options, typed by the config field each names."""
    from .errors import MethodError
    from .methods import get_method
    from .methods.base import not_an_option, option_types

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
        help="'tinyworld', 'tinyworld-xl', tiny-sd / tiny-sdxl, a diffusers folder, a hub id, or a single-file .safetensors",
    )
    p.add_argument(
        "--config",
        default=None,
        help="with a single-file checkpoint: a local diffusers folder of the same architecture",
    )
    p.add_argument("--dtype", default="float32", help="float32 (default), float16 or bfloat16")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps ...")


def _load(args):
    from .models.loading import load_pipeline
    from .models.precision import denoiser_of, slow_dtype_notice, stored_dtype

    t0 = time.perf_counter()
    pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device, config=args.config)
    _info(f"loaded {args.model} ({type(pipe).__name__}) in {time.perf_counter() - t0:.1f}s")
    den = denoiser_of(pipe)
    notice = slow_dtype_notice(den.device, stored_dtype(den))
    if notice:
        _info(notice)
    return pipe


def _info(msg: str) -> None:
    print(plain(msg), file=sys.stderr, flush=True)


# ------------------------------------------------- checks before the model load
def _check_model_options(args) -> None:
    from .models.loading import resolve_dtype

    resolve_dtype(args.dtype)  # ModelError naming the choices


def _check_positive(args, *names: str, minimum: int = 1) -> None:
    from .errors import EraseKitError

    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < minimum:
            raise EraseKitError(f"--{name.replace('_', '-')} must be >= {minimum}, got {v}")


def _check_finite(args, *names: str) -> None:
    import math

    from .errors import EraseKitError

    for name in names:
        v = getattr(args, name, None)
        if v is not None and not math.isfinite(v):
            raise EraseKitError(f"--{name.replace('_', '-')} must be a finite number, got {v}")


def _check_image_size(pipe, height: int | None, width: int | None) -> None:
    """Sizes must be positive multiples of the VAE's downscaling factor (checked right after the load)."""
    from .errors import EraseKitError

    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    for name, v in (("height", height), ("width", width)):
        if v is not None and (v <= 0 or v % factor):
            fix = max(factor, round(v / factor) * factor)
            raise EraseKitError(
                f"{name} must be a positive multiple of {factor} (the VAE's downscaling factor), got {v}; try {fix}"
            )


def _load_edit_file(path: str):
    """Parse an edit file (or an erasekit LoRA export) before the model load: a bad file fails in milliseconds."""
    from .io import read_edit

    return read_edit(path)


# ---------------------------------------------------------------- commands
def cmd_methods(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .methods import get_method, list_methods

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
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                t.add_row(
                    shown("--" + f.name.replace("_", "-")), shown(repr(default)), shown(f.metadata.get("help", ""))
                )
            console.print(t)
    return 0


def cmd_erase(args) -> int:
    from ._atomic import check_writable
    from .api import fit, plan_erase

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


def _print_summary(edit, show_layers: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    s = edit.summary()
    # every value below comes from the file (concepts, paths, stats): shown() keeps it from acting as markup or terminal control
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
        f"{s['bytes']:,}  ({100 * s['bytes'] / max(s['dense_fp32_bytes'], 1):.1f} % of dense fp32 {s['dense_fp32_bytes']:,})",
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


def cmd_generate(args) -> int:
    from ._atomic import atomic_path, check_writable
    from .generate import generate, image_grid

    _check_model_options(args)
    _check_positive(args, "steps", "height", "width")
    _check_finite(args, "guidance")
    check_writable(args.out, "image grid", "grid.png")
    edit = _load_edit_file(args.edit) if args.edit else None
    pipe = _load(args)
    _check_image_size(pipe, args.height, args.width)
    prompts, seeds = args.prompt, args.seed or [0]
    kw = dict(steps=args.steps, guidance=args.guidance, height=args.height, width=args.width)
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


def cmd_demo(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .demo import run_demo

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
        title=f"erasekit demo: {shown(res.method)} erases '{shown(res.concept)}' from {shown(args.model)} (same seeds, tinyworld judge)"
    )
    t.add_column("measure")
    t.add_column("value", justify="right")
    for a, b in res.table_rows():
        t.add_row(shown(a), shown(b))
    Console().print(t)
    _info(f"grid: {res.grid_path}\npage: {res.html_path}")
    return 0


EXPORT_OPTIONS = ("save_dtype", "rank", "kohya_names", "layout")  # passed on when given; the format refuses others


def cmd_export(args) -> int:
    from .export import ExportError, export, get_format
    from .export._common import check_output, resolve_save_dtype

    _check_model_options(args)
    fmt = get_format(args.format)
    options = fmt.accept({k: getattr(args, k) for k in EXPORT_OPTIONS})  # refused before the (slow) model load
    if fmt.kind == "edit" and not args.edit:
        raise ExportError(f"--format {fmt.name} writes an edit: give --edit FILE")
    if args.rank is not None and args.rank < 1:
        raise ExportError(f"--rank must be >= 1, got {args.rank}")
    resolve_save_dtype(args.save_dtype)
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


# ------------------------------------------------------------- evaluation
TINYWORLD_STEPS = (
    10  # validity at 10 vs 20 steps (python -m erasekit.tinyworld.validity --steps 10): every target holds
)


def _eval_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--suite",
        default="target,paraphrase,adversarial,retain,general",
        help="comma-separated suite kinds: target, paraphrase, adversarial, retain, general",
    )
    p.add_argument("--judge", default="tinyworld", help="tinyworld, nudenet or clip:PATH (a local CLIP model folder)")
    p.add_argument("--threshold", type=float, default=None, help="NudeNet detection threshold (default 0.6)")
    p.add_argument(
        "--attack",
        default="ring-a-bell,token-search",
        help="attacks for the adversarial suite: ring-a-bell, token-search",
    )
    p.add_argument(
        "--eta",
        default="1,2,3",
        help="ring-a-bell: strengths η of the concept vector (a curve; the headline η is the "
        "strongest at which the unedited model keeps ≥ 90 %% of its prompted attributes)",
    )
    p.add_argument(
        "--search-steps", type=int, default=12, help="token-search: coordinate steps per prompt (32 candidates each)"
    )
    p.add_argument("--n", type=int, default=16, help="tinyworld: items per suite")
    p.add_argument("--seeds", type=int, default=2, help="other models: seeds per templated prompt")
    p.add_argument("--seed", type=int, default=0, help="first seed; also seeds the bootstrap and the attacks")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps (tinyworld default 10 DPM-Solver++ steps, where its validity table still holds; else the pipeline's)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale (tinyworld default 5, else the pipeline's; a prompt file's own guidance wins)",
    )
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32, help="images per pipeline call")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the confidence intervals")
    p.add_argument(
        "--cache",
        default=None,
        help="image cache folder (default ~/.cache/erasekit; unedited images are shared across runs)",
    )
    p.add_argument("--out", required=True, help="folder for results.json and report.html")
    p.add_argument("--no-progress", action="store_true")


def _parse_etas(text) -> tuple[float, ...]:
    from .evaluate.attacks import parse_etas

    return parse_etas(text)  # its ConceptError names the flag, the bad text and an example


def _check_eval_args(args) -> None:
    from ._atomic import check_writable

    _check_model_options(args)
    _check_positive(args, "steps", "height", "width", "n", "seeds", "batch_size", "search_steps", "bootstrap")
    _check_finite(args, "guidance", "threshold")
    args.eta = _parse_etas(args.eta)  # before the model load: a bad --eta list is one line, not a traceback later
    check_writable(Path(args.out) / "results.json", "results file")


def _eval_setup(args):
    """(pipeline, judge, Plan, GenerationSettings) from the common evaluation options."""
    from accelerate import PartialState

    from .evaluate.judges import make_judge
    from .evaluate.plan import Plan, parse_kinds
    from .evaluate.runner import GenerationSettings

    _check_eval_args(args)
    state = PartialState(cpu=args.device == "cpu")
    if args.device.startswith("cuda") and state.num_processes > 1:
        args.device = str(state.device)  # one GPU per process under accelerate launch
    plan = Plan(
        kinds=parse_kinds(args.suite),
        n=args.n,
        seeds=args.seeds,
        seed=args.seed,
        attacks=parse_kinds(args.attack),
        etas=args.eta,
        search_steps=args.search_steps,
    )
    judge = make_judge(
        args.judge, device=args.device, **({"threshold": args.threshold} if args.threshold is not None else {})
    )
    tiny = is_tinyworld(args.model)
    settings = GenerationSettings(
        steps=args.steps if args.steps is not None else (TINYWORLD_STEPS if tiny else None),
        guidance=args.guidance if args.guidance is not None else (5.0 if tiny else None),
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
    )
    return _load(args), judge, plan, settings


def _eval_finish(args, results, title: str, extra: dict | None = None) -> int:
    from .evaluate.report import print_table, write_html, write_json

    if results is None:  # not the main process
        return 0
    out = Path(args.out)
    write_json(results, out / "results.json")
    page = write_html(results, out / "report.html", title=title)
    print_table(results, title=title, extra=extra)
    t = results.timing
    _info(
        f"{t['images_total']} images ({t['images_generated']} generated, {t['images_from_cache']} from cache) in {t['total_seconds']:.1f}s"
        f"\nresults: {out / 'results.json'}\nreport:  {page}"
    )
    return 0


def cmd_evaluate(args) -> int:
    from .concepts import ConceptSet
    from .evaluate.plan import make_study
    from .evaluate.runner import evaluate
    from .evaluate.suites import load_prompts

    edit_files = [_load_edit_file(path) for path in args.edit]  # every file parsed before the model load
    pipe, judge, plan, settings = _eval_setup(args)
    extra = (
        [
            load_prompts(
                args.prompts,
                kind=args.prompts_kind,
                sha256=args.sha256,
                seed=args.seed,
                limit=args.limit,
                concepts=args.prompts_concept.split(",") if args.prompts_concept else None,
            )
        ]
        if args.prompts
        else []
    )
    groups: dict[str, tuple[ConceptSet, dict]] = {}
    for path, edit in zip(args.edit, edit_files):
        edit.check_compatible(pipe)
        cs = ConceptSet.from_dict(edit.concepts)
        name = ", ".join(cs.erase)
        runs = groups.setdefault(name, (cs, {}))[1]
        runs[edit.method if edit.method not in runs else Path(path).stem] = edit
    studies = [
        make_study(name, cs, edits, plan, tinyworld=is_tinyworld(args.model), extra=extra)
        for name, (cs, edits) in groups.items()
    ]
    for st in studies:
        absent = [k for k in plan.kinds if k != "adversarial" and not any(s.kind == k for s in st.suites)]
        if absent:
            _info(
                f"note: study {st.name!r} has no {', '.join(absent)} suite (give prompts with --prompts FILE --prompts-kind KIND)"
            )
    results = evaluate(
        pipe,
        studies,
        judge,
        out_dir=args.out,
        settings=settings,
        cache_dir=args.cache,
        seed=args.seed,
        n_boot=args.bootstrap,
        progress=not args.no_progress,
    )
    return _eval_finish(args, results, f"erasekit evaluate: {', '.join(groups)}")


def cmd_bench(args) -> int:
    from .api import plan_erase
    from .concepts import ConceptSet
    from .evaluate.bench import fit_edits, parse_methods, parse_options, split_concepts, tinyworld_concept_set
    from .evaluate.plan import make_study, parse_kinds
    from .evaluate.runner import evaluate

    methods = parse_methods(args.methods)  # label -> registered method; unknown ones fail before anything slow
    concepts = parse_kinds(args.concepts)  # each entry is one edit: CONCEPT or A+B (several at once)
    tiny = is_tinyworld(args.model)
    if tiny:
        sets = {c: tinyworld_concept_set(c) for c in concepts}
    else:
        sets = {
            c: ConceptSet(erase=split_concepts(c), kind=args.kind, preserve=tuple(args.preserve or ()))
            for c in concepts
        }
    user = parse_options(args.set or [], methods)
    source = _defaults_source(args)
    for label, method in methods.items():  # every option checked before the model load
        plan_erase(args.model, method, next(iter(sets.values())), defaults=source, **user[label])
    pipe, judge, plan, settings = _eval_setup(args)
    edits, seconds = fit_edits(
        pipe, methods, sets, user, Path(args.out), progress=not args.no_progress, defaults=source
    )
    studies = [make_study(c, sets[c], edits[c], plan, tinyworld=tiny) for c in concepts]
    results = evaluate(
        pipe,
        studies,
        judge,
        out_dir=args.out,
        settings=settings,
        cache_dir=args.cache,
        seed=args.seed,
        n_boot=args.bootstrap,
        progress=not args.no_progress,
    )
    if results is not None:
        results.config["fit_seconds"] = {f"{s}/{m}": v for (s, m), v in seconds.items()}
        results.config["defaults"] = {label: edits[concepts[0]][label].stats["defaults"] for label in methods}
    extra = {
        "fit s": {k: f"{v:.1f}" for k, v in seconds.items()},
        "bytes": {(s, m): f"{e.nbytes:,}" for s, d in edits.items() for m, e in d.items()},
    }
    return _eval_finish(
        args, results, f"erasekit bench on {args.model}: {', '.join(methods)} × {', '.join(concepts)}", extra
    )


# ------------------------------------------------------------------- parser
def build_parser(erase_method: str = "uce") -> argparse.ArgumentParser:
    """The command's parser; `erase` carries the options of ``erase_method`` only (:func:`main` reads ``--method`` first)."""
    import erasekit

    p = argparse.ArgumentParser(
        prog="erasekit", description="Erase concepts from diffusion models by editing cross-attention."
    )
    p.add_argument("--version", action="version", version=f"erasekit {erasekit.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("methods", help="list registered methods")
    m.add_argument("-v", "--verbose", action="store_true", help="also list every method's options")
    m.set_defaults(func=cmd_methods)

    e = sub.add_parser(
        "erase",
        help="fit an edit and save it as a .safetensors edit file",
        allow_abbrev=False,
        description="Fit an edit. The options after the common ones are those of --method "
        "(`erasekit erase --method M --help` lists M's).",
    )
    _add_model_options(e)
    e.add_argument("--method", default="uce", help="registered method (see `erasekit methods`); its options follow")
    e.add_argument("--erase", action="append", required=True, metavar="CONCEPT", help="concept to erase (repeatable)")
    e.add_argument("--kind", default="style", help="style, object, person or nsfw (templates, default guide)")
    e.add_argument("--guide", action="append", metavar="TEXT", help="guide concept: once for all, or once per --erase")
    e.add_argument("--preserve", action="append", metavar="CONCEPT", help="concept to preserve (repeatable)")
    e.add_argument(
        "--templates",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="expand concepts with the kind's prompt templates (default: the model's default, see erasekit/defaults.py)",
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

    i = sub.add_parser("inspect", help="show what an edit file contains")
    i.add_argument("file")
    i.add_argument("--layers", action="store_true", help="per-layer table")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_inspect)

    g = sub.add_parser("generate", help="generate unedited | edited images side by side, same seeds")
    _add_model_options(g)
    g.add_argument("--edit", default=None, help="edit file to compare against the unedited model")
    g.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    g.add_argument("--seed", action="append", type=int, help="seed (repeatable; default 0)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (pipeline default if omitted)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--out", default="grid.png", help="PNG grid to write")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser(
        "demo", help="erase a shape from the bundled tinyworld model, judge before/after, write a grid and a page"
    )
    d.add_argument("--concept", default="circle", help="tinyworld shape to erase (default circle)")
    d.add_argument(
        "--model",
        default="tinyworld",
        choices=("tinyworld", "tinyworld-xl"),
        help="bundled model: tinyworld (SD 1.x architecture) or tinyworld-xl (SDXL architecture)",
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

    ev = sub.add_parser(
        "evaluate",
        help="evaluate edit files: suites, judge, metrics with confidence intervals, results.json + report.html",
    )
    _add_model_options(ev)
    ev.add_argument(
        "--edit", action="append", required=True, help="edit file (repeatable: methods are compared on the same seeds)"
    )
    ev.add_argument(
        "--prompts",
        default=None,
        help="extra prompt file or URL (I2P / ESD / UnlearnDiffAtk CSV, or .txt one per line)",
    )
    ev.add_argument("--sha256", default=None, help="required checksum when --prompts is a URL")
    ev.add_argument("--prompts-kind", default="target", help="suite kind of the --prompts file (default target)")
    ev.add_argument(
        "--prompts-concept", default=None, help="concept label(s) for every prompt of the file, e.g. nudity"
    )
    ev.add_argument("--limit", type=int, default=None, help="use the first N prompts of the file")
    _eval_common(ev)
    ev.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="erase each concept with each method, evaluate all, one table and one report page")
    _add_model_options(b, required=False)
    b.add_argument(
        "--methods",
        default=None,
        help="comma-separated registered methods (default: all, see `erasekit methods`); "
        "LABEL=METHOD adds a variant, e.g. --methods pure,pure_text=pure --set pure_text.basis=text",
    )
    b.add_argument(
        "--concepts",
        default="circle,red,striped",
        help="comma-separated entries, each one edit: a concept, or A+B to erase several in one edit (e.g. circle,circle+red)",
    )
    b.add_argument("--kind", default="object", help="other models: concept kind (style, object, person, nsfw)")
    b.add_argument("--preserve", action="append", help="other models: concept to preserve (repeatable)")
    b.add_argument(
        "--set",
        action="append",
        metavar="METHOD.OPTION=VALUE",
        help="method option, e.g. space.target_sparsity=0.85 "
        "(also METHOD.templates=true); options given here win over the per-model defaults (erasekit/defaults.py)",
    )
    b.add_argument(
        "--published-defaults",
        action="store_true",
        help="start every method from the papers' settings instead of erasekit's per-model defaults",
    )
    _eval_common(b)
    b.set_defaults(func=cmd_bench)

    from .evaluate.claims_run import add_command as add_claims_command

    add_claims_command(sub)  # `erasekit claims`: the founding papers' claims measured on the bundled models

    from .export import list_formats

    formats = list_formats()

    def takers(option: str) -> str:
        return " / ".join(n for n, f in formats.items() if option in f.options)

    x = sub.add_parser(
        "export",
        help="write the edit where people run models: LoRA (diffusers / kohya), .diff, a merged diffusers folder, "
        "or an A1111 / ComfyUI single file (SD 1.x / 2.x / XL)",
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
        help="float32, float16 or bfloat16 for the written tensors (default: float32 for "
        "edit formats, the model's --dtype for whole models)",
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
        print(f"erasekit: error: {plain(e)}", file=sys.stderr)  # messages quote user text: shown escaped
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
    from .text import check_user_text

    for name in _TEXT_ARGUMENTS:
        value = getattr(args, name, None)
        for item in [value] if isinstance(value, str) else value or ():
            check_user_text("--" + name.replace("_", "-"), item)


def _erase_method(argv: list[str]) -> str:
    """Stage one of `erase`'s parse: its ``--method`` (registered; default uce), whose options stage two offers."""
    from .methods import get_method

    command = next((a for a in argv if not a.startswith("-")), None)
    if command != "erase":
        return "uce"
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--method", default="uce")
    known, _ = pre.parse_known_args(argv[argv.index("erase") + 1 :])
    return get_method(known.method).name  # MethodError naming the registered methods


def _refuse_unknown(parser: argparse.ArgumentParser, args, rest: list[str]) -> None:
    """Arguments no parser took: another method's options are refused naming this method's; the rest as argparse does."""
    from .methods.base import _REGISTRY, not_an_option

    if getattr(args, "command", None) == "erase":
        every = {f.name for cls in _REGISTRY.values() for f in dataclasses.fields(cls.config_class)}
        names = [a[2:].split("=")[0].replace("-", "_") for a in rest if a.startswith("--")]
        others = [n for n in names if n in every]
        if others:
            raise not_an_option(args.method, others)
    parser.error(f"unrecognized arguments: {' '.join(rest)}")


if __name__ == "__main__":
    sys.exit(main())
