"""The dtype erasekit computes in, borrowed for a block without changing the pipeline's weights.

A CPU runs half-precision matrix products far slower than float32: on this project's 2-core
AMD EPYC (AVX2, no AVX512-BF16 / AMX) one (616 × 768) · (768 × 3072) product takes 39 ms in
float32, 234 ms in float16 and 286 ms in bfloat16. A user who loads SDXL in float16 to halve
its memory must not pay 6× for it. So, on a CPU:

* float16 weights are computed in float32 (every float16 value is exact in float32);
* bfloat16 weights are computed in bfloat16 where the CPU has native bf16 kernels
  (AVX512-BF16, AMX-BF16, Arm BF16), else in float32;
* accelerators keep the dtype the model was loaded in.

The rule reads the CPU's feature flags; it does not time anything, so it is deterministic.
The weights are borrowed, not converted: :func:`computing_in` holds a module's parameters in
the compute dtype for a block and then puts the *original tensor objects* back, so the
pipeline keeps its dtype and its bytes exactly; :func:`computing_in_layers` does the same one
leaf module at a time (forward hooks), so the extra memory is one layer, not one model.
"""

from __future__ import annotations

import functools
import platform
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

HALF = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bfloat16 arithmetic (x86 AVX512-BF16 / AMX-BF16, Arm BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:  # not Linux: be conservative, float32 is always fast
        return False
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def compute_dtype(device: torch.device | str, dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in for weights stored in ``dtype`` on ``device`` (module docstring)."""
    if torch.device(device).type != "cpu" or dtype not in HALF:
        return dtype
    if dtype == torch.bfloat16 and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def stored_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter (float32 when it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def slow_dtype_notice(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """One line for the user when erasekit will compute in another dtype than the load dtype, else None."""
    target = compute_dtype(device, dtype)
    if target == dtype:
        return None
    name, tname = str(dtype).replace("torch.", ""), str(target).replace("torch.", "")
    return (f"{name} is slow on this {torch.device(device).type}: erasekit computes in {tname} and keeps the weights "
            f"(and the files it writes) in {name}")


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
    if written:
        # The block wrote into a borrowed copy; that write is gone with the copy. Say so rather than lose it silently.
        raise RuntimeError("a weight was modified while erasekit held it in its compute dtype; the modification was "
                           "discarded and the original weights restored")


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


def _cast_inputs(x, dtype: torch.dtype):
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x
    if isinstance(x, (tuple, list)):
        return type(x)(_cast_inputs(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _cast_inputs(v, dtype) for k, v in x.items()}
    return x


@contextmanager
def computing_in_layers(modules: Iterable[nn.Module | None], dtype: torch.dtype) -> Iterator[None]:
    """Like :func:`computing_in`, but one leaf module at a time, for inference only.

    Each module that owns floating parameters borrows them in ``dtype`` just before its forward
    (its floating inputs are cast too) and gives them back right after, so the extra memory is
    the largest single layer. Outputs stay in ``dtype``; code that casts them to the model's
    ``.dtype`` (diffusers does, after the text encoders) sees the stored dtype, exactly as when
    the pipeline itself runs.
    """
    handles, live = [], {}

    def pre(mod, args, kwargs):
        live[id(mod)] = _borrow(list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)), dtype)
        return _cast_inputs(args, dtype), _cast_inputs(kwargs, dtype)

    def post(mod, args, output):
        _give_back(live.pop(id(mod), []))

    try:
        for m in modules:
            if m is None:
                continue
            for sub in m.modules():
                owns = any(p.is_floating_point() and p.dtype != dtype for p in sub.parameters(recurse=False))
                if owns:
                    handles.append(sub.register_forward_pre_hook(pre, with_kwargs=True))
                    handles.append(sub.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()
        for stash in live.values():  # a forward that raised never reached its post hook
            _give_back(stash)
        live.clear()


def text_encoders(pipe) -> list[nn.Module]:
    return [m for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if m is not None]


def pipeline_modules(pipe) -> list[nn.Module]:
    """Every torch module of a diffusers pipeline that runs during generation."""
    names = ("text_encoder", "text_encoder_2", "unet", "vae")
    return [m for m in (getattr(pipe, n, None) for n in names) if isinstance(m, nn.Module)]


def pipeline_compute_dtype(pipe) -> tuple[torch.dtype, torch.dtype]:
    """(stored dtype, compute dtype) of ``pipe``'s UNet on its device."""
    unet = pipe.unet
    stored = stored_dtype(unet)
    return stored, compute_dtype(unet.device, stored)


@contextmanager
def generating_in_compute_dtype(pipe) -> Iterator[torch.dtype]:
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
