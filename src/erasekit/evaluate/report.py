"""Reports: ``results.json`` for machines, one self-contained ``report.html`` for people, a rich table for the terminal.

The page embeds every image as a base64 data URI (PNG for small images, JPEG thumbnails for
large ones), so it can be mailed or archived as one file. Per study and suite it shows a grid
— rows are items, columns the unedited model and each method on the same seeds — under the
metric table (value, bootstrap interval, counts) and the full settings; the paired comparisons
(every method vs the unedited model and vs every other method: paired difference with its
cluster-bootstrap interval, exact McNemar p, Holm-corrected; ★ only when significant after the
correction); the "Attacks" section (per attack: ASR with bootstrap and Wilson intervals beside the unedited
model's rate, the paired tests under that attack, a small grid of adversarial prompts and their images; the
concept-vector curve with its calibrated headline η; the token search judged beside its objective); and plots
(:mod:`~erasekit.evaluate.plots`), embedded and also saved as PNG files in ``plots/`` beside the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .._atomic import write_bytes_atomic
from ..text import plain, shown
from . import plots
from .metrics import Estimate
from .runner import UNEDITED, ImageCache, Results


def _esc(value: object) -> str:
    """HTML text of any value: controls, surrogates and bidi controls first written as visible escapes
    (a lone surrogate cannot be encoded as UTF-8, an escape character would reach a terminal that cats the page)."""
    return html.escape(plain(value), quote=True)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def write_json(results: Results, path: str | Path) -> Path:
    path = Path(path)
    write_bytes_atomic(path, json.dumps(results.to_dict(), indent=1, default=_jsonable).encode())
    return path


def metric_rows(results: Results) -> tuple[list[str], list[tuple[str, str, dict]]]:
    """(metric names in first-seen order, rows of (study, method, {metric: Estimate}));
    an 'unedited' row per study first."""
    names: list[str] = []
    rows = []
    for study, runs in results.studies.items():
        first = next(iter(runs.values()))
        rows.append((study, UNEDITED, first.baseline))
        for label, run in runs.items():
            rows.append((study, label, run.metrics))
    for _, _, ms in rows:
        for k in ms:
            if k not in names:
                names.append(k)
    return names, rows


def _html_cell(est) -> str:
    """Value, then its interval and counts in small print."""
    if est is None or est.n == 0 or np.isnan(est.value):
        return "<td>–</td>"
    scale, digits = (1.0, 4) if "pixel" in est.name else (100.0, 1)
    counts = f"{est.k}/{est.n}" if est.k is not None else f"n={est.n}"
    title = _esc(est.note)
    return (
        f"<td title='{title}'>{scale * est.value:.{digits}f}"
        f"<small>[{scale * est.low:.{digits}f}, {scale * est.high:.{digits}f}]</small>"
        f"<small>{counts}</small></td>"
    )


_SHORT = {
    "erase rate": "erase",
    "paraphrase erase rate": "paraphrase",
    "retain rate": "retain",
    "harmonic mean": "H",
    "drift: judge agreement": "agree",
    "drift: pixel distance": "pixel Δ",
}


def _compact(est) -> str:
    if est is None or est.n == 0 or np.isnan(est.value):
        return "–"
    if "pixel" in est.name:
        return f"{est.value:.3f} [{est.low:.3f}–{est.high:.3f}]"
    return f"{100 * est.value:.0f} [{100 * est.low:.0f}–{100 * est.high:.0f}]"


def print_table(results: Results, title: str = "erasekit evaluation", extra: dict | None = None) -> None:
    """The comparison table: one row per (study, method), rates in % with their 95 % bootstrap interval.

    ``extra`` adds columns: {column: {(study, method): text}}.
    """
    from rich.console import Console
    from rich.table import Table

    names, rows = metric_rows(results)
    extra = extra or {}
    # study names, labels and judge names come from users: shown() keeps rich from reading them as markup
    t = Table(title=f"{shown(title)} — % \\[95 % bootstrap CI]; judge {shown(results.judge.get('judge'))}")
    t.add_column("study")
    t.add_column("method", style="bold")
    for n in names:
        t.add_column(_SHORT.get(n, n), justify="right")
    for col in extra:
        t.add_column(shown(col), justify="right")
    for study, label, ms in rows:
        t.add_row(
            shown(study),
            shown(label),
            *(shown(_compact(ms.get(n))) for n in names),
            *(shown(cells.get((study, label), "")) for cells in extra.values()),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(120, 24 * (len(names) + len(extra) + 2)))
    console.print(t)


def _data_uri(im: Image.Image, thumb: int) -> str:
    buf = io.BytesIO()
    if max(im.size) > 2 * thumb:
        im = im.copy()
        im.thumbnail((thumb * 2, thumb * 2), Image.Resampling.LANCZOS)
        im.save(buf, format="JPEG", quality=85)
        mime = "jpeg"
    else:
        im.save(buf, format="PNG")
        mime = "png"
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}\n"
    "td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top}th{background:#f3f3f3}\n"
    "#metrics td{text-align:right;white-space:nowrap}#metrics td small{color:#777;display:block}\n"
    ".grid img{width:THUMBpx;height:THUMBpx;image-rendering:pixelated;display:block}"
    ".grid td.p{max-width:22em;font-size:12px}\n"
    ".paired td{text-align:right;white-space:nowrap}.sig{font-weight:bold;color:#060}"
    ".figs img{max-width:48%;margin:4px;border:1px solid #ddd}\n"
    ".bad{color:#b00;font-size:11px}.good{color:#070;font-size:11px}"
    "pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}"
)


def figure_html(png: bytes, name: str, folder: Path, alt: str) -> str:
    """Save ``png`` as ``folder/name.png`` and return an <img> that embeds the same bytes
    (the page stays self-contained)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(folder / f"{name}.png", png)
    data = base64.b64encode(png).decode()
    return f"<img id='{_esc(name)}' alt='{_esc(alt)}' src='data:image/png;base64,{data}'>"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def study_figures(results: Results, folder: Path) -> list[str]:
    """Trade-off and attack-curve plots of every study, as <img> tags (PNG files saved in ``folder``)."""
    out = []
    for study, runs in results.studies.items():
        first = next(iter(runs.values()))
        if "erase rate" in first.metrics and "retain rate" in first.metrics:
            pts = {UNEDITED: (first.baseline["erase rate"], first.baseline["retain rate"])}
            pts.update(
                {
                    m: (r.metrics["erase rate"], r.metrics["retain rate"])
                    for m, r in runs.items()
                    if "retain rate" in r.metrics
                }
            )
            out.append(
                figure_html(
                    plots.tradeoff(pts, f"{study}: forget–retain trade-off (95 % intervals)"),
                    f"tradeoff-{_safe(study)}",
                    folder,
                    f"trade-off plot, study {study}",
                )
            )
        for attack, a in results.attacks.get(study, {}).items():
            if "curve" not in a:
                continue
            etas = [p["eta"] for p in a["curve"]]
            methods = {m: [p["methods"].get(m) for p in a["curve"]] for m in runs}
            png = plots.attack_curve(
                etas,
                methods,
                [p["unedited concept rate"] for p in a["curve"]],
                [p["unedited attributes kept"] for p in a["curve"]],
                a["headline_eta"],
                f"{study}: {attack} vs η",
            )
            out.append(
                figure_html(
                    png, f"attack-{_safe(study)}-{_safe(attack)}", folder, f"attack curve, study {study}, {attack}"
                )
            )
        cells = attack_cells(results, study)
        if cells:
            png = plots.attack_matrix(
                cells, list(runs), f"{study}: ASR % [95 % interval] per attack (the unedited model on the same items)"
            )
            out.append(figure_html(png, f"attacks-{_safe(study)}", folder, f"attack × method ASR, study {study}"))
    return out


