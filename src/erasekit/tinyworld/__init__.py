"""tinyworld: erasekit's bundled text-to-image model, trained on a procedural world of shapes,
colours and fill patterns whose ground truth is known (DESIGN.md section 8).

    from erasekit import tinyworld
    pipe = tinyworld.load_pipeline()            # a diffusers StableDiffusionPipeline
    pipe = tinyworld.load_pipeline_xl()         # tinyworld-xl: a StableDiffusionXLPipeline
    pipe = tinyworld.load_pipeline_flux()       # tinyworld-flux: a FluxPipeline
    judge = tinyworld.TinyworldJudge.load()     # shape / colour / pattern classifier
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import world  # noqa: F401
from ._paths import (  # noqa: F401
    pipeline_dir,
    pipeline_flux_dir,
    pipeline_xl_dir,
    weights_dir,
    weights_flux_dir,
    weights_xl_dir,
)
from .world import COLORS, PATTERNS, SHAPES, caption, render, sample_batch  # noqa: F401

if TYPE_CHECKING:
    import torch

    from ..models.families import Pipeline

# tinyworld and tinyworld-xl: 10 DPM-Solver++ steps at guidance 5 (validity at 10 vs 20 steps,
# `python -m erasekit.tinyworld.validity --steps 10`: every target holds); their native size is the pipeline's.
TINYWORLD_STEPS, TINYWORLD_GUIDANCE = 10, 5.0


def generation_settings(model: str) -> dict[str, Any]:
    """A bundled model's sampling settings (``steps``, ``guidance``, ``height``, ``width``; absent = the pipeline's
    own): what erasekit generates with unless told otherwise. tinyworld-flux's come from
    :data:`erasekit.tinyworld.flux.GENERATE_KW` (its ``true_cfg_scale`` is the guidance scale erasekit hands to the
    FLUX family, which turns it into true CFG)."""
    if model == "tinyworld-flux":
        from .flux import GENERATE_KW

        return {
            "steps": int(GENERATE_KW["num_inference_steps"]),
            "guidance": float(GENERATE_KW["true_cfg_scale"]),
            "height": int(GENERATE_KW["height"]),
            "width": int(GENERATE_KW["width"]),
        }
    return {"steps": TINYWORLD_STEPS, "guidance": TINYWORLD_GUIDANCE}


def load_pipeline_xl(
    device: str | torch.device = "cpu", dtype: torch.dtype | None = None, path: str | Path | None = None
) -> Pipeline:
    """Load the shipped tinyworld-xl ``StableDiffusionXLPipeline`` offline (fp32 on CPU by default)."""
    from diffusers import StableDiffusionXLPipeline

    return _load(StableDiffusionXLPipeline, path or pipeline_xl_dir(), device, dtype, {})


def load_pipeline_flux(
    device: str | torch.device = "cpu", dtype: torch.dtype | None = None, path: str | Path | None = None
) -> Pipeline:
    """Load the shipped tinyworld-flux ``FluxPipeline`` offline (fp32 on CPU by default).

    Call it as :data:`erasekit.tinyworld.flux.GENERATE_KW` says: 32x32, true CFG with
    ``negative_prompt=""``, ``max_sequence_length=32``. The loaded pipeline declares what it was trained at, as
    FluxPipeline cannot read it from the folder: its default image side is 32 px (``default_sample_size``, which
    FluxPipeline fixes at 128 latents) and its T5 tokenizer's ``model_max_length`` is the training T5 length, which
    erasekit's FLUX family reads as the text length to encode and generate with.
    """
    from diffusers import FluxPipeline

    from . import flux

    pipe = _load(FluxPipeline, path or pipeline_flux_dir(), device, dtype, {})
    setattr(pipe, "default_sample_size", flux.SIZE // int(pipe.vae_scale_factor))  # noqa: B010  (latent side)
    pipe.tokenizer_2.model_max_length = flux.T5_MAX_TOKENS
    return pipe


def load_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype | None = None, path: str | Path | None = None
) -> Pipeline:
    """Load the shipped tinyworld ``StableDiffusionPipeline`` offline (fp32 on CPU by default).

    The scheduler saved with the pipeline is DPMSolverMultistep (use ~20 steps, guidance ~5).
    """
    from diffusers import StableDiffusionPipeline

    return _load(
        StableDiffusionPipeline,
        path or pipeline_dir(),
        device,
        dtype,
        {"safety_checker": None, "requires_safety_checker": False},
    )


def _load(cls, path, device, dtype, extra: dict):
    import warnings

    import torch
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dtype = torch.float32 if dtype is None else dtype
    prev, bars = dlogging.get_verbosity(), (dlogging.is_progress_bar_enabled(), tlogging.is_progress_bar_enabled())
    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype -> dtype rename in recent diffusers
            pipe = cls.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True, **extra)
    finally:
        dlogging.set_verbosity(prev)
        if bars[0]:
            dlogging.enable_progress_bar()
        if bars[1]:
            tlogging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def __getattr__(name):  # lazy: importing tinyworld should not import torch models
    if name == "TinyworldJudge":
        from .judge import TinyworldJudge

        return TinyworldJudge
    raise AttributeError(name)
