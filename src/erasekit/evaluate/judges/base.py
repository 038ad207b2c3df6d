"""The judge interface, its result, the per-judge config and the registry (DESIGN §7).

A judge decides, per image and concept, whether the image shows the concept. One module per judge registers it
with :func:`register_judge` together with a dataclass config (help text per field, validation in
``__post_init__``); :func:`make_judge` builds one from a spec string::

    tinyworld                                  the bundled tinyworld classifier
    nudenet,threshold=0.45                     NudeNet's bundled ONNX detector
    clip:/models/clip-vit-large-patch14        zero-shot CLIP from a local folder
    vlm:/models/InternVL2_5-8B-MPO-hf          HUB's VLM judge (reference images given by the caller)
    aesthetics:/m/sac+logos+ava1-l14-linearMSE.safetensors,clip=/models/clip-vit-large-patch14

``NAME[:ARG][,key=value]...``: ``ARG`` fills the judge's main field (a path), each ``key=value`` a config field
(tuples as ``a|b|c``); keyword options to :func:`make_judge` are applied on top. An option the judge does not
take is refused, naming the ones it does.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
from PIL import Image

from ...errors import JudgeError


def help_field(default: Any, help: str) -> Any:
    """A config field carrying its help text (shown by :func:`judge_help`)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class JudgeResult:
    """``scores`` and ``decisions`` are (n_images, n_concepts), columns in ``concepts`` order; ``details`` holds
    what a judge measures beyond one score per cell (NudeNet's per-class counts, the VLM's answers, CLIP
    accuracy), JSON-ready."""

    concepts: list[str]
    scores: np.ndarray
    decisions: np.ndarray
    settings: dict
    details: dict = field(default_factory=dict)

    def seen(self, concept: str) -> np.ndarray:
        """Per image: does the judge see ``concept``?"""
        return self.decisions[:, self.concepts.index(concept)]

    def score(self, concept: str) -> np.ndarray:
        return self.scores[:, self.concepts.index(concept)]

    def to_dict(self) -> dict:
        out = {
            "concepts": self.concepts,
            "scores": np.round(self.scores, 6).tolist(),
            "decisions": self.decisions.astype(bool).tolist(),
            "settings": self.settings,
        }
        if self.details:
            out["details"] = self.details
        return out


@dataclass
class JudgeConfig:
    """Options every judge shares (none yet). ``ARG``: the field a spec's ``NAME:ARG`` fills (None: the judge
    takes no argument)."""

    ARG: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


C = TypeVar("C", bound=JudgeConfig)


class Judge(ABC):
    """Decides, per image and concept, whether the image shows the concept.

    Subclasses are registered with :func:`register_judge`, which sets ``name``, ``config_class`` and ``summary``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[JudgeConfig]]
    summary: ClassVar[str]
    config: Any  # the judge's own config_class instance

    @property
    @abstractmethod
    def settings(self) -> dict:
        """Everything needed to reproduce the judge's decisions (recorded in every result)."""

    @abstractmethod
    def judge(self, images: Sequence[Image.Image], concepts: Sequence[str]) -> JudgeResult:
        """Score and decide every concept on every image."""

    def _configure(self, config: JudgeConfig | None, options: Mapping[str, Any]) -> Any:
        """The judge's config: ``config`` as given (then no other option may be), else built from ``options``."""
        given = {k: v for k, v in options.items() if v is not None}
        if config is not None:
            if given:
                raise JudgeError(f"the {self.name} judge got both a config and options {sorted(given)}; give one")
            if not isinstance(config, self.config_class):
                raise JudgeError(
                    f"the {self.name} judge takes a {self.config_class.__name__}, got {type(config).__name__}"
                )
            return config
        return build_config(self.config_class, given, self.name)

    def _result(
        self, concepts: Sequence[str], scores: np.ndarray, decisions: np.ndarray, details: dict | None = None
    ) -> JudgeResult:
        return JudgeResult(
            list(concepts),
            np.asarray(scores, dtype=np.float64),
            np.asarray(decisions, dtype=bool),
            self.settings,
            details or {},
        )


