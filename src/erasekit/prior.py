"""The general-prompt prior: a second-moment statistic of many ordinary prompts' token embeddings.

The closed-form edits (UCE, SPACE, and every method built on their quadratic) constrain the
edited weight only on the span of the erase and preserve embeddings; everything outside that
span is held back by the ridge term γ‖W − W0‖² alone. A sparse edit (SPACE at 80–90 % zeros)
therefore moves the outputs of unrelated prompts. MACE (Lu et al., CVPR 2024) adds a
preservation term over COCO captions, stored as their second moment; this module computes that
statistic once per text encoder and prompt list:

    S = (1/N) Σ_prompts Σ_positions c cᵀ          (d_in, d_in), c = one token embedding
    F = Q Λ^{1/2}  with S = Q Λ Qᵀ                  (d_in, m), F Fᵀ = S, m = rank S ≤ d_in

and the methods add  ρ ‖(W − W0) F‖² = ρ Σ (1/N) ‖W c − W0 c‖²  to their objective, i.e. the
columns √ρ F are appended to both C̃ and B of :func:`erasekit.linalg.gram_factor`. Every token
position (BOS, words, EOS and padding) is included: causal text encoders carry a prompt's
content into its EOS and padding positions, and the UNet reads all 77.

S is normalised per prompt, so ρ = 1 weighs the whole prior like one extra preserved prompt
in ``token='all'`` mode, whatever the number of prompts.

Prompt sources (:func:`general_prompts`):

* ``"tinyworld"`` — 2,000 seeded captions from tinyworld's own *training* distribution
  (never its held-out evaluation templates);
* a CSV (a ``prompt`` column, e.g. the COCO captions in ``diffusion-mu-attack/coco_10k.csv``)
  or ``.txt`` file (one prompt per line), by path;
* an ``http(s)://`` URL, which must come with its sha256.

The factor is cached as safetensors under ``~/.cache/erasekit/priors/`` (``$ERASEKIT_CACHE``
overrides ``~/.cache/erasekit``), keyed by a fingerprint of the text encoder(s), the prompt
list and the exclusions; a cached file whose recorded key does not match is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .errors import MethodError

__all__ = [
    "GeneralPrior",
    "general_prompts",
    "general_prior",
    "prior_cache_dir",
    "concept_aliases",
    "TINYWORLD_PRIOR_N",
]

TINYWORLD_PRIOR_N = 2000  # captions drawn for the tinyworld prior
_TINYWORLD_SEED = 13_2026  # seed of those captions (not the evaluation suites' seeds)
_F64 = torch.float64
_CACHE_VERSION = "1"


@dataclass(frozen=True)
class GeneralPrior:
    """F (d_in, m) with F Fᵀ = S = (1/N) Σ_prompts Σ_positions c cᵀ, and where it came from."""

    factor: Tensor  # (d_in, m) float64
    n_prompts: int  # N, after exclusions
    source: str  # "tinyworld", a path or a URL
    prompts_sha256: str  # sha256 of the prompt list actually used (newline-joined)
    encoder: str  # fingerprint of the text encoder(s)
    cache_file: str | None = None

    @property
    def d_in(self) -> int:
        return self.factor.shape[0]

    @property
    def rank(self) -> int:
        return self.factor.shape[1]

    def second_moment(self) -> Tensor:
        """S = F Fᵀ (d_in, d_in)."""
        return self.factor @ self.factor.T

    def record(self) -> dict:
        """What an edit records about the prior it was fitted with."""
        return {
            "source": self.source,
            "n_prompts": self.n_prompts,
            "prompts_sha256": self.prompts_sha256,
            "encoder": self.encoder,
            "rank": self.rank,
        }


def prior_cache_dir() -> Path:
    root = os.environ.get("ERASEKIT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "erasekit") / "priors"


# ------------------------------------------------------------------------------ prompts


def general_prompts(source: str, *, limit: int | None = None, sha256: str | None = None) -> list[str]:
    """The general prompt list of ``source`` ("tinyworld", a CSV / txt path, or a URL with sha256).

    ``limit`` keeps the first ``limit`` prompts (tinyworld draws exactly ``limit``, default 2,000).
    """
    if limit is not None and limit < 1:
        raise MethodError(f"prior limit must be >= 1 prompt, got {limit}")
    if source == "tinyworld":
        from .models.record import tinyworld_captions  # the bundled model's vocabulary, through the models layer

        return tinyworld_captions(limit or TINYWORLD_PRIOR_N, _TINYWORLD_SEED)
    if re.match(r"^https?://", source) and not sha256:
        raise MethodError(
            f"prior prompt URL {source!r} needs its sha256 (prior_sha256=...) so a changed file is noticed"
        )
    from .prompt_files import load_prompts  # CSV/txt parsing, URL fetch + checksum, shared with the evaluation

    try:
        suite = load_prompts(source, kind="general", sha256=sha256, limit=limit)
    except Exception as e:  # ConceptError from the loader: re-raise as a method configuration error
        raise MethodError(f"cannot read the prior's general prompts from {source!r}: {e}") from None
    prompts = [it.prompt for it in suite.items]
    if not prompts:
        raise MethodError(f"{source!r} holds no prompt to build the general prior from")
    return prompts


def concept_aliases(concept: str) -> tuple[str, ...]:
    """The concept and, where tinyworld's vocabulary knows it, its synonyms (all lower case)."""
    from .models.record import tinyworld_aliases

    return tinyworld_aliases(concept) or (concept.strip().lower(),)


