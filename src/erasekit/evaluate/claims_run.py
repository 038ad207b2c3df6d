"""``erasekit claims``: measure every founding-paper claim on the bundled models and write the claims table.

    erasekit claims --out claims-out [--n 96] [--steps 10] [--models tinyworld,tinyworld-xl]
    erasekit claims --small --out /tmp/claims-small          # the default test's size (minutes)

On each model (tinyworld, and tinyworld-xl when it is installed) it fits every registered method
(with the project's tinyworld calibrations, :data:`LABELS`), evaluates them on the same prompts
and seeds (target / paraphrase / retain / general suites, the calibrated concept-vector attack
curve, the token search), adds a SPACE sparsity sweep and a many-concepts study, times the
pipeline with each edit applied, and writes

* ``claims.md``   one row per claim: the claim, its source, the measurement, the numbers with
                  intervals and paired tests, and a verdict by the rule stated in the row
                  (:mod:`~erasekit.evaluate.claims`);
* ``results.json`` / ``report.html`` (per model) with the claims section and its plots;
* ``claims.json`` the rows, machine-readable.

Resumable: fitted edits are saved under ``OUT/edits`` (with their fit seconds in
``OUT/fits.json``, :class:`~erasekit.evaluate.cache.EditStore`) and reloaded; images are cached under ``OUT/cache``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .claims import (
    Claim,
    Measured,
    claims_markdown,
    find,
    fmt_cmp,
    judge_claims,
    not_installed,
)

# What each label measures: (source of the defaults, options on top). "erasekit" = the per-model defaults
# of erasekit/defaults.py (chosen on development concepts), "published" = the papers' settings.
LABELS: dict[str, tuple[str, dict]] = {
    "uce": ("published", {}),  # UCE as published: last concept token, no templates
    "uce_all": ("erasekit", {"preset": "erasekit"}),  # UCE with SPACE's templates and token positions: the dense twin
    "space": ("erasekit", {"target_sparsity": 0.85}),
    "pure": ("erasekit", {}),  # the paired-centred reconstruction (issue 13)
    # PURE's own text basis, as the PURE ablation's text_tail variant (tail tokens; the last token alone erases
    # nothing here)
    "pure_text": (
        "published",
        {"basis": "text", "token": "tail", "templates": True, "forget_energy": 0.95, "retain_energy": 0.5},
    ),
    "ace": ("erasekit", {"train_steps": 40}),
    "rece": ("erasekit", {}),
    "speed": ("erasekit", {}),
    "cure": ("erasekit", {}),
    "mace": ("erasekit", {}),
}
METHOD_OF = {"uce_all": "uce", "pure_text": "pure"}
SMALL_OPTIONS = {"ace": {"train_steps": 2, "adv_steps": 1, "pool_steps": 2}, "pure": {"steps": 2}}


def label_options(label: str) -> tuple[str, dict]:
    """(defaults source, options on top) of ``label``: what :func:`erasekit.erase` is called with."""
    source, options = LABELS.get(label, ("erasekit", {}))
    return source, dict(options)


# ----------------------------------------------------------------------------- measurement
def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} on {torch.get_num_threads()} thread(s)"


def time_inference(pipe, edits: dict, steps: int, repeats: int, batch: int = 4) -> dict[str, float]:
    """Median seconds of one pipeline call (``batch`` prompts) per state, unedited and each edit, interleaved."""
    import numpy as np
    import torch

    from ..models.families import identify

    prompts = ["a striped red circle"] * batch
    times: dict[str, list[float]] = {"unedited": [], **{k: [] for k in edits}}
    guided = identify(pipe).generation_kwargs(pipe, 5.0, batch)  # the family's guidance at scale 5

    def call():
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        t0 = time.perf_counter()
        pipe(prompt=prompts, num_inference_steps=steps, generator=gens, output_type="np", **guided)
        return time.perf_counter() - t0

    call()  # warm-up
    for _ in range(repeats):
        times["unedited"].append(call())
        for label, e in edits.items():
            e.apply(pipe)
            try:
                times[label].append(call())
            finally:
                e.revert(pipe)
    return {k: float(np.median(v)) for k, v in times.items()}


def run_model(model: str, args, store, hw: str, xl_summary: dict | None):
    """Fit (or reload from ``store``), evaluate and time every label on ``model``; returns (results, rows, extra)."""
    from ..api import plan_erase
    from ..concepts import ConceptSet
    from ..methods import list_methods
    from ..models.loading import load_pipeline
    from ..tinyworld import world
    from .bench import tinyworld_concept_set
    from .generate import GenerationSettings
    from .judges import make_judge
    from .plan import Plan, make_study
    from .runner import evaluate

    pipe = load_pipeline(model)
    judge = make_judge("tinyworld")
    registered = set(list_methods())
    labels = [lb for lb in args.methods.split(",") if METHOD_OF.get(lb, lb) in registered]
    srcs = {lb: label_options(lb)[0] for lb in labels}
    opts = {
        lb: {**label_options(lb)[1], **(SMALL_OPTIONS.get(METHOD_OF.get(lb, lb), {}) if args.small else {})}
        for lb in labels
    }
    progress = not args.no_progress

    def fit(study: str, label: str, cs, options: dict, of: str | None = None):
        """``label``'s edit (``of``: a variant of that label, with its method and defaults source)."""
        base = of or label
        plan = plan_erase(pipe, METHOD_OF.get(base, base), cs, defaults=srcs[base], **options)
        return store.fit_or_load(pipe, (model, study, label), plan, progress=progress)

    concept = args.concept
    cs = tinyworld_concept_set(concept)
    plan = Plan(
        n=args.n,
        seed=0,
        etas=args.eta,
        search_steps=args.search_steps,
        search_candidates=args.search_candidates,
        search_prompts=args.search_prompts,
    )
    edits = {lb: fit(concept, lb, cs, opts[lb]) for lb in labels}
    main = concept
    studies = [make_study(main, cs, edits, plan, tinyworld=True)]
    # SPACE sparsity sweep (target and general suites only)
    sweep: dict[float, str] = {}
    if "space" in labels:
        sweep_edits = {}
        for s in args.sparsity:
            lb = f"space_s{round(100 * s)}"
            sweep_edits[lb] = fit(f"{concept}-sweep", lb, cs, {**opts["space"], "target_sparsity": s}, of="space")
            sweep[s] = lb
        studies.append(
            make_study(
                f"{concept}: SPACE sparsity sweep",
                cs,
                sweep_edits,
                Plan(kinds=("target", "general"), n=args.n),
                tinyworld=True,
            )
        )
    # many concepts erased at once (shapes)
    many_labels = [lb for lb in ("ace", "uce_all", "mace") if lb in labels]
    many_names: dict[int, str] = {}
    shapes = [concept] + [v for v in world.SHAPES if v != concept]
    for k in args.counts:
        if k == 1 or not many_labels:
            continue
        erase = tuple(shapes[:k])
        csk = ConceptSet(erase=erase, kind="object", preserve=tuple(v for v in world.SHAPES if v not in erase))
        name = "+".join(erase)
        mk = {lb: fit(name, lb, csk, opts[lb]) for lb in many_labels}
        studies.append(make_study(name, csk, mk, Plan(kinds=("target", "retain"), n=args.n), tinyworld=True))
        many_names[k] = name
    settings = GenerationSettings(steps=args.steps, guidance=5.0, batch_size=args.batch_size)
    t0 = time.perf_counter()
    res = evaluate(
        pipe,
        studies,
        judge,
        out_dir=store.root / model,
        settings=settings,
        cache_dir=store.root / "cache",
        n_boot=args.bootstrap,
        progress=progress,
    )
    eval_s = time.perf_counter() - t0
    assert res is not None, "the claims run is one process (evaluate returns None only on accelerate's others)"
    infer = time_inference(pipe, {lb: edits[lb] for lb in labels}, args.steps, args.repeats)

    many: dict[str, list] = {}
    for lb in many_labels:
        pts = []
        for k in args.counts:
            st = main if k == 1 else many_names.get(k)
            r = res.studies.get(st, {}).get(lb) if st else None
            if r is not None:
                pts.append({"k": k, "erase": r.metrics["erase rate"], "retain": r.metrics["retain rate"]})
        many[lb] = pts
    sweep_pts = []
    if sweep:
        srun = res.studies[f"{concept}: SPACE sparsity sweep"]
        for lb in sweep.values():
            r = srun[lb]
            sweep_pts.append(
                (r.edit_summary["sparsity"], r.metrics["erase rate"], r.metrics.get("drift: judge agreement"))
            )
    rows = judge_claims(Measured(model, res, main, many, store.fits, infer, hw, xl_summary))
    return res, rows, {"many": many, "sweep": sweep_pts, "infer": infer, "eval_seconds": eval_s, "labels": labels}


