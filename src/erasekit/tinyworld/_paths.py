"""Where the shipped tinyworld weights live (a leaf module: the judge and the loaders both need it)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def weights_dir() -> Path:
    """Folder holding the shipped weights (``pipeline/``, ``judge.safetensors``, ``MODEL_CARD.md``)."""
    return _HERE / "weights"


def pipeline_dir() -> Path:
    return weights_dir() / "pipeline"


def weights_xl_dir() -> Path:
    """Folder holding tinyworld-xl (``pipeline/``, ``MODEL_CARD.md``); its judge is tinyworld's."""
    return _HERE / "weights_xl"


def pipeline_xl_dir() -> Path:
    return weights_xl_dir() / "pipeline"


def weights_flux_dir() -> Path:
    """Folder holding tinyworld-flux (``pipeline/``, ``MODEL_CARD.md``); its judge is tinyworld's."""
    return _HERE / "weights_flux"


def pipeline_flux_dir() -> Path:
    return weights_flux_dir() / "pipeline"
