"""The fine-tuning methods (ESD-x, ESD-u, ACE, MACE) on tinyworld-flux: does the judge stop seeing the erased shape,
and does it still see the other shapes?

    python benchmarks/finetune_flux.py --concept circle --n 24 --methods esd-x,esd-u,ace,mace [--set esd-x:lr=1e-3]

Canonical prompts ("a {pattern} {colour} {shape}", validity.prompt_set) of the erased shape (target) and of the
other five shapes (retain), rendered as tinyworld-flux is meant to be called (20 steps, true CFG 5 against "", 32 px,
T5 length 32; the same seeds before and after every edit) and read by the tinyworld judge:

* erase  = share of target images the judge does *not* read as the erased shape (unedited: its miss rate);
* retain = share of retain images read as the shape their prompt names.

The pipeline is told its native size and T5 length (``default_sample_size``, ``tokenizer_2.model_max_length``) so
that the methods' own sampling and conditioning (the family's, models/families/flux.py) match how it is rendered.
Prints one markdown table (fit minutes at the torch threads given).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import erasekit
from erasekit.tinyworld import TinyworldJudge, load_pipeline_flux, world
from erasekit.tinyworld.flux import SIZE, T5_MAX_TOKENS
from erasekit.tinyworld.validity import call_kwargs, generate, prompt_set


def parse_sets(items: list[str]) -> dict[str, dict[str, float | int | str]]:
    """``method:key=value`` options (numbers parsed) per method."""
    out: dict[str, dict[str, float | int | str]] = {}
    for item in items:
        method, _, kv = item.partition(":")
        key, _, raw = kv.partition("=")
        val: float | int | str
        try:
            val = int(raw)
        except ValueError:
            try:
                val = float(raw)
            except ValueError:
                val = raw
        out.setdefault(method, {})[key] = val
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="circle", choices=world.SHAPE_NAMES)
    ap.add_argument("--n", type=int, default=24, help="target prompts, and retain prompts")
    ap.add_argument("--methods", default="esd-x,esd-u,ace,mace")
    ap.add_argument("--set", action="append", default=[], help="method:option=value (repeatable)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = parse_sets(args.set)

    pipe = load_pipeline_flux()
    pipe.default_sample_size = SIZE // pipe.vae_scale_factor  # 16: the latent side of a 32 px image
    pipe.tokenizer_2.model_max_length = T5_MAX_TOKENS  # the T5 length it was trained with
    judge = TinyworldJudge.load()
    kw = call_kwargs("tinyworld-flux")
    prompts, labels = prompt_set("canonical", 20 * args.n, seed=args.seed)
    c = world.SHAPE_NAMES.index(args.concept)
    tgt = [i for i in range(len(prompts)) if labels["shape"][i] == c][: args.n]
    ret = [i for i in range(len(prompts)) if labels["shape"][i] != c][: args.n]
    sel = tgt + ret
    chosen = [prompts[i] for i in sel]
    want = labels["shape"][sel]

    def rates() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        images = generate(pipe, chosen, seed=args.seed, steps=args.steps, batch_size=48, call_kw=kw)
        seen = judge.predict(images)["shape"].argmax(-1).numpy()
        n = len(tgt)
        return float((seen[:n] != c).mean()), float((seen[n:] == want[n:]).mean()), time.perf_counter() - t0

    rows = []
    e0, r0, g0 = rates()
    rows.append(("unedited", e0, r0, 0.0, "", ""))
    for m in [x for x in args.methods.split(",") if x]:
        opts = sets.get(m, {})
        t0 = time.perf_counter()
        edit = erasekit.erase(pipe, m, concepts=[args.concept], kind="object", progress=False, **opts)
        fit = (time.perf_counter() - t0) / 60
        edit.apply(pipe)
        try:
            e, r, _ = rates()
        finally:
            edit.revert(pipe)
        st = edit.stats
        loss = (
            f"{st['loss_first']:.4g} -> {st['loss_last']:.4g}"
            if "loss_first" in st
            else "; ".join(f"{x['concept']}: {x['train_steps']} steps" for x in st.get("lora", []))
            or "; ".join(f"{g}: {s.get('lora')}" for g, s in st.get("groups", {}).items())
        )
        rows.append((m, e, r, fit, ", ".join(f"{k}={v}" for k, v in opts.items()), loss))
        print(rows[-1], flush=True)

    print(
        f"\ntinyworld-flux, erase {args.concept!r}: {len(tgt)} target + {len(ret)} retain canonical prompts, "
        f"{args.steps} steps, seed {args.seed}, torch threads {args.threads} (one render pass {g0 / 60:.2f} min)\n"
    )
    print("| method | options | erase | retain | fit min | training loss |")
    print("|---|---|---|---|---|---|")
    for m, e, r, fit, opts, loss in rows:
        print(f"| {m} | {opts or 'defaults'} | {e:.2f} | {r:.2f} | {fit:.2f} | {loss} |")
    np.set_printoptions(precision=3)


if __name__ == "__main__":
    main()
