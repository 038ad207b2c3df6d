"""Protocols as data (evaluate/protocols), PURE's H-mean (evaluate/hmean), HUB's file layouts, pure --preset paper."""

import argparse
import dataclasses
import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import erasekit
from erasekit.errors import MethodError, ProtocolError
from erasekit.evaluate import hmean as H
from erasekit.evaluate.protocols import (
    PROTOCOLS,
    JudgeSpec,
    PromptSource,
    Protocol,
    SuiteSpec,
    add_arguments,
    available,
    build_protocol,
    load_suites,
    register_protocol,
    run_protocol,
)
from erasekit.evaluate.protocols import hub as hub_protocol
from erasekit.evaluate.protocols.formats import load_suite
from erasekit.evaluate.suites import read_prompt_text, universal_lines

DATA = Path(__file__).parent / "data" / "prompts"
HUB_SMALL = DATA / "hub_small"
SHARED_HUB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prompts" / "hub"


# ------------------------------------------------------------------ the H-mean
GRID = [0.0, 0.05, 0.3, 0.5, 0.77, 1.0]


def test_hmean_is_a_proportion_monotone_in_each_metric_and_zero_when_any_is():
    import itertools

    for xs in itertools.product(GRID, repeat=4):
        h = H.category_hmean(*xs)
        assert 0.0 <= h <= 1.0
        assert min(xs) - 1e-12 <= h <= max(xs) + 1e-12  # a mean lies between its extremes
        if 0.0 in xs:
            assert h == 0.0
        for i in range(4):  # raising any one metric never lowers the score; raising it strictly from >0 raises it
            up = list(xs)
            up[i] = min(1.0, xs[i] + 0.1)
            h_up = H.category_hmean(*up)
            assert h_up >= h - 1e-12
            if 0.0 not in xs and up[i] > xs[i]:
                assert h_up > h


@pytest.mark.parametrize("x", [0.0, 0.2, 0.64, 1.0])
def test_hmean_equals_each_metric_when_all_four_agree(x):
    assert H.category_hmean(x, x, x, x) == pytest.approx(x)


def test_category_mean_is_the_arithmetic_mean_of_the_categories():
    per = {"style": 0.2, "IP": 0.4, "celebrity": 0.9, "NSFW": 0.5}
    assert H.category_mean(per) == pytest.approx(sum(per.values()) / 4)
    assert H.category_mean({"shape": 0.3}) == 0.3
    with pytest.raises(ProtocolError):
        H.category_mean({})


def test_orientation_erasing_more_and_attacks_failing_more_score_higher():
    base = H.CategoryMetrics(target_proportion=0.4, retention=0.8, attack_success=0.5, quality=0.9)
    better_erase = dataclasses.replace(base, target_proportion=0.1)
    better_attack = dataclasses.replace(base, attack_success=0.2)
    worse_retain = dataclasses.replace(base, retention=0.3)
    t = lambda m: H.hmean_table({"c": m}, "raw")["average"]  # noqa: E731
    assert t(better_erase) > t(base) and t(better_attack) > t(base) and t(worse_retain) < t(base)
    o = base.oriented("raw")
    assert o == {"erased": pytest.approx(0.6), "retention": 0.8, "robustness": 0.5, "quality": 0.9}


def _samples(x, quality=None, quality_unedited=None):
    """Per-item inputs whose four oriented values are all ``x`` per item (seen = not erased, retained = x, ...)."""
    x = np.asarray(x, dtype=bool)
    q = x.astype(float) if quality is None else quality
    return H.ItemSamples(~x, x, ~x, q, quality_unedited)


