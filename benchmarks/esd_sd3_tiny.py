"""ESD-x on the tiny, randomly initialised SD3 builds (SD3.5-Medium and SD3-Medium layouts): does the erased prompt's
prediction move towards ESD's target, and how far does an unrelated prompt's prediction move with it?

    python benchmarks/esd_sd3_tiny.py

On x_t from the frozen model's own trajectories of the erased prompt c (4 Euler steps, true CFG 3, fixed seeds):

* objective = ‖v(x_t, c) − [v*(x_t, c) − η (v*(x_t, c) − v*(x_t, ∅))]‖² (ESD eq. 2 on the velocity), before → after;
* moved(p)  = ‖v(x_t, p) − v*(x_t, p)‖ / ‖v*(x_t, p)‖ for the erased prompt and for an unrelated one.

A sanity check of the training loop on SD3, not an erasure measurement: random text encoders do not tell concepts
apart, so the unrelated prompt moves as much as the erased one (no tinyworld-SD3 exists to judge images with).
Prints one markdown table.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import erasekit
from erasekit.methods import _finetune as ft
from erasekit.methods.esd import esd_target
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.tiny import build_tiny_pipeline

CONCEPT, OTHER = "Van Gogh", "a blue square"
BUDGETS = {
    "iterations=20, lr=2e-3": {"iterations": 20, "lr": 2e-3, "pool_latents": 2, "pool_steps": 3},
    "esd_sd35.py defaults (200 × lr 3e-5)": {},
}


def measure(pipe, edit: erasekit.Edit) -> tuple[float, float, float, float]:
    """(objective before, after, moved(erased), moved(other)) on fixed x_t of the erased prompt."""
    ad = PipelineAdapter(pipe)
    pool = ft.trajectory_pool(ad, [CONCEPT], n_latents=2, steps=4, guidance=3.0, seed=123, include_start=True)
    x, t, n = pool.x, pool.t, len(pool)
    cc, co, cn = (ft.index_cond(ft.unet_inputs(ad, [p]), [0] * n) for p in (CONCEPT, OTHER, ""))
    eta = float(edit.stats["negative_guidance"])
    with torch.no_grad():
        v_c, v_o, v_n = (ft.eps(ad, x, t, c) for c in (cc, co, cn))
        target = esd_target(v_c, v_c, v_n, eta)
        edit.apply(pipe)
        try:
            w_c, w_o = ft.eps(ad, x, t, cc), ft.eps(ad, x, t, co)
        finally:
            edit.revert(pipe)
    before, after = float(F.mse_loss(v_c, target)), float(F.mse_loss(w_c, target))
    return before, after, float((w_c - v_c).norm() / v_c.norm()), float((w_o - v_o).norm() / v_o.norm())


def main() -> None:
    torch.set_num_threads(1)
    print("| build | budget | steps | layers | objective before → after | moved (erased) | moved (other) | fit |")
    print("|---|---|---|---|---|---|---|---|")
    for build in ("sd3", "sd3.0"):
        pipe = build_tiny_pipeline(build, seed=0)
        for label, options in BUDGETS.items():
            t0 = time.perf_counter()
            edit = erasekit.erase(pipe, method="esd-x", concepts=[CONCEPT], progress=False, seed=0, **options)
            fit = time.perf_counter() - t0
            b, a, m_c, m_o = measure(pipe, edit)
            print(
                f"| {build} | {label} | {edit.stats['train_steps']} | {edit.stats['trained_layers']} | {b:.2e} → "
                f"{a:.2e} (×{a / b:.2f}) | {m_c:.3f} | {m_o:.3f} | {fit:.0f} s |"
            )


if __name__ == "__main__":
    main()
