"""Every claim of the founding papers, with a verdict that survives statistics: the claims table.

    python benchmarks/claims.py --out claims-out [--n 96] [--steps 10] [--models tinyworld,tinyworld-xl]
    python benchmarks/claims.py --small --out /tmp/claims-small          # the default test's size (minutes)

On each model (tinyworld, and tinyworld-xl when it is installed) it fits every registered method
(with the project's tinyworld calibrations, stated below), evaluates them on the same prompts
and seeds (target / paraphrase / retain / general suites, the calibrated concept-vector attack
curve, the token search), adds a SPACE sparsity sweep and a many-concepts study, times the
pipeline with each edit applied, and writes

* ``claims.md``   one row per claim: the claim, its source, the measurement, the numbers with
                  intervals and paired tests, and a verdict by the rule stated in the row;
* ``results.json`` / ``report.html`` (per model) with the claims section and its plots;
* ``claims.json`` the rows, machine-readable.

Resumable: fitted edits are saved under ``OUT/edits`` (with their fit seconds in
``OUT/fits.json``) and reloaded; images are cached under ``OUT/cache``.
Verdicts: holds / holds partly / does not hold / not measurable here (with why).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HOLDS, PARTLY, FAILS, NA = "holds", "holds partly", "does not hold", "not measurable here"

# What each label measures: (source of the defaults, options on top). "erasekit" = the per-model defaults
# of erasekit/defaults.py (chosen on development concepts), "published" = the papers' settings.
LABELS = {
    "uce": ("published", {}),  # UCE as published: last concept token, no templates
    "uce_all": ("erasekit", {"preset": "erasekit"}),  # UCE with SPACE's templates and token positions: the dense twin
    "space": ("erasekit", {"target_sparsity": 0.85}),
    "pure": ("erasekit", {}),  # the paired-centred reconstruction (issue 13)
    # PURE's own text basis, as the PURE ablation's text_tail variant (tail tokens; the last token alone erases nothing here)
    "pure_text": ("published", {"basis": "text", "token": "tail", "templates": True, "forget_energy": 0.95, "retain_energy": 0.5}),
    "ace": ("erasekit", {"train_steps": 40}),
    "rece": ("erasekit", {}), "speed": ("erasekit", {}), "cure": ("erasekit", {}), "mace": ("erasekit", {}),
}
METHOD_OF = {"uce_all": "uce", "pure_text": "pure"}


def label_options(model: str, label: str) -> dict:
    """The options ``label`` is fitted with on ``model`` (templates included, as a concept-set option)."""
    from erasekit import defaults

    source, extra = LABELS.get(label, ("erasekit", {}))
    options, _ = defaults.resolve(model, METHOD_OF.get(label, label), extra, published=source == "published")
    return options


SMALL_OPTIONS = {"ace": {"train_steps": 2, "adv_steps": 1, "pool_steps": 2}, "pure": {"steps": 2}}


@dataclass
class Claim:
    id: str
    claim: str
    source: str
    rule: str
    measurement: str = ""
    numbers: str = ""
    verdict: str = NA
    why: str = ""
    model: str = ""

    def row(self) -> str:
        v = self.verdict + (f" ({self.why})" if self.why else "")
        cells = [self.id, self.claim, self.source, self.measurement, self.numbers, f"**{v}**", self.rule]
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


# ----------------------------------------------------------------------------- formatting helpers
def pct(e) -> str:
    return "–" if e is None else f"{100 * e.value:.0f} [{100 * e.low:.0f}–{100 * e.high:.0f}]"


def _pts(x: float) -> str:
    return f"{round(100 * x) or 0:+d}"  # no "-0"


def fmt_cmp(c) -> str:
    star = " ★" if c.significant else ""
    return f"{c.a} − {c.b}: {_pts(c.diff)} [{_pts(c.low)}, {_pts(c.high)}] pts, p_Holm {c.p_holm:.2g}{star}"


def rule_text(fn) -> str:
    return " ".join(fn.__doc__.split())


def find(paired, metric, a, b):
    """The comparison of ``a`` and ``b`` on ``metric``, oriented as a − b (sign flipped when stored as b − a)."""
    from erasekit.evaluate.stats import Comparison

    for c in paired:
        if c.metric != metric:
            continue
        if (c.a, c.b) == (a, b):
            return c
        if (c.a, c.b) == (b, a):
            return Comparison(c.metric, a, b, c.rate_b, c.rate_a, -c.diff, -c.high, -c.low, c.n, c.clusters, c.b_only, c.a_only, c.p,
                              c.p_holm, c.significant, c.level, c.alpha)
    return None


def better_rule(comps, higher_is_better: bool = True) -> str:
    """holds: significantly better than every comparator; partly: better in point estimate for all or significant for some;
    does not hold otherwise (or when a comparator is significantly better)."""
    sign = 1 if higher_is_better else -1
    if any(c.significant and sign * c.diff < 0 for c in comps):
        return FAILS
    if all(c.significant and sign * c.diff > 0 for c in comps):
        return HOLDS
    if all(sign * c.diff > 0 for c in comps) or any(c.significant and sign * c.diff > 0 for c in comps):
        return PARTLY
    return FAILS


def at_least_rule(comps) -> str:
    """'at least as strong': holds if no comparator is significantly better and the point is ≥ each; partly if none is
    significantly better but a point is lower; does not hold if a comparator is significantly better."""
    if any(c.significant and c.diff < 0 for c in comps):
        return FAILS
    return HOLDS if all(c.diff >= 0 for c in comps) else PARTLY


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


def fit_or_load(pipe, model: str, study: str, label: str, cs, options: dict, out: Path, fits: dict, progress: bool, method: str | None = None):
    """An edit fitted once and saved; later runs reload it (the fit seconds come from ``fits.json``)."""
    import erasekit
    from erasekit.edit import load_edit

    key = f"{model}/{study}/{label}"
    path = out / "edits" / f"{model}-{study}-{label}.safetensors".replace(" ", "_").replace(",", "_")
    if path.is_file() and key in fits:
        edit = load_edit(path, pipe, apply=False)
        if _fitted_with(edit, options):
            return edit
        print(f"note: {path.name} was fitted with other options; fitting it again", file=sys.stderr)
    t0 = time.perf_counter()
    options = dict(options)
    if "templates" in options:  # a concept-set option, not a method option
        cs = dataclasses.replace(cs, templates=options.pop("templates"))
    edit = erasekit.erase(pipe, method=method or METHOD_OF.get(label, label), concepts=cs, progress=progress, **options)
    fits[key] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    edit.save(path)
    (out / "fits.json").write_text(json.dumps(fits, indent=1))
    return edit


def _fitted_with(edit, options: dict) -> bool:
    """True when a saved edit's recorded config (and templates) match ``options``: a changed option refits."""
    norm = lambda v: json.loads(json.dumps(v))  # noqa: E731 — tuples and lists compare alike
    for k, v in options.items():
        if k == "templates":
            if bool(edit.concepts.get("templates") not in (None, [], ["{}"])) != bool(v):
                return False
        elif norm(edit.config.get(k)) != norm(v):
            return False
    return True


