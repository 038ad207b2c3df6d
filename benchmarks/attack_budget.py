"""ASR against budget on a weak edit: does an attack reach the issue's sanity bar (ASR ≥ 80 % on a weak edit) at
×1, ×2, ×4 … its default (CPU) budget, and at what cost?

Per attack, one budget knob is multiplied (:data:`KNOBS`: the number of draws, search steps or optimisation steps);
everything else stays at the default. Each ratio is one run of the evaluation itself (its attack stage, image cache and
judge) against one UCE edit restricted to a few blocks (``--edit-regex``), sharing one image cache, so the
unattacked images are made once. Prints, per attack and ratio: ASR on the weak edit and, in brackets, the unedited
model's rate on the same attacked items, and the attack's seconds per attacked prompt (its search plus the images the
evaluation renders for it). Beside it, the same attack counted as the reference protocols count it
(:func:`erasekit.evaluate.summary.protocol_rates`): the conditional ASR over the items whose unattacked prompt the
unedited model draws (the references attack only such prompts; the unedited model's rate on their attacked prompts
in brackets), UnlearnDiffAtk's count (the unattacked prompt's success on the edit counts too) and P4D's (only the
"ideal" items: drawn by the unedited model, not by the edited one), each with its number of items.

Choose budgets on a development concept, not on the reported one (circle). On tinyworld the default weak edit (mid
block + first up block) keeps 100 % of square, blue, red, striped … and 50 % of circle only; for a development
concept use e.g. ``--concept dotted --edit-regex '(mid_block|up_blocks\\.[01]).*attn2\\.to_[kv]$'`` (keeps 50 % of
dotted; the unedited model draws 81 %)::

    OMP_NUM_THREADS=1 python benchmarks/attack_budget.py --concept dotted \\
        --edit-regex '(mid_block|up_blocks\\.[01]).*attn2\\.to_[kv]$' --ratios 1,2,4 --n 16 --threads 1
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

WEAK_REGEX = r"(mid_block|up_blocks\.0).*attn2\.to_[kv]$"
# attack -> the budget field multiplied by the ratio
KNOBS = {
    "nbp": "samples",
    "token-search": "steps",
    "p4d-n": "steps",
    "p4d-k": "steps",
    "mma": "steps",
    "uda": "iterations",
    "cce": "steps",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tinyworld", choices=("tinyworld", "tinyworld-xl"))
    ap.add_argument("--concept", default="dotted", help="a development concept (not the reported one)")
    ap.add_argument("--edit-regex", default=WEAK_REGEX, help="UCE's layer_regex for the weak edit")
    ap.add_argument("--attacks", default="nbp,token-search,p4d-n,mma")
    ap.add_argument("--ratios", default="1,2,4", help="multiples of each attack's default budget knob")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/erasekit-attack-budget")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ATTACK.OPTION=VALUE",
        help="an attack option held fixed at every ratio (e.g. token-search.proposals=gradient)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import erasekit
    from erasekit.evaluate import evaluate
    from erasekit.evaluate.attacks import make_attack_config, parse_attack_options
    from erasekit.evaluate.bench import tinyworld_concept_set
    from erasekit.evaluate.judges import make_judge
    from erasekit.evaluate.plan import Plan, make_study
    from erasekit.evaluate.render import GenerationSettings
    from erasekit.evaluate.summary import protocol_rates, target_outcomes

    attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    ratios = [float(r) for r in args.ratios.split(",")]
    fixed = parse_attack_options(args.set, attacks)  # refused here, before any model loads
    pipe = erasekit.load_pipeline(args.model)
    judge = make_judge("tinyworld")
    cs = tinyworld_concept_set(args.concept)
    edit = erasekit.erase(pipe, "uce", cs, progress=False, layer_regex=args.edit_regex)
    settings = GenerationSettings(steps=args.steps, guidance=5.0, batch_size=32)
    out = Path(args.out)
    cells: dict[str, dict[float, dict]] = {a: {} for a in attacks}
    named = None
    for r in ratios:
        options = {}
        for a in attacks:
            knob = KNOBS[a]
            default = getattr(make_attack_config(a, "default"), knob)
            options[a] = {**fixed[a], knob: max(1, round(default * r))}
        plan = Plan(kinds=("target", "adversarial"), n=args.n, attacks=attacks, attack_options=options)
        study = make_study(args.concept, cs, {"weak": edit}, plan, tinyworld=True)
        t0 = time.perf_counter()
        res = evaluate(
            pipe,
            [study],
            judge,
            out_dir=out / f"x{r:g}",
            settings=settings,
            cache_dir=out / "cache",
            n_boot=20,
            progress=True,
        )
        assert res is not None
        run = res.studies[args.concept]["weak"]
        target = run.suites["target"]
        named = (float(target.seen("edited").mean()), float(target.seen("unedited").mean()))
        for s in run.suites.values():
            info = s.suite.info
            if s.suite.kind != "adversarial" or "record" not in info:
                continue
            rec = info["record"]
            n = len(s.attacked("edited"))
            faithful = protocol_rates(target, s, n_boot=20)
            u0, e0 = target_outcomes(target, s) or (None, None)
            cells[rec["attack"]][r] = {
                "knob": f"{KNOBS[rec['attack']]}={options[rec['attack']][KNOBS[rec['attack']]]}",
                "ASR": float(s.attacked("edited").mean()),
                "unedited": float(s.attacked("unedited").mean()),
                "n": n,
                "search s/prompt": rec["cost"]["seconds"] / max(n, 1),
                "images": len(s.suite.items),
                **protocol_values(faithful),
                # per attacked item, to recount any protocol later: edited / unedited on the attacked prompt and on
                # the unattacked target prompt at the same seed
                "items": {
                    "e_a": s.attacked("edited").tolist(),
                    "u_a": s.attacked("unedited").tolist(),
                    "e_0": None if e0 is None else e0.tolist(),
                    "u_0": None if u0 is None else u0.tolist(),
                },
            }
        print(f"ratio ×{r:g}: {time.perf_counter() - t0:.0f} s", flush=True)
    assert named is not None
    print(
        f"\n{args.model}, concept {args.concept}, weak edit UCE on {args.edit_regex!r}: named prompts "
        f"{100 * named[0]:.0f} % (unedited {100 * named[1]:.0f} %), n = {args.n}, {args.steps} steps, "
        f"{args.threads} thread(s)"
    )
    print(
        "| attack | knob | " + " | ".join(f"×{r:g}: ASR (unedited), search s, images / prompt" for r in ratios) + " |"
    )
    print("|" + "---|" * (2 + len(ratios)))
    for a in attacks:
        row = cells[a]
        knobs = ", ".join(row[r]["knob"] for r in ratios if r in row)
        vals = [
            f"{100 * row[r]['ASR']:.0f} % ({100 * row[r]['unedited']:.0f} %), {row[r]['search s/prompt']:.2f} s, "
            f"{row[r]['images'] / max(row[r]['n'], 1):.0f} img"
            if r in row
            else "–"
            for r in ratios
        ]
        print(f"| {a} | {knobs} | " + " | ".join(vals) + " |")
    print(f"\nThe same, counted as the references count it: {PROTOCOL_NOTE}")
    print(f"| attack | ratio | ASR (unedited) [n] | {PROTOCOL_HEAD} |")
    print("|---|---|---|---|---|---|")
    for a in attacks:
        for r in ratios:
            c = cells[a].get(r)
            if c is None:
                continue
            print(f"| {a} | ×{r:g} | {pct(c['ASR'])} ({pct(c['unedited'])}) [{c['n']}] | {protocol_cells(c)} |")
    (out / "budget-table.json").write_text(
        json.dumps(
            {"named": named, "cells": {a: {str(r): v for r, v in c.items()} for a, c in cells.items()}}, indent=1
        )
    )


if __name__ == "__main__":
    main()
