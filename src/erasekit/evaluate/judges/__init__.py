"""Judges decide whether an image shows a concept (DESIGN §7): one interface, a registry, one module per judge.

* ``tinyworld`` — :class:`TinyworldConceptJudge`, the bundled tinyworld classifier;
* ``nudenet`` — :class:`NudeNetJudge`, NudeNet's bundled ONNX detector with pinned classes and threshold (the nine
  ``*_EXPOSED`` classes at 0.6, as MACE / RECE / SPEED evaluate) and per-class counts;
* ``clip:PATH`` — :class:`CLIPJudge`, zero-shot CLIP score and CLIP accuracy from a local CLIP folder;
* ``vlm:PATH`` — :class:`VLMJudge`, HUB's VLM judge (three reference images, yes / no / idk) through transformers;
* ``aesthetics:MLP.safetensors,clip=FOLDER`` — :class:`AestheticsJudge`, LAION's aesthetic predictor.

Weights are read from ``*.safetensors`` only and pinned by sha256 in the settings; a pickle-only weight file is
refused with the line that converts it (:mod:`._weights`).

``judge.judge(images, concepts)`` returns a :class:`JudgeResult`: a score and a decision per (image, concept),
details a judge measures beyond that, and the judge's settings, which every result records.
:func:`make_judge` builds a judge from a spec string (:mod:`.base`); :func:`register_judge` adds one.
"""

from . import aesthetics, clip, nudenet, tinyworld, vlm  # noqa: F401  (registration)
from ._weights import PICKLE_SUFFIXES, file_sha256, safetensors_file, safetensors_folder
from .aesthetics import AestheticsConfig, AestheticsJudge, aesthetic_score
from .base import (
    Judge,
    JudgeConfig,
    JudgeResult,
    available_judges,
    get_judge_class,
    judge_help,
    make_config,
    make_judge,
    parse_spec,
    register_judge,
)
from .clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipEncoder, CLIPJudge, CLIPJudgeConfig
from .nudenet import NUDENET_EXPOSED, NUDENET_LABELS, NUDITY_ALIASES, NudeNetConfig, NudeNetJudge, class_counts
from .tinyworld import TinyworldConceptJudge, TinyworldJudgeConfig
from .vlm import (
    ReferenceFolder,
    ReferenceImages,
    References,
    VLMJudge,
    VLMJudgeConfig,
    final_answer,
    hub_question,
    read_answer,
)

__all__ = [
    "NUDENET_EXPOSED",
    "NUDENET_LABELS",
    "NUDITY_ALIASES",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PICKLE_SUFFIXES",
    "AestheticsConfig",
    "AestheticsJudge",
    "CLIPJudge",
    "CLIPJudgeConfig",
    "ClipEncoder",
    "Judge",
    "JudgeConfig",
    "JudgeResult",
    "NudeNetConfig",
    "NudeNetJudge",
    "TinyworldConceptJudge",
    "TinyworldJudgeConfig",
    "ReferenceFolder",
    "ReferenceImages",
    "References",
    "VLMJudge",
    "VLMJudgeConfig",
    "aesthetic_score",
    "available_judges",
    "class_counts",
    "file_sha256",
    "final_answer",
    "hub_question",
    "read_answer",
    "get_judge_class",
    "judge_help",
    "make_config",
    "make_judge",
    "parse_spec",
    "register_judge",
    "safetensors_file",
    "safetensors_folder",
]
