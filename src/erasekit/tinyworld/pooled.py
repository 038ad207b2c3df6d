"""How much of a concept flows through SDXL's pooled path? Measured on tinyworld-xl (issue 11).

    python -m erasekit.tinyworld.pooled [--n 48] [--steps 20] [--guidance 5] [--card]

In SDXL the second text encoder's pooled embedding enters the UNet through ``add_embedding``
(added to the time embedding), reaching every block without any cross-attention; a K/V edit
cannot touch it. With the unedited model, generate the same seeds under four conditionings:

* the prompt's cross-attention context and the prompt's pooled embedding (the normal case);
* the prompt's context with a neutral pooled embedding;
* a neutral context with the prompt's pooled embedding (what the pooled path carries alone);
* both neutral (chance level);

"neutral" = the pipeline's own encoding of the empty prompt (also the unconditional branch).
The judged rate of the prompted shape / colour / pattern under each says how much of a concept
each path carries alone. :func:`conditionings` and :func:`rates` are importable.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .judge import HEADS, TinyworldJudge
from .train import write_card_section

CONDITIONS = {  # name: (context from the prompt?, pooled from the prompt?)
    "prompt context + prompt pooled": (True, True),
    "prompt context + neutral pooled": (True, False),
    "neutral context + prompt pooled": (False, True),
    "neutral context + neutral pooled": (False, False),
}
START, END = "<!-- pooled:start -->", "<!-- pooled:end -->"


@torch.no_grad()
def encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (n,77,d), pooled (n,d_pool)) from the pipeline's own ``encode_prompt``."""
    out = pipe.encode_prompt(
        prompts, device=pipe.unet.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    if len(out) != 4 or out[2] is None:
        raise TypeError(
            "the pooled path exists only in SDXL-type pipelines (encode_prompt returning pooled embeddings)"
        )
    return out[0], out[2]


def conditionings(pipe, prompts: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """condition name -> the ``pipe(...)`` keyword arguments for ``prompts`` under it (CFG branch: neutral)."""
    ctx, pooled = encode(pipe, list(prompts))
    ctx0, pooled0 = encode(pipe, [""])
    n = len(prompts)
    neg = {"negative_prompt_embeds": ctx0.expand(n, -1, -1), "negative_pooled_prompt_embeds": pooled0.expand(n, -1)}
    return {
        name: {
            "prompt_embeds": ctx if c else ctx0.expand(n, -1, -1),
            "pooled_prompt_embeds": pooled if p else pooled0.expand(n, -1),
            **neg,
        }
        for name, (c, p) in CONDITIONS.items()
    }


@torch.no_grad()
def rates(
    pipe,
    judge: TinyworldJudge,
    prompts: list[str],
    labels: dict,
    steps: int = 20,
    guidance: float = 5.0,
    seed: int = 0,
    batch_size: int = 48,
    log=print,
) -> dict[str, dict[str, float]]:
    """condition name -> {attribute: share of images judged as the prompted value}; the same seeds for every
    condition."""
    res = {}
    for name, kw in conditionings(pipe, prompts).items():
        imgs = []
        for b, i in enumerate(range(0, len(prompts), batch_size)):
            g = torch.Generator(device="cpu").manual_seed(seed * 100003 + b)
            part = {k: v[i : i + batch_size] for k, v in kw.items()}
            out = pipe(**part, num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np").images
            imgs.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
        probs = judge.predict(np.concatenate(imgs))
        res[name] = {k: float((probs[k].argmax(-1).numpy() == np.asarray(labels[k])).mean()) for k in HEADS}
        log(f"{name}: {res[name]}")
    return res


def table(res: dict) -> str:
    rows = ["| conditioning | shape | colour | pattern |", "|---|---|---|---|"]
    for name in CONDITIONS:
        if name in res:
            r = res[name]
            rows.append(f"| {name} | {r['shape']:.1%} | {r['color']:.1%} | {r['pattern']:.1%} |")
    return "\n".join(rows)


def update_card(res: dict, meta: dict, card: Path) -> Path:
    body = (
        f"{START}\nMeasured by `{meta['command']}` on {time.strftime('%Y-%m-%d')}: the unedited model, "
        f"{meta['n']} canonical prompts (validity's canonical set), the same seeds in every row, {meta['steps']} "
        "steps, "
        f"guidance {meta['guidance']}; \"neutral\" = the empty prompt's encoding. Judged share of the prompted "
        "value:\n\n"
        f"{table(res)}\n\n```json\n{json.dumps({'rates': res, 'meta': meta}, indent=1)}\n```\n{END}"
    )
    return write_card_section(card, "The pooled path", START, END, body)


def main(argv=None):
    import sys

    from . import load_pipeline_xl, weights_dir, weights_xl_dir
    from .validity import prompt_set

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="prompts (the same seeds in each of the four conditions)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=Path, default=None, help="tinyworld-xl folder (default: shipped)")
    ap.add_argument("--card", action="store_true", help="write the table into the model card's pooled-path section")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wd = args.weights or weights_xl_dir()
    pipe = load_pipeline_xl(path=wd / "pipeline")
    judge = TinyworldJudge.load(weights_dir() / "judge.safetensors")
    prompts, labels = prompt_set("canonical", args.n, seed=args.seed + 1)
    t0 = time.time()
    res = rates(pipe, judge, prompts, labels, steps=args.steps, guidance=args.guidance, seed=args.seed)
    meta = {
        "command": "python -m erasekit.tinyworld.pooled " + " ".join(argv if argv is not None else sys.argv[1:]),
        "n": args.n,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "seconds": round(time.time() - t0),
    }
    print(table(res))
    if args.card:
        print(f"model card updated: {update_card(res, meta, wd / 'MODEL_CARD.md')}")


if __name__ == "__main__":
    main()
