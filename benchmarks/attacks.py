r"""Every registered attack against UCE / SPACE / PURE / ACE on tinyworld or tinyworld-xl, at the default (CPU) budget.

Prints, per attack: its cost (seconds and model evaluations per attacked prompt) and its attack success rate against
each method beside the unedited model's rate on the same attacked items, plus two reference edits: ``weak`` (UCE on
the mid block and the first up block only, which leaves about half of circle on tinyworld but only 12 % on
tinyworld-xl; ``--weak-regex`` names other blocks: on tinyworld-xl every block but the mid block leaves 69 %) and
``noop`` (UCE with erase_scale 0, the base weights back), whose ASR must equal the unedited rate;
a last row gives each edit's rate on the named prompts without attack. A second table gives, per attack and edit, the
same attack counted as the reference protocols count it (:func:`erasekit.evaluate.summary.protocol_rates`, the
counts the evaluation's summary already carries): the conditional ASR over the items whose unattacked prompt the
unedited model draws (the references attack only such prompts; the unedited model's rate on their attacked prompts in
brackets), UnlearnDiffAtk's count (the unattacked prompt's success on the edit counts too) and P4D's (only the
"ideal" items: drawn by the unedited model, not by the edited one), each with its number of items; "–" where a count
is over no item (the noop edit leaves no ideal item). ``attacks-table.json`` holds these rates beside each cell's
ASR, the conditional pre-attack ASR (UnlearnDiffAtk's Pre-ASR) too; ``report.html`` and ``results.json`` are the
evaluation's own (every attack's prompts and images; the attack × method picture in ``plots/``). The run is the
evaluation's own (:func:`erasekit.evaluate.evaluate`: the attack stage, the image cache, the judge), so its total time
is what ``erasekit bench --attack <all>`` costs for these methods.

    OMP_NUM_THREADS=1 python benchmarks/attacks.py --concept circle --n 16 --threads 1 --out /tmp/bench-attacks
    OMP_NUM_THREADS=1 python benchmarks/attacks.py --model tinyworld-xl --concept circle --n 16 --threads 1
    OMP_NUM_THREADS=2 python benchmarks/attacks.py --model tinyworld-xl --methods '' --concept circle --n 16 \
        --weak-regex '(down_blocks\.[12]|up_blocks\.[01]).*attn2\.to_[kv]$' --threads 2   # the reference edits only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _attack_tables import PROTOCOL_HEAD, PROTOCOL_NOTE, pct, protocol_cells, protocol_values  # noqa: E402

REFERENCE_EDITS = {
    "weak": ("uce", {"layer_regex": r"(mid_block|up_blocks\.0).*attn2\.to_[kv]$"}),
    "noop": ("uce", {"erase_scale": 0.0}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="tinyworld",
        choices=("tinyworld", "tinyworld-xl"),
        help="bundled UNet model (the weak edit names UNet blocks: mid block and first up block)",
    )
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--n", type=int, default=16, help="target prompts (tinyworld items per suite)")
    ap.add_argument("--methods", default="uce,space,pure,ace")
    ap.add_argument("--attacks", default="all", help="comma-separated registered attacks, or 'all'")
    ap.add_argument("--budget", default="default", choices=("default", "paper"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/erasekit-bench-attacks")
    ap.add_argument("--no-reference-edits", action="store_true", help="skip the weak and no-op edits")
    ap.add_argument(
        "--weak-regex",
        default=REFERENCE_EDITS["weak"][1]["layer_regex"],
        help="UCE's layer_regex for the weak edit (default: the mid block and the first up block, which keeps about "
        "half of circle on tinyworld; on tinyworld-xl every block but the mid block keeps 69 %%)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import erasekit
    from erasekit.evaluate import evaluate
    from erasekit.evaluate.attacks import list_attacks
    from erasekit.evaluate.bench import tinyworld_concept_set
    from erasekit.evaluate.judges import make_judge
    from erasekit.evaluate.plan import Plan, make_study
    from erasekit.evaluate.render import GenerationSettings

    attacks = tuple(list_attacks()) if args.attacks == "all" else tuple(args.attacks.split(","))
    plan = Plan(kinds=("target", "adversarial"), n=args.n, attacks=attacks, budget=args.budget)
    pipe = erasekit.load_pipeline(args.model)
    judge = make_judge("tinyworld")
    cs = tinyworld_concept_set(args.concept)
    edits, fit_s = {}, {}
    labels = {m: (m, {}) for m in args.methods.split(",") if m}  # --methods '' runs the reference edits only
    if not args.no_reference_edits:
        labels.update(REFERENCE_EDITS)
        labels["weak"] = ("uce", {"layer_regex": args.weak_regex})
    if not labels:
        ap.error("nothing to attack: give --methods or drop --no-reference-edits")
    for label, (method, options) in labels.items():
        t0 = time.perf_counter()
        edits[label] = erasekit.erase(pipe, method, cs, progress=False, **options)
        fit_s[label] = time.perf_counter() - t0
    study = make_study(args.concept, cs, edits, plan, tinyworld=True)
    t0 = time.perf_counter()
    res = evaluate(
        pipe,
        [study],
        judge,
        out_dir=Path(args.out),
        settings=GenerationSettings(steps=args.steps, guidance=5.0, batch_size=32),
        cache_dir=Path(args.out) / "cache",
        n_boot=200,
        progress=True,
    )
    wall = time.perf_counter() - t0
    assert res is not None
    rows = table(res, args.concept, list(labels))
    named = named_rates(res, args.concept, list(labels))
    print_table(rows, list(labels), args, res, fit_s, wall, named)
    out = {"model": args.model, "concept": args.concept, "n": args.n, "named": named, "attacks": rows}
    (Path(args.out) / "attacks-table.json").write_text(json.dumps(out, indent=1, default=str))
    # the evaluation's own page and results: every attack's prompts and images, and the attack × method picture
    from erasekit.evaluate.report import write_html, write_json

    write_json(res, Path(args.out) / "results.json")
    page = write_html(res, Path(args.out) / "report.html", title=f"benchmarks/attacks.py: {args.model}, {args.concept}")
    print(f"report: {page} (picture: {Path(args.out) / 'plots' / f'attacks-{args.concept}.png'})")


def named_rates(res, study: str, labels: list[str]) -> dict[str, dict[str, float]]:
    """label -> the unattacked named prompts' rate (the target suite) on the edited and the unedited model."""
    out = {}
    for label in labels:
        for s in res.studies[study][label].suites.values():
            if s.suite.kind == "target":
                out[label] = {
                    "edited": float(s.attacked("edited").mean()),
                    "unedited": float(s.attacked("unedited").mean()),
                }
    return out


