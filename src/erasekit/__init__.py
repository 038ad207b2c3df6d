"""erasekit: erase concepts from text-to-image diffusion models by editing cross-attention.

    import erasekit
    edit = erasekit.erase(pipe, method="space", concepts=["Van Gogh"], preserve=["Monet"], target_sparsity=0.85)
    edit.apply(pipe); ...; edit.revert(pipe)
    edit.save("vangogh.safetensors"); erasekit.load_edit("vangogh.safetensors", pipe)
"""

from __future__ import annotations

from ._version import __version__  # noqa: F401  (a leaf module: writers import it from there)

from typing import Sequence

from .concepts import ConceptSet
from .edit import Edit, LayerEdit
from .errors import ConceptError, EditFileError, EraseKitError, MethodError, ModelError
from .export import export  # the function (erasekit.export(edit, "lora", path, pipe=pipe)); formats live in erasekit/export/
from .io import load_edit  # edit files and erasekit's LoRA exports, by their contents
from .methods import get_method, list_methods, make_config, register_method
from .models.adapter import PipelineAdapter
from .models.loading import load_pipeline


def erase(pipe, method: str = "uce", concepts: ConceptSet | Sequence[str] | str | None = None, *,
          preserve: Sequence[str] = (), kind: str = "style", guide: str | Sequence[str] | None = None,
          templates: bool | Sequence[str] = False, progress: bool = True, **config) -> Edit:
    """Fit ``method`` on ``pipe`` and return the :class:`Edit` (the pipeline is not modified).

    ``concepts`` is a :class:`ConceptSet` or the concept(s) to erase; ``preserve``, ``kind``,
    ``guide`` and ``templates`` build the ConceptSet in the second case. Remaining keyword
    arguments are the method's config (see ``erasekit methods -v``); unknown ones are errors.
    """
    if isinstance(concepts, ConceptSet) and (tuple(preserve) or kind != "style" or guide is not None or templates is not False):
        raise ConceptError("concepts is a ConceptSet: give preserve / kind / guide / templates inside it "
                           "(dataclasses.replace(cs, templates=True)), not as separate arguments, which would be ignored")
    if not isinstance(concepts, ConceptSet):
        if concepts is None:
            raise ConceptError("no concept to erase: pass concepts=['...'] or a ConceptSet")
        erase_list = (concepts,) if isinstance(concepts, str) else tuple(concepts)
        guide_arg = guide if guide is None or isinstance(guide, str) else tuple(guide)
        tpl = templates if isinstance(templates, bool) else tuple(templates)
        concepts = ConceptSet(erase=erase_list, kind=kind, guide=guide_arg, preserve=tuple(preserve), templates=tpl)
    from .models.precision import computing_in_layers, pipeline_compute_dtype, text_encoders

    m = get_method(method)
    cfg = make_config(m.name, **config)
    adapter = PipelineAdapter(pipe, layer_regex=cfg.layer_regex, projections=cfg.projections)
    stored, target = pipeline_compute_dtype(pipe)
    if target == stored or not m.uses_unet(cfg):
        edit = m.fit(adapter, concepts, cfg, progress=progress)  # encoding borrows its own dtype, layer by layer
    else:
        adapter.pin_fingerprints()  # in the stored dtype, before the UNet is borrowed
        # one layer at a time, also for training (saved weights are recast for the backward pass): never a whole copy
        with computing_in_layers([*text_encoders(pipe), pipe.unet], target):
            edit = m.fit(adapter, concepts, cfg, progress=progress)
    edit.compute_dtype = str(target).replace("torch.", "")
    return edit


__all__ = [
    "ConceptSet", "Edit", "LayerEdit", "PipelineAdapter", "erase", "export", "load_edit", "load_pipeline", "list_methods",
    "get_method", "make_config", "register_method", "EraseKitError", "ConceptError", "ModelError", "MethodError", "EditFileError",
]
