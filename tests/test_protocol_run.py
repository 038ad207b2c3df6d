"""`erasekit bench --protocol NAME` end to end (evaluate/protocols/run.py): tinyworld on the bundled model, HUB on a
tiny random SD pipeline judged by a tiny random VLM and aesthetic predictor — every recorded setting in results.json,
the H-mean recomputed from its own inputs, and every refusal before a model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from erasekit.cli import main
from erasekit.errors import ProtocolError
from erasekit.evaluate import hmean as H
from erasekit.evaluate.protocols import build_protocol, hub_files
from erasekit.evaluate.protocols.run import REFERENCE_SEED, parse_judge_paths, plan_judges
from erasekit.evaluate.suites import read_prompt_text
from test_judges import _mlp_weights, _save_tiny_clip, _save_tiny_vlm

STYLE = tuple(c for c, k in hub_files.CATEGORY.items() if k == "style")
FOUR = ("erased", "retention", "robustness", "quality")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def _check_hmean(rows: dict, categories: set[str], labels: set[str]) -> None:
    """Every row's H-mean is the harmonic mean of its four higher-is-better inputs; the average is their mean."""
    assert set(rows) == labels | {"unedited"}
    for r in rows.values():
        assert set(r["categories"]) == categories
        for cat in r["categories"].values():
            assert all(0.0 <= cat[k] <= 1.0 for k in FOUR)
            assert cat["hmean"] == pytest.approx(H.harmonic_mean([cat[k] for k in FOUR]))
        assert r["average"] == pytest.approx(sum(c["hmean"] for c in r["categories"].values()) / len(categories))


def _concept_rows(record: dict, concept: str, label: str) -> dict:
    return record["evaluation"]["studies"][concept][label]["suites"]


def _seen(suite_run: dict, which: str) -> list[bool]:
    j = suite_run[f"judged_{which}"]
    items = suite_run["suite"]["items"]
    return [any(j["decisions"][i][j["concepts"].index(c)] for c in it["concepts"]) for i, it in enumerate(items)]