def attack_cells(results: Results, study: str) -> dict[str, dict[str, tuple[Estimate, Estimate | None]]]:
    """attack -> method -> (ASR, the unedited model's rate on the same attacked items), as the Attacks section
    reports them: Ring-A-Bell at its headline η, every registry attack (and the token search) per method."""
    out: dict[str, dict[str, tuple[Estimate, Estimate | None]]] = {}
    for name, a in results.attacks.get(study, {}).items():
        if "curve" in a:
            point = next((p for p in a["curve"] if p["eta"] == a["headline_eta"]), None)
            if point is None or not a["headline_eta"]:
                continue
            row = {m: (e, point["unedited concept rate"]) for m, e in point["methods"].items() if e is not None}
            label = f"{name} (η = {a['headline_eta']:g})"
        else:
            row = {}
            for m, r in a.get("methods", {}).items():
                asr = r.get("judge ASR") if isinstance(r, dict) else None
                if asr is None:
                    continue
                unedited = next((v for k, v in r.items() if k.startswith("unedited concept rate")), None)
                row[m] = (asr, unedited)
            label = name
        if row:
            out[label] = row
    return out


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}"


def paired_html(results: Results) -> str:
    """One table per study: every paired comparison, ★ only where significant after Holm's correction."""
    e = _esc
    out = [
        "<h2>Paired comparisons</h2><p>Same prompts and seeds for every column, so differences are paired: "
        "Δ = A − B in points, "
        "95 % cluster-bootstrap interval over prompts (images paired by seed), "
        "exact McNemar p on the discordant images "
        "(A only / B only), Holm-corrected over every comparison of the study's table; "
        "<span class='sig'>★</span> = significant "
        "after the correction (p<sub>Holm</sub> &lt; 0.05). Everything else is not shown to differ.</p>"
    ]
    for study, comps in results.paired.items():
        out.append(
            f"<h3>{e(study)} <small>({len(comps)} comparisons)</small></h3>"
            "<table class='paired'><tr><th>metric</th><th>A</th><th>B</th>"
            "<th>A %</th><th>B %</th><th>Δ [95 % CI]</th><th>A only / B only</th><th>n (prompts)</th>"
            "<th>p</th><th>p Holm</th><th></th></tr>"
        )
        for c in comps:
            out.append(f"<tr><td style='text-align:left'>{e(c.metric)}</td>{_paired_cells(c)}</tr>")
        out.append("</table>")
    return "".join(out)


