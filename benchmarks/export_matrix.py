"""Export matrix: format × family × method kind → bytes written, loader, max |Δ| of the denoiser after loading.

    python benchmarks/export_matrix.py [--families sd,sd2,sdxl,flux,sd3] [--rank 4]

Tiny pipelines (models/tiny.py). Oracle: ``edit.apply`` (max |Δ| over every denoiser tensor). Kinds: low-rank UCE,
sparse SPACE (80 % target sparsity; LoRA only with --rank, truncated SVD), dense UCE (exact LoRA when ΔW is
numerically low-rank); on FLUX / SD3 also UCE on the static and joint sites (``sites='all'``). Loaders: diffusers
only, no erasekit in between: load_lora_weights + fuse_lora; W0 + diff (diffusers has no .diff reader; LyCORIS is
checked by benchmarks/export_thirdparty.py); from_pretrained; from_single_file (the pipeline's, or the
transformer class's with the saved folder as config). A row whose loader misreads the file shows it as it is: a
max |Δ| the size of the edit (diffusers 0.42 drops a kohya FLUX LoRA's txt_in / vector_in keys) or the loader's
error (its FLUX converter refuses a BFL file narrower than FLUX.1); ComfyUI's reading of those files is checked in
tests/test_export_flux.py.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import erasekit
from erasekit.export import ExportError, export
from erasekit.models.families import identify
from erasekit.models.tiny import build_tiny_pipeline

FORMATS = {
    "sd": ("lora", "lora-kohya", "diff", "diffusers", "single-file"),
    "flux": ("lora", "lora-kohya-flux", "diffusers", "single-file-flux"),
    "sd3": ("lora", "diffusers", "single-file-sd3"),
}


def _den(p):
    return identify(p).get_denoiser(p)


def _state(p):
    return {k: v.detach().clone() for k, v in _den(p).state_dict().items()}


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
            family = identify(p).name
            formats = FORMATS.get(family, FORMATS["sd"])
            kinds = {
                "low-rank (UCE)": erasekit.erase(
                    p, "uce", ["a cat"], preserve=["a dog"], progress=False, storage="lowrank"
                ),
                "sparse (SPACE)": erasekit.erase(p, "space", ["a cat"], progress=False, target_sparsity=0.8),
                "dense (UCE)": erasekit.erase(p, "uce", ["a cat"], preserve=["a dog"], progress=False, storage="dense"),
            }
            if family in ("flux", "sd3"):
                kinds["static + joint (UCE)"] = erasekit.erase(
                    p, "uce", ["a cat"], preserve=["a dog"], progress=False, storage="lowrank", sites="all"
                )
            base = _state(p)
            for kind, edit in kinds.items():
                edit.apply(p)
                want = _state(p)
                edit.revert(p)
                for fmt in formats:
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
                        _den(p).load_state_dict(base)
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

                        got, loader = _state(DiffusionPipeline.from_pretrained(str(res.path))), "from_pretrained"
                    elif (
                        fmt != "single-file"
                    ):  # a transformer alone: its class's from_single_file, the folder as config
                        cls = type(_den(p))
                        loader = f"{cls.__name__}.from_single_file"
                        try:
                            tr = cls.from_single_file(
                                str(res.path), config=str(tmp / f"cfg-{fam}"), subfolder="transformer"
                            )
                        except Exception as e:  # the loader's own refusal is the measurement
                            rows.append((fmt, fam, kind, res.nbytes, f"{loader}: {type(e).__name__}", float("nan"), ""))
                            continue
                        got = {k: v.detach() for k, v in tr.state_dict().items()}
                    else:
                        # the pipeline class's own from_single_file, no erasekit in between (the tiny config stands in
                        # for the Hub's)
                        reloaded = type(p).from_single_file(
                            str(res.path), config=str(tmp / f"cfg-{fam}"), local_files_only=True
                        )
                        got, loader = _state(reloaded), "from_single_file"
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
