"""The dtype erasekit computes in, borrowed for a block without changing the pipeline's weights.

Half-precision matrix products on a CPU are slow or inexact, and which one depends on the CPU.
One (616 × 768) · (768 × 3072) product, one thread, measured with ``torch`` 2.13:

* AMD EPYC, AVX2 only: 39 ms in float32, 234 ms in float16, 286 ms in bfloat16;
* Intel Xeon with AVX512-BF16 and AVX512-FP16: 30 ms in float32, 27 ms in float16, 55 ms in
  bfloat16 — and a UCE edit computed in bfloat16 on a full-size SD 1.5 differs from the
  float32-load fit by 7.6 % of ‖ΔW‖ (float16 load computed in float32: 0.19 %, the size of
  float16 rounding; ``benchmarks/half_precision.py``).

A user who loads SDXL in float16 to halve its memory must pay neither 6× in time nor a different
edit. So, on a CPU, float16 and bfloat16 weights are computed in float32 (every float16 and
bfloat16 value is exact in float32); accelerators keep the dtype the model was loaded in. The
rule reads only the device type: it is deterministic and the same on every CPU. (An earlier rule
kept bfloat16 on CPUs that advertise bf16 kernels; the Xeon above advertises them and is still
2× slower and 40× less exact in bfloat16.)

The weights are borrowed, not converted: :func:`computing_in` holds a module's parameters in
the compute dtype for a block and then puts the *original tensor objects* back, so the
pipeline keeps its dtype and its bytes exactly; :func:`computing_in_layers` does the same one
leaf module at a time (forward hooks), so the extra memory is one layer, not one model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, overload

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:
    from .families import Pipeline

HALF = (torch.float16, torch.bfloat16)


def compute_dtype(device: torch.device | str, dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in for weights stored in ``dtype`` on ``device`` (module docstring)."""
    if torch.device(device).type == "cpu" and dtype in HALF:
        return torch.float32
    return dtype


