"""The tinyworld classifier as a judge: a concept is a shape, colour or pattern (or a synonym of one).

Score = the classifier's softmax probability of the concept's class on its head; decision = that class is the
head's argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ...errors import JudgeError
from ._weights import file_sha256, safetensors_file
from .base import Judge, JudgeConfig, JudgeResult, help_field, register_judge


@dataclass
class TinyworldJudgeConfig(JudgeConfig):
    ARG: ClassVar[str | None] = "path"

    path: str | None = help_field(None, "the classifier's .safetensors weights (default: the weights erasekit ships)")

    def __post_init__(self) -> None:
        if self.path is not None and not str(self.path).strip():
            raise JudgeError("the tinyworld judge's path is empty; leave it out to use the shipped weights")


@register_judge("tinyworld", TinyworldJudgeConfig, "the bundled tinyworld classifier (shape, colour, pattern heads)")
class TinyworldConceptJudge(Judge):
    """The tinyworld classifier as a judge (``TinyworldConceptJudge(path=None, device="cpu")``)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        config: TinyworldJudgeConfig | None = None,
        device: str = "cpu",
        **options: Any,
    ):
        from ...tinyworld.judge import TinyworldJudge

        self.config = self._configure(config, {"path": None if path is None else str(path), **options})
        where = Path(self.config.path) if self.config.path is not None else TinyworldJudge.default_path()
        if where.suffix == ".safetensors" and not where.is_file():
            raise JudgeError(
                f"tinyworld judge weights not found at {str(where)!r}; "
                "the shipped weights are missing from this install"
            )
        self.path = safetensors_file(where, "the tinyworld judge's weights")
        self.model = TinyworldJudge.load(self.path, device=device)
        self._sha = file_sha256(self.path)

    @property
    def settings(self) -> dict:
        return {
            "judge": self.name,
            "weights": str(self.path),
            "weights_sha256": self._sha,
            "decision": "argmax of the attribute's head",
            "score": "softmax probability of the concept's class",
            "input_size": self.model.config["size"],
        }

    def judge(self, images: Sequence[Image.Image], concepts: Sequence[str]) -> JudgeResult:
        from ...tinyworld.judge import HEADS
        from ..suites import tinyworld_attribute

        where = [tinyworld_attribute(c) for c in concepts]
        scores = np.zeros((len(images), len(concepts)))
        decisions = np.zeros((len(images), len(concepts)), dtype=bool)
        if len(images):
            probs = {k: v.numpy() for k, v in self.model.predict(list(images)).items()}
            for j, (attr, value) in enumerate(where):
                k = HEADS[attr].index(value)
                scores[:, j] = probs[attr][:, k]
                decisions[:, j] = probs[attr].argmax(-1) == k
        return self._result(concepts, scores, decisions)
