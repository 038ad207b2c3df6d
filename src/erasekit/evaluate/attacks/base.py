"""Attack registry, the configuration every attack shares, and what an attack returns (DESIGN §11).

Shaped like :mod:`erasekit.methods.base`: one module per attack, a dataclass config with help text and
validation in ``__post_init__``, and a small registry (:func:`register_attack`). An attack turns the
target suite into an adversarial one against a given edit, with a budget:

* ``prompt``    — adversarial prompts (token search, UnlearnDiffAtk, P4D, MMA-Diffusion's text attack);
* ``embedding`` — prompt embeddings moved in conditioning space (Ring-A-Bell's concept vector);
* ``token``     — a learned token embedding placed in the prompts (CCE);
* ``sampling``  — an intervention on the sampler with the prompt fixed (noise-based probing).

:meth:`Attack.build` returns a typed :class:`AttackResult`; its :meth:`~AttackResult.suites` are what the
runner generates (through the image cache), and :meth:`~AttackResult.record` is everything needed to
reproduce it: the attack, its full config, its seed and its cost (seconds and model evaluations).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np
import torch

from ...errors import AttackError, MethodError
from ...methods.base import OptionType, help_field
from ..suites import Suite, SuiteItem

if TYPE_CHECKING:
    from PIL import Image

    from ...models.families import Conditioning, Family
    from ..judges import Judge
    from ..render import GenerationSettings

KINDS = ("prompt", "embedding", "token", "sampling")
BUDGETS = ("default", "paper")


def budget_field(default: Any, help: str, *, minimum: float = 0.0, inclusive: bool = False) -> Any:
    """A budget option (steps, tokens, lr, restarts, images, …): checked to be a finite number above ``minimum``
    (or at least it, with ``inclusive``) in :meth:`AttackConfig.__post_init__`; tuples are checked element-wise."""
    return help_field(default, help, budget=(float(minimum), bool(inclusive)))


@dataclass
class AttackConfig:
    """Options common to all attacks: the seed. Subclasses add their budget with :func:`budget_field`.

    ``PAPER`` holds the paper's budget (the options that differ from the CPU default), selected by
    ``--budget paper``; the defaults are small enough to run on a CPU with tinyworld.
    """

    PAPER: ClassVar[Mapping[str, Any]] = {}
    attack: ClassVar[str] = "attack"  # set by register_attack: names the attack in refusals

    seed: int = budget_field(
        0, "seeds every random choice of the attack (initial tokens, noise, timesteps)", inclusive=True
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            bound = f.metadata.get("budget")
            if bound is None:
                continue
            value = getattr(self, f.name)
            if value is None and "None" in str(f.type):
                continue
            if isinstance(value, list):
                value = tuple(value)
                setattr(self, f.name, value)
            for v in value if isinstance(value, tuple) else (value,):
                _check_budget(self.attack, f.name, f.type, v, *bound)
            if isinstance(value, tuple) and not value:
                raise AttackError(f"{self.attack} option {f.name} is empty; give at least one value")

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls, budget: str = "default") -> dict[str, Any]:
        """Every option's value under ``budget`` ('default' or 'paper'), as a plain dict."""
        check_budget_name(budget)
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            factory: Any = f.default_factory
            out[f.name] = f.default if f.default is not dataclasses.MISSING else factory()
        if budget == "paper":
            out.update(cls.PAPER)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def _check_budget(attack: str, name: str, annotation: Any, value: Any, minimum: float, inclusive: bool) -> None:
    want = "an integer" if str(annotation).startswith("int") or "[int" in str(annotation) else "a number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and want == "an integer":
        ok = isinstance(value, int)
    if not ok or not math.isfinite(float(value)) or (value < minimum if inclusive else value <= minimum):
        bound = f"≥ {minimum:g}" if inclusive else f"> {minimum:g}"
        raise AttackError(
            f"{attack} budget {name} must be {want} {bound}, got {value!r:.40}; `erasekit attacks -v` lists its options"
        )


