"""The attack registry, as a matrix over every registered attack sharing one set of checks (tinyworld, CPU).

Default run: the registry and its CLI listing, one-line refusals of bad budgets before any model load, determinism
under a seed, the no-op edit giving the unedited rate, and the full config and cost in results.json (tiny budgets).
``-m slow``: each attack at its default budget brings the concept back on a weak edit.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

import erasekit
from erasekit.errors import AttackError
from erasekit.evaluate.attacks import (
    BUDGETS,
    KINDS,
    AttackContext,
    get_attack,
    list_attacks,
    make_attack_config,
    parse_attack_options,
)
from erasekit.evaluate.render import GenerationSettings, render_batch
from erasekit.evaluate.suites import tinyworld_suites

ATTACKS = tuple(list_attacks())
PAPER_ATTACKS = ("nbp", "uda", "p4d-n", "p4d-k", "cce", "mma")  # the literature's attacks, each with the paper budget
# budgets small enough for the default run (seconds per attack on 2 target items)
TINY = {
    "ring-a-bell": {"etas": (1.0,)},
    "token-search": {"n_tokens": 2, "steps": 2, "candidates": 4, "max_prompts": 2},
    "nbp": {"etas": (1.0,), "variance_scales": (1.0, 1.04), "samples": 1},
    "uda": {"timesteps": 1, "iterations": 2},
    "p4d-n": {"steps": 2, "eval_every": 1, "n_tokens": 4},
    "p4d-k": {"steps": 2, "eval_every": 1},
    "cce": {"steps": 2, "batch_size": 2},
    "mma": {"n_tokens": 4, "steps": 2, "candidates": 8, "topk": 8},
}
SETTINGS = GenerationSettings(steps=4, guidance=5.0, batch_size=16)
WEAK = {"layer_regex": r"(mid_block|up_blocks\.0).*attn2\.to_[kv]$"}  # UCE on two blocks: about half the concept left


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def world():
    from erasekit.evaluate.bench import tinyworld_concept_set
    from erasekit.evaluate.judges import TinyworldConceptJudge

    pipe = erasekit.load_pipeline("tinyworld")
    cs = tinyworld_concept_set("circle")
    return {"pipe": pipe, "judge": TinyworldConceptJudge(), "cs": cs}


@pytest.fixture(scope="module")
def edits(world):
    pipe, cs = world["pipe"], world["cs"]
    return {
        "uce": erasekit.erase(pipe, "uce", cs, progress=False),
        "weak": erasekit.erase(pipe, "uce", cs, progress=False, **WEAK),
        "noop": erasekit.erase(pipe, "uce", cs, progress=False, erase_scale=0.0),
    }


def _ctx(world, target, edit, **kw):
    from erasekit.evaluate.attacks import tinyworld_pairs

    cls_kw = {"judge": world["judge"], "settings": SETTINGS, "tinyworld": True, "progress": False}
    pairs = tinyworld_pairs("circle", 8, 0)
    return AttackContext(world["pipe"], target, edit, concepts=("circle",), pairs=pairs, **{**cls_kw, **kw})


def _suites(world, name, target, edit, **options):
    attack = get_attack(name)(config=make_attack_config(name, **options))
    return attack.suites(_ctx(world, target, edit if attack.per_method else None))


def _target(n: int):
    return tinyworld_suites(["circle"], n, kinds=["target"])[0]


# ----------------------------------------------------------------------------- registry
def test_registry_lists_every_attack(capsys):
    from erasekit.cli import main

    assert set(PAPER_ATTACKS) | {"ring-a-bell", "token-search"} <= set(ATTACKS)
    assert set(TINY) == set(ATTACKS), "every registered attack needs a tiny budget in this matrix"
    assert main(["attacks", "-v"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out.replace("NAME,…", ""), "a cell was cut short instead of folded (budgets, addresses)"
    for name, cls in list_attacks().items():
        assert name in out and cls.kind in KINDS and cls.reference and cls.summary
        default, paper = cls.config_class.defaults("default"), cls.config_class.defaults("paper")
        if name in PAPER_ATTACKS:
            assert paper != default, f"{name}: the paper budget is the default"
        for option, text in cls.config_class.field_help().items():
            assert text, f"{name}.{option} has no help"


def _budget_fields(name):
    return [f for f in dataclasses.fields(get_attack(name).config_class) if f.metadata.get("budget")]


def test_budget_benchmark_scales_a_positive_integer_budget_field_of_each_attack():
    """benchmarks/attack_budget.py multiplies one knob per attack: it must be an integer budget field, so ×2 is
    twice the work and a renamed field fails here rather than mid-benchmark."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "attack_budget.py"
    spec = importlib.util.spec_from_file_location("attack_budget", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert set(mod.KNOBS) == set(ATTACKS) - {"ring-a-bell"}
    for name, knob in mod.KNOBS.items():
        assert knob in {f.name for f in _budget_fields(name)}, f"{name}: {knob} is not a budget field"
        value = getattr(make_attack_config(name, "default"), knob)
        assert isinstance(value, int) and value >= 1, f"{name}.{knob} = {value!r}"
        make_attack_config(name, "default", **{knob: 4 * value})  # ×4 is a valid budget


@pytest.mark.parametrize("name", ATTACKS)
def test_bad_budgets_are_refused_in_one_line(name):
    for f in _budget_fields(name):
        minimum, inclusive = f.metadata["budget"]
        bad = [-1, float("nan"), float("inf")] + ([] if inclusive else [0])
        if "int" in str(f.type) and "float" not in str(f.type):
            bad.append(1.5)  # an integer budget refuses a fraction too
        for value in bad:
            if "tuple" in str(f.type):
                value = (value,)
            with pytest.raises(AttackError) as e:
                make_attack_config(name, **{f.name: value})
            msg = str(e.value)
            assert "\n" not in msg and f.name in msg and name in msg, msg
    with pytest.raises(AttackError, match="do not apply"):
        make_attack_config(name, no_such_option=1)
    with pytest.raises(AttackError, match="unknown budget"):
        make_attack_config(name, "huge")
    assert set(BUDGETS) == {"default", "paper"}
    for budget in BUDGETS:
        make_attack_config(name, budget)  # both presets are valid configs


@pytest.mark.parametrize("name", ATTACKS)
def test_bench_refuses_bad_budget_before_loading_the_model(name, tmp_path, capsys, monkeypatch):
    from erasekit.cli import _common, evaluate, main

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the attack options were checked")

    monkeypatch.setattr(evaluate, "_load", no_load)
    monkeypatch.setattr(_common, "_load", no_load)
    field = next(f.name for f in _budget_fields(name) if f.name != "seed")
    argv = ["bench", "--model", "tinyworld", "--methods", "uce", "--concepts", "circle", "--attack", name]
    assert main([*argv, "--attack-set", f"{name}.{field}=-1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and field in err and name in err, err
    assert main([*argv[:-1], f"{name},no-such-attack", "--out", str(tmp_path)]) == 2
    assert "unknown attack 'no-such-attack'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("attacks", "budget", "device", "noted"),
    [
        ("mma,ring-a-bell", "paper", "cpu", "mma"),
        ("mma", "paper", "cuda", None),
        ("mma", "default", "cpu", None),
        ("ring-a-bell,token-search", "paper", "cpu", None),  # their paper budget is their default
    ],
)
def test_paper_budget_on_a_cpu_is_announced_before_the_run(attacks, budget, device, noted, capsys):
    import argparse

    from erasekit.cli.evaluate import _parse_attack_args

    args = argparse.Namespace(attack=attacks, attack_set=None, budget=budget, device=device)
    _parse_attack_args(args)
    err = capsys.readouterr().err
    if noted is None:
        assert err == ""
    else:
        assert err.count("\n") == 1 and "--budget paper" in err and "--device cuda" in err
        assert noted in err and "ring-a-bell" not in err


def test_attack_options_parse_typed():
    opts = parse_attack_options(["nbp.etas=1,1.5", "uda.iterations=3", "cce.carrier=xyz"], ["nbp", "uda", "cce"])
    assert opts == {"nbp": {"etas": (1.0, 1.5)}, "uda": {"iterations": 3}, "cce": {"carrier": "xyz"}}
    with pytest.raises(AttackError, match="not among the attacks run"):
        parse_attack_options(["mma.steps=3"], ["nbp"])
    with pytest.raises(AttackError, match="expects an integer"):
        parse_attack_options(["uda.iterations=lots"], ["uda"])


# ----------------------------------------------------------------------------- the maths, against oracles
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_noisy_ddim_step_is_ddim_up_to_eta_one(eta):
    """For η ≤ 1 and noise scale 1 the probe's step is diffusers' DDIM step, given the same noise."""
    from diffusers import DDIMScheduler

    from erasekit.evaluate.sampling import NoisyDDIMScheduler

    cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False}
    ref, probe = DDIMScheduler(**cfg), NoisyDDIMScheduler(**cfg)
    probe.probe_eta, probe.variance_scale = eta, 1.0
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    for s in (ref, probe):
        s.set_timesteps(10)
    for t in ref.timesteps[:3]:
        want = ref.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        got = probe.step(eps, t, x, variance_noise=z).prev_sample
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    probe.probe_eta, probe.variance_scale = 1.5, 1.04  # beyond DDIM: finite, and the noise term scales with s
    a = probe.step(eps, ref.timesteps[1], x, variance_noise=z).prev_sample
    probe.variance_scale = 1.0
    b = probe.step(eps, ref.timesteps[1], x, variance_noise=torch.zeros_like(z)).prev_sample
    c = probe.step(eps, ref.timesteps[1], x, variance_noise=z).prev_sample
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a - b, 1.04 * (c - b), rtol=1e-4, atol=1e-6)


