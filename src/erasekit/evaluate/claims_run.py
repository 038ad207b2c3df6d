"""``erasekit claims``: measure every founding-paper claim on the bundled models, score it two ways, write the table.

    erasekit claims --out claims-out [--n 96] [--models tinyworld,tinyworld-flux] [--scale-models tinyworld-xl]
    erasekit claims --small --out /tmp/claims-small          # the default test's size (minutes)
    erasekit claims --rejudge --out claims-out                # re-judge the saved measurements (no model loaded)

On each model of ``--models`` (tinyworld, tinyworld-xl, tinyworld-flux) it fits every method label (with the
project's calibrations, :data:`LABELS`; on tinyworld-flux PURE runs as its two labelled variants,
:data:`FAMILY_LABELS`) and evaluates them on the same prompts and seeds:

* the **main study** (``--concept``, circle): target / paraphrase / retain / general suites, the calibrated
  concept-vector curve and the token search — erasekit's paired metrics;
* the **H-mean studies** (``--hmean-concepts``, red and striped beside the main concept): the same suites and the
  concept-vector curve, so PURE's H-mean has one concept per category (shape / colour / pattern);
* the **attack study** (``--attacks``, UDA, MMA, CCE, NBP on the first ``--attack-n`` target prompts of the main
  concept): the attack harness's rows, paired and raw;
* the **many-concepts study** (``--counts``, k = 1 … 12 concepts of :data:`MANY_ORDER` erased in one edit): per-concept
  erase / retain rates and CLIP_R − CLIP_E (:func:`~erasekit.evaluate.claims.clip_gap`);

and times the pipeline with each edit applied. ``--scale-models`` are measured only for SPACE-4 (SPACE and its dense
twin on the main concept's target suite). PURE's FLUX sweep is read from ``--tau-sweep`` (``sweep.json`` of
``benchmarks/pure_tau_sweep.py``). Writes

* ``claims.md``  the verdicts (erasekit's scoring · the paper's scoring, per model, beside the published number),
                 the numbers, and the rules (:mod:`~erasekit.evaluate.claims`);
* ``claims.json`` the rows, machine-readable; ``MODEL/measured.json`` what the rules read (``--rejudge`` reads it);
* ``MODEL/results.json`` / ``MODEL/report.html`` with the claims section and its plots.

Resumable: fitted edits are saved under ``OUT/edits`` (fit seconds in ``OUT/fits.json``) and reloaded; images are
cached under ``OUT/cache``.
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
from typing import Any

import numpy as np

from .claims import (
    Claim,
    ClaimsError,
    Evidence,
    HMeanCell,
    HMeanRow,
    ManyPoint,
    Measured,
    TauPoint,
    claims_markdown,
    clip_gap,
    judge_claims,
    not_installed,
    paper_tables_markdown,
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
# Per model, labels measured differently: PURE at bare defaults is refused on FLUX (no cross-attention to capture at
# its static sites), so its two bases run as labelled variants, as docs/results.md's tinyworld-flux section does.
FAMILY_LABELS: dict[str, dict[str, tuple[str, dict]]] = {
    "tinyworld-flux": {
        "pure": ("erasekit", {"sites": "joint"}),
        "pure_text": ("erasekit", {"basis": "text"}),
    }
}
LABEL_NOTES: dict[str, dict[str, str]] = {
    "tinyworld-flux": {
        "pure": "PURE's activation basis at the joint sites (every double-stream block's add_k/add_v)",
        "pure_text": "PURE's text basis at the static sites (context_embedder and the pooled embedder)",
    }
}
METHOD_OF = {"uce_all": "uce", "pure_text": "pure"}
SMALL_OPTIONS = {"ace": {"train_steps": 2, "adv_steps": 1, "pool_steps": 2}, "pure": {"steps": 2}}
# PURE's own H-mean table's methods; the claims run scores every measured label unless --hmean-labels narrows it
PAPER_HMEAN_LABELS = ("uce", "uce_all", "space", "pure", "pure_text", "cure", "mace")
MANY_LABELS = ("mace", "uce", "uce_all", "cure", "pure", "space")  # PURE's many-concepts table's methods
SCALE_LABELS = ("space", "uce_all")  # SPACE-4's inputs
# The many-concepts pool: shapes, colours and patterns interleaved, first k erased; cross, purple, orange and solid
# are never erased (tinyworld refuses erasing every value of an attribute).
MANY_ORDER = (
    "circle",
    "red",
    "striped",
    "square",
    "green",
    "dotted",
    "triangle",
    "blue",
    "checkered",
    "star",
    "yellow",
    "heart",
)


def label_options(label: str, model: str = "tinyworld") -> tuple[str, dict]:
    """(defaults source, options on top) of ``label`` on ``model``: what :func:`erasekit.erase` is called with."""
    source, options = FAMILY_LABELS.get(model, {}).get(label) or LABELS.get(label, ("erasekit", {}))
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


def item_probabilities(suite_run, which: str = "edited") -> np.ndarray:
    """(n_items,) the judge's probability of each item's (first) labelled concept on its image: the erased concept on
    a target item, the kept neighbour on a retain item (CLIP_E / CLIP_R's tinyworld analogue)."""
    jr = suite_run.judged_edited if which == "edited" else suite_run.judged_unedited
    assert jr is not None, f"the {which} images are not judged"
    return np.array([jr.score(it.concepts[0])[i] for i, it in enumerate(suite_run.suite.items)], dtype=np.float64)


def many_point(run, k: int, n_boot: int, seed: int = 0) -> ManyPoint:
    """One method's point of the many-concepts study from its target and retain suites."""
    p_e, p_r = item_probabilities(run.suites["target"]), item_probabilities(run.suites["retain"])
    return ManyPoint(
        k,
        run.metrics["erase rate"],
        run.metrics["retain rate"],
        float(100 * p_e.mean()),
        float(100 * p_r.mean()),
        clip_gap(p_r, p_e, n_boot=n_boot, seed=seed),
    )


def hmean_of(res, concepts: list[str], labels: list[str], n_boot: int) -> dict[str, HMeanRow]:
    """PURE's H-mean per category (tinyworld: one concept each) and its average, with paired bootstrap intervals
    (:mod:`erasekit.evaluate.protocols.run`'s functions, quality rule 'raw': judged agreement on general prompts)."""
    from .hmean import TINYWORLD_CATEGORIES
    from .protocols.run import hmean_intervals, hmean_rows, measure
    from .protocols.tinyworld import in_category

    if not labels:
        return {}
    cats = {c: in_category(c)[0] for c in concepts}
    per_concept = {}
    for c in concepts:
        per_concept[c] = {"unedited": measure(res, c, labels[0], "unedited", None)}
        per_concept[c].update({lb: measure(res, c, lb, "edited", None) for lb in labels})
    rows = hmean_rows(per_concept, cats, "raw", TINYWORLD_CATEGORIES)
    ivs = hmean_intervals(res, concepts, labels, cats, None, "raw", TINYWORLD_CATEGORIES, n_boot=n_boot, seed=0)
    out = {}
    for lb, r in rows.items():
        iv = ivs.get(lb, {})
        cells = {}
        for cat, v in r["categories"].items():
            civ = iv.get("categories", {}).get(cat)
            if "hmean" in v and civ:
                cells[cat] = HMeanCell(
                    v["hmean"], civ["low"], civ["high"], v["erased"], v["retention"], v["robustness"], v["quality"]
                )
        avg = iv.get("average") or {}
        out[lb] = HMeanRow(cells, r["average"], avg.get("low"), avg.get("high"))
    return out


def run_model(model: str, args, store, hw: str, scope: str = "full"):
    """Fit (or reload from ``store``), evaluate and time every label on ``model``; returns (results, measured,
    extra). ``scope='scale'``: only SPACE and its dense twin on the main concept's target suite (SPACE-4)."""
    from ..api import plan_erase
    from ..methods import list_methods
    from ..models.loading import load_pipeline
    from .bench import tinyworld_concept_set
    from .generate import GenerationSettings
    from .judges import make_judge
    from .plan import DEFAULT_KINDS, Plan, make_study
    from .runner import evaluate

    pipe = load_pipeline(model)
    judge = make_judge("tinyworld")
    registered = set(list_methods())
    wanted = SCALE_LABELS if scope == "scale" else [lb for lb in args.methods.split(",") if lb]
    labels = [lb for lb in wanted if METHOD_OF.get(lb, lb) in registered]
    srcs = {lb: label_options(lb, model)[0] for lb in labels}
    opts = {
        lb: {
            **label_options(lb, model)[1],
            **(SMALL_OPTIONS.get(METHOD_OF.get(lb, lb), {}) if args.small else {}),
        }
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
    edits = {lb: fit(concept, lb, cs, opts[lb]) for lb in labels}
    main = concept
    if scope == "scale":
        plan = Plan(kinds=("target", "paraphrase"), n=args.n, attacks=())
    else:
        plan = Plan(
            n=args.n,
            seed=0,
            etas=args.eta,
            search_steps=args.search_steps,
            search_candidates=args.search_candidates,
            search_prompts=args.search_prompts,
        )
    studies = [make_study(main, cs, edits, plan, tinyworld=True)]
    hm_concepts: list[str] = [concept]
    refused: list[str] = []
    attack_study = f"{concept}: attacks"
    many_names: dict[int, str] = {}
    sweep: dict[float, str] = {}
    if scope == "full":
        # PURE's H-mean: one concept per category, the same suites and the concept-vector curve
        hm_labels = [lb for lb in (args.hmean_labels or labels) if lb in labels]
        for c in args.hmean_concepts:
            if c == concept or not hm_labels:
                continue
            csc = tinyworld_concept_set(c)
            ec = {lb: fit(c, lb, csc, opts[lb]) for lb in hm_labels}
            pc = Plan(kinds=DEFAULT_KINDS, n=args.hmean_n, attacks=("ring-a-bell",), etas=args.eta)
            studies.append(make_study(c, csc, ec, pc, tinyworld=True))
            hm_concepts.append(c)
        # the attack harness's rows (the first attack_n target prompts of the main concept: their images are cached)
        at_labels = [lb for lb in args.attack_labels.split(",") if lb in labels]
        from ..models.families import identify
        from .attacks import get_attack

        # an attack that differentiates through the text encoders is left out on a family that offers no gradients
        # there (PixArt, Sana), and the claims say why
        runnable = [
            a for a in args.attacks if identify(pipe).text_gradients() or not get_attack(a).needs_text_gradients
        ]
        refused = [a for a in args.attacks if a not in runnable]
        if runnable and at_labels:
            pa = Plan(kinds=("target", "adversarial"), n=args.attack_n, attacks=tuple(runnable))
            studies.append(make_study(attack_study, cs, {lb: edits[lb] for lb in at_labels}, pa, tinyworld=True))
        # SPACE sparsity sweep (target and general suites only)
        if "space" in labels and args.sparsity:
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
        # many concepts erased at once (k of MANY_ORDER in one edit)
        many_labels = [lb for lb in [*MANY_LABELS, *args.many_extra] if lb in labels]
        for k in args.counts:
            if not many_labels:
                break
            if k == 1 and MANY_ORDER[0] == concept and args.many_n == args.n:
                many_names[k] = main  # k = 1 is the main study
                continue
            erase = MANY_ORDER[:k]
            csk = tinyworld_concept_set(list(erase))
            name = f"k={k}: " + "+".join(erase)
            mk = {lb: fit("+".join(erase), lb, csk, opts[lb]) for lb in many_labels}
            studies.append(make_study(name, csk, mk, Plan(kinds=("target", "retain"), n=args.many_n), tinyworld=True))
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
    infer = {} if scope == "scale" else time_inference(pipe, edits, args.steps, args.repeats)
    m = measured_from(res, model, main, attack_study, hm_concepts, many_names, args, infer, store.fits, hw, scope)
    if scope == "full" and refused:
        m.refused = {
            a: f"{a} needs gradients through the text encoder, which {model}'s family does not offer" for a in refused
        }
    sweep_pts = []
    for lb in sweep.values():
        r = res.studies[f"{concept}: SPACE sparsity sweep"][lb]
        sweep_pts.append((r.edit_summary["sparsity"], r.metrics["erase rate"], r.metrics.get("drift: judge agreement")))
    return res, m, {"sweep": sweep_pts, "eval_seconds": eval_s, "labels": labels}


def measured_from(
    res,
    model: str,
    main: str,
    attack_study: str,
    hm_concepts: list[str],
    many_names: dict[int, str],
    args,
    infer: dict[str, float],
    fits: dict[str, float],
    hw: str,
    scope: str,
) -> Measured:
    """What the claims are judged on, from one model's evaluation (plain data: ``measured.json``)."""
    runs = res.studies[main]
    first = next(iter(runs.values())).metrics
    head = next((k for k in first if k.startswith("ASR ring-a-bell (headline")), None)
    ts = res.attacks.get(main, {}).get("token-search", {}).get("methods", {})
    attacks: dict[str, dict] = {}
    unedited: dict[str, Any] = {}
    for name, a in res.attacks.get(attack_study, {}).items():
        if "methods" in a and name not in ("ring-a-bell", "token-search"):
            attacks[name] = {lb: v["judge ASR"] for lb, v in a["methods"].items()}
            rates = [v["unedited concept rate"] for v in a["methods"].values() if "unedited concept rate" in v]
            if rates:
                unedited[name] = rates[0]
    hm_labels = [lb for lb in res.studies[main] if all(lb in res.studies.get(c, {}) for c in hm_concepts)]
    hmean = hmean_of(res, hm_concepts, hm_labels, args.bootstrap) if len(hm_concepts) == 3 else {}
    many: dict[str, list[ManyPoint]] = {}
    for k, st in sorted(many_names.items()):
        for lb, r in res.studies.get(st, {}).items():
            if lb in MANY_LABELS or lb in args.many_extra:
                many.setdefault(lb, []).append(many_point(r, k, args.bootstrap))
    return Measured(
        model=model,
        concept=main,
        n=args.n,
        metrics={lb: dict(r.metrics) for lb, r in runs.items()},
        paired=list(res.paired.get(main, [])) + list(res.paired.get(attack_study, [])),
        edits={lb: dict(r.edit_summary) for lb, r in runs.items()},
        head=head,
        token_search={lb: v["judge ASR"] for lb, v in ts.items()},
        attacks=attacks,
        attacks_unedited=unedited,
        hmean=hmean,
        many=many,
        fits={k: v for k, v in fits.items() if k.startswith(f"{model}/")},
        inference=infer,
        hardware=hw,
        labels=dict(LABEL_NOTES.get(model, {})),
        scope="scale" if scope == "scale" else "full",
    )


def read_tau_sweep(path: Path) -> list[TauPoint]:
    """``benchmarks/pure_tau_sweep.py``'s ``sweep.json`` as :class:`TauPoint` rows (refused in one line if bad)."""
    try:
        rows = json.loads(Path(path).read_text())["rows"]
        return [
            TauPoint(
                str(r["concept"]),
                str(r["basis"]),
                None if r["tau"] is None else float(r["tau"]),
                float(r["target"]),
                float(r["retention"]),
            )
            for r in rows
        ]
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ClaimsError(
            f"--tau-sweep {path}: not a sweep.json of benchmarks/pure_tau_sweep.py ({type(e).__name__}: {e})"
        ) from None


def read_measured(path: Path) -> Measured:
    try:
        return Measured.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as e:
        raise ClaimsError(
            f"{path}: cannot be read ({type(e).__name__}: {e}); run erasekit claims without --rejudge"
        ) from None


# ----------------------------------------------------------------------------- report
def claims_section(rows: list[Claim], m: Measured, extra: dict, out: Path) -> str:
    """The report page's claims table (both scorings) and its plots (SPACE sparsity sweep, per-concept rates and
    CLIP_R − CLIP_E vs the number of concepts erased at once)."""
    import html

    from . import plots
    from .report import figure_html

    e = html.escape
    parts = [
        "<h2>Claims</h2><table class='paired'><tr><th>id</th><th>claim</th><th>published</th><th>erasekit: numbers"
        "</th><th>verdict</th><th>paper's scoring: numbers</th><th>verdict</th></tr>"
    ]
    for r in rows:
        pn, pv = ("", "= erasekit's") if r.paper is None else (r.paper.numbers, r.paper.cell())
        parts.append(
            f"<tr><td>{e(r.id)}</td><td style='text-align:left'>{e(r.claim)}<br><small>{e(r.source)}</small></td>"
            f"<td><small>{e(r.published)}</small></td>"
            f"<td style='text-align:left;white-space:normal'>{e(r.ours.numbers)}</td><td><b>{e(r.ours.verdict)}</b>"
            f"<br><small>{e(r.ours.why)}</small></td>"
            f"<td style='text-align:left;white-space:normal'>{e(pn)}</td><td><b>{e(pv)}</b></td></tr>"
        )
    parts.append("</table>")
    figs = []
    folder = out / m.model / "plots"
    if extra.get("sweep"):
        sp, er, dr = zip(*extra["sweep"])
        if all(d is not None for d in dr):
            figs.append(
                figure_html(
                    plots.sparsity_sweep(sp, er, dr, f"{m.model}: SPACE sparsity vs erase vs drift"),
                    "space-sparsity-sweep",
                    folder,
                    "SPACE sparsity sweep",
                )
            )
    series = {}
    counts: list[int] = []
    for lb, pts_ in m.many.items():
        if len(pts_) >= 2:
            counts = [p.k for p in pts_]
            series[f"{lb}: erase"] = [p.erase for p in pts_]
            series[f"{lb}: retain"] = [p.retain for p in pts_]
    if series:
        figs.append(
            figure_html(
                plots.concepts_curve(counts, series, f"{m.model}: per-concept rates vs #concepts"),
                "concepts-curve",
                folder,
                "per-concept rates vs number of concepts",
            )
        )
        scores = {lb: ([p.k for p in ps], [p.score for p in ps]) for lb, ps in m.many.items() if len(ps) >= 2}
        figs.append(
            figure_html(
                plots.clip_gap_curve(scores, f"{m.model}: CLIP_R − CLIP_E analogue vs #concepts erased"),
                "many-concepts-score",
                folder,
                "CLIP_R − CLIP_E vs number of concepts",
            )
        )
    if figs:
        parts.append("<div class='figs'>" + "".join(figs) + "</div>")
    return "".join(parts)


def write_many_plots(m: Measured, folder: Path) -> list[Path]:
    """The many-concepts plots of one model as PNG files (CLIP_R − CLIP_E and the per-concept rates vs k)."""
    from .._atomic import write_bytes_atomic
    from . import plots

    folder.mkdir(parents=True, exist_ok=True)
    scores = {lb: ([p.k for p in ps], [p.score for p in ps]) for lb, ps in m.many.items() if len(ps) >= 2}
    rates = {}
    for lb, ps in m.many.items():
        if len(ps) >= 2:
            rates[f"{lb}: erase"], rates[f"{lb}: retain"] = [p.erase for p in ps], [p.retain for p in ps]
    written = []
    if scores:
        counts = sorted({p.k for ps in m.many.values() for p in ps})
        for name, png in (
            ("many-concepts-score", plots.clip_gap_curve(scores, f"{m.model}: CLIP_R − CLIP_E analogue vs k")),
            ("concepts-curve", plots.concepts_curve(counts, rates, f"{m.model}: per-concept rates vs k")),
        ):
            write_bytes_atomic(folder / f"{name}.png", png)
            written.append(folder / f"{name}.png")
    return written


# ----------------------------------------------------------------------------- the command
def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ap.add_argument("--out", required=True, type=Path, help="output folder (edits, image cache, results, claims.md)")
    ap.add_argument(
        "--models",
        default="tinyworld,tinyworld-xl,tinyworld-flux",
        help="models measured in full (missing ones are reported as not measurable)",
    )
    ap.add_argument(
        "--scale-models",
        default="",
        help="models measured only for SPACE-4 (SPACE and its dense twin on the main concept's target suite)",
    )
    ap.add_argument(
        "--methods",
        default="uce,uce_all,space,pure,pure_text,ace,rece,speed,cure,mace",
        help="method labels (unregistered ones are skipped and their claims marked not measurable)",
    )
    ap.add_argument("--concept", default="circle", help="the tinyworld concept of the main study")
    ap.add_argument("--n", type=int, default=96, help="prompts per suite (≥ 96 for ±10-point intervals)")
    ap.add_argument(
        "--hmean-concepts", default="red,striped", help="concepts beside --concept for PURE's H-mean (one per category)"
    )
    ap.add_argument("--hmean-n", type=int, default=None, help="prompts per suite of the H-mean studies (default --n)")
    ap.add_argument(
        "--hmean-labels",
        default="",
        help="labels of the H-mean studies ('' = every label of --methods; 'paper' = PURE's table's: "
        + ",".join(PAPER_HMEAN_LABELS)
        + ")",
    )
    ap.add_argument("--attacks", default="uda,mma,cce,nbp", help="attacks of the attack study ('' = none)")
    ap.add_argument("--attack-n", type=int, default=8, help="target prompts the attack study attacks")
    ap.add_argument("--attack-labels", default="pure,pure_text,uce,uce_all,space,rece,cure", help="labels attacked")
    ap.add_argument("--counts", default="1,2,3,6,12", help="numbers of concepts erased at once (k ≤ 12)")
    ap.add_argument("--many-n", type=int, default=None, help="prompts per suite of the many-concepts study")
    ap.add_argument("--many-extra", default="", help="labels added to the many-concepts study (e.g. ace)")
    ap.add_argument(
        "--steps", type=int, default=10, help="DPM-Solver++ steps per image (tinyworld validity holds at 10)"
    )
    ap.add_argument("--eta", default="1,2,3", help="concept-vector strengths")
    ap.add_argument("--search-steps", type=int, default=12)
    ap.add_argument("--search-candidates", type=int, default=32)
    ap.add_argument("--search-prompts", type=int, default=16, help="target prompts the token search attacks")
    ap.add_argument("--sparsity", default="", help="SPACE sweep targets (e.g. 0.5,0.7,0.85,0.95; '' = none)")
    ap.add_argument("--tau-sweep", type=Path, default=None, help="sweep.json of benchmarks/pure_tau_sweep.py (PURE-6)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5, help="timed pipeline calls per state (inference-cost claim)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--rejudge", action="store_true", help="judge OUT/MODEL/measured.json again; measure nothing")
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
        args.sparsity, args.counts, args.bootstrap, args.repeats = "0.5,0.85", "1,2,3", 200, 1
        args.methods = "uce,uce_all,space,pure,pure_text,ace,mace"
        args.attacks, args.attack_n, args.attack_labels = "nbp", 1, "pure,uce_all,space"
    args.sparsity = [float(x) for x in str(args.sparsity).split(",") if x.strip()]
    args.counts = sorted({int(x) for x in str(args.counts).split(",") if x.strip()} | {1})
    if max(args.counts) > len(MANY_ORDER):
        raise ClaimsError(f"--counts: at most {len(MANY_ORDER)} concepts can be erased at once on tinyworld")
    args.hmean_concepts = [c.strip() for c in str(args.hmean_concepts).split(",") if c.strip()]
    hl = str(getattr(args, "hmean_labels", "") or "")
    args.hmean_labels = list(PAPER_HMEAN_LABELS) if hl == "paper" else [a.strip() for a in hl.split(",") if a.strip()]
    args.attacks = [a.strip() for a in str(args.attacks).split(",") if a.strip()]
    args.many_extra = [a.strip() for a in str(args.many_extra).split(",") if a.strip()]
    args.hmean_n = args.hmean_n or args.n
    args.many_n = args.many_n or args.n
    return args


def main(argv=None, *, command: str = "erasekit claims") -> int:
    """Parse ``argv`` and run; ``command`` is how the table's header names the invocation."""
    args = parse_args(argv, prog=command)
    args.command_line = f"{command} " + " ".join(sys.argv[1:] if argv is None else argv)
    return run(args)


def _write_json(path: Path, obj: Any) -> None:
    from .._atomic import write_bytes_atomic
    from .report import _jsonable

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(obj, indent=1, default=_jsonable, ensure_ascii=False).encode())


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
    hw = hardware()
    t0 = time.perf_counter()
    full = [m for m in args.models.split(",") if m]
    scale = [m for m in args.scale_models.split(",") if m and m not in full]
    order = [*full, *scale]
    measured: dict[str, Measured] = {}
    results: dict[str, tuple] = {}
    if args.rejudge:
        for mdl in order:
            p = out / mdl / "measured.json"
            measured[mdl] = read_measured(p) if p.is_file() else not_installed(mdl)
    else:
        store = EditStore(out)
        for mdl in order:
            try:
                load_pipeline(mdl)
            except Exception as exc:  # noqa: BLE001 — a model that is not installed is reported, not fatal
                print(f"note: {mdl} is not available here ({type(exc).__name__}: {exc})", file=sys.stderr)
                measured[mdl] = not_installed(mdl)
                continue
            res, m, extra = run_model(mdl, args, store, hw, "full" if mdl in full else "scale")
            _write_json(out / mdl / "measured.json", m.to_dict())
            measured[mdl], results[mdl] = m, (res, extra)
    tau = read_tau_sweep(args.tau_sweep) if args.tau_sweep else []
    evidence = Evidence(measured, tau, f"τ_F sweep: {args.tau_sweep}" if args.tau_sweep else "")
    rows = judge_claims(evidence)
    wall = time.perf_counter() - t0
    cmd = getattr(args, "command_line", None) or "erasekit claims " + " ".join(sys.argv[2:])
    size = (
        "SMALL (test size: the numbers mean nothing)"
        if args.small
        else ("REDUCED (intervals wider than the ±10-point target)" if args.n < 96 else "full size")
    )
    title = "# erasekit claims table (v2: erasekit's scoring and the paper's)\n\n"
    if args.rejudge:
        header = (
            f"{title}`{cmd}` — re-judged from each model's measured.json ("
            + ", ".join(f"{k}: n = {m.n} in its main study" for k, m in measured.items() if m.n)
            + "; the measuring commands and sizes are beside the table where it is published)."
        )
    else:
        header = (
            f"{title}`{cmd}` — {size}: n = {args.n} prompts per suite (H-mean studies {args.hmean_n}, many-concepts "
            f"{args.many_n}, attack study {args.attack_n}), {args.steps} sampler steps, η ∈ {{{args.eta}}}, token "
            f"search {args.search_steps}×{args.search_candidates} on {args.search_prompts} prompts, {args.bootstrap} "
            f"bootstrap draws; wall time {wall / 60:.1f} min on {hw}; erasekit {__version__}."
        )
    md = claims_markdown(rows, header)
    tables = paper_tables_markdown(measured)
    if tables:
        md += "\n### The paper's scorings, measured\n\n" + tables
    (out / "claims.md").write_text(md)
    _write_json(
        out / "claims.json",
        {
            "command": cmd,
            "wall_seconds": wall,
            "hardware": hw,
            "n": args.n,
            "steps": args.steps,
            "rows": [asdict(r) for r in rows],
        },
    )
    for mdl, (res, extra) in results.items():
        mine = [r for r in rows if r.model == mdl]
        res.config["claims"] = [asdict(r) for r in mine]
        res.config["fit_seconds"] = measured[mdl].fits
        res.config["inference_seconds"] = measured[mdl].inference
        write_json(res, out / mdl / "results.json")
        write_html(
            res,
            out / mdl / "report.html",
            title=f"erasekit claims on {mdl}",
            sections=(claims_section(mine, measured[mdl], extra, out),),
        )
    for mdl, m in measured.items():
        if mdl not in results and m.many:  # re-judged: the many-concepts plots from measured.json alone
            write_many_plots(m, out / mdl / "plots")
    print(md)
    print(f"wrote {out / 'claims.md'} in {wall:.0f} s")
    return 0