def time_inference(pipe, edits: dict, steps: int, repeats: int, batch: int = 4) -> dict[str, float]:
    """Median seconds of one pipeline call (``batch`` prompts) per state, unedited and each edit, interleaved."""
    import numpy as np
    import torch

    prompts = ["a striped red circle"] * batch
    times: dict[str, list[float]] = {"unedited": [], **{k: [] for k in edits}}

    def call():
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        t0 = time.perf_counter()
        pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=5.0, generator=gens, output_type="np")
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


# ----------------------------------------------------------------------------- the claims
def judge_claims(model: str, res, main: str, sweep: dict, many: dict, fits: dict, infer: dict, methods: list[str], hw: str,
                 xl: dict | None) -> list[Claim]:
    """Rows for one model's results (``xl``: the same summary on tinyworld-xl, for SPACE's SDXL claim)."""
    runs = res.studies[main]
    paired = res.paired[main]
    have = set(runs)
    m = lambda label, name: runs[label].metrics.get(name) if label in runs else None  # noqa: E731
    rows: list[Claim] = []
    head = next((k for k in next(iter(runs.values())).metrics if k.startswith("ASR ring-a-bell (headline")), None)

    # --- SPACE
    c = Claim("SPACE-1", "80–90 % cross-attention sparsity while erasing", "SPACE (arXiv 2605.10198), abstract",
              "holds: SPACE's edit is 80–90 % zeros AND its erase rate is significantly above the unedited model's; partly: sparsity "
              "in range but erasure not significant; does not hold: sparsity out of range")
    if "space" in runs:
        sp = runs["space"].edit_summary["sparsity"]
        cmp_ = find(paired, "erase rate", "space", "unedited")
        c.measurement = "share of exact zeros in SPACE's edited to_k/to_v (target_sparsity 0.85), erase rate vs unedited"
        c.numbers = f"sparsity {100 * sp:.1f} %; erase {pct(m('space', 'erase rate'))}; {fmt_cmp(cmp_)}"
        ok = 0.80 <= sp <= 0.90
        c.verdict = (HOLDS if cmp_.significant and cmp_.diff > 0 else PARTLY) if ok else FAILS
        c.why = "the sparsity is the configured target; the test is whether erasure works at it"
    else:
        c.why = "SPACE is not registered"
    rows.append(c)

    c = Claim("SPACE-2", "~70 % less storage than a dense edit", "SPACE, abstract",
              "saving = 1 − CSR bytes / dense fp32 bytes of the same layers; holds ≥ 65 %, partly ≥ 50 %")
    if "space" in runs:
        s = runs["space"].edit_summary
        saving = 1 - s["bytes"] / s["dense_fp32_bytes"]
        c.measurement, c.numbers = "edit file tensors vs dense fp32", f"{s['bytes']:,} vs {s['dense_fp32_bytes']:,} bytes: {100 * saving:.1f} % less"
        c.verdict = HOLDS if saving >= 0.65 else PARTLY if saving >= 0.5 else FAILS
    rows.append(c)

    dense = [b for b in ("uce_all", "uce", "rece") if b in have]
    c = Claim("SPACE-3", "erasure at least as strong as the dense closed-form baselines (UCE, RECE)", "SPACE, abstract",
              "paired erase and paraphrase-erase rate, SPACE vs each dense baseline present: " + rule_text(at_least_rule).split(":", 1)[1].strip())
    if "space" in runs and dense:
        comps = [x for b in dense for x in (find(paired, "erase rate", "space", b), find(paired, "paraphrase erase rate", "space", b)) if x]
        c.measurement = f"SPACE vs {', '.join(dense)} (uce = published last token; uce_all = SPACE's templates and tokens)"
        c.numbers = "; ".join(f"{x.metric}: {fmt_cmp(x)}" for x in comps)
        c.verdict = at_least_rule(comps)
        c.why = "" if "rece" in have else "RECE not registered: UCE only"
    rows.append(c)

    c = Claim("SPACE-4", "the advantage over dense baselines is larger on SDXL than on SD 1.x", "SPACE, abstract",
              "Δ = erase(SPACE) − erase(uce_all) on tinyworld-xl vs on tinyworld; holds if the XL interval lies above the SD one, "
              "partly if the XL point is larger, does not hold otherwise")
    if xl is not None and model == "tinyworld":
        here = find(paired, "erase rate", "space", "uce_all")
        there = xl.get("space_vs_uce_all")
        if here and there:
            c.measurement = "paired erase-rate difference on each architecture"
            c.numbers = f"SD 1.x: {fmt_cmp(here)}; SDXL: {there['text']}"
            c.verdict = HOLDS if there["low"] > here.high else PARTLY if there["diff"] > here.diff else FAILS
    else:
        c.why = "tinyworld-xl was not measured in this run (not in --models, or not installed)" if model == "tinyworld" else "judged on the tinyworld row"
    rows.append(c)

    c = Claim("SPACE-5", "more robust than the dense baselines to adversarial prompts", "SPACE, abstract",
              "paired headline concept-vector ASR (calibrated η), SPACE vs each dense baseline: lower is better; " +
              rule_text(better_rule))
    if "space" in runs and dense and head:
        comps = [x for b in dense for x in [find(paired, head, "space", b)] if x]
        ts = res.attacks[main].get("token-search", {}).get("methods", {})
        c.measurement = f"{head}; token search (judge ASR, not paired: prompts differ per method) reported beside"
        c.numbers = "; ".join(fmt_cmp(x) for x in comps) + "; token search: " + ", ".join(
            f"{k} {pct(v['judge ASR'])}" for k, v in ts.items() if k in ["space", *dense])
        c.verdict = better_rule(comps, higher_is_better=False)
    rows.append(c)

    c = Claim("SPACE-6", "general-prompt quality kept", "SPACE, abstract",
              "judge agreement with the unedited model on general prompts (same seeds): holds if the interval's lower end ≥ 90 %, "
              "partly if the point ≥ 90 %")
    ag = m("space", "drift: judge agreement")
    if ag is not None:
        c.measurement = "share of general images whose shape/colour/pattern decisions equal the unedited model's"
        c.numbers = f"SPACE {pct(ag)}; " + ", ".join(f"{b} {pct(m(b, 'drift: judge agreement'))}" for b in dense)
        c.verdict = HOLDS if ag.low >= 0.9 else PARTLY if ag.value >= 0.9 else FAILS
    rows.append(c)

    # --- PURE
    comps_to = [b for b in ("uce", "uce_all", "cure", "pure_text") if b in have]
    c = Claim("PURE-1", "less target leakage under paraphrased prompts than text-embedding closed forms (UCE, CURE, its text basis)",
              "PURE (arXiv 2605.25765), HUB results", "paired paraphrase erase rate, PURE vs each: " + rule_text(better_rule))
    if "pure" in runs and comps_to:
        comps = [x for b in comps_to for x in [find(paired, "paraphrase erase rate", "pure", b)] if x]
        c.measurement, c.numbers = "synonym-only prompts", "; ".join(fmt_cmp(x) for x in comps)
        c.verdict = better_rule(comps)
        c.why = "" if "cure" in have else "CURE not registered"
    rows.append(c)

    c = Claim("PURE-2", "best forget–retain harmonic mean among the methods evaluated", "PURE, HUB table (0.640 vs CURE 0.543, UCE 0.527)",
              "harmonic mean of erase, paraphrase-erase and retain rates: holds if PURE's is the highest and above every other's interval; "
              "partly if the highest point or inside the best's interval; does not hold otherwise")
    hm = {k: r.metrics.get("harmonic mean") for k, r in runs.items() if r.metrics.get("harmonic mean") is not None}
    if "pure" in hm:
        best = max(hm, key=lambda k: hm[k].value)
        p = hm["pure"]
        c.measurement = "harmonic mean, bootstrap intervals (suites resampled independently)"
        c.numbers = ", ".join(f"{k} {pct(v)}" for k, v in sorted(hm.items(), key=lambda kv: -kv[1].value))
        others = [v for k, v in hm.items() if k != "pure"]
        c.verdict = (HOLDS if all(p.value > o.high for o in others) else PARTLY) if best == "pure" else (
            PARTLY if p.high >= hm[best].value else FAILS)
    rows.append(c)

    c = Claim("PURE-3", "no inference-time cost", "PURE, abstract",
              "median seconds of one pipeline call with the edit applied vs unedited (same batch, interleaved): holds within ±10 %")
    if "pure" in infer:
        r = infer["pure"] / infer["unedited"]
        c.measurement = "the edit is merged into W_K/W_V (same shapes, no hook); wall time measured"
        c.numbers = f"{infer['pure']:.3f} s vs {infer['unedited']:.3f} s unedited (×{r:.2f}); " + ", ".join(
            f"{k} ×{v / infer['unedited']:.2f}" for k, v in infer.items() if k not in ("pure", "unedited"))
        c.verdict = HOLDS if abs(r - 1) <= 0.10 else FAILS
    rows.append(c)

    # --- ACE
    c = Claim("ACE-1", "erases the concept and its synonyms while preserving unrelated content", "ACE (arXiv 2504.11850), abstract",
              "holds: erase and paraphrase-erase significantly above unedited and ≥ 80 %, retain not significantly below unedited; "
              "partly: erasure significant but a synonym rate < 80 % or retain significantly lower; does not hold: erasure not significant")
    if "ace" in runs:
        e, pp, rt = (find(paired, k, "ace", "unedited") for k in ("erase rate", "paraphrase erase rate", "retain rate"))
        c.measurement = "paired vs the unedited model"
        c.numbers = "; ".join(f"{x.metric}: ACE {100 * x.rate_a:.0f} %, {fmt_cmp(x)}" for x in (e, pp, rt) if x)
        if not (e and e.significant and e.diff > 0):
            c.verdict = FAILS
        elif pp and pp.significant and pp.rate_a >= 0.8 and e.rate_a >= 0.8 and not (rt and rt.significant and rt.diff < 0):
            c.verdict = HOLDS
        else:
            c.verdict = PARTLY
    rows.append(c)

    c = Claim("ACE-2", "scales to many concepts", "ACE, abstract",
              "per-concept erase and retain rates with k concepts erased at once: holds if at the largest k erase ≥ 80 % and retain ≥ 80 % "
              "of its k = 1 value; partly if one of the two; does not hold otherwise")
    if many.get("ace"):
        pts = many["ace"]
        k1, kn = pts[0], pts[-1]
        c.measurement = f"ACE with k = {', '.join(str(p['k']) for p in pts)} shapes erased together"
        c.numbers = "; ".join(f"k={p['k']}: erase {pct(p['erase'])}, retain {pct(p['retain'])}" for p in pts)
        a, b = kn["erase"].value >= 0.8, kn["retain"].value >= 0.8 * k1["retain"].value
        c.verdict = HOLDS if a and b else PARTLY if a or b else FAILS
    rows.append(c)

    c = Claim("ACE-3", "a few seconds of adaptation per concept", "ACE, abstract",
              "fit seconds per concept on this hardware: holds ≤ 10 s, partly ≤ 60 s")
    ace_fits = {k: v for k, v in fits.items() if k.startswith(f"{model}/") and k.endswith("/ace")}
    if ace_fits:
        per = [v / max(1, len(k.split("/")[1].split("+"))) for k, v in ace_fits.items()]
        worst = max(per)
        c.measurement = f"stage 1 + stage 2 fit wall time ({hw})"
        c.numbers = ", ".join(f"{k.split('/')[1]}: {v:.1f} s" for k, v in ace_fits.items()) + f"; worst per concept {worst:.1f} s"
        c.verdict = HOLDS if worst <= 10 else PARTLY if worst <= 60 else FAILS
    rows.append(c)

    # --- baselines' own headline claims
    c = Claim("RECE-1", "robust to adversarial embeddings (beats UCE under attack)", "RECE (Gong et al., ECCV 2024)",
              "paired headline concept-vector ASR, RECE vs UCE (lower is better): " + rule_text(better_rule))
    if "rece" in runs and head:
        comps = [x for b in ("uce", "uce_all") for x in [find(paired, head, "rece", b)] if x]
        c.measurement, c.numbers, c.verdict = head, "; ".join(fmt_cmp(x) for x in comps), better_rule(comps, higher_is_better=False)
    else:
        c.why = "RECE is not registered in this build"
    rows.append(c)

    c = Claim("SPEED-1", "prior preservation: neighbouring concepts survive better than with UCE", "SPEED (Li et al., 2025)",
              "paired retain rate, SPEED vs UCE: " + rule_text(better_rule))
    if "speed" in runs:
        comps = [x for b in ("uce", "uce_all") for x in [find(paired, "retain rate", "speed", b)] if x]
        c.measurement, c.numbers, c.verdict = "retain rate", "; ".join(fmt_cmp(x) for x in comps), better_rule(comps)
    else:
        c.why = "SPEED is not registered in this build"
    rows.append(c)

    c = Claim("MACE-1", "erases many concepts at once without losing the rest", "MACE (Lu et al., CVPR 2024)",
              "as ACE-2, for MACE")
    if many.get("mace"):
        pts = many["mace"]
        c.numbers = "; ".join(f"k={p['k']}: erase {pct(p['erase'])}, retain {pct(p['retain'])}" for p in pts)
        a, b = pts[-1]["erase"].value >= 0.8, pts[-1]["retain"].value >= 0.8 * pts[0]["retain"].value
        c.verdict = HOLDS if a and b else PARTLY if a or b else FAILS
    else:
        c.why = "MACE is not implemented in erasekit" + ("; UCE's many-concept points are in the plot" if many.get("uce_all") else "")
    rows.append(c)
    for r in rows:
        r.model = model
        if r.verdict == NA and not r.why:
            r.why = "a method it needs is missing or the measurement was not run"
    return rows