# ----------------------------------------------------------------------------- report
def claims_section(rows: list[Claim], extra: dict, out: Path, model: str) -> str:
    """The report page's claims table and its plots (SPACE sparsity sweep, per-concept rates vs #concepts)."""
    import html

    from . import plots
    from .report import figure_html

    e = html.escape
    parts = [
        (
            "<h2>Claims</h2><table class='paired'><tr><th>id</th><th>claim</th><th>numbers</th><th>verdict</th>"
            "<th>rule</th></tr>"
        )
    ]
    for r in rows:
        parts.append(
            f"<tr><td>{e(r.id)}</td><td style='text-align:left'>{e(r.claim)}<br>"
            f"<small>{e(r.source)}</small></td>"
            f"<td style='text-align:left;white-space:normal'>{e(r.numbers)}</td><td><b>{e(r.verdict)}</b><br>"
            f"<small>{e(r.why)}</small></td>"
            f"<td style='text-align:left;white-space:normal'><small>{e(r.rule)}</small></td></tr>"
        )
    parts.append("</table>")
    figs = []
    folder = out / model / "plots"
    if extra["sweep"]:
        sp, er, dr = zip(*extra["sweep"])
        if all(d is not None for d in dr):
            figs.append(
                figure_html(
                    plots.sparsity_sweep(sp, er, dr, f"{model}: SPACE sparsity vs erase vs drift"),
                    "space-sparsity-sweep",
                    folder,
                    "SPACE sparsity sweep",
                )
            )
    series = {}
    counts: list[int] = []
    for lb, pts in extra["many"].items():
        if len(pts) >= 2:
            counts = [p["k"] for p in pts]
            series[f"{lb}: erase"] = [p["erase"] for p in pts]
            series[f"{lb}: retain"] = [p["retain"] for p in pts]
    if series:
        figs.append(
            figure_html(
                plots.concepts_curve(counts, series, f"{model}: per-concept rates vs #concepts"),
                "concepts-curve",
                folder,
                "per-concept rates vs number of concepts",
            )
        )
    if figs:
        parts.append("<div class='figs'>" + "".join(figs) + "</div>")
    return "".join(parts)


