"""SPACE fit time with and without linalg.solver_threads (one intra-op thread below d_in 1,024), side by side.

    python benchmarks/space_threads.py [--busy 1] [--repeats 1]

Fits SPACE (tinyworld defaults: templates, every token position, 85 % sparsity) on tinyworld's
circle with torch's default thread count, once with the rule and once with it switched off,
interleaved. ``--busy N`` starts N single-threaded busy-loop processes first, as any other job
on the machine would be (the case the rule is for). Prints one table: seconds and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import time

import torch


def _spin() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=0, help="single-threaded busy processes running beside the fit")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    import erasekit
    from erasekit import linalg

    pipe = erasekit.load_pipeline("tinyworld")
    others = ["square", "triangle", "star", "heart", "cross"]
    rule = linalg.solver_threads
    procs = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in procs:
        p.start()
    rows = {"rule on (1 thread below d_in 1,024)": [], "rule off (torch default)": []}
    try:
        for _ in range(args.repeats):
            for name in rows:
                linalg.solver_threads = rule if name.startswith("rule on") else (lambda W0: contextlib.nullcontext())
                t0 = time.perf_counter()
                erasekit.erase(pipe, "space", ["circle"], kind="object", preserve=others, templates=True, token="all",
                               target_sparsity=0.85, progress=False)
                rows[name].append(time.perf_counter() - t0)
    finally:
        linalg.solver_threads = rule
        for p in procs:
            p.terminate()
    print(f"\nSPACE fit on tinyworld (14 layers, d_in 128), torch {torch.__version__}, {torch.get_num_threads()} threads by default, "
          f"{args.busy} busy process(es) beside it, min over {args.repeats}")
    print("| setting | fit s |\n|---|---:|")
    best = {k: min(v) for k, v in rows.items()}
    for k, v in best.items():
        print(f"| {k} | {v:.1f} |")
    on, off = best.values()
    print(f"| rule off / rule on | {off / on:.1f}× |")


if __name__ == "__main__":
    main()