def _paired_cells(c) -> str:
    """One paired comparison's cells: A, B, their rates, Δ with its interval, discordant counts, n, p, p Holm, ★."""
    e = _esc
    star = "<span class='sig'>★</span>" if c.significant else ""
    return (
        f"<td><b>{e(c.a)}</b></td><td>{e(c.b)}</td><td>{_pct(c.rate_a)}</td><td>{_pct(c.rate_b)}</td>"
        f"<td>{100 * c.diff:+.1f} [{100 * c.low:+.1f}, {100 * c.high:+.1f}]</td><td>{c.a_only} / {c.b_only}</td>"
        f"<td>{c.n} ({c.clusters})</td><td>{c.p:.3g}</td><td>{c.p_holm:.3g}</td><td>{star}</td>"
    )


# the reference protocols' counts beside an attack's plain ASR (summary.protocol_rates)
_PROTOCOL_HEAD = (
    "<th>conditional ASR % (the items the unedited model draws)</th><th>unedited % (same items)</th>"
    "<th>UnlearnDiffAtk count % (unattacked success counts)</th><th>P4D count % (ideal items)</th>"
)


def _protocol_cells(row: dict) -> str:
    """The conditional ASR with the unedited rate on the same items, UnlearnDiffAtk's and P4D's counts (– where the
    row predates them or a rate has no items)."""
    return "".join(
        _html_cell(row.get(k))
        for k in ("conditional ASR", "conditional unedited rate", "UnlearnDiffAtk-protocol ASR", "P4D-protocol ASR")
    )


def _wilson_cell(row: dict, key: str) -> str:
    w = row.get("wilson", {}).get(key)
    return "<td>–</td>" if not w or w[0] != w[0] else f"<td>[{100 * w[0]:.1f}, {100 * w[1]:.1f}]</td>"


