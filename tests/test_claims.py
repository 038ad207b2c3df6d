"""The claims table: verdict rules (inside the package) on synthetic comparisons and hand-made results, the
benchmark script as a thin caller, and ``erasekit claims`` end to end at its --small size."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from erasekit.evaluate import claims, claims_run
from erasekit.evaluate import metrics as M
from erasekit.evaluate.results import MethodRun, Results
from erasekit.evaluate.stats import Comparison

REPO = Path(__file__).resolve().parents[1]
CLAIM_IDS = [
    "SPACE-1",
    "SPACE-2",
    "SPACE-3",
    "SPACE-4",
    "SPACE-5",
    "SPACE-6",
    "PURE-1",
    "PURE-2",
    "PURE-3",
    "ACE-1",
    "ACE-2",
    "ACE-3",
    "RECE-1",
    "SPEED-1",
    "MACE-1",
]
VERDICTS = ("holds", "holds partly", "does not hold", "not measurable here")


def _c(diff, significant, a="space", b="uce", metric="erase rate"):
    return Comparison(
        metric,
        a,
        b,
        0.5 + diff / 2,
        0.5 - diff / 2,
        diff,
        diff - 0.1,
        diff + 0.1,
        96,
        96,
        0,
        0,
        0.01 if significant else 0.5,
        0.02 if significant else 0.9,
        significant,
    )


def test_verdict_rules():
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


def test_find_orients_the_comparison():
    c = _c(0.2, True, a="uce", b="space")
    flipped = claims.find([c], "erase rate", "space", "uce")
    assert flipped.diff == pytest.approx(-0.2) and (flipped.low, flipped.high) == pytest.approx((-0.3, -0.1))
    assert flipped.rate_a == c.rate_b and flipped.significant
    assert claims.find([c], "retain rate", "space", "uce") is None


# ----------------------------------------------------------------------------- the table on hand-made results
def _est(name, value, half=0.05, n=96):
    return M.Estimate(name, value, max(0.0, value - half), min(1.0, value + half), n, round(value * n))


def _measured(space=None, pure_seconds=None, erase_cmp=None, model="tinyworld", xl=None) -> claims.Measured:
    """One study "circle": UCE always, SPACE with ``space`` = (sparsity, saved share) when given."""
    runs = {
        "uce": MethodRun(
            "uce", {"bytes": 100, "dense_fp32_bytes": 100}, {}, {}, metrics={"erase rate": _est("erase rate", 0.5)}
        )
    }
    paired = []
    if space is not None:
        sparsity, saved = space
        runs["space"] = MethodRun(
            "space",
            {"sparsity": sparsity, "bytes": round(1000 * (1 - saved)), "dense_fp32_bytes": 1000},
            {},
            {},
            metrics={"erase rate": _est("erase rate", 0.9)},
        )
        paired.append(erase_cmp or _c(0.4, True, a="space", b="unedited"))
    res = Results({"circle": runs}, {}, {}, {}, {"circle": paired}, {"circle": {}})
    infer = {"unedited": 1.0} if pure_seconds is None else {"unedited": 1.0, "pure": pure_seconds}
    return claims.Measured(model, res, "circle", {}, {}, infer, "test CPU", xl)


def _verdicts(m) -> dict[str, claims.Claim]:
    rows = claims.judge_claims(m)
    assert [r.id for r in rows] == CLAIM_IDS and all(r.verdict in VERDICTS and r.model == m.model for r in rows)
    assert all(r.why for r in rows if r.verdict == claims.NA)  # an unmeasured row says why
    return {r.id: r for r in rows}


def test_the_verdict_rules_live_in_the_package():
    assert list(claims.CLAIMS) == CLAIM_IDS and all(callable(c.judge) and c.rule for c in claims.CLAIMS.values())
    spec = importlib.util.spec_from_file_location("claims_script", REPO / "benchmarks" / "claims.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main is claims_run.main  # the benchmark is a thin caller
    assert not [k for k, v in vars(script).items() if callable(v) and getattr(v, "__module__", "") == script.__name__]


@pytest.mark.parametrize(
    "saved, verdict", [(0.70, "holds"), (0.65, "holds"), (0.55, "holds partly"), (0.30, "does not hold")]
)
def test_a_threshold_claim_holds_above_its_threshold_and_not_below(saved, verdict):
    """SPACE-2: holds at ≥ 65 % storage saved, partly at ≥ 50 %, otherwise does not hold."""
    row = _verdicts(_measured(space=(0.85, saved)))["SPACE-2"]
    assert row.verdict == verdict and f"{100 * saved:.1f} % less" in row.numbers


def test_a_claim_with_a_statistical_rule_needs_its_significant_comparison():
    holds = _verdicts(_measured(space=(0.85, 0.7)))["SPACE-1"]
    unsure = _verdicts(_measured(space=(0.85, 0.7), erase_cmp=_c(0.05, False, a="space", b="unedited")))["SPACE-1"]
    out_of_range = _verdicts(_measured(space=(0.5, 0.7)))["SPACE-1"]
    assert (holds.verdict, unsure.verdict, out_of_range.verdict) == ("holds", "holds partly", "does not hold")
    # the comparison is found whichever way round it was stored
    flipped = _verdicts(_measured(space=(0.85, 0.7), erase_cmp=_c(-0.4, True, a="unedited", b="space")))["SPACE-1"]
    assert flipped.verdict == "holds"


@pytest.mark.parametrize("seconds, verdict", [(1.05, "holds"), (0.95, "holds"), (1.2, "does not hold")])
def test_inference_cost_within_ten_percent_holds(seconds, verdict):
    assert _verdicts(_measured(pure_seconds=seconds))["PURE-3"].verdict == verdict


def test_what_was_not_measured_says_why():
    rows = _verdicts(_measured())  # no SPACE, PURE, ACE... run; no tinyworld-xl
    assert rows["SPACE-1"].verdict == "not measurable here" and "SPACE is not registered" in rows["SPACE-1"].why
    assert rows["SPACE-4"].verdict == "not measurable here" and "tinyworld-xl" in rows["SPACE-4"].why
    assert rows["PURE-3"].verdict == "not measurable here"
    xl = _verdicts(_measured(model="tinyworld-xl"))["SPACE-4"]
    assert xl.why == "judged on the tinyworld row"
    missing = claims.not_installed("tinyworld-xl")
    assert missing.verdict == "not measurable here" and "not installed" in missing.why
    table = [*rows.values(), missing]
    md = claims.claims_markdown(table, "# t")
    n_na = sum(r.verdict == "not measurable here" for r in table)
    assert "| **tinyworld-xl** |" in md and f"not measurable here: {n_na}" in md


def test_claims_command_small_end_to_end_and_resumes(tmp_path, monkeypatch):
    n = torch.get_num_threads()
    out = tmp_path / "claims"
    try:
        assert claims_run.main(["--small", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
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
    assert res["schema"] == 3 and res["paired"]["circle"] and res["attacks"]["circle"]["ring-a-bell"]["rule"]
    assert {c["id"] for c in res["config"]["claims"]} == set(CLAIM_IDS)
    page = (out / "tinyworld" / "report.html").read_text()
    plots = sorted(p.name for p in (out / "tinyworld" / "plots").glob("*.png"))
    assert {
        "tradeoff-circle.png",
        "attack-circle-ring-a-bell.png",
        "space-sparsity-sweep.png",
        "concepts-curve.png",
    } <= set(plots)
    assert page.count("data:image/png;base64,") >= len(plots) and "<h2>Claims</h2>" in page
    # resumable: the second run refits nothing and generates no image
    import erasekit.api

    fits = (out / "fits.json").read_text()
    monkeypatch.setattr(erasekit.api, "fit", lambda *a, **k: pytest.fail("refitted an edit that was saved"))
    try:
        again_argv = ["--small", "--out", str(out), "--no-progress", "--threads", "1", "--models", "tinyworld"]
        assert claims_run.main(again_argv) == 0
    finally:
        torch.set_num_threads(n)
    assert (out / "fits.json").read_text() == fits
    again = json.loads((out / "tinyworld" / "results.json").read_text())
    assert again["timing"]["images_generated"] == 0
    assert again["studies"]["circle"]["space"]["metrics"] == res["studies"]["circle"]["space"]["metrics"]