def check_budget_name(budget: str) -> None:
    if budget not in BUDGETS:
        raise AttackError(f"unknown budget {budget!r}; choose {' or '.join(BUDGETS)}")


C = TypeVar("C", bound=AttackConfig)


def search_seed(seed: int, *keys: object) -> int:
    """The seed of one search, from the attack's ``seed`` and what names the search (its target prompt, item seed,
    restart): a search's random draws do not depend on which or how many other searches ran before it, so attacking
    a subset, another batch size or more restarts leaves each search's result as it was. (sha256: the same on every
    machine.)"""
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def search_generator(seed: int, *keys: object) -> torch.Generator:
    """A torch generator for one search, seeded by :func:`search_seed`."""
    return torch.Generator().manual_seed(search_seed(seed, *keys))


def derived_seed(seed: int, item_seed: int, k: int) -> int:
    """Draw k's image seed for an item: a function of (attack seed, item seed, k) only, so a larger budget's draws
    start with a smaller one's (draw 0 is the item's own seed where an attack keeps it)."""
    return int(np.random.default_rng([int(seed), int(item_seed) & 0xFFFFFFFF, int(k)]).integers(2**31 - 1))


def draw_seeds(seed: int, item_seed: int, k: int) -> list[int]:
    """The image seeds of an item's first ``k`` draws: its own seed, then :func:`derived_seed` for draws 1 … k − 1."""
    return [int(item_seed)] + [derived_seed(seed, int(item_seed), j) for j in range(1, k)]


# ----------------------------------------------------------------------------- cost
@dataclass
class Meter:
    """What an attack spent: model evaluations counted per sample (a batch of B counts B; classifier-free guidance
    counts both branches), the images it generated itself, and the wall seconds of :meth:`Attack.build`."""

    denoiser_evaluations: int = 0
    text_encoder_evaluations: int = 0
    images: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "denoiser_evaluations": self.denoiser_evaluations,
            "text_encoder_evaluations": self.text_encoder_evaluations,
            "images_generated": self.images,
        }