# ----------------------------------------------------------------------------- the command
def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ap.add_argument("--out", required=True, type=Path, help="output folder (edits, image cache, results, claims.md)")
    ap.add_argument(
        "--models",
        default="tinyworld,tinyworld-xl",
        help="models to run on (missing ones are reported as not measurable)",
    )
    ap.add_argument(
        "--methods",
        default="uce,uce_all,space,pure,pure_text,ace,rece,speed,cure,mace",
        help="method labels (unregistered ones are skipped and their claims marked not measurable)",
    )
    ap.add_argument("--concept", default="circle", help="the tinyworld concept of the main study")
    ap.add_argument("--n", type=int, default=96, help="prompts per suite (≥ 96 for ±10-point intervals)")
    ap.add_argument(
        "--steps", type=int, default=10, help="DPM-Solver++ steps per image (tinyworld validity holds at 10)"
    )
    ap.add_argument("--eta", default="1,2,3", help="concept-vector strengths")
    ap.add_argument("--search-steps", type=int, default=12)
    ap.add_argument("--search-candidates", type=int, default=32)
    ap.add_argument("--search-prompts", type=int, default=16, help="target prompts the token search attacks")
    ap.add_argument("--sparsity", default="0.5,0.7,0.85,0.95", help="SPACE sweep targets")
    ap.add_argument("--counts", default="1,2,4", help="numbers of shapes erased at once (many-concepts study)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5, help="timed pipeline calls per state (inference-cost claim)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--small", action="store_true", help="tiny sizes for the default test run (numbers mean nothing)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def add_command(sub) -> None:
    """Register ``claims`` on the ``erasekit`` command's subparsers."""
    p = sub.add_parser("claims", help="measure the founding papers' claims on the bundled models: claims.md + reports")
    add_arguments(p).set_defaults(func=lambda args: run(_finish_args(args)))


def parse_args(argv=None, prog: str = "erasekit claims") -> argparse.Namespace:
    ap = add_arguments(argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0]))
    return _finish_args(ap.parse_args(argv))


