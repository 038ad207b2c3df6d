"""PURE's forget-threshold sweep on tinyworld-flux: activation basis vs text basis, no retain anchors (issue 29).

The claim tested (PURE's project page, saemi410/PURE, on a FLUX-architecture model): over the forget energy
threshold τ_F, the activation-basis edit lowers the target proportion, the text-basis edit stays near the unedited
model over most of the sweep, and within-category retention stays high.

For each test concept (shape ``circle``, colour ``red``, pattern ``striped``: the reported concepts, not the
development ones defaults were tuned on) and each τ_F:

* **activation** — ``pure`` with ``sites='joint'``: E = I − P_F(I − P_R) left-multiplied into every double-stream
  block's ``add_k_proj`` / ``add_v_proj``; P_F from the image tokens' joint-attention output (before ``to_out``)
  mean-pooled over tokens, one row per (anchor, latent, step) of the pipeline's own true-CFG sampler; the paper's
  procedure otherwise (uncentred, one joint SVD, every step, E on K and V);
* **text** — ``pure --basis text`` on the static sites (``context_embedder`` and the pooled embedder): the same
  projector built from the anchors' token embeddings, right-multiplied (CURE-style);

forget anchors: the concept in the six object templates (``preset='paper'``'s anchors); no retain anchors, so
P_R = 0 and E = I − P_F. Measured with the tinyworld judge on images generated as the model was trained
(:data:`erasekit.tinyworld.flux.GENERATE_KW`: 32 px, 20 steps, true CFG 5 against ""):

* target proportion — share of the concept's prompts ("a {pattern} {colour} circle", other attributes random) whose
  image the judge reads as the erased value (lower = erased);
* retention — share of prompts naming another value of the same attribute whose image shows that value.

Same prompts and seeds for every row; the unedited row beside. Writes ``sweep.json`` and ``sweep.png`` to ``--out``.

    OMP_NUM_THREADS=1 python benchmarks/pure_tau_sweep.py --n 24 --out /tmp/pure_tau_sweep
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

TAUS = (0.50, 0.60, 0.70, 0.80, 0.90, 0.95, 0.99)
CONCEPTS = ("circle", "red", "striped")  # the reported concepts; defaults.py tuned on square / blue / dotted


def prompts_for(attr: str, values: list[str], n: int, seed: int) -> tuple[list[str], list[int]]:
    """``n`` canonical prompts "a {pattern} {colour} {shape}" whose ``attr`` cycles through ``values`` (the other two
    attributes drawn at random); the index of each prompt's named value in ``world.ATTRIBUTES[attr]``."""
    from erasekit.tinyworld import world

    rng = np.random.default_rng(seed)
    out, labels = [], []
    for i in range(n):
        pick = {a: str(rng.choice(vs)) for a, vs in world.ATTRIBUTES.items()}
        pick[attr] = values[i % len(values)]
        out.append(f"a {pick['pattern']} {pick['color']} {pick['shape']}")
        labels.append(world.ATTRIBUTES[attr].index(pick[attr]))
    return out, labels


def judged(pipe, judge, prompts: list[str], labels: list[int], attr: str, seed: int) -> float:
    """Share of images the judge reads as showing the labelled value of ``attr``."""
    from erasekit.tinyworld import validity

    images = validity.generate(pipe, prompts, seed=seed, steps=20, call_kw=validity.call_kwargs("tinyworld-flux"))
    return validity.score(judge, images, {attr: labels})[attr]