def _attack_paired(results: Results, study: str, metric: str) -> str:
    """The paired comparisons of one attack's ASR (each method vs the unedited model on the same attacked items,
    every two methods on the same target items), as computed and Holm-corrected with the study's table."""
    comps = [c for c in results.paired.get(study, []) if c.metric == metric]
    if not comps:
        return ""
    rows = [
        "<table class='paired'><tr><th>A</th><th>B</th><th>A ASR %</th><th>B ASR %</th><th>Δ [95 % CI]</th>"
        "<th>A only / B only</th><th>n (prompts)</th><th>p</th><th>p Holm</th><th></th></tr>"
    ]
    for c in comps:
        rows.append(f"<tr>{_paired_cells(c)}</tr>")
    rows.append("</table>")
    return "<p>Paired under this attack (same attacked target items, by prompt and seed):</p>" + "".join(rows)


def _attack_grid(results: Results, study: str, suite_name: str, max_rows: int, thumb: int) -> str:
    """A few of the attack's adversarial prompts (or learned token / sampling intervention) and the images they
    produced, read from the image cache: the unedited model's and each method's."""
    runs = results.studies.get(study, {})
    labels = [m for m, r in runs.items() if suite_name in r.suites]
    if not labels:
        return ""
    return _grid(suite_name, [runs[m].suites[suite_name] for m in labels], labels, max_rows, thumb)


def attacks_html(results: Results, *, max_rows: int = 4, thumb: int = 96) -> str:
    """The "Attacks" section: per study and attack, the ASR table (bootstrap and Wilson intervals, the unedited
    model's rate on the same attacked items, the attack's cost), the paired tests under the attack, and a small
    grid of adversarial prompts with their images."""
    from .attacks.ring_a_bell import eta_suite_name

    e = _esc
    out = []
    for study, atk in results.attacks.items():
        for name, a in atk.items():
            if "curve" in a:
                labels = list(dict.fromkeys(m for p in a["curve"] for m in p["methods"]))
                out.append(
                    f"<h3>{e(study)}: {e(name)} curve</h3>"
                    f"<p>Headline η = <b>{a['headline_eta']:g}</b>: {e(a['rule'])}. "
                    "η = 0 is the unattacked target suite.</p>"
                    "<table class='paired'><tr><th>η</th><th>unedited: concept %</th>"
                    "<th>unedited: attributes kept %</th>"
                    + "".join(f"<th>{e(m)}: ASR %</th>" for m in labels)
                    + "</tr>"
                )
                for p in a["curve"]:
                    kept = p["unedited attributes kept"]
                    cells = "".join(_html_cell(p["methods"].get(m)) for m in labels)
                    kept_cell = _html_cell(kept) if kept else "<td>–</td>"
                    concept_cell = _html_cell(p["unedited concept rate"])
                    out.append(f"<tr><td>{p['eta']:g}</td>{concept_cell}{kept_cell}{cells}</tr>")
                out.append("</table>")
                eta = a["headline_eta"]
                out.append(_attack_paired(results, study, f"ASR {name} (headline η = {eta:g})"))
                if eta:
                    out.append(_attack_grid(results, study, eta_suite_name(name, eta), max_rows, thumb))
            elif "kind" in a:  # a registry attack: ASR beside the unedited rate and the cost
                out.append(
                    f"<h3>{e(study)}: {e(name)} <small>({e(a['kind'])})</small></h3>"
                    f"<p>Budget: {e(a['budget'])}. Reference: {e(a['reference'])}.</p>"
                    "<table class='paired'><tr><th>method</th><th>judge ASR % [bootstrap]</th><th>ASR Wilson 95 %</th>"
                    "<th>unedited concept % (same attacked items)</th><th>unedited Wilson 95 %</th>"
                    "<th>attacked items</th>"
                    + _PROTOCOL_HEAD
                    + "<th>attack seconds</th><th>denoiser evaluations</th><th>text-encoder evaluations</th></tr>"
                )
                for m, r in a["methods"].items():
                    c = r["cost"]
                    out.append(
                        f"<tr><td>{e(m)}</td>{_html_cell(r['judge ASR'])}{_wilson_cell(r, 'judge ASR')}"
                        f"{_html_cell(r['unedited concept rate'])}{_wilson_cell(r, 'unedited concept rate')}"
                        f"<td>{r['attacked items']}</td>{_protocol_cells(r)}"
                        f"<td>{c['seconds']:.1f}</td><td>{c['denoiser_evaluations']}</td>"
                        f"<td>{c['text_encoder_evaluations']}</td></tr>"
                    )
                out.append("</table>")
                out.append(_attack_paired(results, study, f"ASR {name}"))
                out.append(_attack_grid(results, study, f"adversarial:{name}", max_rows, thumb))
            else:
                out.append(
                    f"<h3>{e(study)}: {e(name)}</h3>"
                    f"<p>Budget: {e(a['budget'])}. Objective: {e(a['objective'])}.</p>"
                    "<table class='paired'><tr><th>method</th><th>judge ASR % [bootstrap]</th><th>ASR Wilson 95 %</th>"
                    "<th>unedited concept % (found prompts)</th>"
                    + _PROTOCOL_HEAD
                    + "<th>objective (start → found)</th><th>prompts searched</th></tr>"
                )
                for m, r in a["methods"].items():
                    out.append(
                        f"<tr><td>{e(m)}</td>{_html_cell(r['judge ASR'])}{_wilson_cell(r, 'judge ASR')}"
                        f"{_html_cell(r['unedited concept rate on the found prompts'])}{_protocol_cells(r)}"
                        f"<td>{r['objective at start']:.3f} → {r['objective']:.3f}</td>"
                        f"<td>{r['prompts searched']}</td></tr>"
                    )
                out.append("</table>")
                out.append(_attack_paired(results, study, f"ASR {name}"))
                out.append(_attack_grid(results, study, f"adversarial:{name}", max_rows, thumb))
    intro = (
        "<h2>Attacks</h2><p>Per attack: the judged attack success rate (ASR) with its 95 % percentile-bootstrap and "
        "Wilson score intervals, beside the unedited model's concept rate on the same attacked items; the same "
        "success counted as the reference protocols count it — the conditional ASR on the items whose unattacked "
        "prompt the unedited model draws (the references attack only such prompts), UnlearnDiffAtk's count (the "
        "unattacked prompt's success on the edit counts too) and P4D's (only the items the unedited model draws and "
        "the edit erases); the paired "
        "tests under the attack (exact McNemar, Holm-corrected with the study's table); and the first adversarial "
        "prompts with the images they produced.</p>"
    )
    return (intro + "".join(out)) if out else ""


