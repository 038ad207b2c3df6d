"""Many concepts in one edit on tinyworld: per-concept erase, retain on the values left, fit seconds, bytes, as k grows.

    python benchmarks/multi_concept.py [--k 1,2,4,8,12] [--methods uce,space] [--per-concept 4] [--steps 10]

The first k concepts of a fixed mixed list (shapes, colours, patterns; never every value of an
attribute) are erased together in one edit, each method at its tinyworld defaults
(erasekit/defaults.py). Erase: share of a concept's named prompts (held-in template, all three
attributes named) no longer judged as that concept; min / mean over the k concepts. Retain:
share of prompts naming a value left of an erased attribute that are still judged as it.
Reduced sizes by default: --per-concept 4 prompts per concept, so single rates are ±25 points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import erasekit  # noqa: E402
from _tw import World  # noqa: E402
from erasekit import defaults  # noqa: E402
from erasekit.concepts import ConceptSet  # noqa: E402
from erasekit.evaluate import metrics as M  # noqa: E402
from erasekit.evaluate.bench import tinyworld_concept_set  # noqa: E402
from erasekit.evaluate.suites import tinyworld_suites  # noqa: E402

ORDER = (
    "circle",
    "red",
    "striped",
    "square",
    "blue",
    "dotted",
    "triangle",
    "green",
    "checkered",
    "star",
    "yellow",
    "heart",
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="1,2,4")
    ap.add_argument("--methods", default="uce,space")
    ap.add_argument("--per-concept", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default="/tmp/i13/multi_concept.json")
    args = ap.parse_args(argv)
    world = World(steps=args.steps, n=args.per_concept)
    rows = []
    print(
        f"many concepts in one edit, tinyworld ({args.per_concept} named prompts per concept, {args.steps} steps, "
        "methods at their defaults)"
    )
    print(
        f"{'method':6s} {'k':>3s} {'erase min':>9s} {'erase mean':>10s} {'retain':>6s} {'fit s':>6s} {'bytes':>11s}  "
        "per concept"
    )
    for k in (int(x) for x in args.k.split(",")):
        concepts = list(ORDER[:k])
        base_cs = tinyworld_concept_set(concepts)
        target, retain = tinyworld_suites(concepts, n=args.per_concept * k, kinds=("target", "retain"))
        for method in args.methods.split(","):
            opts, _ = defaults.resolve("tinyworld", method, {})
            cs = ConceptSet(
                erase=base_cs.erase,
                kind=base_cs.kind,
                preserve=base_cs.preserve,
                templates=opts.pop("templates", False),
            )
            t0 = time.perf_counter()
            edit = erasekit.erase(world.pipe, method=method, concepts=cs, progress=False, **opts)
            sec = time.perf_counter() - t0
            edit.apply(world.pipe)
            try:
                seen_t, seen_r = world.seen(target), world.seen(retain)
            finally:
                edit.revert(world.pipe)
            per = {}
            for c in concepts:
                idx = [i for i, it in enumerate(target.items) if it.concepts[0] == c]
                per[c] = M.erase_rate(seen_t[idx]).value
            ret = M.retain_rate(seen_r).value
            row = dict(
                method=method,
                k=k,
                erase_min=min(per.values()),
                erase_mean=sum(per.values()) / k,
                retain=ret,
                fit_s=sec,
                bytes=edit.nbytes,
                per_concept=per,
            )
            rows.append(row)
            pc = " ".join(f"{c}:{100 * v:.0f}" for c, v in per.items())
            print(
                f"{method:6s} {k:3d} {100 * row['erase_min']:8.0f}% {100 * row['erase_mean']:9.0f}% {100 * ret:5.0f}% "
                f"{sec:6.1f} "
                f"{edit.nbytes:11,d}  {pc}",
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(args=vars(args), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