def stored_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter (float32 when it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def slow_dtype_notice(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """One line for the user when erasekit will compute in another dtype than the load dtype, else None."""
    target = compute_dtype(device, dtype)
    if target == dtype:
        return None
    name, tname = str(dtype).replace("torch.", ""), str(target).replace("torch.", "")
    return (
        f"{name} is slow or inexact on a {torch.device(device).type}: erasekit computes in {tname} and keeps the "
        "weights "
        f"(and the files it writes) in {name}"
    )


def _borrow(tensors: Iterable[torch.Tensor], dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Point each floating tensor's ``.data`` at a ``dtype`` copy; return (tensor, original data, copy version)."""
    stash = []
    for t in tensors:
        if t.is_floating_point() and t.dtype != dtype:
            original = t.data
            t.data = original.to(dtype)
            stash.append((t, original, t._version))
    return stash


def _give_back(stash: list[tuple[torch.Tensor, torch.Tensor, int]]) -> None:
    written = False
    for t, original, version in reversed(stash):
        written |= t._version != version
        t.data = original
    _refuse_lost_writes(written)


def _refuse_lost_writes(written: bool) -> None:
    if written:
        # The block wrote into a borrowed copy; that write is gone with the copy. Say so rather than lose it silently.
        raise RuntimeError(
            "a weight was modified while erasekit held it in its compute dtype; the modification was "
            "discarded and the original weights restored"
        )


@contextmanager
def computing_in(modules: Iterable[nn.Module | None], dtype: torch.dtype) -> Iterator[None]:
    """Hold every floating parameter and buffer of ``modules`` in ``dtype`` for the block.

    On exit the original tensors are put back (the same storage: bit-exact, same dtype, and the
    Parameter objects keep their identity, so optimisers and hooks are unaffected). Re-entrant:
    tensors already in ``dtype`` are left alone. Memory: one ``dtype`` copy of the modules.
    """
    tensors: list[torch.Tensor] = []
    for m in modules:
        if m is not None:
            tensors.extend(m.parameters())
            tensors.extend(m.buffers())
    stash = _borrow(tensors, dtype)
    try:
        yield
    finally:
        _give_back(stash)


@overload
def _cast_inputs(x: tuple[Any, ...], dtype: torch.dtype) -> tuple[Any, ...]: ...
@overload
def _cast_inputs(x: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]: ...
def _cast_inputs(x: object, dtype: torch.dtype) -> object:
    """A forward's inputs with their floating tensors (also inside tuples, lists and dicts) in ``dtype``."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x
    if isinstance(x, (tuple, list)):
        return type(x)(_cast_inputs(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _cast_inputs(v, dtype) for k, v in x.items()}
    return x


@dataclass(frozen=True)
class _Recast:
    """A saved-for-backward view of a borrowed copy, stored as the original tensor it was cast from."""

    original: torch.Tensor
    dtype: torch.dtype
    size: torch.Size
    stride: tuple[int, ...]
    offset: int

    def tensor(self) -> torch.Tensor:
        # ``to`` keeps a dense tensor's strides, so the view's geometry applies to the fresh copy as it did to the first
        return self.original.to(self.dtype).as_strided(self.size, self.stride, self.offset)


def _storage_address(x: torch.Tensor) -> int:
    if x.layout != torch.strided or x.is_nested:
        return 0
    try:
        return x.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
        return 0


# (slot dict, name, original, borrowed copy, copy's version)
_Swap = tuple[dict[str, Any], str, torch.Tensor, torch.Tensor, int]


def _substitute(mod: nn.Module, dtype: torch.dtype) -> list[_Swap]:
    """Put a ``dtype`` copy of each of ``mod``'s own floating parameters and buffers in its slot.

    Unlike :func:`_borrow` (which repoints ``.data``), the copy is a tensor object of its own, so
    anything that keeps a reference to what the forward used (autograd's saved tensors, activation
    checkpointing's recomputed ones) keeps the copy after the original is put back.
    """
    swaps: list[_Swap] = []
    tables: tuple[dict[str, Any], ...] = (mod._parameters, mod._buffers)
    for slots in tables:
        for name, t in list(slots.items()):
            if t is not None and t.is_floating_point() and t.dtype != dtype:
                copy = t.to(dtype)  # differentiable: a trainable original would receive its gradient in its own dtype
                slots[name] = copy
                swaps.append((slots, name, t, copy, copy._version))
    return swaps


def _restore(swaps: list[_Swap]) -> None:
    written = False
    for slots, name, original, copy, version in reversed(swaps):
        written |= copy._version != version
        slots[name] = original
    _refuse_lost_writes(written)


@contextmanager
def computing_in_layers(modules: Iterable[nn.Module | None], dtype: torch.dtype) -> Iterator[None]:
    """Like :func:`computing_in`, but one leaf module at a time, for inference and for training.

    Each module that owns floating parameters borrows them in ``dtype`` just before its forward
    (its floating inputs are cast too) and gives them back right after, so the extra memory is
    the largest single layer. Outputs stay in ``dtype``; code that casts them to the model's
    ``.dtype`` (diffusers does, after the text encoders) sees the stored dtype, exactly as when
    the pipeline itself runs.

    Training through the borrowed layers (ESD, ACE, MACE fine-tune carriers on a frozen UNet):
    autograd keeps the weights a layer computed with until the backward pass, which would keep
    every layer's ``dtype`` copy alive at once: a whole float32 UNet. A saved-tensor hook stores
    such a weight as the original (stored-dtype) tensor instead and casts it again when the
    backward pass needs it, so the memory stays one layer (the recast is exact: float16 and
    bfloat16 values are exact in float32). The copy sits in the module's parameter slot as a tensor
    of its own (the Parameter object is put back after the forward), so activation checkpointing,
    which keeps references to what the recomputed forward used, also sees the copy. What trains is
    a separate float32 delta (methods/_finetune.py freezes the UNet).
    """
    handles: list[RemovableHandle] = []
    live: dict[int, list[_Swap]] = {}
    copies: dict[int, torch.Tensor] = {}  # storage address of each live borrowed copy -> the original it was cast from

    def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        swaps = _substitute(mod, dtype)
        live.setdefault(id(mod), []).extend(swaps)  # extend: a forward that raised earlier may still hold its swaps
        for _, _, original, copy, _ in swaps:
            copies[_storage_address(copy)] = original
        return _cast_inputs(args, dtype), _cast_inputs(kwargs, dtype)

    def post(mod: nn.Module, args: tuple[Any, ...], output: object) -> None:
        swaps = live.pop(id(mod), [])
        for _, _, _, copy, _ in swaps:
            copies.pop(_storage_address(copy), None)
        _restore(swaps)

    def pack(x: torch.Tensor) -> torch.Tensor | _Recast:
        original = copies.get(_storage_address(x)) if copies else None
        if original is None:
            return x
        return _Recast(original, x.dtype, x.size(), x.stride(), int(x.storage_offset()))

    def unpack(saved: torch.Tensor | _Recast) -> torch.Tensor:
        return saved.tensor() if isinstance(saved, _Recast) else saved

    lookups: list[nn.Embedding] = []
    try:
        for m in modules:
            if m is None:
                continue
            for sub in m.modules():
                owns = any(p.is_floating_point() and p.dtype != dtype for p in sub.parameters(recurse=False))
                if owns and _plain_lookup(sub):
                    sub.forward = _compact_lookup(sub, dtype)  # type: ignore[method-assign]  # deleted on exit
                    lookups.append(sub)
                elif owns:
                    handles.append(sub.register_forward_pre_hook(pre, with_kwargs=True))
                    handles.append(sub.register_forward_hook(post))
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for h in handles:
            h.remove()
        for sub in lookups:
            del sub.forward  # the class's forward again
        for swaps in live.values():  # a forward that raised never reached its post hook
            _restore(swaps)
        live.clear()
        copies.clear()


def _plain_lookup(mod: nn.Module) -> TypeGuard[nn.Embedding]:
    """An embedding table (a text encoder's input tokens) whose forward nobody wraps: :func:`_compact_lookup` serves
    it (a forward already wrapped, as accelerate's hooks do, is left to the per-layer hooks)."""
    own = [n for n, _ in mod.named_parameters(recurse=False)]
    return isinstance(mod, nn.Embedding) and own == ["weight"] and "forward" not in vars(mod)


def _compact_lookup(mod: nn.Embedding, dtype: torch.dtype) -> Any:
    """``mod``'s forward computed in ``dtype`` on the rows it reads, not on the whole table: the ids are mapped to the
    distinct ids of the call, those rows alone are cast (T5-XXL's 32128 × 4096 table is 0.5 GiB in float32, Gemma-2's
    256000 × 2304 2.2 GiB), and the module's own forward runs on the compact table. The values are the whole borrowed
    table's, bit for bit (the same rows, cast the same way; subclasses that scale after the lookup, as Gemma's, scale
    the same float32 rows), and hooks on the module see the call's own ids. padding_idx only shapes the table's
    gradient, so it is left out for the call; where the table is to receive a gradient (grad mode on and the table
    requires it), the whole table is borrowed as before."""
    forward = type(mod).forward

    def compact(input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        slots: dict[str, Any] = mod._parameters
        original, padding_idx = slots["weight"], mod.padding_idx
        if torch.is_grad_enabled() and original.requires_grad:
            slots["weight"] = original.to(dtype)  # differentiable: the gradient reaches the stored table
            try:
                return forward(mod, input_ids, *args, **kwargs)
            finally:
                slots["weight"] = original
        uniq, inverse = torch.unique(input_ids, return_inverse=True)  # (U,), input_ids.shape into uniq
        slots["weight"] = original.detach()[uniq].to(dtype)  # (U, d): the rows this call reads
        mod.padding_idx = None
        try:
            return forward(mod, inverse.reshape(input_ids.shape), *args, **kwargs)
        finally:
            slots["weight"], mod.padding_idx = original, padding_idx

    return compact


# Every text encoder a diffusers pipeline may hold (SD3 reads T5 as the third).
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")


def text_encoders(pipe: Pipeline) -> list[nn.Module]:
    """The pipeline's text encoders, in component order."""
    return [m for m in (getattr(pipe, n, None) for n in TEXT_ENCODER_NAMES) if isinstance(m, nn.Module)]


def pipeline_modules(pipe: Pipeline) -> list[nn.Module]:
    """Every torch module of a diffusers pipeline that runs during generation."""
    names = (*TEXT_ENCODER_NAMES, "unet", "transformer", "vae")
    return [m for m in (getattr(pipe, n, None) for n in names) if isinstance(m, nn.Module)]


def denoiser_of(pipe: Pipeline) -> Any:  # the family's denoiser (a diffusers model)
    """The pipeline's denoiser, as its family names it (``unet`` / ``transformer``)."""
    from .families import identify

    return identify(pipe).get_denoiser(pipe)


def pipeline_compute_dtype(pipe: Pipeline) -> tuple[torch.dtype, torch.dtype]:
    """(stored dtype, compute dtype) of ``pipe``'s denoiser on its device."""
    den = denoiser_of(pipe)
    stored = stored_dtype(den)
    return stored, compute_dtype(den.device, stored)


@contextmanager
def generating_in_compute_dtype(pipe: Pipeline) -> Iterator[torch.dtype]:
    """Run the whole pipeline in its compute dtype for the block (generation); yields that dtype.

    Generation casts the full pipeline (the UNet runs 2 × steps times per image, so a per-layer cast
    would repeat the conversion every step); it costs one compute-dtype copy while the block runs.
    """
    stored, target = pipeline_compute_dtype(pipe)
    if target == stored:
        yield stored
        return
    with computing_in(pipeline_modules(pipe), target):
        yield target
