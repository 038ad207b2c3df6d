"""Evaluation: suites, judges, attacks, metrics, cached / resumable / sharded runner, report (fast, CPU)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import erasekit
from erasekit.errors import ConceptError, EraseKitError
from erasekit.evaluate import (
    CLIPJudge,
    ConceptVectorAttack,
    GenerationSettings,
    Study,
    TokenSearchAttack,
    bootstrap,
    evaluate,
    load_prompts,
    suites_from_concepts,
    tinyworld_suites,
    write_html,
    write_json,
)
from erasekit.evaluate import generate as G
from erasekit.evaluate import metrics as M
from erasekit.evaluate.suites import Suite, SuiteItem

REPO = Path(__file__).resolve().parents[1]
PROMPTS = (REPO / ".." / "shared" / "data" / "prompts").resolve()
needs_prompts = pytest.mark.skipif(
    not PROMPTS.is_dir(), reason=f"public prompt files not found at {PROMPTS} (shared/ beside the repo)"
)
SETTINGS = GenerationSettings(steps=2, guidance=5.0, batch_size=8)


def _tinyworld_judge_path() -> Path:
    from erasekit.tinyworld.judge import TinyworldJudge

    return TinyworldJudge.default_path()


needs_tinyworld_judge = pytest.mark.skipif(
    not _tinyworld_judge_path().is_file(), reason="shipped tinyworld judge weights are missing"
)


# ----------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPModel with the real CLIP tokenizer, saved offline (its judgements are meaningless)."""
    from erasekit.models.tiny import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def sd(tiny_pipes):
    return tiny_pipes["sd"]


@pytest.fixture(scope="module")
def edit(sd):
    return erasekit.erase(sd, "uce", ["circle"], kind="object", preserve=["square"], progress=False)


def _study(edit, attacks=(), n_seeds=2) -> Study:
    cs = erasekit.ConceptSet(erase=("circle",), kind="object", preserve=("square",))
    suites = [s.head(4) for s in suites_from_concepts(cs, seeds=range(n_seeds))]
    return Study("circle", suites, {"uce": edit}, list(attacks))


def _pixels(paths):
    return [np.asarray(Image.open(p)) for p in paths]


# ----------------------------------------------------------------------------- suites
@needs_prompts
def test_i2p_csv_with_newlines_in_quotes():
    f = PROMPTS / "erasing" / "unsafe-prompts4703.csv"
    assert sum(1 for _ in f.open(encoding="utf-8")) == 4710  # physical lines
    s = load_prompts(f)
    assert (
        len(s) == 4703 and s.info["format"] == "i2p" and s.info["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    )
    assert any("\n" in it.prompt for it in s)
    first = s.items[0]
    assert first.seed == 4261553411 and first.guidance == 13.0 and first.concepts == ("violence", "self-harm")
    assert dict(first.meta)["case_number"] == "0"


@needs_prompts
def test_unlearndiffatk_esd_and_lines_formats(tmp_path):
    nud = load_prompts(PROMPTS / "diffusion-mu-attack" / "nudity.csv", concepts=["nudity"])
    assert len(nud) == 142 and nud.info["format"] == "i2p" and all(it.concepts == ("nudity",) for it in nud)
    art = load_prompts(PROMPTS / "erasing" / "big_artist_prompts.csv")
    assert art.info["format"] == "esd" and len(art) == 100
    assert {it.concepts for it in art} == {
        (a,) for a in ("Pablo Picasso", "Van Gogh", "Rembrandt", "Andy Warhol", "Caravaggio")
    }
    assert art.items[0].seed == 3721 and art.items[0].guidance is None
    imnet = load_prompts(PROMPTS / "erasing" / "small_imagenet_prompts.csv", limit=3)
    assert [it.concepts for it in imnet] == [("cassette player",)] * 3
    church = load_prompts(PROMPTS / "diffusion-mu-attack" / "church.csv", kind="retain")
    assert church.info["format"] == "unlearndiffatk" and len(church) == 50 and church.items[0].seed == 69922
    assert church.items[0].guidance == 7.5 and church.kind == "retain"
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\n  a dog  \n")
    lines = load_prompts(txt, seed=10, concepts=["animal"])
    assert [(it.prompt, it.seed, it.concepts) for it in lines] == [
        ("a cat", 10, ("animal",)),
        ("a dog", 11, ("animal",)),
    ]


FIXTURES = Path(__file__).resolve().parent / "data" / "prompts"


def test_prompt_file_formats_on_small_fixtures():
    """The three CSV layouts, always (the public files above are read only where shared/ is present)."""
    i2p = load_prompts(FIXTURES / "i2p_small.csv")
    assert i2p.info["format"] == "i2p" and len(i2p) == 3 and "\n" in i2p.items[1].prompt  # a newline inside quotes
    assert i2p.items[0].seed == 4261553411 and i2p.items[0].guidance == 13.0
    assert i2p.items[0].concepts == ("violence", "self-harm") and dict(i2p.items[0].meta)["case_number"] == "0"
    esd = load_prompts(FIXTURES / "esd_small.csv")
    assert esd.info["format"] == "esd" and [it.concepts for it in esd] == [
        ("Van Gogh",),
        ("Van Gogh",),
        ("Salvador Dali",),
    ]
    assert esd.items[0].seed == 3721 and esd.items[0].guidance is None
    uda = load_prompts(FIXTURES / "unlearndiffatk_small.csv", kind="retain")
    assert uda.info["format"] == "unlearndiffatk" and len(uda) == 2 and uda.kind == "retain"
    assert uda.items[1].seed == 36416 and uda.items[1].guidance == 7.5
    assert uda.info["sha256"] == hashlib.sha256((FIXTURES / "unlearndiffatk_small.csv").read_bytes()).hexdigest()


def test_gzipped_prompt_files_read_as_their_plain_twins(tmp_path):
    """A gzipped copy (HUB ships some) reads as the plain file: same items, its own stored-bytes digest."""
    import gzip

    for plain in (FIXTURES / "i2p_small.csv", FIXTURES / "esd_small.csv"):
        packed = tmp_path / (plain.name + ".gz")
        packed.write_bytes(gzip.compress(plain.read_bytes()))
        a, b = load_prompts(plain), load_prompts(packed)
        assert a.items == b.items and a.info["format"] == b.info["format"] and b.name == a.name
        assert b.info["gzip"] and not a.info["gzip"]
        assert b.info["sha256"] == hashlib.sha256(packed.read_bytes()).hexdigest() != a.info["sha256"]
    lines = tmp_path / "p.txt.gz"
    lines.write_bytes(gzip.compress(b"a red circle\r\na blue\x0bsquare\n"))  # \x0b is inside a prompt, not a line end
    assert [it.prompt for it in load_prompts(lines)] == ["a red circle", "a blue\x0bsquare"]
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"\xff\xfe not text"))
    with pytest.raises(ConceptError, match="not UTF-8"):
        load_prompts(bad)


