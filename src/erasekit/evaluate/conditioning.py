"""Conditioning the attacks hand to the generate stage: the pipeline's own prompt embeddings, Ring-A-Bell's shifted
embeddings (``encode(prompt) + η · vector``) and CCE's learned token (the carrier word's input embedding replaced).

These are the only places an attacked item's conditioning is made, for the attack while it searches and for the
runner when it renders (:func:`erasekit.evaluate.generate._render`), so both see the same tensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch

from ..errors import AttackError, ConceptError
from .suites import SuiteItem


def pipe_kwargs(cond, family=None) -> dict[str, torch.Tensor]:
    """A family :class:`~erasekit.models.families.Conditioning` as ``pipe(**...)`` keywords: ``prompt_embeds``
    (B, L, d) and, for SDXL, ``pooled_prompt_embeds`` (B, d_pool); with ``family``, as it says
    (:meth:`~erasekit.models.families.Family.embeds_kwargs`: PixArt and Sana add ``prompt_attention_mask``)."""
    if family is not None:
        return dict(family.embeds_kwargs(cond))
    out = {"prompt_embeds": cond.embeds}
    if cond.pooled is not None:
        out["pooled_prompt_embeds"] = cond.pooled
    return out


@torch.no_grad()
def encode(pipe, prompts: Sequence[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The pipeline's own conditioning for ``prompts`` (no CFG branch), as its family encodes it
    (:mod:`erasekit.models.families`): ``prompt_embeds`` (B, L, d) and, for SDXL, ``pooled_prompt_embeds``
    (B, d_pool); on the pipeline's device, in its dtype."""
    from ..models.families import identify

    family = identify(pipe)
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(prompts), batch_size):
        for k, v in pipe_kwargs(family.encode(pipe, list(prompts[i : i + batch_size])), family).items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def vector_digest(vector: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a conditioning vector's tensors (part of the image cache key of shifted and learned-token items)."""
    h = hashlib.sha256()
    for k in sorted(vector):
        t = vector[k].detach().to("cpu")
        t = (t if t.dtype == torch.uint8 else t.to(torch.float32)).contiguous()
        h.update(f"{k}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def shift_embeddings(
    encoded: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor], eta: float
) -> dict[str, torch.Tensor]:
    """``encoded + η · vector`` for every tensor the pipeline's ``encode_prompt`` returned (see :func:`encode`).

    The one place where the concept-vector attack touches the conditioning: ``prompt_embeds`` (B, L, d) on every
    pipeline, and on SDXL also ``pooled_prompt_embeds`` (B, d_pool), which reaches the UNet through
    ``add_embedding`` without passing any cross-attention; ``vector`` holds one (L, d) / (d_pool,)
    tensor per key, broadcast over the batch.
    """
    shifted = {k for k, x in encoded.items() if x.is_floating_point()}  # not the text mask (PixArt, Sana)
    missing = shifted - set(vector)
    if missing:
        raise ConceptError(f"the concept vector lacks {sorted(missing)}: it was made for another pipeline family")
    return {k: x + float(eta) * vector[k].to(x.device, x.dtype) if k in shifted else x for k, x in encoded.items()}


def shifted_conditioning(
    pipe, items: Sequence[SuiteItem], vectors: Mapping[str, Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """``encode(prompt) + η · vector`` for shifted items, stacked, ready for ``pipe(**...)``."""
    base = encode(pipe, [it.prompt for it in items])
    rows = []
    for i, it in enumerate(items):
        assert it.shift is not None, "only shifted items are conditioned here"
        rows.append(shift_embeddings({k: x[i : i + 1] for k, x in base.items()}, vectors[it.shift[0]], it.shift[1]))
    return {k: torch.cat([r[k] for r in rows]) for k in base}


# ----------------------------------------------------------------------------- learned tokens (CCE)
def carrier_tensor(word: str) -> torch.Tensor:
    """The carrier word as bytes in a tensor, so that a learned token travels in one safetensors file with its word."""
    return torch.tensor(list(word.encode("utf-8")), dtype=torch.uint8)


def carrier_word(vector: Mapping[str, torch.Tensor]) -> str:
    return bytes(vector["carrier"].tolist()).decode("utf-8")


def carrier_id(tokenizer, word: str) -> int:
    """The one token id of ``word`` (a learned token is carried by an existing single-token word: the tokenizer, and
    so the pipeline's fingerprint, stay untouched)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise AttackError(f"carrier word {word!r} is {len(ids)} tokens for this tokenizer; choose a single-token word")
    return int(ids[0])


def carrier_ids(pipe, word: str) -> list[int]:
    """The one token id of ``word`` for each text encoder of ``pipe``, as the encoder reads the word inside a prompt:
    the first encoder's in the pipeline's context (:meth:`~erasekit.models.families.Family.prompt_ids`: Sana's Gemma
    reads ``▁word`` behind its instruction, ``word`` alone), every other by its own tokenizer."""
    from ..models.families import identify

    family = identify(pipe)
    toks = family.text_tokenizers(pipe)
    first = family.prompt_ids(pipe, [word])[0]
    if len(first) != 1 or first[0] == toks[0].unk_token_id:
        raise AttackError(
            f"carrier word {word!r} is {len(first)} tokens for this tokenizer; choose a single-token word"
        )
    return [int(first[0])] + [carrier_id(tok, word) for tok in toks[1:]]


def place_token(
    ids: torch.Tensor, embeds: torch.Tensor, carrier: int, vector: torch.Tensor, rows: Sequence[int] | None = None
) -> torch.Tensor:
    """``embeds`` (B, L, d_e) with ``vector`` (d_e,) wherever ``ids`` (B, L) hold ``carrier`` (in ``rows`` only, if
    given); differentiable in ``vector``."""
    hit = ids == carrier  # (B, L)
    if rows is not None:
        keep = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        keep[list(rows)] = True
        hit &= keep[:, None]
    mask = hit.unsqueeze(-1).to(embeds.dtype)  # (B, L, 1)
    return embeds * (1 - mask) + mask * vector.to(embeds.dtype)  # carrier positions take the learned vector


def token_conditioning(
    pipe, items: Sequence[SuiteItem], vectors: Mapping[str, Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Conditioning of learned-token items, ready for ``pipe(**...)``: each item's prompt encoded with its learned
    vector in place of its carrier word's input embedding (every text encoder its own vector ``encoder_<i>``)."""
    from ..models.families import identify

    family = identify(pipe)
    per_item = []
    for it in items:
        assert it.token is not None, "only learned-token items are conditioned here"
        vec = vectors[it.token]
        per_item.append((carrier_ids(pipe, carrier_word(vec)), vec))  # each encoder's id (FLUX: CLIP's, T5's)

    def substitute(enc: int, ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        out = embeds
        for row, (cids, vec) in enumerate(per_item):
            out = place_token(ids, out, cids[enc], vec[f"encoder_{enc}"], rows=[row])
        return out

    with torch.no_grad():
        cond = family.encode_substituted(pipe, [it.prompt for it in items], substitute)
    return {k: v.detach() for k, v in pipe_kwargs(cond, family).items()}