# ----------------------------------------------------------------------------- context
@dataclass
class AttackContext:
    """Everything an attack may use, and the only way it reaches the model (through the pipeline's family).

    ``edit``: the edit the attack is run against (per-method attacks; ``None`` for attacks that do not look at the
    edited model); ``concepts``: the erased concepts (default: the target suite's labels); ``pairs``: prompts with and
    without the concept (Ring-A-Bell); ``settings`` / ``judge``: the evaluation's sampling settings and judge, for
    attacks that make images or check success while they search.
    """

    pipe: Any
    target: Suite
    edit: Any | None = None
    concepts: tuple[str, ...] = ()
    pairs: tuple[Sequence[str], Sequence[str]] | None = None
    kind: str = "object"
    tinyworld: bool = False
    settings: GenerationSettings | None = None
    judge: Judge | None = None
    progress: bool = True
    meter: Meter = field(default_factory=Meter)

    def __post_init__(self) -> None:
        if not self.concepts:
            self.concepts = tuple(self.target.labels)

    @property
    def family(self) -> Family:
        from ...models.families import identify

        return identify(self.pipe)

    # -------------------------------------------------------------- model access, counted
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """The family's conditioning for ``prompts`` (no gradient)."""
        self.meter.text_encoder_evaluations += len(prompts)
        return self.family.encode(self.pipe, list(prompts))

    def require_text_gradients(self, attack: str) -> None:
        """Refuse, in one line, a family that offers no gradients through its text encoder."""
        from ...models.families import families

        fam = self.family
        if not fam.text_gradients():
            where = ", ".join(n for n, f in families().items() if f.text_gradients())
            raise AttackError(
                f"{attack} needs gradients through the text encoder, which the {fam.name} family does not offer yet; "
                f"it runs on {where}"
            )

    def encode_substituted(
        self,
        prompts: Sequence[str],
        substitute: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
        per_encoder: Sequence[Sequence[str]] | None = None,
    ) -> Conditioning:
        """The family's conditioning, differentiable, with each text encoder's input-token embeddings passed through
        ``substitute(encoder index, ids (B, L), embeddings (B, L, d_e)) -> (B, L, d_e)`` (``per_encoder``: each
        encoder's own prompts, :meth:`~erasekit.models.families.Family.encoder_prompts`)."""
        self.meter.text_encoder_evaluations += len(prompts)
        return self.family.encode_substituted(self.pipe, list(prompts), substitute, per_encoder)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The family's denoiser prediction (ε or v, as the model predicts) for (B, C, h, w) latents."""
        self.meter.denoiser_evaluations += int(x_t.shape[0])
        return self.family.denoise(self.pipe, x_t, self.family.batch_timesteps(t, x_t.shape[0]), cond)

    @contextmanager
    def edited(self) -> Iterator[None]:
        """The edited model for the block (the pipeline is unedited on entry and on exit, also on an error)."""
        if self.edit is None:
            yield
            return
        self.edit.apply(self.pipe)
        try:
            yield
        finally:
            self.edit.revert(self.pipe)

    # -------------------------------------------------------------- sampling
    def _sampling(self) -> tuple[int, float]:
        s = self.settings
        steps = s.steps if s is not None and s.steps is not None else 50
        guidance = s.guidance if s is not None and s.guidance is not None else 7.5
        return int(steps), float(guidance)

    @torch.no_grad()
    def latents(self, items: Sequence[SuiteItem], batch_size: int = 16) -> torch.Tensor:
        """(B, C, h, w) final latents the *current* model draws for ``items`` (their prompts and seeds, the
        evaluation's steps and guidance): the same trajectories as the images the runner renders."""
        from ...models.precision import generating_in_compute_dtype

        steps, guidance = self._sampling()
        out = []
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            gens = [torch.Generator(device="cpu").manual_seed(int(it.seed)) for it in chunk]
            g = chunk[0].guidance if chunk[0].guidance is not None else guidance
            kw: dict[str, Any] = {"num_inference_steps": steps, "output_type": "latent"}
            kw.update(self.family.generation_kwargs(self.pipe, g, len(chunk)))  # how this family is guided
            if self.settings is not None:
                kw.update({k: v for k, v in (("height", self.settings.height), ("width", self.settings.width)) if v})
            with generating_in_compute_dtype(self.pipe):
                lat = self.pipe([it.prompt for it in chunk], generator=gens, **kw).images
            lat = self.family.output_latents(self.pipe, lat, kw.get("height"), kw.get("width"))  # (b, C, h, w)
            out.append(lat.float())
            self.meter.denoiser_evaluations += len(chunk) * steps * (2 if g > 1 else 1)
        return torch.cat(out)

    def render(self, items: Sequence[SuiteItem], vectors: Mapping[str, Any] | None = None) -> list[Image.Image]:
        """Images of ``items`` under the current model, exactly as the runner's generate stage renders them."""
        from ..render import GenerationSettings, render_batch

        settings = self.settings if self.settings is not None else GenerationSettings()
        steps, guidance = self._sampling()
        self.meter.images += len(items)
        self.meter.denoiser_evaluations += len(items) * steps * (2 if guidance > 1 else 1)
        return render_batch(self.pipe, list(items), dict(vectors or {}), settings)

    def seen(self, images: Sequence[Image.Image], item: SuiteItem) -> list[bool]:
        """Per image: does the evaluation's judge see any of ``item``'s concepts? (Needs ``judge``.)"""
        if self.judge is None:
            raise AttackError("this attack checks success while it searches and needs the evaluation's judge")
        jr = self.judge.judge(list(images), list(item.concepts))
        return [bool(any(jr.seen(c)[i] for c in item.concepts)) for i in range(len(images))]


