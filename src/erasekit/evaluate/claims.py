"""The founding papers' claims and the rule that gives each its verdict: the claims table.

Each claim is registered with :func:`claim` (its id, what it says, where, and the rule stated in its
row) and judged by a small function on :class:`Measured` (one model's evaluation results, the
many-concepts points, fit and inference seconds). Verdicts: holds / holds partly / does not hold /
not measurable here (with why). ``erasekit claims`` (:mod:`~erasekit.evaluate.claims_run`) measures
and writes the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .stats import Comparison

if TYPE_CHECKING:
    from .results import Results

HOLDS, PARTLY, FAILS, NA = "holds", "holds partly", "does not hold", "not measurable here"
VERDICTS = (HOLDS, PARTLY, FAILS, NA)


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


@dataclass
class Measured:
    """What one model's claims are judged on.

    ``results``: the evaluation (:class:`~erasekit.evaluate.results.Results`); ``study``: its main study;
    ``many``: label -> [{"k", "erase", "retain"}] per number of concepts erased at once; ``fits``:
    "model/study/label" -> fit seconds; ``inference``: state ("unedited" or a label) -> median seconds of one
    pipeline call; ``xl``: the SPACE-vs-dense summary on tinyworld-xl (for SPACE's SDXL claim)."""

    model: str
    results: Results
    study: str
    many: dict
    fits: dict
    inference: dict
    hardware: str
    xl: dict | None = None

    @property
    def runs(self) -> dict:
        return self.results.studies[self.study]

    @property
    def paired(self) -> list[Comparison]:
        return self.results.paired[self.study]

    def have(self, *labels: str) -> list[str]:
        """The labels among ``labels`` that were evaluated, in that order."""
        return [lb for lb in labels if lb in self.runs]

    def metric(self, label: str, name: str):
        return self.runs[label].metrics.get(name) if label in self.runs else None

    @property
    def head(self) -> str | None:
        """The headline concept-vector ASR metric's name (its calibrated η is in the name)."""
        first = next(iter(self.runs.values())).metrics
        return next((k for k in first if k.startswith("ASR ring-a-bell (headline")), None)

    def find(self, metric: str, a: str, b: str) -> Comparison | None:
        return find(self.paired, metric, a, b)


# ----------------------------------------------------------------------------- formatting
def pct(e) -> str:
    return "–" if e is None else f"{100 * e.value:.0f} [{100 * e.low:.0f}–{100 * e.high:.0f}]"


def _pts(x: float) -> str:
    return f"{round(100 * x) or 0:+d}"  # no "-0"


def fmt_cmp(c) -> str:
    star = " ★" if c.significant else ""
    return f"{c.a} − {c.b}: {_pts(c.diff)} [{_pts(c.low)}, {_pts(c.high)}] pts, p_Holm {c.p_holm:.2g}{star}"


def rule_text(fn) -> str:
    return " ".join(fn.__doc__.split())


def find(paired, metric, a, b) -> Comparison | None:
    """The comparison of ``a`` and ``b`` on ``metric``, oriented as a − b (sign flipped when stored as b − a)."""
    for c in paired:
        if c.metric != metric:
            continue
        if (c.a, c.b) == (a, b):
            return c
        if (c.a, c.b) == (b, a):
            return Comparison(
                c.metric,
                a,
                b,
                c.rate_b,
                c.rate_a,
                -c.diff,
                -c.high,
                -c.low,
                c.n,
                c.clusters,
                c.b_only,
                c.a_only,
                c.p,
                c.p_holm,
                c.significant,
                c.level,
                c.alpha,
            )
    return None


# ----------------------------------------------------------------------------- shared rules
def better_rule(comps, higher_is_better: bool = True) -> str:
    """holds: significantly better than every comparator; partly: better in point estimate for all or significant
    for some; does not hold otherwise (or when a comparator is significantly better)."""
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


def _scales_rule(pts: list[dict]) -> str:
    """At the largest k: erase ≥ 80 % and retain ≥ 80 % of its k = 1 value (holds: both; partly: one)."""
    a, b = pts[-1]["erase"].value >= 0.8, pts[-1]["retain"].value >= 0.8 * pts[0]["retain"].value
    return HOLDS if a and b else PARTLY if a or b else FAILS


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class ClaimSpec:
    id: str
    claim: str
    source: str
    rule: str
    judge: Callable[[Claim, Measured], None]  # fills the row's measurement, numbers, verdict and why


CLAIMS: dict[str, ClaimSpec] = {}


def claim(id: str, text: str, source: str, rule: str):
    """Register the decorated ``judge(row, measured)`` as claim ``id`` (rows keep registration order)."""

    def register(fn: Callable[[Claim, Measured], None]):
        CLAIMS[id] = ClaimSpec(id, text, source, rule, fn)
        return fn

    return register


def judge_claims(m: Measured) -> list[Claim]:
    """One row per registered claim for ``m.model``; a row left unmeasured says why."""
    rows = []
    for spec in CLAIMS.values():
        c = Claim(spec.id, spec.claim, spec.source, spec.rule)
        spec.judge(c, m)
        c.model = m.model
        if c.verdict == NA and not c.why:
            c.why = "a method it needs is missing or the measurement was not run"
        rows.append(c)
    return rows


def not_installed(model: str) -> Claim:
    """The one row of a model that could not be loaded: every claim on it is not measurable here."""
    return Claim(
        "—", f"every claim on {model}", "", "", verdict=NA, why=f"{model} is not installed in this build", model=model
    )


def claims_markdown(rows: list[Claim], header: str) -> str:
    columns = (
        "| id | claim | source | measurement | numbers (%, [95 % interval]; paired Δ with cluster-bootstrap "
        "interval, Holm-corrected exact McNemar; ★ significant) | verdict | rule |"
    )
    lines = [header, "", columns, "|---|---|---|---|---|---|---|"]
    model = None
    for r in rows:
        if r.model != model:
            model = r.model
            lines.append(f"| **{model}** | | | | | | |")
        lines.append(r.row())
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    lines += ["", "Verdicts: " + ", ".join(f"{k}: {v}" for k, v in counts.items())]
    return "\n".join(lines) + "\n"


DENSE = ("uce_all", "uce", "rece")  # the dense closed-form baselines SPACE is compared with


# --- SPACE
@claim(
    "SPACE-1",
    "80–90 % cross-attention sparsity while erasing",
    "SPACE (arXiv 2605.10198), abstract",
    "holds: SPACE's edit is 80–90 % zeros AND its erase rate is significantly above the unedited model's; partly: "
    "sparsity in range but erasure not significant; does not hold: sparsity out of range",
)
def _space_sparsity(c: Claim, m: Measured) -> None:
    if "space" not in m.runs:
        c.why = "SPACE is not registered"
        return
    sp = m.runs["space"].edit_summary["sparsity"]
    cmp_ = m.find("erase rate", "space", "unedited")
    c.measurement = "share of exact zeros in SPACE's edited to_k/to_v (target_sparsity 0.85), erase rate vs unedited"
    c.numbers = f"sparsity {100 * sp:.1f} %; erase {pct(m.metric('space', 'erase rate'))}; {fmt_cmp(cmp_)}"
    ok = 0.80 <= sp <= 0.90
    c.verdict = (HOLDS if cmp_ is not None and cmp_.significant and cmp_.diff > 0 else PARTLY) if ok else FAILS
    c.why = "the sparsity is the configured target; the test is whether erasure works at it"


@claim(
    "SPACE-2",
    "~70 % less storage than a dense edit",
    "SPACE, abstract",
    "saving = 1 − CSR bytes / dense fp32 bytes of the same layers; holds ≥ 65 %, partly ≥ 50 %",
)
def _space_storage(c: Claim, m: Measured) -> None:
    if "space" not in m.runs:
        return
    s = m.runs["space"].edit_summary
    saving = 1 - s["bytes"] / s["dense_fp32_bytes"]
    c.measurement = "edit file tensors vs dense fp32"
    c.numbers = f"{s['bytes']:,} vs {s['dense_fp32_bytes']:,} bytes: {100 * saving:.1f} % less"
    c.verdict = HOLDS if saving >= 0.65 else PARTLY if saving >= 0.5 else FAILS


@claim(
    "SPACE-3",
    "erasure at least as strong as the dense closed-form baselines (UCE, RECE)",
    "SPACE, abstract",
    "paired erase and paraphrase-erase rate, SPACE vs each dense baseline present: "
    + rule_text(at_least_rule).split(":", 1)[1].strip(),
)
def _space_at_least(c: Claim, m: Measured) -> None:
    dense = m.have(*DENSE)
    if "space" not in m.runs or not dense:
        return
    comps = [
        x for b in dense for x in (m.find("erase rate", "space", b), m.find("paraphrase erase rate", "space", b)) if x
    ]
    c.measurement = f"SPACE vs {', '.join(dense)} (uce = published last token; uce_all = SPACE's templates and tokens)"
    c.numbers = "; ".join(f"{x.metric}: {fmt_cmp(x)}" for x in comps)
    c.verdict = at_least_rule(comps)
    c.why = "" if "rece" in m.runs else "RECE not registered: UCE only"


@claim(
    "SPACE-4",
    "the advantage over dense baselines is larger on SDXL than on SD 1.x",
    "SPACE, abstract",
    "Δ = erase(SPACE) − erase(uce_all) on tinyworld-xl vs on tinyworld; holds if the XL interval lies above the SD "
    "one, partly if the XL point is larger, does not hold otherwise",
)
def _space_sdxl(c: Claim, m: Measured) -> None:
    if m.xl is None or m.model != "tinyworld":
        c.why = (
            "tinyworld-xl was not measured in this run (not in --models, or not installed)"
            if m.model == "tinyworld"
            else "judged on the tinyworld row"
        )
        return
    here = m.find("erase rate", "space", "uce_all")
    there = m.xl.get("space_vs_uce_all")
    if here and there:
        c.measurement = "paired erase-rate difference on each architecture"
        c.numbers = f"SD 1.x: {fmt_cmp(here)}; SDXL: {there['text']}"
        c.verdict = HOLDS if there["low"] > here.high else PARTLY if there["diff"] > here.diff else FAILS


@claim(
    "SPACE-5",
    "more robust than the dense baselines to adversarial prompts",
    "SPACE, abstract",
    "paired headline concept-vector ASR (calibrated η), SPACE vs each dense baseline: lower is better; "
    + rule_text(better_rule),
)
def _space_robust(c: Claim, m: Measured) -> None:
    dense, head = m.have(*DENSE), m.head
    if "space" not in m.runs or not dense or not head:
        return
    comps = [x for b in dense for x in [m.find(head, "space", b)] if x]
    ts = m.results.attacks[m.study].get("token-search", {}).get("methods", {})
    c.measurement = f"{head}; token search (judge ASR, not paired: prompts differ per method) reported beside"
    c.numbers = (
        "; ".join(fmt_cmp(x) for x in comps)
        + "; token search: "
        + ", ".join(f"{k} {pct(v['judge ASR'])}" for k, v in ts.items() if k in ["space", *dense])
    )
    c.verdict = better_rule(comps, higher_is_better=False)


@claim(
    "SPACE-6",
    "general-prompt quality kept",
    "SPACE, abstract",
    "judge agreement with the unedited model on general prompts (same seeds): holds if the interval's lower end "
    "≥ 90 %, partly if the point ≥ 90 %",
)
def _space_quality(c: Claim, m: Measured) -> None:
    ag = m.metric("space", "drift: judge agreement")
    if ag is None:
        return
    c.measurement = "share of general images whose shape/colour/pattern decisions equal the unedited model's"
    c.numbers = f"SPACE {pct(ag)}; " + ", ".join(
        f"{b} {pct(m.metric(b, 'drift: judge agreement'))}" for b in m.have(*DENSE)
    )
    c.verdict = HOLDS if ag.low >= 0.9 else PARTLY if ag.value >= 0.9 else FAILS


# --- PURE
@claim(
    "PURE-1",
    "less target leakage under paraphrased prompts than text-embedding closed forms (UCE, CURE, its text basis)",
    "PURE (arXiv 2605.25765), HUB results",
    "paired paraphrase erase rate, PURE vs each: " + rule_text(better_rule),
)
def _pure_paraphrase(c: Claim, m: Measured) -> None:
    comps_to = m.have("uce", "uce_all", "cure", "pure_text")
    if "pure" not in m.runs or not comps_to:
        return
    comps = [x for b in comps_to for x in [m.find("paraphrase erase rate", "pure", b)] if x]
    c.measurement, c.numbers = "synonym-only prompts", "; ".join(fmt_cmp(x) for x in comps)
    c.verdict = better_rule(comps)
    c.why = "" if "cure" in m.runs else "CURE not registered"


@claim(
    "PURE-2",
    "best forget–retain harmonic mean among the methods evaluated",
    "PURE, HUB table (0.640 vs CURE 0.543, UCE 0.527)",
    "harmonic mean of erase, paraphrase-erase and retain rates: holds if PURE's is the highest and above every "
    "other's interval; partly if the highest point or inside the best's interval; does not hold otherwise",
)
def _pure_hmean(c: Claim, m: Measured) -> None:
    hm = {k: r.metrics.get("harmonic mean") for k, r in m.runs.items() if r.metrics.get("harmonic mean") is not None}
    if "pure" not in hm:
        return
    best = max(hm, key=lambda k: hm[k].value)
    p = hm["pure"]
    c.measurement = "harmonic mean, bootstrap intervals (suites resampled independently)"
    c.numbers = ", ".join(f"{k} {pct(v)}" for k, v in sorted(hm.items(), key=lambda kv: -kv[1].value))
    others = [v for k, v in hm.items() if k != "pure"]
    c.verdict = (
        (HOLDS if all(p.value > o.high for o in others) else PARTLY)
        if best == "pure"
        else (PARTLY if p.high >= hm[best].value else FAILS)
    )


@claim(
    "PURE-3",
    "no inference-time cost",
    "PURE, abstract",
    "median seconds of one pipeline call with the edit applied vs unedited (same batch, interleaved): holds within "
    "±10 %",
)
def _pure_inference(c: Claim, m: Measured) -> None:
    infer = m.inference
    if "pure" not in infer:
        return
    r = infer["pure"] / infer["unedited"]
    c.measurement = "the edit is merged into W_K/W_V (same shapes, no hook); wall time measured"
    c.numbers = f"{infer['pure']:.3f} s vs {infer['unedited']:.3f} s unedited (×{r:.2f}); " + ", ".join(
        f"{k} ×{v / infer['unedited']:.2f}" for k, v in infer.items() if k not in ("pure", "unedited")
    )
    c.verdict = HOLDS if abs(r - 1) <= 0.10 else FAILS


# --- ACE
@claim(
    "ACE-1",
    "erases the concept and its synonyms while preserving unrelated content",
    "ACE (arXiv 2504.11850), abstract",
    "holds: erase and paraphrase-erase significantly above unedited and ≥ 80 %, retain not significantly below "
    "unedited; partly: erasure significant but a synonym rate < 80 % or retain significantly lower; does not hold: "
    "erasure not significant",
)
def _ace_erases(c: Claim, m: Measured) -> None:
    if "ace" not in m.runs:
        return
    e, pp, rt = (m.find(k, "ace", "unedited") for k in ("erase rate", "paraphrase erase rate", "retain rate"))
    c.measurement = "paired vs the unedited model"
    c.numbers = "; ".join(f"{x.metric}: ACE {100 * x.rate_a:.0f} %, {fmt_cmp(x)}" for x in (e, pp, rt) if x)
    if not (e and e.significant and e.diff > 0):
        c.verdict = FAILS
    elif pp and pp.significant and pp.rate_a >= 0.8 and e.rate_a >= 0.8 and not (rt and rt.significant and rt.diff < 0):
        c.verdict = HOLDS
    else:
        c.verdict = PARTLY


@claim(
    "ACE-2",
    "scales to many concepts",
    "ACE, abstract",
    "per-concept erase and retain rates with k concepts erased at once: holds if at the largest k erase ≥ 80 % and "
    "retain ≥ 80 % of its k = 1 value; partly if one of the two; does not hold otherwise",
)
def _ace_scales(c: Claim, m: Measured) -> None:
    pts = m.many.get("ace")
    if not pts:
        return
    c.measurement = f"ACE with k = {', '.join(str(p['k']) for p in pts)} shapes erased together"
    c.numbers = "; ".join(f"k={p['k']}: erase {pct(p['erase'])}, retain {pct(p['retain'])}" for p in pts)
    c.verdict = _scales_rule(pts)


@claim(
    "ACE-3",
    "a few seconds of adaptation per concept",
    "ACE, abstract",
    "fit seconds per concept on this hardware: holds ≤ 10 s, partly ≤ 60 s",
)
def _ace_seconds(c: Claim, m: Measured) -> None:
    ace_fits = {k: v for k, v in m.fits.items() if k.startswith(f"{m.model}/") and k.endswith("/ace")}
    if not ace_fits:
        return
    per = [v / max(1, len(k.split("/")[1].split("+"))) for k, v in ace_fits.items()]
    worst = max(per)
    c.measurement = f"stage 1 + stage 2 fit wall time ({m.hardware})"
    c.numbers = (
        ", ".join(f"{k.split('/')[1]}: {v:.1f} s" for k, v in ace_fits.items()) + f"; worst per concept {worst:.1f} s"
    )
    c.verdict = HOLDS if worst <= 10 else PARTLY if worst <= 60 else FAILS


# --- baselines' own headline claims
@claim(
    "RECE-1",
    "robust to adversarial embeddings (beats UCE under attack)",
    "RECE (Gong et al., ECCV 2024)",
    "paired headline concept-vector ASR, RECE vs UCE (lower is better): " + rule_text(better_rule),
)
def _rece_robust(c: Claim, m: Measured) -> None:
    head = m.head
    if "rece" not in m.runs or not head:
        c.why = "RECE is not registered in this build"
        return
    comps = [x for b in ("uce", "uce_all") for x in [m.find(head, "rece", b)] if x]
    c.measurement, c.numbers = head, "; ".join(fmt_cmp(x) for x in comps)
    c.verdict = better_rule(comps, higher_is_better=False)


@claim(
    "SPEED-1",
    "prior preservation: neighbouring concepts survive better than with UCE",
    "SPEED (Li et al., 2025)",
    "paired retain rate, SPEED vs UCE: " + rule_text(better_rule),
)
def _speed_prior(c: Claim, m: Measured) -> None:
    if "speed" not in m.runs:
        c.why = "SPEED is not registered in this build"
        return
    comps = [x for b in ("uce", "uce_all") for x in [m.find("retain rate", "speed", b)] if x]
    c.measurement, c.numbers, c.verdict = "retain rate", "; ".join(fmt_cmp(x) for x in comps), better_rule(comps)


@claim(
    "MACE-1",
    "erases many concepts at once without losing the rest",
    "MACE (Lu et al., CVPR 2024)",
    "as ACE-2, for MACE",
)
def _mace_scales(c: Claim, m: Measured) -> None:
    pts = m.many.get("mace")
    if not pts:
        c.why = "MACE is not implemented in erasekit" + (
            "; UCE's many-concept points are in the plot" if m.many.get("uce_all") else ""
        )
        return
    c.numbers = "; ".join(f"k={p['k']}: erase {pct(p['erase'])}, retain {pct(p['retain'])}" for p in pts)
    c.verdict = _scales_rule(pts)
