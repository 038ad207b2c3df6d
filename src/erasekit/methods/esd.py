"""ESD — Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023), fine-tuning baseline.

Reference code read: rohitgandikota/erasing ``esd_sd.py`` (SD 1.4), ``esd_sdxl.py`` (SDXL) and
``utils/sd_utils.py`` (``run_till_timestep``). The model is fine-tuned so that its prediction for
the concept c follows the frozen model's prediction *negatively guided* away from c:

    ε_θ(x_t, c_from)  →  ε*(x_t, c_from) − η (ε*(x_t, c) − ε*(x_t, ∅))          (ESD eq. 2, MSE)

with ε* the frozen model, ∅ the empty prompt, c_from = c unless ``erase_from`` is given, and
x_t the frozen model's own sample after a random number of denoising steps (guided sampling of
the concept prompt). Variants (which parameters train, as in ``get_esd_trainable_parameters``;
weights *and* biases of every selected Linear / Conv2d):

* ``esd-x``        every Linear inside cross-attention (to_q, to_k, to_v, to_out.0);
* ``esd-x-strict`` cross-attention to_k / to_v only;
* ``esd-u``        every Linear and Conv2d outside cross-attention (SDXL: only inside ``*block*``
                   modules and not ``*emb*``, as ``esd_sdxl.py``);
* ``esd``          picks by the concept kind, as the paper does: ESD-x for artistic styles (and
                   person names, also specific prompts), ESD-u for nudity and objects.

Reference defaults: 200 iterations, batch 1, Adam; SD 1.x lr 5e-5, η 2, sampling guidance 3;
SDXL lr 2e-4 (1e-5 for non-x variants, which ``esd_sdxl.py`` forces), η 1, sampling guidance 2;
50 sampling steps.

Deviations (documented): x_t comes from a pool of the frozen model's DDIM trajectories sampled
once before training (``pool_latents`` per prompt, every step kept, x_T included), instead of a
fresh trajectory with the pipeline's own scheduler per iteration; training runs in float32
(the reference uses bfloat16). Multiple concepts (or templates) are trained together, one
prompt drawn per iteration. The budget is ``iterations`` or ``time_budget`` seconds, whichever
ends first. The ConceptSet's guides and preserved concepts play no part (ESD has neither).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..edit import Edit, LayerEdit
from ..errors import MethodError
from ..models.adapter import weight_fingerprint
from . import _finetune as ft
from .base import Method, MethodConfig, help_field, register_method

VARIANTS = ("esd-x", "esd-x-strict", "esd-u")
# The paper's choice per concept kind: ESD-x for specific styles / names, ESD-u for global concepts.
VARIANT_FOR_KIND = {"style": "esd-x", "person": "esd-x", "object": "esd-u", "nsfw": "esd-u"}


@dataclass(frozen=True)
class FamilyDefaults:
    lr_x: float  # esd-x, esd-x-strict
    lr_u: float  # esd-u
    negative_guidance: float
    guidance: float


# esd_sd.py / esd_sdxl.py argparse defaults (SDXL forces lr 1e-5 when 'esd-x' is not in the method name).
REFERENCE = {"sd": FamilyDefaults(5e-5, 5e-5, 2.0, 3.0), "sdxl": FamilyDefaults(2e-4, 1e-5, 1.0, 2.0)}


@dataclass
class ESDConfig(MethodConfig):
    iterations: int = help_field(200, "training iterations (ESD's --iterations)")
    time_budget: float | None = help_field(
        None, "stop after this many seconds of training (whichever of the two ends first)"
    )
    lr: float | None = help_field(
        None, "Adam learning rate (default: the reference's, 5e-5 on SD; SDXL 2e-4 for esd-x, 1e-5 for esd-u)"
    )
    negative_guidance: float | None = help_field(
        None, "eta: how far past the unconditional prediction to push (default 2 on SD, 1 on SDXL)"
    )
    guidance: float | None = help_field(
        None, "classifier-free guidance of the frozen model's sampling that gives x_t (default 3 on SD, 2 on SDXL)"
    )
    pool_steps: int = help_field(50, "sampling steps of each trajectory (ESD's num_inference_steps)")
    pool_latents: int = help_field(
        4, "trajectories per training prompt in the x_t pool (the reference samples a fresh one per iteration)"
    )
    batch_size: int = help_field(1, "x_t samples per iteration")
    erase_from: tuple[str, ...] = help_field(
        (), "ESD's --erase_from: prompt(s) to train on instead of the concept, one per concept ('|'-separated)"
    )
    train_bias: bool = help_field(
        True, "train biases as well as weights (the reference trains every parameter of the selected layers)"
    )
    seed: int = help_field(0, "seed of the pool, the sampling of (prompt, x_t) and the order of training")
    gradient_checkpointing: bool = help_field(
        True,
        "recompute each UNet block during backward instead of keeping its activations: about a third more time, a "
        "fraction of the memory, the same gradients",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.erase_from, str):
            self.erase_from = tuple(p.strip() for p in self.erase_from.split("|") if p.strip())
        self.erase_from = tuple(self.erase_from)
        if self.iterations < 1 or self.pool_steps < 2 or self.pool_latents < 1 or self.batch_size < 1:
            raise MethodError("iterations, pool_latents, batch_size must be >= 1 and pool_steps >= 2")
        if self.time_budget is not None and not self.time_budget > 0:
            raise MethodError(f"time_budget must be > 0 seconds, got {self.time_budget}")
        for name in ("lr", "negative_guidance", "guidance"):
            v = getattr(self, name)
            if v is not None and not (v == v and abs(v) < float("inf")):
                raise MethodError(f"{name} must be a finite number, got {v}")
        if self.lr is not None and self.lr <= 0:
            raise MethodError(f"lr must be > 0, got {self.lr}")
        if self.guidance is not None and self.guidance < 1:
            raise MethodError(f"guidance must be >= 1, got {self.guidance}")


@dataclass
class ESDAutoConfig(ESDConfig):
    variant: str = help_field(
        "auto",
        "'auto' (by concept kind: esd-x for style/person, esd-u for object/nsfw, as the paper) or one of esd-x, "
        "esd-x-strict, esd-u",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in ("auto", *VARIANTS):
            raise MethodError(f"variant must be 'auto' or one of {', '.join(VARIANTS)}, got {self.variant!r}")


# ------------------------------------------------------------------ selection
def cross_attention_blocks(unet) -> list[str]:
    return [n for n, m in unet.named_modules() if getattr(m, "is_cross_attention", False) and hasattr(m, "to_k")]


def trainable_modules(adapter, variant: str, config: MethodConfig) -> list[str]:
    """Module paths ESD trains for ``variant`` (get_esd_trainable_parameters in esd_sd.py / esd_sdxl.py)."""
    if variant == "esd-x-strict" or config.layer_regex is not None:
        return list(adapter.paths)  # cross-attention to_k / to_v (per config.projections), or the user's regex
    blocks = cross_attention_blocks(adapter.unet)
    inside = lambda name: any(name.startswith(b + ".") for b in blocks)  # noqa: E731
    out = []
    for name, m in adapter.unet.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        if variant == "esd-x" and inside(name):
            out.append(name)
        elif variant == "esd-u" and not inside(name):
            if adapter.family == "sdxl" and ("emb" in name or "block" not in name):
                continue
            out.append(name)
    if not out:
        raise MethodError(f"{variant} found no layer to train in this UNet")
    return out


def resolve(config: ESDConfig, variant: str, family: str) -> tuple[float, float, float]:
    """(lr, η, sampling guidance): the config's values, or the reference's for this family and variant."""
    ref = REFERENCE["sdxl" if family == "sdxl" else "sd"]
    lr = config.lr if config.lr is not None else (ref.lr_u if variant == "esd-u" else ref.lr_x)
    eta = config.negative_guidance if config.negative_guidance is not None else ref.negative_guidance
    guidance = config.guidance if config.guidance is not None else ref.guidance
    return lr, eta, guidance


def esd_target(e_from: torch.Tensor, e_c: torch.Tensor, e_null: torch.Tensor, eta: float) -> torch.Tensor:
    """ε*(x_t, c_from) − η (ε*(x_t, c) − ε*(x_t, ∅))  (ESD eq. 2)."""
    return e_from - eta * (e_c - e_null)


# ---------------------------------------------------------------------- method
class _ESD(Method[ESDConfig]):
    variant: str = "esd-x"

    def uses_unet(self, config: ESDConfig) -> bool:
        return True

    def pick_variant(self, concepts, config) -> str:
        return self.variant

    def fit(self, adapter, concepts, config: ESDConfig, progress: bool = True):
        ft.require_denoiser_methods(adapter, self.name)
        t0 = time.perf_counter()
        variant = self.pick_variant(concepts, config)
        lr, eta, guidance = resolve(config, variant, adapter.family)
        paths = trainable_modules(adapter, variant, config)
        carriers = {p: ft.FullDelta(adapter.unet.get_submodule(p), train_bias=config.train_bias) for p in paths}
        train_stats = self._train(adapter, concepts, config, carriers, lr, eta, guidance, variant, progress)
        layers, prints = [], {}
        for p, c in carriers.items():  # dense entries of any rank (Linear / Conv2d weights, biases)
            m = adapter.unet.get_submodule(p)
            for param, delta in (("weight", c.dW), ("bias", c.db)):
                if delta is None:
                    continue
                base = getattr(m, param)
                le = LayerEdit.dense(p, base.detach().to(torch.float32) + delta.detach(), param=param)
                layers.append(le)
                prints[le.key] = weight_fingerprint(base)
        stats = {
            "seconds": round(time.perf_counter() - t0, 4),
            "variant": variant,
            "lr": lr,
            "negative_guidance": eta,
            "guidance": guidance,
            "trained_layers": len(paths),
            **train_stats,
        }
        return Edit(
            method=self.name,
            config=config.to_dict(),
            concepts=concepts.to_dict(),
            base=adapter.describe(),
            layers=layers,
            fingerprints=prints,
            stats=stats,
        )

    def _train(self, adapter, concepts, config: ESDConfig, carriers, lr, eta, guidance, variant, progress) -> dict:
        unet = adapter.unet
        rng = random.Random(config.seed)
        torch.manual_seed(config.seed)
        erase = [e for e, _ in concepts.erase_pairs()]
        if config.erase_from and len(config.erase_from) not in (1, len(concepts.erase)):
            raise MethodError(
                f"erase_from: give one prompt, or one per erased concept ({len(concepts.erase)}), got "
                f"{len(config.erase_from)}"
            )
        per_concept = len(erase) // len(concepts.erase)  # templates per concept
        source = (
            [config.erase_from[0 if len(config.erase_from) == 1 else i // per_concept] for i in range(len(erase))]
            if config.erase_from
            else erase
        )
        cond_c, cond_from, cond_null = (
            ft.unet_inputs(adapter, erase),
            ft.unet_inputs(adapter, source),
            ft.unet_inputs(adapter, [""]),
        )
        pool = ft.trajectory_pool(
            adapter,
            source,
            n_latents=config.pool_latents,
            steps=config.pool_steps,
            guidance=guidance,
            seed=config.seed,
            include_start=True,
            progress=progress,
            desc=f"{variant}: x_t pool",
        )
        parts = list(carriers.values())
        same = not config.erase_from

        def step_loss(step):
            idx = torch.tensor([rng.randrange(len(pool)) for _ in range(config.batch_size)])
            x, t, pid = pool.x[idx].to(adapter.device), pool.t[idx].to(adapter.device), pool.prompt[idx]
            cc, cf_ = ft.index_cond(cond_c, pid), ft.index_cond(cond_from, pid)
            cn = ft.index_cond(cond_null, torch.zeros_like(pid))
            with torch.no_grad():  # the frozen model: carriers off
                ft.set_enabled(parts, False)
                e_c, e_null = ft.eps(adapter, x, t, cc), ft.eps(adapter, x, t, cn)
                e_from = e_c if same else ft.eps(adapter, x, t, cf_)
                target = esd_target(e_from, e_c, e_null, eta)
            ft.set_enabled(parts, True)
            return F.mse_loss(ft.eps(adapter, x, t, cf_), target)

        params = [q for c in parts for q in c.parameters()]
        with ft.attached(unet, carriers, checkpointing=config.gradient_checkpointing):
            stats = ft.train(
                step_loss,
                params,
                steps=config.iterations,
                seconds=config.time_budget,
                lr=lr,
                desc=f"{variant}: fine-tuning",
                progress=progress,
                method="ESD",
            )
        return {**stats, "pool_size": len(pool)}


@register_method(
    "esd-x",
    ESDConfig,
    "ESD-x: fine-tune cross-attention towards negatively guided predictions (Gandikota et al., ICCV 2023)",
)
class ESDX(_ESD):
    variant = "esd-x"


@register_method("esd-x-strict", ESDConfig, "ESD-x-strict: ESD fine-tuning of cross-attention to_k / to_v only")
class ESDXStrict(_ESD):
    variant = "esd-x-strict"


@register_method(
    "esd",
    ESDAutoConfig,
    "ESD with the variant chosen by concept kind as in the paper (esd-x: style/person, esd-u: object/nsfw)",
)
class ESDAuto(_ESD):
    def pick_variant(self, concepts, config: ESDAutoConfig) -> str:
        return VARIANT_FOR_KIND[concepts.kind] if config.variant == "auto" else config.variant


@register_method(
    "esd-u",
    ESDConfig,
    "ESD-u: ESD fine-tuning of every Linear / Conv2d outside cross-attention (unconditional erasure)",
)
class ESDU(_ESD):
    variant = "esd-u"