# ----------------------------------------------------------------------------- results
@dataclass
class AttackResult(ABC):
    """What an attack found, typed by kind; ``details`` holds per-item findings (recorded, not interpreted)."""

    attack: str
    kind: ClassVar[str]
    config: dict[str, Any]
    cost: dict[str, Any]
    details: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """Everything needed to reproduce the result: attack, kind, reference, full config, seed and cost."""
        cls = get_attack(self.attack)
        return {
            "attack": self.attack,
            "kind": self.kind,
            "reference": cls.reference,
            "config": self.config,
            "seed": self.config.get("seed"),
            "cost": self.cost,
        }

    def info(self, target: Suite, **extra: Any) -> dict[str, Any]:
        """The adversarial suite's ``info``: the record, the budget line and the per-item details."""
        cls = get_attack(self.attack)
        return {
            "attack": self.attack,
            "budget": cls.budget_line(self.config),
            "record": self.record(),
            "target": target.name,
            **self.details,
            **extra,
        }

    @abstractmethod
    def suites(self, target: Suite) -> list[Suite]:
        """The adversarial suite(s) the runner generates and judges."""


def _meta(item: SuiteItem, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """The item's meta with ``extra`` added, sorted as :meth:`SuiteItem.from_dict` reads it back."""
    return tuple(sorted({**dict(item.meta), **dict(extra)}.items()))


def suite_name(attack: str) -> str:
    return f"adversarial:{attack}"


@dataclass
class PromptResult(AttackResult):
    """Adversarial prompts, one per target item (``None``: the item was not attacked, e.g. past a prompt limit)."""

    kind: ClassVar[str] = "prompt"
    prompts: list[str | None] = field(default_factory=list)

    def suites(self, target: Suite) -> list[Suite]:
        items = drawn_items(target, [None if p is None else [p] for p in self.prompts], label_draws=False)
        return [
            Suite(suite_name(self.attack), "adversarial", items, f"{target.name} + {self.attack}", self.info(target))
        ]


def drawn_items(
    target: Suite,
    candidates: Sequence[Sequence[str] | None],
    seeds: Sequence[Sequence[int]] | None = None,
    *,
    label_draws: bool = True,
) -> list[SuiteItem]:
    """One item per (target item, candidate prompt), in target then candidate order: the candidate at its image seed
    (``seeds[i][k]``; the target item's own where not given), the target's prompt kept as "original prompt", and,
    with ``label_draws``, which target item and draw it is (("of", i), ("draw", k): counted best of K). A target
    item whose candidates are ``None`` or empty was not attacked and has no item."""
    out = []
    for i, (it, cands) in enumerate(zip(target.items, candidates, strict=True)):
        for k, p in enumerate(cands or ()):
            draw = (("of", str(i)), ("draw", str(k))) if label_draws else ()
            seed = int(it.seed) if seeds is None else seeds[i][k]
            meta = _meta(it, ("original prompt", it.prompt), *draw)
            out.append(dataclasses.replace(it, prompt=p, seed=seed, meta=meta))
    return out


@dataclass
class BestOfPromptResult(PromptResult):
    """K adversarial prompts per target item (independent searches, e.g. MMA-Diffusion's ``-n`` restarts): the attack
    succeeds on an item when the judge sees the concept in any of its K prompts' images (best of K, as
    :class:`SamplingResult`). ``prompts`` holds each item's first, ``candidates`` all K (search order)."""

    candidates: list[list[str]] = field(default_factory=list)
    seeds: list[list[int]] | None = None  # per item, per candidate: its image's seed (None: the item's own seed)

    def __post_init__(self) -> None:
        if any(not c for c in self.candidates):
            raise AttackError(f"{self.attack}: every target item needs at least one candidate prompt")
        if self.seeds is not None and [len(s) for s in self.seeds] != [len(c) for c in self.candidates]:
            raise AttackError(f"{self.attack}: every candidate prompt needs one image seed")
        self.prompts = [c[0] for c in self.candidates]

    def suites(self, target: Suite) -> list[Suite]:
        items = drawn_items(target, self.candidates, self.seeds)
        info = self.info(target, best_of=max(len(c) for c in self.candidates) if self.candidates else 0)
        return [Suite(suite_name(self.attack), "adversarial", items, f"{target.name} + {self.attack}", info)]


@dataclass
class TokenResult(AttackResult):
    """A learned input-token embedding (one vector per text encoder) carried by the word ``carrier`` in ``prompts``
    (one per target item): the conditioning substitutes the vector wherever the carrier's token stands."""

    kind: ClassVar[str] = "token"
    carrier: str = ""
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # "encoder_<i>" -> (d_e,)
    prompts: list[str] = field(default_factory=list)

    def suites(self, target: Suite) -> list[Suite]:
        from ..conditioning import carrier_tensor, vector_digest

        key = f"{self.attack}:{vector_digest(self.embeddings)[:16]}"
        items = [
            dataclasses.replace(it, prompt=p, token=key, meta=_meta(it, ("original prompt", it.prompt)))
            for it, p in zip(target.items, self.prompts, strict=True)
        ]
        vectors = {key: {"carrier": carrier_tensor(self.carrier), **self.embeddings}}
        info = self.info(target, carrier=self.carrier)
        return [Suite(suite_name(self.attack), "adversarial", items, f"{target.name} + {self.attack}", info, vectors)]


@dataclass
class SamplingResult(AttackResult):
    """A sampling intervention: for each target item, ``variants`` (seed, η, variance scale) draws with the prompt
    fixed; the attack succeeds on an item when the judge sees the concept in any of its draws (best of K)."""

    kind: ClassVar[str] = "sampling"
    variants: list[list[tuple[int, float, float]]] = field(default_factory=list)
    steps: int | None = None

    def suites(self, target: Suite) -> list[Suite]:
        items = [
            dataclasses.replace(
                it, seed=seed, sampling=(eta, scale, self.steps), meta=_meta(it, ("of", str(i)), ("draw", str(k)))
            )
            for i, (it, draws) in enumerate(zip(target.items, self.variants, strict=True))
            for k, (seed, eta, scale) in enumerate(draws)
        ]
        k = max(len(d) for d in self.variants) if self.variants else 0
        info = self.info(target, best_of=k)
        return [Suite(suite_name(self.attack), "adversarial", items, f"{target.name} + {self.attack}", info)]


# ----------------------------------------------------------------------------- attacks
class Attack(ABC, Generic[C]):
    """An attack on an erased concept: ``build(ctx)`` -> :class:`AttackResult`.

    ``per_method``: whether it is searched against each edited model (else built once per study and shared);
    ``uses_judge``: whether it needs the evaluation's judge while it searches;
    ``needs_text_gradients``: whether it differentiates through the text encoders (refused in one line, before any
    search, on a family that offers none: :meth:`AttackContext.require_text_gradients`).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[AttackConfig]]
    summary: ClassVar[str]
    kind: ClassVar[str]
    reference: ClassVar[str]
    per_method: ClassVar[bool] = True
    uses_judge: ClassVar[bool] = False
    needs_text_gradients: ClassVar[bool] = False

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config if config is not None else self.config_class()  # type: ignore[assignment]

    @abstractmethod
    def _build(self, ctx: AttackContext) -> AttackResult:
        """Run the attack (the pipeline is unedited on entry and must be left unedited)."""

    def build(self, ctx: AttackContext) -> AttackResult:
        """Run the attack and fill its cost (seconds and model evaluations spent)."""
        if self.needs_text_gradients:
            ctx.require_text_gradients(self.name)
        t0 = time.perf_counter()
        result = self._build(ctx)
        ctx.meter.seconds = time.perf_counter() - t0
        result.cost = ctx.meter.to_dict()
        return result

    def suites(self, ctx: AttackContext) -> list[Suite]:
        """The adversarial suites of :meth:`build` on ``ctx.target``."""
        return self.build(ctx).suites(ctx.target)

    @classmethod
    def budget_line(cls, config: Mapping[str, Any]) -> str:
        """One line naming the budget (shown beside every ASR)."""
        keys = [f.name for f in dataclasses.fields(cls.config_class) if f.metadata.get("budget") and f.name != "seed"]
        return ", ".join(f"{k} = {_short(config.get(k))}" for k in keys)


def _short(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_short(x) for x in v) + ")"
    return f"{v:g}" if isinstance(v, float) else str(v)


_REGISTRY: dict[str, type[Attack[Any]]] = {}


def register_attack(
    name: str,
    config_class: type[AttackConfig],
    *,
    kind: str,
    summary: str,
    reference: str,
    per_method: bool,
    uses_judge: bool = False,
) -> Callable[[type[Attack[Any]]], type[Attack[Any]]]:
    """Class decorator that registers an attack under ``name``."""
    if kind not in KINDS:
        raise AttackError(f"attack {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def deco(cls: type[Attack[Any]]) -> type[Attack[Any]]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise AttackError(f"attack {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name, cls.config_class, cls.summary, cls.kind = name, config_class, summary, kind
        cls.reference, cls.per_method, cls.uses_judge = reference, per_method, uses_judge
        config_class.attack = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_attack(name: str) -> type[Attack[Any]]:
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise AttackError(
            f"unknown attack {name!r}; available: {', '.join(sorted(_REGISTRY))} (see `erasekit attacks`)"
        )
    return _REGISTRY[key]


def list_attacks() -> dict[str, type[Attack[Any]]]:
    """Registered attacks by name (sorted)."""
    return {n: _REGISTRY[n] for n in sorted(_REGISTRY)}


def parse_attacks(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"nbp,uda"`` -> ('nbp', 'uda'): registered names, each once; an unknown name is refused naming the others."""
    names = [n.strip().lower() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    for n in names:
        get_attack(n)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AttackError(f"attack(s) {dup} named twice; list each attack once")
    return tuple(names)


def make_attack_config(name: str, budget: str = "default", **options: Any) -> AttackConfig:
    """``name``'s config under ``budget`` ('default' or 'paper') with ``options`` on top; unknown options, wrong types
    and bad budgets are refused (one line) before anything is loaded."""
    cls = get_attack(name).config_class
    base = cls.defaults(budget)
    valid = set(base)
    unknown = sorted(set(options) - valid)
    if unknown:
        raise AttackError(
            f"option(s) {unknown} do not apply to attack {name!r}; its options are: {', '.join(sorted(valid))}"
        )
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for k, v in options.items():
        if not OptionType.of(types[k]).accepts(v):
            raise AttackError(f"attack {name!r} option {k} expects {types[k]}, got {v!r:.60}")
    merged: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in {**base, **options}.items()}
    return cls(**merged)


def parse_attack_options(pairs: Sequence[str], attacks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["uda.steps=5", "nbp.etas=1,1.5"]`` -> {"uda": {"steps": 5}, "nbp": {"etas": (1.0, 1.5)}}, typed by each
    option's field (the methods' shared parse); an option for an attack not being run is refused."""
    out: dict[str, dict[str, Any]] = {a: {} for a in attacks}
    for p in pairs:
        key, eq, value = p.partition("=")
        name, dot, option = key.partition(".")
        name, option = name.strip().lower(), option.strip().replace("-", "_")
        if not eq or not dot or not option:
            raise AttackError(f"attack option {p!r} is not ATTACK.OPTION=VALUE (e.g. uda.steps=5)")
        if name not in out:
            raise AttackError(
                f"attack option {p!r} is for {name!r}, which is not among the attacks run {list(attacks)}"
            )
        fields = {f.name: f for f in dataclasses.fields(get_attack(name).config_class)}
        if option not in fields:
            raise AttackError(
                f"option {option!r} does not apply to attack {name!r}; its options are: {', '.join(sorted(fields))}"
            )
        out[name][option] = _parse_value(name, option, fields[option].type, value)
    return out


def _parse_value(attack: str, option: str, annotation: Any, text: str) -> Any:
    ot = OptionType.of(annotation)
    try:
        if ot.base == "seq":
            inner = "float" if "float" in str(annotation) else "int" if "int" in str(annotation) else "str"
            parts = [t.strip() for t in text.split(",") if t.strip()]
            return tuple(OptionType((inner,)).parse(option, t) for t in parts)
        return ot.parse(option, text)
    except MethodError as e:
        raise AttackError(f"attack {attack!r}: {e}") from None
