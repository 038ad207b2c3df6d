"""benchmarks/claims.py: verdict rules on synthetic comparisons, and the script end to end at its --small size."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from erasekit.evaluate.stats import Comparison

REPO = Path(__file__).resolve().parents[1]
CLAIM_IDS = ["SPACE-1", "SPACE-2", "SPACE-3", "SPACE-4", "SPACE-5", "SPACE-6", "PURE-1", "PURE-2", "PURE-3", "ACE-1", "ACE-2", "ACE-3",
             "RECE-1", "SPEED-1", "MACE-1"]
VERDICTS = ("holds", "holds partly", "does not hold", "not measurable here")


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("claims", REPO / "benchmarks" / "claims.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["claims"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("claims", None)


def _c(diff, significant, a="space", b="uce", metric="erase rate"):
    return Comparison(metric, a, b, 0.5 + diff / 2, 0.5 - diff / 2, diff, diff - 0.1, diff + 0.1, 96, 96, 0, 0, 0.01 if significant else 0.5,
                      0.02 if significant else 0.9, significant)


def test_verdict_rules(claims):
    H, P, F = claims.HOLDS, claims.PARTLY, claims.FAILS
    assert claims.better_rule([_c(0.2, True), _c(0.1, True)]) == H
    assert claims.better_rule([_c(0.2, True), _c(0.05, False)]) == P
    assert claims.better_rule([_c(0.02, False), _c(0.05, False)]) == P
    assert claims.better_rule([_c(0.2, True), _c(-0.3, True)]) == F
    assert claims.better_rule([_c(-0.02, False)]) == F
    assert claims.better_rule([_c(-0.2, True)], higher_is_better=False) == H  # attack success: lower is better
    assert claims.at_least_rule([_c(0.0, False), _c(0.1, False)]) == H
    assert claims.at_least_rule([_c(-0.05, False)]) == P
    assert claims.at_least_rule([_c(-0.3, True)]) == F


def test_find_orients_the_comparison(claims):
    c = _c(0.2, True, a="uce", b="space")
    flipped = claims.find([c], "erase rate", "space", "uce")
    assert flipped.diff == pytest.approx(-0.2) and (flipped.low, flipped.high) == pytest.approx((-0.3, -0.1))
    assert flipped.rate_a == c.rate_b and flipped.significant and claims.find([c], "retain rate", "space", "uce") is None


def test_claims_script_small_end_to_end_and_resumes(claims, tmp_path, monkeypatch):
    n = torch.get_num_threads()
    out = tmp_path / "claims"
    try:
        assert claims.main(["--small", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(n)
    md = (out / "claims.md").read_text()
    assert "SMALL" in md and "n = 2 prompts per suite" in md
    for cid in CLAIM_IDS:
        row = next((line for line in md.splitlines() if line.startswith(f"| {cid} |")), None)
        assert row is not None, f"no row for {cid}"
        verdict = re.search(r"\*\*(.+?)\*\*", row).group(1)
        assert verdict.split(" (")[0] in VERDICTS, row
    rows = json.loads((out / "claims.json").read_text())["rows"]
    assert {r["id"] for r in rows} >= set(CLAIM_IDS) and all(r["verdict"] in VERDICTS for r in rows)
    # measurable here: SPACE's storage claim is a plain computation on the saved edit
    space2 = next(r for r in rows if r["id"] == "SPACE-2")
    assert space2["verdict"] != "not measurable here" and "bytes" in space2["numbers"]
    res = json.loads((out / "tinyworld" / "results.json").read_text())
    assert res["schema"] == 2 and res["paired"]["circle"] and res["attacks"]["circle"]["ring-a-bell"]["rule"]
    assert {c["id"] for c in res["config"]["claims"]} == set(CLAIM_IDS)
    page = (out / "tinyworld" / "report.html").read_text()
    plots = sorted(p.name for p in (out / "tinyworld" / "plots").glob("*.png"))
    assert {"tradeoff-circle.png", "attack-circle-ring-a-bell.png", "space-sparsity-sweep.png", "concepts-curve.png"} <= set(plots)
    assert page.count("data:image/png;base64,") >= len(plots) and "<h2>Claims</h2>" in page
    # resumable: the second run refits nothing and generates no image
    import erasekit

    fits = (out / "fits.json").read_text()
    monkeypatch.setattr(erasekit, "erase", lambda *a, **k: pytest.fail("refitted an edit that was saved"))
    try:
        assert claims.main(["--small", "--out", str(out), "--no-progress", "--threads", "1", "--models", "tinyworld"]) == 0
    finally:
        torch.set_num_threads(n)
    assert (out / "fits.json").read_text() == fits
    again = json.loads((out / "tinyworld" / "results.json").read_text())
    assert again["timing"]["images_generated"] == 0
    assert again["studies"]["circle"]["space"]["metrics"] == res["studies"]["circle"]["space"]["metrics"]
