"""PURE — projection-based erasure from cross-attention activations (Moon et al., arXiv 2605.25765).

1. Run a short denoising trajectory for every forget anchor and retain anchor prompt and
   record, per cross-attention layer ℓ, the attention output before ``to_out`` mean-pooled
   over space (conditional branch only): rows of H_F^ℓ, H_R^ℓ.
2. Keep the top right-singular vectors of each up to a cumulative-energy threshold:
   orthonormal V_F^ℓ, V_R^ℓ; P = V Vᵀ.
3. E^ℓ = I − P_F^ℓ (I − P_R^ℓ), left-multiplied into W_K and W_V (the basis lives in the
   layer's output space). W − W0 = −V_F [V_Fᵀ (I − P_R) W0] has rank ≤ rank(V_F) and is stored
   as a low-rank delta.

Reconstruction choices (the paper is not public; DESIGN §5, measured in
``benchmarks/pure_ablation.py``):

* ``centre``: raw mean-pooled outputs share a dominant common component (the start token
  takes most of the attention mass), so an uncentred SVD spends the forget energy on a
  direction the retain basis also holds and E removes almost nothing. ``'retain'`` subtracts
  the retain mean μ_R; ``'paired'`` subtracts, row by row, the activation of a neutral twin
  prompt (the concept's guide) run on the same x_t and step (hooks that leave the trajectory
  unchanged). Both then project the common direction μ̂ out of every basis, so E μ̂ = μ̂.
* ``forget_rule``: ``'joint'`` (SVD of the forget rows) or ``'residual'`` (SVD of the forget
  rows after removing the retain basis, so the energy threshold counts only what E can remove).
* ``record_steps``: all, the early half, or the late half of each trajectory.
* ``k_basis``: attention outputs live in V's output space, so E is exact for W_V; for W_K it is a
  heuristic (``'same'``, as described) or skipped (``'none'``).
* one forget basis per erased concept, joined by an orthonormal union, so one concept's
  energy cannot crowd out another's.

``basis='text'`` builds the same projector from token embeddings instead (CURE-style,
right-multiplied: W ← W (I − P_F (I − P_R)) with bases in the text-embedding space), so the
paper's central comparison — activation basis vs text basis — runs on the same concepts.

On SD3 / FLUX (joint attention; ``sites='joint'``):

* the paper's part: anchor trajectories of the pipeline's own sampler (n_lat latents × T steps per anchor, every
  step recorded, conditional branch only), an activation mean-pooled over tokens per (anchor, latent, step), SVD
  bases up to τ_F / τ_R, E = I − P_F(I − P_R) left-multiplied into the weights whose outputs live in that space;
* ours: which activation and which weights. The project page stored here (saemi410/PURE ``index.html`` at b574d60)
  describes the UNet only, with no section on other architectures, so the DiT choice is a reconstruction. A joint
  block has no cross-attention: its image queries attend over [text keys; image keys]. We record the image tokens'
  attention output before ``to_out`` (heads merged, the text-conditioned output the image stream receives) and
  left-multiply E into the block's ``add_k_proj`` / ``add_v_proj`` (the text keys and values, which share that
  inner space; FLUX's double-stream blocks, SD3's joint blocks). The recorded output also holds the image values'
  share, which E does not touch, and the text stream still reaches the image through FLUX's single-stream blocks
  (``to_k`` / ``to_v`` shared with image tokens: not edited). E acts on the weight only: ``add_v_proj``'s bias is
  the same for every prompt and is kept. Guidance follows the family's layout (FluxPipeline's true CFG: two calls
  per step, the first conditional; dev: the embedded scale), so ``guidance`` means ``true_cfg_scale`` there.
  ``benchmarks/pure_tau_sweep.py`` measures it on tinyworld-flux (docs/results.md).

Presets (``preset=``):

* ``erasekit`` (default) — the options as given (and erasekit's per-model defaults, e.g. the paired centring on
  tinyworld; erasekit/defaults.py);
* ``paper`` — the project page's procedure (saemi410/PURE ``index.html``, §03) and nothing else, whatever the other
  options say (:data:`PAPER_PRESET`): uncentred activations, one joint SVD of the forget rows, every step of every
  trajectory, E on W_K and W_V; forget anchors = each erased concept in six templates (the user's template list when
  the ConceptSet has one, else the UCE reference list of its kind, six entries); retain anchors = the preserve
  concepts (the paper: nine in-category concepts; on tinyworld the other values of the same attribute,
  ``evaluate.protocols.tinyworld.in_category``) in the same six templates — 54 anchors for nine; none given, none
  used (the many-concept runs). ``forget_prompts`` / ``retain_prompts`` still replace the anchors. The page names
  the thresholds τ_F / τ_R, n_lat and T without giving numbers: τ_F 0.9 and τ_R 0.99 are defaults.PUBLISHED's,
  n_lat and T stay as given (``n_latents``, ``steps``), so each basis has n_anchors · n_lat · T rows per layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import linalg
from ..edit import LayerEdit
from ..errors import MethodError
from ..models.capture import CrossAttentionCapture
from ..models.families import Conditioning
from . import _closed_form as cf
from .base import Method, MethodConfig, help_field, register_method


# ------------------------------------------------------------------ maths
def energy_basis(H: torch.Tensor, energy: float, max_rank: int | None = None) -> torch.Tensor:
    """Orthonormal V (d, r): top right-singular vectors of H (rows, d) keeping ``energy`` of Σσ²."""
    if H.numel() == 0:
        return H.new_zeros(H.shape[1], 0)
    _, S, Vh = torch.linalg.svd(H.double(), full_matrices=False)  # H = U diag(S) Vh
    share = (S**2).cumsum(0) / (S**2).sum().clamp_min(1e-300)  # cumulative energy
    r = int((share < energy - 1e-12).sum()) + 1  # smallest r with share[r-1] ≥ energy
    r = min(r, int((S > S[0] * 1e-10).sum()), max_rank or r)  # drop numerically null directions
    return Vh[:r].T.contiguous()  # (d, r)


def orthonormal_union(bases: list[torch.Tensor], tol: float = 1e-8) -> torch.Tensor:
    """Orthonormal basis (d, r) of the span of the columns of every V in ``bases`` (each (d, r_i))."""
    X = torch.cat(bases, dim=1)  # (d, Σ r_i)
    if X.shape[1] == 0:
        return X
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    return U[:, S > tol * max(float(S[0]), 1e-300)].contiguous()


def centre_rows(X: torch.Tensor, mu: torch.Tensor | None) -> torch.Tensor:
    """X (I − μ̂μ̂ᵀ): rows of X (n, d) with the common direction μ̂ = μ/‖μ‖ (d,) removed."""
    if mu is None or float(mu.norm()) == 0:
        return X
    u = (mu / mu.norm()).to(X.dtype)
    return X - (X @ u).unsqueeze(1) * u  # (n, d)


def projector_E(V_F: torch.Tensor, V_R: torch.Tensor) -> torch.Tensor:
    """E = I − P_F (I − P_R), (d, d): removes forget directions except what the retain basis covers."""
    d = V_F.shape[0]
    P_F, P_R = V_F @ V_F.T, V_R @ V_R.T  # (d, d)
    return torch.eye(d, dtype=V_F.dtype) - P_F @ (torch.eye(d, dtype=V_F.dtype) - P_R)


def left_delta(W0: torch.Tensor, V_F: torch.Tensor, V_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with E W0 − W0 = −P_F (I − P_R) W0 = B A;  B (d_out, r), A (r, d_in)."""
    W0 = W0.double()
    A = V_F.T @ W0 - (V_F.T @ V_R) @ (V_R.T @ W0)  # V_Fᵀ (I − P_R) W0
    return -V_F, A