def test_hmean_interval_point_is_the_tables_and_paired_draws_keep_the_inputs_together():
    """Oracle: when the four oriented inputs are the same per-item array, the H-mean of a paired draw is the draw's
    mean, so the interval is exactly the plain bootstrap of that mean from the same index draws."""
    rng = np.random.default_rng(3)
    x = rng.random(40) < 0.7
    s = _samples(x)
    assert s.paired
    iv = H.hmean_interval({"shape": [s]}, "raw", n_boot=500, seed=7)
    assert iv["categories"]["shape"]["hmean"] == pytest.approx(H.hmean_table({"shape": s.metrics()}, "raw")["average"])
    idx = np.random.default_rng(7).integers(0, x.size, size=(500, x.size))
    want = np.quantile(x[idx].mean(axis=1), [0.025, 0.975])
    got = (iv["categories"]["shape"]["low"], iv["categories"]["shape"]["high"])
    assert got == pytest.approx(tuple(want)) and iv["categories"]["shape"]["resampling"] == "paired"
    assert iv["average"]["low"] == pytest.approx(want[0]) and iv["average"]["value"] == pytest.approx(x.mean())


def test_hmean_interval_covers_the_point_narrows_with_more_prompts_and_handles_ratio_quality():
    rng = np.random.default_rng(0)

    def concept(n):
        t, r, a = (rng.random(n) < p for p in (0.2, 0.8, 0.3))
        q0 = rng.random(n) + 4.5
        return H.ItemSamples(t, r, a, q0 - 0.3 * rng.random(n), q0)

    small = H.hmean_interval({"shape": [concept(16)], "color": [concept(16), concept(16)]}, "ratio", seed=1)
    big = H.hmean_interval({"shape": [concept(256)], "color": [concept(256), concept(256)]}, "ratio", seed=1)
    for iv in (small, big):
        for c in iv["categories"].values():
            assert 0.0 <= c["low"] <= c["hmean"] <= c["high"] <= 1.0
        assert iv["average"]["low"] <= iv["average"]["value"] <= iv["average"]["high"]
    width = lambda iv: iv["average"]["high"] - iv["average"]["low"]  # noqa: E731
    assert width(big) < 0.5 * width(small)
    unaligned = H.ItemSamples(np.ones(3, bool), np.ones(5, bool), np.zeros(4, bool), np.ones(2))
    assert not unaligned.paired
    assert H.hmean_interval({"x": [unaligned]}, "raw", n_boot=50)["categories"]["x"]["resampling"] == "independent"
    for bad in (
        lambda: H.ItemSamples(np.zeros(0, bool), np.ones(2, bool), np.ones(2, bool), np.ones(2)),
        lambda: H.ItemSamples(np.ones(2, bool), np.ones(2, bool), np.ones(2, bool), np.ones(2), np.ones(3)),
        lambda: H.hmean_interval({"x": [unaligned]}, "raw", n_boot=0),
        lambda: H.hmean_interval({"x": []}, "raw"),
    ):
        with pytest.raises(ProtocolError):
            bad()


def test_quality_rules_are_oriented_and_clipped():
    assert H.quality_score(0.5, 1.0, "ratio") == 0.5
    assert H.quality_score(2.0, 1.0, "ratio") == 1.0  # better than the unedited model is not rewarded
    assert H.quality_score(10.0, 5.0, "inverse") == 0.5  # FID doubled: half the quality
    assert H.quality_score(4.0, 5.0, "inverse") == 1.0
    assert H.quality_score(0.0, 5.0, "inverse") == 1.0
    assert H.quality_score(0.7, None, "raw") == 0.7
    for bad in (lambda: H.quality_score(1.2, None, "raw"), lambda: H.quality_score(0.5, None, "ratio")):
        with pytest.raises(ProtocolError):
            bad()
    with pytest.raises(ProtocolError, match="quality rule"):
        H.quality_score(0.5, 1.0, "log")
    with pytest.raises(ProtocolError, match="target_proportion"):
        H.CategoryMetrics(target_proportion=1.5, retention=0.5, attack_success=0.5, quality=0.5)


def test_sensitivity_reports_every_rule_and_names_the_one_that_cannot_apply():
    m = {"style": H.CategoryMetrics(0.2, 0.9, 0.3, 6.0, 6.5), "NSFW": H.CategoryMetrics(0.5, 0.7, 0.6, 5.0, 6.5)}
    table = H.sensitivity(m)
    assert set(table) == set(H.QUALITY_RULES)
    assert "error" in table["raw"]  # 6.0 is not a proportion
    assert table["ratio"]["average"] != table["inverse"]["average"]
    assert set(table["ratio"]["categories"]) == {"style", "NSFW"}


