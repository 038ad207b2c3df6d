"""erasekit: erase concepts from text-to-image diffusion models by editing cross-attention.

import erasekit
edit = erasekit.erase(pipe, method="space", concepts=["Van Gogh"], preserve=["Monet"], target_sparsity=0.85)
# per-model defaults as `erasekit erase` applies them; defaults="published" or None to start elsewhere
edit.apply(pipe); ...; edit.revert(pipe)
edit.save("vangogh.safetensors"); erasekit.load_edit("vangogh.safetensors", pipe)
"""

from __future__ import annotations

from ._version import __version__  # noqa: F401  (a leaf module: writers import it from there)
from .api import erase
from .concepts import ConceptSet
from .edit import Edit, LayerEdit
from .errors import ConceptError, EditFileError, EraseKitError, MethodError, ModelError
from .export import (
    export,
)  # the function (erasekit.export(edit, "lora", path, pipe=pipe)); formats live in erasekit/export/
from .io import load_edit  # edit files and erasekit's LoRA exports, by their contents
from .methods import get_method, list_methods, make_config, register_method
from .models.adapter import PipelineAdapter
from .models.loading import load_pipeline
from .models.record import is_tinyworld

__all__ = [
    "ConceptSet",
    "Edit",
    "LayerEdit",
    "PipelineAdapter",
    "erase",
    "export",
    "is_tinyworld",
    "load_edit",
    "load_pipeline",
    "list_methods",
    "get_method",
    "make_config",
    "register_method",
    "EraseKitError",
    "ConceptError",
    "ModelError",
    "MethodError",
    "EditFileError",
]
