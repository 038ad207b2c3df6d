"""Pages the issue-13 benchmarks write: self-contained HTML whose every image decodes, built from their JSON output."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("matplotlib")


def _load(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def _run(concept: str, general_drop: float) -> dict:
    rows = [
        dict(
            method="uce",
            prior="none",
            weight=None,
            target_sparsity=None,
            sparsity=0.0,
            fit_s=0.1,
            target=0.9,
            paraphrase=0.8,
            retain=0.8,
            general=0.7,
        )
    ]
    for prior, w in (("none", None), ("general", 1.0)):
        for s in (0.8, 0.9):
            rows.append(
                dict(
                    method="space",
                    prior=prior,
                    weight=w,
                    target_sparsity=s,
                    sparsity=s,
                    fit_s=1.0,
                    target=1.0,
                    paraphrase=0.9,
                    retain=0.9,
                    general=0.9 - (general_drop if prior == "none" else 0.0) * s,
                )
            )
    return dict(args=dict(concept=concept, n=4, steps=2, token="all"), rows=rows)


def test_space_prior_curve_combines_runs_into_one_page(tmp_path):
    spc = _load("space_prior_curve")
    files = []
    for concept, drop in (("circle", 0.5), ("red", 0.2)):
        f = tmp_path / f"{concept}.json"
        f.write_text(json.dumps(_run(concept, drop)))
        files.append(str(f))
    page = tmp_path / "out" / "page.html"
    assert spc.main(["--combine", ",".join(files), "--html", str(page)]) == 0
    text = page.read_text()
    from PIL import Image

    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(imgs) == 2  # one plot per concept, embedded
    for b64 in imgs:
        Image.open(io.BytesIO(base64.b64decode(b64))).verify()
    assert sorted(p.name for p in (page.parent / "plots").iterdir()) == [
        "space-prior-circle.png",
        "space-prior-red.png",
    ]
    for concept in ("circle", "red"):
        assert f"<h2>{concept}</h2>" in text
    assert text.count("<tr>") == 2 * (1 + 5)  # a header and every row of both runs
