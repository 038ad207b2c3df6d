"""Forward hooks on a UNet's cross-attention blocks: the one hook system of the package.

Two probes share it (hooks registered on entry, always removed on exit, also on error):

* :class:`CrossAttentionCapture` (PURE) records cross-attention activations during denoising;
* :class:`AttentionProbe` (MACE) passes each block's attention probabilities to a callback; its
  (module path, hook) pairs can also be registered by whoever must order them after other hooks
  (MACE's LoRA training registers them after its LoRA carriers, so the probe sees the edited keys).

:class:`CrossAttentionCapture`: for every cross-attention layer the hook records the attention
output *before* ``to_out`` (heads merged, shape (B, N_spatial, d_ℓ)), mean-pooled over space, at
the chosen denoising steps, keeping only the conditional half of the batch when classifier-free
guidance is on (diffusers stacks [unconditional, conditional]).

With ``paired=True`` every recorded UNet call is followed by a *twin* call on the same latents
x_t and timestep with a neutral conditioning (``cap.neutral``), whose activations go to
``twin_records``; the twin's output is discarded, so the trajectory is unchanged (PURE's paired
centring: concept activation minus neutral activation on the same x_t).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

# A forward hook as AttentionProbe hands it out: (module, positional inputs, output) -> None.
ForwardHook = Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]


class _Hooks:
    """The handles of the hooks a probe registered; removed on exit (also on error) or by :meth:`remove`."""

    _handles: list[RemovableHandle]

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class CrossAttentionCapture(_Hooks):
    """Context manager: ``with CrossAttentionCapture(unet, layers, cfg=True) as cap: pipe(...)``; then
    ``cap.stacked()``.

    Args:
        unet: the pipeline's UNet.
        layers: module paths of diffusers ``Attention`` blocks (e.g. ``...transformer_blocks.0.attn2``).
        steps: denoising step indices (0-based UNet calls) to record; ``None`` records every step.
        cfg: True when the pipeline runs with classifier-free guidance (keep the second half of the batch).
    """

    def __init__(
        self,
        unet: nn.Module,
        layers: Iterable[str],
        steps: Iterable[int] | None = None,
        cfg: bool = True,
        paired: bool = False,
    ) -> None:
        self.unet = unet
        self.layers = list(layers)
        self.steps = None if steps is None else set(int(s) for s in steps)
        self.cfg = cfg
        self.paired = paired
        self.step = -1
        self.records: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.twin_records: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.neutral: torch.Tensor | None = None  # (B_cond, L, d_in) twin conditioning of the current batch
        self._in_twin = False
        self._handles: list[RemovableHandle] = []

    def _on_unet(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._in_twin:
            self.step += 1

    def _twin(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: object) -> None:
        """Paired neutral twin: the same UNet on the same x_t and t with the neutral prompt, recorded and
        discarded (returns None, so the trajectory is exactly the one without the twin)."""
        if self._in_twin or self.neutral is None or (self.steps is not None and self.step not in self.steps):
            return None
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        half = sample.shape[0] // 2 if self.cfg else 0
        kw = {k: v for k, v in kwargs.items() if k not in ("sample", "timestep", "encoder_hidden_states")}
        # SDXL: keep the conditional half (pooled text of the forget prompt)
        if isinstance(kw.get("added_cond_kwargs"), dict):
            kw["added_cond_kwargs"] = {k: v[half:] for k, v in kw["added_cond_kwargs"].items()}
        if torch.is_tensor(t) and t.ndim and t.shape[0] == sample.shape[0]:
            t = t[half:]
        self._in_twin = True
        try:
            module(sample[half:], t, encoder_hidden_states=self.neutral.to(sample.device, sample.dtype), **kw)
        finally:
            self._in_twin = False
        return None

    def _recorder(self, layer: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if self.steps is not None and self.step not in self.steps:
                return
            x = args[0]  # (B, N, d_ℓ): attention output before to_out
            if self._in_twin:
                self.twin_records[layer].append(x.detach().float().mean(dim=1).cpu())  # (B_cond, d_ℓ), no CFG half
                return
            if self.cfg:
                x = x[x.shape[0] // 2 :]
            self.records[layer].append(x.detach().float().mean(dim=1).cpu())  # (B_cond, d_ℓ)

        return hook

    def __enter__(self) -> CrossAttentionCapture:
        try:
            self._handles.append(self.unet.register_forward_pre_hook(self._on_unet, with_kwargs=True))
            if self.paired:
                self._handles.append(self.unet.register_forward_hook(self._twin, with_kwargs=True))
            for layer in self.layers:
                to_out = self.unet.get_submodule(f"{layer}.to_out.0")  # the output Linear of the Attention
                self._handles.append(to_out.register_forward_pre_hook(self._recorder(layer)))
        except Exception:
            self.remove()
            raise
        return self

    def stacked(self) -> dict[str, torch.Tensor]:
        """layer -> H (rows, d_ℓ): one row per (prompt, latent, recorded step)."""
        return {k: torch.cat(v) for k, v in self.records.items()}

    def twin_stacked(self) -> dict[str, torch.Tensor]:
        """layer -> H_N (rows, d_ℓ) of the paired neutral twins, row-aligned with :meth:`stacked`."""
        return {k: torch.cat(v) for k, v in self.twin_records.items()}


class AttentionProbe(_Hooks):
    """Forward hooks on each cross-attention block's to_q / to_k that pass softmax(q kᵀ · scale) (b, heads, N, L)
    to ``sink``.

    ``with AttentionProbe(unet, blocks, sink): ...`` registers them; :meth:`hooks` gives the (module path,
    forward hook) pairs for a caller that registers them itself (``_finetune.attached``'s ``extra_hooks``).
    ``sink(block, P)`` is called once per block and UNet call, with P (B, heads, N_spatial, L_tokens).
    """

    def __init__(self, unet: nn.Module, blocks: list[str], sink: Callable[[str, torch.Tensor], None]) -> None:
        self.unet, self.blocks, self.sink = unet, blocks, sink
        self._q: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def hooks(self) -> list[tuple[str, ForwardHook]]:
        out: list[tuple[str, ForwardHook]] = []
        for b in self.blocks:
            # a diffusers Attention: ``heads`` and ``scale`` are plain attributes, which nn.Module's typing cannot see
            attn: Any = self.unet.get_submodule(b)

            def on_q(module: nn.Module, args: tuple[Any, ...], q: torch.Tensor, b: str = b) -> None:
                self._q[b] = q

            def on_k(module: nn.Module, args: tuple[Any, ...], k: torch.Tensor, b: str = b, attn: Any = attn) -> None:
                q = self._q.pop(b)
                B, N, _ = q.shape
                h = attn.heads
                qh = q.view(B, N, h, -1).transpose(1, 2)  # (B, h, N, dh)
                kh = k.view(B, k.shape[1], h, -1).transpose(1, 2)  # (B, h, L, dh)
                self.sink(b, torch.softmax((qh @ kh.transpose(-1, -2)) * attn.scale, dim=-1))  # (B, h, N, L)

            out += [(f"{b}.to_q", on_q), (f"{b}.to_k", on_k)]
        return out

    def __enter__(self) -> AttentionProbe:
        try:
            for path, hook in self.hooks():
                self._handles.append(self.unet.get_submodule(path).register_forward_hook(hook))
        except Exception:
            self.remove()
            raise
        return self


def attention_grid(N: int, H: int, W: int) -> tuple[int, int]:
    """(h, w) of the spatial grid behind N attention queries of a latent H × W (h · w = N, aspect H : W)."""
    h = round(math.sqrt(N * H / W))
    return h, N // h