def test_url_download_needs_checksum_and_caches(tmp_path):
    src = tmp_path / "prompts.txt"
    src.write_text("a red circle\na blue square\n")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    url = src.as_uri()
    with pytest.raises(ConceptError, match="sha256"):
        load_prompts(url, cache_dir=tmp_path / "cache")
    with pytest.raises(ConceptError, match="expected"):
        load_prompts(url, sha256="0" * 64, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "prompts" / ("0" * 64)).exists()
    s = load_prompts(url, sha256=digest, cache_dir=tmp_path / "cache")
    assert [it.prompt for it in s] == ["a red circle", "a blue square"]
    cached = tmp_path / "cache" / "prompts" / digest / "prompts.txt"
    assert cached.is_file()
    src.unlink()  # second load is served from the cache
    assert len(load_prompts(url, sha256=digest, cache_dir=tmp_path / "cache")) == 2


def test_tinyworld_suites_name_paraphrase_and_retain():
    from erasekit.models.tokenizer import build_clip_tokenizer
    from erasekit.tinyworld import world

    suites = {s.kind: s for s in tinyworld_suites(["circle", "red"], n=12, seed=3)}
    again = {s.kind: s for s in tinyworld_suites(["circle", "red"], n=12, seed=3)}
    assert all(suites[k].items == again[k].items for k in suites)
    tok = build_clip_tokenizer()
    ids = lambda s: set(tok(s).input_ids[1:-1])  # noqa: E731
    for it in suites["target"]:
        assert it.concepts[0] in it.prompt.split() and it.concepts[0] in ("circle", "red")
    for it in suites["paraphrase"]:  # never the anchor word, as a token
        assert not ids(it.concepts[0]) & ids(it.prompt), it.prompt
    for it in suites["retain"]:
        assert (
            "circle" not in it.prompt
            and " red " not in f" {it.prompt} "
            and it.concepts[0] in world.SHAPE_NAMES + world.COLOR_NAMES
        )
    for it in suites["general"]:
        assert len(it.concepts) == 3 and "circle" not in it.concepts and "red" not in it.concepts
    assert [it.seed for it in suites["target"]] == list(range(3, 15))
    with pytest.raises(ConceptError, match="no concept 'banana'"):
        tinyworld_suites(["banana"])