# ------------------------------------------------------------------ tinyworld
def test_tinyworld_protocol_end_to_end_writes_the_hmean_from_the_runners_judgements(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "--protocol",
            "tinyworld",
            "--methods",
            "uce",
            "--protocol-concepts",
            "circle",
            "--protocol-limit",
            "2",
            "--steps",
            "3",
            "--eta",
            "2",
            "--bootstrap",
            "20",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert all(w in printed for w in ("H-mean", "shape", "unedited", "uce", "results.json"))
    record = json.loads((out / "results.json").read_text())
    assert record["protocol"]["name"] == "tinyworld" and record["protocol"]["steps"] == 3
    assert record["generation"]["steps"] == 3 and record["generation"]["sampler"]
    assert record["judges"]["tinyworld"]["settings"]["weights_sha256"]
    rows = record["metrics"]["hmean"]
    _check_hmean(rows, {"shape"}, {"uce"})
    # the H-mean's inputs are the runner's own judgements: target proportion = share of target images seen
    suites = _concept_rows(record, "circle", "uce")
    for label, which in (("uce", "edited"), ("unedited", "unedited")):
        seen = _seen(suites["target"], which)
        assert rows[label]["categories"]["shape"]["erased"] == pytest.approx(1 - sum(seen) / len(seen))
        retained = [
            all(s["judged_" + which]["decisions"][i][s["judged_" + which]["concepts"].index(c)] for c in it["concepts"])
            for s in [suites["retain"]]
            for i, it in enumerate(s["suite"]["items"])
        ]
        assert rows[label]["categories"]["shape"]["retention"] == pytest.approx(sum(retained) / len(retained))
    assert rows["unedited"]["categories"]["shape"]["quality"] == 1.0  # agreement of the unedited model with itself
    per = record["metrics"]["per_concept"]["circle"]
    assert "headline" in per["uce"]["attack"] and per["uce"]["n"]["attack"] == 2
    # the H-mean's bootstrap interval over prompts: around the table's value, the four inputs drawn together
    intervals = record["metrics"]["hmean_intervals"]
    for label in ("uce", "unedited"):
        iv = intervals[label]
        cell = iv["categories"]["shape"]
        assert cell["hmean"] == pytest.approx(rows[label]["categories"]["shape"]["hmean"])
        assert cell["low"] <= cell["hmean"] <= cell["high"] and cell["resampling"] == "paired"
        assert iv["n_boot"] == 20 and iv["average"]["value"] == pytest.approx(rows[label]["average"])
    assert record["schema"] == 2 and record["threads"]["torch"]
    page = (out / "report.html").read_text()
    assert "H-mean (tinyworld)" in page and f"{rows['uce']['categories']['shape']['hmean']:.3f}" in page


# ------------------------------------------------------------------ HUB on tiny models
@pytest.fixture(scope="module")
def hub_setup(tmp_path_factory):
    """A HUB prompts/ folder in HUB's layout (two target prompts per style concept, Van Gogh's attack file, COCO
    captions), the pins pointed at these files; a tiny SD folder; a tiny VLM, CLIP and aesthetic MLP."""
    from safetensors.torch import save_file

    from erasekit.models.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("hub")
    hub = root / "prompts"
    (hub / "target_image").mkdir(parents=True)
    (hub / "attack_robustness").mkdir()
    files = {f"target_image/{c}.csv": f"a painting by {c}\n{c} style landscape\n" for c in STYLE}
    files["attack_robustness/Van Gogh.csv"] = "starry swirling night sky painting\nsunflowers in thick strokes\n"
    files["MS-COCO_val2014_30k_captions.csv"] = "image_id,text\n1,a dog on a couch\n2,a bowl of fruit\n3,a red bus\n"
    blobs = {}
    for rel, text in files.items():
        (hub / rel).write_text(text, encoding="utf-8")
        blobs[rel] = read_prompt_text(hub / rel)[1]["git_blob"]
    sd = save_tiny_pipeline(root / "sd")
    vlm = _save_tiny_vlm(root / "vlm", STYLE)
    clip = _save_tiny_clip(root / "clip")
    mlp = root / "aesthetic.safetensors"
    weights = _mlp_weights(16)
    weights["layers.7.bias"] += 6.0  # ratings around 6, as LAION's predictor gives: the quality ratio applies
    save_file(weights, str(mlp))
    return {"hub": hub, "blobs": blobs, "sd": sd, "vlm": vlm, "clip": clip, "mlp": mlp}


@pytest.fixture
def hub_pins(hub_setup, monkeypatch):
    for rel, blob in hub_setup["blobs"].items():
        monkeypatch.setitem(hub_files.GIT_BLOB, rel, blob)
    return hub_setup


def _hub_args(s: dict, out: Path, *judges: str) -> list[str]:
    return [
        "bench",
        "--protocol",
        "hub",
        "--model",
        str(s["sd"]),
        "--methods",
        "uce",
        "--hub-dir",
        str(s["hub"]),
        "--protocol-concepts",
        "Van Gogh",
        "--protocol-limit",
        "2",
        "--protocol-option",
        "retain_limit=1",
        "--protocol-option",
        "general_limit=2",
        "--steps",
        "2",
        "--height",
        "32",
        "--bootstrap",
        "20",
        "--out",
        str(out),
        "--cache",
        str(out.parent / "cache"),
        "--no-progress",
        *(a for j in judges for a in ("--judge-path", j)),
    ]


def test_hub_protocol_end_to_end_records_every_setting(hub_pins, tmp_path):
    s = hub_pins
    out = tmp_path / "out"
    code = main(_hub_args(s, out, f"vlm={s['vlm']},max_new_tokens=3", f"aesthetics={s['mlp']}", f"clip={s['clip']}"))
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    # the protocol whole, its files with checksums, its suites
    assert record["protocol"]["name"] == "hub" and record["protocol"]["options"]["retain_limit"] == 1
    for name, info in record["files"].items():
        assert info["sha256"] and info["git_blob"] == s["blobs"][name.removeprefix("hub/")]
    assert record["suites"]["Van Gogh/target"]["items"] == 2 and record["suites"]["general"]["items"] == 2
    # sampling: steps, guidance, size, the scheduler that ran, per-image seeds (base seed + i)
    g = record["generation"]
    assert (g["steps"], g["guidance"], g["height"], g["width"]) == (2, 7.5, 32, 32) and g["sampler"]
    target = _concept_rows(record, "Van Gogh", "uce")["Van Gogh/target"]["suite"]["items"]
    assert [it["seed"] for it in target] == [0, 1]
    # judges: the VLM's decoding (the protocol's greedy, the user's token budget, both recorded), the aesthetic
    # predictor with the CLIP given once, the unavailable judges declared
    vlm = record["judges"]["vlm"]
    assert vlm["settings"]["generation"]["do_sample"] is False
    assert vlm["settings"]["generation"]["max_new_tokens"] == 3 and vlm["config"]["max_new_tokens"] == 3
    assert vlm["protocol_options_applied"] == {"do_sample": False, "prompt": "auto", "reading": "hub"}
    assert vlm["user"].endswith("max_new_tokens=3") and vlm["settings"]["weights_sha256"]
    assert record["judges"]["aesthetics"]["settings"]["clip"]["model"] == str(s["clip"])
    declared = {j["name"]: j for j in record["judges_declared"]}
    assert declared["giphy-celebrity-detector"]["unavailable"] and declared["q16"]["unavailable"]
    # references: three unedited images per concept asked (Van Gogh and its in-category neighbours), unused seeds
    refs = record["references"]["concepts"]
    assert set(refs) == {"Van Gogh", *(c for c in STYLE if c != "Van Gogh")}
    for r in refs.values():
        assert r["seeds"] == [REFERENCE_SEED, REFERENCE_SEED + 1, REFERENCE_SEED + 2]
        assert all(Path(p).is_file() for p in r["images"])
    assert set(vlm["settings"]["references"]["shared_by_every_image"]) == set(refs)
    # the H-mean: one style row per model, the quality ratio of the unedited model is 1
    _check_hmean(record["metrics"]["hmean"], {"style"}, {"uce"})
    assert record["metrics"]["hmean"]["unedited"]["categories"]["style"]["quality"] == 1.0
    assert record["metrics"]["quality_rule"] == "ratio"
    # its interval: HUB's suites differ in size, so each input is resampled on its own; the point is the table's
    for label, iv in record["metrics"]["hmean_intervals"].items():
        cell = iv["categories"]["style"]
        assert cell["hmean"] == pytest.approx(record["metrics"]["hmean"][label]["categories"]["style"]["hmean"])
        assert cell["low"] <= cell["high"] and cell["resampling"] in ("paired", "independent")


def test_hub_judge_paths_are_checked_before_any_model_loads(hub_pins, tmp_path, monkeypatch, capsys):
    import erasekit.models.loading as loading

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the judges were checked")

    monkeypatch.setattr(loading, "load_pipeline", no_load)
    s = hub_pins
    missing = tmp_path / "no-vlm-here"
    assert main(_hub_args(s, tmp_path / "a", f"vlm={missing}", f"aesthetics={s['mlp']}", f"clip={s['clip']}")) == 2
    err = capsys.readouterr().err
    assert "judge vlm" in err and str(missing) in err and "--judge-path vlm=PATH" in err
    assert main(_hub_args(s, tmp_path / "b", f"aesthetics={s['mlp']}", f"clip={s['clip']}")) == 2
    assert "give it with --judge-path vlm=PATH" in capsys.readouterr().err
    assert main(_hub_args(s, tmp_path / "c", f"vlm={s['vlm']}", f"aesthetics={s['mlp']}", "q16=/x")) == 2
    assert "--judge-path q16" in capsys.readouterr().err
    assert not (tmp_path / "a" / "results.json").exists()


def test_a_category_whose_judge_erasekit_cannot_run_is_refused_only_when_asked_for():
    hub = Path(__file__).parent / "data" / "prompts" / "hub_small"
    p = build_protocol("hub", hub_dir=hub, concepts=["Van Gogh"], check=False)
    with pytest.raises(ProtocolError, match="GIPHY celebrity detector.*leave the celebrity concepts out"):
        plan_judges(p, ["celebrity"], {}, quality=False)
    with pytest.raises(ProtocolError, match="Q16"):
        plan_judges(p, ["NSFW"], {}, quality=False)
    assert plan_judges(p, [], {}, quality=False) == []  # declared, recorded, never needed
    assert parse_judge_paths(["vlm=/a,b=1", "clip = /c"]) == {"vlm": "/a,b=1", "clip": "/c"}
    for bad in (["vlm"], ["=/a"], ["vlm=/a", "vlm=/b"]):
        with pytest.raises(ProtocolError, match="judge-path"):
            parse_judge_paths(bad)
