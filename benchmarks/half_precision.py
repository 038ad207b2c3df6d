"""Half-precision pipelines on a CPU: fit and generation time per load dtype, before vs after issue 16.

    python benchmarks/half_precision.py --model DIR [--dtypes float32,float16,bfloat16] [--before] [--gen-budget 300]
    # builds/caches the full-size SD 1.5 (benchmarks/full_scale_models.py):
    python benchmarks/half_precision.py --family sd15

For each load dtype, in one process: UCE and SPACE (85 % sparsity) fits with templates on 4 erased
and 16 preserved artists (120 token columns), and one 2-step generation at the pipeline's default
size. "after" is erasekit as shipped (float16 / bfloat16 borrow a fast compute dtype on a CPU,
models/precision.py); with ``--before`` the same work also runs with the rule switched off
(every computation in the load dtype, as before issue 16). A "before" generation that exceeds
``--gen-budget`` seconds is stopped and reported as "> budget". The last column compares each
edit with the float32-loaded fit: max over layers of ‖ΔW − ΔW₃₂‖ / ‖ΔW₃₂‖.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

import torch

ERASE = ["Van Gogh", "Claude Monet", "Salvador Dali", "Andy Warhol"]
PRESERVE = [
    "Pablo Picasso",
    "Rembrandt",
    "Johannes Vermeer",
    "Frida Kahlo",
    "Gustav Klimt",
    "Edvard Munch",
    "Paul Cezanne",
    "Henri Matisse",
    "Georgia O'Keeffe",
    "Jackson Pollock",
    "Katsushika Hokusai",
    "Caravaggio",
    "Diego Velazquez",
    "Wassily Kandinsky",
    "Joan Miro",
    "Paul Gauguin",
]


class _OverBudget(Exception):
    pass


@contextlib.contextmanager
def _budget(seconds: int):
    def stop(signum, frame):
        raise _OverBudget()

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def _rule_off():
    """Every computation in the load dtype (erasekit before issue 16)."""
    from erasekit.models import precision

    saved = precision.compute_dtype
    precision.compute_dtype = lambda device, dtype: dtype
    try:
        yield
    finally:
        precision.compute_dtype = saved


def _delta_gap(edit, ref, pipe) -> float:
    worst = 0.0
    for path, le in edit.layers.items():
        w0 = pipe.unet.get_submodule(path).weight.detach().float()
        d = le.materialize(w0) - w0
        d_ref = ref.layers[path].materialize(w0) - w0
        worst = max(worst, float((d - d_ref).norm() / d_ref.norm().clamp_min(1e-12)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a diffusers folder (or anything erasekit.load_pipeline accepts)")
    src.add_argument(
        "--family", choices=["sd15", "sd21", "sdxl"], help="build/cache a full-size random pipeline of this family"
    )
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--before", action="store_true", help="also run with the compute-dtype rule switched off")
    ap.add_argument("--gen-budget", type=int, default=300, help="seconds after which a generation is stopped")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-space", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import erasekit
    from erasekit.generate import generate
    from erasekit.models.precision import compute_dtype

    model = args.model
    if args.family:
        sys.path.insert(0, str(Path(__file__).parent))
        from full_scale_models import pipeline_folder  # benchmarks/full_scale_models.py

        model = str(pipeline_folder(args.family))

    concepts = erasekit.ConceptSet(erase=tuple(ERASE), kind="style", preserve=tuple(PRESERVE), templates=True)
    refs: dict[str, object] = {}
    rows = []
    for dtype in args.dtypes.split(","):
        t0 = time.perf_counter()
        pipe = erasekit.load_pipeline(model, dtype=dtype)
        load_s = time.perf_counter() - t0
        modes = ["after"] + (["before"] if args.before and dtype != "float32" else [])
        for mode in modes:
            ctx = _rule_off() if mode == "before" else contextlib.nullcontext()
            row = {
                "load": dtype,
                "mode": mode,
                "compute": str(compute_dtype("cpu", pipe.unet.dtype)).replace("torch.", "")
                if mode == "after"
                else dtype,
                "load_s": load_s,
            }
            with ctx:
                for method, opts in [("uce", {}), ("space", {"target_sparsity": 0.85})]:
                    if method == "space" and args.skip_space:
                        continue
                    t0 = time.perf_counter()
                    edit = erasekit.erase(pipe, method=method, concepts=concepts, progress=False, **opts)
                    row[f"{method}_s"] = time.perf_counter() - t0
                    key = method
                    if dtype == "float32":
                        refs[key] = edit
                        row[f"{method}_gap"] = 0.0
                    elif key in refs:
                        row[f"{method}_gap"] = _delta_gap(edit, refs[key], pipe)
                    del edit
                t0 = time.perf_counter()
                try:
                    with _budget(args.gen_budget):
                        generate(pipe, ["a painting of a lighthouse"], [0], steps=args.steps)
                    row["gen_s"] = f"{time.perf_counter() - t0:.1f}"
                except _OverBudget:
                    row["gen_s"] = f"> {args.gen_budget} (stopped)"
            rows.append(row)
            print(row, flush=True)
        del pipe

    print(
        f"\nmodel: {model}; torch threads {args.threads}; generation: 1 image, {args.steps} steps, pipeline default "
        "size"
    )
    print(
        "| load dtype | erasekit | computes in | UCE fit s | SPACE fit s | generate s | UCE ΔW vs fp32 fit | SPACE ΔW "
        "vs fp32 fit |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:

        def f(k, fmt="{:.1f}"):
            return fmt.format(r[k]) if isinstance(r.get(k), float) else str(r.get(k, "–"))

        print(
            f"| {r['load']} | {r['mode']} | {r['compute']} | {f('uce_s')} | {f('space_s')} | {r['gen_s']} | "
            f"{f('uce_gap', '{:.1e}')} | {f('space_gap', '{:.1e}')} |"
        )


if __name__ == "__main__":
    main()
