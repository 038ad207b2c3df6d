"""SPACE's sparsity / erase / general-drift trade-off with and without the general prior, beside UCE.

    python benchmarks/space_prior_curve.py [--concept circle] [--sparsity 0.8,0.85,0.9] [--weights 1]
        [--plot /tmp/i13/space_prior_curve.png]
    python benchmarks/space_prior_curve.py --combine a.json,b.json --html report.html     # one page from earlier runs

On tinyworld (templates on, every token position for every method (the tinyworld default), the other values of the
attribute preserved). For each point: erase % on named and paraphrased prompts, retain %, judged
agreement with the unedited model on general prompts (held-out caption templates, none naming
the concept), exact sparsity, fit seconds. The prior's prompts are tinyworld *training*
captions; the general suite uses the held-out evaluation templates, so the prior never saw them.
Reduced sizes by default (--n 8, --steps 10): differences under ~30 points are noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tw import World, fit, fmt  # noqa: E402
from erasekit.evaluate.bench import tinyworld_concept_set  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--sparsity", default="0.8,0.85,0.9")
    ap.add_argument("--weights", default="1", help="prior weights rho to try (comma-separated)")
    ap.add_argument("--token", default="all", help="token selection for every method (tinyworld default: all)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument(
        "--plot", default="/tmp/i13/space_prior_curve.png", help="PNG to write (needs matplotlib); '' for none"
    )
    ap.add_argument("--out", default="/tmp/i13/space_prior_curve.json")
    ap.add_argument(
        "--html", default="", help="also write a self-contained HTML page (numbers and plots; PNGs beside it)"
    )
    ap.add_argument(
        "--combine", default="", help="comma-separated JSON files of earlier runs: write --html from them and exit"
    )
    args = ap.parse_args(argv)
    if args.combine:
        runs = [json.loads(Path(p).read_text()) for p in args.combine.split(",") if p.strip()]
        print(f"report: {write_page(runs, Path(args.html or 'space_prior_curve.html'))}")
        return 0
    world = World(steps=args.steps, n=args.n)
    cs = dataclasses.replace(tinyworld_concept_set(args.concept), templates=True)
    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    runs = [("uce", "none", None, None)] + [("uce", "general", w, None) for w in weights]
    for s in (float(x) for x in args.sparsity.split(",") if x.strip()):
        runs += [("space", "none", None, s)] + [("space", "general", w, s) for w in weights]
    rows = []
    print(
        f"SPACE / UCE with and without the general prior on tinyworld '{args.concept}' (n={args.n}/suite, {args.steps} "
        f"steps, token={args.token})"
    )
    print(
        f"{'method':6s} {'prior':>8s} {'target':>7s} {'sparsity':>8s} {'erase':>6s} {'para':>6s} {'retain':>6s} "
        f"{'general':>7s} {'fit s':>6s}"
    )
    for method, prior, w, target in runs:
        opts = dict(token=args.token, prior=prior)
        if w is not None:
            opts["prior_weight"] = w
        if target is not None:
            opts["target_sparsity"] = target
        edit, sec = fit(world, method, cs, **opts)
        r = world.rates(edit, [args.concept])
        sp = edit.sparsity() or 0.0
        rows.append(dict(method=method, prior=prior, weight=w, target_sparsity=target, sparsity=sp, fit_s=sec, **r))
        label = "none" if prior == "none" else f"ρ={w:g}"
        print(
            f"{method:6s} {label:>8s} {target or 0:7.2f} {100 * sp:7.1f}% {fmt(r['target']):>6s} "
            f"{fmt(r['paraphrase']):>6s} "
            f"{fmt(r['retain']):>6s} {fmt(r['general']):>7s} {sec:6.1f}",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(args=vars(args), rows=rows), indent=1))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        Path(args.plot).write_bytes(plot(rows, args.concept))
        print(f"plot: {args.plot}")
    if args.html:
        print(f"report: {write_page([dict(args=vars(args), rows=rows)], Path(args.html))}")
    return 0


def write_page(runs: list[dict], path: Path) -> Path:
    """One self-contained page: per concept, the numbers and the plot (embedded, and saved as PNG beside the page)."""
    import html

    from erasekit._atomic import write_bytes_atomic
    from erasekit.evaluate.report import figure_html

    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>SPACE with and without the general prior</title>"
        "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid "
        "#ccc;padding:2px 8px;"
        "text-align:right} img{max-width:100%}</style></head><body><h1>SPACE sparsity / erase / general drift, with "
        "and without the "
        "general prior, beside UCE (tinyworld)</h1><p>erase / para: named / paraphrased prompts no longer judged as "
        "the concept; retain: "
        "other values of the attribute still judged correctly; general: held-out general prompts whose three judged "
        "attributes match "
        "the unedited model's. The prior's prompts are tinyworld training captions; the general suite uses held-out "
        "templates.</p>"
    ]
    for run in runs:
        a, rows = run["args"], run["rows"]
        out.append(
            f"<h2>{e(a['concept'])}</h2><p>n = {a['n']} prompts per suite, {a['steps']} steps, token = "
            f"{e(a['token'])}</p>"
            "<table><tr><th>method</th><th>prior</th><th>target "
            "sparsity</th><th>sparsity</th><th>erase</th><th>para</th>"
            "<th>retain</th><th>general</th><th>fit s</th></tr>"
        )
        for r in rows:
            prior = "none" if r["prior"] == "none" else f"ρ={r['weight']:g}"
            out.append(
                f"<tr><td>{r['method']}</td><td>{prior}</td><td>{r['target_sparsity'] or 0:.2f}</td>"
                f"<td>{100 * r['sparsity']:.1f} %</td>"
                + "".join(f"<td>{fmt(r.get(k))}</td>" for k in ("target", "paraphrase", "retain", "general"))
                + f"<td>{r['fit_s']:.1f}</td></tr>"
            )
        out.append("</table>")
        out.append(
            figure_html(
                plot(rows, a["concept"]),
                f"space-prior-{a['concept']}",
                path.parent / "plots",
                f"SPACE prior trade-off, {a['concept']}",
            )
        )
    out.append("</body></html>")
    write_bytes_atomic(path, "\n".join(out).encode("utf-8"))
    return path


def plot(rows, concept) -> bytes:
    """PNG bytes: general-prompt agreement and erase rate vs sparsity, SPACE with / without the prior, UCE as lines."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    # one colour per prior setting: SPACE as markers and lines, UCE (no sparsity) as a dotted level of the same colour
    settings = sorted({(r["prior"], r["weight"]) for r in rows}, key=lambda pw: (pw[0] != "none", pw[1] or 0))
    colour = {pw: f"C{i}" for i, pw in enumerate(settings)}
    for ax, key, title in (
        (axes[0], "general", "general-prompt agreement with unedited"),
        (axes[1], "target", f"erase rate ('{concept}', named)"),
    ):
        for prior, w in settings:
            tag = "no prior" if prior == "none" else f"+ prior ρ={w:g}"
            pts = sorted(
                (r["sparsity"], r[key])
                for r in rows
                if r["method"] == "space" and (r["prior"], r["weight"]) == (prior, w)
            )
            if pts:
                ax.plot(
                    [100 * p[0] for p in pts],
                    [100 * p[1] for p in pts],
                    "o-" if prior == "none" else "s--",
                    color=colour[prior, w],
                    label=f"SPACE {tag}",
                )
            for r in rows:
                if r["method"] == "uce" and (r["prior"], r["weight"]) == (prior, w):
                    ax.axhline(100 * r[key], color=colour[prior, w], ls=":", lw=2, label=f"UCE {tag}")
        ax.set_xlabel("sparsity of the edited weights (%)")
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.set_ylim(-5, 105)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