def _drop_named(prompts: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Prompts that name none of ``exclude`` (whole words, case-insensitive)."""
    if not exclude:
        return list(prompts)
    rx = re.compile(
        r"\b(" + "|".join(re.escape(e.lower()) for e in sorted(set(exclude), key=len, reverse=True)) + r")\b"
    )
    return [p for p in prompts if not rx.search(p.lower())]


# ------------------------------------------------------------------------------ statistic


def encoder_fingerprint(pipe) -> str:
    """Cheap, content-based fingerprint of the pipeline's text encoder(s): shapes, dtypes and
    the first 4,096 values of every parameter (enough to tell different weights apart)."""
    h = hashlib.sha256()
    for name in ("text_encoder", "text_encoder_2"):
        enc = getattr(pipe, name, None)
        if enc is None:
            continue
        h.update(name.encode())
        for pname, p in enc.named_parameters():
            flat = p.detach().reshape(-1)[:4096].to("cpu", torch.float32).contiguous()
            h.update(f"{pname}{tuple(p.shape)}{p.dtype}".encode())
            h.update(flat.numpy().tobytes())
    return h.hexdigest()[:32]


@torch.no_grad()
def second_moment_factor(adapter, prompts: Sequence[str], batch_size: int = 64, progress: bool = False) -> Tensor:
    """F (d_in, m), F Fᵀ = (1/N) Σ_prompts Σ_positions c cᵀ over every token position (float64)."""
    from tqdm.auto import tqdm

    S = torch.zeros(adapter.d_in, adapter.d_in, dtype=_F64)  # (d_in, d_in)
    for i in tqdm(
        range(0, len(prompts), batch_size), desc="general prior", unit="batch", disable=not progress, leave=False
    ):
        E = adapter.encode(prompts[i : i + batch_size]).embeds  # (b, L, d_in) float64
        X = E.reshape(-1, E.shape[-1])  # (b·L, d_in)
        S += X.T @ X
    S /= len(prompts)
    lam, Q = torch.linalg.eigh((S + S.T) / 2)  # ascending
    keep = lam > max(float(lam[-1]), 1e-300) * S.shape[0] * torch.finfo(_F64).eps * 16
    return (Q[:, keep] * lam[keep].sqrt()).flip(1).contiguous()  # (d_in, m), largest first


def general_prior(
    adapter,
    prompts: Sequence[str],
    *,
    limit: int | None = None,
    exclude: Sequence[str] = (),
    source: str = "custom",
    cache: bool = True,
    progress: bool = False,
) -> GeneralPrior:
    """The general prior of ``prompts`` for ``adapter``'s text encoder, from the cache when it is current.

    ``exclude``: drop every prompt that names one of these words (the erased concepts and their
    synonyms), so the prior never protects what is being erased. ``limit``: keep the first
    ``limit`` prompts (after exclusion).
    """
    kept = _drop_named(prompts, exclude)
    if limit is not None:
        kept = kept[:limit]
    if not kept:
        raise MethodError(
            f"no general prompt is left for the prior after excluding {list(exclude)}; give a broader prompt list"
        )
    psha = hashlib.sha256("\n".join(kept).encode()).hexdigest()
    enc = encoder_fingerprint(adapter.pipe)
    key = {
        "version": _CACHE_VERSION,
        "encoder": enc,
        "prompts_sha256": psha,
        "n_prompts": str(len(kept)),
        "d_in": str(adapter.d_in),
        # which input: a pooled site reads another vector than the text stream of the same encoders
        "site_input": f"{adapter.input_kind}:{adapter.site.group}",
    }
    path = (
        prior_cache_dir() / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]}.safetensors"
    )
    F = _load_cached(path, key) if cache else None
    if F is None:
        F = second_moment_factor(adapter, kept, progress=progress)
        if cache:
            _save_cached(path, F, key)
    return GeneralPrior(F, len(kept), source, psha, enc, str(path) if cache else None)


def _load_cached(path: Path, key: dict) -> Tensor | None:
    """The cached factor, or None when the file is missing, unreadable or stale (its key differs)."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if any(meta.get(k) != v for k, v in key.items()):
                return None
            F = f.get_tensor("factor").to(_F64)
    except Exception:  # corrupt or truncated cache: recompute
        return None
    return F if F.ndim == 2 and F.shape[0] == int(key["d_in"]) and torch.isfinite(F).all() else None


def _save_cached(path: Path, F: Tensor, key: dict) -> None:
    from safetensors.torch import save_file

    from ._atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            save_file({"factor": F.contiguous()}, str(tmp), metadata=dict(key))
    except OSError:  # a read-only home is not an error: the prior is simply not cached
        pass