def test_suite_refuses_unknown_kind_and_missing_vectors():
    with pytest.raises(ConceptError, match="kind"):
        Suite("x", "bogus", [])
    with pytest.raises(ConceptError, match="vector"):
        Suite("x", "adversarial", [SuiteItem("p", 0, shift=("v", 1.0))])


# ----------------------------------------------------------------------------- metrics
def test_bootstrap_interval_contains_estimate_narrows_and_is_seeded():
    rng = np.random.default_rng(0)
    small, large = rng.random(30) < 0.3, rng.random(3000) < 0.3
    a, b = M.rate("r", small), M.rate("r", large)
    for e in (a, b):
        assert e.low <= e.value <= e.high
    assert (b.high - b.low) < 0.4 * (a.high - a.low)
    assert (a.k, a.n) == (int(small.sum()), 30)
    assert M.rate("r", small, seed=0) == a and M.rate("r", small, seed=1) != a
    hm = M.harmonic_mean([small, ~small, np.ones(10, bool)])
    assert hm.low <= hm.value <= hm.high
    p = small.mean()
    assert hm.value == pytest.approx(3 / (1 / p + 1 / (1 - p) + 1))
    assert M.erase_rate(np.array([True, False, False, False])).value == 0.75
    assert M.judge_agreement(np.array([[1, 0], [1, 1]]), np.array([[1, 0], [0, 1]])).value == 0.5
    assert np.isnan(bootstrap([np.array([])], np.mean)[0])


# ----------------------------------------------------------------------------- judges
def test_nudenet_judge_missing_package_gives_clear_error(monkeypatch):
    from erasekit.evaluate.judges import NudeNetJudge

    monkeypatch.setitem(sys.modules, "nudenet", None)
    with pytest.raises(EraseKitError, match=r"pip install 'erasekit\[nsfw\]'"):
        NudeNetJudge()


def test_nudenet_judge_on_made_images():
    pytest.importorskip("nudenet", reason="nudenet is not installed (pip install 'erasekit[nsfw]')")
    from erasekit.evaluate.judges import NUDENET_EXPOSED, NudeNetJudge

    judge = NudeNetJudge()
    blank = Image.new("RGB", (256, 256), (255, 255, 255))
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (128, 96, 3), dtype=np.uint8))
    res = judge.judge([blank, noise], ["nudity", "FEET_EXPOSED"])
    assert res.scores.shape == (2, 2) and not res.decisions.any() and res.scores[0].max() == 0.0
    assert (
        res.settings["classes"] == list(NUDENET_EXPOSED)
        and len(NUDENET_EXPOSED) == 9
        and res.settings["threshold"] == 0.6
    )
    assert res.settings["model_sha256"] and res.settings["nudenet_version"]
    assert judge.detections([blank]) == [[]]
    assert NudeNetJudge(threshold=0.45).judge([blank], ["nudity"]).settings["threshold"] == 0.45
    with pytest.raises(ConceptError, match="no class"):
        NudeNetJudge(classes=["FEET_EXPOSED", "TAIL_EXPOSED"])
    with pytest.raises(ConceptError, match="knows 'nudity'"):
        judge.judge([blank], ["violence"])


def test_clip_judge_plumbing(clip_dir):
    judge = CLIPJudge(clip_dir, negatives=("a photo", "a drawing"))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)) for _ in range(5)]
    res = judge.judge(images, ["circle", "square"])
    assert res.scores.shape == (5, 2) and res.decisions.dtype == bool
    assert (res.scores >= 0).all() and (res.scores <= 100).all()
    assert "patch 8" in res.settings["backbone"] and res.settings["score"].startswith("CLIP score = 100")
    again = judge.judge(images[:2], ["circle", "square"])
    np.testing.assert_allclose(again.scores, res.scores[:2], atol=1e-4)


@needs_tinyworld_judge
def test_tinyworld_judge_maps_concepts_to_heads():
    from erasekit.evaluate.judges import TinyworldConceptJudge
    from erasekit.tinyworld import world

    judge = TinyworldConceptJudge()
    imgs = world.render_batch(
        ["circle", "square", "circle"],
        ["red", "blue", "green"],
        ["striped", "solid", "dotted"],
        np.random.default_rng(0),
    )
    res = judge.judge([Image.fromarray(x) for x in imgs], ["circle", "red", "striped", "disc"])
    assert res.decisions[:, 0].tolist() == [True, False, True] and res.decisions[:, 3].tolist() == [True, False, True]
    assert res.decisions[:, 1].tolist() == [True, False, False] and res.decisions[:, 2].tolist() == [True, False, False]
    assert res.settings["weights_sha256"] and "argmax" in res.settings["decision"]


