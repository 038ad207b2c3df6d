"""LAION's aesthetic predictor (christophschuhmann/improved-aesthetic-predictor; HUB's target-image quality).

A small MLP reads the L2-normalised CLIP ViT-L/14 image embedding and predicts the image's mean human rating
(1-10, trained on SAC + LOGOS + AVA): ``Linear(d, 1024) → Dropout(0.2) → Linear(1024, 128) → Dropout(0.2) →
Linear(128, 64) → Dropout(0.1) → Linear(64, 16) → Linear(16, 1)`` with ``d = 768``. The public predictor has its
ReLUs commented out, so at evaluation (dropout off) the score is an affine function of the embedding
(:func:`aesthetic_score`). The MLP is read from ``.safetensors`` only (the public ``.pth`` converts with the line
:func:`~._weights.safetensors_file` prints); the CLIP folder is a transformers ``CLIPModel`` folder.

Score = the predicted rating, the same for every concept asked (aesthetics ignore the concept); decision = score
>= ``threshold`` (default 5, the cut of LAION-Aesthetics V2's "5+" subset). HUB runs CLIP in float16 on CUDA
through OpenAI's ``clip`` package; here CLIP runs in float32 with the same preprocessing (short side to 224,
bicubic, centre crop, OpenAI's mean / std).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ...errors import JudgeError
from ._weights import file_sha256, safetensors_file
from .base import Judge, JudgeConfig, JudgeResult, help_field, register_judge
from .clip import ClipEncoder

HIDDEN = (1024, 128, 64, 16)  # the MLP's hidden widths; its input is the CLIP embedding's
LAYERS = (0, 2, 4, 6, 7)  # nn.Sequential indices of its Linear layers (1, 3, 5 are dropouts)
ARCHITECTURE = (
    "Linear(d,1024) Dropout(0.2) Linear(1024,128) Dropout(0.2) Linear(128,64) Dropout(0.1) Linear(64,16) "
    "Linear(16,1); no activations (the public predictor's ReLUs are commented out); dropout off"
)


def check_mlp_weights(weights: Mapping[str, Any]) -> int:
    """Refuse a state dict that is not the predictor's (keys ``layers.{0,2,4,6,7}.{weight,bias}``, widths
    d → 1024 → 128 → 64 → 16 → 1); returns the input width d."""
    expected = {f"layers.{i}.{p}" for i in LAYERS for p in ("weight", "bias")}
    if set(weights) != expected:
        raise JudgeError(
            f"not LAION's aesthetic MLP: its keys are {sorted(expected)}, got {sorted(weights)[:12]}"
            + (" ..." if len(weights) > 12 else "")
        )
    d = int(weights["layers.0.weight"].shape[1])
    widths = (d, *HIDDEN, 1)
    for k, i in enumerate(LAYERS):
        w, b = tuple(weights[f"layers.{i}.weight"].shape), tuple(weights[f"layers.{i}.bias"].shape)
        if w != (widths[k + 1], widths[k]) or b != (widths[k + 1],):
            raise JudgeError(
                f"not LAION's aesthetic MLP: layers.{i} is {w} + {b}, expected {(widths[k + 1], widths[k])} + "
                f"{(widths[k + 1],)} (widths {' -> '.join(map(str, widths))})"
            )
    return d


def aesthetic_score(e: Any, w: Mapping[str, Any]) -> Any:
    """The predicted rating of each L2-normalised CLIP image embedding ``e`` (n, d) -> (n,)."""
    from torch.nn.functional import linear

    h = linear(e, w["layers.0.weight"], w["layers.0.bias"])  # (n, 1024); Dropout(0.2) is the identity at eval
    h = linear(h, w["layers.2.weight"], w["layers.2.bias"])  # (n, 128); Dropout(0.2)
    h = linear(h, w["layers.4.weight"], w["layers.4.bias"])  # (n, 64); Dropout(0.1)
    h = linear(h, w["layers.6.weight"], w["layers.6.bias"])  # (n, 16)
    return linear(h, w["layers.7.weight"], w["layers.7.bias"])[:, 0]  # (n,) the rating, no activation anywhere


@dataclass
class AestheticsConfig(JudgeConfig):
    ARG: ClassVar[str | None] = "path"

    path: str = help_field("", "the MLP's .safetensors weights (e.g. sac+logos+ava1-l14-linearMSE, converted)")
    clip: str = help_field("", "local CLIP ViT-L/14 folder (transformers CLIPModel, *.safetensors weights)")
    threshold: float = help_field(5.0, "decision: the predicted rating is at least this (LAION-Aesthetics V2 5+)")
    batch_size: int = help_field(32, "images per CLIP forward pass")

    def __post_init__(self) -> None:
        if not str(self.path).strip():
            raise JudgeError(
                "the aesthetics judge needs the MLP's weights: aesthetics:/path/mlp.safetensors,clip=/path/clip-vit-l14"
            )
        if not str(self.clip).strip():
            raise JudgeError(
                "the aesthetics judge needs a CLIP ViT-L/14 folder: add ,clip=/path/to/clip-vit-large-patch14"
            )
        self.path, self.clip = str(self.path), str(self.clip)
        self.threshold = float(self.threshold)
        if not np.isfinite(self.threshold):
            raise JudgeError(f"the aesthetics threshold must be a finite rating, got {self.threshold}")
        if int(self.batch_size) < 1:
            raise JudgeError(f"the aesthetics judge's batch_size must be positive, got {self.batch_size}")
        self.batch_size = int(self.batch_size)


@register_judge("aesthetics", AestheticsConfig, "LAION's aesthetic predictor (MLP on CLIP ViT-L/14 embeddings)")
class AestheticsJudge(Judge):
    """LAION's aesthetic predictor (``AestheticsJudge(path, clip=FOLDER)``)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        config: AestheticsConfig | None = None,
        device: str = "cpu",
        **options: Any,
    ):
        from safetensors.torch import load_file

        self.config = c = self._configure(config, {"path": None if path is None else str(path), **options})
        self.path = safetensors_file(c.path, "the aesthetic predictor's weights")
        weights = load_file(str(self.path))
        self.input_dim = check_mlp_weights(weights)
        self.encoder = ClipEncoder(c.clip, device=device, batch_size=c.batch_size, text=False)
        d = int(self.encoder.model.config.projection_dim)
        if d != self.input_dim:
            raise JudgeError(
                f"the aesthetic MLP reads {self.input_dim}-d embeddings but the CLIP folder {c.clip!r} makes {d}-d "
                "ones; give the CLIP it was trained on (ViT-L/14 for the public predictor)"
            )
        self.weights = {k: v.float().to(device) for k, v in weights.items()}
        self._sha = file_sha256(self.path)

    @property
    def settings(self) -> dict:
        return {
            "judge": self.name,
            "weights": str(self.path),
            "weights_sha256": self._sha,
            "architecture": ARCHITECTURE,
            "input": f"L2-normalised CLIP image embedding ({self.input_dim}-d)",
            "clip": self.encoder.describe(),
            "score": "the predicted rating (1-10), the same for every concept",
            "threshold": self.config.threshold,
            "decision": "score >= threshold",
        }

    def predict(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n,) predicted ratings."""
        import torch

        images = list(images)
        if not images:
            return np.zeros(0)
        with torch.no_grad():
            e = self.encoder.image_features(images)  # (n, d), L2-normalised
            return aesthetic_score(e, self.weights).cpu().numpy().astype(np.float64)

    def judge(self, images: Sequence[Image.Image], concepts: Sequence[str]) -> JudgeResult:
        rating = self.predict(images)  # (n,)
        scores = np.repeat(rating[:, None], len(concepts), axis=1)  # (n, concepts)
        details = {
            "aesthetic": [round(float(r), 6) for r in rating],
            "aesthetic_mean": float(rating.mean()) if len(rating) else None,
        }
        return self._result(concepts, scores, scores >= self.config.threshold, details)