def write_html(
    results: Results,
    path: str | Path,
    *,
    max_rows: int = 8,
    thumb: int = 96,
    title: str = "erasekit evaluation",
    sections: tuple[str, ...] = (),
) -> Path:
    """The page; ``sections`` are extra HTML blocks placed after the metric table (e.g. the claims table)."""
    path = Path(path)
    names, rows = metric_rows(results)
    e = _esc
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{_CSS.replace('THUMB', str(thumb))}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>Judge: <b>{e(results.judge.get('judge', '?'))}</b> · "
        f"model fingerprint <code>{e(results.config['model_fingerprint'][:16])}</code> · "
        f"{results.timing['images_total']} images ({results.timing['images_from_cache']} from cache) · "
        "same seeds for every column.</p>",
        "<h2>Metrics</h2><table id='metrics'><tr><th>study</th><th>method</th>"
        + "".join(f"<th>{e(n)}</th>" for n in names)
        + "</tr>",
    ]
    for study, label, ms in rows:
        cells = "".join(_html_cell(ms.get(n)) for n in names)
        out.append(f"<tr><td>{e(study)}</td><td><b>{e(label)}</b></td>{cells}</tr>")
    out.append(
        "</table><p>Rates in %, value [95 % percentile-bootstrap interval], successes / images below; "
        "pixel distance is the "
        "mean |edited − unedited| in [0, 1] on the same seeds. "
        "The unedited row applies the same measures to the unedited "
        "model's images. Hover a cell for an attack's budget.</p>"
    )
    out.extend(sections)
    figs = study_figures(results, path.parent / "plots")
    if figs:
        out.append("<h2>Plots</h2><div class='figs'>" + "".join(figs) + "</div>")
    if results.paired:
        out.append(paired_html(results))
    out.append(attacks_html(results, thumb=thumb))
    for study, runs in results.studies.items():
        out.append(f"<h2>Study: {e(study)}</h2>")
        labels = list(runs)
        for suite_name in next(iter(runs.values())).suites:
            out.append(_grid(suite_name, [runs[m].suites[suite_name] for m in labels], labels, max_rows, thumb))
    settings = {
        "config": results.config,
        "judge": results.judge,
        "timing": results.timing,
        "edits": {
            s: {m: {"summary": r.edit_summary, "config": r.edit_config} for m, r in runs.items()}
            for s, runs in results.studies.items()
        },
    }
    out.append(
        f"<h2>Settings</h2><pre id='settings'>{e(json.dumps(settings, indent=1, default=_jsonable))}</pre>"
        "</body></html>"
    )
    write_bytes_atomic(path, "\n".join(out).encode("utf-8"))
    return path