# ----------------------------------------------------------------------------- runner
@pytest.fixture(scope="module")
def evaluated(sd, edit, clip_dir, tmp_path_factory):
    """One small evaluation (target / retain / general, ring-a-bell with η = 0, a 2-step token search)."""
    root = tmp_path_factory.mktemp("eval")
    judge = CLIPJudge(clip_dir)
    res = evaluate(
        sd,
        [_study(edit, _attacks())],
        judge,
        out_dir=root / "out",
        settings=SETTINGS,
        cache_dir=root / "cache",
        n_boot=200,
        progress=False,
    )
    return res, root, judge


def _attacks():
    from erasekit.evaluate.attacks import concept_set_pairs

    cs = erasekit.ConceptSet(erase=("circle",), kind="object")
    return [
        ConceptVectorAttack(*concept_set_pairs(cs), etas=(0.0,)),
        TokenSearchAttack(n_tokens=2, steps=2, candidates=4, forbidden=["circle"], max_prompts=2),
    ]


def test_same_seeds_give_identical_images_from_cache_and_fresh(evaluated, sd, edit, clip_dir, tmp_path):
    res, root, judge = evaluated
    runs = res.studies["circle"]["uce"].suites
    assert res.timing["images_generated"] == res.timing["images_total"] > 0
    # a second run is served entirely from the cache, with the same numbers
    again = evaluate(
        sd,
        [_study(edit, [])],
        judge,
        out_dir=tmp_path / "o",
        settings=SETTINGS,
        cache_dir=root / "cache",
        n_boot=200,
        progress=False,
    )
    assert again.timing["images_generated"] == 0 and again.timing["images_from_cache"] == again.timing["images_total"]
    for name, run in again.studies["circle"]["uce"].suites.items():
        assert run.edited == runs[name].edited and run.unedited == runs[name].unedited
        assert (
            again.studies["circle"]["uce"].metrics[M_NAME[run.suite.kind]]
            == res.studies["circle"]["uce"].metrics[M_NAME[run.suite.kind]]
        )
    # the same evaluation generated afresh in a new cache gives the same pixels and numbers
    fresh = evaluate(
        sd,
        [_study(edit, _attacks())],
        judge,
        out_dir=tmp_path / "f",
        settings=SETTINGS,
        cache_dir=tmp_path / "c2",
        n_boot=200,
        progress=False,
    )
    assert fresh.timing["images_generated"] == res.timing["images_total"]
    assert fresh.studies["circle"]["uce"].metrics == res.studies["circle"]["uce"].metrics
    for name, run in fresh.studies["circle"]["uce"].suites.items():
        for a, b in zip(
            _pixels(run.unedited + run.edited), _pixels(runs[name].unedited + runs[name].edited), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    # the edit changes the images, and the same seed gives the same unedited image whatever the method
    t = runs["target"]
    assert any(not np.array_equal(a, b) for a, b in zip(_pixels(t.unedited), _pixels(t.edited), strict=True))
    assert not erasekit.Edit.applied(sd)


M_NAME = {"target": "erase rate", "retain": "retain rate", "general": "drift: pixel distance"}


def test_unedited_images_are_shared_across_methods(sd, edit, clip_dir, tmp_path):
    other = erasekit.erase(sd, "space", ["circle"], kind="object", preserve=["square"], progress=False)
    study = _study(edit, [], n_seeds=1)
    study.edits = {"uce": edit, "space": other}
    res = evaluate(
        sd,
        [study],
        CLIPJudge(clip_dir),
        out_dir=tmp_path / "o",
        settings=SETTINGS,
        cache_dir=tmp_path / "c",
        n_boot=50,
        progress=False,
    )
    per_state = sum(len(s) for s in study.suites)
    assert res.timing["images_total"] == 3 * per_state  # unedited once + each method
    a, b = res.studies["circle"]["uce"].suites["target"], res.studies["circle"]["space"].suites["target"]
    assert a.unedited == b.unedited and a.edited != b.edited


def test_resume_after_interruption_regenerates_only_missing(sd, edit, clip_dir, tmp_path, monkeypatch):
    real = G._render
    calls = {"n": 0, "images": 0}

    def crashing(pipe, items, vectors, settings):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        calls["images"] += len(items)
        return real(pipe, items, vectors, settings)

    study = _study(edit, [])
    judge = CLIPJudge(clip_dir)
    kw = dict(
        out_dir=tmp_path / "o",
        settings=GenerationSettings(steps=2, guidance=5.0, batch_size=3),
        cache_dir=tmp_path / "c",
        n_boot=50,
        progress=False,
    )
    monkeypatch.setattr(G, "_render", crashing)
    with pytest.raises(KeyboardInterrupt):
        evaluate(sd, [study], judge, **kw)
    assert not erasekit.Edit.applied(sd)  # the edit was reverted on the way out
    done = sorted((tmp_path / "c").rglob("*.png"))
    assert len(done) == calls["images"] == 6 and not list((tmp_path / "c").rglob("*.tmp"))
    stamps = {p: p.stat().st_mtime_ns for p in done}

    def counting(pipe, items, vectors, settings):
        calls["images"] += len(items)
        return real(pipe, items, vectors, settings)

    calls["images"] = 0
    monkeypatch.setattr(G, "_render", counting)
    res = evaluate(sd, [study], judge, **kw)
    assert calls["images"] == res.timing["images_generated"] == res.timing["images_total"] - 6
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished images were not rewritten


def test_concept_vector_with_zero_strength_equals_unattacked(evaluated):
    res = evaluated[0]
    run = res.studies["circle"]["uce"]
    target, attacked = run.suites["target"], run.suites["adversarial:ring-a-bell@0"]
    assert [it.prompt for it in attacked.suite] == [it.prompt for it in target.suite]
    for a, b in zip(_pixels(attacked.edited), _pixels(target.edited), strict=True):  # prompt_embeds path == prompt path
        np.testing.assert_array_equal(a, b)
    asr, erase = run.metrics["ASR ring-a-bell@0"], run.metrics["erase rate"]
    assert asr.value == pytest.approx(1.0 - erase.value) and asr.n == erase.n and "η = 0" in asr.note
    # the curve's η = 0 point (the target suite) and the attacked suite at η = 0 agree, image for image
    curve = res.attacks["circle"]["ring-a-bell"]["curve"]
    assert [p["eta"] for p in curve] == [0.0, 0.0] and curve[0]["suite"] == "target"
    assert curve[0]["methods"]["uce"].k == curve[1]["methods"]["uce"].k
    assert curve[0]["unedited concept rate"].k == curve[1]["unedited concept rate"].k


def test_concept_vector_attack_moves_the_conditioning(sd):
    from erasekit.evaluate.attacks import concept_vector, encode, shifted_conditioning

    vec = concept_vector(sd, ["a red circle", "a circle"], ["a red shape", "a shape"])
    assert (
        vec["prompt_embeds"].shape == (77, sd.text_encoder.config.hidden_size) and vec["prompt_embeds"].abs().sum() > 0
    )
    items = [SuiteItem("a blue square", 0, shift=("v", 0.0)), SuiteItem("a blue square", 0, shift=("v", 2.0))]
    cond = shifted_conditioning(sd, items, {"v": vec})["prompt_embeds"]
    base = encode(sd, ["a blue square"])["prompt_embeds"][0]
    torch.testing.assert_close(cond[0], base)
    torch.testing.assert_close(cond[1], base + 2.0 * vec["prompt_embeds"])


def test_token_search_improves_its_objective_within_budget(evaluated):
    res = evaluated[0]
    run = res.studies["circle"]["uce"].suites["adversarial:token-search"]
    info = run.suite.info
    restarts = info["record"]["config"]["restarts"]
    assert info["budget"].startswith("2 steps × 4 candidates = 8 queries") and restarts == 2
    assert len(run.suite) == 2 * 2 * restarts and info["best_of"] == restarts  # 2 prompts × 2 seeds × restarts
    for found in [f for per_prompt in info["restarts"].values() for f in per_prompt]:
        assert found["score"] >= found["start_score"] and len(found["words"]) == 2
        assert not any("circle" in w for w in found["words"])
    targets = {it.prompt for it in res.studies["circle"]["uce"].suites["target"].suite}
    assert all(" ".join(it.prompt.split()[:-2]) in targets for it in run.suite)  # the prompt, then two free words
    assert "ASR token-search" in res.studies["circle"]["uce"].metrics


def test_results_json_records_everything(evaluated, tmp_path):
    res = evaluated[0]
    out = write_json(res, tmp_path / "results.json")
    d = json.loads(out.read_text())
    assert d["judge"]["judge"] == "clip" and d["config"]["versions"]["torch"] == torch.__version__
    assert d["config"]["settings"]["steps"] == 2 and d["config"]["model_fingerprint"]
    run = d["studies"]["circle"]["uce"]
    m = run["metrics"]["erase rate"]
    assert set(m) >= {"value", "low", "high", "n", "k", "n_boot", "seed", "level"}
    assert run["suites"]["target"]["suite"]["items"][0]["seed"] == 0
    assert run["edit"]["method"] == "uce" and "unedited_metrics" in run


def test_report_page_loads_in_chromium(evaluated, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    res = evaluated[0]
    page = write_html(res, tmp_path / "report.html")
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.read_text()
        + (
            "<script>window.addEventListener('load',()=>{const im=[...document.images];const "
            "d=document.createElement('div');"
            "d.id='probe';d.textContent=JSON.stringify({images:im.length,broken:im.filter(i=>!(i.complete&&i.naturalWidth>0)).length,"
            "table:!!document.querySelector('#metrics tr "
            "td'),settings:!!document.getElementById('settings')});document.body.appendChild(d);});</script>"
        )
    )
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        flags + ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=90
    ).stdout
    start = dom.index('<div id="probe">') + len('<div id="probe">')
    state = json.loads(dom[start : dom.index("</div>", start)])
    n_images = (
        sum(
            min(8, len(r.suite)) * 2
            for r in res.studies["circle"]["uce"].suites.values()
            if r.suite.name != "adversarial:token-search"
        )
        + min(8, len(res.studies["circle"]["uce"].suites["adversarial:token-search"].suite)) * 2
    )
    # the Attacks section's small grids (first 4 items, unedited | uce): the concept-vector suite at the headline η
    # and the token search
    headline = res.attacks["circle"]["ring-a-bell"]["headline_eta"]
    shown = ["adversarial:token-search"] + ([f"adversarial:ring-a-bell@{headline:g}"] if headline else [])
    n_images += sum(min(4, len(res.studies["circle"]["uce"].suites[name].suite)) * 2 for name in shown)
    figures = sorted((tmp_path / "plots").glob("*.png"))
    assert [f.name for f in figures] == [
        "attack-circle-ring-a-bell.png",
        "attacks-circle.png",  # the attack × method picture
        "tradeoff-circle.png",
    ]  # also embedded in the page
    assert state == {"images": n_images + len(figures), "broken": 0, "table": True, "settings": True}
    shot = tmp_path / "report.png"
    subprocess.run(
        flags + ["--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=90
    )
    assert shot.is_file() and Image.open(shot).size == (1200, 1600)
    assert len(set(np.asarray(Image.open(shot).convert("L")).ravel().tolist())) > 10  # rendered, not blank


# ----------------------------------------------------------------------------- sharding
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_accelerate_processes_equal_one(edit, clip_dir, tmp_path):
    """Two CPU processes (accelerate's torchrun launcher; ``--cpu --num_processes 2`` would need MPI) give the numbers
    of one."""
    from erasekit.cli import main

    edit_file = edit.save(tmp_path / "circle.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    args = [
        "evaluate",
        "--model",
        "tiny-sd",
        "--edit",
        str(edit_file),
        "--judge",
        f"clip:{clip_dir}",
        "--suite",
        "target,adversarial,retain,general",
        "--attack",
        "ring-a-bell,token-search",
        "--eta",
        "2",
        "--search-steps",
        "1",
        "--seeds",
        "1",
        "--steps",
        "2",
        "--guidance",
        "5",
        "--batch-size",
        "4",
        "--bootstrap",
        "200",
        "--no-progress",
    ]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "erasekit.cli",
    ]
    two = subprocess.run(
        launch + args + ["--out", str(tmp_path / "two"), "--cache", str(tmp_path / "c2")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert main(args + ["--out", str(tmp_path / "one"), "--cache", str(tmp_path / "c1")]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("two", "one"))
    assert a["config"]["processes"] == 2 and b["config"]["processes"] == 1
    # bit-identical pixels are promised for equal per-process thread counts only (runner docstring): both ran 1
    assert a["config"]["torch_threads"] == [1, 1] and b["config"]["torch_threads"] == [1]
    assert (
        0 < a["timing"]["images_generated_by_main"] < a["timing"]["images_generated"] == b["timing"]["images_generated"]
    )
    ra, rb = a["studies"]["circle"]["uce"], b["studies"]["circle"]["uce"]
    assert ra["metrics"] == rb["metrics"] and ra["unedited_metrics"] == rb["unedited_metrics"]
    for name, s in ra["suites"].items():
        assert s["judged_edited"]["scores"] == rb["suites"][name]["judged_edited"]["scores"]
        assert s["pixel_distance"] == rb["suites"][name]["pixel_distance"]
    assert (tmp_path / "two" / "report.html").is_file()


def test_cli_bench_compares_methods(clip_dir, tmp_path, capsys):
    from erasekit.cli import main

    threads = torch.get_num_threads()
    try:
        rc = _bench_with_variants(main, clip_dir, tmp_path)
    finally:
        torch.set_num_threads(threads)  # --threads 1 set it for the process
    assert rc == 0
    d = json.loads((tmp_path / "b" / "results.json").read_text())
    assert d["config"]["threads"] == 1 and d["config"]["torch_threads"] == [1]  # --threads set torch's count
    _after_bench(d, main, tmp_path, capsys)


def _bench_with_variants(main, clip_dir, tmp_path) -> int:
    return main(
        [
            "bench",
            "--model",
            "tiny-sd",
            "--methods",
            "uce,space,uce_all=uce",
            "--concepts",
            "circle",
            "--preserve",
            "square",
            "--judge",
            f"clip:{clip_dir}",
            "--suite",
            "target,retain",
            "--seeds",
            "1",
            "--steps",
            "2",
            "--guidance",
            "5",
            "--bootstrap",
            "100",
            "--out",
            str(tmp_path / "b"),
            "--cache",
            str(tmp_path / "c"),
            "--no-progress",
            "--set",
            "space.target_sparsity=0.5",
            "--set",
            "uce_all.token=all",
            "--threads",
            "1",
        ]
    )


def _after_bench(d, main, tmp_path, capsys):
    assert list(d["studies"]["circle"]) == ["uce", "space", "uce_all"]
    assert set(d["config"]["fit_seconds"]) == {"circle/uce", "circle/space", "circle/uce_all"}
    assert d["studies"]["circle"]["space"]["config"]["target_sparsity"] == 0.5
    # a variant runs the registered method with its own options, under its own label
    assert (
        d["studies"]["circle"]["uce_all"]["config"]["token"] == "all"
        and d["studies"]["circle"]["uce"]["config"]["token"] != "all"
    )
    assert (tmp_path / "b" / "report.html").is_file() and (
        tmp_path / "b" / "edits" / "circle-uce_all.safetensors"
    ).is_file()
    assert (
        main(["bench", "--model", "tiny-sd", "--methods", "uce", "--set", "space.lam=1", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "not among the benchmarked methods" in capsys.readouterr().err
    before = torch.get_num_threads()
    assert (
        main(["bench", "--model", "tiny-sd", "--methods", "uce", "--threads", "0", "--out", str(tmp_path / "x")]) == 2
    )
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err and torch.get_num_threads() == before
    for bad, msg in (
        ("uce,uce", "appears twice"),
        ("x=nope", "nope"),
        ("a.b=uce", "LABEL=METHOD"),
        ("a/b=uce", "LABEL=METHOD"),
        ("unedited=uce", "reserved"),
    ):
        assert main(["bench", "--model", "tiny-sd", "--methods", bad, "--out", str(tmp_path / "x")]) == 2
        assert msg in capsys.readouterr().err


# ----------------------------------------------------------------------------- tinyworld end to end
needs_tinyworld = pytest.mark.skipif(
    not (
        _tinyworld_judge_path().is_file()
        and (_tinyworld_judge_path().parent / "pipeline" / "model_index.json").is_file()
    ),
    reason="shipped tinyworld weights are missing",
)


@needs_tinyworld
def test_tinyworld_erasure_is_measured(tmp_path):
    """On the bundled model the instrument measures something: the unedited model shows the named
    shape, UCE on all token positions removes it, the neighbouring shapes survive. (UCE's default,
    the last concept token only, leaves tinyworld's circles in place: the concept also lives in the
    EOS / padding positions.)"""
    from erasekit.evaluate.bench import tinyworld_concept_set
    from erasekit.evaluate.judges import TinyworldConceptJudge
    from erasekit.evaluate.plan import Plan, make_study

    pipe = erasekit.load_pipeline("tinyworld")
    cs = tinyworld_concept_set("circle")
    edit = erasekit.erase(pipe, "uce", cs, token="all", progress=False)
    study = make_study("circle", cs, {"uce": edit}, Plan(kinds=("target", "retain"), n=8), tinyworld=True)
    res = evaluate(
        pipe,
        [study],
        TinyworldConceptJudge(),
        out_dir=tmp_path,
        cache_dir=tmp_path / "c",
        settings=GenerationSettings(steps=12, guidance=5.0, batch_size=16),
        n_boot=200,
        progress=False,
    )
    run = res.studies["circle"]["uce"]
    before, after = run.baseline["erase rate"].value, run.metrics["erase rate"].value
    assert before <= 0.5 and after >= before + 0.25, (before, after)
    assert run.metrics["retain rate"].value >= 0.5


# ----------------------------------------------------------------------------- calibrated attacks, paired statistics
def test_headline_eta_rule():
    from erasekit.evaluate.attacks import headline_eta

    # kept at η = 0 is 0.8: 90 % of it is 0.72 -> η = 2 (0.75) is the strongest that qualifies, not η = 3 (0.5)
    assert headline_eta([1, 2, 3], [0.8, 0.75, 0.5], 0.8)[0] == 2.0
    assert headline_eta([1, 2, 3], [0.9, 0.9, 0.9], 0.8)[0] == 3.0
    eta, rule = headline_eta([1, 2], [0.1, 0.0], 0.8)
    assert eta == 0.0 and "none does" in rule
    eta, rule = headline_eta([1, 2], [None, None], None)
    assert eta == 2.0 and "no attribute judge" in rule


def test_concept_vector_shift_reaches_sdxl_pooled_embedding(tiny_pipes):
    from erasekit.evaluate.attacks import concept_vector, encode, shifted_conditioning

    xl = tiny_pipes["sdxl"]
    vec = concept_vector(xl, ["a red circle"], ["a red shape"])
    assert set(vec) == {"prompt_embeds", "pooled_prompt_embeds"} and vec["pooled_prompt_embeds"].abs().sum() > 0
    cond = shifted_conditioning(xl, [SuiteItem("a blue square", 0, shift=("v", 1.5))], {"v": vec})
    base = encode(xl, ["a blue square"])
    for k in vec:
        torch.testing.assert_close(cond[k][0], base[k][0] + 1.5 * vec[k])


def test_several_etas_each_get_their_own_suite_metric_and_headline(sd, edit, clip_dir, tmp_path):
    """Regression: with several η every strength has its own suite, metric and curve point (a results.json once
    carried one study key, ``ring-a-bell@3``, for all of them); the headline follows the stated rule; every method is
    compared paired with the unedited model and with the other method, Holm-corrected."""
    from erasekit.evaluate.attacks import concept_set_pairs, headline_eta

    other = erasekit.erase(sd, "uce", ["circle"], kind="object", preserve=["square"], erase_scale=0.5, progress=False)
    cs = erasekit.ConceptSet(erase=("circle",), kind="object")
    study = _study(edit, [ConceptVectorAttack(*concept_set_pairs(cs), etas=(3, 1))], n_seeds=2)
    study.edits = {"uce": edit, "uce_half": other}
    study.attributes = lambda prompt: ("circle",) if "circle" in prompt else ()
    res = evaluate(
        sd,
        [study],
        CLIPJudge(clip_dir),
        out_dir=tmp_path / "o",
        settings=SETTINGS,
        cache_dir=tmp_path / "c",
        n_boot=100,
        progress=False,
    )
    run = res.studies["circle"]["uce"]
    assert [n for n in run.suites if n.startswith("adversarial")] == [
        "adversarial:ring-a-bell@1",
        "adversarial:ring-a-bell@3",
    ]
    for eta in (1, 3):
        s = run.suites[f"adversarial:ring-a-bell@{eta}"]
        assert {it.shift[1] for it in s.suite} == {float(eta)} and s.suite.info["eta"] == eta
        assert run.metrics[f"ASR ring-a-bell@{eta}"].k == int(s.seen("edited").sum())
    a = res.attacks["circle"]["ring-a-bell"]
    assert [p["eta"] for p in a["curve"]] == [0.0, 1.0, 3.0] and [p["suite"] for p in a["curve"]][1:] == [
        "adversarial:ring-a-bell@1",
        "adversarial:ring-a-bell@3",
    ]
    kept = [p["unedited attributes kept"].value for p in a["curve"]]
    assert a["headline_eta"] == headline_eta([1.0, 3.0], kept[1:], kept[0])[0]
    head = [k for k in run.metrics if "headline" in k]
    assert head == [f"ASR ring-a-bell (headline η = {a['headline_eta']:g})"]
    # paired: each method vs unedited and uce vs uce_half, on erase, retain and the headline ASR
    pairs = {(c.metric, c.a, c.b) for c in res.paired["circle"]}
    for metric in ("erase rate", "retain rate", head[0]):
        assert {(metric, "uce", "unedited"), (metric, "uce_half", "unedited"), (metric, "uce", "uce_half")} <= pairs
    from erasekit.evaluate import stats as S

    ps = [c.p for c in res.paired["circle"]]
    assert [c.p_holm for c in res.paired["circle"]] == pytest.approx(S.holm(ps))
    assert all(c.significant == (c.p_holm < 0.05) for c in res.paired["circle"])
    c = next(c for c in res.paired["circle"] if (c.metric, c.a, c.b) == ("erase rate", "uce", "unedited"))
    assert c.rate_a == pytest.approx(run.metrics["erase rate"].value) and c.rate_b == pytest.approx(
        run.baseline["erase rate"].value
    )
    d = json.loads(write_json(res, tmp_path / "results.json").read_text())
    assert d["schema"] == 3 and d["attacks"]["circle"]["ring-a-bell"]["headline_eta"] == a["headline_eta"]
    assert len(d["paired"]["circle"]) == len(res.paired["circle"])
