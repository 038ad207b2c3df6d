"""A pipeline whose denoiser holds only its static edit sites: the closed-form erasure of a 12 B-parameter DiT.

A closed-form method reads the text encoders and the weights of the edit sites, nothing else of the denoiser: on
FLUX.1-dev that is ``context_embedder`` and the pooled embedder's ``linear_1`` (15 M of 11.9 B parameters), as the
official UCE-FLUX port (``trainscripts/uce_flux_edit.py``) edits only those two modules. :func:`load_sites_only`
builds the denoiser on the ``meta`` device (shapes, no storage), asks the pipeline's family for its static sites (by
structure, as always) and reads just their tensors from the component's safetensors files (one file or the shards of
its weight map), with those of the denoiser modules the sites' input passes through (PixArt / Sana's caption
projection; :meth:`~erasekit.models.families.base.Family.site_input_modules`). The text encoders, VAE and tokenizers
load as usual. So whatever the load dtype or device, the transformer is never materialised: fp32 on a CPU, or a GPU
that could not hold it, both work.

The edit fitted on such a pipeline is the one fitted on the full pipeline (a test checks it to the bit), and it
saves, applies, reverts and is checked for compatibility normally: those touch only the sites. Running the
denoiser (generation, methods that sample or train, joint sites, export) is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

_MARK = "_erasekit_sites_only"


def is_sites_only(module: object) -> bool:
    """Whether ``module`` is a denoiser loaded by :func:`load_sites_only` (only its edit sites hold weights)."""
    return bool(getattr(module, _MARK, False))


def refuse_sites_only(module: object, what: str) -> None:
    """Raise :class:`ModelError` when ``module`` is a sites-only denoiser and ``what`` needs the whole of it."""
    if is_sites_only(module):
        raise ModelError(
            f"{what} needs the whole denoiser, but this pipeline was loaded with only its edit sites "
            "(denoiser='sites' / --denoiser sites); load it with denoiser='full'"
        )


def _weight_map(folder: Path) -> dict[str, Path]:
    """state-dict key -> the safetensors file holding it, for a diffusers component folder."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        index = json.loads(indexes[0].read_text(encoding="utf-8"))
        return {k: folder / v for k, v in index["weight_map"].items()}
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise ModelError(
            f"{str(folder)!r}: expected one .safetensors weight file or a weight-map index, found {len(files)} files"
        )
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt") as f:
        return {k: files[0] for k in f.keys()}


def _load_tensors(module: nn.Module, prefix: str, where: dict[str, Path], dtype: torch.dtype) -> int:
    """Replace ``module``'s own (meta) parameters and buffers by the stored tensors ``<prefix>.<name>``; bytes read."""
    from safetensors import safe_open

    n = 0
    slots: list[tuple[dict[str, Any], str, bool]] = [
        (module._parameters, name, True) for name, p in module.named_parameters(recurse=False) if p is not None
    ]
    slots += [(module._buffers, name, False) for name, b in module.named_buffers(recurse=False) if b is not None]
    for table, name, is_param in slots:
        key = f"{prefix}.{name}"
        if key not in where:
            raise ModelError(f"the denoiser's weight files have no {key!r}; is the folder complete?")
        with safe_open(str(where[key]), framework="pt") as f:
            t = f.get_tensor(key)
        t = t.to(dtype) if t.is_floating_point() else t
        old = table[name]
        table[name] = nn.Parameter(t, requires_grad=old.requires_grad) if is_param else t
        n += t.numel() * t.element_size()
    return n


def _sites_only_class(cls: type) -> type:
    """A subclass of the denoiser's class that reports the sites' device (its other parameters are on ``meta``)."""

    def device(self: nn.Module) -> torch.device:
        site = next(m for m in self.modules() if getattr(m, "_erasekit_site", False))
        weight = site.weight  # a Linear's
        assert isinstance(weight, torch.Tensor)
        return weight.device

    def refuse(module: nn.Module, args: Any, kwargs: Any) -> None:
        refuse_sites_only(module, f"running the {cls.__name__}")

    sub = type(cls.__name__, (cls,), {"device": property(device), _MARK: True, "__module__": cls.__module__})
    sub._erasekit_refuse = staticmethod(refuse)  # type: ignore[attr-defined]
    return sub


def load_sites_only(folder: str | Path, torch_dtype: torch.dtype) -> Any:  # a diffusers pipeline
    """The diffusers pipeline in ``folder`` with its denoiser on ``meta`` except its static edit sites (see module
    docstring); every other component loads as ``from_pretrained`` loads it, in ``torch_dtype``."""
    import diffusers
    from diffusers import DiffusionPipeline

    from .families import identify

    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    names = [n for n in ("transformer", "unet") if isinstance(index.get(n), list) and index[n][1]]
    if len(names) != 1:
        raise ModelError(f"{str(folder)!r}: no single denoiser (transformer / unet) in model_index.json")
    name = names[0]
    cls = getattr(diffusers, index[name][1], None)
    if cls is None:
        raise ModelError(f"{str(folder)!r}: diffusers has no denoiser class {index[name][1]!r}")
    with torch.device("meta"):
        den = cls.from_config(cls.load_config(str(folder / name)))
    den = nn.Module.to(den, torch_dtype).eval()  # nn.Module.to: every parameter, no fp32-module warning
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(folder), torch_dtype=torch_dtype, local_files_only=True, **{name: den}
        )
    except Exception as e:
        raise ModelError(
            f"could not load folder {str(folder)!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    family = identify(pipe)
    if family.denoiser != name:
        raise ModelError(f"the {family.name} family's denoiser is {family.denoiser!r}, the folder's is {name!r}")
    where = _weight_map(folder / name)
    for site in family.edit_sites(pipe):  # the static sites, found by structure on the meta model
        module = den.get_submodule(site.path)
        _load_tensors(module, site.path, where, torch_dtype)
        module._erasekit_site = True
    # PixArt / Sana: the sites read the caption projection (and norm), modules of the denoiser that encoding runs
    for key, module in family.site_input_modules(pipe).items():
        if key.startswith(f"{name}."):
            path = key[len(name) + 1 :]
            for sub, m in module.named_modules():
                _load_tensors(m, f"{path}.{sub}" if sub else path, where, torch_dtype)
                m._erasekit_site_input = True
    den.__class__ = _sites_only_class(cls)
    den.register_forward_pre_hook(den._erasekit_refuse, with_kwargs=True)
    return pipe


def move_sites_only(pipe: Any, device: str) -> Any:
    """``pipe.to(device)`` for a sites-only pipeline: every other component whole, of the denoiser only its sites."""
    from .families import identify

    family = identify(pipe)
    den = family.get_denoiser(pipe)
    for m in pipe.components.values():
        if isinstance(m, nn.Module) and m is not den:
            m.to(device)
    for m in den.modules():
        if getattr(m, "_erasekit_site", False) or getattr(m, "_erasekit_site_input", False):
            m.to(device)
    return pipe