def _decision(run, which: str, i: int) -> str:
    jr = run.judged_edited if which == "edited" else run.judged_unedited
    item = run.suite.items[i]
    if jr is None or not item.concepts:
        return ""
    seen = [c for c in item.concepts if jr.seen(c)[i]]
    good = bool(seen) if run.suite.kind in ("retain", "general") else not seen  # erased concepts should not be seen
    cls = "good" if good else "bad"
    said = "sees " + ", ".join(seen) if seen else "sees none of " + ", ".join(item.concepts)
    return f"<div class='{cls}'>{_esc(said)}</div>"


def _grid(suite_name: str, suite_runs: list, labels: list[str], max_rows: int, thumb: int) -> str:
    e = _esc
    first = suite_runs[0]
    same_items = all(r.suite.items == first.suite.items for r in suite_runs)
    # attacks searched per method may leave a prompt unattacked for one method: show rows every method has
    n = min(max_rows, *(len(r.suite.items) for r in suite_runs))
    head = (
        f"<h3>{e(suite_name)} <small>({e(first.suite.kind)}, {len(first.suite.items)} items, "
        f"first {n} shown)</small></h3>"
    )
    if same_items:
        cols = ["unedited"] + labels
        cells = lambda i: (
            [(first.unedited[i], _decision(first, "unedited", i))]
            + [(r.edited[i], _decision(r, "edited", i)) for r in suite_runs]
        )  # noqa: E731
    else:  # items differ per method (attacks searched against each edited model): unedited | edited per method
        cols = [c for m in labels for c in (f"unedited · {m} prompts", m)]
        cells = lambda i: [
            c
            for r in suite_runs
            for c in ((r.unedited[i], _decision(r, "unedited", i)), (r.edited[i], _decision(r, "edited", i)))
        ]  # noqa: E731
    rows = [
        "<table class='grid'><tr><th>prompt</th><th>seed</th>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>"
    ]
    for i in range(n):
        it = first.suite.items[i]
        prompt = it.prompt if same_items else " | ".join(dict.fromkeys(r.suite.items[i].prompt for r in suite_runs))
        if it.shift is not None:
            prompt += f"  [+ η={it.shift[1]:g} · concept vector]"
        if it.token is not None:
            prompt += "  [learned token in place of its carrier word]"
        if it.sampling is not None:
            prompt += f"  [noisy DDIM η={it.sampling[0]:g}, noise × {it.sampling[1]:g}]"
        meta = dict(it.meta)
        if "draw" in meta:  # best-of-K suites: one row per draw, the target item counts once (any draw)
            prompt += f"  [draw {int(meta['draw']) + 1} of target item {int(meta['of']) + 1}]"
        imgs = "".join(
            f"<td><img alt='{e(cols[k])}' src='{_data_uri(ImageCache.load(p), thumb)}'>{d}</td>"
            for k, (p, d) in enumerate(cells(i))
        )
        rows.append(f"<tr><td class='p'>{e(prompt)}</td><td>{it.seed}</td>{imgs}</tr>")
    rows.append("</table>")
    return head + "".join(rows)
