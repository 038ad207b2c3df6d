"""PipelineAdapter: everything a method needs to know about a pipeline, asked of its family.

The pipeline's family (:mod:`erasekit.models.families`) says which component denoises, where its
static-text edit sites are (found by what they are: a diffusers ``Attention`` whose
``is_cross_attention`` is true, and its ``to_k`` / ``to_v`` Linear), how the pipeline encodes a
prompt (its *own* ``encode_prompt``: SDXL gets both encoders' penultimate states concatenated,
exactly as at generation time) and what the sites read (the text stream on a UNet, the projected
caption on PixArt / Sana). The adapter selects tokens and fingerprints base weights. Methods never
touch the pipeline; they see matrices.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ModelError
from ..fingerprint_spec import SKETCH_N
from .families import PROJECTIONS, Conditioning, Pipeline, Site, identify
from .joint import JointSampling

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..edit_format import Fingerprint

__all__ = ["PROJECTIONS", "TOKEN_MODES", "Encoded", "PipelineAdapter", "weight_fingerprint", "fingerprints_match"]

TOKEN_MODES = ("last", "tail", "all")


@dataclass(frozen=True)
class Encoded:
    """What the edit sites read for each prompt, and the index of each prompt's last concept token."""

    embeds: torch.Tensor  # (B, L, d_in) float64, cpu: the site inputs
    last_index: torch.Tensor  # (B,) int64: the last concept token (before EOS on CLIP / T5; UCE v2 / SPEED)
    n_tokens: torch.Tensor  # (B,) int64: real tokens (CLIP: BOS + words + EOS)


