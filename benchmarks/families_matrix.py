"""Family × method on the tiny offline builds: fits, edit bytes, fit seconds, erase → guide residual, preserve drift.

    python benchmarks/families_matrix.py [--builds sd3,flux] [--methods uce,space,rece,speed,cure,mace,pure]
    python benchmarks/families_matrix.py --builds sd3,pixart,sana --methods uce,...,pure,esd,esd-x,ace,mace+lora

Each closed-form method runs with its default settings (MACE without its LoRA stage, PURE on its text basis; SPACE,
RECE at the cheap test settings of tests/method_settings.py) on "Van Gogh" (style), preserving "Claude Monet" and
"Pablo Picasso". The fine-tuning methods (``esd``, ``esd-x``, ``esd-u``, ``ace``, and ``mace+lora``: MACE with its
LoRA stage) run at those cheap settings too (one training step): the row shows that they fit, save, load, apply and
revert on the family, and their size and time per step, not an erasure. Per site group (SD3 / FLUX: the text
stream's ``context_embedder`` and the pooled embedder; PixArt / Sana: the ``attn2`` K / V), with the group's
last-token columns: residual = max over the group's edited layers of ‖W C_E − W0 C_G‖ / ‖W0 C_E − W0 C_G‖ (0: the
erased concept reads exactly as the guide "art"; 1: unchanged), drift = max of ‖W C_P − W0 C_P‖ / ‖W0 C_P‖; "–"
where the edit changes none of the group's layers (ESD-x on SD3 trains the joint attention, not the static sites).
The methods optimise different objectives, so the residual is not every method's own target (SPEED, CURE and PURE
project rather than map; the fine-tuning methods fit a denoiser objective). "fits" means: fitted, saved,
strict-loaded, applied and reverted to the identical bytes; "layers" counts the edit's parameters.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import erasekit
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.families import identify
from erasekit.models.tiny import build_tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from method_settings import CHEAP  # noqa: E402

CONCEPT, GUIDE, PRESERVE = "Van Gogh", "art", ["Claude Monet", "Pablo Picasso"]
CLOSED = {"mace": {"train_steps": 0}, "pure": {"basis": "text"}}
LORA_STAGE = "+lora"  # mace+lora: MACE with its LoRA stage, at the cheap settings


def _state(den) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in den.state_dict().items()}


def _measure(pipe, edit) -> dict[str, tuple[float, float] | None]:
    """group -> (worst erase residual, worst preserve drift) over its edited layers; None where it edits none."""
    full = PipelineAdapter(pipe)
    out: dict[str, tuple[float, float] | None] = {}
    for group, paths in full.groups.items():
        edited = [p for p in paths if p in edit.layers]
        if not edited:
            out[group] = None
            continue
        ad = full.for_group(group)
        C_E, C_G = ad.token_columns([CONCEPT], [GUIDE], "last")
        C_P = ad.preserve_columns(PRESERVE, "last")
        res = drift = 0.0
        for p in edited:
            W0 = ad.linear(p).weight.detach().double()
            W = edit.layers[p].materialize(W0).double()
            res = max(res, float((W @ C_E - W0 @ C_G).norm() / (W0 @ C_E - W0 @ C_G).norm()))
            drift = max(drift, float((W @ C_P - W0 @ C_P).norm() / (W0 @ C_P).norm()))
        out[group] = (res, drift)
    return out


def _round_trip(pipe, edit, tmp: Path) -> bool:
    den = identify(pipe).get_denoiser(pipe)
    base = _state(den)
    edit.apply(pipe)
    want = _state(den)
    edit.revert(pipe)
    loaded = erasekit.load_edit(edit.save(tmp / "e.safetensors"), pipe)
    same = all(torch.equal(v, want[k]) for k, v in _state(den).items())
    loaded.revert(pipe)
    return same and all(torch.equal(v, base[k]) for k, v in _state(den).items())


def matrix(builds: list[str], methods: list[str]) -> list[tuple]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in builds:
            pipe = build_tiny_pipeline(b, seed=0)
            for m in methods:
                name = m.removesuffix(LORA_STAGE)
                opts = {**CHEAP.get(name, {}), **({} if m.endswith(LORA_STAGE) else CLOSED.get(name, {}))}
                t0 = time.perf_counter()
                edit = erasekit.erase(pipe, name, [CONCEPT], preserve=PRESERVE, kind="style", progress=False, **opts)
                secs = time.perf_counter() - t0
                ok = _round_trip(pipe, edit, Path(tmp))
                for group, measured in _measure(pipe, edit).items():
                    rows.append((b, m, "yes" if ok else "NO", len(edit.layers), edit.nbytes, secs, group, measured))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--builds", default="sd3,flux")
    ap.add_argument("--methods", default="uce,space,rece,speed,cure,mace,pure")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = matrix(args.builds.split(","), args.methods.split(","))
    print("| build | method | fits | layers | edit bytes | fit s | site group | erase→guide residual", end="")
    print(" | preserve drift |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|")
    for b, m, ok, n, nbytes, secs, group, measured in rows:
        res, drift = ("–", "–") if measured is None else (f"{measured[0]:.3g}", f"{measured[1]:.3g}")
        print(f"| {b} | {m} | {ok} | {n} | {nbytes:,} | {secs:.2f} | {group} | {res} | {drift} |")


if __name__ == "__main__":
    main()
