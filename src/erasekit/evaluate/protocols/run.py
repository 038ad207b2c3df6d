"""Running a protocol end to end (DESIGN §11): judges from the registry, methods fitted, suites generated and judged
through the runner, the protocol's metrics, one ``results.json`` that records the protocol whole.

The stages, in order (everything that can be refused is refused before the first model load):

1. **judges** (:func:`plan_judges`): each protocol :class:`~.base.JudgeSpec` names a registered judge
   (:mod:`erasekit.evaluate.judges`); the user gives model locations as ``--judge-path NAME=PATH[,key=value]``
   (``--judge-path clip=FOLDER`` also serves as the aesthetic predictor's CLIP). A judge the run needs is built as a
   config (every option typed and validated) and its files checked (exist, safetensors) here; a judge erasekit
   cannot run (HUB's GIPHY and Q16) is refused only when a concept of its category is asked for.
2. **fit**: the methods (``--methods``) through :func:`~erasekit.evaluate.bench.fit_edits`, one edit per concept.
3. **references** (VLM judge): for every concept the VLM is asked about, three images of the *unedited* model
   (HUB's reference images): the concept's first prompt under seeds ``reference_seed + 0, 1, 2`` — seeds no suite
   uses, so an unedited query image is never its own reference — generated into the image cache.
4. **generate, judge, measure**: :func:`erasekit.evaluate.runner.evaluate` (image cache, resume, progress, attacks)
   with a :class:`RoutedJudge` that hands each concept to the judge of its category.
5. **the protocol's metrics** (``hub``, ``tinyworld``): PURE's H-mean per category (:mod:`erasekit.evaluate.hmean`).
   Per (method, concept), measured on the edited images (and, for the ``unedited`` row, on the unedited ones):
   target proportion = share of target-suite images in which the judge sees the concept; retention = share of
   within-category retain images in which it still sees the neighbour; attack success = share of attack images
   in which it sees the concept (HUB: its attack-prompt files; tinyworld: the concept-vector attack at its
   calibrated headline η); quality = HUB: mean aesthetic score on the general (COCO) prompts, rule ``'ratio'``
   (edited / unedited, clipped to 1); tinyworld: judged agreement with the unedited model on general prompts, rule
   ``'raw'``. Each of the four is averaged over the category's concepts, then oriented higher-is-better
   (erased = 1 − target proportion, robustness = 1 − attack success) and combined by the harmonic mean; the
   average column is the mean over categories (PURE's Table 1). Each H-mean and the average get a percentile
   bootstrap interval over prompts (:func:`~erasekit.evaluate.hmean.hmean_interval`: the four inputs drawn together
   where their suites align item by item, as tinyworld's do), in ``metrics.hmean_intervals`` and on the report page.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ...errors import JudgeError, ProtocolError
from ..hmean import CategoryMetrics, ItemSamples, category_hmean, category_mean, hmean_interval, quality_score
from ..judges import Judge, JudgeConfig, JudgeResult, make_config
from ..suites import Suite, SuiteItem
from .base import JudgeSpec, Protocol

SCHEMA = 2  # 2: metrics.hmean_intervals (bootstrap over prompts) and threads; 1 had neither
HMEAN_PROTOCOLS = ("hub", "tinyworld")
REFERENCE_SEED = 1_000_000  # reference images' first seed: above every suite's seeds
ATTACKS = {"concept-vector": "ring-a-bell", "token-search": "token-search"}  # tinyworld's attack -> Plan's name
KIND_OF_CATEGORY = {"style": "style", "IP": "object", "celebrity": "person", "NSFW": "nsfw"}  # HUB -> ConceptSet
ROLE_OF_KIND = {"target": "target", "paraphrase": "paraphrase", "retain": "retention", "general": "quality"}
PATH_FIELDS = ("path", "clip", "references")  # config fields that name files or folders (checked before loading)


# ------------------------------------------------------------------ judges
def parse_judge_paths(items: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["vlm=/models/internvl,max_new_tokens=64", ...]`` -> ``{"vlm": "/models/internvl,max_new_tokens=64"}``."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k).strip().lower(): str(v) for k, v in items.items()}
    out: dict[str, str] = {}
    for item in items:
        name, sep, rest = str(item).partition("=")
        name = name.strip().lower()
        if not sep or not name or not rest.strip():
            raise ProtocolError(f"--judge-path takes NAME=PATH[,key=value...], got {item!r} (e.g. vlm=/models/vlm)")
        if name in out:
            raise ProtocolError(f"--judge-path {name} is given twice")
        out[name] = rest.strip()
    return out


@dataclass
class PlannedJudge:
    """A protocol judge the run needs: its declaration, the registry spec it is built from, its checked config."""

    spec: JudgeSpec
    registry_spec: str
    options: dict[str, Any]  # the protocol's options the user's spec did not override
    user: str | None  # what the user gave on the command line
    judge_class: type[Judge]
    config: JudgeConfig

    def build(self, device: str) -> Judge:
        return self.judge_class(config=self.config, device=device)  # type: ignore[call-arg]

    def record(self) -> dict[str, Any]:
        return {
            "declared": self.spec.to_dict(),
            "registry_spec": self.registry_spec,
            "protocol_options_applied": self.options,
            "user": self.user,
            "config": self.config.to_dict(),
        }


def _check_files(name: str, config: JudgeConfig) -> None:
    """Every path a judge's config names exists (and holds safetensors weights) — before any model loads."""
    from ..judges import safetensors_file, safetensors_folder

    for f in PATH_FIELDS:
        value = getattr(config, f, None)
        if value is None or not str(value).strip():
            continue
        p = Path(str(value)).expanduser()
        if not p.exists():
            raise ProtocolError(
                f"judge {name}: {f} {str(p)!r} does not exist; give the right location with "
                f"--judge-path {name}=PATH" + ("" if f == "path" else f",{f}=PATH")
            )
        if f != "references":
            if p.is_dir():
                safetensors_folder(p, f"judge {name}'s {f}")
            else:
                safetensors_file(p, f"judge {name}'s {f}")