def _finish_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.small:
        args.n, args.steps, args.eta = 2, 2, "1"
        args.search_steps, args.search_candidates, args.search_prompts = 1, 4, 1
        args.sparsity, args.counts, args.bootstrap, args.repeats = "0.5,0.85", "1,2", 200, 1
        args.methods = "uce,uce_all,space,pure,pure_text,ace"
    args.sparsity = [float(x) for x in args.sparsity.split(",")]
    args.counts = sorted({int(x) for x in args.counts.split(",")} | {1})
    return args


def main(argv=None, *, command: str = "erasekit claims") -> int:
    """Parse ``argv`` and run; ``command`` is how the table's header names the invocation."""
    args = parse_args(argv, prog=command)
    args.command_line = f"{command} " + " ".join(sys.argv[1:] if argv is None else argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from .._version import __version__
    from ..models.loading import load_pipeline
    from .cache import EditStore
    from .report import write_html, write_json

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    store = EditStore(out)
    hw = hardware()
    t0 = time.perf_counter()
    all_rows: list[Claim] = []
    models = [m for m in args.models.split(",") if m]
    available = []
    for mdl in models:
        try:
            load_pipeline(mdl)
            available.append(mdl)
        except Exception as exc:  # noqa: BLE001 — a model that is not installed is reported, not fatal
            print(
                f"note: {mdl} is not available here ({type(exc).__name__}: {exc}); its rows are not measurable",
                file=sys.stderr,
            )
    xl_summary = None
    results = {}
    for mdl in sorted(available, key=lambda x: x != "tinyworld-xl"):  # XL first: the SD row compares with it
        res, rows, extra = run_model(mdl, args, store, hw, xl_summary if mdl == "tinyworld" else None)
        results[mdl] = (res, rows, extra)
        if mdl == "tinyworld-xl":
            c = find(res.paired[args.concept], "erase rate", "space", "uce_all")
            xl_summary = {
                "space_vs_uce_all": None
                if c is None
                else {"diff": c.diff, "low": c.low, "high": c.high, "text": fmt_cmp(c)}
            }
    for mdl in models:
        if mdl in results:
            all_rows.extend(results[mdl][1])
        else:
            all_rows.append(not_installed(mdl))
    wall = time.perf_counter() - t0
    cmd = getattr(args, "command_line", None) or "erasekit claims " + " ".join(sys.argv[2:])
    size = (
        "SMALL (test size: the numbers mean nothing)"
        if args.small
        else ("REDUCED (intervals wider than the ±10-point target)" if args.n < 96 else "full size")
    )
    header = (
        f"# erasekit claims table\n\n`{cmd}` — {size}: n = {args.n} prompts per suite, {args.steps} DPM-Solver++ "
        f"steps, η ∈ {{{args.eta}}}, token search {args.search_steps}×{args.search_candidates} on "
        f"{args.search_prompts} prompts, {args.bootstrap} bootstrap draws; wall time {wall / 60:.1f} min on "
        f"{hw}; erasekit {__version__}."
    )
    md = claims_markdown(all_rows, header)
    (out / "claims.md").write_text(md)
    (out / "claims.json").write_text(
        json.dumps(
            {
                "command": cmd,
                "wall_seconds": wall,
                "hardware": hw,
                "n": args.n,
                "steps": args.steps,
                "rows": [asdict(r) for r in all_rows],
            },
            indent=1,
            ensure_ascii=False,
        )
    )
    for mdl, (res, rows, extra) in results.items():
        res.config["claims"] = [asdict(r) for r in rows]
        res.config["fit_seconds"] = {k: v for k, v in store.fits.items() if k.startswith(f"{mdl}/")}
        res.config["inference_seconds"] = extra["infer"]
        write_json(res, out / mdl / "results.json")
        write_html(
            res,
            out / mdl / "report.html",
            title=f"erasekit claims on {mdl}",
            sections=(claims_section(rows, extra, out, mdl),),
        )
    print(md)
    print(f"wrote {out / 'claims.md'} and {', '.join(str(out / m / 'report.html') for m in results)} in {wall:.0f} s")
    return 0
