"""Shared machinery of the fine-tuning methods (ACE stage 2, ESD, MACE's LoRA stage).

A method that trains never writes into the pipeline: every trained quantity is a *carrier*
(a small ``nn.Module``) whose forward hook adds its contribution to a frozen Linear or Conv2d,

    y = module(x) + extra(x)          e.g. extra(x) = x ΔWᵀ (+ Δb),

so the frozen model and the trained one are the same UNet with the carriers off or on, the
pipeline's parameters are never modified, and the result is read off the carriers as an
:class:`~erasekit.edit.Edit`. This module holds what the methods share:

* :func:`unet_inputs` / :func:`index_cond` / :func:`eps` — the denoiser's conditioning exactly as the pipeline
  builds it and the prediction under it, both asked of the pipeline's family (models/families);
* :func:`trajectory_pool` — x_t (and the final latents) from the frozen model's own sampling, with the family's
  sampler (models/families/dynamics.py: DDPM ε / v on the UNets, rectified-flow velocity on SD3 / FLUX);
* carriers: :class:`Carrier` (the protocol), :class:`FullDelta` (ΔW, Δb of a Linear or Conv2d),
  :class:`LowRankDelta` (a fixed dense delta plus a trainable LoRA B A);
* :func:`attached` — hooks on, UNet frozen, everything restored on exit (also on error);
* :func:`train` — the one optimisation loop (budget in steps or seconds, tqdm, NaN check).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import MethodError
from ..models.families import Conditioning


# ------------------------------------------------------------------ conditioning
def require_denoiser_methods(adapter, method: str) -> None:
    """Refuse a fine-tuning method (ESD, ACE, MACE's LoRA stage) on a family where training through the denoiser is
    not validated (the family's ``fine_tunes_denoiser``). PURE's activation capture has its own check
    (``pure.check_activation_sites``)."""
    from ..models.families import families

    fam = adapter.family_spec
    if not fam.fine_tunes_denoiser:
        ok = ", ".join(n for n, f in families().items() if f.fine_tunes_denoiser)
        raise MethodError(
            f"{method} fine-tunes through the denoiser, which erasekit supports on {ok} only; {fam.name} "
            f"({fam.description}) is not one of them yet. Use a closed-form method (uce, space, rece, speed, cure) "
            "on this model"
        )


@torch.no_grad()
def unet_inputs(adapter, prompts: list[str]) -> Conditioning:
    """The denoiser's conditioning of ``prompts`` exactly as the pipeline builds it (SDXL: pooled + time ids)."""
    return adapter.conditioning(prompts)


def index_cond(cond: Conditioning, idx) -> Conditioning:
    return cond.index(idx)


def eps(adapter, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    """The denoiser's prediction at (x_t, t) under ``cond`` (the family's ``denoise``), in the family's
    parameterisation (``adapter.family_spec.dynamics(pipe).prediction``): ε on the DDPM UNets, the velocity ε − x_0
    on rectified flow. The objectives built on it (ESD, ACE) are linear in the prediction, so they read the same in
    either (x_0 = x_t − σ v shows a velocity target is an ε target up to the per-timestep factor of the loss)."""
    return adapter.denoise(x, t, cond)


# ------------------------------------------------------------ trajectory pool
@dataclass
class Pool:
    """x_t samples from the frozen model's own trajectories (the family's sampler)."""

    x: torch.Tensor  # (m, c, h, w): denoiser inputs along the trajectories
    t: torch.Tensor  # (m,) their timesteps
    prompt: torch.Tensor  # (m,) index of the prompt each came from
    x0: torch.Tensor  # (n, c, h, w): the final latents of the n trajectories
    x0_prompt: torch.Tensor  # (n,)

    def __len__(self) -> int:
        return self.x.shape[0]


@torch.no_grad()
def trajectory_pool(
    adapter,
    prompts: list[str],
    *,
    n_latents: int,
    steps: int,
    guidance: float,
    seed: int,
    include_start: bool = False,
    progress: bool = False,
    desc: str = "trajectories",
) -> Pool:
    """Sample ``n_latents`` trajectories per prompt with the frozen model and the family's sampler
    (:meth:`~erasekit.models.families.base.Family.dynamics`: DDIM through the pipeline on the UNets, Euler on the
    rectified-flow σ schedule on SD3 / FLUX) and keep every denoiser input.

    ``include_start`` also keeps the initial noise x_T at the first timestep (ESD's ``run_till_timestep = 0``).
    Seeds are ``seed + 1000·prompt + j``.
    """
    fam, pipe = adapter.family_spec, adapter.pipe
    dyn = fam.dynamics(pipe)
    xs, ts, ids, finals, final_ids = [], [], [], [], []
    for pi, prompt in enumerate(tqdm(prompts, desc=desc, unit="prompt", disable=not progress, leave=False)):
        tr = dyn.trajectory(fam, pipe, prompt, n=n_latents, steps=steps, guidance=guidance, seed=seed + 1000 * pi)
        for i, x in enumerate(tr.xs):
            if i == 0 and not include_start:
                continue
            xs.append(x)
            ts.append(tr.ts[i].expand(n_latents).clone())
            ids.append(torch.full((n_latents,), pi))
        finals.append(tr.final)
        final_ids.append(torch.full((n_latents,), pi))
    return Pool(torch.cat(xs), torch.cat(ts), torch.cat(ids), torch.cat(finals), torch.cat(final_ids))


# --------------------------------------------------------------------- carriers
class Carrier(nn.Module):
    """Adds ``extra(module, x)`` to a frozen module's output through a forward hook while ``enabled``."""

    def __init__(self):
        super().__init__()
        self.enabled = True

    def extra(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def hook(self, module, args, out):
        if not self.enabled:
            if torch.is_grad_enabled():
                # a gradient-checkpointed block recomputes its forward during backward: with the carrier off it would
                # silently differentiate another function than the one that made the loss
                raise MethodError(
                    "a carrier is switched off in a forward pass that records gradients; switch carriers off "
                    "only under torch.no_grad() and on again before the loss is built"
                )
            return out
        return out + self.extra(module, args[0])


class FullDelta(Carrier):
    """ΔW (same shape as the weight) and Δb of a Linear or Conv2d, zero at start: the module computes with W0 + ΔW, b0 +
    Δb.

    Adam's update does not depend on the parameter's value, so training Δ from zero takes exactly the
    steps that training the weight itself would (ESD trains the weights in place).
    """

    def __init__(self, module: nn.Module, train_bias: bool = True):
        super().__init__()
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise MethodError(f"can only fine-tune Linear and Conv2d layers, got {type(module).__name__}")
        w = module.weight
        self.dW = nn.Parameter(
            torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        )  # (d_out, d_in) or (c_out, c_in/g, kh, kw)
        has_bias = train_bias and module.bias is not None
        self.db = (
            nn.Parameter(torch.zeros(module.bias.shape, dtype=torch.float32, device=w.device))
            if has_bias and module.bias is not None
            else None
        )

    def extra(self, module, x):
        dW = self.dW.to(x.dtype)
        db = None if self.db is None else self.db.to(x.dtype)
        if isinstance(module, nn.Linear):
            return F.linear(x, dW, db)
        return module._conv_forward(x, dW, db)  # same stride / padding / dilation / groups as the module


class LowRankDelta(Carrier):
    """A fixed dense delta D (d_out, d_in) plus a trainable LoRA B A (d_out, r)(r, d_in) on a Linear.

    Initialised like diffusers' ``LoRALinearLayer`` (A ~ N(0, 1/r²), B = 0), so it starts at D.
    """

    def __init__(
        self, module: nn.Linear, rank: int, fixed: torch.Tensor | None = None, generator: torch.Generator | None = None
    ):
        super().__init__()
        d_out, d_in = module.weight.shape
        dev = module.weight.device
        self.register_buffer("D", None if fixed is None else fixed.to(dev, torch.float32).contiguous())
        A = torch.randn(rank, d_in, generator=generator, dtype=torch.float32) / rank
        self.A = nn.Parameter(A.to(dev))  # (r, d_in)
        self.B = nn.Parameter(torch.zeros(d_out, rank, dtype=torch.float32, device=dev))  # (d_out, r)

    def lora(self) -> torch.Tensor:
        return self.B @ self.A  # (d_out, d_in)

    def extra(self, module, x):
        out = F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype))
        return out if self.D is None else out + F.linear(x, self.D.to(x.dtype))


def set_enabled(carriers: Iterable[Carrier], flag: bool) -> None:
    for c in carriers:
        c.enabled = flag


@contextlib.contextmanager
def attached(
    unet, carriers: Mapping[str, Carrier], extra_hooks: Iterable[tuple[str, Callable]] = (), checkpointing: bool = False
) -> Iterator[None]:
    """Hook every carrier onto ``unet.get_submodule(path)`` with the UNet frozen; restore everything on exit.

    ``extra_hooks``: further (module path, forward hook) pairs registered *after* the carriers, so they
    see the carried output (MACE reads the edited keys this way).
    ``checkpointing``: diffusers' gradient checkpointing for the block, so backward recomputes each UNet
    block instead of keeping its activations (about a third more time, a fraction of the memory; the
    gradients are the same). Hooks then run again during backward, so it is refused with ``extra_hooks``,
    which record what they see.
    """
    if checkpointing and tuple(extra_hooks):
        raise MethodError(
            "gradient checkpointing re-runs forward hooks during backward; it cannot be combined with extra_hooks"
        )
    requires = [p.requires_grad for p in unet.parameters()]
    checkpointed = bool(getattr(unet, "is_gradient_checkpointing", False))
    handles = []
    try:
        unet.requires_grad_(False)
        if checkpointing and not checkpointed and getattr(unet, "_supports_gradient_checkpointing", False):
            unet.enable_gradient_checkpointing()
        for path, c in carriers.items():
            handles.append(unet.get_submodule(path).register_forward_hook(c.hook))
        for path, h in extra_hooks:
            handles.append(unet.get_submodule(path).register_forward_hook(h))
        yield
    finally:
        for h in handles:
            h.remove()
        if not checkpointed and bool(getattr(unet, "is_gradient_checkpointing", False)):
            unet.disable_gradient_checkpointing()
        for p, r in zip(unet.parameters(), requires):
            p.requires_grad_(r)


# ------------------------------------------------------------------------- loop
def train(
    step_loss: Callable[[int], torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    steps: int,
    seconds: float | None,
    lr: float,
    desc: str,
    progress: bool,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
    method: str = "fine-tuning",
) -> dict:
    """Minimise ``step_loss(step)`` over ``params`` for ``steps`` steps or ``seconds`` seconds, whichever ends first.

    ``optimizer``: 'adam' (ESD, ACE) or 'adamw' (MACE: betas 0.9/0.999, eps 1e-8, ``weight_decay``).
    Returns the statistics every fine-tuning method reports.
    """
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    else:
        raise MethodError(f"unknown optimizer {optimizer!r}")
    losses: list[float] = []
    t_start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False)
    for step in bar:
        loss = step_loss(step)
        if not math.isfinite(loss.item()):
            raise MethodError(
                f"{method} diverged at step {step} (loss is NaN/Inf); lower lr or load the model in float32"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if seconds is not None and time.perf_counter() - t_start > seconds:
            break
    return {
        "train_steps": len(losses),
        "train_seconds": round(time.perf_counter() - t_start, 3),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
    }
