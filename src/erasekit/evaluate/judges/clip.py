"""Zero-shot CLIP from a local ``transformers`` CLIP folder: CLIP score, and CLIP accuracy over a candidate set.

* CLIP score (Hessel et al., EMNLP 2021): ``100 · max(cos(image, text), 0)`` with text ``template.format(concept)``
  (:meth:`CLIPJudge.prompt_scores` scores each image against its own prompt, as MACE's and SPACE's CLIP scores do).
* Decision without candidates: the concept's text beats every neutral text (``negatives``) for that image.
* CLIP accuracy (``candidates`` given, e.g. MACE's erased + retained concept names): the decision is zero-shot
  top-1 among ``candidate_template.format(name)`` for every candidate; the result's details carry, per concept,
  the accuracy (share of images whose top-1 is the concept) and the mean softmax probability of the concept at
  temperature 1/100 — what MACE's ``metrics/evaluate_clip_accuracy.py`` averages and calls accuracy.

Preprocessing (resize the short side bicubic, centre crop, normalise) follows the folder's
``preprocessor_config.json`` when present, else OpenAI's constants; no torchvision needed. Weights are read only
from ``*.safetensors`` and pinned by sha256.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ...errors import ConceptError, JudgeError
from ._weights import folder_pins, safetensors_folder
from .base import Judge, JudgeConfig, JudgeResult, help_field, register_judge

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEncoder:
    """A local CLIP folder (``CLIPModel``, tokenizer when ``text``), loaded from safetensors and pinned; encodes
    images and texts to L2-normalised float32 embeddings."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 32, text: bool = True):
        import torch
        from transformers import CLIPModel, CLIPTokenizer

        self.path = Path(path).expanduser()
        weights = safetensors_folder(self.path, "the CLIP model folder")
        # transformers types .to() through a decorator whose first parameter is the model, not the device
        model = CLIPModel.from_pretrained(str(self.path), local_files_only=True, use_safetensors=True)
        self.model = model.to(device).eval()  # type: ignore[arg-type]
        self.tokenizer = CLIPTokenizer.from_pretrained(str(self.path), local_files_only=True) if text else None
        pre_file = self.path / "preprocessor_config.json"
        pre = json.loads(pre_file.read_text()) if pre_file.is_file() else {}
        self.image_size = int(self.model.config.vision_config.image_size)
        self.mean = tuple(float(x) for x in pre.get("image_mean", OPENAI_CLIP_MEAN))
        self.std = tuple(float(x) for x in pre.get("image_std", OPENAI_CLIP_STD))
        self.device, self.batch_size = device, batch_size
        self.pins = folder_pins(self.path, weights)
        self._torch = torch

    def describe(self) -> dict[str, Any]:
        vc = self.model.config.vision_config
        return {
            "model": str(self.path),
            "hub": self.pins["hub"],
            "weights_sha256": self.pins["weights_sha256"],
            "config_sha256": self.pins["config_sha256"],
            "backbone": (
                f"CLIP ViT patch {vc.patch_size}, {vc.hidden_size}-d, {vc.num_hidden_layers} layers, "
                f"{self.image_size}px"
            ),
            "projection_dim": int(self.model.config.projection_dim),
            "preprocess": f"resize short side to {self.image_size} (bicubic), centre crop, normalise",
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "embedding": "L2-normalised projected embeddings, float32",
        }

    def pixels(self, images: Sequence[Image.Image]) -> Any:
        """(n, 3, s, s) float tensor: short side resized to s (bicubic), centre crop, normalised."""
        torch = self._torch
        s = self.image_size
        out = []
        for im in images:
            im = im.convert("RGB")
            scale = s / min(im.size)
            im = im.resize(
                (max(s, round(im.width * scale)), max(s, round(im.height * scale))), Image.Resampling.BICUBIC
            )
            left, top = (im.width - s) // 2, (im.height - s) // 2
            x = np.asarray(im.crop((left, top, left + s, top + s)), dtype=np.float32) / 255.0
            out.append((x - np.array(self.mean, np.float32)) / np.array(self.std, np.float32))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(self.device)

    def image_features(self, images: Sequence[Image.Image]) -> Any:
        """(n, d) L2-normalised image embeddings."""
        torch = self._torch
        feats = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                f = self.model.get_image_features(pixel_values=self.pixels(images[i : i + self.batch_size]))
                feats.append(getattr(f, "pooler_output", f))
        return torch.nn.functional.normalize(torch.cat(feats).float(), dim=-1)

    def text_features(self, texts: Sequence[str]) -> Any:
        """(m, d) L2-normalised text embeddings."""
        torch = self._torch
        if self.tokenizer is None:
            raise JudgeError("this CLIP encoder was loaded without its tokenizer")
        feats = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                tok = self.tokenizer(
                    list(texts[i : i + self.batch_size]), padding=True, truncation=True, return_tensors="pt"
                ).to(self.device)
                t = self.model.get_text_features(**tok)
                feats.append(getattr(t, "pooler_output", t))
        return torch.nn.functional.normalize(torch.cat(feats).float(), dim=-1)


def clip_score(cos: np.ndarray) -> np.ndarray:
    """CLIP score = 100 · max(cos, 0) (Hessel et al. 2021, w = 100 as torchmetrics)."""
    return 100.0 * np.maximum(cos, 0.0)


