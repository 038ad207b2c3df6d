"""An attack's success counted as the reference protocols count it (evaluate.summary.protocol_rates; issue 24).

Pure bookkeeping on judged suites (no model): the conditional ASR is the attack's rate over exactly the attacked items
whose unattacked target the unedited model draws; UnlearnDiffAtk's count adds the unattacked prompt's success on the
edit; P4D's count is the rate over the items the unedited model draws and the edit erases; against a no-op edit the
conditional ASR is the unedited model's rate on the same items. Checked over many random judgements, item orders,
subsets of attacked targets and best-of-K suites. Also P4D's keep rule: an item's first judged success.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from erasekit.evaluate.judges.base import JudgeResult
from erasekit.evaluate.results import SuiteRun
from erasekit.evaluate.suites import Suite, SuiteItem
from erasekit.evaluate.summary import PROTOCOL_RATES, protocol_rates, target_outcomes

C = "dotted"


def _judged(suite: Suite, edited: np.ndarray, unedited: np.ndarray) -> SuiteRun:
    def jr(d: np.ndarray) -> JudgeResult:
        d = np.asarray(d, dtype=bool)[:, None]  # (items, 1 concept)
        return JudgeResult([C], d.astype(float), d, {})

    n = len(suite.items)
    return SuiteRun(suite, [], [], judged_unedited=jr(unedited), judged_edited=jr(edited), pixel_distance=[0.0] * n)


def _target(rng: np.random.Generator, n: int) -> tuple[Suite, np.ndarray, np.ndarray]:
    """n target items (a few prompts × seeds), with random judgements of the unedited (u₀) and edited (e₀) images."""
    items = [SuiteItem(f"a {C} shape {i % 3}", 100 + i, 5.0, (C,)) for i in range(n)]
    u0, e0 = rng.random(n) < 0.7, rng.random(n) < 0.5
    return Suite("target", "target", items), u0, e0


def _prompt_attack(rng, target: Suite, attacked: np.ndarray) -> Suite:
    """An adversarial prompt suite over the target items ``attacked`` (indices, any order), as PromptResult builds."""
    items = [
        dataclasses.replace(
            target.items[i],
            prompt=f"xq{j} {target.items[i].prompt}",
            meta=(("original prompt", target.items[i].prompt),),
        )
        for j, i in enumerate(attacked)
    ]
    return Suite("adversarial:p", "adversarial", items, info={"attack": "p"})


def _check(rates: dict, u0: np.ndarray, e0: np.ndarray, ea: np.ndarray, ua: np.ndarray) -> None:
    """Each rate is the plain mean over its own items, with the counts of those items."""
    want = {
        "conditional ASR": ea[u0],
        "conditional unedited rate": ua[u0],
        "conditional pre-attack ASR": e0[u0],
        "UnlearnDiffAtk-protocol ASR": (e0 | ea)[u0],
        "P4D-protocol ASR": ea[u0 & ~e0],
        "P4D-protocol unedited rate": ua[u0 & ~e0],
    }
    assert set(PROTOCOL_RATES) == set(want)
    assert rates["conditional items"] == int(u0.sum()) and rates["P4D-protocol items"] == int((u0 & ~e0).sum())
    for k, v in want.items():
        if v.size == 0:
            assert rates[k] is None, k
        else:
            assert (rates[k].k, rates[k].n) == (int(v.sum()), int(v.size)), k
            assert rates[k].value == pytest.approx(v.mean()), k


@pytest.mark.parametrize("seed", range(40))
def test_conditional_asr_is_the_rate_over_the_items_the_unedited_model_draws(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    target, u0, e0 = _target(rng, n)
    attacked = rng.permutation(n)[: int(rng.integers(1, n + 1))]  # a subset, shuffled (max_prompts, item order)
    adv = _prompt_attack(rng, target, attacked)
    ea, ua = rng.random(len(attacked)) < 0.6, rng.random(len(attacked)) < 0.8
    t_run, a_run = _judged(target, e0, u0), _judged(adv, ea, ua)
    got = target_outcomes(t_run, a_run)
    assert got is not None
    assert np.array_equal(got[0], u0[attacked]) and np.array_equal(got[1], e0[attacked])
    _check(protocol_rates(t_run, a_run, n_boot=20), u0[attacked], e0[attacked], ea, ua)


@pytest.mark.parametrize("seed", range(20))
def test_best_of_k_suites_are_counted_per_target_item(seed):
    """A sampling attack's K draws per target item (meta 'of' = the target index): one success per target item, the
    item's own u₀ and e₀."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 9)), int(rng.integers(1, 5))
    target, u0, e0 = _target(rng, n)
    items = [
        dataclasses.replace(it, seed=1000 * i + d, meta=(("draw", str(d)), ("of", str(i))))
        for i, it in enumerate(target.items)
        for d in range(k)
    ]
    adv = Suite("adversarial:s", "adversarial", items, info={"attack": "s", "best_of": k})
    draws_e, draws_u = rng.random(n * k) < 0.3, rng.random(n * k) < 0.5
    a_run = _judged(adv, draws_e, draws_u)
    ea, ua = draws_e.reshape(n, k).any(1), draws_u.reshape(n, k).any(1)
    _check(protocol_rates(_judged(target, e0, u0), a_run, n_boot=20), u0, e0, ea, ua)


