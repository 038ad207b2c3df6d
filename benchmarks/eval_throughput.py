"""Evaluation throughput on tinyworld: images per second, and the share of time spent generating vs judging.

    python benchmarks/eval_throughput.py [--n 16] [--batch-sizes 1,8,32] [--threads 1]

For each batch size: erase "circle" with UCE, evaluate target / paraphrase / retain / general
suites (n items each, unedited + edited = 8n images) into a fresh image cache, then run the
same evaluation again from the cache. Prints one measured table.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tinyworld", help="tinyworld (default) or a tinyworld pipeline folder")
    ap.add_argument("--judge", default="tinyworld", help="judge spec (default: the shipped tinyworld judge)")
    ap.add_argument("--n", type=int, default=16, help="items per suite")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import erasekit
    from erasekit.evaluate import GenerationSettings, Study, evaluate, make_judge, tinyworld_suites

    t0 = time.perf_counter()
    pipe = erasekit.load_pipeline(args.model)
    judge = make_judge(args.judge)
    load_s = time.perf_counter() - t0
    edit = erasekit.erase(pipe, "uce", ["circle"], kind="object", preserve=["square", "triangle", "star", "heart", "cross"], progress=False)
    suites = tinyworld_suites(["circle"], n=args.n)

    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        settings = GenerationSettings(steps=args.steps, guidance=5.0, batch_size=bs)
        with tempfile.TemporaryDirectory() as tmp:
            study = Study("circle", suites, {"uce": edit})
            cold = evaluate(pipe, [study], judge, out_dir=tmp, cache_dir=tmp, settings=settings, n_boot=1000, progress=False)
            warm = evaluate(pipe, [study], judge, out_dir=tmp, cache_dir=tmp, settings=settings, n_boot=1000, progress=False)
        t, w = cold.timing, warm.timing
        rows.append((bs, t["images_total"], t["generation_seconds"], t["judge_seconds"], t["read_and_metrics_seconds"], t["total_seconds"],
                     w["total_seconds"]))

    print(f"\nevaluation throughput on {args.model} ({args.steps} steps, guidance 5, {args.threads} CPU thread(s), "
          f"torch {torch.__version__}); pipeline + judge load {load_s:.1f}s")
    head = (f"{'batch':>5} | {'images':>6} | {'generate s':>10} | {'judge s':>7} | {'read+metrics s':>14} | {'total s':>7} | {'img/s':>6} | "
            f"{'generate':>8} | {'judge':>6} | {'rerun from cache s':>18}")
    print(head)
    print("-" * len(head))
    for bs, n, gen, jud, rest, tot, warm_s in rows:
        print(f"{bs:>5} | {n:>6} | {gen:>10.2f} | {jud:>7.2f} | {rest:>14.2f} | {tot:>7.2f} | {n / tot:>6.2f} | "
              f"{100 * gen / tot:>7.1f}% | {100 * jud / tot:>5.1f}% | {warm_s:>18.2f}")


if __name__ == "__main__":
    main()