# ----------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Judge]] = {}
_NAME_RX = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def register_judge(name: str, config_class: type[JudgeConfig], summary: str) -> Callable[[type[Judge]], type[Judge]]:
    """Class decorator that registers a judge under ``name`` with its config class and one-line summary."""
    if not _NAME_RX.fullmatch(name):
        raise JudgeError(f"judge name {name!r} must be lowercase words joined by '-'")

    def deco(cls: type[Judge]) -> type[Judge]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise JudgeError(f"judge {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name, cls.config_class, cls.summary = name, config_class, summary
        _REGISTRY[name] = cls
        return cls

    return deco


def get_judge_class(name: str) -> type[Judge]:
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise JudgeError(f"unknown judge {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def available_judges() -> dict[str, str]:
    """Registered judge names with their one-line summaries."""
    return {n: _REGISTRY[n].summary for n in sorted(_REGISTRY)}


def judge_help(name: str) -> dict[str, str]:
    """``name``'s config fields with their help text."""
    return get_judge_class(name).config_class.field_help()


def build_config(config_class: type[C], options: Mapping[str, Any], judge: str) -> C:
    """``config_class(**options)``; an option it does not have is refused, naming the ones it has."""
    valid = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise JudgeError(f"the {judge} judge has no option(s) {unknown}; its options are {', '.join(valid)}")
    return config_class(**options)


# ----------------------------------------------------------------------------- specs
_OPTION_SPLIT = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """``NAME[:ARG][,key=value]...`` -> (name, arg or None, raw options). A comma starts an option only where
    ``key=`` follows it, so a path may hold commas."""
    if not isinstance(spec, str) or not spec.strip():
        raise JudgeError(f"a judge spec is NAME[:PATH][,key=value...], got {spec!r}")
    head, *pairs = _OPTION_SPLIT.split(spec.strip())
    name, sep, arg = head.partition(":")
    options: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        key = key.strip()
        if key in options:
            raise JudgeError(f"judge spec {spec!r} sets {key!r} twice")
        options[key] = value.strip()
    return name.strip().lower(), (arg if sep else None), options


def _coerce(value: str, hint: Any, what: str) -> Any:
    """A spec's text ``value`` as the config field's type (``hint``: the resolved annotation)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], what) if len(inner) == 1 else value
    if hint is bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise JudgeError(f"{what} must be true or false, got {value!r}")
    if hint in (int, float):
        try:
            return hint(value)
        except ValueError:
            raise JudgeError(f"{what} must be a number, got {value!r}") from None
    if origin is tuple:
        return tuple(v.strip() for v in value.split("|") if v.strip())
    if origin in (dict, Mapping) or hint is dict:
        raise JudgeError(f"{what} takes a mapping: pass it as a keyword option of make_judge, not in the spec")
    return value


def make_config(spec: str, **options: Any) -> tuple[type[Judge], JudgeConfig]:
    """(judge class, its validated config) for a spec, without loading anything: every option typed and checked
    (``options`` override the spec's), so a bad spec is refused before any model loads."""
    name, arg, raw = parse_spec(spec)
    cls = get_judge_class(name)
    config_class = cls.config_class
    hints = typing.get_type_hints(config_class)
    values: dict[str, Any] = {}
    if arg is not None:
        if config_class.ARG is None:
            raise JudgeError(f"the {name} judge takes no ':' argument (got {arg!r}); set its options as key=value")
        values[config_class.ARG] = arg
    for key, text in raw.items():
        if key not in hints or key == "ARG":
            valid = [f.name for f in dataclasses.fields(config_class)]
            raise JudgeError(f"the {name} judge has no option {key!r}; its options are {', '.join(valid)}")
        values[key] = _coerce(text, hints[key], f"{name} option {key}")
    values.update(options)
    return cls, build_config(config_class, values, name)


def make_judge(spec: str, device: str = "cpu", **options: Any) -> Judge:
    """The judge a spec names (see the module docstring), on ``device``; ``options`` override the spec's."""
    cls, config = make_config(spec, **options)
    return cls(config=config, device=device)  # type: ignore[call-arg]  # every registered judge takes these


def check_unit_interval(what: str, value: float, *, closed_low: bool = False) -> None:
    """Refuse ``value`` outside (0, 1] (or [0, 1] with ``closed_low``)."""
    ok = (0.0 <= value <= 1.0) if closed_low else (0.0 < value <= 1.0)
    if not ok:
        low = "[0" if closed_low else "(0"
        raise JudgeError(f"{what} must be in {low}, 1], got {value}")
