"""`erasekit evaluate`: suites, judge, metrics with intervals, results.json and report.html."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.record import describe_model, is_tinyworld
from ._common import (
    _add_model_options,
    _check_finite,
    _check_model_options,
    _check_positive,
    _info,
    _load,
    _load_edit_file,
)


def _eval_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--suite",
        default="target,paraphrase,adversarial,retain,general",
        help="comma-separated suite kinds: target, paraphrase, adversarial, retain, general",
    )
    p.add_argument(
        "--judge",
        default="tinyworld",
        help="tinyworld, nudenet, clip:PATH (a local CLIP folder), vlm:PATH or aesthetics:MLP,clip=PATH; options as "
        "NAME:PATH,key=value (erasekit/evaluate/judges)",
    )
    p.add_argument("--threshold", type=float, default=None, help="NudeNet detection threshold (default 0.6)")
    p.add_argument(
        "--attack",
        default="ring-a-bell,token-search",
        help="comma-separated registered attacks for the adversarial suite (see `erasekit attacks`), "
        "e.g. ring-a-bell,token-search,nbp,uda,p4d-n,p4d-k,cce,mma",
    )
    p.add_argument(
        "--budget",
        default="default",
        choices=("default", "paper"),
        help="attack budgets: 'default' (small, runs on a CPU) or 'paper' (the papers' budgets, for a GPU)",
    )
    p.add_argument(
        "--attack-set",
        action="append",
        metavar="ATTACK.OPTION=VALUE",
        help="an attack option on top of the budget, e.g. uda.steps=20 or nbp.etas=1,1.5 (repeatable)",
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
        help="denoising steps (bundled models: their own, tinyworld / tinyworld-xl 10 DPM-Solver++ steps, where "
        "their validity tables still hold, tinyworld-flux 20 Euler steps; else the pipeline's)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale (bundled models 5, true CFG on tinyworld-flux; else the pipeline's; a prompt file's "
        "own guidance wins)",
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
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU intra-op threads (torch.set_num_threads; default: torch's). Pixels depend on it in the last "
        "bits, so pin it to compare runs; recorded in results.json (config.threads, config.torch_threads)",
    )


def _parse_etas(text) -> tuple[float, ...]:
    from ..evaluate.attacks import parse_etas

    return parse_etas(text)  # its ConceptError names the flag, the bad text and an example


def _parse_attack_args(args) -> None:
    """--attack, --budget and --attack-set as registered names and typed options (refused here, one line each)."""
    from ..evaluate.attacks import parse_attack_options, parse_attacks

    if isinstance(args.attack, str):
        args.attack = parse_attacks(args.attack)
    if not isinstance(getattr(args, "attack_set", None), dict):
        args.attack_set = parse_attack_options(args.attack_set or [], args.attack)
    _note_paper_budget_on_cpu(args)


def _note_paper_budget_on_cpu(args) -> None:
    """``--budget paper`` without a GPU: say so before the run (the papers' budgets take hours per attack on a CPU),
    naming the attacks whose paper budget differs from their CPU default; the run goes on as asked."""
    from ..evaluate.attacks import get_attack

    if args.budget != "paper" or not args.device.startswith("cpu"):
        return
    configs = {name: get_attack(name).config_class for name in args.attack or ()}
    heavy = [name for name, cfg in configs.items() if cfg.defaults("paper") != cfg.defaults("default")]
    if heavy:
        _info(
            f"note: --budget paper runs the papers' budgets for {', '.join(heavy)} (`erasekit attacks` lists them), "
            "meant for --device cuda: on a CPU expect hours per attack; the default budget runs on a CPU in minutes"
        )


def apply_threads(args) -> None:
    """``--threads N``: refuse N < 1 in one line, then set torch's intra-op thread count for the whole run."""
    n = getattr(args, "threads", None)
    if n is None:
        return
    _check_positive(args, "threads")
    import torch

    torch.set_num_threads(int(n))


def _check_eval_args(args) -> None:
    from .._atomic import check_writable

    _check_model_options(args)
    _check_positive(args, "steps", "height", "width", "n", "seeds", "batch_size", "search_steps", "bootstrap")
    _check_finite(args, "guidance", "threshold")
    apply_threads(args)
    args.eta = _parse_etas(args.eta)  # before the model load: a bad --eta list is one line, not a traceback later
    _parse_attack_args(args)
    check_writable(Path(args.out) / "results.json", "results file")


def _eval_setup(args):
    """(pipeline, judge, Plan, GenerationSettings) from the common evaluation options."""
    from accelerate import PartialState

    from ..evaluate.judges import make_judge
    from ..evaluate.plan import Plan, parse_kinds
    from ..evaluate.runner import GenerationSettings

    _check_eval_args(args)
    state = PartialState(cpu=args.device == "cpu")
    if args.device.startswith("cuda") and state.num_processes > 1:
        args.device = str(state.device)  # one GPU per process under accelerate launch
    plan = Plan(
        kinds=parse_kinds(args.suite),
        n=args.n,
        seeds=args.seeds,
        seed=args.seed,
        attacks=args.attack,
        etas=args.eta,
        search_steps=args.search_steps,
        budget=args.budget,
        attack_options=args.attack_set,
    )
    judge = make_judge(
        args.judge, device=args.device, **({"threshold": args.threshold} if args.threshold is not None else {})
    )
    own = describe_model(args.model).generation  # a bundled model's settings (tinyworld-flux: its GENERATE_KW)
    given = {"steps": args.steps, "guidance": args.guidance, "height": args.height, "width": args.width}
    settings = GenerationSettings(
        **{k: v if v is not None else own.get(k) for k, v in given.items()}, batch_size=args.batch_size
    )
    return _load(args), judge, plan, settings


def _eval_finish(args, results, title: str, extra: dict | None = None) -> int:
    from ..evaluate.report import print_table, write_html, write_json

    if results is None:  # not the main process
        return 0
    out = Path(args.out)
    results.config["threads"] = getattr(args, "threads", None)  # as asked (None: torch's default); see torch_threads
    write_json(results, out / "results.json")
    page = write_html(results, out / "report.html", title=title)
    print_table(results, title=title, extra=extra)
    t = results.timing
    _info(
        f"{t['images_total']} images ({t['images_generated']} generated, {t['images_from_cache']} from cache) "
        f"in {t['total_seconds']:.1f}s"
        f"\nresults: {out / 'results.json'}\nreport:  {page}"
    )
    return 0


def cmd_evaluate(args) -> int:
    from ..concepts import ConceptSet
    from ..evaluate.plan import make_study
    from ..evaluate.runner import evaluate
    from ..evaluate.suites import load_prompts

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
                f"note: study {st.name!r} has no {', '.join(absent)} suite "
                "(give prompts with --prompts FILE --prompts-kind KIND)"
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


def add_parser(sub) -> None:
    """Register `evaluate`."""
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