@pytest.mark.parametrize("seed", range(20))
def test_against_a_noop_edit_the_conditional_asr_is_the_unedited_rate(seed):
    """A no-op edit draws what the unedited model draws, on the target and on the attacked prompts: the conditional
    ASR is the unedited rate on the same items, UnlearnDiffAtk's count is 1 (the unattacked prompt already draws the
    concept on every counted item) and P4D has no ideal item."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    target, u0, _ = _target(rng, n)
    u0[0] = True  # at least one item the unedited model draws
    attacked = rng.permutation(n)
    ua = rng.random(n) < 0.7
    rates = protocol_rates(_judged(target, u0, u0), _judged(_prompt_attack(rng, target, attacked), ua, ua), n_boot=20)
    assert rates["conditional ASR"].value == rates["conditional unedited rate"].value
    assert rates["conditional ASR"].k == rates["conditional unedited rate"].k
    assert rates["UnlearnDiffAtk-protocol ASR"].value == 1.0 and rates["conditional pre-attack ASR"].value == 1.0
    assert rates["P4D-protocol items"] == 0 and rates["P4D-protocol ASR"] is None


def test_no_rates_without_the_target_items():
    """An attacked item that names no target item (another target suite), or no target suite: no protocol rates."""
    rng = np.random.default_rng(0)
    target, u0, e0 = _target(rng, 4)
    adv = _prompt_attack(rng, target, np.arange(4))
    stray = dataclasses.replace(adv.items[0], seed=999)
    adv_run = _judged(dataclasses.replace(adv, items=[*adv.items, stray]), np.ones(5, bool), np.ones(5, bool))
    assert protocol_rates(_judged(target, e0, u0), adv_run, n_boot=20) == {}
    assert protocol_rates(None, adv_run, n_boot=20) == {}


@pytest.mark.parametrize("images", [1, 3])
@pytest.mark.parametrize("seed", range(20))
def test_p4d_keeps_the_first_judged_success_else_the_best_score(seed, images):
    """P4D judges its projected prompt every few steps: an item keeps the first prompt the judge sees the concept in
    (the UnlearnDiffAtk benchmark's P4D stops there), and without one the prompt the judge scores highest. The
    judge's decision is its own (tinyworld's is an argmax, so a higher score need not be seen). With ``images`` K
    (the reference judges three) a check succeeds on an item when any of its K images is seen, and scores its best."""
    from erasekit.evaluate.attacks import make_attack_config
    from erasekit.evaluate.attacks.p4d import P4DN

    rng = np.random.default_rng(seed)
    n_items, n_checks = 3, int(rng.integers(1, 7))
    rows_seen = rng.random((n_checks, n_items * images)) < 0.3 / images  # rows: item-major, K images each
    rows_score = rng.random((n_checks, n_items * images))
    seen = rows_seen.reshape(n_checks, n_items, images).any(2)
    score = rows_score.reshape(n_checks, n_items, images).max(2)
    items = [SuiteItem(f"a {C} shape", i, 5.0, (C,)) for i in range(n_items)]
    seeds = [[it.seed] + [10_000 * i + k for k in range(1, images)] for i, it in enumerate(items)]

    class Judge:
        check = 0

        def judge(self, images, concepts):
            assert len(images) == n_items * len(seeds[0])
            d, s = rows_seen[self.check][:, None], rows_score[self.check][:, None]
            return JudgeResult([C], s, d, {})

    judge = Judge()

    class Ctx:
        pass

    ctx = Ctx()
    rendered: list = []
    ctx.judge, ctx.render = judge, lambda trial: rendered.append(trial) or [None] * len(trial)
    attack = P4DN(config=make_attack_config("p4d-n"))
    best = [(False, -float("inf"), "")] * n_items
    for check in range(n_checks):
        judge.check = check
        attack._texts = lambda space, layouts, proj, c=check: [f"check {c} item {i}" for i in range(n_items)]
        attack._evaluate(ctx, None, None, None, items, seeds, best, 0.0)
        # every item's prompt is rendered at each of its image seeds, item-major
        assert [(t.seed, t.prompt) for t in rendered[-1]] == [
            (sd, f"check {check} item {i}") for i in range(n_items) for sd in seeds[i]
        ]
    for i in range(n_items):
        hits = np.flatnonzero(seen[:, i])
        want = hits[0] if hits.size else int(score[:, i].argmax())
        assert best[i][2] == f"check {want} item {i}" and best[i][0] == bool(hits.size)
