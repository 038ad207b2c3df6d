"""FLUX.1's original-layout exports at the published width, read by diffusers alone (no erasekit in between).

    OMP_NUM_THREADS=1 python benchmarks/flux_exports_full_width.py [--double 1 --single 1] [--dtype bfloat16]

diffusers 0.42's FLUX single-file converter splits ``single_blocks.N.linear1`` at the fixed rows (3072, 3072, 3072,
12288), so the tiny builds cannot show ``from_single_file`` on an erasekit file; this script builds a FLUX.1-dev
transformer at the published width (D = 3072, 24 heads of 128, T5 width 4096, CLIP 768, guidance embedding) with
only ``--double`` / ``--single`` blocks (random weights; ~0.5 B parameters for 1 + 1), puts a low-rank edit on every
kind of place (the two static sites, the joint ``add_k_proj`` / ``add_v_proj``, a single block's ``to_v`` and
``proj_mlp`` rows of ``linear1``, the swapped final AdaLN), and reads back:

* ``single-file-flux`` with ``FluxTransformer2DModel.from_single_file(path, config=<folder>)``: max |Δ| against the
  edited transformer over every tensor (0 = bit-exact);
* ``lora-kohya-flux`` with ``FluxPipeline.lora_state_dict`` (diffusers' kohya conversion) and
  ``load_lora_adapter(prefix="transformer")`` + ``fuse_lora``: per edited module, loaded or dropped, and the max |Δ|
  of the fused weight against the edited one.

Prints a table; peak memory is about three copies of the transformer in ``--dtype``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import erasekit
from erasekit.edit import LayerEdit
from erasekit.export import export
from erasekit.models.adapter import weight_fingerprint

SITES = {
    "context_embedder": 4,
    "time_text_embed.text_embedder.linear_1": 2,
    "transformer_blocks.0.attn.add_k_proj": 2,
    "transformer_blocks.0.attn.add_v_proj": 3,
    "single_transformer_blocks.0.attn.to_v": 2,
    "single_transformer_blocks.0.proj_mlp": 1,
    "norm_out.linear": 2,
}


def build(double: int, single: int, dtype: torch.dtype):
    """The tiny FLUX pipeline (models/tiny.py) with its transformer replaced by one at FLUX.1's width (the exports read
    the transformer only; the tiny text encoders are never run)."""
    from diffusers.models import FluxTransformer2DModel

    from erasekit.models.tiny import build_tiny_pipeline

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ).to(dtype)
    pipe = build_tiny_pipeline("flux")
    pipe.transformer = tr
    return pipe


def synthetic_edit(pipe) -> erasekit.Edit:
    from erasekit.models.tiny import build_tiny_pipeline

    g = torch.Generator().manual_seed(1)
    layers, fps = [], {}
    for path, r in SITES.items():
        W = pipe.transformer.get_submodule(path).weight
        B = 0.02 * torch.randn(W.shape[0], r, generator=g)
        layers.append(LayerEdit.lowrank(path, B, torch.randn(r, W.shape[1], generator=g)))
        fps[path] = weight_fingerprint(W)
    model = erasekit.erase(build_tiny_pipeline("flux"), "uce", ["Van Gogh"], progress=False)  # a record to copy
    return erasekit.Edit("uce", model.config, model.concepts, model.base, layers, fps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--double", type=int, default=1)
    ap.add_argument("--single", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    args = ap.parse_args()
    from diffusers import FluxPipeline
    from diffusers.models import FluxTransformer2DModel

    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    pipe = build(args.double, args.single, dtype)
    n = sum(p.numel() for p in pipe.transformer.parameters())
    print(
        f"built a FLUX.1-width transformer ({args.double} + {args.single} blocks, {n / 1e9:.2f} B parameters, "
        f"{args.dtype}) in {time.perf_counter() - t0:.0f} s"
    )
    edit = synthetic_edit(pipe)
    edit.apply(pipe)
    want = {k: v.detach().clone() for k, v in pipe.transformer.state_dict().items()}
    edit.revert(pipe)
    base = {k: v.detach().clone() for k, v in pipe.transformer.state_dict().items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe.transformer.save_config(tmp / "cfg" / "transformer")
        t0 = time.perf_counter()
        res = export(edit, "single-file-flux", tmp / "flux1.safetensors", pipe=pipe)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        tr = FluxTransformer2DModel.from_single_file(
            str(res.path), config=str(tmp / "cfg"), subfolder="transformer", torch_dtype=dtype
        )
        got = tr.state_dict()
        diff = max(float((got[k].double() - want[k].double()).abs().max()) for k in want)
        rows.append(
            (
                "single-file-flux",
                f"{res.nbytes:,}",
                "FluxTransformer2DModel.from_single_file",
                f"{diff:.3g}",
                f"write {t_write:.0f} s, load {time.perf_counter() - t0:.0f} s",
            )
        )
        del tr, got
        res = export(edit, "lora-kohya-flux", tmp / "k.safetensors", pipe=pipe)
        converted = FluxPipeline.lora_state_dict(str(res.path))
        prefixed = {
            k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in converted if k.startswith("transformer.")
        }
        unprefixed = {k.rsplit(".lora_", 1)[0] for k in converted if not k.startswith("transformer.")}
        pipe.transformer.load_lora_adapter(converted, prefix="transformer")
        pipe.transformer.fuse_lora()
        pipe.transformer.unload_lora()
        fused = pipe.transformer.state_dict()
        for path in SITES:
            key = f"{path}.weight"
            d = float((fused[key].double() - want[key].double()).abs().max())
            moved = float((fused[key].double() - base[key].double()).abs().max())
            status = (
                "loaded"
                if path in prefixed
                else ("dropped (no 'transformer.' prefix)" if path in unprefixed else "absent")
            )
            rows.append(
                (
                    f"lora-kohya-flux: {path}",
                    f"{res.nbytes:,}",
                    "lora_state_dict + load_lora_adapter + fuse_lora",
                    f"{d:.3g}",
                    f"{status}; moved {moved:.3g}",
                )
            )
    print("| file / module | bytes | diffusers loader | max abs diff vs edit.apply | note |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