# ----------------------------------------------------------------------------- the run
def run_model(model: str, args, out: Path, fits: dict, hw: str, xl_summary: dict | None):
    import erasekit
    from erasekit.evaluate import GenerationSettings, evaluate
    from erasekit.evaluate.bench import tinyworld_concept_set
    from erasekit.evaluate.judges import make_judge
    from erasekit.evaluate.plan import Plan, make_study
    from erasekit.methods import list_methods
    from erasekit.tinyworld import world

    pipe = erasekit.load_pipeline(model)
    judge = make_judge("tinyworld")
    registered = set(list_methods())
    labels = [lb for lb in args.methods.split(",") if METHOD_OF.get(lb, lb) in registered]
    opts = {lb: {**label_options(model, lb), **(SMALL_OPTIONS.get(METHOD_OF.get(lb, lb), {}) if args.small else {})} for lb in labels}
    progress = not args.no_progress
    concept = args.concept
    cs = tinyworld_concept_set(concept)
    plan = Plan(n=args.n, seed=0, etas=args.eta, search_steps=args.search_steps, search_candidates=args.search_candidates,
                search_prompts=args.search_prompts)
    studies = []
    edits = {lb: fit_or_load(pipe, model, concept, lb, cs, opts[lb], out, fits, progress) for lb in labels}
    main = concept
    studies.append(make_study(main, cs, edits, plan, tinyworld=True))
    # SPACE sparsity sweep (target and general suites only)
    sweep: dict[float, str] = {}
    if "space" in labels:
        sweep_edits = {}
        for s in args.sparsity:
            lb = f"space_s{round(100 * s)}"
            sweep_edits[lb] = fit_or_load(pipe, model, f"{concept}-sweep", lb, cs, {**opts["space"], "target_sparsity": s}, out, fits, progress,
                                          method="space")
            sweep[s] = lb
        studies.append(make_study(f"{concept}: SPACE sparsity sweep", cs, sweep_edits, Plan(kinds=("target", "general"), n=args.n), tinyworld=True))
    # many concepts erased at once (shapes)
    many_labels = [lb for lb in ("ace", "uce_all", "mace") if lb in labels]
    many_names: dict[int, str] = {}
    shapes = [concept] + [v for v in world.SHAPES if v != concept]
    for k in args.counts:
        if k == 1 or not many_labels:
            continue
        erase = tuple(shapes[:k])
        from erasekit import ConceptSet

        csk = ConceptSet(erase=erase, kind="object", preserve=tuple(v for v in world.SHAPES if v not in erase))
        name = "+".join(erase)
        mk = {lb: fit_or_load(pipe, model, name, lb, csk, opts[lb], out, fits, progress) for lb in many_labels}
        studies.append(make_study(name, csk, mk, Plan(kinds=("target", "retain"), n=args.n), tinyworld=True))
        many_names[k] = name
    settings = GenerationSettings(steps=args.steps, guidance=5.0, batch_size=args.batch_size)
    t0 = time.perf_counter()
    res = evaluate(pipe, studies, judge, out_dir=out / model, settings=settings, cache_dir=out / "cache", n_boot=args.bootstrap,
                   progress=progress)
    eval_s = time.perf_counter() - t0
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
        for s, lb in sweep.items():
            r = srun[lb]
            sweep_pts.append((r.edit_summary["sparsity"], r.metrics["erase rate"], r.metrics.get("drift: judge agreement")))
    rows = judge_claims(model, res, main, sweep, many, fits, infer, labels, hw, xl_summary)
    return res, rows, {"many": many, "sweep": sweep_pts, "infer": infer, "eval_seconds": eval_s, "labels": labels}