def table(res, study: str, labels: list[str]) -> dict[str, dict]:
    """attack -> {kind, seconds per prompt, evaluations per prompt (per method for searched attacks), ASR and the
    unedited rate per method, and the same counted as the reference protocols count it}.

    The protocol counts are the evaluation's own (each registry attack's row of ``res.attacks``); Ring-A-Bell's
    headline suite, which the evaluation summarises as an η curve instead, is counted here by the same function
    (:func:`~erasekit.evaluate.summary.protocol_rates`)."""
    from erasekit.evaluate.attacks.ring_a_bell import eta_suite_name
    from erasekit.evaluate.summary import protocol_rates

    summary = res.attacks.get(study, {})
    headline = summary.get("ring-a-bell", {}).get("headline_eta")
    out: dict[str, dict] = {}
    for label in labels:
        for name, s in res.studies[study][label].suites.items():
            info = s.suite.info
            if s.suite.kind != "adversarial" or "record" not in info:
                continue
            if "eta" in info and name != eta_suite_name(info["attack"], headline):
                continue
            rec = info["record"]
            counted = summary.get(rec["attack"], {}).get("methods", {}).get(label)
            if counted is None or "conditional items" not in counted:
                target = next((t for t in res.studies[study][label].suites.values() if t.suite.kind == "target"), None)
                counted = protocol_rates(target, s, n_boot=20)  # only the values are printed
            attacked_e, attacked_u = s.attacked("edited"), s.attacked("unedited")
            n = len(attacked_e)
            row = out.setdefault(rec["attack"], {"kind": rec["kind"], "methods": {}})
            cost = rec["cost"]
            row["methods"][label] = {
                "ASR": float(attacked_e.mean()),
                "unedited": float(attacked_u.mean()),
                "n": n,
                "s/prompt": cost["seconds"] / max(n, 1),
                "denoiser evals/prompt": cost["denoiser_evaluations"] / max(n, 1),
                "text evals/prompt": cost["text_encoder_evaluations"] / max(n, 1),
                "seconds": cost["seconds"],
                "eta": info.get("eta"),
                **protocol_values(counted),
            }
    return out


