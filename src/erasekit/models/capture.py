"""Forward hooks on a denoiser's attention blocks: the one hook system of the package.

Probes share it (hooks registered on entry, always removed on exit, also on error):

* :class:`TrajectoryCapture` records what chosen modules read along the pipeline's own sampler, for any
  guidance layout (a family's :meth:`~erasekit.models.families.Family.sampling`); its
  :class:`CrossAttentionCapture` (PURE) records attention outputs mean-pooled over tokens, and
  :mod:`erasekit.models.joint` records joint sites' input tokens;
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
from collections.abc import Callable, Iterable, Mapping
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


def _latents(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The latents of a denoiser call: the first positional argument (a UNet's ``sample``) or the ``sample`` /
    ``hidden_states`` keyword (diffusers' transformers)."""
    x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    if not torch.is_tensor(x):
        raise ValueError("a denoiser call without latents (no sample / hidden_states tensor)")
    return x


class TrajectoryCapture(_Hooks):
    """Context manager recording what chosen modules read while the pipeline's own sampler runs.

    ``with TrajectoryCapture(denoiser, {name: module path}, cfg="batch") as cap: pipe(...)``; then
    :meth:`stacked`. Each point records its module's first input (B, N, d) at the chosen steps, for the
    conditional rows only, reduced as ``reduce`` says:

    * ``'mean'``: mean over the N tokens, one row (d,) per prompt (PURE's pooled activations);
    * ``'tokens'``: the token rows ``positions[b]`` of each prompt b of the current batch (joint-site columns).

    ``cfg`` is the pipeline's guidance layout (:data:`~erasekit.models.families.CFG_LAYOUTS`): ``'batch'`` keeps
    the second half of each call, ``'calls'`` keeps the first of every two calls (FluxPipeline's true CFG),
    ``'none'`` keeps everything (``True`` / ``False`` are ``'batch'`` / ``'none'``).

    With ``paired=True`` every recorded conditional call is followed by a *twin* call on the same inputs
    (x_t, timestep, ids, ...) with the text replaced by ``cap.neutral``: a Conditioning turned into the denoiser's
    text keyword arguments by ``text_kwargs`` (the family's), or a bare (B, L, d) text stream given as
    ``encoder_hidden_states``. Its records go to ``twin_records`` (at ``twin_positions`` for ``'tokens'``) and its
    output is discarded, so the trajectory is unchanged.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        points: Mapping[str, str],
        steps: Iterable[int] | None = None,
        cfg: str | bool = "batch",
        paired: bool = False,
        reduce: str = "mean",
        text_kwargs: Callable[[Any], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.unet = denoiser
        self.points = dict(points)
        self.steps = None if steps is None else set(int(s) for s in steps)
        self.cfg = {True: "batch", False: "none"}.get(cfg, cfg) if isinstance(cfg, bool) else cfg
        if self.cfg not in ("none", "batch", "calls") or reduce not in ("mean", "tokens"):
            raise ValueError(f"cfg layout {cfg!r} / reduce {reduce!r} unknown")
        self.per_step = 2 if self.cfg == "calls" else 1
        self.paired, self.reduce, self.text_kwargs = paired, reduce, text_kwargs
        self.calls = -1
        self.records: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.twin_records: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.neutral: Any = None  # the twin's text for the current batch (Conditioning or (B_cond, L, d) tensor)
        self.positions: list[torch.Tensor] | None = None  # per conditional row: token indices ('tokens')
        self.twin_positions: list[torch.Tensor] | None = None
        self._in_twin = False
        self._handles: list[RemovableHandle] = []

    @property
    def step(self) -> int:
        """The current denoising step (0-based; -1 before the first call)."""
        return self.calls // self.per_step if self.calls >= 0 else -1

    def _recording(self) -> bool:
        conditional = self.calls % self.per_step == 0  # 'calls': the conditional call comes first in each step
        return conditional and (self.steps is None or self.step in self.steps)

    def _on_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._in_twin:
            self.calls += 1

    def _cond_rows(self, x: Any, batch: int) -> Any:
        """The conditional rows of a call argument (the second half under 'batch'), recursing into dicts."""
        if self.cfg != "batch":
            return x
        if isinstance(x, dict):
            return {k: self._cond_rows(v, batch) for k, v in x.items()}
        if torch.is_tensor(x) and x.ndim and x.shape[0] == batch:
            return x[batch // 2 :]
        return x

    def _twin(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: object) -> None:
        """Paired twin: the same denoiser on the same x_t and t with the neutral text, recorded and discarded
        (returns None, so the trajectory is exactly the one without the twin)."""
        if self._in_twin or self.neutral is None or not self._recording():
            return None
        first = _latents(args, kwargs)
        batch = int(first.shape[0])
        a = tuple(self._cond_rows(x, batch) for x in args)
        kw = {k: self._cond_rows(v, batch) for k, v in kwargs.items()}
        ref = _latents(a, kw)
        text = self.text_kwargs(self.neutral) if self.text_kwargs else {"encoder_hidden_states": self.neutral}
        kw.update({k: v.to(ref.device, ref.dtype) for k, v in text.items()})
        self._in_twin = True
        try:
            module(*a, **kw)
        finally:
            self._in_twin = False
        return None

    def _reduce(self, x: torch.Tensor, positions: list[torch.Tensor] | None) -> torch.Tensor:
        if self.reduce == "mean":
            return x.detach().float().mean(dim=1).cpu()  # (B_cond, d)
        if positions is None or len(positions) != x.shape[0]:
            raise ValueError("reduce='tokens' needs one index tensor per conditional row (cap.positions)")
        return torch.cat([x[b, positions[b].to(x.device)] for b in range(x.shape[0])]).detach().float().cpu()

    def _recorder(self, name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if not self._recording():
                return
            x = args[0]  # (B, N, d): what the module reads
            if self._in_twin:
                self.twin_records[name].append(self._reduce(x, self.twin_positions))  # conditional rows only
                return
            if self.cfg == "batch":
                x = x[x.shape[0] // 2 :]
            self.records[name].append(self._reduce(x, self.positions))

        return hook

    def __enter__(self) -> TrajectoryCapture:
        try:
            self._handles.append(self.unet.register_forward_pre_hook(self._on_call, with_kwargs=True))
            if self.paired:
                self._handles.append(self.unet.register_forward_hook(self._twin, with_kwargs=True))
            for name, path in self.points.items():
                self._handles.append(self.unet.get_submodule(path).register_forward_pre_hook(self._recorder(name)))
        except Exception:
            self.remove()
            raise
        return self

    def stacked(self) -> dict[str, torch.Tensor]:
        """point -> H (rows, d): one row per (prompt, latent, recorded step) ('mean'), or per selected token."""
        return {k: torch.cat(v) for k, v in self.records.items()}

    def twin_stacked(self) -> dict[str, torch.Tensor]:
        """point -> H_N (rows, d) of the paired twins, row-aligned with :meth:`stacked`."""
        return {k: torch.cat(v) for k, v in self.twin_records.items()}


class CrossAttentionCapture(TrajectoryCapture):
    """PURE's capture: ``with CrossAttentionCapture(unet, layers, cfg=True) as cap: pipe(...)``; then
    ``cap.stacked()``: layer -> (rows, d_ℓ), the attention output before ``to_out`` mean-pooled over tokens.

    Args:
        unet: the pipeline's denoiser.
        layers: module paths of attention blocks with an output Linear ``to_out.0`` (a UNet's
            ``...transformer_blocks.0.attn2``; an MMDiT's joint ``...transformer_blocks.0.attn``, whose ``to_out.0``
            reads the image tokens' attention output over the joint text + image keys).
        steps: denoising step indices (0-based) to record; ``None`` records every step.
        cfg: the guidance layout (True: 'batch', False: 'none', or 'calls').
        text_kwargs: the family's :meth:`~erasekit.models.families.Family.text_kwargs` for a Conditioning twin.
    """

    def __init__(
        self,
        unet: nn.Module,
        layers: Iterable[str],
        steps: Iterable[int] | None = None,
        cfg: str | bool = True,
        paired: bool = False,
        text_kwargs: Callable[[Any], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.layers = list(layers)
        super().__init__(unet, {b: f"{b}.to_out.0" for b in self.layers}, steps, cfg, paired, "mean", text_kwargs)


def _normed_heads(attn: Any, x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
    """(B, h, M, dh) the heads of a ``to_q`` / ``to_k`` output x (B, M, h·dh), with the attention's query / key norm
    where it has one, applied where its processor applies it: across heads before the split (Sana's
    ``SanaAttnProcessor2_0``), per head after it (diffusers' ``AttnProcessor2_0``)."""
    from diffusers.models.transformers.sana_transformer import SanaAttnProcessor2_0

    across = isinstance(getattr(attn, "processor", None), SanaAttnProcessor2_0)
    if norm is not None and across:
        x = norm(x)
    B, M, _ = x.shape
    heads = x.view(B, M, attn.heads, -1).transpose(1, 2)  # (B, h, M, dh)
    return norm(heads) if norm is not None and not across else heads


class AttentionProbe(_Hooks):
    """Forward hooks on each cross-attention block's to_q / to_k that pass softmax(q kᵀ · scale + mask) (b, heads, N,
    L) to ``sink``.

    ``with AttentionProbe(unet, blocks, sink): ...`` registers them; :meth:`hooks` gives the (module path,
    forward hook) pairs for a caller that registers them itself (``_finetune.attached``'s ``extra_hooks``).
    ``sink(block, P)`` is called once per block and UNet call, with P (B, heads, N_spatial, L_tokens).

    The probabilities are the ones the processor uses: with the block's query / key norms (:func:`_normed_heads`) and,
    under ``with``, the additive text mask the block is called with (``attention_mask``: PixArt and Sana mask T5 /
    Gemma padding, (B, 1, L) of 0 / −10000; the UNets call cross-attention without one).
    """

    def __init__(self, unet: nn.Module, blocks: list[str], sink: Callable[[str, torch.Tensor], None]) -> None:
        self.unet, self.blocks, self.sink = unet, blocks, sink
        self._q: dict[str, torch.Tensor] = {}
        self._bias: dict[str, torch.Tensor | None] = {}
        self._handles: list[RemovableHandle] = []

    def hooks(self) -> list[tuple[str, ForwardHook]]:
        out: list[tuple[str, ForwardHook]] = []
        for b in self.blocks:
            # a diffusers Attention: ``heads`` and ``scale`` are plain attributes, which nn.Module's typing cannot see
            attn: Any = self.unet.get_submodule(b)

            def on_q(module: nn.Module, args: tuple[Any, ...], q: torch.Tensor, b: str = b) -> None:
                self._q[b] = q

            def on_k(module: nn.Module, args: tuple[Any, ...], k: torch.Tensor, b: str = b, attn: Any = attn) -> None:
                qh = _normed_heads(attn, self._q.pop(b), getattr(attn, "norm_q", None))  # (B, h, N, dh)
                kh = _normed_heads(attn, k, getattr(attn, "norm_k", None))  # (B, h, L, dh)
                scores = (qh @ kh.transpose(-1, -2)) * attn.scale  # (B, h, N, L)
                bias = self._bias.get(b)
                if bias is not None:  # (B, 1, L) additive mask -> (B, 1, 1, L)
                    scores = scores + bias.reshape(bias.shape[0], 1, -1, bias.shape[-1]).to(scores.dtype)
                self.sink(b, torch.softmax(scores, dim=-1))

            out += [(f"{b}.to_q", on_q), (f"{b}.to_k", on_k)]
        return out

    def __enter__(self) -> AttentionProbe:
        try:
            for b in self.blocks:

                def mask(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], b: str = b) -> None:
                    m = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
                    self._bias[b] = m if isinstance(m, torch.Tensor) else None

                self._handles.append(self.unet.get_submodule(b).register_forward_pre_hook(mask, with_kwargs=True))
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
