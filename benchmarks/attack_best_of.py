"""ASR against K for the best-of-K attacks, from one run: K restarts (MMA-Diffusion, the token search), K judged images
of P4D's prompt, or K draws (noise-based probing), recounted at every k ≤ K.

A best-of-K attack's k-th search / image / draw does not depend on K (each has its own seed: ``search_generator`` and
``derived_seed`` in :mod:`erasekit.evaluate.attacks.base`), so the first k of a run with K are what a run with k
would make, and one evaluation gives the whole curve. (P4D's ``images`` is the exception: the images judged during
its search pick the prompt it keeps, so ``images = k`` is not a prefix of ``images = K``; run it once per value.)

Per k: the plain ASR (the unedited model's rate on the same attacked items in brackets) and the attack counted as the
reference protocols count it (:func:`erasekit.evaluate.summary.protocol_rates`, on the suite cut to its first k draws
per item), against the development edit of ``attack_budget.py``. Choose K on a development concept, not on the
reported one::

    OMP_NUM_THREADS=1 python benchmarks/attack_best_of.py --attack mma --knob restarts --k 4 --n 96 \\
        --concept dotted --edit-regex '(mid_block|up_blocks\\.[01]).*attn2\\.to_[kv]$' --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _attack_tables import PROTOCOL_HEAD, PROTOCOL_NOTE, pct, protocol_cells, protocol_values  # noqa: E402

DEV_REGEX = r"(mid_block|up_blocks\.[01]).*attn2\.to_[kv]$"


def first_draws(s, k: int):
    """The suite run ``s`` (a best-of-K suite) cut to each item's first ``k`` draws, judgements included."""
    from erasekit.evaluate.judges.base import JudgeResult
    from erasekit.evaluate.results import SuiteRun

    keep = [i for i, it in enumerate(s.suite.items) if int(dict(it.meta).get("draw", 0)) < k]

    def cut(jr: JudgeResult) -> JudgeResult:
        return JudgeResult(jr.concepts, jr.scores[keep], jr.decisions[keep], jr.settings, jr.details)

    suite = dataclasses.replace(s.suite, items=[s.suite.items[i] for i in keep])
    assert s.judged_edited is not None and s.judged_unedited is not None
    return SuiteRun(suite, [], [], judged_unedited=cut(s.judged_unedited), judged_edited=cut(s.judged_edited))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tinyworld", choices=("tinyworld", "tinyworld-xl"))
    ap.add_argument("--concept", default="dotted", help="a development concept (not the reported one)")
    ap.add_argument("--edit-regex", default=DEV_REGEX, help="UCE's layer_regex for the weak edit")
    ap.add_argument("--attack", required=True, help="a registered attack with a best-of-K option")
    ap.add_argument("--knob", required=True, help="its best-of-K option: restarts (mma, token-search), samples (nbp)")
    ap.add_argument("--k", type=int, default=4, help="the largest K; every k ≤ K is recounted")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/erasekit-attack-best-of")
    ap.add_argument("--set", action="append", default=[], metavar="ATTACK.OPTION=VALUE", help="another fixed option")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import erasekit
    from erasekit.evaluate import evaluate
    from erasekit.evaluate.attacks import make_attack_config, parse_attack_options
    from erasekit.evaluate.bench import tinyworld_concept_set
    from erasekit.evaluate.judges import make_judge
    from erasekit.evaluate.plan import Plan, make_study
    from erasekit.evaluate.render import GenerationSettings
    from erasekit.evaluate.summary import protocol_rates

    options = {**parse_attack_options(args.set, [args.attack])[args.attack], args.knob: args.k}
    make_attack_config(args.attack, **options)  # a bad option or budget is refused before the model loads
    pipe = erasekit.load_pipeline(args.model)
    cs = tinyworld_concept_set(args.concept)
    edit = erasekit.erase(pipe, "uce", cs, progress=False, layer_regex=args.edit_regex)
    plan = Plan(
        kinds=("target", "adversarial"), n=args.n, attacks=(args.attack,), attack_options={args.attack: options}
    )
    study = make_study(args.concept, cs, {"weak": edit}, plan, tinyworld=True)
    out = Path(args.out)
    t0 = time.perf_counter()
    res = evaluate(
        pipe,
        [study],
        make_judge("tinyworld"),
        out_dir=out / "eval",
        settings=GenerationSettings(steps=args.steps, guidance=5.0, batch_size=32),
        cache_dir=out / "cache",
        n_boot=20,
        progress=True,
    )
    assert res is not None
    seconds = time.perf_counter() - t0
    run = res.studies[args.concept]["weak"]
    target = run.suites["target"]
    (s,) = [x for x in run.suites.values() if x.suite.kind == "adversarial" and "record" in x.suite.info]
    per = int(s.suite.info.get("best_of", 1)) // args.k  # draws per unit of the knob (nbp: the grid's points)
    rows = {}
    for k in range(1, args.k + 1):
        cut = first_draws(s, k * per)
        ea, ua = cut.attacked("edited"), cut.attacked("unedited")
        rows[k] = {"ASR": float(ea.mean()), "unedited": float(ua.mean()), "n": int(ea.size)}
        rows[k].update(protocol_values(protocol_rates(target, cut, n_boot=20)))
    cost = s.suite.info["record"]["cost"]
    print(
        f"\n{args.model}, concept {args.concept}, weak edit UCE on {args.edit_regex!r}: named prompts "
        f"{pct(float(target.seen('edited').mean()))} (unedited {pct(float(target.seen('unedited').mean()))}), "
        f"n = {args.n}; {args.attack} with {args.knob} = {args.k} ({options}); evaluation {seconds:.0f} s, attack "
        f"{cost['seconds']:.0f} s"
    )
    print(PROTOCOL_NOTE)
    print(f"| {args.knob} k | ASR (unedited) [n] | {PROTOCOL_HEAD} |")
    print("|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {pct(r['ASR'])} ({pct(r['unedited'])}) [{r['n']}] | {protocol_cells(r)} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "best-of.json").write_text(json.dumps({"args": vars(args), "cost": cost, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