def softmax_100(cos: np.ndarray) -> np.ndarray:
    """softmax over the last axis of 100 · cos (CLIP's zero-shot probabilities at OpenAI's logit scale)."""
    z = 100.0 * cos
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class CLIPJudgeConfig(JudgeConfig):
    ARG: ClassVar[str | None] = "path"

    path: str = help_field("", "local CLIP model folder (CLIPModel + tokenizer, *.safetensors weights)")
    template: str = help_field("a photo of {}", "text of a concept for the CLIP score ('{}' = the concept)")
    negatives: tuple[str, ...] = help_field(
        ("a photo",), "neutral texts a concept must beat (the decision when no candidates are given)"
    )
    candidates: tuple[str, ...] = help_field(
        (), "zero-shot candidate names: the decision becomes top-1 among them (CLIP accuracy)"
    )
    candidate_template: str | None = help_field(
        None, "text of each candidate ('{}' = the name; default: template; MACE: 'a photo of the {}')"
    )
    batch_size: int = help_field(32, "images (and texts) per forward pass")

    def __post_init__(self) -> None:
        if not str(self.path).strip():
            raise JudgeError("the CLIP judge needs a local model folder: clip:/path/to/clip-vit-large-patch14")
        self.path = str(self.path)
        for what, t in (("template", self.template), ("candidate_template", self.candidate_template)):
            if t is not None and t.count("{}") != 1:
                raise ConceptError(f"the CLIP judge's {what} needs exactly one '{{}}' for the concept, got {t!r}")
        if isinstance(self.negatives, str):
            self.negatives = (self.negatives,)
        if isinstance(self.candidates, str):
            self.candidates = tuple(c.strip() for c in self.candidates.split("|") if c.strip())
        self.negatives, self.candidates = tuple(self.negatives), tuple(self.candidates)
        if not self.negatives:
            raise ConceptError("the CLIP judge needs at least one neutral text to decide against")
        if len(set(self.candidates)) != len(self.candidates) or len(self.candidates) == 1:
            raise ConceptError(f"CLIP candidates must be two or more distinct names, got {list(self.candidates)}")
        if int(self.batch_size) < 1:
            raise JudgeError(f"the CLIP judge's batch_size must be positive, got {self.batch_size}")
        self.batch_size = int(self.batch_size)


@register_judge("clip", CLIPJudgeConfig, "zero-shot CLIP from a local folder: CLIP score and CLIP accuracy")
class CLIPJudge(Judge):
    """Zero-shot CLIP judge (``CLIPJudge(path, template=..., negatives=..., candidates=...)``)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        config: CLIPJudgeConfig | None = None,
        device: str = "cpu",
        **options: Any,
    ):
        self.config = self._configure(config, {"path": None if path is None else str(path), **options})
        c = self.config
        self.encoder = ClipEncoder(c.path, device=device, batch_size=c.batch_size)
        self.path, self.template, self.negatives = self.encoder.path, c.template, c.negatives
        self.device, self.batch_size = device, c.batch_size
        self.model, self.tokenizer = self.encoder.model, self.encoder.tokenizer

    @property
    def candidate_template(self) -> str:
        return self.config.candidate_template or self.template

    @property
    def settings(self) -> dict:
        c = self.config
        out = {"judge": self.name, **self.encoder.describe()}
        out.update(
            template=c.template,
            negatives=list(c.negatives),
            score="CLIP score = 100 * max(cos(image, text), 0)",
        )
        if c.candidates:
            out.update(
                candidates=list(c.candidates),
                candidate_template=self.candidate_template,
                decision="the concept is the zero-shot top-1 among the candidates",
                clip_accuracy="share of images whose top-1 candidate is the concept",
                clip_probability="mean softmax(100 * cos) of the concept over the candidates",
            )
        else:
            out["decision"] = "concept text has the highest similarity among concept + negatives"
        return out

    def judge(self, images: Sequence[Image.Image], concepts: Sequence[str]) -> JudgeResult:
        images, concepts = list(images), list(concepts)
        cands = list(self.config.candidates)
        missing = [c for c in concepts if cands and c not in cands]
        if missing:
            raise ConceptError(f"the CLIP judge's candidates {cands} do not include {missing}; add them")
        if not images:
            empty = np.zeros((0, len(concepts)))
            return self._result(concepts, empty, empty.astype(bool))
        v = self.encoder.image_features(images)
        texts = [self.template.format(c) for c in concepts] + list(self.negatives)
        cos = (v @ self.encoder.text_features(texts).T).cpu().numpy().astype(np.float64)  # (n, concepts + negatives)
        c, neg = cos[:, : len(concepts)], cos[:, len(concepts) :]
        scores = clip_score(c)  # (n, concepts)
        details: dict[str, Any] = {"clip_score": {k: float(scores[:, j].mean()) for j, k in enumerate(concepts)}}
        if cands:
            tc = self.encoder.text_features([self.candidate_template.format(x) for x in cands])
            cc = (v @ tc.T).cpu().numpy().astype(np.float64)  # (n, candidates)
            top1 = cc.argmax(axis=1)  # (n,)
            probs = softmax_100(cc)  # (n, candidates)
            idx = [cands.index(k) for k in concepts]
            decisions = top1[:, None] == np.array(idx)[None, :]  # (n, concepts)
            details.update(
                clip_accuracy={k: float(decisions[:, j].mean()) for j, k in enumerate(concepts)},
                clip_probability={k: float(probs[:, i].mean()) for k, i in zip(concepts, idx, strict=True)},
                top1=[cands[i] for i in top1],
            )
        else:
            decisions = c > neg.max(axis=1, keepdims=True)
        return self._result(concepts, scores, decisions, details)

    def prompt_scores(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """(n,) CLIP score of each image against its own prompt: 100 · max(cos(image_i, prompt_i), 0)."""
        images, prompts = list(images), list(prompts)
        if len(images) != len(prompts):
            raise JudgeError(f"prompt_scores needs one prompt per image, got {len(images)} images, {len(prompts)}")
        if not images:
            return np.zeros(0)
        v, t = self.encoder.image_features(images), self.encoder.text_features(prompts)
        return clip_score((v * t).sum(-1).cpu().numpy().astype(np.float64))
