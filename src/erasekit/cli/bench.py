"""`erasekit bench` (methods × concepts: one table and one page; `--protocol` runs a paper's protocol)
and `erasekit claims`."""

from __future__ import annotations

from pathlib import Path

from ..models.record import is_tinyworld
from ._common import (
    _add_model_options,
)
from .erase import _defaults_source
from .evaluate import _eval_common, _eval_finish, _eval_setup, apply_threads


def cmd_bench(args) -> int:
    if getattr(args, "protocol", None):
        from ..evaluate.protocols import run_protocol

        apply_threads(args)  # the protocol run records torch's count in its evaluation's config.torch_threads

        return run_protocol(args)
    from ..api import plan_erase
    from ..concepts import ConceptSet
    from ..evaluate.bench import fit_edits, parse_methods, parse_options, split_concepts, tinyworld_concept_set
    from ..evaluate.plan import make_study, parse_kinds
    from ..evaluate.runner import evaluate

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


def add_parser(sub) -> None:
    """Register `bench` and `claims`."""
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
        help="comma-separated entries, each one edit: a concept, or A+B to erase several in one edit "
        "(e.g. circle,circle+red)",
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
    from ..evaluate.protocols import add_arguments as add_protocol_arguments

    add_protocol_arguments(b)  # --protocol NAME: a paper's protocol, declared as data (evaluate/protocols/)
    b.set_defaults(func=cmd_bench)

    from ..evaluate.claims_run import add_command as add_claims_command

    add_claims_command(sub)  # `erasekit claims`: the founding papers' claims measured on the bundled models
