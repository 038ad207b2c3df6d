"""Which model a pipeline is: the record :func:`~erasekit.models.loading.load_pipeline` attaches to it.

The rest of the package asks here, and only here, whether a pipeline is one of the bundled
tinyworld models (``tinyworld``, ``tinyworld-xl``, ``tinyworld-flux``): its defaults, suites, judge, prompt
vocabulary and generation settings apply. The methods and the prior never import the bundled model; what they need of
it (the name of its general prompt source, its captions, its synonyms) comes through this module.

A pipeline that was loaded another way (``erasekit.tinyworld.load_pipeline()``, or plain
diffusers ``from_pretrained`` on the shipped folder) has no record; it is described from the
folder it was loaded from (``config._name_or_path``), with the same rule as a ``--model`` name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .families import Pipeline

__all__ = [
    "BUNDLED",
    "ModelRecord",
    "describe_model",
    "is_tinyworld",
    "model_record",
    "record_model",
    "tinyworld_aliases",
    "tinyworld_captions",
]

# trained on the tinyworld world: tinyworld suites, judge, defaults and generation settings apply
BUNDLED = ("tinyworld", "tinyworld-xl", "tinyworld-flux")
_ATTR = "_erasekit_model"


@dataclass(frozen=True)
class ModelRecord:
    """What erasekit knows about a pipeline beyond its weights."""

    name: str  # as given to load_pipeline ('tinyworld', a folder, a hub id, a .safetensors file), or its folder
    bundled: str | None = None  # 'tinyworld' / 'tinyworld-xl' / 'tinyworld-flux' for the bundled models, else None

    @property
    def tinyworld(self) -> bool:
        return self.bundled is not None

    @property
    def defaults_key(self) -> str:
        """The row of :data:`erasekit.defaults.ERASEKIT`: 'tinyworld' (tinyworld and tinyworld-xl: one world, one
        vocabulary, causal CLIP encoders, so the same reasons hold), 'tinyworld-flux' (the same world read by a
        bidirectional, unmasked T5: its own reasons) or '*'."""
        if self.bundled == "tinyworld-flux":
            return "tinyworld-flux"
        return "tinyworld" if self.tinyworld else "*"

    @property
    def generation(self) -> dict[str, Any]:
        """The bundled model's sampling settings as :class:`~erasekit.evaluate.render.GenerationSettings` fields
        (``steps``, ``guidance``, ``height``, ``width``; absent = the pipeline's own), what ``bench``, ``evaluate``
        and ``demo`` use unless told otherwise; {} for any other model."""
        if self.bundled is None:
            return {}
        from .. import tinyworld

        return tinyworld.generation_settings(self.bundled)

    @property
    def prior_prompts(self) -> str | None:
        """What ``prior_prompts='auto'`` means here: the model's own training captions, or None (it has none)."""
        return "tinyworld" if self.tinyworld else None


def _bundled_folders() -> dict[str, Path]:
    from .. import tinyworld  # the models layer loads the bundled model; nothing above it imports tinyworld

    return {
        "tinyworld": tinyworld.pipeline_dir(),
        "tinyworld-xl": tinyworld.pipeline_xl_dir(),
        "tinyworld-flux": tinyworld.pipeline_flux_dir(),
    }


def describe_model(name: str | Path | None) -> ModelRecord:
    """The record of a ``--model`` name: a bundled name, or a folder that is a bundled model's shipped folder."""
    text = "" if name is None else str(name)
    if text in BUNDLED:
        return ModelRecord(text, text)
    if text:
        try:
            path = Path(text).expanduser().resolve()
            for key, folder in _bundled_folders().items():
                if path == folder.resolve():
                    return ModelRecord(text, key)
        except OSError:
            pass
    return ModelRecord(text)


def record_model(pipe: Pipeline, name: str | Path) -> ModelRecord:
    """Attach the record of ``name`` (what ``pipe`` was loaded from) to ``pipe``; returns it."""
    rec = describe_model(name)
    object.__setattr__(pipe, _ATTR, rec)  # plain attribute: not a pipeline component, not in its config
    return rec


def model_record(pipe: Pipeline) -> ModelRecord:
    """``pipe``'s record; for a pipeline loaded without :func:`load_pipeline`, the record of the folder it came from."""
    rec = getattr(pipe, _ATTR, None)
    if isinstance(rec, ModelRecord):
        return rec
    cfg = getattr(pipe, "config", None)
    name = cfg.get("_name_or_path") if cfg is not None and hasattr(cfg, "get") else None
    return describe_model(name)


def is_tinyworld(model: Pipeline | str | Path | None) -> bool:
    """Whether ``model`` is a bundled tinyworld model (``tinyworld``, ``tinyworld-xl`` or ``tinyworld-flux``).

    ``model``: a pipeline (its record) or a ``--model`` name (before the pipeline is loaded).
    """
    if model is None or isinstance(model, (str, Path)):
        return describe_model(model).tinyworld
    return model_record(model).tinyworld


# ------------------------------------------------------------------ the bundled vocabulary
def tinyworld_captions(n: int, seed: int) -> list[str]:
    """``n`` seeded captions from tinyworld's *training* distribution (never its held-out templates)."""
    import numpy as np

    from ..tinyworld import world

    rng = np.random.default_rng(seed)
    caps: list[str]
    _, _, caps = world.sample_batch(n, rng, size=8, split="train", p_drop_pattern=0.3, p_drop_color=0.2)
    return caps


def tinyworld_aliases(concept: str) -> tuple[str, ...] | None:
    """The synonyms of ``concept`` in tinyworld's vocabulary (lower case), or None when it has no such word."""
    from ..tinyworld import world

    key = concept.strip().lower()
    for vocab in (world.SHAPES, world.COLORS, world.PATTERNS):
        for names in vocab.values():
            if key in names:
                return tuple(n.removeprefix("with ") for n in names)
    return None