def claims_markdown(rows: list[Claim], header: str) -> str:
    lines = [header, "", "| id | claim | source | measurement | numbers (%, [95 % interval]; paired Δ with cluster-bootstrap interval, "
             "Holm-corrected exact McNemar; ★ significant) | verdict | rule |", "|---|---|---|---|---|---|---|"]
    model = None
    for r in rows:
        if r.model != model:
            model = r.model
            lines.append(f"| **{model}** | | | | | | |")
        lines.append(r.row())
    counts = {v: sum(r.verdict == v for r in rows) for v in (HOLDS, PARTLY, FAILS, NA)}
    lines += ["", "Verdicts: " + ", ".join(f"{k}: {v}" for k, v in counts.items())]
    return "\n".join(lines) + "\n"


def claims_section(rows: list[Claim], extra: dict, out: Path, model: str) -> str:
    import html

    from erasekit.evaluate import plots
    from erasekit.evaluate.report import figure_html

    e = html.escape
    parts = ["<h2>Claims</h2><table class='paired'><tr><th>id</th><th>claim</th><th>numbers</th><th>verdict</th><th>rule</th></tr>"]
    for r in rows:
        parts.append(f"<tr><td>{e(r.id)}</td><td style='text-align:left'>{e(r.claim)}<br><small>{e(r.source)}</small></td>"
                     f"<td style='text-align:left;white-space:normal'>{e(r.numbers)}</td><td><b>{e(r.verdict)}</b><br><small>{e(r.why)}</small></td>"
                     f"<td style='text-align:left;white-space:normal'><small>{e(r.rule)}</small></td></tr>")
    parts.append("</table>")
    figs = []
    folder = out / model / "plots"
    if extra["sweep"]:
        sp, er, dr = zip(*extra["sweep"])
        if all(d is not None for d in dr):
            figs.append(figure_html(plots.sparsity_sweep(sp, er, dr, f"{model}: SPACE sparsity vs erase vs drift"), "space-sparsity-sweep",
                                    folder, "SPACE sparsity sweep"))
    series = {}
    counts = None
    for lb, pts in extra["many"].items():
        if len(pts) >= 2:
            counts = [p["k"] for p in pts]
            series[f"{lb}: erase"] = [p["erase"] for p in pts]
            series[f"{lb}: retain"] = [p["retain"] for p in pts]
    if series:
        figs.append(figure_html(plots.concepts_curve(counts, series, f"{model}: per-concept rates vs #concepts"), "concepts-curve", folder,
                                "per-concept rates vs number of concepts"))
    if figs:
        parts.append("<div class='figs'>" + "".join(figs) + "</div>")
    return "".join(parts)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (edits, image cache, results, claims.md)")
    ap.add_argument("--models", default="tinyworld,tinyworld-xl", help="models to run on (missing ones are reported as not measurable)")
    ap.add_argument("--methods", default="uce,uce_all,space,pure,pure_text,ace,rece,speed,cure,mace",
                    help="method labels (unregistered ones are skipped and their claims marked not measurable)")
    ap.add_argument("--concept", default="circle", help="the tinyworld concept of the main study")
    ap.add_argument("--n", type=int, default=96, help="prompts per suite (≥ 96 for ±10-point intervals)")
    ap.add_argument("--steps", type=int, default=10, help="DPM-Solver++ steps per image (tinyworld validity holds at 10)")
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
    args = ap.parse_args(argv)
    if args.small:
        args.n, args.steps, args.eta, args.search_steps, args.search_candidates, args.search_prompts = 2, 2, "1", 1, 4, 1
        args.sparsity, args.counts, args.bootstrap, args.repeats = "0.5,0.85", "1,2", 200, 1
        args.methods = "uce,uce_all,space,pure,pure_text,ace"
    args.sparsity = [float(x) for x in args.sparsity.split(",")]
    args.counts = sorted({int(x) for x in args.counts.split(",")} | {1})
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import erasekit
    from erasekit.evaluate.report import write_html, write_json

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    fits_path = out / "fits.json"
    fits = json.loads(fits_path.read_text()) if fits_path.is_file() else {}
    hw = hardware()
    t0 = time.perf_counter()
    all_rows: list[Claim] = []
    models = [m for m in args.models.split(",") if m]
    available = []
    for mdl in models:
        try:
            erasekit.load_pipeline(mdl)
            available.append(mdl)
        except Exception as exc:  # noqa: BLE001 — a model that is not installed is reported, not fatal
            print(f"note: {mdl} is not available here ({type(exc).__name__}: {exc}); its rows are not measurable", file=sys.stderr)
    xl_summary = None
    results = {}
    for mdl in sorted(available, key=lambda x: x != "tinyworld-xl"):  # XL first: the SD row compares with it
        res, rows, extra = run_model(mdl, args, out, fits, hw, xl_summary if mdl == "tinyworld" else None)
        results[mdl] = (res, rows, extra)
        if mdl == "tinyworld-xl":
            from erasekit.evaluate.stats import Comparison  # noqa: F401

            c = find(res.paired[args.concept], "erase rate", "space", "uce_all")
            xl_summary = {"space_vs_uce_all": None if c is None else {"diff": c.diff, "low": c.low, "high": c.high, "text": fmt_cmp(c)}}
    if "tinyworld" in available and "tinyworld-xl" not in available:
        pass
    for mdl in models:
        if mdl in results:
            all_rows.extend(results[mdl][1])
        else:
            all_rows.append(Claim("—", f"every claim on {mdl}", "", "", verdict=NA, why=f"{mdl} is not installed in this build", model=mdl))
    wall = time.perf_counter() - t0
    cmd = "python benchmarks/claims.py " + " ".join(sys.argv[1:] if argv is None else argv)
    size = "SMALL (test size: the numbers mean nothing)" if args.small else (
        "REDUCED (intervals wider than the ±10-point target)" if args.n < 96 else "full size")
    header = (f"# erasekit claims table\n\n`{cmd}` — {size}: n = {args.n} prompts per suite, {args.steps} DPM-Solver++ steps, "
              f"η ∈ {{{args.eta}}}, token search {args.search_steps}×{args.search_candidates} on {args.search_prompts} prompts, "
              f"{args.bootstrap} bootstrap draws; wall time {wall / 60:.1f} min on {hw}; erasekit {erasekit.__version__}.")
    md = claims_markdown(all_rows, header)
    (out / "claims.md").write_text(md)
    (out / "claims.json").write_text(json.dumps({"command": cmd, "wall_seconds": wall, "hardware": hw, "n": args.n, "steps": args.steps,
                                                 "rows": [asdict(r) for r in all_rows]}, indent=1, ensure_ascii=False))
    for mdl, (res, rows, extra) in results.items():
        res.config["claims"] = [asdict(r) for r in rows]
        res.config["fit_seconds"] = {k: v for k, v in fits.items() if k.startswith(f"{mdl}/")}
        res.config["inference_seconds"] = extra["infer"]
        write_json(res, out / mdl / "results.json")
        write_html(res, out / mdl / "report.html", title=f"erasekit claims on {mdl}", sections=(claims_section(rows, extra, out, mdl),))
    print(md)
    print(f"wrote {out / 'claims.md'} and {', '.join(str(out / m / 'report.html') for m in results)} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
