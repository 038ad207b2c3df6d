"""Token sequences for the prompt and token attacks: the searchable vocabulary, the text encoders' input tables, and
encoding of arbitrary input-embedding sequences through the family (differentiable), so that UnlearnDiffAtk, P4D, MMA
and CCE never reach into a text encoder themselves.

A sequence of ``n`` input embeddings is encoded by asking the family to encode a template prompt of ``n`` copies of a
one-token filler word (so the tokenizer sets the length, the attention mask and the EOS position) and substituting the
sequence for the filler's input embeddings (:meth:`~erasekit.models.families.Family.encode_substituted`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ...errors import AttackError
from .base import AttackContext

_WHOLE_WORD = re.compile(r"^[a-z]+</w>$")
FILLER = "the"


class TokenSpace:
    """The vocabulary an attack searches and the way its sequences reach the model.

    ``ids``: (V',) token ids of whole lower-case words (``"castle</w>"``) that none of ``ban`` occurs in: their
    decoded text tokenizes back to the same ids, so a found prompt is exactly what generation sees; ``tables``: each
    text encoder's input table restricted to ``ids``, (V', d_e).
    """

    def __init__(self, ctx: AttackContext, attack: str, ban: Sequence[str] = ()) -> None:
        ctx.require_text_gradients(attack)
        self.ctx = ctx
        self.tokenizer = ctx.family.tokenizer(ctx.pipe)
        self.full = [t.detach() for t in ctx.family.input_embeddings(ctx.pipe)]  # (V, d_e) per encoder
        banned = [b.lower() for b in ban if b]
        vocab = self.tokenizer.get_vocab()
        words = sorted(
            (i, t) for t, i in vocab.items() if _WHOLE_WORD.match(t) and not any(b in t[:-4] for b in banned)
        )
        if not words:
            raise AttackError("the tokenizer has no whole-word tokens to search (is it a CLIP BPE tokenizer?)")
        self.ids = torch.tensor([i for i, _ in words], dtype=torch.int64)  # (V',)
        self.tables = [t[self.ids.to(t.device)] for t in self.full]  # (V', d_e) per encoder
        self.max_len = int(self.tokenizer.model_max_length) - 2  # BOS and EOS
        self.filler = self._one_token(FILLER)

    def _one_token(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise AttackError(f"the filler word {word!r} is not one token for this tokenizer")
        return int(ids[0])

    # ------------------------------------------------------------------ text
    def content_ids(self, prompt: str) -> list[int]:
        """The prompt's token ids without BOS / EOS (truncated as the pipeline truncates)."""
        return list(self.tokenizer(prompt, add_special_tokens=False).input_ids)[: self.max_len]

    def text(self, ids: Sequence[int]) -> str:
        """Decoded text of full-vocabulary ids (whole words separated by spaces)."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True)).strip()

    def roundtrips(self, ids: Sequence[int]) -> bool:
        """Whether :meth:`text` of ``ids`` tokenizes back to exactly ``ids``."""
        return self.content_ids(self.text(ids)) == list(ids)

    # ------------------------------------------------------------------ embeddings
    def lookup(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Input embeddings of full-vocabulary ``ids`` (..., ) -> (..., d_e) per encoder."""
        return [t[ids.to(t.device)] for t in self.full]

    def soft(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Weights (..., V') over the searched vocabulary -> input embeddings weights @ E (..., d_e) per encoder."""
        return [weights.to(t.dtype) @ t for t in self.tables]

    def encode(self, rows: Sequence[Sequence[torch.Tensor]]):
        """The family's conditioning of input-embedding sequences: ``rows[b][e]`` is prompt b's (n_b, d_e) sequence for
        text encoder e (BOS / EOS / padding added by the family); differentiable in the rows."""
        lengths = [int(r[0].shape[0]) for r in rows]
        if any(n < 1 or n > self.max_len for n in lengths):
            raise AttackError(f"a token sequence must hold 1 to {self.max_len} tokens, got lengths {lengths}")
        template = [" ".join([FILLER] * n) for n in lengths]

        def substitute(enc: int, ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            out = []
            for b, n in enumerate(lengths):
                seq = rows[b][enc].to(embeds.dtype)  # (n_b, d_e)
                out.append(torch.cat([embeds[b, :1], seq, embeds[b, 1 + n :]]))  # BOS | sequence | EOS, padding
            return torch.stack(out)

        return self.ctx.encode_substituted(template, substitute)


def nearest_tokens(embeds: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index into ``table`` (V', d) of the nearest row by cosine similarity for each of ``embeds`` (..., d) (PEZ's
    projection, as P4D's ``nn_project``)."""
    q = torch.nn.functional.normalize(embeds.float(), dim=-1)  # (..., d)
    k = torch.nn.functional.normalize(table.float(), dim=-1)  # (V', d)
    return (q @ k.T).argmax(-1)  # (...,) argmax_j cos(e, E_j)
