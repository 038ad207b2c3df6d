"""Family × closed-form method on the tiny offline builds: fits, edit bytes, fit seconds, erase → guide residual,
preserve drift.

    python benchmarks/families_matrix.py [--builds sd3,flux] [--methods uce,space,rece,speed,cure,mace,pure]

Each method runs with its default settings (MACE without its LoRA stage, PURE on its text basis; SPACE, RECE at the
cheap test settings of tests/method_settings.py) on "Van Gogh" (style), preserving "Claude Monet" and "Pablo
Picasso". Per site group (SD3 / FLUX: the text stream's ``context_embedder`` and the pooled embedder), with the
group's last-token columns: residual = max over layers of ‖W C_E − W0 C_G‖ / ‖W0 C_E − W0 C_G‖ (0: the erased
concept reads exactly as the guide "art"; 1: unchanged), drift = max of ‖W C_P − W0 C_P‖ / ‖W0 C_P‖. The methods
optimise different objectives, so the residual is not every method's own target (SPEED, CURE and PURE project
rather than map). "fits" means: fitted, saved, strict-loaded, applied and reverted to the identical bytes.
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


def _state(den) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in den.state_dict().items()}


def _measure(pipe, edit) -> dict[str, tuple[float, float]]:
    """group -> (worst erase residual, worst preserve drift) over its layers."""
    full = PipelineAdapter(pipe)
    out = {}
    for group, paths in full.groups.items():
        ad = full.for_group(group)
        C_E, C_G = ad.token_columns([CONCEPT], [GUIDE], "last")
        C_P = ad.preserve_columns(PRESERVE, "last")
        res = drift = 0.0
        for p in paths:
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
                opts = {**CHEAP.get(m, {}), **CLOSED.get(m, {})}
                t0 = time.perf_counter()
                edit = erasekit.erase(pipe, m, [CONCEPT], preserve=PRESERVE, kind="style", progress=False, **opts)
                secs = time.perf_counter() - t0
                ok = _round_trip(pipe, edit, Path(tmp))
                for group, (res, drift) in _measure(pipe, edit).items():
                    rows.append((b, m, "yes" if ok else "NO", edit.nbytes, secs, group, res, drift))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--builds", default="sd3,flux")
    ap.add_argument("--methods", default="uce,space,rece,speed,cure,mace,pure")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = matrix(args.builds.split(","), args.methods.split(","))
    print("| build | method | fits | edit bytes | fit s | site group | erase→guide residual | preserve drift |")
    print("|---|---|---|---:|---:|---|---:|---:|")
    for b, m, ok, nbytes, secs, group, res, drift in rows:
        print(f"| {b} | {m} | {ok} | {nbytes:,} | {secs:.2f} | {group} | {res:.3g} | {drift:.3g} |")


if __name__ == "__main__":
    main()