def plan_judges(
    protocol: Protocol, categories: Sequence[str | None], user: Mapping[str, str], *, quality: bool
) -> list[PlannedJudge]:
    """The judges a run of ``protocol`` needs for concepts of ``categories`` (and its quality judge when
    ``quality``), each with a validated config and checked files; refused in one line per problem, naming the fix."""
    needed: list[JudgeSpec] = []
    for cat in dict.fromkeys(categories):
        deciders = [j for j in protocol.judges if j.decides(cat)]
        if not deciders:
            raise ProtocolError(f"protocol {protocol.name!r} declares no judge for concepts of category {cat!r}")
        j = deciders[0]
        if j.unavailable is not None:
            raise ProtocolError(
                f"protocol {protocol.name!r}: {cat} concepts are judged by {j.name}, which erasekit cannot run "
                f"({j.unavailable}); leave the {cat} concepts out (--protocol-concepts)"
            )
        if j not in needed:
            needed.append(j)
    if quality:
        needed += [j for j in protocol.judges if j.role == "quality" and j.unavailable is None]
    names = {j.name for j in needed}
    extra = sorted(set(user) - names - ({"clip"} if "aesthetics" in names else set()))
    if extra:
        raise ProtocolError(
            f"--judge-path {', '.join(extra)}: this run of {protocol.name!r} needs only "
            f"{', '.join(sorted(names)) or 'no judge path'}"
        )
    out = []
    problems = []
    for j in needed:
        given = user.get(j.name)
        spec = j.name if given is None else f"{j.name}:{given}"
        from ..judges import parse_spec

        try:
            _, _, raw = parse_spec(spec)
            options = {k: v for k, v in j.options_dict.items() if k not in raw}
            if j.name == "aesthetics" and "clip" not in raw and "clip" in user:
                options["clip"] = user["clip"]
            cls, config = make_config(spec, **options)
            _check_files(j.name, config)
        except (JudgeError, ProtocolError) as e:
            hint = "" if given is not None else f" (give it with --judge-path {j.name}=PATH)"
            problems.append(f"judge {j.name}: {e}{hint}")
            continue
        out.append(PlannedJudge(j, spec, options, given, cls, config))
    if problems:
        raise ProtocolError(
            f"protocol {protocol.name!r} cannot run ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
    return out


class RoutedJudge(Judge):
    """The protocol's concept judges behind one :class:`Judge`: each concept goes to the judge of its category
    (``route``: concept -> judge name); results are put back together column by column."""

    name: ClassVar[str] = "protocol"
    config_class: ClassVar[type[JudgeConfig]] = JudgeConfig
    summary: ClassVar[str] = "a protocol's judges, routed by concept category"

    def __init__(self, judges: Mapping[str, Judge], route: Mapping[str, str], default: str | None = None):
        self.config = JudgeConfig()
        self.judges, self.route, self.default = dict(judges), dict(route), default

    def _judge_of(self, concept: str) -> str | None:
        return self.route.get(concept, self.default)

    @property
    def settings(self) -> dict:
        return {
            "judge": "protocol",
            "judges": {n: j.settings for n, j in self.judges.items()},
            "route": dict(sorted(self.route.items())),
            "every other concept": self.default,
        }

    def judge(self, images: Sequence[Image.Image], concepts: Sequence[str]) -> JudgeResult:
        images, concepts = list(images), list(concepts)
        missing = [c for c in concepts if self._judge_of(c) is None]
        if missing:
            raise JudgeError(f"no protocol judge decides {missing}")
        scores = np.zeros((len(images), len(concepts)))
        decisions = np.zeros((len(images), len(concepts)), dtype=bool)
        details: dict[str, Any] = {}
        for name, judge in self.judges.items():
            cols = [k for k, c in enumerate(concepts) if self._judge_of(c) == name]
            if not cols:
                continue
            r = judge.judge(images, [concepts[k] for k in cols])
            scores[:, cols], decisions[:, cols] = r.scores, r.decisions
            if r.details:
                details[name] = r.details
        return self._result(concepts, scores, decisions, details)


# ------------------------------------------------------------------ studies
def concept_categories(protocol: Protocol) -> dict[str, str]:
    """concept -> category, as the protocol's options declare them (hub, tinyworld)."""
    cats = protocol.to_dict()["options"].get("categories")
    if not isinstance(cats, dict) or not cats:
        raise ProtocolError(f"protocol {protocol.name!r} is not run end to end yet (it declares no concept categories)")
    return {str(k): str(v) for k, v in cats.items()}


def _judged_labels(protocol: Protocol, concepts: Sequence[str], file_suites: Mapping[str, Suite]) -> dict[str, str]:
    """Every concept a judge will be asked about -> its category (the erased concepts and their retain neighbours)."""
    cats = concept_categories(protocol)
    if protocol.name == "tinyworld":
        from .tinyworld import in_category

        out = {}
        for c in concepts:
            cat, others = in_category(c)
            out.update({c: cat, **{o: cat for o in others}})
        return out
    from .hub_files import CATEGORY

    out = dict(cats)
    for s in file_suites.values():
        for c in s.labels:
            out.setdefault(c, CATEGORY.get(c, "general"))
    return out


def reference_items(
    concepts: Sequence[str], file_suites: Mapping[str, Suite], seed: int = REFERENCE_SEED
) -> dict[str, list[SuiteItem]]:
    """Per concept, HUB's three reference images as suite items: the first prompt that asks for the concept, under
    seeds ``seed + 0, 1, 2``."""
    out = {}
    for c in concepts:
        prompt = next((it.prompt for s in file_suites.values() for it in s if it.concepts == (c,)), None)
        if prompt is None:
            raise ProtocolError(f"no prompt asks for {c!r}, so no reference image of it can be drawn")
        out[c] = [SuiteItem(prompt, seed + k, None, (c,)) for k in range(3)]
    return out


def draw_references(
    pipe, items: Mapping[str, list[SuiteItem]], settings, cache_dir, progress: bool
) -> tuple[dict[str, list[Image.Image]], dict[str, dict]]:
    """The unedited model's reference images (through the image cache): ({concept: [A, B, C]}, the record)."""
    from accelerate import PartialState

    from ...models.precision import denoiser_of
    from ..cache import ImageCache, ModelIdentity
    from ..generate import generate
    from ..plan import Job
    from ..results import UNEDITED

    cache = ImageCache(cache_dir)
    model = ModelIdentity.of(pipe)
    jobs: dict[str, list[Job]] = {}
    for c, its in items.items():
        for it in its:
            digest, spec = cache.key(
                model.fingerprint, it, settings, model.scheduler, {}, model.borrowed_dtype, model.call
            )
            jobs.setdefault(c, []).append(Job(UNEDITED, digest, cache.path(model.fingerprint, digest), spec, it, {}))
    flat = sorted((j for js in jobs.values() for j in js), key=lambda j: j.digest)
    batches = [flat[i : i + settings.batch_size] for i in range(0, len(flat), settings.batch_size)]
    todo = [b for b in batches if not all(j.path.is_file() for j in b)]
    state = PartialState(cpu=denoiser_of(pipe).device.type == "cpu")
    generate(state, pipe, todo, {}, cache, settings, progress=progress)
    state.wait_for_everyone()
    images = {c: [cache.load(j.path) for j in js] for c, js in jobs.items()}
    record = {
        c: {"prompt": js[0].item.prompt, "seeds": [j.item.seed for j in js], "images": [str(j.path) for j in js]}
        for c, js in jobs.items()
    }
    return images, record


# ------------------------------------------------------------------ metrics
def _seen(run, roles: Sequence[str], which: str, mode: str) -> np.ndarray | None:
    parts = [s.seen(which, mode) for s in run.suites.values() if _role(s) in roles]
    return np.concatenate(parts) if parts else None


def _role(s) -> str:
    info = s.suite.info
    if "role" in info:
        return str(info["role"])
    if s.suite.kind == "adversarial":
        return "attack-curve"  # built by the runner; the headline suite is picked from the attack summary
    return ROLE_OF_KIND.get(s.suite.kind, s.suite.kind)


def _mean(x: np.ndarray | None) -> float | None:
    return None if x is None or x.size == 0 else float(np.mean(x))


def per_item(results, study: str, label: str, which: str, quality: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
    """One (concept, method)'s H-mean inputs per item on its ``which`` images (``'edited'`` or ``'unedited'``):
    ``target`` / ``retention`` / ``attack`` / ``paraphrase`` 0/1 decisions, ``quality`` per general item and
    ``quality_unedited`` (the unedited model's, for the ratio rule), each ``None`` where not measured; ``notes``.
    ``quality``: label (or ``"unedited"``) -> per-image quality scores (HUB's aesthetic scores)."""
    from ..summary import _item_decisions, headline_suite

    run = results.studies[study][label]
    attack = _seen(run, ("attack",), which, "any")
    attack_note = "the protocol's attack prompts"
    if attack is None:
        for name, summary in results.attacks.get(study, {}).items():
            if "headline_eta" in summary:
                hs = headline_suite(run, name, summary["headline_eta"])
                if hs is not None:
                    attack = hs.seen(which, "any")
                    attack_note = f"{name} at its headline η = {summary['headline_eta']:g} ({summary['rule']})"
                    break
    q: np.ndarray | None
    q0: np.ndarray | None
    if quality is not None:
        q = quality.get(which if which == "unedited" else label)
        q0 = quality.get("unedited")
        q_note = "mean aesthetic score on the general prompts"
    else:  # tinyworld: judged agreement with the unedited model, per general item (the unedited model: 1)
        general = run.suites.get("general")
        q0 = None
        if general is None or not general.suite.labels:
            q = None
        elif which == "unedited":
            q = np.ones(len(general.suite.items))
        else:
            q = (_item_decisions(general, "edited") == _item_decisions(general, "unedited")).all(axis=1)
        q_note = "judged agreement with the unedited model on the general prompts (the unedited model: 1)"
    return {
        "target": _seen(run, ("target",), which, "any"),
        "retention": _seen(run, ("retention",), which, "all"),
        "attack": attack,
        "paraphrase": _seen(run, ("paraphrase",), which, "any"),
        "quality": None if q is None else np.asarray(q, dtype=np.float64),
        "quality_unedited": None if q0 is None else np.asarray(q0, dtype=np.float64),
        "attack_note": attack_note,
        "quality_note": q_note,
    }


def item_samples(items: Mapping[str, Any]) -> ItemSamples | None:
    """:func:`per_item`'s arrays as :class:`~erasekit.evaluate.hmean.ItemSamples` (None when one is not measured)."""
    keys = ("target", "retention", "attack", "quality")
    if any(items[k] is None or np.asarray(items[k]).size == 0 for k in keys):
        return None
    t, r, a, q = (np.asarray(items[k]) for k in keys)
    return ItemSamples(t, r, a, q, items["quality_unedited"])


def measure(
    results, study: str, label: str, which: str, quality: Mapping[str, float | np.ndarray] | None
) -> dict[str, Any]:
    """One (concept, method)'s four H-mean inputs as measured on its ``which`` images (``'edited'`` or
    ``'unedited'``), with their image counts; ``quality``: label -> the quality scores (HUB's aesthetic scores, per
    image or their mean)."""
    per_image = None if quality is None else {k: np.atleast_1d(np.asarray(v, float)) for k, v in quality.items()}
    it = per_item(results, study, label, which, per_image)
    target, retain, attack = it["target"], it["retention"], it["attack"]
    return {
        "target_proportion": _mean(target),
        "retention": _mean(retain),
        "attack_success": _mean(attack),
        "quality": _mean(it["quality"]),
        "paraphrase_proportion": _mean(it["paraphrase"]),
        "n": {
            "target": 0 if target is None else int(target.size),
            "retention": 0 if retain is None else int(retain.size),
            "attack": 0 if attack is None else int(attack.size),
        },
        "attack": it["attack_note"],
        "quality_is": it["quality_note"],
    }


def hmean_intervals(
    results,
    concepts: Sequence[str],
    labels: Sequence[str],
    categories: Mapping[str, str],
    quality: Mapping[str, np.ndarray] | None,
    rule: str,
    order: Sequence[str],
    *,
    n_boot: int,
    seed: int,
) -> dict[str, dict]:
    """label (and ``unedited``) -> :func:`~erasekit.evaluate.hmean.hmean_interval` over the categories measured in
    full (a category with an input not measured is left out, as its H-mean is)."""
    first = labels[0]
    out: dict[str, dict] = {}
    for label in ["unedited", *labels]:
        which = "unedited" if label == "unedited" else "edited"
        by_cat: dict[str, list[ItemSamples]] = {}
        complete = True
        for cat in [c for c in order if c in categories.values()]:
            members = [c for c in concepts if categories[c] == cat]
            found = [
                item_samples(per_item(results, c, first if which == "unedited" else label, which, quality))
                for c in members
            ]
            if any(f is None for f in found):
                complete = False
                continue
            by_cat[cat] = [f for f in found if f is not None]
        if not by_cat:
            continue
        try:
            iv = hmean_interval(by_cat, rule, n_boot=n_boot, seed=seed)
        except ProtocolError as e:
            out[label] = {"error": str(e)}
            continue
        if not complete:
            iv["average"] = None  # not every category has an H-mean: no average (as hmean_rows)
        out[label] = iv
    return out


def hmean_rows(
    per_concept: Mapping[str, Mapping[str, Mapping[str, Any]]],
    categories: Mapping[str, str],
    rule: str,
    order: Sequence[str],
) -> dict[str, dict]:
    """label -> {"categories": {category: four oriented metrics + hmean (or an error)}, "average"}: each metric
    averaged over the category's concepts, then :mod:`~erasekit.evaluate.hmean`."""
    rows: dict[str, dict] = {}
    labels = list(next(iter(per_concept.values())))
    for label in labels:
        cats: dict[str, dict] = {}
        for cat in [c for c in order if c in categories.values()]:
            members = [c for c, k in categories.items() if k == cat and c in per_concept]
            vals: dict[str, float | None] = {}
            for key in ("target_proportion", "retention", "attack_success", "quality"):
                xs = [per_concept[c][label][key] for c in members if per_concept[c][label][key] is not None]
                vals[key] = float(np.mean(xs)) if xs else None
            q_un = [per_concept[c]["unedited"]["quality"] for c in members]
            q_unedited = float(np.mean(q_un)) if q_un and None not in q_un else None
            missing = [k for k, v in vals.items() if v is None]
            if missing:
                cats[cat] = {"error": f"not measured: {', '.join(missing)}", "concepts": members}
                continue
            m = CategoryMetrics(
                vals["target_proportion"],  # type: ignore[arg-type]
                vals["retention"],  # type: ignore[arg-type]
                vals["attack_success"],  # type: ignore[arg-type]
                vals["quality"],  # type: ignore[arg-type]
                q_unedited,
            )
            try:  # a quality score the rule cannot take (e.g. a negative rating) is this cell's error, not the run's
                o = m.oriented(rule)
            except ProtocolError as e:
                cats[cat] = {"error": str(e), "concepts": members}
                continue
            cats[cat] = {**o, "hmean": category_hmean(**o), "concepts": members}
        done = {k: v["hmean"] for k, v in cats.items() if "hmean" in v}
        rows[label] = {
            "categories": cats,
            "average": category_mean(done) if done and len(done) == len(cats) else None,
        }
    return rows


def print_hmean(rows: Mapping[str, dict], title: str, intervals: Mapping[str, dict] | None = None) -> None:
    """The H-mean table: one row per method (and the unedited model), one column per category and the average;
    each cell H-mean (its bootstrap interval, when given) [erased / retention / robustness / quality]."""
    from rich.console import Console
    from rich.table import Table

    from ..report import shown

    cats = list(dict.fromkeys(c for r in rows.values() for c in r["categories"]))
    t = Table(title=shown(f"{title} — H-mean per category [erased / retention / robustness / quality]"))
    t.add_column("method", style="bold")
    for c in cats:
        t.add_column(shown(c), justify="right")
    t.add_column("average", justify="right")
    for label, r in rows.items():
        cells = []
        for c in cats:
            v = r["categories"].get(c, {})
            civ = (intervals or {}).get(label, {}).get("categories", {}).get(c)
            band = f" ({civ['low']:.3f}–{civ['high']:.3f})" if civ else ""
            if "hmean" in v:
                four = "/".join(f"{v[k]:.2f}" for k in ("erased", "retention", "robustness", "quality"))
                cells.append(f"{v['hmean']:.3f}{band} [{four}]")
            else:
                cells.append(shown(v.get("error", "")))
        avg_iv = (intervals or {}).get(label, {}).get("average")
        avg = "" if r["average"] is None else f"{r['average']:.3f}"
        if avg and avg_iv:
            avg += f" ({avg_iv['low']:.3f}–{avg_iv['high']:.3f})"
        t.add_row(shown(label), *cells, avg)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(120, 40 * (len(cats) + 2)))
    console.print(t)


def aesthetic_scores(results, quality_judge: Judge, cache_dir) -> dict[str, np.ndarray]:
    """``{"unedited": ..., label: ...}``: the quality judge's score per general (role ``quality``) image of each model,
    pooled over studies (the general prompts are shared); the same items, in the same order, for every model."""
    from ..cache import ImageCache

    cache = ImageCache(cache_dir)
    paths: dict[str, list[Path]] = {}
    for runs in results.studies.values():
        for label, run in runs.items():
            for s in run.suites.values():
                if _role(s) == "quality":
                    paths.setdefault("unedited", list(s.unedited))
                    paths.setdefault(label, list(s.edited))
    out = {}
    for key, ps in paths.items():
        r = quality_judge.judge([cache.load(p) for p in ps], ["quality"])
        out[key] = np.asarray(r.scores[:, 0], dtype=np.float64) if len(ps) else np.zeros(0)
    return out


def aesthetic_means(results, quality_judge: Judge, cache_dir) -> dict[str, float]:
    """The mean of :func:`aesthetic_scores` per model."""
    return {
        k: float(np.mean(v)) if v.size else float("nan")
        for k, v in aesthetic_scores(results, quality_judge, cache_dir).items()
    }


def hmean_html(rows: Mapping[str, dict], intervals: Mapping[str, dict], title: str) -> str:
    """The report page's H-mean section: per method (and the unedited model) and category, the H-mean with its
    bootstrap interval over prompts and its four inputs; the average over categories with its interval."""
    from ..report import _esc as e

    cats = list(dict.fromkeys(c for r in rows.values() for c in r["categories"]))
    any_iv = next((iv for iv in intervals.values() if "categories" in iv), None)
    how = (
        f"{100 * any_iv['level']:g} % percentile bootstrap over prompts ({any_iv['n_boot']} draws, seed "
        f"{any_iv['seed']}), the four inputs resampled together where their suites align item by item"
        if any_iv
        else "no interval"
    )
    out = [
        f"<h2>{e(title)}</h2><p>PURE's H-mean per category: the harmonic mean of erased (1 − target proportion), "
        f"within-category retention, robustness (1 − attack success) and quality, every input higher-is-better in "
        f"[0, 1]; the average is the mean over categories. Intervals: {e(how)}.</p>"
        "<table class='paired'><tr><th>method</th>"
        + "".join(f"<th>{e(c)}</th>" for c in cats)
        + "<th>average</th></tr>"
    ]
    for label, r in rows.items():
        iv = intervals.get(label, {})
        cells = []
        for c in cats:
            v = r["categories"].get(c, {})
            civ = iv.get("categories", {}).get(c)
            if "hmean" not in v:
                cells.append(f"<td>{e(v.get('error', '–'))}</td>")
                continue
            four = " / ".join(f"{v[k]:.2f}" for k in ("erased", "retention", "robustness", "quality"))
            band = f"<small>[{civ['low']:.3f}, {civ['high']:.3f}] {e(civ['resampling'])}</small>" if civ else ""
            cells.append(f"<td>{v['hmean']:.3f}{band}<small>{four}</small></td>")
        avg_iv = iv.get("average")
        avg = "–" if r["average"] is None else f"{r['average']:.3f}"
        if avg_iv and r["average"] is not None:
            avg += f"<small>[{avg_iv['low']:.3f}, {avg_iv['high']:.3f}]</small>"
        out.append(f"<tr><td><b>{e(label)}</b></td>{''.join(cells)}<td>{avg}</td></tr>")
    out.append("</table><p>Each cell: H-mean [interval], then erased / retention / robustness / quality.</p>")
    return "".join(out)


def write_record(path: Path, record: dict) -> None:
    from ..._atomic import write_bytes_atomic
    from ..report import _jsonable

    write_bytes_atomic(path, json.dumps(record, indent=1, default=_jsonable, ensure_ascii=False).encode())


def quality_rule(protocol: Protocol) -> str:
    rule = protocol.to_dict()["options"].get("quality_rule", "ratio")
    quality_score(0.5, 1.0, rule)  # refuses an unknown rule
    return str(rule)


# ------------------------------------------------------------------ the run
def execute(args: Any, protocol: Protocol, plan: dict, file_suites: Mapping[str, Suite]) -> int:
    """``erasekit bench --protocol NAME`` past its plan: every check, then fit, references, generate, judge,
    measure; writes ``OUT/results.json`` (the plan, the judges, the references, the H-mean table, the runner's
    record) and prints the H-mean table."""
    from ..._atomic import check_writable
    from ...api import plan_erase
    from ...concepts import ConceptSet
    from ...models.loading import load_pipeline
    from ...models.record import is_tinyworld
    from ..attacks import parse_etas
    from ..bench import fit_edits, parse_methods, parse_options, tinyworld_concept_set
    from ..hmean import HUB_CATEGORIES, TINYWORLD_CATEGORIES
    from ..judges import ReferenceImages, VLMJudge
    from ..plan import DEFAULT_KINDS, Plan, Study, make_study
    from ..report import write_html
    from ..runner import GenerationSettings, evaluate

    if protocol.name not in HMEAN_PROTOCOLS:
        raise ProtocolError(
            f"protocol {protocol.name!r} is checked and planned, but its end-to-end run is not in this erasekit yet "
            f"(runs: {', '.join(HMEAN_PROTOCOLS)}); use --protocol-plan-only"
        )
    out = Path(args.out or ".")
    check_writable(out / "results.json", "results file")
    opts = protocol.to_dict()["options"]
    concepts = [str(c) for c in opts["concepts"]]
    categories = concept_categories(protocol)
    tiny = protocol.name == "tinyworld"
    if tiny != is_tinyworld(args.model):
        raise ProtocolError(
            f"protocol {protocol.name!r} runs on "
            + ("--model tinyworld" if tiny else "a Stable Diffusion model (HUB: SD 1.5), not the bundled tinyworld")
            + f"; got --model {args.model}"
        )
    progress = not getattr(args, "no_progress", False)
    etas = parse_etas(getattr(args, "eta", None) or "1,2,3")
    methods = parse_methods(args.methods)
    user_options = parse_options(getattr(args, "set", None) or [], methods)
    defaults = "published" if getattr(args, "published_defaults", False) else "erasekit"
    if tiny:
        sets = {c: tinyworld_concept_set(c) for c in concepts}
    else:
        preserve = tuple(getattr(args, "preserve", None) or ())
        sets = {c: ConceptSet(erase=(c,), kind=KIND_OF_CATEGORY[categories[c]], preserve=preserve) for c in concepts}
    for label, method in methods.items():  # every method option checked before the model load
        for cs in sets.values():
            plan_erase(args.model, method, cs, defaults=defaults, **user_options[label])
    judged = _judged_labels(protocol, concepts, file_suites)
    quality = any(s.role == "quality" for s in protocol.suites)
    planned = plan_judges(
        protocol, sorted(set(judged.values())), parse_judge_paths(getattr(args, "judge_path", None)), quality=quality
    )
    settings = GenerationSettings(
        steps=protocol.steps,
        guidance=protocol.guidance,
        height=protocol.height,
        width=protocol.width,
        batch_size=getattr(args, "batch_size", 8) or 8,
    )

    # ---- models: the pipeline, the edits, the judges
    t0 = time.perf_counter()
    pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device, config=getattr(args, "config", None))
    edits, fit_seconds = fit_edits(pipe, methods, sets, user_options, out, progress=progress, defaults=defaults)
    built = {p.spec.name: p.build(args.device) for p in planned}
    concept_judges = {p.spec.name: built[p.spec.name] for p in planned if p.spec.role == "concept"}
    route = {c: next(p.spec.name for p in planned if p.spec.decides(cat)) for c, cat in judged.items()}
    # a judge that declares no category decides every concept (tinyworld's: the general prompts ask all three)
    default = next((p.spec.name for p in planned if p.spec.role == "concept" and not p.spec.categories), None)
    references: dict[str, Any] = {}
    for name, judge in concept_judges.items():
        if isinstance(judge, VLMJudge):
            asked = [c for c, n in route.items() if n == name]
            images, references = draw_references(
                pipe, reference_items(asked, file_suites), settings, getattr(args, "cache", None), progress
            )
            judge.references = ReferenceImages(images)

    # ---- studies: tinyworld's built suites and attack; HUB's files
    studies = []
    for c in concepts:
        if tiny:
            plan_c = Plan(
                kinds=DEFAULT_KINDS,
                n=int(opts["n"]),
                seed=int(opts["seed"]),
                attacks=(ATTACKS[opts["attack"]],),
                etas=etas,
            )
            studies.append(make_study(c, sets[c], edits[c], plan_c, tinyworld=True))
        else:
            own = [file_suites[s.name] for s in protocol.suites if s.source is not None and s.name.startswith(c + "/")]
            shared = [file_suites[s.name] for s in protocol.suites if s.source is not None and "/" not in s.name]
            studies.append(Study(c, own + shared, edits[c]))
    results = evaluate(
        pipe,
        studies,
        RoutedJudge(concept_judges, route, default),
        out_dir=out,
        settings=settings,
        cache_dir=getattr(args, "cache", None),
        seed=getattr(args, "seed", 0),
        n_boot=getattr(args, "bootstrap", 2000),
        progress=progress,
    )
    if results is None:  # not the main process
        return 0

    # ---- the protocol's metrics
    qj = next((built[p.spec.name] for p in planned if p.spec.role == "quality"), None)
    q_scores = aesthetic_scores(results, qj, getattr(args, "cache", None)) if qj is not None else None
    rule = quality_rule(protocol)
    per_concept = {}
    for c in concepts:
        first = next(iter(methods))
        per_concept[c] = {"unedited": measure(results, c, first, "unedited", q_scores)}
        per_concept[c].update({label: measure(results, c, label, "edited", q_scores) for label in methods})
    order = TINYWORLD_CATEGORIES if tiny else HUB_CATEGORIES
    rows = hmean_rows(per_concept, {c: categories[c] for c in concepts}, rule, order)
    n_boot, boot_seed = int(getattr(args, "bootstrap", 2000) or 2000), int(getattr(args, "seed", 0) or 0)
    intervals = hmean_intervals(
        results, concepts, list(methods), categories, q_scores, rule, order, n_boot=n_boot, seed=boot_seed
    )
    record = {
        "schema": SCHEMA,
        "kind": "erasekit protocol run",
        **plan,
        "model": args.model,
        "methods": methods,
        "method_options": user_options,
        "defaults": defaults,
        "fit_seconds": {f"{c}/{m}": v for (c, m), v in fit_seconds.items()},
        "generation": {
            **settings.to_dict(),
            "sampler": results.config.get("scheduler"),
            "sampler_declared": protocol.sampler,
            "seeds": "per item: see evaluation.studies.*.*.suites.*.suite.items[].seed",
        },
        "judges": {p.spec.name: {**p.record(), "settings": built[p.spec.name].settings} for p in planned},
        "judges_declared": [j.to_dict() for j in protocol.judges],
        "route": route,
        "references": {
            "rule": f"the concept's first prompt under seeds {REFERENCE_SEED} + 0, 1, 2, unedited model",
            "concepts": references,
        },
        "metrics": {
            "definition": __doc__.split("5. **the protocol's metrics**", 1)[-1].strip() if __doc__ else "",
            "quality_rule": rule,
            "orientation": "every H-mean input higher is better in [0, 1]: erased = 1 - target proportion, "
            "robustness = 1 - attack success; quality by the rule",
            "per_concept": per_concept,
            "hmean": rows,
            "hmean_intervals": intervals,
        },
        "seconds": time.perf_counter() - t0,
        "threads": {"asked": getattr(args, "threads", None), "torch": results.config.get("torch_threads")},
        "evaluation": results.to_dict(),
    }
    write_record(out / "results.json", record)
    title = f"protocol {protocol.name}: {', '.join(methods)} on {args.model}"
    section = hmean_html(rows, intervals, f"H-mean ({protocol.name})")
    write_html(results, out / "report.html", title=f"erasekit bench --protocol {protocol.name}", sections=(section,))
    print_hmean(rows, title, intervals)
    print(f"results: {out / 'results.json'}")
    return 0


__all__ = [
    "HMEAN_PROTOCOLS",
    "REFERENCE_SEED",
    "PlannedJudge",
    "RoutedJudge",
    "aesthetic_means",
    "aesthetic_scores",
    "hmean_html",
    "hmean_intervals",
    "item_samples",
    "per_item",
    "concept_categories",
    "draw_references",
    "hmean_rows",
    "measure",
    "parse_judge_paths",
    "plan_judges",
    "print_hmean",
    "reference_items",
    "execute",
    "write_record",
]
