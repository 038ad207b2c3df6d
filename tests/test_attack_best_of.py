"""Best-of-K prompt attacks (issue 24): MMA-Diffusion's independent restarts (the reference's ``-n``) and P4D's
judging of its prompt on several images (the reference's three), through :class:`BestOfPromptResult`.

Checked: the suite holds K items per attacked target item, labelled with the target they attack; a larger budget's
searches and image seeds start with a smaller one's (best of K can only grow with K); the images P4D judged while it
searched are the ones the evaluation renders, so the evaluation's best-of-K verdict is the search's; each search's
random draws belong to it alone (attacking other items, or more of them, leaves them as they were); malformed
results are refused.
"""

from __future__ import annotations

import pytest
import torch

import erasekit
from erasekit.errors import AttackError
from erasekit.evaluate.attacks import AttackContext, BestOfPromptResult, PromptResult, get_attack, make_attack_config
from erasekit.evaluate.attacks.base import derived_seed, search_generator
from erasekit.evaluate.attacks.p4d import draw_steps
from erasekit.evaluate.render import GenerationSettings, render_batch
from erasekit.evaluate.suites import tinyworld_suites

SETTINGS = GenerationSettings(steps=4, guidance=5.0, batch_size=16)
WEAK = {"layer_regex": r"(mid_block|up_blocks\.0).*attn2\.to_[kv]$"}
MMA_TINY = {"n_tokens": 4, "steps": 2, "candidates": 8, "topk": 8}
P4D_TINY = {"steps": 4, "eval_every": 2, "n_tokens": 4}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    from erasekit.evaluate.bench import tinyworld_concept_set
    from erasekit.evaluate.judges import TinyworldConceptJudge

    pipe = erasekit.load_pipeline("tinyworld")
    weak = erasekit.erase(pipe, "uce", tinyworld_concept_set("circle"), progress=False, **WEAK)
    return {"pipe": pipe, "judge": TinyworldConceptJudge(), "weak": weak}


def _build(world, name, n=3, edit=None, **options):
    target = tinyworld_suites(["circle"], n, kinds=["target"])[0]
    ctx = AttackContext(
        world["pipe"], target, edit, concepts=("circle",), judge=world["judge"], settings=SETTINGS, progress=False
    )
    return target, get_attack(name)(config=make_attack_config(name, **options)).build(ctx)


def _check_layout(target, result: BestOfPromptResult, k: int) -> None:
    (suite,) = result.suites(target)
    assert suite.info["best_of"] == k and len(suite.items) == k * len(target.items)
    for j, it in enumerate(suite.items):
        i, d = divmod(j, k)
        meta = dict(it.meta)
        assert (meta["of"], meta["draw"]) == (str(i), str(d))
        assert meta["original prompt"] == target.items[i].prompt and it.concepts == target.items[i].concepts
        assert it.prompt == result.candidates[i][d]
    assert result.prompts == [c[0] for c in result.candidates]


def test_mma_restarts_extend_the_fewer(world):
    """Restart k of a target prompt is the same search whatever the number of restarts: restarts=1's prompt is
    restarts=3's first, and each item's three prompts are attacked as one best-of-3 item at the item's seed."""
    target, one = _build(world, "mma", restarts=1, **MMA_TINY)
    _, three = _build(world, "mma", restarts=3, **MMA_TINY)
    assert type(one) is PromptResult and isinstance(three, BestOfPromptResult)
    assert [c[0] for c in three.candidates] == one.prompts
    assert all(len(set(c)) > 1 for c in three.candidates), "fresh random starts should find different prompts"
    _check_layout(target, three, 3)
    (suite,) = three.suites(target)
    assert [it.seed for it in suite.items] == [it.seed for it in target.items for _ in range(3)]


