"""The family registry: one module per diffusers pipeline family (DESIGN §10).

Modelled on peft's per-architecture target mapping and diffusers' per-pipeline ``transformer_name``:
each family module defines a small frozen :class:`Family` and registers it; :func:`identify` picks
the family of a live pipeline (by its class, then by its structure) or refuses naming the supported ones. Adding a
backbone is adding a module here and one line below.
"""

from __future__ import annotations

from ...errors import ModelError
from .base import (
    CFG_LAYOUTS,
    INPUT_KINDS,
    PROJECTIONS,
    SITE_SETS,
    Conditioning,
    Family,
    Pipeline,
    Sampling,
    Site,
    cross_attention_sites,
    is_cross_attention,
)

__all__ = [
    "CFG_LAYOUTS",
    "INPUT_KINDS",
    "PROJECTIONS",
    "SITE_SETS",
    "Conditioning",
    "Family",
    "Pipeline",
    "Sampling",
    "Site",
    "UnsupportedPipelineError",
    "cross_attention_sites",
    "families",
    "get_family",
    "identify",
    "is_cross_attention",
    "register_family",
]


class UnsupportedPipelineError(ModelError):
    """A pipeline of no registered family."""


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Register ``family`` under its name; identify() asks families in registration order."""
    if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
        raise ModelError(f"a family named {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Registered families by name, in the order identify() asks them."""
    return dict(_FAMILIES)


def supported() -> str:
    return ", ".join(f"{f.name} ({f.description})" for f in _FAMILIES.values())


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UnsupportedPipelineError(f"unknown model family {name!r}; erasekit supports {supported()}") from None


def identify(pipe: Pipeline) -> Family:
    """The family of ``pipe``; UnsupportedPipelineError (one line naming the supported families) if none."""
    for fam in _FAMILIES.values():
        if fam.matches(pipe):
            return fam
    for fam in _FAMILIES.values():  # a class no family names: the family whose structure it has
        if fam.fallback(pipe):
            return fam
    raise UnsupportedPipelineError(
        f"{type(pipe).__name__} is not a supported pipeline; erasekit supports {supported()}. "
        "Load one of these with diffusers (or erasekit.load_pipeline)"
    )


def _register_builtin() -> None:
    from .flux import FLUX
    from .pixart import PIXART
    from .sana import SANA
    from .sd import SD
    from .sd3 import SD3
    from .sdxl import SDXL

    for fam in (SD, SDXL, PIXART, SANA, SD3, FLUX):
        register_family(fam)


_register_builtin()