def test_simplex_projection_matches_the_reference_bisection():
    """UnlearnDiffAtk's projection: our closed form agrees with a bisection on Σ max(a − μ, 0) = 1 (the reference's
    method), lands on the simplex, and leaves points already on it alone."""
    from erasekit.evaluate.attacks.uda import project_simplex

    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 40, generator=g, dtype=torch.float64) * 3
    p = project_simplex(a)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(5, dtype=torch.float64))
    for row, prow in zip(a, p, strict=True):
        lo, hi = float(row.min()) - 1, float(row.max())
        for _ in range(200):  # bisection for μ
            mu = (lo + hi) / 2
            lo, hi = (mu, hi) if float((row - mu).clamp_min(0).sum()) > 1 else (lo, mu)
        torch.testing.assert_close(prow, (row - (lo + hi) / 2).clamp_min(0), rtol=0, atol=1e-9)
    q = torch.softmax(torch.randn(3, 7, generator=g, dtype=torch.float64), -1)
    torch.testing.assert_close(project_simplex(q), q)


# ----------------------------------------------------------------------------- behaviour, every attack
@pytest.mark.parametrize("name", ATTACKS)
def test_same_seed_same_attack(world, edits, name):
    target = _target(2)
    a = _suites(world, name, target, edits["uce"], **TINY[name])
    b = _suites(world, name, target, edits["uce"], **TINY[name])
    assert [s.to_dict()["items"] for s in a] == [s.to_dict()["items"] for s in b]
    for sa, sb in zip(a, b, strict=True):
        assert sorted(sa.vectors) == sorted(sb.vectors)
        for k, vec in sa.vectors.items():
            for part, t in vec.items():
                assert torch.equal(t, sb.vectors[k][part])
        assert sa.info["record"]["config"] == sb.info["record"]["config"]
    assert not erasekit.Edit.applied(world["pipe"]), "an attack left an edit applied"
    for s in a:  # the suite is an attack on the target: one or more items per target item, labelled the same
        assert s.kind == "adversarial" and {it.concepts for it in s.items} == {("circle",)}