def edit_options(basis: str, tau: float, anchors: list[str], args) -> dict:
    common = dict(
        basis=basis, forget_energy=tau, retain_energy=0.99, forget_prompts=tuple(anchors), per_concept=False,
        centre="none", forget_rule="joint",
    )  # fmt: skip
    if basis == "text":
        return dict(common, token=args.text_token)
    return dict(
        common, sites="joint", record_steps="all", k_basis="same", n_latents=args.n_latents, steps=args.anchor_steps,
        guidance=5.0, height=32, width=32, seed=0,
    )  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default=",".join(CONCEPTS))
    ap.add_argument("--taus", default=",".join(f"{t:g}" for t in TAUS))
    ap.add_argument("--n", type=int, default=24, help="prompts per suite (target and retention each)")
    ap.add_argument("--n-latents", type=int, default=2, help="anchor latents (PURE's n_lat)")
    ap.add_argument("--anchor-steps", type=int, default=5, help="anchor trajectory steps (PURE's T)")
    ap.add_argument("--text-token", default="last", help="token selection of the text basis")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/pure_tau_sweep")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import erasekit
    from erasekit import ConceptSet
    from erasekit.concepts import reference_templates
    from erasekit.evaluate.suites import tinyworld_attribute
    from erasekit.tinyworld import TinyworldJudge, load_pipeline_flux, world

    pipe = load_pipeline_flux()
    judge = TinyworldJudge.load()
    taus = [float(t) for t in args.taus.split(",")]
    rows: list[dict] = []
    t_start = time.time()
    for concept in args.concepts.split(","):
        attr, value = tinyworld_attribute(concept)
        others = [v for v in world.ATTRIBUTES[attr] if v != value]
        target = prompts_for(attr, [value], args.n, args.seed)
        retain = prompts_for(attr, others, args.n, args.seed + 1)
        anchors = [t.format(value) for t in reference_templates("object")]
        cs = ConceptSet(erase=(value,), kind="object")

        def measure(label: str, basis: str, tau: float | None, stats: dict) -> None:
            row = dict(
                concept=value, attribute=attr, basis=basis, tau=tau,
                target=judged(pipe, judge, *target, attr, args.seed),
                retention=judged(pipe, judge, *retain, attr, args.seed + 1), **stats,
            )  # fmt: skip
            rows.append(row)
            print(
                f"{value:8s} {label:10s} τ_F={'-' if tau is None else f'{tau:.2f}':5s} target {row['target']:.3f} "
                f"retention {row['retention']:.3f} rank {row.get('rank', '-')}  ({time.time() - t_start:.0f} s)",
                flush=True,
            )

        measure("unedited", "none", None, {})
        for basis in ("activation", "text"):
            for tau in taus:
                edit = erasekit.erase(
                    pipe, "pure", cs, defaults=None, progress=False, **edit_options(basis, tau, anchors, args)
                )
                ranks = [le.stats["rank_forget"] for le in edit.layers.values()]
                edit.apply(pipe)
                try:
                    measure(basis, basis, tau, {"rank": round(float(np.mean(ranks)), 2), "layers": len(ranks)})
                finally:
                    edit.revert(pipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(dict(args=vars(args), rows=rows), indent=1))
    print_table(rows, taus)
    plot(rows, taus, out / "sweep.png")
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
    return 0


def print_table(rows: list[dict], taus: list[float]) -> None:
    """Markdown: one line per (concept, basis), target / retention per τ_F, the unedited value first."""
    print("\n| concept | basis | " + " | ".join(f"τ_F {t:.2f}" for t in taus) + " |")
    print("|---|---|" + "---|" * len(taus))
    for concept in dict.fromkeys(r["concept"] for r in rows):
        base = next(r for r in rows if r["concept"] == concept and r["basis"] == "none")
        print(
            f"| {concept} | unedited | "
            + " | ".join(f"{base['target']:.2f} / {base['retention']:.2f}" for _ in taus)
            + " |"
        )
        for basis in ("activation", "text"):
            cells = {r["tau"]: r for r in rows if r["concept"] == concept and r["basis"] == basis}
            print(
                f"| {concept} | {basis} | "
                + " | ".join(f"{cells[t]['target']:.2f} / {cells[t]['retention']:.2f}" for t in taus if t in cells)
                + " |"
            )
    print("(cells: target proportion / within-category retention)")


def plot(rows: list[dict], taus: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    fig, axes = plt.subplots(2, len(concepts), figsize=(4 * len(concepts), 6), squeeze=False, sharex=True)
    for j, concept in enumerate(concepts):
        base = next(r for r in rows if r["concept"] == concept and r["basis"] == "none")
        for i, metric in enumerate(("target", "retention")):
            ax = axes[i][j]
            ax.axhline(base[metric], color="grey", ls="--", label="unedited")
            for basis, style in (("activation", "o-"), ("text", "s-")):
                pts = sorted((r["tau"], r[metric]) for r in rows if r["concept"] == concept and r["basis"] == basis)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{basis} basis")
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"{concept}: {'target proportion' if metric == 'target' else 'retention'}")
            if i == 1:
                ax.set_xlabel("τ_F (forget energy)")
            if j == 0:
                ax.legend(fontsize=8)
    fig.suptitle("PURE on tinyworld-flux, no retain anchors")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