def print_table(rows, labels, args, res, fit_s, wall, named) -> None:
    print(
        f"\n{args.model}, concept {args.concept}, n = {args.n} target prompts, {args.steps} steps, "
        f"budget {args.budget}, "
        f"{args.threads} torch thread(s)"
    )
    head = "| attack | kind | s / attacked prompt | denoiser evals / prompt | text-encoder evals / prompt | "
    head += " | ".join(f"ASR {lb} (unedited)" for lb in labels) + " |"
    print(head)
    print("|" + "---|" * (5 + len(labels)))
    for attack, row in rows.items():
        ms = row["methods"]
        first = next(iter(ms.values()))
        searched = len({round(m["seconds"], 3) for m in ms.values()}) > 1

        def span(key: str, fmt: str) -> str:
            vals = [m[key] for m in ms.values()]
            lo, hi = min(vals), max(vals)
            return format(lo, fmt) if not searched or lo == hi else f"{format(lo, fmt)}–{format(hi, fmt)}"

        cells = [
            f"{100 * ms[lb]['ASR']:.0f} % ({100 * ms[lb]['unedited']:.0f} %)" if lb in ms else "–" for lb in labels
        ]
        name = attack + (f" (η = {first['eta']:g})" if first.get("eta") is not None else "")
        print(
            f"| {name} | {row['kind']} | {span('s/prompt', '.2f')} | {span('denoiser evals/prompt', '.0f')} | "
            f"{span('text evals/prompt', '.0f')} | " + " | ".join(cells) + " |"
        )
    cells = [
        f"{100 * named[lb]['edited']:.0f} % ({100 * named[lb]['unedited']:.0f} %)" if lb in named else "–"
        for lb in labels
    ]
    print("| (named prompt, no attack) | – | – | – | – | " + " | ".join(cells) + " |")
    print(f"\nThe same, counted as the references count it: {PROTOCOL_NOTE}")
    print(f"| attack | edit | ASR (unedited) [n] | {PROTOCOL_HEAD} |")
    print("|---|---|---|---|---|---|")
    for attack, row in rows.items():
        for lb in labels:
            c = row["methods"].get(lb)
            if c is not None:
                name = attack + (f" (η = {c['eta']:g})" if c.get("eta") is not None else "")
                print(f"| {name} | {lb} | {pct(c['ASR'])} ({pct(c['unedited'])}) [{c['n']}] | {protocol_cells(c)} |")
    t = res.timing
    print(
        f"\nfits: {', '.join(f'{k} {v:.1f} s' for k, v in fit_s.items())}; evaluation {wall:.0f} s "
        f"(attacks {t['attack_seconds']:.0f} s, generation {t['generation_seconds']:.0f} s of "
        f"{t['images_generated']} images, judge {t['judge_seconds']:.0f} s)"
    )


if __name__ == "__main__":
    main()