def test_p4d_images_are_judged_as_the_evaluation_judges_them(world):
    """P4D-N with images=2: the kept prompt stands at the item's seed and at a derived one; the search's judged
    success per item equals the judge's best-of-2 verdict on the edited model's images of the suite."""
    target, res = _build(world, "p4d-n", edit=world["weak"], images=2, **P4D_TINY)
    assert isinstance(res, BestOfPromptResult)
    _check_layout(target, res, 2)
    assert res.seeds == [[it.seed, derived_seed(0, it.seed, 1)] for it in target.items]
    (suite,) = res.suites(target)
    assert all(len(set(c)) == 1 for c in res.candidates), "one prompt per item, judged on several images"
    pipe = world["pipe"]
    world["weak"].apply(pipe)
    try:
        images = render_batch(pipe, suite.items, {}, SETTINGS)
    finally:
        world["weak"].revert(pipe)
    seen = world["judge"].judge(images, ["circle"]).decisions[:, 0].reshape(len(target.items), 2).any(1)
    assert seen.tolist() == res.details["judged in search"]


def test_p4d_draws_of_an_item_do_not_depend_on_the_other_items():
    """Each item's start, timesteps and noise come from its own generator (seeded by the attack seed and the item):
    drawn beside other items or alone, the same."""
    keys = [("p4d-n", "a red circle", 0), ("p4d-n", "a blue circle", 1), ("p4d-n", "a dotted circle", 2)]
    ts3, eps3 = draw_steps([search_generator(0, *k) for k in keys], 5, 1000, (4, 8, 8))
    ts1, eps1 = draw_steps([search_generator(0, *keys[1])], 5, 1000, (4, 8, 8))
    assert ts3.shape == (5, 3) and eps3.shape == (5, 3, 4, 8, 8)
    assert torch.equal(ts3[:, 1:2], ts1) and torch.equal(eps3[:, 1:2], eps1)
    assert not torch.equal(ts3[:, 0], ts3[:, 1]), "two items must not share their draws"
    assert not torch.equal(draw_steps([search_generator(1, *keys[1])], 5, 1000, (4,))[0], ts1), "the seed matters"


def test_malformed_best_of_results_are_refused():
    with pytest.raises(AttackError, match="at least one candidate"):
        BestOfPromptResult("mma", {}, {}, {}, candidates=[["a"], []])
    with pytest.raises(AttackError, match="one image seed"):
        BestOfPromptResult("p4d-n", {}, {}, {}, candidates=[["a", "a"]], seeds=[[1]])


TS_TINY = {"n_tokens": 2, "steps": 2, "candidates": 4, "max_prompts": 2}


def test_token_search_restarts_extend_the_fewer_and_count_best_of_k(world, tmp_path):
    """erasekit's token search with restarts: restart 0 is the single search, the unsearched items (past
    ``max_prompts``) stay unattacked, and the evaluation counts one success per target item, any restart's."""
    from erasekit.evaluate import evaluate
    from erasekit.evaluate.bench import tinyworld_concept_set
    from erasekit.evaluate.plan import Plan, make_study

    target, one = _build(world, "token-search", edit=world["weak"], restarts=1, **TS_TINY)
    _, three = _build(world, "token-search", edit=world["weak"], restarts=3, **TS_TINY)
    assert [c[0] if c else None for c in three.candidates] == one.prompts
    assert (
        sum(c is not None for c in three.candidates) == 2
        and "best of 3 restarts" in three.suites(target)[0].info["budget"]
    )
    (suite,) = three.suites(target)
    assert suite.info["best_of"] == 3 and len(suite.items) == 2 * 3
    assert [dict(it.meta)["of"] for it in suite.items] == [
        str(i) for i, c in enumerate(three.candidates) if c for _ in c
    ]

    opts = {"token-search": {**TS_TINY, "restarts": 3}}
    plan = Plan(kinds=("target", "adversarial"), n=3, attacks=("token-search",), attack_options=opts)
    study = make_study("circle", tinyworld_concept_set("circle"), {"weak": world["weak"]}, plan, tinyworld=True)
    kw = {"out_dir": tmp_path / "o", "settings": SETTINGS, "cache_dir": tmp_path / "c", "n_boot": 20}
    res = evaluate(world["pipe"], [study], world["judge"], progress=False, **kw)
    run = res.studies["circle"]["weak"]
    (s,) = [x for x in run.suites.values() if x.suite.kind == "adversarial"]
    per_draw = s.seen("edited").reshape(2, 3)
    row = res.attacks["circle"]["token-search"]["methods"]["weak"]
    assert (row["judge ASR"].k, row["judge ASR"].n) == (int(per_draw.any(1).sum()), 2)
