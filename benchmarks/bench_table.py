"""A results.json from ``erasekit bench`` as one markdown table (for notes, READMEs, papers).

    python benchmarks/bench_table.py RESULTS.json [RESULTS2.json ...] [--labels default,published]
        [--metrics erase,paraphrase,retain,asr,H]

One row per (study, method): the rate and its 95 % bootstrap interval for each metric, fit seconds
and edit bytes. With several files (same studies and methods, e.g. with and without
``--published-defaults``) each metric gets one column per file, labelled by ``--labels``.
The unedited model's row comes first in each study. ``asr`` is the headline ring-a-bell ASR
(the strongest η at which the unedited model keeps its prompted attributes; see the report).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = {  # short name -> key in results.json's metrics
    "erase": "erase rate",
    "paraphrase": "paraphrase erase rate",
    "retain": "retain rate",
    "H": "harmonic mean",
}


def _metric(metrics: dict, short: str) -> dict | None:
    if short == "asr":  # each run records one headline ASR, named with its η
        return next((v for k, v in metrics.items() if k.startswith("ASR ") and "headline" in k), None)
    return metrics.get(METRICS[short])


def _cell(m: dict | None) -> str:
    if m is None or m.get("value") is None:
        return "–"
    v, lo, hi = (round(100 * m[k]) if m.get(k) is not None else None for k in ("value", "low", "high"))
    return f"{v}" if lo is None else f"{v} [{lo}–{hi}]"


def table(results: list[dict], labels: list[str], metrics: list[str]) -> str:
    first = results[0]
    head = ["concept", "method"]
    for m in metrics:
        head += [m if len(results) == 1 else f"{m} ({lab})" for lab in labels]
    head += [f"fit s ({lab})" if len(results) > 1 else "fit s" for lab in labels]
    head += [f"bytes ({lab})" if len(results) > 1 else "bytes" for lab in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for study, runs in first["studies"].items():
        some = next(iter(runs.values()))
        base = (
            ["", "unedited"]
            + [_cell(_metric(some["unedited_metrics"], m)) if m != "H" else "–" for m in metrics for _ in results]
            + ["–"] * (2 * len(results))
        )
        base[0] = study
        lines.append("| " + " | ".join(base) + " |")
        for method in runs:
            row = [study, method]
            for m in metrics:
                for r in results:
                    run = r["studies"].get(study, {}).get(method)
                    row.append(_cell(_metric(run["metrics"], m)) if run else "–")
            for r in results:
                fs = r["config"].get("fit_seconds", {}).get(f"{study}/{method}")
                row.append("–" if fs is None else f"{fs:.1f}")
            for r in results:
                run = r["studies"].get(study, {}).get(method)
                row.append("–" if run is None else f"{run['edit']['bytes']:,}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path, help="results.json files of erasekit bench")
    ap.add_argument("--labels", default=None, help="comma-separated, one per file (default: the parent folder names)")
    ap.add_argument("--metrics", default="erase,paraphrase,retain,asr,H", help=f"from {', '.join([*METRICS, 'asr'])}")
    args = ap.parse_args()
    results = [json.loads(p.read_text()) for p in args.results]
    labels = args.labels.split(",") if args.labels else [p.parent.name for p in args.results]
    if len(labels) != len(results):
        raise SystemExit(f"--labels has {len(labels)} names for {len(results)} files")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in (*METRICS, "asr")]
    if bad:
        raise SystemExit(f"unknown metric(s) {bad}; choose from {', '.join([*METRICS, 'asr'])}")
    print(table(results, labels, metrics))


if __name__ == "__main__":
    main()
