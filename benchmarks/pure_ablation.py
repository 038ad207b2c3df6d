"""PURE reconstruction ablation on tinyworld: which centring / energy rule / steps make the activation basis erase?

    python benchmarks/pure_ablation.py --split dev  # choose on square, blue, dotted
    python benchmarks/pure_ablation.py --split val --variants published,CHOSEN,text_tail  # report: circle, red, striped

Development concepts choose the defaults; validation concepts are never used to choose.
Prints one row per (variant, concept): erase % on named prompts, on paraphrases, retain %,
fit seconds, mean forget rank; then per variant the means. Reduced sizes by default
(--n 8 prompts per suite, --steps 10), so differences under ~30 points are noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tw import World, fit, fmt  # noqa: E402
from erasekit.evaluate.bench import tinyworld_concept_set  # noqa: E402

SPLITS = {"dev": ("square", "blue", "dotted"), "val": ("circle", "red", "striped")}
VARIANTS = {
    "published": dict(centre="none", forget_energy=0.9, retain_energy=0.99),
    "none_95_50": dict(centre="none", forget_energy=0.95, retain_energy=0.5),
    "retain_99_50": dict(centre="retain", forget_energy=0.99, retain_energy=0.5),
    "paired_99_50": dict(centre="paired", forget_energy=0.99, retain_energy=0.5),
    "paired_res_100_50": dict(centre="paired", forget_rule="residual", forget_energy=1.0, retain_energy=0.5),
    "paired_res_100_50_late": dict(
        centre="paired", forget_rule="residual", forget_energy=1.0, retain_energy=0.5, record_steps="late"
    ),
    "paired_res_100_50_v": dict(
        centre="paired", forget_rule="residual", forget_energy=1.0, retain_energy=0.5, k_basis="none"
    ),
    "paired_res_100_50_4lat": dict(
        centre="paired", forget_rule="residual", forget_energy=1.0, retain_energy=0.5, n_latents=4
    ),
    "paired_res_99_50_late": dict(
        centre="paired", forget_rule="residual", forget_energy=0.99, retain_energy=0.5, record_steps="late"
    ),
    "paired_res_100_50_late_v": dict(
        centre="paired",
        forget_rule="residual",
        forget_energy=1.0,
        retain_energy=0.5,
        record_steps="late",
        k_basis="none",
    ),
    "retain_res_100_50_late": dict(
        centre="retain", forget_rule="residual", forget_energy=1.0, retain_energy=0.5, record_steps="late"
    ),
    "text_tail": dict(basis="text", token="tail", forget_energy=0.95, retain_energy=0.5),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("dev", "val"), default="dev")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from: " + ", ".join(VARIANTS))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default="/tmp/i13/pure_ablation")
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}")
    world = World(steps=args.steps, n=args.n)
    rows = []
    print(f"PURE ablation, split={args.split}, n={args.n}/suite, {args.steps} steps (tinyworld, templates on)")
    print(f"{'variant':26s} {'concept':8s} {'erase':>6s} {'para':>6s} {'retain':>6s} {'fit s':>6s} {'rank':>5s}")
    for v in names:
        for c in SPLITS[args.split]:
            cs = dataclasses.replace(tinyworld_concept_set(c), templates=True)
            edit, sec = fit(world, "pure", cs, **VARIANTS[v])
            r = world.rates(edit, [c], ("target", "paraphrase", "retain"))
            rows.append(dict(variant=v, concept=c, fit_s=sec, rank=edit.stats.get("mean_rank_forget"), **r))
            print(
                f"{v:26s} {c:8s} {fmt(r['target']):>6s} {fmt(r['paraphrase']):>6s} {fmt(r['retain']):>6s} {sec:6.1f} "
                f"{rows[-1]['rank']:5.1f}",
                flush=True,
            )
    print("\nmeans over concepts:")
    means = {}
    for v in names:
        rs = [r for r in rows if r["variant"] == v]
        means[v] = {k: sum(r[k] for r in rs) / len(rs) for k in ("target", "paraphrase", "retain")}
        m = means[v]
        print(f"{v:26s} erase {fmt(m['target']):>4s}  para {fmt(m['paraphrase']):>4s}  retain {fmt(m['retain']):>4s}")
    ok = {
        v: m for v, m in means.items() if m["retain"] >= 0.9 and VARIANTS[v].get("basis", "activation") == "activation"
    }
    if ok:
        best = max(ok, key=lambda v: (ok[v]["target"] + ok[v]["paraphrase"], ok[v]["retain"]))
        print(f"\nbest activation variant with retain >= 90 % on {args.split}: {best} {VARIANTS[best]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.split}.json").write_text(json.dumps(dict(args=vars(args), rows=rows, means=means), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
