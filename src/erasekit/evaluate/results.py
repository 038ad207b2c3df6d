"""What an evaluation records: per study and method, the suites' images and judgements, the metrics,
the paired comparisons and the attack summaries (written as results.json by :mod:`~erasekit.evaluate.report`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics as M
from . import stats as S
from .judges import JudgeResult
from .suites import Suite

UNEDITED = "unedited"
SCHEMA = 2


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
