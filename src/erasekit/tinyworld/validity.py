"""Is tinyworld a valid testbed? Measure the judge and the generator against the known ground truth.

    python -m erasekit.tinyworld.validity [--model tinyworld|tinyworld-xl|tinyworld-flux] [--n N] [--steps 20]
        [--guidance G] [--no-card]

``--guidance`` is ``guidance_scale`` for tinyworld / tinyworld-xl (default 5) and ``true_cfg_scale`` (with
``negative_prompt=""``) for tinyworld-flux (default: :data:`erasekit.tinyworld.flux.GENERATE_KW`).

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
# The bar a bundled sibling model (tinyworld-xl, tinyworld-flux) must reach: absolute on canonical
# prompts; the paraphrase rows may trail the canonical row by at most BAR_GAP.
BAR_CANONICAL = {"shape": 0.95, "color": 0.90, "pattern": 0.85}
BAR_GAP = 0.05
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


def call_kwargs(model: str, guidance: float | None = None) -> dict[str, Any]:
    """The pipeline keyword arguments (besides steps) that generate ``model``'s images as it was trained.

    tinyworld / tinyworld-xl: classifier-free guidance ``guidance_scale`` (default 5). tinyworld-flux: true
    CFG against the empty prompt, 32x32, the T5 length it was trained with (:data:`flux.GENERATE_KW`).
    """
    if model == "tinyworld-flux":
        from .flux import GENERATE_KW

        kw = {k: v for k, v in GENERATE_KW.items() if k != "num_inference_steps"}
        if guidance is not None:
            kw["true_cfg_scale"] = guidance
        return kw
    return {"guidance_scale": 5.0 if guidance is None else guidance}


@torch.no_grad()
def generate(
    pipe,
    prompts,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 5.0,
    batch_size: int = 48,
    call_kw: dict[str, Any] | None = None,
) -> np.ndarray:
    """uint8 (n,H,W,3) images, one per prompt, reproducible from ``seed`` (per-batch generators).

    ``call_kw``: the pipeline's guidance arguments (:func:`call_kwargs`); default ``guidance_scale=guidance``.
    """
    out = []
    kw = call_kw if call_kw is not None else {"guidance_scale": guidance}
    for b, i in enumerate(range(0, len(prompts), batch_size)):
        g = torch.Generator(device="cpu").manual_seed(seed * 100003 + b)
        res = pipe(
            list(prompts[i : i + batch_size]),
            num_inference_steps=steps,
            generator=g,
            output_type="np",
            **kw,
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
    call_kw: dict[str, Any] | None = None,
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
        imgs = generate(pipe, prompts, seed=seed, steps=steps, guidance=guidance, call_kw=call_kw)
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
    if call_kw is not None:
        res["meta"]["call"] = call_kw
    return res


def bar_targets(res: dict) -> dict[str, dict[str, float]]:
    """Per-row targets of the sibling-model bar for ``res``: :data:`BAR_CANONICAL` on canonical prompts,
    and each paraphrase row at least the measured canonical share minus :data:`BAR_GAP`."""
    out: dict[str, dict[str, float]] = {"judge": TARGETS["judge"], "canonical": dict(BAR_CANONICAL)}
    canon = res.get("canonical", {})
    for kind in PROMPT_SETS:
        if kind != "canonical" and canon:
            out[kind] = {a: canon[a] - BAR_GAP for a in BAR_CANONICAL if a in canon}
    return out


def meets(res: dict, targets: dict[str, dict[str, float]]) -> bool:
    """Whether every measured share in ``res`` reaches its target (rows / attributes without one are free)."""
    return all(res[k][a] >= t - 1e-9 for k, row in targets.items() if k in res for a, t in row.items() if a in res[k])


def table(res: dict, targets: dict[str, dict[str, float]] | None = None) -> str:
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
            t = (TARGETS if targets is None else targets).get(k, {}).get(a)
            mark = "" if t is None else (" ✓" if v >= t else f" ✗ (target {t:.0%})")
            cells.append(f"{v:.1%}{mark}")
        rows.append(f"| {names[k]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def update_model_card(
    res: dict,
    card: Path | None = None,
    targets: dict[str, dict[str, float]] | None = None,
    target_note: str = "meets the project's target",
) -> Path:
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
        f"(✓ = {target_note}).\n\n{table(res, targets)}\n\n"
        f"```json\n{json.dumps(res, indent=1)}\n```\n{CARD_VALIDITY_END}"
    )
    return write_card_section(
        card, "Validity", CARD_VALIDITY_START, CARD_VALIDITY_END, body, "# tinyworld — model card\n"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        choices=("tinyworld", "tinyworld-xl", "tinyworld-flux"),
        default="tinyworld",
        help="which bundled model to measure (tinyworld-xl and tinyworld-flux are judged by tinyworld's judge)",
    )
    ap.add_argument("--n", type=int, default=288, help="generated images per prompt set")
    ap.add_argument("--renders", type=int, default=2000, help="held-out renders for the judge's accuracy")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance_scale (tinyworld, tinyworld-xl; default 5) or true_cfg_scale (tinyworld-flux; default "
        "flux.GENERATE_KW's)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--weights", type=Path, default=None, help="folder with pipeline/ and judge.safetensors (default: shipped)"
    )
    ap.add_argument("--no-card", action="store_true", help="do not rewrite the model card")
    ap.add_argument(
        "--padding-check",
        type=int,
        default=0,
        metavar="N",
        help="tinyworld-flux: also generate N canonical prompts with the pipeline's default T5 length (512) and "
        "write the comparison into the card's known limits",
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import sys

    from . import (
        load_pipeline,
        load_pipeline_flux,
        load_pipeline_xl,
        weights_dir,
        weights_flux_dir,
        weights_xl_dir,
    )

    loader, default_dir = {
        "tinyworld": (load_pipeline, weights_dir),
        "tinyworld-xl": (load_pipeline_xl, weights_xl_dir),
        "tinyworld-flux": (load_pipeline_flux, weights_flux_dir),
    }[args.model]
    wd = args.weights or default_dir()
    pipe = loader(path=wd / "pipeline")
    call_kw = call_kwargs(args.model, args.guidance)
    guidance = call_kw.get("guidance_scale", call_kw.get("true_cfg_scale"))
    judge_path = wd / "judge.safetensors"
    judge = TinyworldJudge.load(judge_path if judge_path.is_file() else weights_dir() / "judge.safetensors")
    res = measure(
        pipe,
        judge,
        n=args.n,
        steps=args.steps,
        guidance=guidance,
        seed=args.seed,
        n_renders=args.renders,
        call_kw=call_kw,
    )
    res["meta"]["command"] = "python -m erasekit.tinyworld.validity " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.model == "tinyworld":
        targets, note = None, "meets the project's target"
    else:
        targets = bar_targets(res)
        note = (
            f"meets the bar of a bundled sibling model: canonical shape / colour / pattern ≥ "
            f"{' / '.join(f'{v:.0%}' for v in BAR_CANONICAL.values())}, paraphrase rows within "
            f"{BAR_GAP * 100:.0f} points of canonical"
        )
        res["meta"]["meets_bar"] = meets(res, targets)
    print(table(res, targets))
    if not args.no_card:
        print(f"model card updated: {update_model_card(res, wd / 'MODEL_CARD.md', targets, note)}")
    if args.padding_check and args.model == "tinyworld-flux":
        padding_check(pipe, judge, res, call_kw, args.padding_check, args.steps, args.seed, wd, not args.no_card)


def padding_check(pipe, judge, res: dict, call_kw: dict, n: int, steps: int, seed: int, wd: Path, card: bool) -> dict:
    """tinyworld-flux only: canonical prompts with T5 padded to 512 tokens (FluxPipeline's default length)."""
    from ._training import write_card_section
    from .model_card_flux import PADDING_END, PADDING_START

    prompts, lab = prompt_set("canonical", n, seed=seed + 1)
    kw = {**call_kw, "max_sequence_length": 512}
    long = score(judge, generate(pipe, prompts, seed=seed, steps=steps, call_kw=kw), lab)
    short = score(judge, generate(pipe, prompts, seed=seed, steps=steps, call_kw=call_kw), lab)
    cells = " / ".join(f"{short[a]:.0%} -> {long[a]:.0%}" for a in ("shape", "color", "pattern"))
    line = (
        f"  measured on {n} canonical prompts (same seeds; `validity --padding-check {n}`, "
        f"{time.strftime('%Y-%m-%d')}): judged shape / colour / pattern {cells} "
        f"(length {call_kw['max_sequence_length']} -> 512)."
    )
    print(line.strip())
    if card:
        write_card_section(
            wd / "MODEL_CARD.md", "Padding", PADDING_START, PADDING_END, f"{PADDING_START}\n{line}\n{PADDING_END}"
        )
    return {"short": short, "long": long}


if __name__ == "__main__":
    main()
