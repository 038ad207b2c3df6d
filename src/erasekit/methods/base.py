"""Method registry and the configuration every method shares.

Modelled on peft's tuners: one module per method, a dataclass config with help text and
validation in ``__post_init__``, and a small registry (:func:`register_method`).
"""

from __future__ import annotations

import dataclasses
import math
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


def check_choice(option: str, value, choices: tuple) -> None:
    """Refuse ``value`` unless it is one of ``choices`` (``None`` only where ``choices`` lists it)."""
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices if c is not None)
        raise MethodError(f"{option} must be one of {shown}, got {value!r}")


@dataclass
class MethodConfig:
    """Options common to all methods.

    Subclasses narrow or widen ``TOKEN_CHOICES`` (``None``: chosen at fit from the concept kind), and
    list ``STORAGE_CHOICES`` when they have a ``storage`` option; the checks run here, once.
    """

    TOKEN_CHOICES: ClassVar[tuple[str | None, ...]] = TOKEN_MODES
    STORAGE_CHOICES: ClassVar[tuple[str, ...]] = ()

    token: str = help_field("last", "token selection: 'last' concept token, 'tail' (last token to EOS/padding) or 'all' 77 positions")
    projections: tuple[str, ...] = help_field(("k", "v"), "which cross-attention projections to edit: k, v or both")
    layer_regex: str | None = help_field(None, "edit the UNet Linear layers whose path matches this regex instead of every cross-attention to_k/to_v")

    def __post_init__(self) -> None:
        check_choice("token", self.token, self.TOKEN_CHOICES)
        if self.STORAGE_CHOICES:
            check_choice("storage", getattr(self, "storage"), self.STORAGE_CHOICES)
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

        :func:`erasekit.erase` then borrows the UNet in the compute dtype for the fit, one layer at a
        time, training included (models/precision.py); closed-form methods pay nothing for it.
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
    check_option_types(cls, options)
    return cls(**options)


_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,), "None": (type(None),)}


def check_option_types(cls: type[MethodConfig], options: dict) -> None:
    """Refuse an option whose value does not have its field's type, and NaN / Inf numbers.

    Runs before a config is built (and so before any model is loaded): ``lam=nan`` or
    ``rank="4"`` fail here with the option's name, not later inside the maths.
    """
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for name, value in options.items():
        ann = types.get(name)
        if ann is None:
            continue
        ok, known = False, True
        for part in (p.strip() for p in ann.split("|")):
            base = part.split("[")[0].strip()
            if base in ("tuple", "list", "Sequence"):
                ok = ok or isinstance(value, (list, tuple, str))
            elif base in _SIMPLE_TYPES:
                numeric_bool = base in ("float", "int") and isinstance(value, bool)
                ok = ok or (isinstance(value, _SIMPLE_TYPES[base]) and not numeric_bool)
            else:
                known = False  # an annotation this check does not know: the config's own checks decide
        if known and not ok:
            raise MethodError(f"option {name} expects {ann}, got {value!r:.60}")
        if isinstance(value, float) and not math.isfinite(value):
            raise MethodError(f"option {name} must be a finite number, got {value}")
