"""Method registry and the configuration every method shares.

Modelled on peft's tuners: one module per method, a dataclass config with help text and
validation in ``__post_init__``, and a small registry (:func:`register_method`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ..errors import MethodError
from ..models.adapter import PROJECTIONS, TOKEN_MODES


def help_field(default: Any, help: str, **kw) -> Any:
    """A dataclass field carrying its help text (shown by ``erasekit methods`` and the CLI)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class MethodConfig:
    """Options common to all methods."""

    token: str = help_field("last", "token selection: 'last' concept token, 'tail' (last token to EOS/padding) or 'all' 77 positions")
    projections: tuple[str, ...] = help_field(("k", "v"), "which cross-attention projections to edit: k, v or both")
    layer_regex: str | None = help_field(None, "edit the UNet Linear layers whose path matches this regex instead of every cross-attention to_k/to_v")

    def __post_init__(self) -> None:
        if self.token not in TOKEN_MODES:
            raise MethodError(f"token must be one of {TOKEN_MODES}, got {self.token!r}")
        if isinstance(self.projections, str):
            self.projections = tuple(p.strip() for p in self.projections.split(",") if p.strip())
        self.projections = tuple(self.projections)
        bad = [p for p in self.projections if p not in PROJECTIONS]
        if bad or not self.projections or len(set(self.projections)) != len(self.projections):
            raise MethodError(f"projections must be a non-empty subset of ('k', 'v') without repeats, got {self.projections!r}")

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


class Method(ABC):
    """A concept-erasure method: a pure function of (base weights, embeddings or activations, config) -> Edit."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    summary: ClassVar[str]

    @abstractmethod
    def fit(self, adapter, concepts, config: MethodConfig, progress: bool = True):
        """Compute the edit. Must not modify the pipeline."""

    def uses_unet(self, config: MethodConfig) -> bool:
        """Whether ``fit`` runs the UNet (sampling, capture or training), not only reads its K/V weights.

        :func:`erasekit.erase` then borrows the whole UNet in the compute dtype for the fit
        (models/precision.py); closed-form methods pay nothing for it.
        """
        return False


_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str, config_class: type[MethodConfig], summary: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator that registers a method under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise MethodError(f"method {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name, cls.config_class, cls.summary = name, config_class, summary
        _REGISTRY[name] = cls
        return cls

    return deco


def get_method(name: str) -> Method:
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))} (see `erasekit methods`)")
    return _REGISTRY[key]()


def list_methods() -> dict[str, str]:
    """Registered method names with one-line descriptions."""
    return {n: _REGISTRY[n].summary for n in sorted(_REGISTRY)}


def make_config(name: str, **options) -> MethodConfig:
    """Build ``name``'s config from keyword options; unknown options are an error, not ignored."""
    cls = get_method(name).config_class
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise MethodError(f"option(s) {unknown} do not apply to method {name!r}; its options are: {', '.join(sorted(valid))}")
    return cls(**options)
