"""SPACE's row-chunk workers: wall time of the SSN solves with 1 worker and with N, side by side.

    python benchmarks/space_workers.py [--family sd15|sdxl] [--workers 2] [--busy 0] [--repeats 2]

The solver benchmark's layers (benchmarks/solver.py: random weights of the family's real
shapes, n = 100 CLIP-like token columns, λ for 85 % sparsity, tol 1e-6, one block per width)
are solved with ``workers=1`` and ``workers=N``, interleaved, and UCE on torch's N threads
beside them for scale. ``--busy K`` starts K single-threaded busy-loop processes first, as any
other job on the machine would be. Every solve is checked bit-identical to the 1-worker one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from erasekit import linalg  # noqa: E402
from solver import make_family  # noqa: E402


def _spin() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--busy", type=int, default=0, help="single-threaded busy processes running beside the solves")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.workers)
    weights, cols = make_family(args.family, True)
    gf = linalg.gram_factor(*cols, gamma=0.5)
    lam = linalg.lam_for_sparsity(weights, gf, 0.85)
    procs = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in procs:
        p.start()
    best = {"uce": 0.0, 1: 0.0, args.workers: 0.0}
    try:
        for W in weights:
            ref = linalg.space_solve(W, gf, lam, workers=1)
            times = {k: [] for k in best}
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                linalg.uce_weight(W, gf)
                times["uce"].append(time.perf_counter() - t0)
                for w in (1, args.workers):
                    t0 = time.perf_counter()
                    res = linalg.space_solve(W, gf, lam, workers=w)
                    times[w].append(time.perf_counter() - t0)
                    if not torch.equal(res.W, ref.W):
                        sys.exit(f"workers={w} changed the result on a {tuple(W.shape)} layer")
            for k in best:
                best[k] += min(times[k])
    finally:
        for p in procs:
            p.terminate()
    print(
        f"\nSPACE SSN solves, {args.family} shapes ({len(weights)} matrices), torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, "
        f"{args.busy} busy process(es) beside, min of {args.repeats} per layer, wall seconds"
    )
    print("| | wall s | / UCE |\n|---|---:|---:|")
    print(f"| UCE ({args.workers} torch threads) | {best['uce']:.3f} | 1 |")
    for w in (1, args.workers):
        print(f"| SPACE, {w} worker(s) | {best[w]:.2f} | {best[w] / best['uce']:.1f}× |")
    print(f"| speed-up of {args.workers} workers | {best[1] / best[args.workers]:.2f}× | (results bit-identical) |")


if __name__ == "__main__":
    main()
