"""The shipped tinyworld folder is a plain diffusers pipeline: it loads and generates with
``StableDiffusionPipeline.from_pretrained`` alone (no erasekit code), with no dtype argument
and with float16 / float32. The weights are stored in float16; every component's config
says how it loads, so the text encoder and the UNet agree on the dtype.
"""

from pathlib import Path

import pytest
import torch

FOLDER = Path(__file__).resolve().parents[1] / "src" / "erasekit" / "tinyworld" / "weights" / "pipeline"


@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")
@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float16])
def test_plain_diffusers_loads_and_generates(dtype):
    from diffusers import StableDiffusionPipeline

    kw = {} if dtype is None else {"torch_dtype": dtype}
    pipe = StableDiffusionPipeline.from_pretrained(str(FOLDER), local_files_only=True, **kw)
    want = dtype or torch.float32
    assert {pipe.text_encoder.dtype, pipe.unet.dtype, pipe.vae.dtype} == {want}
    out = pipe(
        "a red circle",
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    image = out.images[0]
    assert (
        image.shape[-1] == 3 and bool(torch.isfinite(torch.from_numpy(image)).all()) and image.std() > 0.01
    )  # a picture, not a blank
