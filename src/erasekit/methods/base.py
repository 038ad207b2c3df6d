"""Method registry and the configuration every method shares.

Modelled on peft's tuners: one module per method, a dataclass config with help text and
validation in ``__post_init__``, and a small registry (:func:`register_method`).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ..errors import MethodError, ModelError
from ..models.adapter import PROJECTIONS, TOKEN_MODES, PipelineAdapter
from ..models.families import SITE_SETS
from ..models.joint import JointSampling

if TYPE_CHECKING:
    from ..concepts import ConceptSet
    from ..edit import Edit


def help_field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its help text (shown by ``erasekit methods`` and the CLI)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def check_choice(option: str, value: object, choices: tuple[object, ...]) -> None:
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
    # Whether the method can fit on joint sites (SD3 / FLUX add_k_proj / add_v_proj): only methods that read token
    # columns, which are captured along the sampler there; the others encode prompts, which joint sites cannot.
    JOINT_SITES: ClassVar[bool] = False

    token: str | None = help_field(
        "last", "token selection: 'last' concept token, 'tail' (last token to EOS/padding) or 'all' 77 positions"
    )
    projections: tuple[str, ...] = help_field(("k", "v"), "which cross-attention projections to edit: k, v or both")
    layer_regex: str | None = help_field(
        None, "edit the UNet Linear layers whose path matches this regex instead of every cross-attention to_k/to_v"
    )
    sites: str = help_field(
        "static",
        "SD3 / FLUX: 'static' (context_embedder + pooled embedder), 'joint' (every joint block's add_k_proj / "
        "add_v_proj, columns captured during sampling: timestep- and latent-dependent, so the edit is approximate) "
        "or 'all'",
    )
    joint_latents: int = help_field(1, "sites='joint': random latents per prompt of the capture trajectories")
    joint_steps: int = help_field(4, "sites='joint': denoising steps of each capture trajectory (all recorded)")
    joint_guidance: float = help_field(1.0, "sites='joint': guidance scale of the capture trajectories")
    joint_size: int | None = help_field(
        None, "sites='joint': image side of the capture trajectories (the pipeline's default if omitted)"
    )

    def __post_init__(self) -> None:
        check_choice("token", self.token, self.TOKEN_CHOICES)
        check_choice("sites", self.sites, SITE_SETS)
        if self.sites != "static" and not self.JOINT_SITES:
            able = ", ".join(n for n, m in sorted(_REGISTRY.items()) if m.config_class.JOINT_SITES)
            raise MethodError(
                f"sites={self.sites!r}: this method encodes prompts, and a joint block's text stream has no encoding "
                f"(it depends on the latent and the timestep); the methods that capture columns there are {able}. "
                "Use sites='static'"
            )
        try:
            self.joint_sampling()
        except ModelError as e:
            raise MethodError(str(e)) from None
        if self.STORAGE_CHOICES:
            check_choice("storage", getattr(self, "storage", None), self.STORAGE_CHOICES)  # a subclass field
        if isinstance(self.projections, str):
            self.projections = tuple(p.strip() for p in self.projections.split(",") if p.strip())
        self.projections = tuple(self.projections)
        bad = [p for p in self.projections if p not in PROJECTIONS]
        if bad or not self.projections or len(set(self.projections)) != len(self.projections):
            raise MethodError(
                f"projections must be a non-empty subset of ('k', 'v') without repeats, got {self.projections!r}"
            )

    def joint_sampling(self) -> JointSampling:
        """The trajectories joint-site columns are read from (``sites='joint'`` / ``'all'``)."""
        return JointSampling(self.joint_latents, self.joint_steps, self.joint_guidance, size=self.joint_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


C = TypeVar("C", bound=MethodConfig)


class Method(ABC, Generic[C]):
    """A concept-erasure method: a pure function of (base weights, embeddings or activations, config) -> Edit."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    summary: ClassVar[str]

    @abstractmethod
    def fit(self, adapter: PipelineAdapter, concepts: ConceptSet, config: C, progress: bool = True) -> Edit:
        """Compute the edit. Must not modify the pipeline."""

    def uses_unet(self, config: C) -> bool:
        """Whether ``fit`` runs the UNet (sampling, capture or training), not only reads its K/V weights.

        :func:`erasekit.erase` then borrows the UNet in the compute dtype for the fit, one layer at a
        time, training included (models/precision.py); closed-form methods pay nothing for it.
        """
        return False

    def fits_groups_together(self, config: C) -> bool:
        """Whether ``fit`` takes every site group at once (a method that trains the denoiser: its loss couples the
        groups) instead of once per group (:func:`fit_by_group`)."""
        return False


def fit_by_group(
    method: Method[Any], adapter: PipelineAdapter, concepts: ConceptSet, config: MethodConfig, progress: bool = True
) -> Edit:
    """``method.fit`` once per site group (sites sharing one input: one set of token columns, one Gram factor),
    the groups' layers joined in one :class:`Edit`.

    Every method's objective is a sum over layers whose columns are the layer's own input, so solving each group on
    its own input is the fit over all sites: on SD3 / FLUX, the text stream's ``context_embedder`` and the pooled
    text embedder. A family with one group (the UNets, PixArt, Sana) is fitted as it always was. The edit's stats
    are the groups' under ``stats['groups']``, with the total ``seconds``.
    """
    from ..edit import Edit

    groups = list(adapter.groups)
    if len(groups) == 1 or method.fits_groups_together(config):
        return method.fit(adapter, concepts, config, progress=progress)
    edits = {g: method.fit(adapter.for_group(g), concepts, config, progress=progress) for g in groups}
    first = edits[groups[0]]
    if any(e.config != first.config for e in edits.values()):
        raise MethodError(f"{method.name}: the site groups {groups} resolved different configs; fit them separately")
    layers = [le for e in edits.values() for le in e.layers.values()]
    prints = {k: fp for e in edits.values() for k, fp in e.fingerprints.items()}
    stats: dict[str, Any] = {"seconds": round(sum(float(e.stats.get("seconds", 0.0)) for e in edits.values()), 4)}
    stats["groups"] = {g: {**e.stats, "layers": list(e.layers)} for g, e in edits.items()}
    return Edit(first.method, first.config, first.concepts, adapter.describe(), layers, prints, stats)