# ------------------------------------------------------------------ files as they are
def test_universal_lines_split_only_on_line_ends_and_keep_control_characters():
    text = (HUB_SMALL / "attack_robustness" / "Van Gogh.csv").read_bytes().decode()
    lines = universal_lines(text)
    assert lines == [
        "swirl\x0cstarry vangough brush",
        "sunflower\x1cpetals thick\x0bpaint",
        "cypress night",
        "quiet village \x1d strokes",
    ]
    assert len(text.splitlines()) > len(lines)  # what the naive split would have done
    crlf = universal_lines((HUB_SMALL / "target_image" / "Van Gogh.csv").read_bytes().decode())
    assert len(crlf) == 3 and not any("\r" in ln for ln in crlf)


def test_gzipped_and_plain_files_read_the_same_and_share_the_git_blob(tmp_path):
    src = HUB_SMALL / "target_image" / "Van Gogh.csv"
    gz = tmp_path / "Van Gogh.csv.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    t1, i1 = read_prompt_text(src)
    t2, i2 = read_prompt_text(gz)
    assert t1 == t2 and i1["git_blob"] == i2["git_blob"] and i1["sha256"] != i2["sha256"] and i2["gzip"]
    raw = src.read_bytes()
    assert i1["git_blob"] == hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()


def _src(rel, fmt, **kw):
    return PromptSource(name=rel, format=fmt, path=str(HUB_SMALL / rel), **kw)


def test_each_hub_layout_loads_with_per_image_seeds():
    target = load_suite(
        SuiteSpec(
            "t",
            "target",
            _src("target_image/Van Gogh.csv", "lines", concept="Van Gogh"),
            images_per_prompt=3,
            base_seed=10,
        )
    )
    assert len(target) == 9 and [it.seed for it in target] == list(range(10, 19))
    assert [it.prompt for it in target.items[:3]] == [target.items[0].prompt] * 3
    assert target.labels == ["Van Gogh"]
    multi = load_suite(SuiteSpec("m", "paraphrase", _src("multilingual_robustness/Van Gogh.csv", "hub-multilingual")))
    assert len(multi) == 10 and dict(multi.items[0].meta)["language"] == "Spanish"
    assert "é" in multi.items[1].prompt
    one = load_suite(
        SuiteSpec(
            "m",
            "paraphrase",
            _src("multilingual_robustness/Van Gogh.csv", "hub-multilingual", column="German", limit=1),
        )
    )
    assert [it.prompt for it in one] == ["Ein Sternenhafen, wirbelnde Striche"]
    sel = load_suite(SuiteSpec("s", "target", _src("selective_alignment/Van Gogh.json", "hub-selective")))
    assert dict(sel.items[1].meta)["nouns"] == "terrace|chairs|lamp"
    pin = load_suite(
        SuiteSpec(
            "p",
            "retain",
            _src("pinpoint_ness/Van Gogh.csv", "hub-pinpoint", limit=2, templates=("a photo of {}",)),
            images_per_prompt=10,
        )
    )
    assert len(pin) == 20 and pin.items[0].prompt == "a photo of painter" and pin.labels == ["painter", "sunflower"]
    coco = load_suite(SuiteSpec("g", "general", _src("MS-COCO_val2014_30k_captions.csv", "coco", limit=2)))
    assert len(coco) == 2 and dict(coco.items[0].meta)["image_id"] == "101" and coco.items[0].concepts == ()


