"""Load a pipeline from whatever users pass as ``--model``.

* ``tinyworld`` — the bundled model (DESIGN §8); ``tinyworld-xl`` / ``tinyworld-flux`` — its SDXL- and
  FLUX.1-architecture siblings (also when given as their shipped folder: loaded by their own loaders)
* ``tiny-sd`` / ``tiny-sd2`` / ``tiny-sdxl`` — tiny random pipelines built offline (smoke tests)
* a local diffusers folder (``model_index.json``) — ``DiffusionPipeline.from_pretrained``
* a single-file ``.safetensors`` checkpoint (A1111 / ComfyUI layout) — ``from_single_file``
* a HuggingFace Hub id (``org/name``) — ``DiffusionPipeline.from_pretrained``

Pickle-based checkpoints (``.ckpt``, ``.pt``, ``.bin``) are refused: they can run code on load.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..dtypes import DTYPES
from ..errors import ModelError
from .record import BUNDLED, describe_model, is_tinyworld, model_record, record_model

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from .families import Pipeline

# is_tinyworld and model_record are re-exported: callers that load a model ask this module about it
__all__ = ["DTYPES", "TINY", "BUNDLED", "resolve_dtype", "load_pipeline", "is_tinyworld", "model_record"]

TINY = {"tiny-sd": "sd", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}
DENOISER_LOADS = ("full", "sites")  # load_pipeline(denoiser=...): the whole denoiser, or its static edit sites only
_PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose float32, float16 or bfloat16")
    return DTYPES[dtype]


def load_pipeline(
    model: str,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    config: str | None = None,
    revision: str | None = None,
    denoiser: str = "full",
) -> Pipeline:
    """Load ``model`` (see module docstring) onto ``device`` in ``dtype``.

    The pipeline carries the record of ``model`` (:func:`erasekit.models.record.model_record`):
    :func:`erasekit.erase` reads it to pick the model's defaults.

    ``denoiser='sites'`` (a local diffusers folder) loads of the denoiser only its static edit sites, the rest on
    the ``meta`` device (:mod:`erasekit.models.sites_only`): enough for the closed-form methods, which read nothing
    else, on a model whose denoiser would not fit (FLUX.1-dev's 12 B parameters in float32, or on a small GPU).
    """
    torch_dtype = resolve_dtype(dtype)
    if denoiser not in DENOISER_LOADS:
        raise ModelError(f"unknown denoiser load {denoiser!r}; choose {' or '.join(DENOISER_LOADS)}")
    if denoiser == "sites":
        return _load_sites_only(str(model), torch_dtype, device)
    pipe = _load(str(model), torch_dtype, config, revision)
    # diffusers warns that float16 "cannot run" on a CPU; erasekit computes in float32 there instead
    # (models/precision.py) and says so itself, once.
    quiet = _DropHalfOnCpuWarning()
    pipeline_logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    pipeline_logger.addFilter(quiet)
    try:
        pipe = pipe.to(device)
    except (RuntimeError, AssertionError) as e:
        raise ModelError(f"cannot move the pipeline to device {device!r}: {e}") from None
    finally:
        pipeline_logger.removeFilter(quiet)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    record_model(pipe, model)
    return pipe


def _load_sites_only(model: str, torch_dtype: torch.dtype, device: str) -> Pipeline:
    from .sites_only import load_sites_only, move_sites_only

    path = Path(model).expanduser()
    if not (path / "model_index.json").is_file():
        raise ModelError(
            f"denoiser='sites' reads the edit sites from a local diffusers folder's weight files; {model!r} is not one "
            "(download the model and pass its folder)"
        )
    pipe = load_sites_only(path, torch_dtype)
    try:
        move_sites_only(pipe, device)
    except (RuntimeError, AssertionError) as e:
        raise ModelError(f"cannot move the pipeline to device {device!r}: {e}") from None
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    record_model(pipe, model)
    return pipe


class _DropHalfOnCpuWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "cannot run with `cpu` device" not in record.getMessage()


def _load(model: str, torch_dtype: torch.dtype, config: str | None, revision: str | None) -> Pipeline:
    bundled = describe_model(model).bundled  # a bundled name, or a bundled model's shipped folder
    if bundled is not None:
        from .. import tinyworld

        loaders = {
            "tinyworld": tinyworld.load_pipeline,
            "tinyworld-xl": tinyworld.load_pipeline_xl,
            "tinyworld-flux": tinyworld.load_pipeline_flux,  # declares its 32 px and its T5 length
        }
        return loaders[bundled](dtype=torch_dtype)
    if model in TINY:
        from .tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(TINY[model])
        return pipe if torch_dtype == torch.float32 else pipe.to(torch_dtype)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"{model!r} is a folder but not a diffusers pipeline (no model_index.json)")
        return _from_pretrained(str(path), torch_dtype, revision, local=True)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ModelError(
            f"{model!r} is a pickle checkpoint ({path.suffix}); erasekit loads only safetensors because pickle can run "
            "arbitrary code. Convert it to .safetensors first"
        )
    if path.suffix.lower() == ".safetensors":
        if not path.is_file():
            raise ModelError(f"checkpoint {model!r} does not exist")
        return _from_single_file(path, torch_dtype, config)
    if _HUB_ID.match(model) and not path.exists():
        return _from_pretrained(model, torch_dtype, revision, local=False)
    raise ModelError(
        f"unknown model {model!r}: pass 'tinyworld', 'tinyworld-xl', 'tinyworld-flux', tiny-sd / tiny-sd2 / tiny-sdxl, "
        "a diffusers folder, "
        "a single-file .safetensors checkpoint, or a HuggingFace Hub id such as "
        "stable-diffusion-v1-5/stable-diffusion-v1-5"
    )


def _from_pretrained(name: str, torch_dtype: torch.dtype, revision: str | None, local: bool) -> Pipeline:
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(
            name, torch_dtype=torch_dtype, revision=revision, local_files_only=local
        )
    except Exception as e:  # network, auth, missing files: all become one clear message
        where = "folder" if local else "HuggingFace Hub id"
        hint = "" if local else " Without network access, download it on another machine and pass the local folder."
        raise ModelError(
            f"could not load {where} {name!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}.{hint}"
        ) from None


def _single_file_class(path: Path) -> type[StableDiffusionPipeline] | type[StableDiffusionXLPipeline]:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:
        raise ModelError(f"{str(path)!r} is not a readable safetensors checkpoint: {e}") from None
    if any(k.startswith("conditioner.embedders.1") for k in keys):
        return StableDiffusionXLPipeline
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return StableDiffusionPipeline
    raise ModelError(
        f"{str(path)!r} does not look like a Stable Diffusion checkpoint (no model.diffusion_model.* keys)"
    )


def _from_single_file(path: Path, torch_dtype: torch.dtype, config: str | None) -> Pipeline:
    cls = _single_file_class(path)
    try:
        return cls.from_single_file(str(path), torch_dtype=torch_dtype, config=config)
    except Exception as e:
        raise ModelError(
            f"could not load single-file checkpoint {str(path)!r} as {cls.__name__}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Offline, pass --config with a local diffusers folder of the "
            "same "
            "architecture (e.g. the SD 1.5 or SDXL base folder) so no config is downloaded"
        ) from None