_REGISTRY: dict[str, type[Method[Any]]] = {}


def register_method(
    name: str, config_class: type[MethodConfig], summary: str
) -> Callable[[type[Method[Any]]], type[Method[Any]]]:
    """Class decorator that registers a method under ``name``."""

    def deco(cls: type[Method[Any]]) -> type[Method[Any]]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise MethodError(f"method {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name, cls.config_class, cls.summary = name, config_class, summary
        _REGISTRY[name] = cls
        return cls

    return deco


def get_method(name: str) -> Method[Any]:
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise MethodError(
            f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))} (see `erasekit methods`)"
        )
    return _REGISTRY[key]()


def list_methods() -> dict[str, str]:
    """Registered method names with one-line descriptions."""
    return {n: _REGISTRY[n].summary for n in sorted(_REGISTRY)}


def make_config(name: str, **options: Any) -> MethodConfig:
    """Build ``name``'s config from keyword options; unknown options are an error, not ignored."""
    cls = get_method(name).config_class
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise not_an_option(name, unknown)
    check_option_types(cls, options)
    return cls(**options)


def not_an_option(method: str, unknown: list[str]) -> MethodError:
    """The refusal of options ``method``'s config does not have, naming the ones it has."""
    m = get_method(method)
    valid = sorted(f.name for f in dataclasses.fields(m.config_class))
    return MethodError(f"option(s) {unknown} do not apply to method {m.name!r}; its options are: {', '.join(valid)}")


# ------------------------------------------------------------------ option types
_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "float": (int, float),
    "int": (int,),
    "bool": (bool,),
    "str": (str,),
    "None": (type(None),),
}
_SEQUENCES = ("tuple", "list", "Sequence")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class OptionType:
    """A config field's type, read once from its annotation (``'float | None'``, ``'tuple[str, ...]'``).

    The one place option types are interpreted: :func:`check_option_types` (Python values) and the
    command line (``--option VALUE``, ``--set OPTION=VALUE``: :meth:`parse`) both use it.
    """

    kinds: tuple[str, ...]  # each of 'float', 'int', 'bool', 'str', 'seq', 'None', or '?' (a type this does not know)

    @classmethod
    def of(cls, annotation: Any) -> OptionType:
        parts = (p.strip().split("[")[0].strip() for p in str(annotation).split("|"))
        return cls(tuple("seq" if p in _SEQUENCES else p if p in _SIMPLE_TYPES else "?" for p in parts))

    @property
    def base(self) -> str:
        """The type a command-line value is parsed to: the first one besides None ('seq' stays text: the config splits
        it)."""
        return next((k for k in self.kinds if k != "None"), "str")

    @property
    def optional(self) -> bool:
        return "None" in self.kinds

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has this type (True where the annotation holds a type this does not know)."""
        if "?" in self.kinds:
            return True
        for k in self.kinds:
            if k == "seq" and isinstance(value, (list, tuple, str)):
                return True
            if (
                k in _SIMPLE_TYPES
                and isinstance(value, _SIMPLE_TYPES[k])
                and not (k in ("float", "int") and isinstance(value, bool))
            ):
                return True
        return False

    def parse(self, name: str, text: str) -> Any:
        """``text`` from a command line as this type; 'none' is None where the option allows it (and is not text)."""
        word = text.strip().lower()
        if self.optional and self.base not in ("str", "seq") and word in ("none", "null"):
            return None
        if self.base == "bool":
            if word not in _TRUE + _FALSE:
                raise MethodError(f"option {name} expects true or false, got {text!r}")
            return word in _TRUE
        if self.base in ("int", "float"):
            try:
                return int(text) if self.base == "int" else float(text)
            except ValueError:
                want = "an integer" if self.base == "int" else "a number"
                raise MethodError(f"option {name} expects {want}, got {text!r}") from None
        return text


def option_types(cls: type[MethodConfig]) -> dict[str, OptionType]:
    """Option name -> :class:`OptionType` of every field of the config class ``cls``."""
    return {f.name: OptionType.of(f.type) for f in dataclasses.fields(cls)}


def check_option_types(cls: type[MethodConfig], options: dict[str, Any]) -> None:
    """Refuse an option whose value does not have its field's type, and NaN / Inf numbers.

    Runs before a config is built (and so before any model is loaded): ``lam=nan`` or
    ``rank="4"`` fail here with the option's name, not later inside the maths.
    """
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, value in options.items():
        if name not in types:
            continue
        if not OptionType.of(types[name]).accepts(value):
            raise MethodError(f"option {name} expects {types[name]}, got {value!r:.60}")
        if isinstance(value, float) and not math.isfinite(value):
            raise MethodError(f"option {name} must be a finite number, got {value}")
