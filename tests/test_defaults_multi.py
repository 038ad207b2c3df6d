"""Per-model defaults (erasekit.defaults), the bench options bug, and many concepts in one edit."""

import json

import pytest
import torch

import erasekit
from erasekit import defaults
from erasekit.concepts import ConceptSet
from erasekit.errors import ConceptError
from erasekit.evaluate.bench import fit_edits, split_concepts, tinyworld_concept_set
from erasekit.tinyworld import weights_dir


def test_resolve_user_options_win_and_every_default_has_a_reason():
    opts, rec = defaults.resolve("tinyworld", "uce", {"token": "last"})
    assert opts["token"] == "last" and opts["templates"] is True  # the user's token, the model's templates
    assert "token" not in rec["applied"] and rec["user"] == ["token"] and rec["source"] == "erasekit"
    assert all(v["reason"] for v in rec["applied"].values())
    pub, rec = defaults.resolve("tinyworld", "pure", {}, published=True)
    assert pub["centre"] == "none" and pub["retain_energy"] == 0.99 and rec["source"] == "published"
    xl, rec = defaults.resolve("tinyworld-xl", "uce", {})  # the same world, the same defaults
    assert xl == defaults.resolve("tinyworld", "uce", {})[0] and rec["model"] == "tinyworld"
    other, rec = defaults.resolve("some/model", "uce", {})
    assert other == {} and rec["model"] == "*"  # real models start from the papers' settings
    skipped, _ = defaults.resolve("tinyworld", "pure", {}, valid={"centre"})  # a default the method lacks is skipped
    assert "forget_rule" not in skipped and skipped["templates"] is True
    for table in (*defaults.ERASEKIT.values(), defaults.PUBLISHED):
        for method, settings in table.items():
            fields = erasekit.get_method(method).config_class.field_help()
            assert all(k in fields or k in defaults.CONCEPT_OPTIONS for k in settings), (method, settings)


def test_bench_templates_option_reaches_the_concept_set(tiny_pipes, tmp_path):
    # the bug: `bench --set M.templates=true` used to be silently ignored
    cs = ConceptSet(erase=("Van Gogh",), kind="style")
    edits, _ = fit_edits(tiny_pipes["sd"], {"plain": "uce", "tpl": "uce"}, {"vg": cs}, {"tpl": {"templates": True}}, tmp_path,
                         progress=False, defaults={"tpl": {"source": "test"}})
    assert len(edits["vg"]["tpl"].concepts["templates"]) > 1 and edits["vg"]["plain"].concepts["templates"] == ["{}"]
    assert edits["vg"]["tpl"].stats["defaults"] == {"source": "test"}
    saved = erasekit.load_edit(tmp_path / "edits" / "vg-tpl.safetensors", apply=False)
    assert saved.stats["defaults"] == {"source": "test"}
    with pytest.raises(ConceptError, match="ConceptSet"):  # and erase() no longer drops them either
        erasekit.erase(tiny_pipes["sd"], concepts=cs, templates=True)


def test_many_concepts_refusals():
    with pytest.raises(ConceptError, match="same tinyworld concept"):
        tinyworld_concept_set("circle+disc")  # a synonym is the same concept
    with pytest.raises(ConceptError, match="same tinyworld concept"):
        tinyworld_concept_set("red+Red")
    with pytest.raises(ConceptError, match="every pattern"):
        tinyworld_concept_set("solid+striped+dotted+checkered")
    with pytest.raises(ConceptError, match="contained"):
        ConceptSet(erase=("Van Gogh", "Gogh"))
    with pytest.raises(ConceptError, match="duplicate"):
        ConceptSet(erase=("Monet", "monet "))
    with pytest.raises(ConceptError, match="empty"):
        split_concepts("+")
    cs = tinyworld_concept_set("circle+red+striped")
    assert cs.erase == ("circle", "red", "striped")
    assert set(cs.preserve) == {"square", "triangle", "star", "heart", "cross", "green", "blue", "yellow", "purple", "orange",
                                "solid", "dotted", "checkered"}
    assert ConceptSet(erase=("Van Gogh", "Monet")).erase == ("Van Gogh", "Monet")


def test_cli_erase_records_defaults_and_published_switch(tmp_path, capsys):
    from erasekit.cli import main
    from erasekit.models.tiny import save_tiny_pipeline

    model = str(save_tiny_pipeline(tmp_path / "tiny-sd", "sd"))
    out = tmp_path / "e.safetensors"
    assert main(["erase", "--model", model, "--method", "pure", "--erase", "Van Gogh", "--basis", "text", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    rec = erasekit.load_edit(out, apply=False).stats["defaults"]
    assert rec["source"] == "erasekit" and "basis" in rec["user"] and info["method"] == "pure"
    assert main(["erase", "--model", model, "--method", "pure", "--erase", "Van Gogh", "--basis", "text", "--published-defaults",
                 "--out", str(out)]) == 0
    e = erasekit.load_edit(out, apply=False)
    assert e.stats["defaults"]["source"] == "published" and e.config["retain_energy"] == 0.99 and e.config["centre"] == "none"


needs_tinyworld = pytest.mark.skipif(not (weights_dir() / "pipeline" / "model_index.json").is_file(), reason="tinyworld weights not shipped")


@needs_tinyworld
@pytest.mark.slow  # 73 s measured on the shared 2-core machine (over the 60 s budget of the default run)
def test_three_concepts_in_one_edit_erase_each_and_keep_the_rest():
    from erasekit.evaluate.suites import tinyworld_attribute, tinyworld_suites
    from erasekit.generate import generate_pairs
    from erasekit.tinyworld.judge import TinyworldJudge

    torch.manual_seed(0)
    pipe = erasekit.load_pipeline("tinyworld")
    judge = TinyworldJudge.load()
    concepts = ["circle", "red", "striped"]
    opts, _ = defaults.resolve("tinyworld", "uce", {})
    cs = tinyworld_concept_set("+".join(concepts))
    cs = ConceptSet(erase=cs.erase, kind=cs.kind, preserve=cs.preserve, templates=opts.pop("templates"))
    edit = erasekit.erase(pipe, method="uce", concepts=cs, progress=False, **opts)
    target, retain = tinyworld_suites(concepts, n=12, kinds=("target", "retain"))  # 4 items per concept

    def hits(suite):
        img = generate_pairs(pipe, [(it.prompt, it.seed) for it in suite.items], steps=12, guidance=5.0, batch_size=16)
        j = judge.classify(img)
        return [j[tinyworld_attribute(it.concepts[0])[0]][i] == it.concepts[0] for i, it in enumerate(suite.items)]

    base_t, base_r = hits(target), hits(retain)
    edit.apply(pipe)
    try:
        after_t, after_r = hits(target), hits(retain)
    finally:
        edit.revert(pipe)
    for c in concepts:  # each concept, judged on its own named prompts (the existing tolerance: a 0.3 drop)
        idx = [i for i, it in enumerate(target.items) if it.concepts[0] == c]
        before = sum(base_t[i] for i in idx) / len(idx)
        after = sum(after_t[i] for i in idx) / len(idx)
        assert before >= 0.75 and after <= before - 0.3, (c, before, after)
    assert sum(after_r) / len(after_r) >= sum(base_r) / len(base_r) - 0.25  # the values left still drawn
