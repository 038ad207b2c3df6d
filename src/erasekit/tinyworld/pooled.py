"""How much of a concept flows through the pooled path? Measured on tinyworld-xl (issue 11) and tinyworld-flux
(issue 29).

    python -m erasekit.tinyworld.pooled [--model tinyworld-xl|tinyworld-flux] [--n 48] [--steps 20]
        [--guidance G] [--card] [--edit-concepts circle,red,striped]

In SDXL the second text encoder's pooled embedding enters the UNet through ``add_embedding``
(added to the time embedding), reaching every block without any cross-attention; a K/V edit
cannot touch it. In FLUX.1 the pooled CLIP vector enters ``time_text_embed`` (``text_embedder``) and
modulates every block through AdaLN; the T5 tokens enter through ``context_embedder``. With the unedited
model, generate the same seeds under four conditionings:

* the prompt's cross-attention context and the prompt's pooled embedding (the normal case);
* the prompt's context with a neutral pooled embedding;
* a neutral context with the prompt's pooled embedding (what the pooled path carries alone);
* both neutral (chance level);

"neutral" = the pipeline's own encoding of the empty prompt (also the unconditional branch).
The judged rate of the prompted shape / colour / pattern under each says how much of a concept
each path carries alone. :func:`conditionings` and :func:`rates` are importable.

``--edit-concepts`` (FLUX's two static site groups): for each concept, UCE at its defaults erases it at
both groups, then the same edit is applied to the T5 site only (``context_embedder``) and to the pooled site
only (``time_text_embed.text_embedder.linear_1``); the judged rate of the concept on its own prompts under
each says whether an edit of the text-stream site leaves the concept to the pooled path.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

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
def encode(pipe, prompts: list[str], max_sequence_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (n,L,d), pooled (n,d_pool)) as the pipeline's family encodes them (its own ``encode_prompt``).

    ``max_sequence_length``: FLUX's T5 length (tinyworld-flux was trained at 32; the family's default is FLUX.1's
    256 / 512), passed to ``FluxPipeline.encode_prompt`` as the pipeline call would."""
    if max_sequence_length is not None:
        embeds, pooled, _ = pipe.encode_prompt(list(prompts), None, max_sequence_length=max_sequence_length)
        return embeds, pooled
    from ..models.families import identify

    cond = identify(pipe).encode(pipe, list(prompts))
    if cond.pooled is None:
        raise TypeError("this pipeline has no pooled text path (SDXL- and FLUX-type pipelines have one)")
    return cond.embeds, cond.pooled


