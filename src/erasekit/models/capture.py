"""Forward hooks that record cross-attention activations during denoising (for PURE).

For every cross-attention layer the hook records the attention output *before* ``to_out``
(heads merged, shape (B, N_spatial, d_ℓ)), mean-pooled over space, at the chosen denoising
steps, keeping only the conditional half of the batch when classifier-free guidance is on
(diffusers stacks [unconditional, conditional]). Hooks are always removed, also on error.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch


class CrossAttentionCapture:
    """Context manager: ``with CrossAttentionCapture(unet, layers, cfg=True) as cap: pipe(...)``; then ``cap.stacked()``.

    Args:
        unet: the pipeline's UNet.
        layers: module paths of diffusers ``Attention`` blocks (e.g. ``...transformer_blocks.0.attn2``).
        steps: denoising step indices (0-based UNet calls) to record; ``None`` records every step.
        cfg: True when the pipeline runs with classifier-free guidance (keep the second half of the batch).
    """

    def __init__(self, unet, layers: Iterable[str], steps: Iterable[int] | None = None, cfg: bool = True):
        self.unet = unet
        self.layers = list(layers)
        self.steps = None if steps is None else set(int(s) for s in steps)
        self.cfg = cfg
        self.step = -1
        self.records: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._handles: list = []

    def _on_unet(self, module, args, kwargs):
        self.step += 1

    def _recorder(self, layer: str):
        def hook(module, args):
            if self.steps is not None and self.step not in self.steps:
                return
            x = args[0]  # (B, N, d_ℓ): attention output before to_out
            if self.cfg:
                x = x[x.shape[0] // 2 :]
            self.records[layer].append(x.detach().float().mean(dim=1).cpu())  # (B_cond, d_ℓ)

        return hook

    def __enter__(self) -> "CrossAttentionCapture":
        try:
            self._handles.append(self.unet.register_forward_pre_hook(self._on_unet, with_kwargs=True))
            for layer in self.layers:
                attn = self.unet.get_submodule(layer)
                self._handles.append(attn.to_out[0].register_forward_pre_hook(self._recorder(layer)))
        except Exception:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def stacked(self) -> dict[str, torch.Tensor]:
        """layer -> H (rows, d_ℓ): one row per (prompt, latent, recorded step)."""
        return {k: torch.cat(v) for k, v in self.records.items()}