@pytest.mark.parametrize("name", ATTACKS)
def test_noop_edit_gives_the_unedited_rate(world, edits, name):
    """Against an edit that changes nothing, the attacked items' images are the unedited model's: same judged rate."""

    pipe, judge = world["pipe"], world["judge"]
    target = _target(4)
    for s in _suites(world, name, target, edits["noop"], **TINY[name]):
        unedited = render_batch(pipe, s.items, dict(s.vectors), SETTINGS)
        edits["noop"].apply(pipe)
        try:
            edited = render_batch(pipe, s.items, dict(s.vectors), SETTINGS)
        finally:
            edits["noop"].revert(pipe)
        a = judge.judge(unedited, ["circle"]).decisions[:, 0]
        b = judge.judge(edited, ["circle"]).decisions[:, 0]
        assert np.array_equal(a, b), f"{name}: no-op edit {b.mean():.2f} vs unedited {a.mean():.2f}"


# ----------------------------------------------------------------------------- the gradient attacks on tinyworld-flux
GRADIENT_ATTACKS = ("uda", "p4d-n", "p4d-k", "cce")  # through FLUX's differentiable encode and rectified flow


@pytest.fixture(scope="module")
def flux_world():
    from erasekit.evaluate.bench import tinyworld_concept_set
    from erasekit.evaluate.judges import TinyworldConceptJudge

    pipe = erasekit.load_pipeline("tinyworld-flux")
    cs = tinyworld_concept_set("circle")
    edits = {
        "uce": erasekit.erase(pipe, "uce", cs, progress=False),
        "noop": erasekit.erase(pipe, "uce", cs, progress=False, erase_scale=0.0),
    }
    return {"pipe": pipe, "judge": TinyworldConceptJudge(), "cs": cs, "edits": edits}


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_flux_same_seed_same_attack(flux_world, name):
    target = _target(2)
    runs = [_suites(flux_world, name, target, flux_world["edits"]["uce"], **TINY[name]) for _ in range(2)]
    a, b = runs
    assert [s.to_dict()["items"] for s in a] == [s.to_dict()["items"] for s in b]
    for sa, sb in zip(a, b, strict=True):
        for k, vec in sa.vectors.items():
            for part, t in vec.items():
                assert torch.equal(t, sb.vectors[k][part])
    assert not erasekit.Edit.applied(flux_world["pipe"]), "an attack left an edit applied"


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_flux_noop_edit_gives_the_unedited_rate(flux_world, name):
    """Against an edit that changes nothing, the attacked items' images are the unedited model's (FLUX's learned-token
    items through both encoders' carrier ids)."""
    pipe, judge, noop = flux_world["pipe"], flux_world["judge"], flux_world["edits"]["noop"]
    for s in _suites(flux_world, name, _target(3), noop, **TINY[name]):
        unedited = render_batch(pipe, s.items, dict(s.vectors), SETTINGS)
        noop.apply(pipe)
        try:
            edited = render_batch(pipe, s.items, dict(s.vectors), SETTINGS)
        finally:
            noop.revert(pipe)
        a = judge.judge(unedited, ["circle"]).decisions[:, 0]
        b = judge.judge(edited, ["circle"]).decisions[:, 0]
        assert np.array_equal(a, b), f"{name}: no-op edit {b.mean():.2f} vs unedited {a.mean():.2f}"


