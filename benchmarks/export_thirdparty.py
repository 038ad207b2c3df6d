"""Check erasekit exports with loaders other than diffusers, installed in a SEPARATE venv.

    python benchmarks/export_thirdparty.py prepare DIR                 # project venv: write exports + expectations
    .venv-3p/bin/python benchmarks/export_thirdparty.py check DIR      # third-party venv: load them, print JSON

The third-party venv (never the project's: these pin old libraries) is made by
    bash benchmarks/thirdparty_venv.sh          # CI runs it too, so the export test uses these loaders

Checks:
* LyCORIS (the LoRA code A1111 / ComfyUI users run) merges our kohya LoRA and .diff into module trees
  named as the loaders name them (SD 1.x: diffusers spelling; SDXL: the LDM / SGM names of the single
  file): every LoRA module must match a module, and the merged weights must equal the baked file's
  weights at exactly the edited modules and nowhere else.
* sd-mecha's key lists of real SD 1.5 and SDXL checkpoints (sd1-ldm, sdxl-sgm; sd1-kohya, sdxl-kohya):
  our single-file keys and shapes for real-size configs (built on the meta device), and our kohya
  names for every cross-attention to_k / to_v, must be exactly theirs.
* stable-diffusion-sdkit (the original LDM code): the SD 1.x / 2.x single-file UNet loads with
  strict=True into its UNetModel and gives diffusers' output on the same inputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


# ---------------------------------------------------------------- prepare (project venv)
def _real_size_pipes():
    """Real SD 1.5 and SDXL architectures (no weights: meta tensors), configs as published."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    class P:  # just the attributes the exporters read
        def __init__(self, **kw):
            self.__dict__.update(kw)

    vae_kw = dict(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
    )
    clip_l = CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768
    )
    with init_empty_weights():
        sd15 = P(
            unet=UNet2DConditionModel(cross_attention_dim=768),
            vae=AutoencoderKL(**vae_kw),
            text_encoder=CLIPTextModel(clip_l),
            text_encoder_2=None,
        )
        sdxl_unet = UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        big_g = CLIPTextConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            projection_dim=1280,
            hidden_act="gelu",
        )
        sdxl = P(
            unet=sdxl_unet,
            vae=AutoencoderKL(**vae_kw),
            text_encoder=CLIPTextModel(clip_l),
            text_encoder_2=CLIPTextModelWithProjection(big_g),
        )
    return {"sd1": sd15, "sdxl": sdxl}


