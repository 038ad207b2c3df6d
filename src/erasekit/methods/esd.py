"""ESD — Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023), fine-tuning baseline.

Reference code read: rohitgandikota/erasing ``esd_sd.py`` (SD 1.4), ``esd_sdxl.py`` (SDXL),
``utils/sd_utils.py`` (``run_till_timestep``), its FLUX port ``esd_flux.py`` (read in the forks
milosz7/erasing and stanulet27/erasing) and its SD3.5 port ``esd_sd35.py``. The model is fine-tuned so that
its prediction for the concept c follows the frozen model's prediction *negatively guided* away from c:

    ε_θ(x_t, c_from)  →  ε*(x_t, c_from) − η (ε*(x_t, c) − ε*(x_t, ∅))          (ESD eq. 2, MSE)

with ε* the frozen model, ∅ the empty prompt, c_from = c unless ``erase_from`` is given, and
x_t the frozen model's own sample after a random number of denoising steps (guided sampling of
the concept prompt, with the family's sampler: models/families/dynamics.py).

**Flow matching.** The target is linear in the prediction, so it carries over unchanged to a model
that predicts the velocity v = ε − x_0 (SD3, FLUX): v_θ(x_t, c_from) → v*(x_t, c_from) − η (v*(x_t, c)
− v*(x_t, ∅)); at fixed x_t, ε = x_t + (1 − σ) v is affine in v, so the velocity target is the ε target
of the same negatively guided model, its loss scaled by (1 − σ)². ``esd_flux.py`` does the same: the
three frozen transformer outputs combined as above, MSE against the trained one, on x_t from a partial
FluxPipeline run (28 steps, embedded guidance 3.5).

Variants (which parameters train, as in ``get_esd_trainable_parameters``; weights *and* biases of
every selected Linear / Conv2d), declared by the family (``Family.fine_tune_layers``):

* ``esd-x``        every Linear inside the attention where text meets image: cross-attention on the
                   UNets; on FLUX (no cross-attention) every joint / single-stream attention module, as
                   ``esd_flux.py`` selects ``attn``; on SD3 every block's joint ``attn``, never SD3.5-M's
                   image-only ``attn2``, as ``esd_sd35.py`` selects ``.attn.``;
* ``esd-x-strict`` the family's edit sites (cross-attention to_k / to_v; SD3 / FLUX: the text and
                   pooled embedders, the projections that read the prompt alone);
* ``esd-u``        every Linear and Conv2d outside that attention (SDXL: only inside the down / mid /
                   up blocks and not a resnet's timestep projection, as ``esd_sdxl.py``'s name filter);
* ``esd``          picks by the concept kind, as the paper does: ESD-x for artistic styles (and
                   person names, also specific prompts), ESD-u for nudity and objects.

Reference defaults (``REFERENCE``, per family): 200 iterations, batch 1, Adam; SD 1.x lr 5e-5, η 2,
sampling guidance 3; SDXL lr 2e-4 (1e-5 for non-x variants, which ``esd_sdxl.py`` forces), η 1,
sampling guidance 2; FLUX lr 1e-4 (1e-5 non-x), η 2, guidance 3.5; SD3 lr 3e-5, η 2, guidance 7.5;
50 sampling steps (``esd_flux.py`` and ``esd_sd35.py`` sample 28).

Deviations (documented): x_t comes from a pool of the frozen model's trajectories sampled once
before training (``pool_latents`` per prompt, every step kept, x_T included), instead of a fresh
trajectory per iteration; training runs in float32 (the reference uses bfloat16); on FLUX.1-dev the
trained and frozen predictions use the conditioning's embedded guidance (the pipeline's default,
3.5) where ``esd_flux.py`` passes 1; on SD3 the frozen unconditional prediction reads the empty prompt's pooled
vector where ``esd_sd35.py`` passes the concept's. Multiple concepts (or templates) are trained together, one
prompt drawn per iteration. The budget is ``iterations`` or ``time_budget`` seconds, whichever
ends first. The ConceptSet's guides and preserved concepts play no part (ESD has neither). On SD3 /
FLUX the method fits every site group at once (it trains the denoiser, not a group's columns).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


# The reference scripts' argparse defaults, per family name (a family without its own script takes SD's):
# sd: esd_sd.py; sdxl: esd_sdxl.py (forces lr 1e-5 when 'esd-x' is not in the method name); flux: esd_flux.py
# (lr 1e-4, the same 1e-5 rule, η 2, sampling guidance 3.5 as FLUX.1-dev embeds it; on a true-CFG FLUX it is the
# true-CFG scale); sd3: esd_sd35.py (lr 3e-5 for every variant, η 2, true-CFG sampling guidance 7.5).
REFERENCE = {
    "sd": FamilyDefaults(5e-5, 5e-5, 2.0, 3.0),
    "sdxl": FamilyDefaults(2e-4, 1e-5, 1.0, 2.0),
    "flux": FamilyDefaults(1e-4, 1e-5, 2.0, 3.5),
    "sd3": FamilyDefaults(3e-5, 3e-5, 2.0, 7.5),
}


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
def trainable_modules(adapter, variant: str, config: MethodConfig) -> list[str]:
    """Module paths ESD trains for ``variant`` (get_esd_trainable_parameters in esd_sd.py / esd_sdxl.py), as the
    family declares them (:meth:`~erasekit.models.families.base.Family.fine_tune_layers`)."""
    if variant == "esd-x-strict" or config.layer_regex is not None:
        return list(adapter.paths)  # the family's edit sites (per config.projections), or the user's regex
    part = "attention" if variant == "esd-x" else "rest"
    out = adapter.family_spec.fine_tune_layers(adapter.pipe, part)
    if not out:
        raise MethodError(f"{variant} found no layer to train in this {adapter.family_spec.denoiser}")
    return out


def resolve(config: ESDConfig, variant: str, family: str) -> tuple[float, float, float]:
    """(lr, η, sampling guidance): the config's values, or the reference's for this family and variant."""
    ref = REFERENCE.get(family, REFERENCE["sd"])
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

    def fits_groups_together(self, config: ESDConfig) -> bool:
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
            adapter.family_spec.encode_unconditional(adapter.pipe),  # "": the pipeline's CFG branch (Sana's)
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
