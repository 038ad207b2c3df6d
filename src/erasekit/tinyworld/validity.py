"""Is tinyworld a valid testbed? Measure the judge and the generator against the known ground truth.

    python -m erasekit.tinyworld.validity [--model tinyworld|tinyworld-xl] [--n N] [--steps 20] [--guidance 5]
        [--no-card]

1. judge accuracy on held-out renders (a render seed never used in training), per attribute;
2. for images generated from prompts, the share the judge reads as showing the prompted
   shape / colour / pattern, for
   * canonical prompts (``"a striped red circle"``),
   * synonym prompts (every attribute named by a non-canonical synonym, training templates),
   * synonym prompts in the held-out caption templates (``world.EVAL_TEMPLATES``).

Prints a table and rewrites the validity section of the model card. The pieces are importable
for evaluation code: :func:`prompt_set`, :func:`generate`, :func:`score`, :func:`measure`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import world
from .judge import HEADS, TinyworldJudge, heldout_accuracy

TARGETS = {
    "judge": {"shape": 0.97, "color": 0.97, "pattern": 0.97},
    "canonical": {"shape": 0.85, "color": 0.90, "pattern": 0.70},
    "synonym": {"shape": 0.75, "color": 0.80},
    "synonym_heldout": {"shape": 0.75, "color": 0.80},
}
PROMPT_SETS = {
    # name: (synonyms, split)
    "canonical": (False, "train"),
    "synonym": ("only", "train"),
    "synonym_heldout": ("only", "eval"),
}


def prompt_set(kind: str, n: int, seed: int = 0):
    """``n`` prompts cycling through all shape x colour x pattern combinations (shuffled, fixed seed).

    Returns (prompts, labels dict of int arrays). ``kind`` in :data:`PROMPT_SETS`. Canonical prompts
    use the bare template ``"a {pattern} {colour} {shape}"``.
    """
    synonyms, split = PROMPT_SETS[kind]
    rng = np.random.default_rng(seed)
    combos = [(s, c, p) for s in range(6) for c in range(6) for p in range(4)]
    order = np.concatenate([rng.permutation(len(combos)) for _ in range((n + len(combos) - 1) // len(combos))])[:n]
    prompts = []
    lab: dict[str, list[int]] = {"shape": [], "color": [], "pattern": []}
    for i in order:
        s, c, p = combos[i]
        names = (world.SHAPE_NAMES[s], world.COLOR_NAMES[c], world.PATTERN_NAMES[p])
        template = 0 if kind == "canonical" else None
        prompts.append(world.caption(*names, rng, synonyms=synonyms, split=split, template=template))
        lab["shape"].append(s)
        lab["color"].append(c)
        lab["pattern"].append(p)
    return prompts, {k: np.array(v) for k, v in lab.items()}


@torch.no_grad()
def generate(pipe, prompts, seed: int = 0, steps: int = 20, guidance: float = 5.0, batch_size: int = 48) -> np.ndarray:
    """uint8 (n,H,W,3) images, one per prompt, reproducible from ``seed`` (per-batch generators)."""
    out = []
    for b, i in enumerate(range(0, len(prompts), batch_size)):
        g = torch.Generator(device="cpu").manual_seed(seed * 100003 + b)
        res = pipe(
            list(prompts[i : i + batch_size]),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=g,
            output_type="np",
        )
        out.append((np.clip(res.images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def score(judge: TinyworldJudge, images, labels: dict) -> dict[str, float]:
    """Share of images the judge reads as showing the labelled value, per attribute, and all three at once."""
    probs = judge.predict(images)
    hits = {k: probs[k].argmax(-1).numpy() == np.asarray(labels[k]) for k in HEADS if k in labels}
    res = {k: float(v.mean()) for k, v in hits.items()}
    if len(hits) == 3:
        res["all"] = float(np.logical_and.reduce(list(hits.values())).mean())
    return res


def measure(
    pipe=None,
    judge=None,
    n: int = 288,
    steps: int = 20,
    guidance: float = 5.0,
    seed: int = 0,
    n_renders: int = 2000,
    sets=tuple(PROMPT_SETS),
    log=print,
) -> dict:
    """All validity figures as a dict {row: {attribute: share}} (+ "meta")."""
    from . import load_pipeline

    pipe = pipe if pipe is not None else load_pipeline()
    judge = judge if judge is not None else TinyworldJudge.load()
    res: dict[str, Any] = {"judge": heldout_accuracy(judge, n_renders)}
    log(f"judge on held-out renders: {res['judge']}")
    t0 = time.time()
    for kind in sets:
        prompts, lab = prompt_set(kind, n, seed=seed + 1)
        imgs = generate(pipe, prompts, seed=seed, steps=steps, guidance=guidance)
        res[kind] = score(judge, imgs, lab)
        log(f"{kind}: {res[kind]}  (e.g. {prompts[0]!r})")
    res["meta"] = {
        "n_per_set": n,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "n_renders": n_renders,
        "scheduler": type(pipe.scheduler).__name__,
        "generation_seconds": round(time.time() - t0),
    }
    return res


def table(res: dict) -> str:
    rows = ["| set | shape | colour | pattern | all three |", "|---|---|---|---|---|"]
    names = {
        "judge": "judge, held-out renders",
        "canonical": "generated, canonical prompts",
        "synonym": "generated, synonym-only prompts",
        "synonym_heldout": "generated, synonyms + held-out templates",
    }
    for k in ("judge", *PROMPT_SETS):
        if k not in res:
            continue
        cells = []
        for a in ("shape", "color", "pattern", "all"):
            v = res[k].get(a)
            if v is None:
                cells.append("–")
                continue
            t = TARGETS.get(k, {}).get(a)
            mark = "" if t is None else (" ✓" if v >= t else f" ✗ (target {t:.0%})")
            cells.append(f"{v:.1%}{mark}")
        rows.append(f"| {names[k]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def update_model_card(res: dict, card: Path | None = None) -> Path:
    from . import weights_dir
    from .train import CARD_VALIDITY_END, CARD_VALIDITY_START, write_card_section

    card = Path(card) if card is not None else weights_dir() / "MODEL_CARD.md"
    m = res.get("meta", {})
    body = (
        f"{CARD_VALIDITY_START}\nMeasured by `{m.get('command', 'python -m erasekit.tinyworld.validity')}` on "
        f"{time.strftime('%Y-%m-%d')}: "
        f"{m.get('n_per_set')} generated images per prompt set "
        f"({'all' if m.get('n_per_set', 0) >= 144 else 'cycling through'} the 144 shape x colour x pattern "
        "combinations, "
        f"fixed seeds), {m.get('scheduler')} {m.get('steps')} steps, guidance {m.get('guidance')}; judge on "
        f"{m.get('n_renders')} held-out renders. Share of images the judge reads as the prompted value "
        f"(✓ = meets the project's target).\n\n{table(res)}\n\n"
        f"```json\n{json.dumps(res, indent=1)}\n```\n{CARD_VALIDITY_END}"
    )
    return write_card_section(
        card, "Validity", CARD_VALIDITY_START, CARD_VALIDITY_END, body, "# tinyworld — model card\n"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        choices=("tinyworld", "tinyworld-xl"),
        default="tinyworld",
        help="which bundled model to measure (tinyworld-xl is judged by tinyworld's judge)",
    )
    ap.add_argument("--n", type=int, default=288, help="generated images per prompt set")
    ap.add_argument("--renders", type=int, default=2000, help="held-out renders for the judge's accuracy")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--weights", type=Path, default=None, help="folder with pipeline/ and judge.safetensors (default: shipped)"
    )
    ap.add_argument("--no-card", action="store_true", help="do not rewrite the model card")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import sys

    from . import load_pipeline, load_pipeline_xl, weights_dir, weights_xl_dir

    xl = args.model == "tinyworld-xl"
    wd = args.weights or (weights_xl_dir() if xl else weights_dir())
    pipe = (load_pipeline_xl if xl else load_pipeline)(path=wd / "pipeline")
    judge_path = wd / "judge.safetensors"
    judge = TinyworldJudge.load(judge_path if judge_path.is_file() else weights_dir() / "judge.safetensors")
    res = measure(
        pipe, judge, n=args.n, steps=args.steps, guidance=args.guidance, seed=args.seed, n_renders=args.renders
    )
    res["meta"]["command"] = "python -m erasekit.tinyworld.validity " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(table(res))
    if not args.no_card:
        print(f"model card updated: {update_model_card(res, wd / 'MODEL_CARD.md')}")


if __name__ == "__main__":
    main()