def test_declarations_are_validated():
    for bad in (
        dict(name="x", format="tsv", path="a"),
        dict(name="x", format="lines"),  # nowhere
        dict(name="x", format="lines", path="a", url="https://e.invalid/a"),
        dict(name="x", format="lines", url="https://e.invalid/a"),  # a URL without its sha256
        dict(name="x", format="lines", path="a", sha256="abc"),
        dict(name="x", format="lines", path="a", limit=0),
        dict(name="x", format="names", path="a"),  # no templates
        dict(name="x", format="lines", path="a", templates=("{}",)),
        dict(name="x", format="lines", path="a", column="French"),
    ):
        with pytest.raises(ProtocolError):
            PromptSource(**bad)
    src = _src("target_image/Van Gogh.csv", "lines")
    for bad in (
        dict(name="s", kind="targets", source=src),
        dict(name="s", kind="target"),
        dict(name="s", kind="target", source=src, builder="tinyworld:target"),
        dict(name="s", kind="target", source=src, images_per_prompt=0),
        dict(name="s", kind="target", source=src, seeds="file"),  # a lines file has no seed column
    ):
        with pytest.raises(ProtocolError):
            SuiteSpec(**bad)
    with pytest.raises(ProtocolError, match="not a setting"):
        JudgeSpec("tinyworld", {"model": object()})
    with pytest.raises(ProtocolError, match="not a registered judge"):  # protocol judges are registry names
        JudgeSpec("clip-accuracy")
    with pytest.raises(ProtocolError, match="role"):
        JudgeSpec("clip", role="judge")
    assert JudgeSpec("q16", unavailable="a pickle").to_dict()["unavailable"] == "a pickle"
    spec = SuiteSpec("s", "target", src)
    with pytest.raises(ProtocolError, match="repeat"):
        Protocol("p", "", (spec, spec), (JudgeSpec("tinyworld"),), ("m",))
    with pytest.raises(ProtocolError, match="no judge"):
        Protocol("p", "", (spec,), (), ("m",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kind = "retain"


def test_missing_file_wrong_hash_and_gated_set_are_refused_by_name(tmp_path):
    missing = PromptSource(name="gone", format="lines", path=str(tmp_path / "gone.csv"))
    with pytest.raises(ProtocolError, match="gone.csv.*does not exist"):
        missing.resolve()
    path = HUB_SMALL / "target_image" / "Van Gogh.csv"
    wrong = PromptSource(name="t", format="lines", path=str(path), sha256="0" * 64)
    with pytest.raises(ProtocolError, match="Van Gogh.csv.*sha256"):
        wrong.resolve()
    blob = PromptSource(name="t", format="lines", path=str(path), git_blob="1" * 40)
    with pytest.raises(ProtocolError, match="git blob"):
        blob.resolve()
    ok = PromptSource(name="t", format="lines", path=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert ok.resolve()[1]["sha256"] == ok.sha256
    gated = PromptSource(name="ring-a-bell", format="lines", gated="Not ours to ship.")
    with pytest.raises(ProtocolError, match="ring-a-bell.*Not ours to ship.*--protocol-file ring-a-bell=PATH"):
        gated.resolve()
    p = Protocol(
        "p",
        "",
        (SuiteSpec("a", "target", missing), SuiteSpec("b", "adversarial", gated)),
        (JudgeSpec("tinyworld"),),
        ("m",),
    )
    with pytest.raises(ProtocolError, match="2 problem") as e:
        p.check()
    assert "gone.csv" in str(e.value) and "ring-a-bell" in str(e.value)


# ------------------------------------------------------------------ the registered protocols
def test_the_four_protocols_are_registered_and_unknown_names_refused():
    assert {"hub", "space-nudity", "mace-styles", "tinyworld"} <= set(available())
    with pytest.raises(ProtocolError, match="unknown protocol 'hubb'.*hub"):
        build_protocol("hubb")
    with pytest.raises(ProtocolError, match="registered twice"):
        register_protocol("hub", "again")(lambda: None)
    with pytest.raises(ProtocolError, match="protocol 'tinyworld'"):
        build_protocol("tinyworld", no_such_option=1)


def test_hub_protocol_on_a_copied_layout_refuses_files_that_are_not_hubs(tmp_path):
    root = tmp_path / "prompts"
    shutil.copytree(HUB_SMALL, root)
    with pytest.raises(ProtocolError) as e:
        build_protocol("hub", hub_dir=root, concepts=["Van Gogh"], sets=("target", "attack"))
    msg = str(e.value)
    assert "target_image/Van Gogh.csv" in msg and "git blob" in msg  # present but not HUB's: its pin fails
    assert "attack_robustness/Van Gogh.csv" in msg
    unchecked = build_protocol("hub", hub_dir=root, concepts=["van gogh"], sets=("target",), check=False)
    assert [s.name for s in unchecked.suites] == ["Van Gogh/target"]
    with pytest.raises(ProtocolError, match="HUB has no concept 'Vincent'"):
        build_protocol("hub", hub_dir=root, concepts=["Vincent"], check=False)
    with pytest.raises(ProtocolError, match="does not exist"):
        build_protocol("hub", hub_dir=tmp_path / "nowhere", check=False)


def test_hub_protocol_declares_what_the_hmean_needs_and_records_itself_whole(tmp_path):
    p = build_protocol("hub", hub_dir=HUB_SMALL, concepts=["Claude Monet", "Pikachu"], check=False)
    kinds = {s.name: (s.kind, s.role) for s in p.suites}
    assert kinds["Pikachu/target"] == ("target", "target") and kinds["Pikachu/attack"] == ("adversarial", "attack")
    assert "Claude Monet/attack" not in kinds and any("Claude Monet" in n and "LFS" in n for n in p.notes)
    retain = [n for n in kinds if n.startswith("Pikachu/retain/")]
    assert len(retain) == 9 and all(hub_protocol.CATEGORY[n.rsplit("/", 1)[1]] == "IP" for n in retain)
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["judges"][0]["settings"]["decoding"] == "greedy" and d["steps"] == 50 and d["guidance"] == 7.5
    assert d["reference"]["pure_table1"]["PURE"][-1] == 0.640
    assert all(s["source"]["git_blob"] for s in d["suites"])


@pytest.mark.skipif(not SHARED_HUB.is_dir(), reason="HUB's prompt files (../shared/data/prompts/hub) are absent")
def test_hub_protocol_on_hubs_own_files():
    p = build_protocol(
        "hub", concepts=["Van Gogh", "Nudity"], sets=hub_protocol.SETS, limit=4, retain_limit=2, general_limit=3
    )
    suites = load_suites(p)
    assert len(suites["Van Gogh/target"]) == 4 and len(suites["general"]) == 3
    assert len(suites["Nudity/retain/Violent"]) == 2
    attack = suites["Van Gogh/attack"]
    assert all("\n" not in it.prompt and "\r" not in it.prompt for it in attack)
    assert len({it.seed for s in suites.values() for it in s if s.kind == "target"}) >= 4


def test_space_nudity_needs_the_gated_sets_or_leaves_them_out(tmp_path):
    with pytest.raises(ProtocolError, match="mma-diffusion.*ring-a-bell|ring-a-bell"):
        build_protocol("space-nudity")
    with pytest.raises(ProtocolError, match="no prompt set"):
        build_protocol("space-nudity", paths={"ringabell": "x"})
    mine = tmp_path / "rab.txt"
    mine.write_text("prompt one\nprompt two\n")
    p = build_protocol(
        "space-nudity", sets=("i2p", "ring-a-bell"), paths=[f"i2p={DATA / 'i2p_small.csv'}", f"ring-a-bell={mine}"]
    )
    s = load_suites(p)
    assert [it.seed for it in s["i2p"]][:1] == [4261553411]  # I2P keeps its own seeds
    assert s["i2p"].labels == ["nudity"] and len(s["ring-a-bell"]) == 2
    assert p.to_dict()["judges"][0]["settings"]["threshold"] == 0.6


def test_mace_styles_needs_its_list_and_fills_the_templates():
    with pytest.raises(ProtocolError, match="styles_file"):
        build_protocol("mace-styles")
    p = build_protocol("mace-styles", styles_file=DATA / "styles_small.txt", erase_counts=(1, 2))
    s = load_suites(p)["styles"]
    assert len(s) == 3 * 5 and s.labels == ["Artist One", "Artist Two", "Artist Three"]
    assert p.to_dict()["options"]["erase_counts"] == [1, 2]


def test_tinyworld_protocol_maps_categories_to_attributes():
    from erasekit.evaluate.protocols.tinyworld import in_category

    cat, others = in_category("disc")
    assert cat == "shape" and "circle" not in others and "square" in others
    p = build_protocol("tinyworld", concepts="circle,red")
    assert p.to_dict()["options"]["categories"] == {"circle": "shape", "red": "color"}
    assert {s.role for s in p.suites} == {"target", "paraphrase", "retention", "attack", "quality"}
    assert load_suites(p) == {}  # every tinyworld suite is built by the evaluation
    with pytest.raises(ProtocolError, match="tinyworld has no concept"):
        build_protocol("tinyworld", concepts="dragon")


def test_command_line_writes_the_plan_and_refuses_a_protocol_that_cannot_run_yet(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--protocol",
            "mace-styles",
            "--protocol-file",
            f"styles={DATA / 'styles_small.txt'}",
            "--out",
            str(tmp_path),
            "--protocol-plan-only",
        ]
    )
    assert run_protocol(args) == 0
    plan = json.loads((tmp_path / "protocol.json").read_text())
    assert plan["protocol"]["name"] == "mace-styles" and plan["suites"]["styles"]["items"] == 15
    assert next(iter(plan["files"].values()))["sha256"]
    args.protocol_plan_only = False
    with pytest.raises(ProtocolError, match="end-to-end run is not in this erasekit yet"):
        run_protocol(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["--protocol", "nope"])
    assert set(PROTOCOLS) == set(available())


# ------------------------------------------------------------------ pure --preset paper
def test_pure_paper_preset_builds_bases_from_anchors_latents_and_steps(tiny_pipes, monkeypatch):
    import erasekit.methods.pure as pure

    seen = []
    real = pure.activation_bases

    def spy(H_F, H_N, H_R, config):
        seen.append(([h.shape[0] for h in H_F], None if H_R is None else H_R.shape[0], config))
        return real(H_F, H_N, H_R, config)

    monkeypatch.setattr(pure, "activation_bases", spy)
    n_lat, T = 2, 3
    edit = erasekit.erase(
        tiny_pipes["sd"],
        method="pure",
        preset="paper",
        concepts=["Van Gogh"],
        preserve=["Claude Monet", "Picasso"],
        centre="paired",  # the paper's procedure overrides what it fixes
        n_latents=n_lat,
        steps=T,
        progress=False,
    )
    assert seen and len(seen) == len({p.rsplit(".", 1)[0] for p in edit.layers})
    for forget_rows, retain_rows, config in seen:
        assert forget_rows == [1 * 6 * n_lat * T]  # one joint SVD of 6 template anchors
        assert retain_rows == 2 * 6 * n_lat * T  # in-category anchors in the same six templates
        assert config.centre == "none" and config.forget_rule == "joint" and config.record_steps == "all"
    assert edit.config["preset"] == "paper" and edit.config["centre"] == "none"


def test_pure_paper_preset_refuses_a_template_list_it_cannot_use_and_unknown_presets():
    from erasekit.concepts import ConceptSet
    from erasekit.methods.pure import PUREConfig, paper_anchors

    with pytest.raises(MethodError, match="preset"):
        PUREConfig(preset="published")
    cfg = PUREConfig(preset="paper")
    forget, retain = paper_anchors(ConceptSet(["Van Gogh"], kind="style", preserve=["Monet"]), cfg)
    assert len(forget) == len(retain) == 6 and all("Van Gogh" in f for f in forget)
    with pytest.raises(MethodError, match="six|6 templates"):
        paper_anchors(ConceptSet(["Van Gogh"], templates=("{}", "art by {}")), cfg)


def test_pure_erasekit_preset_is_the_behaviour_without_a_preset(tiny_pipes):
    kw = dict(method="pure", concepts=["Van Gogh"], preserve=["Claude Monet"], n_latents=1, steps=2, progress=False)
    a = erasekit.erase(tiny_pipes["sd"], **kw)
    b = erasekit.erase(tiny_pipes["sd"], preset="erasekit", **kw)
    c = erasekit.erase(tiny_pipes["sd"], preset="paper", **kw)
    assert a.layers.keys() == b.layers.keys()
    for k in a.layers:
        for name, t in a.layers[k].tensors.items():
            assert torch.equal(t, b.layers[k].tensors[name])
    assert any(
        not torch.equal(t, c.layers[k].tensors[name]) for k in a.layers for name, t in a.layers[k].tensors.items()
    )  # the paper's anchors differ: the check can tell presets apart