def conditionings(
    pipe, prompts: list[str], max_sequence_length: int | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """condition name -> the ``pipe(...)`` keyword arguments for ``prompts`` under it (CFG branch: neutral)."""
    ctx, pooled = encode(pipe, list(prompts), max_sequence_length)
    ctx0, pooled0 = encode(pipe, [""], max_sequence_length)
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
    call_kw: dict[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """condition name -> {attribute: share of images judged as the prompted value}; the same seeds for every
    condition. ``call_kw``: the model's guidance arguments (:func:`erasekit.tinyworld.validity.call_kwargs`);
    default ``guidance_scale=guidance``."""
    res = {}
    length = (call_kw or {}).get("max_sequence_length")
    for name, kw in conditionings(pipe, prompts, length).items():
        guide = call_kw if call_kw is not None else {"guidance_scale": guidance}
        imgs = render(pipe, kw, steps, seed, batch_size, guide)
        probs = judge.predict(imgs)
        res[name] = {k: float((probs[k].argmax(-1).numpy() == np.asarray(labels[k])).mean()) for k in HEADS}
        log(f"{name}: {res[name]}")
    return res


def render(pipe, embeds: dict[str, torch.Tensor], steps: int, seed: int, batch_size: int, call_kw: dict) -> np.ndarray:
    """uint8 images from precomputed embeddings, seeded per batch as :func:`erasekit.tinyworld.validity.generate`.

    The prompt-only arguments of ``call_kw`` (``negative_prompt``, ``max_sequence_length``) are dropped: the
    embeddings (their negative branch included) are already given."""
    kw = {k: v for k, v in call_kw.items() if k not in ("negative_prompt", "max_sequence_length")}
    n = next(iter(embeds.values())).shape[0]
    imgs = []
    for b, i in enumerate(range(0, n, batch_size)):
        g = torch.Generator(device="cpu").manual_seed(seed * 100003 + b)
        part = {k: v[i : i + batch_size] for k, v in embeds.items()}
        out = pipe(**part, num_inference_steps=steps, generator=g, output_type="np", **kw).images
        imgs.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(imgs)


SITE_GROUPS = {  # row -> the site groups (the family's input kinds, edit.stats['groups']) whose layers are kept
    "both sites (as fitted)": ("text", "pooled"),
    "T5 site only (context_embedder)": ("text",),
    "pooled site only (text_embedder)": ("pooled",),
}


def group_layers(edit, groups: tuple[str, ...]) -> set[str]:
    """The edited layers of the named site groups, as the fit recorded them."""
    return {path for g in groups for path in edit.stats["groups"][g]["layers"]}


def edit_rates(
    pipe, judge: TinyworldJudge, concepts: list[str], n: int, steps: int, seed: int, call_kw: dict, log=print
) -> dict[str, dict[str, float]]:
    """concept -> {row: judged rate of the concept on its own prompts}: unedited, and UCE (erasekit's defaults
    for this model, the bench's concept set: the attribute's other values preserved) applied at both static
    site groups, at the T5 site only and at the pooled site only."""
    import erasekit
    from erasekit.edit import Edit
    from erasekit.evaluate.bench import tinyworld_concept_set

    from . import world

    out: dict[str, dict[str, float]] = {}
    for concept in concepts:
        attr, value = next((a, names.index(concept)) for a, names in world.ATTRIBUTES.items() if concept in names)
        prompts, labels = concept_prompts(attr, value, n, seed)
        kw = conditionings(pipe, prompts, call_kw.get("max_sequence_length"))["prompt context + prompt pooled"]
        row = {"unedited": _rate(judge, render(pipe, kw, steps, seed, 48, call_kw), attr, value)}
        full = erasekit.erase(pipe, method="uce", concepts=tinyworld_concept_set(concept), progress=False)
        for name, groups in SITE_GROUPS.items():
            keep = group_layers(full, groups)
            layers = [le for k, le in full.layers.items() if k in keep]
            sub = Edit(
                full.method, full.config, full.concepts, full.base, layers,
                {le.key: full.fingerprints[le.key] for le in layers}, full.stats,
            )  # fmt: skip
            sub.apply(pipe)
            try:
                row[name] = _rate(judge, render(pipe, kw, steps, seed, 48, call_kw), attr, value)
            finally:
                sub.revert(pipe)
        log(f"{concept}: {row}")
        out[concept] = row
    return out


def concept_prompts(attr: str, value: int, n: int, seed: int) -> tuple[list[str], dict]:
    """``n`` canonical prompts that all name ``value`` of ``attr`` (the other attributes cycle)."""
    from . import world
    from .validity import prompt_set

    total = -(-n * len(world.ATTRIBUTES[attr]) // 144) * 144  # whole cycles of the 144 combinations
    prompts, labels = prompt_set("canonical", total, seed=seed + 7)
    keep = [i for i, v in enumerate(labels[attr]) if v == value][:n]
    return [prompts[i] for i in keep], {k: [labels[k][i] for i in keep] for k in labels}


def _rate(judge: TinyworldJudge, images: np.ndarray, attr: str, value: int) -> float:
    return float((judge.predict(images)[attr].argmax(-1).numpy() == value).mean())


def table(res: dict) -> str:
    rows = ["| conditioning | shape | colour | pattern |", "|---|---|---|---|"]
    for name in CONDITIONS:
        if name in res:
            r = res[name]
            rows.append(f"| {name} | {r['shape']:.1%} | {r['color']:.1%} | {r['pattern']:.1%} |")
    return "\n".join(rows)


def edit_table(res: dict) -> str:
    rows = ["| concept | " + " | ".join(["unedited", *SITE_GROUPS]) + " |", "|---" * (len(SITE_GROUPS) + 2) + "|"]
    for concept, r in res.items():
        rows.append(f"| {concept} | " + " | ".join(f"{r[k]:.1%}" for k in ["unedited", *SITE_GROUPS]) + " |")
    return "\n".join(rows)


def update_card(res: dict, meta: dict, card: Path, edits: dict | None = None) -> Path:
    body = (
        f"{START}\nMeasured by `{meta['command']}` on {time.strftime('%Y-%m-%d')}: the unedited model, "
        f"{meta['n']} canonical prompts (validity's canonical set), the same seeds in every row, {meta['steps']} "
        "steps, "
        f"guidance {meta['guidance']}; \"neutral\" = the empty prompt's encoding. Judged share of the prompted "
        "value:\n\n"
        f"{table(res)}\n\n"
    )
    if edits:
        body += (
            "UCE (erasekit's defaults) fitted at both static site groups, then applied whole, at the T5 site only "
            "and at the pooled site only; judged share of each concept on its own canonical prompts (same seeds):"
            f"\n\n{edit_table(edits)}\n\n"
        )
    body += f"```json\n{json.dumps({'rates': res, 'edits': edits, 'meta': meta}, indent=1)}\n```\n{END}"
    return write_card_section(card, "The pooled path", START, END, body)


def main(argv=None):
    import sys

    from . import load_pipeline_flux, load_pipeline_xl, weights_dir, weights_flux_dir, weights_xl_dir
    from .validity import call_kwargs, prompt_set

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("tinyworld-xl", "tinyworld-flux"), default="tinyworld-xl")
    ap.add_argument("--n", type=int, default=48, help="prompts (the same seeds in each of the four conditions)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance_scale (tinyworld-xl, default 5) or true_cfg_scale (tinyworld-flux, default its GENERATE_KW)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=Path, default=None, help="the model's weights folder (default: shipped)")
    ap.add_argument("--card", action="store_true", help="write the table into the model card's pooled-path section")
    ap.add_argument(
        "--edit-concepts",
        default="",
        help="tinyworld-flux: comma-separated concepts to erase with UCE at each static site group (e.g. "
        "circle,red,striped)",
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flux = args.model == "tinyworld-flux"
    if args.edit_concepts and not flux:
        ap.error("--edit-concepts needs --model tinyworld-flux (SDXL's pooled path has no edit site)")
    wd = args.weights or (weights_flux_dir() if flux else weights_xl_dir())
    pipe = (load_pipeline_flux if flux else load_pipeline_xl)(path=wd / "pipeline")
    judge = TinyworldJudge.load(weights_dir() / "judge.safetensors")
    call_kw = call_kwargs(args.model, args.guidance)
    guidance = call_kw.get("true_cfg_scale", call_kw.get("guidance_scale"))
    prompts, labels = prompt_set("canonical", args.n, seed=args.seed + 1)
    t0 = time.time()
    res = rates(pipe, judge, prompts, labels, steps=args.steps, seed=args.seed, call_kw=call_kw)
    concepts = [c for c in args.edit_concepts.split(",") if c]
    edits = edit_rates(pipe, judge, concepts, args.n, args.steps, args.seed, call_kw) if concepts else None
    meta = {
        "command": "python -m erasekit.tinyworld.pooled " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "n": args.n,
        "steps": args.steps,
        "guidance": guidance,
        "seed": args.seed,
        "seconds": round(time.time() - t0),
    }
    print(table(res))
    if edits:
        print(edit_table(edits))
    if args.card:
        print(f"model card updated: {update_card(res, meta, wd / 'MODEL_CARD.md', edits)}")


if __name__ == "__main__":
    main()