class PipelineAdapter:
    """Wraps a diffusers pipeline of a registered family (SD 1.x / 2.x / XL, PixArt-α / Σ, Sana, SD3, FLUX.1).

    The edit sites fall into *groups* of sites that read the same input (one group on the UNets, PixArt and Sana;
    SD3 / FLUX: the text stream's ``context_embedder`` and the pooled text embedder). A closed form is solved per
    group: :meth:`for_group` gives the adapter of one group, whose ``paths``, ``d_in`` and :meth:`encode` are that
    group's, and methods see one group at a time (:func:`erasekit.methods.base.fit_by_group`).

    Args:
        pipe: a loaded diffusers pipeline.
        layer_regex: optional override; every ``nn.Linear`` in the denoiser whose module path
            matches (``re.search``) is edited instead of the discovered sites (one group, read as the text stream).
        projections: which cross-attention projections to edit, subset of ``("k", "v")`` (families whose sites are
            not attention projections, SD3 / FLUX, edit their static sites whatever it says; it picks among their
            joint sites' ``add_k_proj`` / ``add_v_proj``).
        sites: ``'static'`` (default), ``'joint'`` or ``'all'``: SD3 / FLUX's opt-in per-block joint sites
            (``add_k_proj`` / ``add_v_proj``, one group per block), whose columns are captured along the pipeline's
            sampler (:mod:`erasekit.models.joint`: timestep- and latent-dependent, so the edit is approximate).
        joint: the trajectories joint columns are read from.
    """

    group: str | None = None  # the group this adapter is restricted to (for_group), None: every site
    _encode_cache: dict[tuple[Any, ...], Encoded] | None = None  # set within cached_encodings()

    def __init__(
        self,
        pipe: Pipeline,
        layer_regex: str | None = None,
        projections: Sequence[str] = ("k", "v"),
        sites: str = "static",
        joint: JointSampling | None = None,
    ) -> None:
        self.family_spec = identify(pipe)
        self.pipe = pipe
        self.denoiser = self.family_spec.get_denoiser(pipe)
        self.family = self.family_spec.name
        bad = [p for p in projections if p not in PROJECTIONS]
        if bad or not projections:
            raise ModelError(f"unknown projection(s) {bad or projections}; choose from 'k' and 'v'")
        self.sites = self._discover(layer_regex, tuple(projections), sites)
        self.paths = [s.path for s in self.sites]
        self._d_in = self._check_in_features()
        self._pinned_fingerprints: dict[str, dict[str, Any]] = {}
        self.joint = joint or JointSampling()
        self._all_sites = list(self.sites)  # group views keep every joint group: one capture run serves them all
        self._joint_cache: dict[tuple[Any, ...], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}

    # ------------------------------------------------------------------ groups
    @property
    def groups(self) -> dict[str, list[str]]:
        """Group name -> its site paths, in site order."""
        out: dict[str, list[str]] = {}
        for s in self.sites:
            out.setdefault(s.group, []).append(s.path)
        return out

    def for_group(self, group: str) -> PipelineAdapter:
        """This adapter restricted to the sites of ``group`` (they share one input, so one set of columns)."""
        if group not in self.groups:
            raise ModelError(f"no site group {group!r}; this {self.family} pipeline has {', '.join(self.groups)}")
        view = copy.copy(self)
        view.sites = [s for s in self.sites if s.group == group]
        view.paths = [s.path for s in view.sites]
        view.group = group
        return view

    @property
    def d_in(self) -> int:
        """The input width of the sites (of this group)."""
        if self.group is not None:
            return self._d_in[self.group]
        if len(self._d_in) != 1:
            raise ModelError(
                f"the {self.family} sites read {len(self._d_in)} different inputs ({', '.join(self._d_in)}); ask "
                "adapter.for_group(name) for one"
            )
        return next(iter(self._d_in.values()))

    @property
    def site(self) -> Site:
        """The site whose input this adapter encodes (the first of its one group)."""
        groups = self.groups
        if len(groups) != 1:
            raise ModelError(
                f"the {self.family} sites read {len(groups)} different inputs ({', '.join(groups)}); ask "
                "adapter.for_group(name) for one"
            )
        return self.sites[0]

    @property
    def input_kind(self) -> str:
        """What the sites of this (one-group) adapter read: 'static_text' (a token stream) or 'pooled_text'."""
        return self.site.input_kind

    def joint_groups(self) -> dict[str, list[str]]:
        """Every joint group of the pipeline's sites (also from a group view) -> its site paths."""
        out: dict[str, list[str]] = {}
        for s in self._all_sites:
            if s.input_kind == "joint_text":
                out.setdefault(s.group, []).append(s.path)
        return out

    @property
    def reads_joint_stream(self) -> bool:
        """Whether this (one-group) adapter's sites read a joint block's text stream (columns are captured)."""
        return len(self.groups) == 1 and self.sites[0].input_kind == "joint_text"

    def _joint_columns(
        self, prompts: Sequence[str], mode: str, twins: Sequence[str] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, C_twin) of this joint group, read once for every joint group and cached on the adapter."""
        from .joint import capture_columns

        key = (tuple(prompts), None if twins is None else tuple(twins), mode, self.joint)
        if key not in self._joint_cache:
            self._joint_cache[key] = capture_columns(self, prompts, mode, self.joint, twins)
        cols, twin_cols = self._joint_cache[key]
        group = self.sites[0].group  # reads_joint_stream: one group
        empty = torch.zeros(self.d_in, 0, dtype=torch.float64)
        return cols[group], twin_cols.get(group, empty)

    # ------------------------------------------------------------------ layers
    def _discover(self, layer_regex: str | None, projections: tuple[str, ...], sites: str = "static") -> list[Site]:
        modules = dict(self.denoiser.named_modules())
        if layer_regex is not None:
            try:
                rx = re.compile(layer_regex)
            except re.error as e:
                raise ModelError(f"invalid layer regex {layer_regex!r}: {e}") from None
            paths = [n for n, m in modules.items() if isinstance(m, nn.Linear) and rx.search(n)]
            if not paths:
                raise ModelError(
                    f"layer regex {layer_regex!r} matches no Linear layer in the {self.family_spec.denoiser}; "
                    "check the module names"
                )
            return [Site(p) for p in paths]
        found = self.family_spec.edit_sites(self.pipe, projections, sites)
        if not found:
            raise ModelError(
                f"the {self.family_spec.denoiser} of {type(self.pipe).__name__} has no cross-attention layer (no "
                "Attention with is_cross_attention); erasekit edits text-to-image models with cross-attention. If "
                "your model names its layers differently, pass layer_regex="
            )
        return list(found)

    def _check_in_features(self) -> dict[str, int]:
        """Group -> the input width its sites share."""
        out: dict[str, int] = {}
        for group, paths in self.groups.items():
            dims = {self.linear(p).in_features for p in paths}
            if len(dims) != 1:
                raise ModelError(
                    f"edited layers disagree on their input size {sorted(dims)}; the layers of one site group must "
                    "all read the same text embeddings"
                )
            out[group] = dims.pop()
        return out

    def linear(self, path: str) -> nn.Linear:
        try:
            m = self.denoiser.get_submodule(path)
        except AttributeError:
            raise ModelError(f"the {self.family_spec.denoiser} has no layer {path!r}") from None
        if not isinstance(m, nn.Linear):
            raise ModelError(f"{self.family_spec.denoiser} layer {path!r} is a {type(m).__name__}, not a Linear")
        return m

    def attention_layers(self) -> dict[str, list[str]]:
        """Attention block path -> its edited projection paths (for methods that act per block, e.g. PURE)."""
        blocks: dict[str, list[str]] = {}
        for p in self.paths:
            blocks.setdefault(p.rsplit(".", 1)[0], []).append(p)
        return blocks

    def weights(self) -> dict[str, torch.Tensor]:
        """Current weights of the edited layers (views, not copies)."""
        return {p: self.linear(p).weight for p in self.paths}

    @property
    def unet(self) -> nn.Module:
        """The denoiser (a UNet or a transformer); the name is kept for the UNet-era callers."""
        den: nn.Module = self.denoiser
        return den

    @property
    def device(self) -> torch.device:
        dev: torch.device = self.denoiser.device
        return dev

    # ---------------------------------------------------------------- prompts
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.family_spec.tokenizer(self.pipe)

    def conditioning(self, prompts: Sequence[str]) -> Conditioning:
        """The pipeline's own conditioning of ``prompts`` (no CFG branch), on its device, for :meth:`denoise`."""
        return self.family_spec.encode(self.pipe, list(prompts))

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's prediction (ε for the UNets and PixArt) for ``x_t`` (B, C, h, w) at ``t`` under ``cond``."""
        return self.family_spec.denoise(self.pipe, x_t, t, cond)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> Encoded:
        """What the edit sites (of this adapter's one group) read for ``prompts``: the pipeline's own encoding
        (no CFG branch), through the family's site input (identity on a UNet, the caption projection on PixArt /
        Sana, the pooled vector as one token on SD3 / FLUX's pooled site)."""
        from .precision import compute_dtype, computing_in_layers, stored_dtype, text_encoders

        prompts = list(prompts)
        if not prompts:
            raise ModelError("no prompt to encode")
        site = self.site
        if site.input_kind == "joint_text":
            raise ModelError(
                f"{site.path} reads a joint block's text stream, which depends on the latent and the timestep: it has "
                "no encoding; methods that read columns (uce, space, cure, pure) capture them during sampling, others "
                "run on sites='static'"
            )
        key = (self.group, site.path, tuple(prompts), batch_size)
        if self._encode_cache is not None and key in self._encode_cache:
            hit = self._encode_cache[key]
            return Encoded(hit.embeds.clone(), hit.last_index.clone(), hit.n_tokens.clone())
        encoders = text_encoders(self.pipe)
        target = compute_dtype(self.device, stored_dtype(encoders[0])) if encoders else torch.float32
        fam = self.family_spec
        chunks, lasts, counts = [], [], []
        # A float16 text encoder on a CPU runs each layer in float32 (issue 16); the output is then
        # cast to the encoder's dtype by diffusers, exactly as the UNet receives it at generation time.
        with computing_in_layers(encoders, target):
            for i in range(0, len(prompts), batch_size):
                cond = fam.encode_for_site(self.pipe, prompts[i : i + batch_size], site)
                x = fam.site_inputs(self.pipe, cond, site)  # (b, L, d_in)
                chunks.append(x.detach().to("cpu", torch.float64))
                last, count = fam.site_tokens(cond, site)  # (b,), (b,)
                lasts.append(last)
                counts.append(count)
        embeds = torch.cat(chunks)
        if embeds.shape[-1] != self.d_in:
            raise ModelError(
                f"prompt embeddings are {embeds.shape[-1]}-d but the edited layers read {self.d_in}-d inputs"
            )
        if not torch.isfinite(embeds).all():
            raise ModelError(
                "the text encoder produced NaN/Inf embeddings; load the model in float32 (--dtype float32)"
            )
        out = Encoded(embeds, torch.cat(lasts), torch.cat(counts))
        if self._encode_cache is not None:
            self._encode_cache[key] = Encoded(out.embeds.clone(), out.last_index.clone(), out.n_tokens.clone())
        return out

    @contextmanager
    def cached_encodings(self) -> Iterator[None]:
        """Within: :meth:`encode` of a prompt list this adapter (group) already encoded returns a copy of that result
        instead of running the text encoders again (RECE encodes its concept, guide and retain prompts for the UCE
        start and again for the adversarial step). Nothing a fit does changes the text encoders, so the result is the
        same to the bit; the cache ends with the block (nested blocks share the outer one)."""
        outer = self._encode_cache
        self._encode_cache = {} if outer is None else outer
        try:
            yield
        finally:
            self._encode_cache = outer

    def token_columns(self, erase: Sequence[str], guide: Sequence[str], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Paired columns (C_E, C_G), each (d_in, n), for aligned erase/guide prompts (DESIGN §4)."""
        _check_mode(mode)
        if len(erase) != len(guide):
            raise ModelError("erase and guide prompt lists must be aligned (same length)")
        if self.reads_joint_stream:  # paired by hooks: the guide on the erase prompt's x_t at each step
            return self._joint_columns(list(erase), mode, list(guide))
        e, g = self.encode(list(erase)), self.encode(list(guide))
        cols_e, cols_g = [], []
        L = e.embeds.shape[1]
        for i in range(len(erase)):
            ie, ig = int(e.last_index[i]), int(g.last_index[i])
            if mode == "last":
                cols_e.append(e.embeds[i, ie : ie + 1])
                cols_g.append(g.embeds[i, ig : ig + 1])
            elif mode == "tail":
                # UCE v1 / RECE: from the last concept token on, shifted so both spans have equal length.
                far = max(ie, ig)
                cols_e.append(e.embeds[i, ie : L - (far - ie)])
                cols_g.append(g.embeds[i, ig : L - (far - ig)])
            else:
                cols_e.append(e.embeds[i])
                cols_g.append(g.embeds[i])
        return torch.cat(cols_e).T.contiguous(), torch.cat(cols_g).T.contiguous()  # (d_in, n) each

    def preserve_columns(self, prompts: Sequence[str], mode: str) -> torch.Tensor:
        """Columns C_P (d_in, n_p) of preserved prompts; empty (d_in, 0) when there are none."""
        _check_mode(mode)
        if not prompts:
            return torch.zeros(self.d_in, 0, dtype=torch.float64)
        if self.reads_joint_stream:
            return self._joint_columns(list(prompts), mode, None)[0]
        p = self.encode(list(prompts))
        cols = []
        for i in range(len(prompts)):
            ip = int(p.last_index[i])
            cols.append(
                p.embeds[i, ip : ip + 1] if mode == "last" else p.embeds[i, ip:] if mode == "tail" else p.embeds[i]
            )
        return torch.cat(cols).T.contiguous()

    # ------------------------------------------------------------ fingerprint
    def fingerprint(self, paths: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Fingerprints of the base weights (pinned ones first: see :meth:`pin_fingerprints`)."""
        return {
            p: self._pinned_fingerprints.get(p) or weight_fingerprint(self.linear(p).weight)
            for p in (paths or self.paths)
        }

    def pin_fingerprints(self) -> None:
        """Fingerprint every edited layer now, in its stored dtype, before a fit borrows the denoiser in
        another dtype (models/precision.py); the edit then records the weights as they are stored."""
        self._pinned_fingerprints = {p: weight_fingerprint(self.linear(p).weight) for p in self.paths}

    def describe(self) -> dict[str, Any]:
        cfg = getattr(self.pipe, "config", {}) or {}
        d_in = next(iter(self._d_in.values()))  # every group's view describes the same pipeline
        return {
            "pipeline": type(self.pipe).__name__,
            "family": self.family,
            "name_or_path": cfg.get("_name_or_path") if hasattr(cfg, "get") else None,
            "d_in": d_in,  # the first group's (the text stream's) when the sites read several inputs
            "denoiser": self.family_spec.denoiser,
        }


def _check_mode(mode: str) -> None:
    if mode not in TOKEN_MODES:
        raise ModelError(f"unknown token selection {mode!r}; choose one of {', '.join(TOKEN_MODES)}")


_SKETCH_SEED = 20240613


def _as_matrix(w: torch.Tensor) -> torch.Tensor:
    """A parameter of any rank as the matrix its fingerprint probes: (d0, rest) — a bias is (1, n)."""
    if w.dim() == 2:
        return w
    if w.dim() < 2:
        return w.reshape(1, -1)
    return w.reshape(w.shape[0], -1)


@torch.no_grad()
def weight_fingerprint(weight: torch.Tensor) -> dict[str, Any]:
    """Exact hash of the bytes plus a dtype-tolerant numeric sketch, for a parameter of any rank.

    The hash decides bit-exact identity; the sketch (8 normalised bilinear probes uᵀWr and
    the Frobenius norm) recognises the same base model loaded in another dtype
    (fp32 / fp16 / bf16), and tells different models apart with overwhelming probability.
    A matrix is probed as is; other ranks as the (d0, rest) matrix (a bias as one row).
    """
    w = weight.detach().to("cpu")
    digest = hashlib.sha256(w.contiguous().view(torch.uint8).numpy().data).hexdigest()  # hashed in place, no bytes copy
    w64 = _as_matrix(w.to(torch.float64))
    d_out, d_in = w64.shape
    gen = torch.Generator().manual_seed(_SKETCH_SEED + d_out * 7919 + d_in)
    u = torch.randn(SKETCH_N, d_out, generator=gen, dtype=torch.float64)
    r = torch.randn(SKETCH_N, d_in, generator=gen, dtype=torch.float64)
    u, r = u / u.norm(dim=1, keepdim=True), r / r.norm(dim=1, keepdim=True)
    fro = float(w64.norm())
    probes = ((u @ w64) * r).sum(dim=1) * (d_out * d_in) ** 0.5 / max(fro, 1e-30)  # each ~N(0,1) for unrelated weights
    return {
        "sha256": digest,
        "dtype": str(w.dtype).replace("torch.", ""),
        "shape": list(w.shape),
        "fro": fro,
        "sketch": [round(float(x), 6) for x in probes],
    }


# A probe of W + E, E the rounding of W to a storage grid, moves by ~ N(0, (‖E‖/‖W‖)²) (the probes are normalised
# by ‖W‖); round-to-nearest on a float grid of machine epsilon ε leaves ‖E‖/‖W‖ ≈ ε / (2√3) at most. The sketch
# tolerance is SKETCH_SIGMAS of that for the coarser of the two dtypes, and never below PROBE_TOL (fp32 / fp16 /
# bf16: 0.05, ≥ 20 σ of bf16 rounding). float8 needs more (e4m3: 0.22, e5m2: 0.43): for an unrelated weight of the
# same shape and norm each probe is ~ N(0, 1), so all 8 fall inside ±0.43 with probability < 2e-4 (±0.05: 1e-18).
PROBE_TOL = 0.05
SKETCH_SIGMAS = 6.0


def probe_tolerance(*dtype_names: str) -> float:
    """The sketch tolerance for fingerprints taken in these dtypes (names as stored: 'float32', 'float8_e4m3fn')."""
    eps = 0.0
    for name in dtype_names:
        dt = getattr(torch, str(name), None)
        if isinstance(dt, torch.dtype) and dt.is_floating_point:
            eps = max(eps, float(torch.finfo(dt).eps))
    return max(PROBE_TOL, SKETCH_SIGMAS * eps / (2 * math.sqrt(3)))


def fingerprints_match(
    stored: Fingerprint | Mapping[str, Any],
    live: Mapping[str, Any],
    probe_tol: float | None = None,
    fro_rtol: float = 0.01,
) -> tuple[bool, bool]:
    """(same model, bit-exact same bytes) for a stored fingerprint (dict or Fingerprint) and a live one.

    "Same model" needs the shape, the Frobenius norm within ``fro_rtol`` and every one of the
    8 probes within ``probe_tol`` (None: :func:`probe_tolerance` of the two dtypes, so the same base stored in
    float8 is still recognised): never the norm alone, never an incomplete sketch. The exact
    hash (with the dtype) then says whether the bytes are identical too.
    """
    if hasattr(stored, "to_json"):
        stored = stored.to_json()
    try:
        shape, fro, sketch = list(stored["shape"]), float(stored["fro"]), [float(x) for x in stored["sketch"]]
        live_sketch = [float(x) for x in live["sketch"]]
    except (KeyError, TypeError, ValueError):
        return False, False
    if shape != list(live["shape"]) or len(sketch) != SKETCH_N or len(live_sketch) != SKETCH_N:
        return False, False
    if probe_tol is None:
        probe_tol = probe_tolerance(str(stored.get("dtype", "")), str(live.get("dtype", "")))
    same = (
        math.isfinite(fro)
        and abs(fro - live["fro"]) <= fro_rtol * max(abs(fro), 1e-30)
        and all(abs(a - b) <= probe_tol for a, b in zip(sketch, live_sketch))
    )
    exact = same and stored.get("sha256") == live["sha256"] and stored.get("dtype") == live["dtype"]
    return same, exact
