"""Evaluation throughput on tinyworld, before vs after, and the runner's overhead over a bare pipeline call.

    python benchmarks/eval_throughput.py [--n 16] [--configs 8x20,32x10] [--threads 1] [--repeats 1]

Each configuration ``BATCHxSTEPS`` (the old default was 8 × 20 DPM-Solver++ steps) is measured in
the same process, side by side, so that a shared machine's load hits both alike:

* **runner**: erase "circle" with UCE and evaluate target / paraphrase / retain / general suites
  (n items each; unedited + edited = 8n images) into a fresh image cache: generation, judge,
  metrics, paired statistics;
* **bare**: the same images made by plain ``pipe(prompt=[...], generator=[...])`` calls in the same
  batches (the edit applied for the edited half), nothing else.

Overhead = runner seconds without the judge / bare seconds − 1 (target ≤ 10 %); also shown for the
generation phase alone. With ``--repeats`` > 1 each number is the minimum over repeats.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def bare(pipe, edit, suites, bs: int, steps: int) -> float:
    """Seconds to make every image of ``suites`` for the unedited and the edited model with plain pipeline calls."""
    items = [it for s in suites for it in s]
    t0 = time.perf_counter()
    for state in ("unedited", "edited"):
        if state == "edited":
            edit.apply(pipe)
        try:
            for i in range(0, len(items), bs):
                chunk = items[i : i + bs]
                pipe(
                    prompt=[it.prompt for it in chunk],
                    generator=[torch.Generator().manual_seed(it.seed) for it in chunk],
                    num_inference_steps=steps,
                    guidance_scale=5.0,
                    output_type="pil",
                )
        finally:
            if state == "edited":
                edit.revert(pipe)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tinyworld", help="tinyworld (default) or a tinyworld pipeline folder")
    ap.add_argument("--n", type=int, default=16, help="items per suite (8n images per configuration)")
    ap.add_argument("--configs", default="8x20,32x10", help="BATCHxSTEPS configurations to compare (first = before)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=1, help="measure each configuration this many times (minimum kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import erasekit
    from erasekit.evaluate import GenerationSettings, Study, evaluate, make_judge, tinyworld_suites

    t0 = time.perf_counter()
    pipe = erasekit.load_pipeline(args.model)
    judge = make_judge("tinyworld")
    load_s = time.perf_counter() - t0
    edit = erasekit.erase(
        pipe,
        "uce",
        ["circle"],
        kind="object",
        preserve=["square", "triangle", "star", "heart", "cross"],
        progress=False,
    )
    suites = tinyworld_suites(["circle"], n=args.n)
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    best: dict[tuple, dict] = {}
    for _ in range(args.repeats):
        for bs, steps in configs:  # interleaved: load changes hit every configuration alike
            b = bare(pipe, edit, suites, bs, steps)
            with tempfile.TemporaryDirectory() as tmp:
                res = evaluate(
                    pipe,
                    [Study("circle", suites, {"uce": edit})],
                    judge,
                    out_dir=tmp,
                    cache_dir=tmp,
                    settings=GenerationSettings(steps=steps, guidance=5.0, batch_size=bs),
                    n_boot=1000,
                    progress=False,
                )
            t = dict(res.timing, bare=b)
            cur = best.get((bs, steps))
            if cur is None or t["total_seconds"] < cur["total_seconds"]:
                best[(bs, steps)] = t

    print(
        f"\nevaluation throughput on {args.model}: 4 suites × {args.n} items, unedited + UCE; guidance 5, "
        f"{args.threads} CPU thread(s), "
        f"torch {torch.__version__}; pipeline + judge load {load_s:.1f}s; min over {args.repeats} repeat(s)"
    )
    head = (
        f"{'batch × steps':>13} | {'images':>6} | {'bare s':>7} | {'generate s':>10} | {'judge s':>7} | {'other s':>7} "
        f"| {'total s':>7} | "
        f"{'img/s':>6} | {'speed-up':>8} | {'overhead (gen)':>14} | {'overhead (total − judge)':>24}"
    )
    print(head)
    print("-" * len(head))
    base = None
    for (bs, steps), t in best.items():
        n, tot = t["images_total"], t["total_seconds"]
        other = tot - t["generation_seconds"] - t["judge_seconds"]
        rate = n / tot
        base = base or rate
        print(
            f"{f'{bs} × {steps}':>13} | {n:>6} | {t['bare']:>7.2f} | {t['generation_seconds']:>10.2f} | "
            f"{t['judge_seconds']:>7.2f} | "
            f"{other:>7.2f} | {tot:>7.2f} | {rate:>6.2f} | {rate / base:>7.2f}× | "
            f"{100 * (t['generation_seconds'] / t['bare'] - 1):>13.1f}% | "
            f"{100 * ((tot - t['judge_seconds']) / t['bare'] - 1):>23.1f}%"
        )


if __name__ == "__main__":
    main()
