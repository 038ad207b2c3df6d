"""The command line on every family's diffusers folder (not only the UNets): erase, inspect and export a LoRA /
merged folder from a saved tiny DiT, and the edit made there is the edit the Python API makes."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline

import erasekit
from erasekit.cli import main

DITS = ("pixart", "sana", "sd3", "flux")
LORA = {"sana", "sd3", "flux"}  # diffusers gives PixArt no LoRA loader: it ships as a merged folder


@pytest.mark.parametrize("build", DITS)
def test_the_cli_erases_and_exports_from_a_dit_folder(all_tiny_pipes, build, tmp_path):
    pipe = all_tiny_pipes[build]
    folder = tmp_path / build
    pipe.save_pretrained(str(folder))
    out = tmp_path / "edit.safetensors"
    args = ["--method", "uce", "--erase", "Van Gogh", "--kind", "style", "--preserve", "Claude Monet"]
    assert main(["erase", "--model", str(folder), *args, "--out", str(out)]) == 0
    assert main(["inspect", str(out), "--json"]) == 0
    # the same folder through plain diffusers (the tiny builds' in-memory tokenizers do not all round-trip through
    # save_pretrained, so the comparison is with the folder as loaded, as the CLI loads it)
    loaded = DiffusionPipeline.from_pretrained(str(folder))
    from_cli = erasekit.load_edit(out, loaded, apply=False)
    ours = erasekit.erase(loaded, "uce", ["Van Gogh"], kind="style", preserve=["Claude Monet"], progress=False)
    assert from_cli.base["family"] == build and list(from_cli.layers) == list(ours.layers)
    den = erasekit.models.families.identify(loaded).get_denoiser(loaded)
    for key, le in ours.layers.items():
        w0 = den.get_submodule(le.path).weight.detach()
        assert torch.allclose(from_cli.layers[key].materialize(w0), le.materialize(w0), atol=1e-6)
    fmt = "lora" if build in LORA else "diffusers"
    target = tmp_path / ("lora.safetensors" if fmt == "lora" else "merged")
    assert main(["export", "--model", str(folder), "--edit", str(out), "--format", fmt, "--out", str(target)]) == 0
    assert target.exists()