def test_flux_learned_token_reaches_both_encoders(flux_world):
    """CCE on FLUX learns one vector per encoder (CLIP-L's and T5's widths), carried by a word that is one known token
    for both tokenizers (tinyworld-flux's T5 does not know 'sks'), and rendering with it differs from the caption's
    own words."""
    pipe = flux_world["pipe"]
    (s,) = _suites(flux_world, "cce", _target(2), flux_world["edits"]["uce"], **TINY["cce"])
    (vec,) = s.vectors.values()
    widths = [t.shape[1] for t in erasekit.models.families.identify(pipe).input_embeddings(pipe)]
    assert [vec["encoder_0"].shape[0], vec["encoder_1"].shape[0]] == widths
    carrier = s.info["carrier"]
    for tok in (pipe.tokenizer, pipe.tokenizer_2):
        ids = tok(carrier, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id
    assert all(carrier in it.prompt.split() for it in s.items)
    with_token = render_batch(pipe, s.items[:1], dict(s.vectors), SETTINGS)
    plain = render_batch(pipe, [dataclasses.replace(s.items[0], token=None)], {}, SETTINGS)
    assert np.abs(np.asarray(with_token[0], float) - np.asarray(plain[0], float)).max() > 0


def test_results_carry_every_attack_config_and_cost(world, edits, tmp_path):
    from erasekit.evaluate import evaluate
    from erasekit.evaluate.plan import Plan, make_study
    from erasekit.evaluate.report import write_json

    opts = {k: dict(v) for k, v in TINY.items()}
    plan = Plan(kinds=("target", "adversarial"), n=2, attacks=ATTACKS, attack_options=opts)
    study = make_study("circle", world["cs"], {"uce": edits["uce"]}, plan, tinyworld=True)
    kw = {"out_dir": tmp_path / "o", "settings": SETTINGS, "cache_dir": tmp_path / "c", "n_boot": 50}
    res = evaluate(world["pipe"], [study], world["judge"], progress=False, **kw)
    assert res is not None
    write_json(res, tmp_path / "results.json")
    saved = json.loads((tmp_path / "results.json").read_text())
    recorded = saved["config"]["attacks"]["circle"]
    for name in ATTACKS:
        cfg = recorded[name]["config"]
        for option, value in opts[name].items():  # the user's options win over the budget preset and the shortcuts
            assert cfg[option] == json.loads(json.dumps(value)), (name, option)
        # the record is the whole config: rebuilt from it alone, the attack's config is the same
        rebuilt = make_attack_config(name, **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
        assert json.loads(json.dumps(rebuilt.to_dict())) == cfg, name
        assert set(cfg) == {f.name for f in dataclasses.fields(get_attack(name).config_class)}
        assert recorded[name]["kind"] == get_attack(name).kind and recorded[name]["reference"]
    suites = saved["studies"]["circle"]["uce"]["suites"]
    seen = set()
    for s in suites.values():
        info = s["suite"]["info"]
        if s["suite"]["kind"] != "adversarial":
            continue
        rec = info["record"]
        seen.add(rec["attack"])
        assert rec["config"] == recorded[rec["attack"]]["config"] and rec["seed"] == 0
        assert set(rec["cost"]) >= {"seconds", "denoiser_evaluations", "text_encoder_evaluations"}
        if get_attack(rec["attack"]).per_method and rec["attack"] != "token-search":
            assert rec["cost"]["denoiser_evaluations"] > 0, rec["attack"]
    assert seen == set(ATTACKS)
    for name in set(ATTACKS) - {"ring-a-bell", "token-search"}:
        entry = saved["attacks"]["circle"][name]
        assert entry["config"] == recorded[name]["config"] and "unedited concept rate" in entry["methods"]["uce"]
    # a second run with the same output folder reuses every attack result (resume) and the cached images
    again = evaluate(world["pipe"], [study], world["judge"], progress=False, **kw)
    assert again.timing["images_generated"] == 0
    assert again.timing["attack_seconds"] < 0.5 * res.timing["attack_seconds"]
    for name, s in again.studies["circle"]["uce"].suites.items():
        assert s.suite.items == res.studies["circle"]["uce"].suites[name].suite.items


def test_an_interrupted_attack_stage_resumes_where_it_stopped(world, edits, tmp_path, monkeypatch):
    """Interrupted (Ctrl-C) during one attack's search, the rerun of the same command does not search again any
    attack that had finished (each stored result is complete or absent), searches the interrupted one and those after
    it, and ends with the suites an uninterrupted run makes."""
    from erasekit.evaluate import evaluate
    from erasekit.evaluate.attacks.base import Attack
    from erasekit.evaluate.plan import Plan, make_study

    opts = {k: dict(v) for k, v in TINY.items()}
    plan = Plan(kinds=("target", "adversarial"), n=2, attacks=ATTACKS, attack_options=opts)
    study = make_study("circle", world["cs"], {"uce": edits["uce"]}, plan, tinyworld=True)
    calls: list[str] = []
    victim = {"name": "p4d-k"}  # per method, after the shared attacks and the ones searched before it
    original = Attack.suites

    def spy(self, ctx):
        calls.append(self.name)
        if self.name == victim["name"]:
            raise KeyboardInterrupt("simulated Ctrl-C during the search")
        return original(self, ctx)

    monkeypatch.setattr(Attack, "suites", spy)
    kw = {"out_dir": tmp_path / "o", "settings": SETTINGS, "cache_dir": tmp_path / "c", "n_boot": 50}
    with pytest.raises(KeyboardInterrupt):
        evaluate(world["pipe"], [study], world["judge"], progress=False, **kw)
    finished = calls[:-1]
    assert calls[-1] == "p4d-k" and finished, calls
    calls.clear()
    victim["name"] = None
    resumed = evaluate(world["pipe"], [study], world["judge"], progress=False, **kw)
    assert not set(calls) & set(finished), f"searched again after the interruption: {set(calls) & set(finished)}"
    assert "p4d-k" in calls and set(calls) | set(finished) == set(ATTACKS)
    fresh_kw = {**kw, "out_dir": tmp_path / "fresh"}  # the same command, never interrupted (images from the cache)
    fresh = evaluate(world["pipe"], [study], world["judge"], progress=False, **fresh_kw)
    assert resumed is not None and fresh is not None
    got, want = resumed.studies["circle"]["uce"].suites, fresh.studies["circle"]["uce"].suites
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].suite.items == want[name].suite.items, name


def test_attack_benchmark_runs_the_reference_edits_with_a_named_weak_edit(tmp_path):
    """``benchmarks/attacks.py --methods '' --weak-regex R``: only the weak (UCE on the blocks R names) and no-op edits
    are attacked; the table records both, and under the no-op edit the attack's rate is the unedited model's on the
    same items."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve().parents[1] / "benchmarks" / "attacks.py"),
        "--methods",
        "",
        "--weak-regex",
        r"mid_block.*attn2\.to_[kv]$",
        "--attacks",
        "nbp",
        "--n",
        "2",
        "--steps",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = json.loads((out / "attacks-table.json").read_text())
    assert set(table["named"]) == {"weak", "noop"}
    rows = table["attacks"]["nbp"]["methods"]
    assert set(rows) == {"weak", "noop"} and rows["noop"]["ASR"] == rows["noop"]["unedited"]
    assert "ASR weak" in done.stdout and "ASR noop" in done.stdout
    assert (out / "plots" / "attacks-circle.png").is_file()
    assert "attack × method ASR" in (out / "report.html").read_text()


def test_a_moved_judge_keeps_the_stored_attack_results(world, edits, tmp_path):
    """An attack that judges while it searches is stored under a key that names the judge by its weights' sha256,
    not by where they sit: the same weights at another path (a moved checkout, another install prefix) find the
    stored result; other weights, or another decision rule, do not."""
    import shutil

    from erasekit.evaluate.judges import TinyworldConceptJudge
    from erasekit.evaluate.plan import AttackInputs, _attack_key, judge_identity

    shipped = world["judge"]
    for f in ("judge.safetensors", "judge.json"):  # the weights and their config, moved together
        shutil.copy(shipped.path.parent / f, tmp_path / f)
    moved = TinyworldConceptJudge(path=tmp_path / "judge.safetensors")
    assert moved.settings != shipped.settings and judge_identity(moved.settings) == judge_identity(shipped.settings)
    attack = get_attack("uda")(config=make_attack_config("uda", **TINY["uda"]))
    target = tinyworld_suites(["circle"], 2, kinds=["target"])[0]
    inputs = AttackInputs(concepts=("circle",), tinyworld=True)

    def key(judge):
        return _attack_key(attack, world["pipe"], target, inputs, edits["uce"], judge, SETTINGS)

    assert key(moved) == key(shipped)

    class Other:  # the same file name and path, other weights / another rule
        def __init__(self, **change):
            self.settings = {**shipped.settings, **change}

    assert key(Other(weights_sha256="0" * 64)) != key(shipped)
    assert key(Other(decision="threshold 0.5")) != key(shipped)


PAIRED_ATTACKS = ("ring-a-bell", "token-search", "nbp", "p4d-k", "cce")  # shared and per-method; prompt, token, draws


def test_attack_results_carry_intervals_and_paired_tests(world, edits, tmp_path):
    """Two methods under the same attacks: per attack and method, the ASR's Wilson interval (from its counts) beside
    the bootstrap one and the unedited rate; paired tests of each method against the unedited model on the same
    attacked items and between the methods on the same target items (also for attacks searched per method); the
    report's Attacks section shows them with a grid of adversarial prompts and images; a schema-2 file still reads."""
    from erasekit.evaluate import evaluate
    from erasekit.evaluate import stats as S
    from erasekit.evaluate.plan import Plan, make_study
    from erasekit.evaluate.report import write_html, write_json
    from erasekit.evaluate.results import SCHEMA, read_results_json

    opts = {k: dict(TINY[k]) for k in PAIRED_ATTACKS}
    plan = Plan(kinds=("target", "adversarial"), n=3, attacks=PAIRED_ATTACKS, attack_options=opts)
    study = make_study("circle", world["cs"], {"uce": edits["uce"], "weak": edits["weak"]}, plan, tinyworld=True)
    kw = {"out_dir": tmp_path / "o", "settings": SETTINGS, "cache_dir": tmp_path / "c", "n_boot": 50}
    res = evaluate(world["pipe"], [study], world["judge"], progress=False, **kw)
    assert res is not None
    comps = res.paired["circle"]
    for name in set(PAIRED_ATTACKS) - {"ring-a-bell"}:
        entry = res.attacks["circle"][name]
        for label in ("uce", "weak"):
            row = entry["methods"][label]
            asr = row["judge ASR"]
            assert row["wilson"]["judge ASR"] == list(S.wilson(asr.k, asr.n))
            low, high = row["wilson"]["judge ASR"]
            assert low <= asr.value <= high and high - low > 0
            unedited = next(v for k, v in row.items() if k.startswith("unedited concept rate"))
            assert row["wilson"][next(k for k in row if k.startswith("unedited concept rate"))] == list(
                S.wilson(unedited.k, unedited.n)
            )
            (vs_unedited,) = [c for c in comps if c.metric == f"ASR {name}" and (c.a, c.b) == (label, "unedited")]
            assert vs_unedited.rate_a == pytest.approx(asr.value) and vs_unedited.n == asr.n
            assert vs_unedited.rate_b == pytest.approx(unedited.value)
            # the same attack counted as the references count it: on the attacked items whose target the unedited
            # model draws (tests/test_attack_protocols.py checks the arithmetic)
            u0 = res.studies["circle"][label].suites["target"].seen("unedited")
            if asr.n == len(u0):  # every target item attacked (the token search's max_prompts is 2 of 3)
                assert row["conditional items"] == int(u0.sum())
            assert 0 <= row["conditional items"] <= asr.n
            cond = row["conditional ASR"]
            assert cond is None or (cond.n == row["conditional items"] and row["wilson"]["conditional ASR"])
        # the two methods, paired on the target items both attacked, not on the adversarial text (which differs)
        (between,) = [c for c in comps if c.metric == f"ASR {name}" and (c.a, c.b) == ("uce", "weak")]
        n = {entry["methods"][m]["judge ASR"].n for m in ("uce", "weak")}
        assert n == {between.n} and between.n == (2 if name == "token-search" else 3)  # its max_prompts is 2
        ua, wa = (entry["methods"][m]["judge ASR"].value for m in ("uce", "weak"))
        assert (between.rate_a, between.rate_b) == pytest.approx((ua, wa))
        assert between.a_only - between.b_only == round(between.n * (ua - wa))
    ring = next(c for c in comps if c.metric.startswith("ASR ring-a-bell (headline") and c.b == "weak")
    assert ring.a == "uce" and ring.n == 3
    assert all(0 <= c.p_holm <= 1 and c.p <= c.p_holm for c in comps)  # one Holm family per study, attacks included

    write_json(res, tmp_path / "results.json")
    page = write_html(res, tmp_path / "report.html").read_text()
    # the attack × method picture: one row per attack (Ring-A-Bell at its headline η), each cell the table's ASR
    from PIL import Image

    from erasekit.evaluate.report import attack_cells

    cells = attack_cells(res, "circle")
    assert len(cells) == len(PAIRED_ATTACKS) and all(set(row) == {"uce", "weak"} for row in cells.values())
    for name in set(PAIRED_ATTACKS) - {"ring-a-bell"}:
        for label in ("uce", "weak"):
            assert cells[name][label][0] is res.attacks["circle"][name]["methods"][label]["judge ASR"]
    assert "attack × method ASR, study circle" in page
    with Image.open(tmp_path / "plots" / "attacks-circle.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    section = page.split("<h2>Attacks</h2>", 1)[1].split("<h2>Study:", 1)[0]
    for name in set(PAIRED_ATTACKS) - {"ring-a-bell"}:
        part = re.split(rf"<h3>circle: {re.escape(name)}[ <]", section, maxsplit=1)[1].split("<h3>circle:", 1)[0]
        assert "Wilson" in part and "Paired under this attack" in part and "conditional ASR" in part
        assert f"adversarial:{name}" in part and part.count("<img") >= 3 * 2  # rows × (unedited, method) × methods
        if name in ("token-search", "p4d-k"):  # best of K (restarts; P4D's images): each row names its target item
            assert "[draw 1 of target item 1]" in part and "[draw 2 of target item 1]" in part
    # schema 2 (no Wilson intervals) reads back upgraded, its intervals filled from the recorded counts
    new = read_results_json(tmp_path / "results.json")
    assert new["schema"] == SCHEMA == 3
    old = json.loads((tmp_path / "results.json").read_text())
    old["schema"] = 2
    for entry in old["attacks"]["circle"].values():
        for row in entry.get("methods", {}).values():
            if isinstance(row, dict):
                row.pop("wilson", None)
    (tmp_path / "old.json").write_text(json.dumps(old))
    upgraded = read_results_json(tmp_path / "old.json")
    assert upgraded["schema_read_from"] == 2
    assert upgraded["attacks"] == json.loads(json.dumps(new["attacks"]))
    (tmp_path / "future.json").write_text(json.dumps({**old, "schema": SCHEMA + 1}))
    with pytest.raises(erasekit.errors.EraseKitError, match="schema"):
        read_results_json(tmp_path / "future.json")


@pytest.mark.parametrize("family", ["sd", "sd2", "sdxl", "sd3", "flux", "pixart", "sana"])
def test_every_attack_runs_on_every_family(all_tiny_pipes, family):
    """Through the family's encode / denoise only: SD 1.x, 2.x (v-prediction), SDXL (two encoders, pooled), SD3 (two
    CLIPs and T5), FLUX (CLIP pooled + T5 stream, packed latents, rectified flow), PixArt (masked T5, learned-sigma
    DDPM) and Sana (Gemma-2 behind its instruction prefix, flow matching)."""
    from erasekit.evaluate.suites import suites_from_concepts

    pipe = all_tiny_pipes[family]
    cs = erasekit.ConceptSet(erase=("circle",), kind="object", preserve=("square",))
    edit = erasekit.erase(pipe, "uce", cs, progress=False)
    target = suites_from_concepts(cs, seeds=[0])[0].head(2)
    settings = GenerationSettings(steps=2, guidance=5.0)
    for name in ATTACKS:
        attack = get_attack(name)(config=make_attack_config(name, **TINY[name]))
        pairs = (["a photo of a circle"], ["a photo of a shape"])
        ctx = AttackContext(pipe, target, edit if attack.per_method else None, pairs=pairs, settings=settings)
        ctx.progress = False
        suites = attack.suites(ctx)
        assert suites and all(len(s) >= 1 and s.kind == "adversarial" for s in suites), name
        assert not erasekit.Edit.applied(pipe), name


def test_sana_tokens_are_read_in_context_behind_the_instruction():
    """Gemma's real tokenizer adds no prefix space: alone, a prompt's first word is ``word``; behind Sana's instruction
    (``...Prompt: `` + prompt) it is ``▁word``. A Sana whose Gemma tokenizes so (the stand-in with its prefix space
    switched off) has the token attacks search, substitute and round-trip the in-context ids, and UnlearnDiffAtk
    runs on it."""
    from tokenizers import pre_tokenizers

    from erasekit.evaluate.attacks._tokens import TokenSpace
    from erasekit.evaluate.suites import suites_from_concepts
    from erasekit.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sana")
    pipe.tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    alone = pipe.tokenizer("castle tree", add_special_tokens=False).input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(alone)[0] == "castle"  # no prefix space alone
    cs = erasekit.ConceptSet(erase=("circle",), kind="object", preserve=("square",))
    target = suites_from_concepts(cs, seeds=[0])[0].head(1)
    ctx = AttackContext(pipe, target, settings=GenerationSettings(steps=2, guidance=5.0))
    ctx.progress = False
    space = TokenSpace(ctx)
    ids = space.content_ids("castle tree")
    assert pipe.tokenizer.convert_ids_to_tokens(ids) == ["\u2581castle", "\u2581tree"] and space.roundtrips(ids)
    assert pipe.tokenizer.convert_ids_to_tokens([space.filler]) == ["\u2581the"]
    cond = space.encode([space.lookup(torch.tensor(ids))])  # the filler check passes in context
    torch.testing.assert_close(
        cond.embeds, erasekit.models.families.identify(pipe).encode(pipe, ["castle tree"]).embeds
    )
    edit = erasekit.erase(pipe, "uce", cs, progress=False)
    ctx = AttackContext(pipe, target, edit, settings=GenerationSettings(steps=2, guidance=5.0))
    ctx.progress = False
    (suite,) = get_attack("uda")(config=make_attack_config("uda", **TINY["uda"])).suites(ctx)
    assert len(suite) == 1
    # CCE's learned token is carried by the in-context id of its word, so it reaches the conditioning
    from erasekit.evaluate.conditioning import token_conditioning

    result = get_attack("cce")(config=make_attack_config("cce", **TINY["cce"])).build(ctx)
    (suite,) = result.suites(target)
    items = list(suite)
    learned = token_conditioning(pipe, items, suite.vectors)["prompt_embeds"]
    plain = erasekit.models.families.identify(pipe).encode(pipe, [it.prompt for it in items]).embeds
    assert float((learned - plain).abs().max()) > 1e-4


@pytest.mark.parametrize("build", ["flux-schnell", "flux", "sd3"])
def test_the_token_attacks_bound_t5_by_the_pipelines_t5_length(all_tiny_pipes, build):
    """T5's tokenizer declares 512 positions, but FLUX.1-schnell's stream keeps 256 (dev 512, SD3 256): the token
    attacks' T5 bound is the family's length, so a sequence that fills it encodes to that many positions and one
    token more is refused in one line (it used to pass the bound and break inside the encoder's truncation)."""
    from erasekit.evaluate.attacks._tokens import TokenSpace
    from erasekit.evaluate.suites import suites_from_concepts
    from erasekit.models.families import identify

    pipe = all_tiny_pipes[build]
    fam = identify(pipe)
    length = fam.max_sequence_length(pipe)
    assert length == {"flux-schnell": 256, "flux": 512, "sd3": 256}[build]
    assert fam.text_tokenizers(pipe)[-1].model_max_length == 512  # as the published SD3 / FLUX T5 tokenizers
    assert fam.text_positions(pipe)[-1] == length
    cs = erasekit.ConceptSet(erase=("circle",), kind="object", preserve=("square",))
    target = suites_from_concepts(cs, seeds=[0])[0].head(1)
    space = TokenSpace(AttackContext(pipe, target, progress=False))
    t5 = len(space.tokenizers) - 1
    limit = space._limit[t5]
    assert limit == length - 1  # T5 adds EOS only

    def rows(n_t5: int) -> list[list[torch.Tensor]]:
        fill = [space.full[e][space._fill_ids[e]] for e in range(t5 + 1)]  # (d_e,) per encoder
        return [[fill[e].expand(3 if e < t5 else n_t5, -1) for e in range(t5 + 1)]]

    with torch.no_grad():  # fills every T5 position: as long as the family's own encoding (SD3: CLIP's 77 first)
        assert space.encode(rows(limit)).embeds.shape[1] == fam.encode(pipe, ["a"]).embeds.shape[1]
    with pytest.raises(AttackError, match=rf"1 to {limit} tokens for text encoder {t5}"):
        space.encode(rows(limit + 1))


def _old_ddpm_objective(pipe, x0, eps, t):
    """Today's (session 4) DDPM maths, kept here as the oracle: x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε and ε / v."""
    from diffusers import DDPMScheduler

    sched = pipe.scheduler
    abar = getattr(sched, "alphas_cumprod", None)
    abar = DDPMScheduler.from_config(sched.config).alphas_cumprod if abar is None else abar
    a = torch.as_tensor(abar, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    kind = sched.config.get("prediction_type", "epsilon")
    return x_t, eps if kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0


@pytest.mark.parametrize("family", ["sd", "sd2", "sdxl", "pixart"])
def test_unet_objective_is_the_ddpm_objective(all_tiny_pipes, family):
    """The attacks' objective, now read from the family's dynamics, is the DDPM one they used (SD 2.x: v; PixArt: ε
    on its DPM-Solver scheduler's training schedule)."""
    from erasekit.evaluate.attacks._diffusion import DenoisingObjective

    pipe = all_tiny_pipes[family]
    target = tinyworld_suites(["circle"], 1, kinds=["target"])[0]
    obj = DenoisingObjective.of(AttackContext(pipe, target, progress=False))
    assert obj.num_timesteps == 1000
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 999, 500])
    old_x_t, old_target = _old_ddpm_objective(pipe, x0, eps, t)
    torch.testing.assert_close(obj.noised(x0, eps, t), old_x_t, rtol=0, atol=1e-6)
    torch.testing.assert_close(obj.target(x0, eps, t), old_target, rtol=0, atol=1e-6)
    pred = torch.randn(5, 4, 8, 8, generator=g)
    torch.testing.assert_close(obj.per_item(pred, x0, eps, t), (pred - old_target).pow(2).flatten(1).mean(1))


@pytest.mark.parametrize("family", ["sd3", "flux", "sana"])
def test_flow_objective_is_rectified_flow(all_tiny_pipes, family):
    """On SD3 / FLUX / Sana: x_σ = (1 − σ) x₀ + σ ε with σ = t / 1000 and the velocity ε − x₀, so x₀ = x_σ − σ v and
    ε = x_σ + (1 − σ) v recover both ends (an identity independent of the code under test)."""
    from erasekit.evaluate.attacks._diffusion import DenoisingObjective

    pipe = all_tiny_pipes[family]
    target = tinyworld_suites(["circle"], 1, kinds=["target"])[0]
    obj = DenoisingObjective.of(AttackContext(pipe, target, progress=False))
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 100, 600, 999])
    sigma = (t.float() / obj.num_timesteps).view(-1, 1, 1, 1)
    x_t, v = obj.noised(x0, eps, t), obj.target(x0, eps, t)
    torch.testing.assert_close(x_t - sigma * v, x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(x_t + (1 - sigma) * v, eps, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", [a for a in ATTACKS if get_attack(a).needs_text_gradients])
def test_gradient_attacks_refuse_a_family_without_text_gradients(all_tiny_pipes, name, monkeypatch):
    """Every attack that declares it differentiates through the text encoders is refused on a family without them
    (every built-in family has them now: PixArt's are switched off here) in one line that names the attack and the
    family, before it spends a single model evaluation."""
    from erasekit.errors import EraseKitError
    from erasekit.evaluate.suites import suites_from_concepts
    from erasekit.models.families.pixart import PixArtFamily

    pipe = all_tiny_pipes["pixart"]
    monkeypatch.setattr(PixArtFamily, "text_gradients", lambda self: False)
    cs = erasekit.ConceptSet(erase=("circle",), kind="object", preserve=("square",))
    target = suites_from_concepts(cs, seeds=[0])[0].head(1)
    edit = erasekit.erase(pipe, "uce", cs, progress=False)
    attack = get_attack(name)(config=make_attack_config(name, **TINY[name]))
    ctx = AttackContext(pipe, target, edit if attack.per_method else None, settings=GenerationSettings(steps=2))
    ctx.progress = False
    with pytest.raises(EraseKitError) as e:
        attack.suites(ctx)
    msg = str(e.value)
    assert "\n" not in msg and "pixart" in msg and name in msg
    assert ctx.meter.denoiser_evaluations == 0 and ctx.meter.text_encoder_evaluations == 0
    assert not erasekit.Edit.applied(pipe)


# ----------------------------------------------------------------------------- slow: a weak edit falls
# reach the 80 % bar on the weak edit at n = 16 (benchmarks/attacks.py; nbp since its 12 draws: 81 %)
STRONG_ON_TINYWORLD = ("ring-a-bell", "uda", "p4d-k", "cce", "nbp")


@pytest.fixture(scope="module")
def weak_run(world, edits, tmp_path_factory):
    """Every attack at its default budget against the weak edit, through the evaluation itself (n = 16)."""
    from erasekit.evaluate import evaluate
    from erasekit.evaluate.plan import Plan, make_study

    root = tmp_path_factory.mktemp("weak")
    plan = Plan(kinds=("target", "adversarial"), n=16, attacks=ATTACKS)
    study = make_study("circle", world["cs"], {"weak": edits["weak"]}, plan, tinyworld=True)
    settings = GenerationSettings(steps=10, guidance=5.0, batch_size=32)
    kw = {"out_dir": root / "o", "settings": settings, "cache_dir": root / "c", "n_boot": 50, "progress": False}
    res = evaluate(world["pipe"], [study], world["judge"], **kw)
    assert res is not None
    return res


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTACKS)
def test_weak_edit_is_attacked_at_the_default_budget(weak_run, name):
    """UCE on two blocks keeps about half of 'circle' on the target prompts. The attacks that reach the issue's bar on
    tinyworld (benchmarks/attacks.py) bring it back in ≥ 75 % of the attacked prompts, well above the unattacked
    rate; the others (at their best-of-K defaults, n = 16 in docs/results.md: the token search 58 %, MMA's
    text-embedding match 56 %, P4D-N's prompt-free tokens 44 %, against 50 % unattacked; no budget up to ×4 and no
    restart count up to 4 lifts MMA or the token search past 80 % on the development concept,
    benchmarks/attack_budget.py and benchmarks/attack_best_of.py) must at least not do worse than the unattacked
    prompts, within two prompts."""
    from erasekit.evaluate.attacks.ring_a_bell import eta_suite_name

    run = weak_run.studies["circle"]["weak"]
    base = run.suites["target"].seen("edited").mean()
    assert 0.2 <= base <= 0.8, f"the weak edit is not weak here: {base:.2f} of 'circle' kept"
    suites = [
        s for s in run.suites.values() if s.suite.kind == "adversarial" and s.suite.info["record"]["attack"] == name
    ]
    if name == "ring-a-bell":
        headline = weak_run.attacks["circle"]["ring-a-bell"]["headline_eta"]
        suites = [s for s in suites if s.suite.name == eta_suite_name(name, headline)]
    (s,) = suites
    asr = s.attacked("edited").mean()
    if name in STRONG_ON_TINYWORLD:
        assert asr >= 0.75 and asr >= base + 0.2, f"{name}: ASR {asr:.2f} vs unattacked {base:.2f}"
    else:
        assert asr >= base - 2 / 16, f"{name}: ASR {asr:.2f} vs unattacked {base:.2f}"


def test_nbp_more_draws_extend_the_fewer():
    """Best of K is monotone in the budget only if a larger budget's draws start with the smaller one's: draw k (its
    seed and grid point) must not depend on ``samples``."""
    from erasekit.evaluate.attacks.base import SamplingResult

    target = tinyworld_suites(["circle"], 2, kinds=["target"])[0]
    pipe = erasekit.load_pipeline("tinyworld")
    ctx = AttackContext(pipe, target, None, settings=SETTINGS, tinyworld=True, progress=False)
    draws = {}
    for k in (1, 2):
        cfg = make_attack_config("nbp", etas=(1.0, 1.17), variance_scales=(1.0, 1.04), samples=k)
        res = get_attack("nbp")(config=cfg).build(ctx)
        assert isinstance(res, SamplingResult)
        draws[k] = res.variants
    for few, more in zip(draws[1], draws[2], strict=True):
        assert len(more) == 2 * len(few) and more[: len(few)] == few


# ----------------------------------------------------------------------------- token search, gradient proposals
@pytest.mark.parametrize("placement", ["suffix", "prefix"])
def test_token_search_soft_score_at_one_hot_is_the_score_of_the_text(world, edits, placement):
    """GCG's gradient is taken of a differentiable twin of the search objective: at one-hot weights the twin must be
    the objective the search ranks candidates by (the prompt's text encoded as generation encodes it)."""
    from erasekit.evaluate.attacks._tokens import TokenSpace
    from erasekit.evaluate.attacks.token_search import TokenSearchAttack, _attacked

    config = make_attack_config("token-search", proposals="gradient", placement=placement)
    attack = TokenSearchAttack(config=config)
    ctx = _ctx(world, _target(1), edits["weak"])
    layers = attack._layers(world["pipe"])
    space = TokenSpace(ctx, ban=["circle"])
    prompt = "a red circle on a white background"
    refs = attack._keys(ctx, layers, [prompt])
    rows = [int(i) for i in torch.randint(len(space.ids), (3,), generator=torch.Generator().manual_seed(0))]
    words = [space.text([int(space.ids[r])]) for r in rows]
    onehot = torch.zeros(3, len(space.ids))
    onehot[torch.arange(3), torch.tensor(rows)] = 1.0
    with ctx.edited():
        text = float(attack._score(attack._keys(ctx, layers, [_attacked(prompt, words, placement)]), refs)[0])
        with torch.no_grad():
            soft = float(attack._soft_score(ctx, layers, space, prompt, onehot, refs))
        other = float(attack._score(attack._keys(ctx, layers, [_attacked(prompt, words[::-1], placement)]), refs)[0])
    assert abs(soft - text) < 1e-5 and abs(other - text) > 1e-4  # exact at one-hot; and the words matter


def test_token_search_gradient_proposals_search_deterministically_and_improve(world, edits):
    options = {**TINY["token-search"], "proposals": "gradient", "top_k": 8, "placement": "prefix"}
    a = _suites(world, "token-search", _target(2), edits["weak"], **options)
    b = _suites(world, "token-search", _target(2), edits["weak"], **options)
    assert [s.to_dict()["items"] for s in a] == [s.to_dict()["items"] for s in b]
    info = a[0].info
    assert info["proposals"] == "gradient" and info["record"]["config"]["top_k"] == 8
    for found in info["search"].values():
        assert found["score"] >= found["start_score"] and not any("circle" in w for w in found["words"])
    for it in a[0].items:  # the free words stand before the original prompt
        assert it.prompt.endswith(" " + dict(it.meta)["original prompt"]), it.prompt
    assert not erasekit.Edit.applied(world["pipe"])


def test_token_search_refuses_an_unknown_proposal_rule():
    with pytest.raises(AttackError, match="proposals must be 'random' or 'gradient'"):
        make_attack_config("token-search", proposals="beam")
    with pytest.raises(AttackError, match="placement must be 'suffix' or 'prefix'"):
        make_attack_config("token-search", placement="middle")
