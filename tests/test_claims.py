"""The claims table v2: every claim's rules (erasekit's and the paper's scoring) on small synthetic ``Measured`` inputs,
both ways; the many-concepts score's orientation; ``measured.json`` round trip; the table with both scorings; the
benchmark script as a thin caller; and ``erasekit claims`` end to end at its --small size (slow)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from erasekit.evaluate import claims, claims_run
from erasekit.evaluate import metrics as M
from erasekit.evaluate.claims import (
    FAILS,
    HOLDS,
    NA,
    PARTLY,
    Evidence,
    HMeanCell,
    HMeanRow,
    ManyPoint,
    Measured,
    TauPoint,
)
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
    "PURE-4",
    "PURE-5",
    "PURE-6",
    "ACE-1",
    "ACE-2",
    "ACE-3",
    "RECE-1",
    "SPEED-1",
    "MACE-1",
]
VERDICTS = (HOLDS, PARTLY, FAILS, NA)


def _c(diff, significant, a="space", b="uce", metric="erase rate", rate_a=None):
    ra = 0.5 + diff / 2 if rate_a is None else rate_a
    return Comparison(
        metric,
        a,
        b,
        ra,
        ra - diff,
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


def _est(value, half=0.05, name="rate", n=96):
    return M.Estimate(name, value, max(0.0, value - half), min(1.0, value + half), n, round(value * n))


def _pts(value, half=1.0):
    return M.Estimate("CLIP_R − CLIP_E (points)", value, value - half, value + half, 24)


def _judge(spec_id: str, arg) -> claims.Scored:
    return claims.CLAIMS[spec_id].judge(arg)


# ----------------------------------------------------------------------------- shared rules
def test_verdict_rules():
    H, P, F = HOLDS, PARTLY, FAILS
    assert claims.better_rule([_c(0.2, True), _c(0.1, True)]) == H
    assert claims.better_rule([_c(0.2, True), _c(0.05, False)]) == P
    assert claims.better_rule([_c(0.02, False), _c(0.05, False)]) == P
    assert claims.better_rule([_c(0.2, True), _c(-0.3, True)]) == F
    assert claims.better_rule([_c(-0.02, False)]) == F
    assert claims.better_rule([_c(-0.2, True)], higher_is_better=False) == H  # attack success: lower is better
    assert claims.better_rule([]) == NA  # nothing to compare is not a verdict
    assert claims.at_least_rule([_c(0.0, False), _c(0.1, False)]) == H
    assert claims.at_least_rule([_c(-0.05, False)]) == P
    assert claims.at_least_rule([_c(-0.3, True)]) == F


def test_best_rule_ranks_as_a_table_does():
    clear = {"pure": (0.9, 0.85, 0.95), "uce": (0.5, 0.4, 0.6), "cure": (0.6, 0.5, 0.7)}
    assert claims.best_rule(clear, "pure") == HOLDS
    close = {"pure": (0.62, 0.55, 0.7), "uce": (0.6, 0.5, 0.7)}
    assert claims.best_rule(close, "pure") == PARTLY  # best point, interval overlaps the runner-up's point
    behind_overlap = {"pure": (0.58, 0.5, 0.66), "uce": (0.6, 0.5, 0.7)}
    assert claims.best_rule(behind_overlap, "pure") == PARTLY
    behind = {"pure": (0.3, 0.25, 0.35), "uce": (0.6, 0.5, 0.7)}
    assert claims.best_rule(behind, "pure") == FAILS
    assert claims.best_rule({"uce": (0.9, 0.8, 1.0), "pure": (0.1, 0.0, 0.2)}, "pure", higher_is_better=False) == HOLDS
    assert claims.best_rule({"pure": (0.5, 0.4, 0.6)}, "pure") == NA


def test_find_orients_the_comparison():
    c = _c(0.2, True, a="uce", b="space")
    flipped = claims.find([c], "erase rate", "space", "uce")
    assert flipped.diff == pytest.approx(-0.2) and (flipped.low, flipped.high) == pytest.approx((-0.3, -0.1))
    assert flipped.rate_a == c.rate_b and flipped.significant
    assert claims.find([c], "retain rate", "space", "uce") is None


# ----------------------------------------------------------------------------- the many-concepts score
def test_clip_gap_orientation_and_interval():
    rng = np.random.default_rng(0)
    kept = rng.uniform(0.85, 1.0, 24)
    unedited = claims.clip_gap(kept, rng.uniform(0.85, 1.0, 24))
    erased = claims.clip_gap(kept, rng.uniform(0.0, 0.1, 24))
    erased_and_damaged = claims.clip_gap(kept * 0.5, rng.uniform(0.0, 0.1, 24))
    assert abs(unedited.value) < 10  # the unedited model scores about 0
    assert erased.value > 80 > erased_and_damaged.value > unedited.value  # higher is better, both ways
    for e in (unedited, erased, erased_and_damaged):
        assert e.low <= e.value <= e.high
    # unpaired suites (different sizes) are resampled independently and still bracket the point
    odd = claims.clip_gap(kept[:10], rng.uniform(0.0, 0.1, 24))
    assert odd.low <= odd.value <= odd.high
    with pytest.raises(claims.ClaimsError):
        claims.clip_gap(np.array([]), np.array([0.5]))


# ----------------------------------------------------------------------------- synthetic Measured, both ways
def _many(score_pure, score_mace, erase_pure=0.9, retain_last=0.9, erase_mace=0.5):
    def pts(score, erase):
        return [
            ManyPoint(1, _est(0.95), _est(0.95), 5.0, 95.0, _pts(90.0)),
            ManyPoint(12, _est(erase), _est(retain_last), 10.0, 60.0, _pts(score)),
        ]

    return {
        "pure": pts(score_pure, erase_pure),
        "mace": pts(score_mace, erase_mace),
        "ace": pts(0.0, erase_mace),
        "uce": pts(10.0, 0.3),
        "cure": pts(-1.0, 0.1),
    }


def _hmean(pure_avg):
    def row(avg):
        cell = HMeanCell(avg, avg - 0.03, avg + 0.03, 0.9, 0.9, 0.9, 0.9)
        return HMeanRow({"shape": cell, "color": cell, "pattern": cell}, avg, avg - 0.03, avg + 0.03)

    return {"pure": row(pure_avg), "cure": row(0.5), "uce": row(0.45), "unedited": row(0.99)}  # not a competitor


def _measured(good: bool, model="tinyworld") -> Measured:
    """A model on which every per-model claim holds (``good``) or does not."""
    g = good
    metrics = {
        lb: {
            "erase rate": _est(0.9 if (lb == "space") == g else 0.5),
            "drift: judge agreement": _est(0.97 if g else 0.6, half=0.02),
            "harmonic mean": _est(0.95 if (lb == "pure") == g else 0.6, half=0.02),
        }
        for lb in ("space", "uce_all", "uce", "rece", "pure", "pure_text", "cure", "ace", "speed")
    }
    head = "ASR ring-a-bell (headline η = 2)"
    s = 1 if g else -1
    paired = [
        _c(0.4 if g else 0.05, g, a="space", b="unedited"),
        *[_c(s * 0.3, True, a="space", b=b) for b in ("uce_all", "uce", "rece")],
        *[_c(s * 0.3, True, a="space", b=b, metric="paraphrase erase rate") for b in ("uce_all", "uce", "rece")],
        *[_c(-s * 0.3, True, a="space", b=b, metric=head) for b in ("uce_all", "uce", "rece")],
        *[_c(-s * 0.3, True, a="space", b=b, metric="ASR nbp") for b in ("uce_all", "uce", "rece")],
        *[_c(s * 0.3, True, a="pure", b=b, metric="paraphrase erase rate") for b in ("uce", "uce_all", "cure")],
        *[_c(-s * 0.3, True, a="pure", b=b, metric=f"ASR {a}") for a in ("uda", "mma") for b in ("uce", "space")],
        _c(0.9 if g else 0.1, g, a="ace", b="unedited", rate_a=0.9 if g else 0.1),
        _c(0.9 if g else 0.1, g, a="ace", b="unedited", metric="paraphrase erase rate", rate_a=0.9 if g else 0.1),
        _c(0.0, False, a="ace", b="unedited", metric="retain rate", rate_a=1.0),
        _c(-s * 0.3, True, a="rece", b="uce", metric=head),
        _c(s * 0.3, True, a="speed", b="uce", metric="retain rate"),
    ]
    lo, hi = (0.1, 0.9) if g else (0.9, 0.1)
    attacks = {
        "uda": {"pure": _est(lo), "uce": _est(hi), "space": _est(0.5)},
        "mma": {"pure": _est(lo), "uce": _est(hi), "space": _est(0.5)},
        "nbp": {"space": _est(lo), "uce_all": _est(hi), "uce": _est(hi), "rece": _est(hi)},
    }
    for lb in ("space", "uce_all", "uce", "rece"):
        metrics[lb][head] = _est(lo if lb == "space" else hi)
    return Measured(
        model=model,
        n=96,
        metrics=metrics,
        paired=paired,
        edits={"space": {"sparsity": 0.85 if g else 0.5, "bytes": 300 if g else 900, "dense_fp32_bytes": 1000}},
        head=head,
        attacks=attacks,
        hmean=_hmean(0.9 if g else 0.3),
        many=_many(
            95.0 if g else 5.0,
            50.0 if g else -5.0,
            erase_pure=0.98 if g else 0.2,
            retain_last=0.9 if g else 0.2,
            erase_mace=0.82 if g else 0.5,
        ),
        fits={f"{model}/circle/ace": 5.0 if g else 120.0},
        inference={"unedited": 1.0, "pure": 1.02 if g else 1.5},
        hardware="test CPU",
    )


PER_MODEL = [i for i in CLAIM_IDS if claims.CLAIMS[i].scope == "model"]


@pytest.mark.parametrize("cid", PER_MODEL)
def test_each_per_model_claim_holds_and_fails_on_synthetic_inputs(cid):
    good, bad = _judge(cid, _measured(True)), _judge(cid, _measured(False))
    assert good.ours.verdict == HOLDS, (cid, good.ours)
    assert bad.ours.verdict == FAILS, (cid, bad.ours)
    if good.paper is not None and cid != "PURE-1":  # PURE-1's paper scoring is PURE-2's (said so in the row)
        assert (good.paper.verdict, bad.paper.verdict) == (HOLDS, FAILS), (cid, good.paper, bad.paper)


def test_what_was_not_measured_says_why():
    empty = Measured("tinyworld")
    rows = claims.judge_claims(Evidence({"tinyworld": empty}))
    assert [r.id for r in rows] == CLAIM_IDS
    assert all(r.ours.verdict == NA and r.ours.why for r in rows)
    scale_only = claims.judge_claims(Evidence({"tinyworld-xl": claims.not_installed("tinyworld-xl")}))
    assert all(r.ours.verdict == NA for r in scale_only)


def _scale_model(model, diff, low, high):
    m = Measured(model, metrics={"space": {"erase rate": _est(0.5 + diff)}, "uce_all": {"erase rate": _est(0.5)}})
    m.paired = [Comparison("erase rate", "space", "uce_all", 0.5 + diff, 0.5, diff, low, high, 96, 96, 0, 0, 0.1)]
    return m


def test_space_4_is_judged_across_three_models_in_order_of_scale():
    grows = Evidence(
        {
            "tinyworld": _scale_model("tinyworld", 0.0, -0.05, 0.05),
            "tinyworld-xl": _scale_model("tinyworld-xl", 0.1, 0.02, 0.18),
            "tinyworld-flux": _scale_model("tinyworld-flux", 0.3, 0.2, 0.4),
        }
    )
    s = _judge("SPACE-4", grows)
    assert (s.ours.verdict, s.paper.verdict) == (HOLDS, HOLDS) and "tinyworld-flux" in s.ours.numbers
    shrinks = Evidence(
        {
            "tinyworld-flux": _scale_model("tinyworld-flux", -0.2, -0.3, -0.1),  # given out of order: sorted by scale
            "tinyworld": _scale_model("tinyworld", 0.0, -0.05, 0.05),
            "tinyworld-xl": _scale_model("tinyworld-xl", -0.1, -0.2, 0.0),
        }
    )
    s = _judge("SPACE-4", shrinks)
    assert (s.ours.verdict, s.paper.verdict) == (FAILS, FAILS)
    one = _judge("SPACE-4", Evidence({"tinyworld": _scale_model("tinyworld", 0.0, -0.05, 0.05)}))
    assert one.ours.verdict == NA and "two models" in one.ours.why


def _tau(activation_target):
    pts = []
    for c in ("circle", "red"):
        pts.append(TauPoint(c, "none", None, 0.9, 0.9))
        for t in (0.5, 0.9, 0.99):
            pts += [TauPoint(c, "activation", t, activation_target, 0.9), TauPoint(c, "text", t, 0.85, 0.9)]
    return pts


def test_pure_flux_claim_reads_the_tau_sweep_both_ways():
    flux_good = Measured(
        "tinyworld-flux",
        metrics={"pure": {}, "pure_text": {}},
        paired=[_c(0.4, True, a="pure", b="pure_text"), _c(0.5, True, a="pure", b="unedited")],
    )
    good = _judge("PURE-6", Evidence({"tinyworld-flux": flux_good}, _tau(0.2)))
    assert (good.ours.verdict, good.paper.verdict) == (HOLDS, HOLDS)
    flux_bad = Measured(
        "tinyworld-flux",
        metrics={"pure": {}, "pure_text": {}},
        paired=[_c(-0.2, True, a="pure", b="pure_text"), _c(0.0, False, a="pure", b="unedited")],
    )
    bad = _judge("PURE-6", Evidence({"tinyworld-flux": flux_bad}, _tau(0.95)))
    assert (bad.ours.verdict, bad.paper.verdict) == (FAILS, FAILS)
    none = _judge("PURE-6", Evidence({}))
    assert none.ours.verdict == NA and none.paper.verdict == NA and "--tau-sweep" in none.paper.why


def test_the_docs_tau_sweep_parses(tmp_path):
    pts = claims_run.read_tau_sweep(REPO / "docs" / "data" / "pure_tau_sweep_flux.json")
    assert {p.basis for p in pts} == {"none", "activation", "text"} and all(0 <= p.target <= 1 for p in pts)
    bad = tmp_path / "x.json"
    bad.write_text('{"rows": [{"concept": "circle"}]}')
    with pytest.raises(claims.ClaimsError, match="not a sweep.json"):
        claims_run.read_tau_sweep(bad)


def test_measured_round_trips_through_json():
    m = _measured(True)
    back = Measured.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m
    rows_a = claims.judge_claims(Evidence({"tinyworld": m}))
    rows_b = claims.judge_claims(Evidence({"tinyworld": back}))
    assert [(r.ours, r.paper) for r in rows_a] == [(r.ours, r.paper) for r in rows_b]
    with pytest.raises(claims.ClaimsError):
        Measured.from_dict({"model": "tinyworld", "many": {"pure": [{"k": 1}]}})


def test_the_table_shows_both_scorings_and_the_published_numbers():
    ev = Evidence(
        {"tinyworld": _measured(True), "tinyworld-flux": _measured(False, "tinyworld-flux")},
        _tau(0.95),
    )
    rows = claims.judge_claims(ev)
    assert {r.model for r in rows} == {"tinyworld", "tinyworld-flux", "across models"}
    md = claims.claims_markdown(rows, "# t")
    header = next(line for line in md.splitlines() if line.startswith("| id | claim | published"))
    assert "tinyworld" in header and "tinyworld-flux" in header and "across models" in header
    pure2 = next(line for line in md.splitlines() if line.startswith("| PURE-2 |"))
    assert "0.640" in pure2 and "**holds** · _holds_" in pure2 and "**does not hold** · _does not hold_" in pure2
    space2 = next(line for line in md.splitlines() if line.startswith("| SPACE-2 |"))
    assert "= erasekit's" in space2  # the paper scores storage the same way
    assert "CLIP_R − CLIP_E" in md and "UDA 34.7 %" in md and "### Rules" in md
    # the paper-scoring measurements behind the rows: H-mean per category, CLIP_R − CLIP_E per k, raw ASRs
    m = _measured(True)
    m.refused = {"cce": "cce needs gradients through the text encoder"}
    tables = claims.paper_tables_markdown({"tinyworld": m, "tinyworld-xl": Measured("tinyworld-xl", scope="scale")})
    assert "PURE's H-mean" in tables and "| pure | " in tables and "k = 12" in tables
    assert "| uda | " in tables and "refused: cce needs gradients" in tables and "tinyworld-xl" not in tables
    # every row of the numbers table carries both verdicts
    numbers = [line for line in md.splitlines() if re.match(r"\| (tinyworld|tinyworld-flux|across models) \|", line)]
    assert len(numbers) == len(rows)


def test_the_claims_live_in_the_package_and_the_script_is_a_thin_caller():
    assert list(claims.CLAIMS) == CLAIM_IDS
    assert all(callable(c.judge) and c.rule for c in claims.CLAIMS.values())
    with pytest.raises(claims.ClaimsError, match="twice"):
        claims.claim("SPACE-1", "x", "y", "z")(lambda m: claims.Scored(claims.Verdict()))
    spec = importlib.util.spec_from_file_location("claims_script", REPO / "benchmarks" / "claims.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main is claims_run.main
    assert not [k for k, v in vars(script).items() if callable(v) and getattr(v, "__module__", "") == script.__name__]


def test_flux_labels_run_pures_two_variants():
    assert claims_run.label_options("pure", "tinyworld-flux") == ("erasekit", {"sites": "joint"})
    assert claims_run.label_options("pure_text", "tinyworld-flux")[1]["basis"] == "text"
    assert claims_run.label_options("pure", "tinyworld") == ("erasekit", {})
    with pytest.raises(claims.ClaimsError, match="at most 12"):
        claims_run.parse_args(["--out", "x", "--counts", "1,13"])


def test_hmean_labels_default_to_every_method_and_paper_names_pures_table():
    assert claims_run.parse_args(["--out", "x"]).hmean_labels == []  # empty: every label of --methods is scored
    assert claims_run.parse_args(["--out", "x", "--hmean-labels", "paper"]).hmean_labels == list(
        claims_run.PAPER_HMEAN_LABELS
    )
    assert claims_run.parse_args(["--out", "x", "--hmean-labels", "uce, ace"]).hmean_labels == ["uce", "ace"]


@pytest.mark.slow
def test_claims_command_small_end_to_end_and_rejudges(tmp_path, monkeypatch):
    n = torch.get_num_threads()
    out = tmp_path / "claims"
    try:
        assert (
            claims_run.main(["--small", "--out", str(out), "--no-progress", "--threads", "1", "--models", "tinyworld"])
            == 0
        )
    finally:
        torch.set_num_threads(n)
    md = (out / "claims.md").read_text()
    assert "SMALL" in md and "n = 2 prompts per suite" in md
    for cid in CLAIM_IDS:
        assert any(line.startswith(f"| {cid} |") for line in md.splitlines()), cid
    rows = json.loads((out / "claims.json").read_text())["rows"]
    assert {r["id"] for r in rows} == set(CLAIM_IDS)
    m = Measured.from_dict(json.loads((out / "tinyworld" / "measured.json").read_text()))
    assert m.hmean and m.many and m.attacks  # PURE's H-mean, the many-concepts points, the attack rows
    # the H-mean table covers every method label measured, not only PURE's table's (ACE is not in the paper's)
    assert "ace" in m.hmean and set(m.metrics) <= set(m.hmean)
    page = (out / "tinyworld" / "report.html").read_text()
    assert "<h2>Claims</h2>" in page and (out / "tinyworld" / "plots" / "many-concepts-score.png").is_file()
    # re-judged from measured.json alone: no model is loaded, the table is the same
    import erasekit.models.loading

    monkeypatch.setattr(erasekit.models.loading, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    assert claims_run.main(["--small", "--out", str(out), "--rejudge", "--models", "tinyworld"]) == 0
    again = json.loads((out / "claims.json").read_text())["rows"]
    assert [(r["id"], r["ours"]) for r in again] == [(r["id"], r["ours"]) for r in rows]
