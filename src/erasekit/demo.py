"""`erasekit demo`: the whole loop on the bundled tinyworld model in about a minute.

Erase one shape with a method (SPACE by default, preserving the other shapes), generate the
same seeds before and after for the erased concept — named and only paraphrased — and for
the preserved shapes, judge every image with the tinyworld classifier, and write a table,
a PNG grid and an HTML page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .generate import generate_pairs, image_grid


@dataclass
class DemoResult:
    concept: str
    method: str
    rows: dict[
        str, dict
    ]  # target / paraphrase / retain / colour -> {"n", "base_rate", "edited_rate", "metric", "value"}
    sparsity: float | None
    edit_bytes: int
    fit_seconds: float
    total_seconds: float
    grid_path: Path
    html_path: Path
    prompts: dict[str, list[str]] = field(default_factory=dict)
    model: str = "tinyworld"

    def table_rows(self) -> list[tuple[str, str]]:
        r = self.rows
        out = [
            ("erase rate (named prompts)", _pct(r["target"]["value"])),
            ("paraphrase erase rate (synonyms only)", _pct(r["paraphrase"]["value"])),
            (
                "retain rate (other shapes)",
                _pct(r["retain"]["value"]) + f"  (unedited {_pct(r['retain']['base_rate'])})",
            ),
            (
                "prompted colour kept (all images)",
                _pct(r["colour"]["value"]) + f"  (unedited {_pct(r['colour']['base_rate'])})",
            ),
            (
                "concept seen before erasure (named / paraphrased)",
                f"{_pct(r['target']['base_rate'])} / {_pct(r['paraphrase']['base_rate'])}",
            ),
        ]
        if self.sparsity is not None:
            out.append(("sparsity", _pct(self.sparsity)))
        out += [
            ("edit size", f"{self.edit_bytes:,} bytes"),
            ("fit seconds", f"{self.fit_seconds:.1f}"),
            ("total seconds", f"{self.total_seconds:.1f}"),
        ]
        return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def demo_prompts(concept: str, n: int, seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    """suite -> (prompts, prompted shape per prompt); colours and patterns vary, shapes are the concept."""
    return {k: (prompts, shapes) for k, (prompts, shapes, _) in _demo_suites(concept, n, seed).items()}


def _demo_suites(concept: str, n: int, seed: int) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """suite -> (prompts, prompted shape, prompted colour) per prompt."""
    from .tinyworld import world

    rng = np.random.default_rng(seed)
    others = [s for s in world.SHAPE_NAMES if s != concept]

    def suite(shapes, synonyms):
        prompts, colours = [], []
        for shape in shapes:
            c = world.COLOR_NAMES[int(rng.integers(len(world.COLOR_NAMES)))]
            p = world.PATTERN_NAMES[int(rng.integers(len(world.PATTERN_NAMES)))]
            prompts.append(world.caption(shape, c, p, rng, synonyms=synonyms, template=0))
            colours.append(c)
        return prompts, list(shapes), colours

    return {
        "target": suite([concept] * n, False),
        "paraphrase": suite([concept] * n, "only"),
        "retain": suite([others[i % len(others)] for i in range(n)], False),
    }


def run_demo(
    concept: str = "circle",
    method: str = "space",
    n: int = 16,
    steps: int = 15,
    guidance: float = 5.0,
    out_dir: str | Path = "erasekit-demo",
    seed: int = 0,
    pipe=None,
    judge=None,
    progress: bool = True,
    templates: bool | None = None,
    published_defaults: bool = False,
    model: str = "tinyworld",
    **method_options,
) -> DemoResult:
    import erasekit

    from .api import fit, plan_erase
    from .tinyworld import world
    from .tinyworld.judge import TinyworldJudge

    if concept not in world.SHAPES:
        raise erasekit.ConceptError(f"tinyworld has no shape {concept!r}; choose one of {', '.join(world.SHAPE_NAMES)}")
    t_start = time.perf_counter()
    others = [s for s in world.SHAPE_NAMES if s != concept]
    # tinyworld's per-method defaults (erasekit/defaults.py: every token position for the closed-form
    # edits, the 'object' templates, PURE's paired centring); options given here win. Planned (and
    # checked) before anything is loaded.
    plan = plan_erase(
        pipe if pipe is not None else model,
        method,
        [concept],
        kind="object",
        preserve=others,
        templates=templates,
        defaults="published" if published_defaults else "erasekit",
        **method_options,
    )
    pipe = pipe if pipe is not None else erasekit.load_pipeline(model)
    judge = judge if judge is not None else TinyworldJudge.load()
    suites = _demo_suites(concept, n, seed)
    t0 = time.perf_counter()
    edit = fit(pipe, plan, progress=progress)
    defaults = plan.record
    fit_seconds = time.perf_counter() - t0

    seeds = list(range(seed, seed + n))

    def images(prompts):  # prompt i gets seed i, the same for both models
        return generate_pairs(pipe, list(zip(prompts, seeds)), steps=steps, guidance=guidance, batch_size=32)

    base = {k: images(p) for k, (p, _, _) in suites.items()}
    edit.apply(pipe)
    try:
        edited = {k: images(p) for k, (p, _, _) in suites.items()}
    finally:
        edit.revert(pipe)

    rows = {}
    colour_base, colour_edit = [], []
    for k, (prompts, shapes, colours) in suites.items():
        pred_base, pred_edit = judge.predict(base[k]), judge.predict(edited[k])  # one judge pass per image set
        seen_base = _hits(pred_base, "shape", shapes)
        seen_edit = _hits(pred_edit, "shape", shapes)
        value = 1.0 - seen_edit.mean() if k != "retain" else seen_edit.mean()
        rows[k] = {
            "n": len(prompts),
            "base_rate": float(seen_base.mean()),
            "edited_rate": float(seen_edit.mean()),
            "metric": "retain rate" if k == "retain" else "erase rate",
            "value": float(value),
        }
        colour_base.append(_hits(pred_base, "color", colours))
        colour_edit.append(_hits(pred_edit, "color", colours))
    # Collateral damage the shape judge cannot see: is the prompted colour still drawn, on every
    # image (an erased circle should become a *red* something, not lose its colour too)?
    rows["colour"] = {
        "n": sum(len(c) for c in colour_edit),
        "base_rate": float(np.concatenate(colour_base).mean()),
        "edited_rate": float(np.concatenate(colour_edit).mean()),
        "metric": "colour kept",
        "value": float(np.concatenate(colour_edit).mean()),
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    show = min(8, n)
    # One block of (unedited, edited) columns per suite; row i is prompt i of each suite, same seed.
    grid_rows = [[im for k in suites for im in (base[k][i], edited[k][i])] for i in range(show)]
    columns = [f"{k}: {tag}" for k in suites for tag in ("unedited", "edited")]
    grid = image_grid(grid_rows, [f"seed {seeds[i]}" for i in range(show)], columns, cell=112)
    grid_path = out_dir / "demo_grid.png"
    grid.save(grid_path)
    result = DemoResult(
        concept,
        method,
        rows,
        edit.sparsity(),
        edit.nbytes,
        fit_seconds,
        0.0,
        grid_path,
        out_dir / "demo.html",
        {k: p for k, (p, _, _) in suites.items()},
        model=model,
    )
    result.total_seconds = time.perf_counter() - t_start
    _write_html(result, grid)
    (out_dir / "demo.json").write_text(
        json.dumps(
            {
                "concept": concept,
                "method": method,
                "model": result.model,
                "rows": rows,
                "sparsity": result.sparsity,
                "edit_bytes": result.edit_bytes,
                "fit_seconds": fit_seconds,
                "total_seconds": result.total_seconds,
                "seeds": seeds,
                "steps": steps,
                "guidance": guidance,
                "prompts": result.prompts,
                "edit_config": edit.config,
                "defaults": defaults,
            },
            indent=2,
        )
    )
    return result


def _hits(pred: dict, attribute: str, values: list[str]) -> np.ndarray:
    """Per image: did the judge (its ``predict`` output) read the prompted ``attribute`` ("shape" or "color") value?"""
    from .tinyworld import world

    names = {"shape": world.SHAPE_NAMES, "color": world.COLOR_NAMES}[attribute]
    return pred[attribute].argmax(-1).numpy() == np.array([names.index(v) for v in values])


def _write_html(result: DemoResult, grid) -> None:
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    img = base64.b64encode(buf.getvalue()).decode()
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in result.table_rows())
    prompt_lists = "".join(
        f"<h3>{html.escape(k)}</h3><ol>" + "".join(f"<li>{html.escape(p)}</li>" for p in ps) + "</ol>"
        for k, ps in result.prompts.items()
    )
    result.html_path.write_text(
        f"""<!doctype html><meta charset="utf-8"><title>erasekit demo: {html.escape(result.concept)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
td{{border:1px solid #ccc;padding:4px 10px}}</style>
<h1>erasekit demo — {html.escape(result.method)} erases “{html.escape(result.concept)}” \
from {html.escape(result.model)}</h1>
<table id="metrics">{rows}</table>
<p>Same seeds for both columns. The tinyworld judge decides which shape each image shows.</p>
<img id="grid" alt="unedited vs edited grid" src="data:image/png;base64,{img}">
<h2>Prompts (row i of each block)</h2>
{prompt_lists}
""",
        encoding="utf-8",
    )
