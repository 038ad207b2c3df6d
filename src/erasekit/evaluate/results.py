"""What an evaluation records: per study and method, the suites' images and judgements, the metrics,
the paired comparisons and the attack summaries (written as results.json by :mod:`~erasekit.evaluate.report`).

results.json schema versions (``"schema"``; :func:`read_results_json` reads every one and upgrades it to the newest):

* 2 — per registry attack and method: the judged ASR (bootstrap interval) beside the unedited model's rate on the same
  attacked items, and the attack's cost; paired comparisons only for the suites every method shares.
* 3 — adds, per attack and method, Wilson score intervals (``"wilson"``) beside the bootstrap ones, and paired
  comparisons under every attack (``paired[study]``, metric ``ASR <attack>``): each method against the unedited
  model on the same attacked items, and every two methods on the same target items (prompt and seed), Holm-corrected
  with the study's other comparisons. Reading a schema-2 file fills the Wilson intervals from the recorded counts;
  the per-attack paired comparisons cannot be rebuilt from it and stay absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics as M
from . import stats as S
from .judges import JudgeResult
from .suites import Suite

UNEDITED = "unedited"
SCHEMA = 3


@dataclass
class SuiteRun:
    """One suite under one method: the images (cache paths) of both models and their judgements."""

    suite: Suite
    unedited: list[Path]
    edited: list[Path]
    judged_unedited: JudgeResult | None = None
    judged_edited: JudgeResult | None = None
    pixel_distance: list[float] = field(default_factory=list)
    # per item: the unedited image shows every prompted attribute (Study.attributes)
    kept_unedited: np.ndarray | None = None

    def seen(self, which: str, mode: str = "any") -> np.ndarray:
        """Per item: does the judge see any (``mode="any"``) / all of the item's concepts?"""
        jr = self.judged_edited if which == "edited" else self.judged_unedited
        agg = np.any if mode == "any" else np.all
        assert jr is not None, f"the {which} images are not judged"
        return np.array(
            [bool(agg([jr.seen(c)[i] for c in it.concepts])) for i, it in enumerate(self.suite.items)], dtype=bool
        )

    def attacked(self, which: str) -> np.ndarray:
        """Per attacked item: did the attack succeed (the judge sees any of its concepts)? A best-of-K suite
        (``info['best_of']``: K draws per target item, each draw's meta naming its item ``of``) succeeds on an item
        when any of its draws does."""
        seen = self.seen(which, "any")
        if not self.suite.info.get("best_of"):
            return seen
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(self.suite.items):
            groups.setdefault(dict(it.meta).get("of", str(i)), []).append(i)
        return np.array([bool(seen[idx].any()) for idx in groups.values()], dtype=bool)

    def attacked_keys(self) -> list[tuple[str, int | str]]:
        """Per attacked item (aligned with :meth:`attacked`): the target item it attacks, as (target prompt, seed) —
        or, for a best-of-K suite, ("of", target index). Two methods' attacks on the same target suite pair on it even
        when each searched its own adversarial prompt."""
        if self.suite.info.get("best_of"):
            keys: dict[tuple[str, int | str], None] = {}
            for i, it in enumerate(self.suite.items):
                keys.setdefault(("of", dict(it.meta).get("of", str(i))), None)
            return list(keys)
        return [(dict(it.meta).get("original prompt", it.prompt), it.seed) for it in self.suite.items]

    def attacked_prompts(self) -> list[str]:
        """Per attacked item: the target prompt it attacks (the cluster of the paired bootstrap)."""
        if self.suite.info.get("best_of"):
            first: dict[str, str] = {}
            for i, it in enumerate(self.suite.items):
                first.setdefault(dict(it.meta).get("of", str(i)), dict(it.meta).get("original prompt", it.prompt))
            return list(first.values())
        return [dict(it.meta).get("original prompt", it.prompt) for it in self.suite.items]

    def to_dict(self) -> dict:
        return {
            "suite": self.suite.to_dict(),
            "unedited_images": [str(p) for p in self.unedited],
            "edited_images": [str(p) for p in self.edited],
            "judged_unedited": self.judged_unedited.to_dict() if self.judged_unedited else None,
            "judged_edited": self.judged_edited.to_dict() if self.judged_edited else None,
            "pixel_distance": self.pixel_distance,
            "kept_unedited": None if self.kept_unedited is None else [bool(x) for x in self.kept_unedited],
        }


@dataclass
class MethodRun:
    label: str
    edit_summary: dict
    edit_config: dict
    suites: dict[str, SuiteRun]
    metrics: dict[str, M.Estimate] = field(default_factory=dict)
    baseline: dict[str, M.Estimate] = field(default_factory=dict)  # the same rates on the unedited model's images

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "edit": self.edit_summary,
            "config": self.edit_config,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "unedited_metrics": {k: v.to_dict() for k, v in self.baseline.items()},
            "suites": {k: v.to_dict() for k, v in self.suites.items()},
        }


@dataclass
class Results:
    """Everything measured. ``paired``: per study, every method vs the unedited model and vs every other method
    (:mod:`~erasekit.evaluate.stats`, Holm-corrected per study); ``attacks``: per study, the concept-vector curve
    with its calibrated headline η, and the token search scored by judge and objective."""

    studies: dict[str, dict[str, MethodRun]]
    config: dict
    judge: dict
    timing: dict
    paired: dict[str, list[S.Comparison]] = field(default_factory=dict)
    attacks: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "config": self.config,
            "judge": self.judge,
            "timing": self.timing,
            "paired": {s: [c.to_dict() for c in cs] for s, cs in self.paired.items()},
            "attacks": {s: {name: _attack_dict(a) for name, a in atk.items()} for s, atk in self.attacks.items()},
            "studies": {s: {m: r.to_dict() for m, r in runs.items()} for s, runs in self.studies.items()},
        }


def _attack_dict(x):
    if isinstance(x, M.Estimate):
        return x.to_dict()
    if isinstance(x, dict):
        return {k: _attack_dict(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_attack_dict(v) for v in x]
    return x


def read_results_json(path: str | Path) -> dict:
    """A results.json of any schema, upgraded to the newest (:data:`SCHEMA`; the module docstring lists the
    versions). Refuses a file of an unknown (newer) schema in one line."""
    import json

    from ..errors import EraseKitError

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    version = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(version, int) or not 1 <= version <= SCHEMA:
        raise EraseKitError(
            f"{path} is not an erasekit results.json of schema 1..{SCHEMA} (found schema {version!r}); "
            "read it with the erasekit version that wrote it"
        )
    if version < 3:
        _add_wilson(data.get("attacks", {}))
        data["schema_read_from"] = version
        data["schema"] = SCHEMA
    return data


def _add_wilson(attacks: dict) -> None:
    """Schema 2 → 3: the Wilson interval of every per-method attack rate, from its recorded counts."""
    for per_study in attacks.values():
        for entry in per_study.values():
            for per_method in entry.get("methods", {}).values() if isinstance(entry, dict) else ():
                if isinstance(per_method, dict) and "wilson" not in per_method:
                    per_method["wilson"] = {
                        k: list(S.wilson(int(v["k"]), int(v["n"]), float(v.get("level", M.LEVEL))))
                        for k, v in per_method.items()
                        if isinstance(v, dict) and v.get("k") is not None and v.get("n") is not None
                    }


def versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"erasekit": __version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "numpy", "safetensors", "nudenet", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