def right_delta(W0: torch.Tensor, V_F: torch.Tensor, V_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with W0 E − W0 = −W0 P_F (I − P_R) = B A;  B (d_out, r), A (r, d_in) (hard projectors;
    CURE uses the same maths with spectral weights, ``linalg.projector_delta_right``)."""
    return linalg.projector_delta_right(W0, V_F, V_R)


# ----------------------------------------------------------------- config
# preset='paper': the options the project page's procedure fixes (module docstring).
PAPER_PRESET = {
    "basis": "activation",
    "centre": "none",
    "forget_rule": "joint",
    "record_steps": "all",
    "k_basis": "same",
    "per_concept": False,
    "forget_energy": 0.9,
    "retain_energy": 0.99,
}
PAPER_TEMPLATES = 6  # forget (and retain) anchors per concept


@dataclass
class PUREConfig(MethodConfig):
    JOINT_SITES = True  # token columns: captured along the sampler at joint sites
    basis: str = help_field(
        "activation",
        "'activation' (PURE: cross-attention outputs, left-multiplied) or 'text' (token embeddings, right-multiplied, "
        "CURE-style)",
    )
    forget_energy: float = help_field(0.9, "cumulative energy kept in the forget basis V_F")
    retain_energy: float = help_field(0.99, "cumulative energy kept in the retain basis V_R")
    max_rank: int | None = help_field(None, "cap on the rank of V_F (and V_R)")
    n_latents: int = help_field(2, "random starting latents per anchor prompt (activation basis)")
    steps: int = help_field(5, "denoising steps of each anchor trajectory; every step is recorded")
    guidance: float = help_field(
        7.5, "classifier-free guidance of the anchor trajectories (conditional branch recorded)"
    )
    height: int | None = help_field(None, "anchor image height (pipeline default if omitted)")
    width: int | None = help_field(None, "anchor image width (pipeline default if omitted)")
    seed: int = help_field(0, "seed of the anchor latents")
    forget_prompts: tuple[str, ...] = help_field((), "forget anchor prompts (default: the ConceptSet's erase prompts)")
    retain_prompts: tuple[str, ...] = help_field(
        (), "retain anchor prompts (default: the ConceptSet's preserve prompts)"
    )
    centre: str = help_field(
        "none",
        "activation centring: 'none' (as published), 'retain' (subtract the retain mean) or 'paired' (subtract a "
        "neutral twin prompt's activation on the same x_t and step)",
    )
    forget_rule: str = help_field(
        "joint",
        "'joint': SVD of the (centred) forget rows; 'residual': of the forget rows with the retain basis removed first",
    )
    record_steps: str = help_field(
        "all", "trajectory steps recorded: 'all', 'early' (first half) or 'late' (second half)"
    )
    k_basis: str = help_field(
        "same",
        "'same': E also left-multiplies W_K; 'none': only W_V is edited (attention outputs live in V's output space)",
    )
    per_concept: bool = help_field(True, "one forget basis per erased concept, joined as an orthonormal union")
    preset: str = help_field(
        "erasekit",
        "'erasekit': the options as given; 'paper': the project page's procedure (uncentred, joint SVD, all steps, "
        "six template anchors, in-category retain anchors), overriding the options it fixes",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in ("erasekit", "paper"):
            raise MethodError(f"preset must be 'erasekit' or 'paper', got {self.preset!r}")
        if self.preset == "paper":
            for name, value in PAPER_PRESET.items():
                setattr(self, name, value)
        if self.basis not in ("activation", "text"):
            raise MethodError(f"basis must be 'activation' or 'text', got {self.basis!r}")
        for name, allowed in (
            ("centre", ("none", "retain", "paired")),
            ("forget_rule", ("joint", "residual")),
            ("record_steps", ("all", "early", "late")),
            ("k_basis", ("same", "none")),
        ):
            if getattr(self, name) not in allowed:
                raise MethodError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("forget_energy", "retain_energy"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise MethodError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.n_latents < 1 or self.steps < 1 or (self.max_rank is not None and self.max_rank < 1):
            raise MethodError("n_latents, steps and max_rank must be >= 1")
        self.forget_prompts = _prompt_tuple(self.forget_prompts)
        self.retain_prompts = _prompt_tuple(self.retain_prompts)


def _prompt_tuple(x) -> tuple[str, ...]:
    if isinstance(x, str):  # CLI passes '|'-separated prompts
        return tuple(p.strip() for p in x.split("|") if p.strip())
    return tuple(x)


# --------------------------------------------------------------- activations
def recorded_steps(rule: str, steps: int) -> list[int] | None:
    """UNet-call indices recorded for ``rule`` ('all' → None, 'early' / 'late' → that half, at least one)."""
    if rule == "all":
        return None
    half = max(1, (steps + 1) // 2)
    return list(range(half)) if rule == "early" else list(range(steps - half, steps))


def capture_blocks(adapter) -> list[str]:
    """The attention blocks PURE records and edits: those of the adapter's sites, or on a joint group every joint
    block of the pipeline (one capture run serves each group's fit; ``fit_by_group`` fits them one by one)."""
    if adapter.reads_joint_stream:
        return list(adapter.joint_groups())
    return list(adapter.attention_layers())


@torch.no_grad()
def anchor_activations(
    adapter, prompts: list[str], config: PUREConfig, desc: str, progress: bool, neutral: list[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(H, H_N): attention block -> (len(prompts)·n_latents·recorded steps, d_ℓ) along short trajectories of the
    pipeline's own sampler (the family's guidance layout: :meth:`~erasekit.models.families.Family.sampling`).

    With ``neutral`` (one per prompt), H_N holds the paired twin's activations (same x_t and step,
    neutral prompt), row-aligned with H; otherwise H_N is empty. Cached on the adapter (every joint group's fit
    reads the same runs).
    """
    if not prompts:
        return {}, {}
    blocks = capture_blocks(adapter)
    key = (
        "pure", tuple(prompts), tuple(neutral or ()), tuple(blocks), config.n_latents, config.steps, config.guidance,
        config.height, config.width, config.seed, config.record_steps,
    )  # fmt: skip
    if key in adapter._joint_cache:
        cached: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] = adapter._joint_cache[key]
        return cached
    pipe, fam = adapter.pipe, adapter.family_spec
    plan = fam.sampling(pipe, config.guidance)
    jobs = [(k, config.seed + j) for k in range(len(prompts)) for j in range(config.n_latents)]
    size = {k: v for k, v in dict(height=config.height, width=config.width).items() if v is not None}
    batch = 8
    twins = None
    # a joint block's twin call carries every text input (stream and pooled) of the neutral prompt; PixArt's and
    # Sana's carries the neutral prompt's text mask with its stream (the family's text_kwargs)
    whole = adapter.reads_joint_stream or fam.masked_text
    if neutral:
        twins = adapter.conditioning(neutral) if whole else adapter.encode(neutral).embeds
    saved_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)  # one bar over anchors instead of one per trajectory
    try:
        with CrossAttentionCapture(
            adapter.denoiser,
            blocks,
            steps=recorded_steps(config.record_steps, config.steps),
            cfg=plan.cfg,
            paired=twins is not None,
            text_kwargs=fam.text_kwargs if whole else None,
        ) as cap:
            for i in tqdm(range(0, len(jobs), batch), desc=desc, unit="batch", disable=not progress, leave=False):
                chunk = jobs[i : i + batch]
                gens = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
                rows = [k for k, _ in chunk]
                if twins is not None:
                    cap.neutral = twins.index(rows) if isinstance(twins, Conditioning) else twins[rows]
                pipe(
                    prompt=[prompts[k] for k in rows],
                    generator=gens,
                    num_inference_steps=config.steps,
                    output_type="latent",
                    **plan.kwargs,
                    **size,
                )
    finally:
        pipe.set_progress_bar_config(**saved_bar)
    out = cap.stacked(), cap.twin_stacked()
    adapter._joint_cache[key] = out
    return out


def forget_groups(concepts, config) -> list[tuple[list[str], list[str]]]:
    """[(forget prompts, their neutral twins)], one group per erased concept (or one for all)."""
    if config.forget_prompts:
        neutral = [""] * len(config.forget_prompts)
        return [(list(config.forget_prompts), neutral)]
    pairs = concepts.erase_pairs()
    per = len(concepts.template_list)
    groups = [pairs[i : i + per] for i in range(0, len(pairs), per)]
    if not config.per_concept:
        groups = [pairs]
    return [([e for e, _ in g], [n for _, n in g]) for g in groups]


def activation_bases(
    H_F: list[torch.Tensor], H_N: list[torch.Tensor | None], H_R: torch.Tensor | None, config: PUREConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(V_F, V_R) of one block from forget rows per concept (H_F[i] (n_i, d)), their paired twins, and retain rows."""
    d = H_F[0].shape[1]
    H_F = [h.double() for h in H_F]
    mu = None  # the common direction every prompt shares
    if config.centre != "none":
        if H_R is not None and H_R.shape[0]:
            mu = H_R.double().mean(0)  # (d,)  retain mean
        elif config.centre == "paired":
            twins = [n for n in H_N if n is not None]
            assert len(twins) == len(H_N), "centre='paired' records a neutral twin for every prompt"
            mu = torch.cat([n.double() for n in twins]).mean(0)  # neutral twins' mean
        else:
            raise MethodError(
                "centre='retain' needs retain prompts (preserve concepts or retain_prompts); use centre='paired'"
            )
    X_R = None
    if H_R is not None and H_R.shape[0]:
        X_R = H_R.double() if mu is None else centre_rows(H_R.double() - mu, mu)
    V_R = energy_basis(X_R, config.retain_energy, config.max_rank) if X_R is not None else H_F[0].new_zeros(d, 0)
    parts = []
    for h, n in zip(H_F, H_N):
        if config.centre == "paired":
            assert n is not None  # every prompt has its twin under centre='paired'
            X = h - n.double()  # concept minus neutral on the same x_t and step
        elif config.centre == "retain":
            assert mu is not None  # the retain mean, set above
            X = h - mu
        else:
            X = h
        X = centre_rows(X, mu)  # V_F ⟂ μ̂: E keeps what every prompt shares
        if config.forget_rule == "residual" and V_R.shape[1]:
            X = X - (X @ V_R) @ V_R.T  # X (I − P_R)
        parts.append(energy_basis(X, config.forget_energy, config.max_rank))
    V_F = orthonormal_union(parts)
    if config.max_rank is not None:
        V_F = V_F[:, : config.max_rank]
    return V_F, V_R


def paper_anchors(concepts, config) -> tuple[list[str], list[str]]:
    """(forget, retain) anchor prompts of ``preset='paper'``: every erased / preserved concept in six templates."""
    from ..concepts import reference_templates

    tpl = concepts.templates if isinstance(concepts.templates, tuple) else reference_templates(concepts.kind)
    if len(tpl) != PAPER_TEMPLATES:
        raise MethodError(f"preset='paper' uses {PAPER_TEMPLATES} templates per concept; the ConceptSet has {len(tpl)}")
    forget = list(config.forget_prompts) or [e for e, _ in concepts.erase_pairs(templates=tpl)]
    return forget, list(config.retain_prompts) or concepts.preserve_prompts(templates=tpl)


def _bases_activation(adapter, concepts, config, progress):
    if config.preset == "paper":
        forget, retain = paper_anchors(concepts, config)
        groups = [(forget, [""] * len(forget))]
    else:
        groups = forget_groups(concepts, config)
        retain = list(config.retain_prompts) or concepts.preserve_prompts()
    paired = config.centre == "paired"
    acts = [
        anchor_activations(
            adapter, f, config, f"pure: forget anchors {i + 1}/{len(groups)}", progress, n if paired else None
        )
        for i, (f, n) in enumerate(groups)
    ]
    H_R, _ = anchor_activations(adapter, retain, config, "pure: retain anchors", progress)
    return {
        block: activation_bases([a[0][block] for a in acts], [a[1].get(block) for a in acts], H_R.get(block), config)
        for block in adapter.attention_layers()
    }


def _bases_text(adapter, concepts, config):
    if config.forget_prompts or config.retain_prompts:
        C_F = adapter.preserve_columns(
            list(config.forget_prompts) or [e for e, _ in concepts.erase_pairs()], config.token
        )
        C_R = adapter.preserve_columns(list(config.retain_prompts) or concepts.preserve_prompts(), config.token)
    else:
        C_F, _, C_R = cf.token_columns(adapter, concepts, config)
    V_F = energy_basis(C_F.T, config.forget_energy, config.max_rank)
    V_R = energy_basis(C_R.T, config.retain_energy, config.max_rank) if C_R.shape[1] else V_F.new_zeros(V_F.shape[0], 0)
    return V_F, V_R


def check_activation_sites(adapter) -> None:
    """Refuse, in one line, an activation basis where it has no meaning: a family whose sampling is not validated for
    capture, or sites whose outputs are not an attention's keys / values (SD3 / FLUX static sites)."""
    from ..models.families import families

    fam = adapter.family_spec
    ok = ", ".join(n for n, f in families().items() if f.captures_activations)
    if not fam.captures_activations:
        raise MethodError(
            f"pure basis='activation' captures activations along the pipeline's sampler, validated on {ok} pipelines "
            f"(DiTs with sites='joint') only, not on {fam.name}; use basis='text'"
        )
    for block in adapter.attention_layers():
        try:
            adapter.denoiser.get_submodule(f"{block}.to_out.0")
        except AttributeError:
            raise MethodError(
                f"pure basis='activation' edits attention keys / values (on {ok}; DiTs with sites='joint'), and the "
                f"{fam.name} site {adapter.attention_layers()[block][0]!r} is not one: use sites='joint' (the joint "
                "blocks' add_k_proj / add_v_proj) or basis='text'"
            ) from None


@register_method(
    "pure",
    PUREConfig,
    "PURE: project concept directions out of cross-attention activations, E = I − P_F(I − P_R) (Moon et al., 2026)",
)
class PURE(Method[PUREConfig]):
    def uses_unet(self, config: PUREConfig) -> bool:
        return config.basis == "activation"

    def fit(self, adapter, concepts, config: PUREConfig, progress: bool = True):
        if config.basis == "activation":  # the text basis is a closed form on the site inputs: every family
            check_activation_sites(adapter)
        t0 = time.perf_counter()
        if config.basis == "activation":
            bases = _bases_activation(adapter, concepts, config, progress)
            delta, where = left_delta, lambda path: bases[path.rsplit(".", 1)[0]]
        else:
            text_bases = _bases_text(adapter, concepts, config)
            delta, where = right_delta, lambda path: text_bases

        def fit_layer(path, W0):
            V_F, V_R = where(path)
            if V_F.shape[0] != (W0.shape[0] if config.basis == "activation" else W0.shape[1]):
                raise MethodError(f"{path}: basis dimension {V_F.shape[0]} does not match the weight {tuple(W0.shape)}")
            B, A = delta(W0, V_F, V_R)
            return LayerEdit.lowrank(path, B, A, rank_forget=V_F.shape[1], rank_retain=V_R.shape[1])

        paths = adapter.paths
        if config.basis == "activation" and config.k_basis == "none":
            paths = [p for p in paths if not p.endswith((".to_k", ".add_k_proj"))]
            if not paths:
                raise MethodError("k_basis='none' leaves no layer to edit: include 'v' in projections")
        layers = cf.edit_layers(adapter, paths, fit_layer, "pure", progress)
        stats = {
            "seconds": round(time.perf_counter() - t0, 4),
            "basis": config.basis,
            "mean_rank_forget": sum(le.stats["rank_forget"] for le in layers) / len(layers),
        }
        return cf.make_edit(self.name, adapter, concepts, config, layers, stats)
