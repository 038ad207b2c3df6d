"""Export matrix: format × family × method kind → bytes written, loader, max |Δ| of the UNet after loading.

    python benchmarks/export_matrix.py [--families sd,sd2,sdxl] [--rank 4]

Tiny SD1 / SD2 / SDXL pipelines. Oracle: ``edit.apply`` (max |Δ| over every UNet tensor). Kinds: low-rank UCE,
sparse SPACE (80 % target sparsity; LoRA only with --rank, truncated SVD), dense UCE (exact LoRA when ΔW is
numerically low-rank). Loaders: diffusers load_lora_weights + fuse_lora; W0 + diff (diffusers has no .diff
reader; LyCORIS is checked by benchmarks/export_thirdparty.py); from_pretrained; from_single_file.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import erasekit
from erasekit.export import ExportError, export
from erasekit.models.tiny import build_tiny_pipeline


def _state(p):
    return {k: v.detach().clone() for k, v in p.unet.state_dict().items()}


def _diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def matrix(families: list[str], rank: int) -> list[tuple]:
    """(format, family, kind, bytes, loader, max |Δ| vs edit.apply, note) for every export."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fam in families:
            p = build_tiny_pipeline(fam, seed=0)
            p.set_progress_bar_config(disable=True)
            p.save_pretrained(tmp / f"cfg-{fam}")
            kinds = {
                "low-rank (UCE)": erasekit.erase(
                    p, "uce", ["a cat"], preserve=["a dog"], progress=False, storage="lowrank"
                ),
                "sparse (SPACE)": erasekit.erase(p, "space", ["a cat"], progress=False, target_sparsity=0.8),
                "dense (UCE)": erasekit.erase(p, "uce", ["a cat"], preserve=["a dog"], progress=False, storage="dense"),
            }
            base = _state(p)
            for kind, edit in kinds.items():
                edit.apply(p)
                want = _state(p)
                edit.revert(p)
                for fmt in ("lora", "lora-kohya", "diff", "diffusers", "single-file"):
                    out = tmp / f"{fam}-{kind[:4]}-{fmt}{'' if fmt == 'diffusers' else '.safetensors'}"
                    note = ""
                    try:
                        res = export(edit, fmt, out, pipe=p)
                    except ExportError:
                        res = export(edit, fmt, out, pipe=p, rank=rank)
                        note = f"rank {rank}, rel. err {res.rel_error:.3f}"
                    if fmt.startswith("lora"):
                        p.load_lora_weights(str(res.path))
                        p.fuse_lora()
                        p.unload_lora_weights()
                        got, loader = _state(p), "load_lora_weights + fuse_lora"
                        p.unet.load_state_dict(base)
                    elif fmt == "diff":
                        from safetensors.torch import load_file

                        from erasekit.export.lora_kohya import layer_names

                        d, names = load_file(str(res.path)), layer_names(edit, p, None)[0]
                        got = dict(base)
                        for lp in edit.layers:
                            got[lp + ".weight"] = base[lp + ".weight"] + d[names[lp] + ".diff"]
                        loader = "W0 + diff (LyCORIS: export_thirdparty.py)"
                    elif fmt == "diffusers":
                        from diffusers import DiffusionPipeline

                        got, loader = (
                            DiffusionPipeline.from_pretrained(str(res.path)).unet.state_dict(),
                            "from_pretrained",
                        )
                    else:
                        # the pipeline class's own from_single_file, no erasekit in between (the tiny config stands in
                        # for the Hub's)
                        reloaded = type(p).from_single_file(
                            str(res.path), config=str(tmp / f"cfg-{fam}"), local_files_only=True
                        )
                        got, loader = reloaded.unet.state_dict(), "from_single_file"
                    rows.append((fmt, fam, kind, res.nbytes, loader, _diff(want, got), note))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="sd,sd2,sdxl")
    ap.add_argument("--rank", type=int, default=4)
    args = ap.parse_args()
    rows = matrix(args.families.split(","), args.rank)
    print(
        "| format | family | kind | bytes | loader | max abs diff vs edit.apply | note |\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:,} | {r[4]} | {r[5]:.2g} | {r[6]} |")


if __name__ == "__main__":
    main()
