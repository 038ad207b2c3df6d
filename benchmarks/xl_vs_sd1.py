"""Erase rates of the closed-form methods on tinyworld (SD 1.x architecture) next to tinyworld-xl (SDXL).

    python benchmarks/xl_vs_sd1.py [--methods uce,space,pure] [--concepts circle] [--n 24] [--steps 12] [--threads 1]

For each model, method and shape: fit the edit (erase the shape, preserve the other five),
generate the same seeds before and after, and judge with tinyworld's judge:

* erase rate = 1 - share of named-prompt images still showing the shape (unedited: 1 - base rate);
* paraphrase erase rate = the same for synonym-only prompts;
* retain = share of other-shape prompts still showing their shape;
* on tinyworld-xl also "via pooled": the edited model's rate on named prompts when the pooled
  embedding is replaced by the empty prompt's. The difference to the normal rate is the share
  of the surviving concept that flows through the pooled path, which no K/V edit touches.

Prints a markdown table (and ``--json`` writes the numbers).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

SETTINGS = {  # as calibrated for tinyworld in tests/test_tinyworld_erasure.py
    "space": dict(templates=True, target_sparsity=0.85),
    "uce": dict(templates=True, token="tail"),
    "pure": dict(templates=True, forget_energy=0.95, retain_energy=0.5),
}


def shape_rate(judge, images, shapes) -> float:
    from erasekit.tinyworld import world

    pred = judge.predict(images)["shape"].argmax(-1).numpy()
    return float((pred == np.array([world.SHAPE_NAMES.index(s) for s in shapes])).mean())


@torch.no_grad()
def images(pipe, prompts, steps, seed=0, neutral_pooled=False, batch=24):
    out = []
    for b, i in enumerate(range(0, len(prompts), batch)):
        part = list(prompts[i : i + batch])
        g = torch.Generator().manual_seed(seed * 100003 + b)
        if neutral_pooled:
            from erasekit.tinyworld.pooled import conditionings

            kw = conditionings(pipe, part)["prompt context + neutral pooled"]
        else:
            kw = {"prompt": part}
        ims = pipe(**kw, num_inference_steps=steps, guidance_scale=5.0, generator=g, output_type="np").images
        out.append((np.clip(ims, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def measure(model, methods, concepts, n, steps, log=print) -> dict:
    import erasekit
    from erasekit.demo import demo_prompts
    from erasekit.tinyworld import world
    from erasekit.tinyworld.judge import TinyworldJudge

    pipe, judge = erasekit.load_pipeline(model), TinyworldJudge.load()
    xl = hasattr(pipe, "text_encoder_2")
    res = {}
    for concept in concepts:
        suites = demo_prompts(concept, n)
        others = [s for s in world.SHAPE_NAMES if s != concept]

        def rates():
            r = {k: shape_rate(judge, images(pipe, p, steps), s) for k, (p, s) in suites.items()}
            if xl:
                p, s = suites["target"]
                r["target_neutral_pooled"] = shape_rate(judge, images(pipe, p, steps, neutral_pooled=True), s)
            return r

        res[(concept, "unedited")] = rates()
        log(f"{model} {concept} unedited: {res[(concept, 'unedited')]}")
        for m in methods:
            t0 = time.time()
            edit = erasekit.erase(
                pipe,
                method=m,
                concepts=[concept],
                kind="object",
                preserve=others,
                progress=False,
                **SETTINGS.get(m, {}),
            )
            fit = time.time() - t0
            edit.apply(pipe)
            try:
                res[(concept, m)] = {**rates(), "fit_s": fit}
            finally:
                edit.revert(pipe)
            log(f"{model} {concept} {m}: {res[(concept, m)]}")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="uce,space,pure")
    ap.add_argument("--concepts", default="circle", help="tinyworld shapes, comma-separated")
    ap.add_argument("--models", default="tinyworld,tinyworld-xl")
    ap.add_argument("--n", type=int, default=24, help="prompts per suite (named / paraphrased / other shapes)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods, concepts = args.methods.split(","), args.concepts.split(",")
    t0 = time.time()
    all_res = {mo: measure(mo, methods, concepts, args.n, args.steps) for mo in args.models.split(",")}
    print(f"\n{args.n} prompts per suite, {args.steps} steps, guidance 5, tinyworld judge; {time.time() - t0:.0f} s\n")
    print(
        "| concept | method | "
        + " | ".join(f"{mo}: erase / paraphrase / retain" for mo in all_res)
        + " | tinyworld-xl: named rate with neutral pooled |"
    )
    print("|---|---|" + "---|" * len(all_res) + "---|")
    for concept in concepts:
        for m in ["unedited", *methods]:
            cells = []
            for _mo, res in all_res.items():
                r = res[(concept, m)]
                cells.append(f"{1 - r['target']:.0%} / {1 - r['paraphrase']:.0%} / {r['retain']:.0%}")
            xr = all_res.get("tinyworld-xl", {}).get((concept, m))
            pooled = f"{xr['target_neutral_pooled']:.0%} (normal {xr['target']:.0%})" if xr else "–"
            print(f"| {concept} | {m} | " + " | ".join(cells) + f" | {pooled} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({mo: {f"{c}/{m}": v for (c, m), v in res.items()} for mo, res in all_res.items()}, f, indent=1)


if __name__ == "__main__":
    main()