def prepare(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    import erasekit
    from erasekit.export import export
    from erasekit.export import ldm_names as N
    from erasekit.export.lora_kohya import kohya_name
    from erasekit.models.tiny import build_tiny_pipeline

    out.mkdir(parents=True, exist_ok=True)
    info = {"tiny": {}, "real": {}}
    for fam in ("sd", "sd2", "sdxl"):
        p = build_tiny_pipeline(fam, seed=0)
        p.set_progress_bar_config(disable=True)
        edit = erasekit.erase(p, "uce", ["a cat"], preserve=["a dog"], progress=False)
        export(p, "single-file", out / f"{fam}-plain.safetensors")
        export(edit, "single-file", out / f"{fam}-baked.safetensors", pipe=p)
        names = {}
        for spelling in ("diffusers", "ldm"):
            export(edit, "lora-kohya", out / f"{fam}-{spelling}.lora.safetensors", pipe=p, kohya_names=spelling)
            export(edit, "diff", out / f"{fam}-{spelling}.diff.safetensors", pipe=p, kohya_names=spelling)
            names[spelling] = {kohya_name(lp, spelling, p.unet.config): lp for lp in edit.layers}
        # Module trees as the loaders see them: the diffusers UNet's Linear weights, and the single file's LDM names.
        save_file(
            {k: v.contiguous() for k, v in p.unet.state_dict().items() if v.dim() == 2},
            str(out / f"{fam}-diffusers-unet.safetensors"),
        )
        info["tiny"][fam] = {
            "edited": {sp: sorted(n) for sp, n in names.items()},
            "ldm_edited": sorted(
                N.UNET_PREFIX + N.unet_key_to_ldm(lp + ".weight", p.unet.config) for lp in edit.layers
            ),
            "diffusers_edited": sorted(lp + ".weight" for lp in edit.layers),
            "ldm_of": {
                lp + ".weight": N.UNET_PREFIX + N.unet_key_to_ldm(lp + ".weight", p.unet.config) for lp in edit.layers
            },
        }
        if fam in ("sd", "sd2"):  # a reference UNet output for the original LDM code
            g = torch.Generator().manual_seed(0)
            c = p.unet.config
            x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, c.cross_attention_dim, generator=g)
            t = torch.tensor([10, 500])
            with torch.no_grad():
                y = p.unet(x, t, encoder_hidden_states=ctx).sample
            save_file({"x": x, "t": t, "ctx": ctx, "y": y}, str(out / f"{fam}-forward.safetensors"))
            heads = c.attention_head_dim
            info["tiny"][fam]["unet_config"] = dict(
                in_channels=c.in_channels,
                out_channels=c.out_channels,
                model_channels=c.block_out_channels[0],
                num_res_blocks=c.layers_per_block,
                channel_mult=[b // c.block_out_channels[0] for b in c.block_out_channels],
                context_dim=c.cross_attention_dim,
                attention_resolutions=[2**i for i, t_ in enumerate(c.down_block_types) if t_.startswith("CrossAttn")],
                use_linear_in_transformer=bool(c.use_linear_projection),
                norm_num_groups=c.norm_num_groups,
                # diffusers' attention_head_dim is the number of heads (a historical name); LDM takes heads or channels
                # per head
                **(
                    {"num_heads": heads}
                    if isinstance(heads, int)
                    else {"num_head_channels": c.block_out_channels[0] // heads[0]}
                ),
            )
    for fam, rp in _real_size_pipes().items():
        layout = "sdxl" if fam == "sdxl" else "sd1"
        keys = {
            **N.unet_to_ldm(rp.unet.state_dict(), rp.unet.config),
            **N.vae_to_ldm(rp.vae.state_dict(), rp.vae.config),
        }
        if layout == "sd1":
            keys.update(N.clip_to_ldm(rp.text_encoder.state_dict(), 77))
        else:
            keys.update(N.clip_to_ldm(rp.text_encoder.state_dict(), 77, prefix=N.SDXL_CLIP_PREFIX))
            keys.update(N.openclip_to_ldm(rp.text_encoder_2.state_dict(), N.SDXL_OPENCLIP_PREFIX))
        cross = [n for n, m in rp.unet.named_modules() if getattr(m, "is_cross_attention", False)]
        spelling = "ldm" if fam == "sdxl" else "diffusers"
        kohya = {
            kohya_name(f"{a}.{pr}", spelling, rp.unet.config): list(rp.unet.get_submodule(f"{a}.{pr}").weight.shape)
            for a in cross
            for pr in ("to_k", "to_v")
        }
        info["real"][fam] = {"single_file": {k: list(v.shape) for k, v in keys.items()}, "kohya": kohya}
    (out / "info.json").write_text(json.dumps(info))


# ------------------------------------------------------------------ check (3p venv)
def _tree(weights: dict):
    """A bare module tree with one Linear per 2-D weight, named as the weight's module path."""
    import torch

    root = torch.nn.Module()
    for key, w in weights.items():
        *parents, leaf = key.removesuffix(".weight").split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data.copy_(w)
        node.add_module(leaf, lin)
    return root


def _lycoris(fam: str, spelling: str, kind: str, d: Path, info: dict, failures: list, results: dict) -> None:
    from lycoris.wrapper import LycorisNetwork, create_lycoris_from_weights
    from safetensors.torch import load_file

    t = info["tiny"][fam]
    if spelling == "diffusers":
        base = load_file(str(d / f"{fam}-diffusers-unet.safetensors"))
        edited = set(t["diffusers_edited"])
    else:
        plain = load_file(str(d / f"{fam}-plain.safetensors"))
        base = {
            k.removeprefix("model.diffusion_model."): v
            for k, v in plain.items()
            if k.startswith("model.diffusion_model.") and v.dim() == 2
        }
        edited = {k.removeprefix("model.diffusion_model.") for k in t["ldm_edited"]}
    baked = load_file(str(d / f"{fam}-baked.safetensors"))
    tree = _tree(base)
    before = {k: v.clone() for k, v in tree.state_dict().items()}
    LycorisNetwork.LORA_PREFIX = "lora_unet"
    net, sd = create_lycoris_from_weights(1.0, str(d / f"{fam}-{spelling}.{kind}.safetensors"), tree)
    n_file = len({k.split(".")[0] for k in sd})
    net.merge_to(1.0)
    after = tree.state_dict()
    changed = {k for k in after if not (after[k] == before[k]).all()}
    delta_ok = changed == edited
    if spelling == "diffusers":  # compare with the baked file through the LDM name of each edited module
        ldm = t["ldm_of"]
        err = max(float((after[k] - baked[ldm[k]]).abs().max()) for k in edited) if delta_ok else None
    else:
        err = max(float((after[k] - baked["model.diffusion_model." + k]).abs().max()) for k in edited)
    results[f"lycoris {fam} {spelling} {kind}"] = {
        "modules_in_file": n_file,
        "modules_matched": len(net.loras),
        "changed": len(changed),
        "edited": len(edited),
        "max_abs_diff_vs_baked": err,
    }
    if len(net.loras) != n_file or not delta_ok or (err is not None and err > 1e-5):
        failures.append(
            f"lycoris {fam} {spelling} {kind}: matched {len(net.loras)}/{n_file}, changed {len(changed)} vs edited "
            f"{len(edited)}, err {err}"
        )


def _mecha(info: dict, failures: list, results: dict) -> None:
    import sd_mecha
    import yaml

    root = Path(sd_mecha.__file__).parent / "extensions" / "builtin" / "model_configs"

    def keys_of(name):
        comps = yaml.safe_load((root / f"{name}.yaml").read_text())["components"]
        return {k: v for comp in comps.values() for k, v in comp.items()}

    for fam, single, kohya in (("sd1", "sd1-ldm", "sd1-kohya"), ("sdxl", "sdxl-sgm", "sdxl-kohya")):
        theirs, ours = keys_of(single), info["real"][fam]["single_file"]
        required = {k for k, v in theirs.items() if not v.get("optional")}
        missing = sorted(required - set(ours))
        extra = sorted(set(ours) - set(theirs))
        shapes = sorted(k for k in set(ours) & set(theirs) if list(theirs[k]["shape"]) != list(ours[k]))
        names = {
            "lora_unet_" + k.removeprefix("unet.").removesuffix(".weight").replace(".", "_"): v["shape"]
            for k, v in keys_of(kohya).items()
            if k.startswith("unet.") and k.endswith(".weight")
        }
        unknown = sorted(n for n in info["real"][fam]["kohya"] if n not in names)
        kshape = sorted(n for n, s in info["real"][fam]["kohya"].items() if n in names and list(names[n]) != list(s))
        results[f"sd-mecha {fam}"] = {
            "single_file_keys": len(ours),
            "missing": len(missing),
            "extra": len(extra),
            "shape_mismatch": len(shapes),
            "kohya_names": len(info["real"][fam]["kohya"]),
            "kohya_unknown": len(unknown),
            "kohya_shape_mismatch": len(kshape),
        }
        if missing or extra or shapes or unknown or kshape:
            failures.append(
                f"sd-mecha {fam}: missing {missing[:3]} extra {extra[:3]} shapes {shapes[:3]} kohya unknown "
                f"{unknown[:3]} {kshape[:3]}"
            )


def _sdkit(fam: str, d: Path, info: dict, failures: list, results: dict) -> None:
    import ldm.modules.attention as attn
    import ldm.modules.diffusionmodules.util as util
    import torch
    from safetensors.torch import load_file

    cfg = dict(info["tiny"][fam]["unet_config"])
    groups = cfg.pop("norm_num_groups")
    # The LDM code hard-codes GroupNorm(32, ·) for real-size models; the tiny ones use fewer groups.
    util.normalization = lambda ch: util.GroupNorm32(groups, ch)
    attn.Normalize = lambda ch: torch.nn.GroupNorm(num_groups=groups, num_channels=ch, eps=1e-6, affine=True)
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    model = UNetModel(image_size=8, use_spatial_transformer=True, transformer_depth=1, legacy=False, **cfg)
    sd = {
        k.removeprefix("model.diffusion_model."): v
        for k, v in load_file(str(d / f"{fam}-baked.safetensors")).items()
        if k.startswith("model.diffusion_model.")
    }
    model.load_state_dict(sd, strict=True)
    ref = load_file(str(d / f"{fam}-forward.safetensors"))
    with torch.no_grad():
        y = model(ref["x"], timesteps=ref["t"], context=ref["ctx"])
    plain = load_file(str(d / f"{fam}-plain.safetensors"))
    model.load_state_dict(
        {
            k.removeprefix("model.diffusion_model."): v
            for k, v in plain.items()
            if k.startswith("model.diffusion_model.")
        },
        strict=True,
    )
    with torch.no_grad():
        y_plain = model(ref["x"], timesteps=ref["t"], context=ref["ctx"])
    err = float((y_plain - ref["y"]).abs().max())
    results[f"sdkit {fam}"] = {
        "strict_load": True,
        "max_abs_diff_vs_diffusers": err,
        "edit_effect": float((y - y_plain).abs().max()),
    }
    if err > 1e-4:
        failures.append(f"sdkit {fam}: LDM UNet output differs from diffusers by {err}")


def check(d: Path) -> None:
    info = json.loads((d / "info.json").read_text())
    failures: list[str] = []
    results: dict = {}
    for fam, spelling in (("sd", "diffusers"), ("sd", "ldm"), ("sd2", "diffusers"), ("sdxl", "ldm")):
        for kind in ("lora", "diff"):
            try:
                _lycoris(fam, spelling, kind, d, info, failures, results)
            except Exception as e:  # report, do not crash: the test shows what failed
                failures.append(f"lycoris {fam} {spelling} {kind}: {type(e).__name__}: {e}")
    try:
        _mecha(info, failures, results)
    except Exception as e:
        failures.append(f"sd-mecha: {type(e).__name__}: {e}")
    for fam in ("sd", "sd2"):
        try:
            _sdkit(fam, d, info, failures, results)
        except Exception as e:
            failures.append(f"sdkit {fam}: {type(e).__name__}: {str(e)[:300]}")
    for k, v in results.items():
        print(f"{k:32s} {v}", file=sys.stderr)
    print(json.dumps({"failures": failures, "results": results}))


if __name__ == "__main__":
    cmd, folder = sys.argv[1], Path(sys.argv[2])
    prepare(folder) if cmd == "prepare" else check(folder)
