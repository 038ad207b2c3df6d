"""Token sequences for the prompt and token attacks: the searchable vocabulary, the text encoders' input tables, and
encoding of arbitrary input-embedding sequences through the family (differentiable), so that UnlearnDiffAtk, P4D, MMA
and CCE never reach into a text encoder themselves.

A sequence of ``n`` input embeddings is encoded by asking the family to encode a template prompt of ``n`` copies of a
one-token filler word (so the tokenizer sets the length, the attention mask and the EOS position) and substituting the
sequence for the filler's input embeddings (:meth:`~erasekit.models.families.Family.encode_substituted`).

Families whose encoders tokenize differently (FLUX: CLIP-L and T5; SD3: two CLIPs and T5) search the words that are
one real token for every tokenizer (on tinyworld-flux the stand-in T5 knows tinyworld's words: 64 of them are the
search space there), and a fixed stretch of prompt is each encoder's own tokenization of its text (``checkered`` is
two CLIP tokens and one T5 token): each encoder then gets a template of its own length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ...errors import AttackError
from .base import AttackContext

# a whole lower-case word: CLIP's BPE ``castle</w>``, or a sentencepiece piece ``▁castle`` (T5: PixArt; Gemma: Sana)
_WHOLE_WORD = re.compile(r"^(?:([a-z]+)</w>|\u2581([a-z]+))$")
FILLER = "the"


class TokenSpace:
    """The vocabulary an attack searches and the way its sequences reach the model.

    ``ids``: (V',) token ids, in the first encoder's tokenizer (``tokenizer``), of whole lower-case words
    (CLIP's ``"castle</w>"``, T5's / Gemma's ``"▁castle"``: PixArt, Sana) that none of ``ban`` occurs in and that
    every other encoder's tokenizer reads as one known token: their decoded text tokenizes back to the same ids (in
    the pipeline's context: :meth:`content_ids`), so a found prompt is exactly what generation sees;
    ``tables``: each text encoder's input table restricted to those words, (V', d_e), row j the same word in every
    encoder.
    """

    def __init__(self, ctx: AttackContext, ban: Sequence[str] = ()) -> None:
        # (the attacks that search it declare needs_text_gradients: Attack.build refuses a family without them)
        self.ctx = ctx
        self.tokenizers = ctx.family.text_tokenizers(ctx.pipe)  # one per text encoder
        self.tokenizer = self.tokenizers[0]
        self.full = [t.detach() for t in ctx.family.input_embeddings(ctx.pipe)]  # (V, d_e) per encoder
        banned = [b.lower() for b in ban if b]
        vocab = self.tokenizer.get_vocab()
        # per encoder: None where its tokenizer is the first one's (same ids), else word -> its one id
        self._own: list[dict[str, int] | None] = [None] * len(self.tokenizers)
        words = sorted((i, m.group(1) or m.group(2)) for t, i in vocab.items() if (m := _WHOLE_WORD.match(t)))
        for e, tok in enumerate(self.tokenizers[1:], start=1):
            if tok.get_vocab() != vocab:
                self._own[e] = _single_tokens(tok, [w for _, w in words])
        shared = [(i, w) for i, w in words if all(m is None or w in m for m in self._own)]
        if not shared:
            raise AttackError(
                "the tokenizers share no whole-word tokens to search (is the first a CLIP BPE or sentencepiece one?)"
            )
        searched = [(i, w) for i, w in shared if not any(b in w for b in banned)]
        if not searched:
            raise AttackError(f"every searchable word contains one of the banned words {banned}")
        self.ids = torch.tensor([i for i, _ in searched], dtype=torch.int64)  # (V',)
        self._enc_ids = [self.ids if m is None else torch.tensor([m[w] for _, w in searched]) for m in self._own]
        self.tables = [t[ids.to(t.device)] for t, ids in zip(self.full, self._enc_ids, strict=True)]  # (V', d_e)
        self._lead = [_leading_specials(tok) for tok in self.tokenizers]
        positions = ctx.family.text_positions(ctx.pipe)  # per encoder: tokenizer(prompt) positions that count
        self._limit = [_content_limit(tok, n) for tok, n in zip(self.tokenizers, positions, strict=True)]
        self.max_len = self._limit[0]  # BOS and EOS, in the first encoder's tokens
        fill = FILLER if any(w == FILLER for _, w in shared) else shared[0][1]
        self.filler_word = fill
        self.filler = self._one_token(fill)
        self._fill_ids = [self.filler if m is None else m[fill] for m in self._own]

    def _one_token(self, word: str) -> int:
        ids = self.content_ids(word)  # in the pipeline's context (Sana's Gemma: ``▁the`` behind the instruction)
        if len(ids) != 1:
            raise AttackError(f"the filler word {word!r} is not one token for this tokenizer")
        return int(ids[0])

    # ------------------------------------------------------------------ text
    def content_ids(self, prompt: str) -> list[int]:
        """The prompt's token ids without BOS / EOS, as the first text encoder reads them in the pipeline's context
        (:meth:`~erasekit.models.families.Family.prompt_ids`), truncated as the pipeline truncates."""
        return list(self.ctx.family.prompt_ids(self.ctx.pipe, [prompt])[0])[: self.max_len]

    def text(self, ids: Sequence[int]) -> str:
        """Decoded text of full-vocabulary ids (whole words separated by spaces)."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True)).strip()

    def roundtrips(self, ids: Sequence[int]) -> bool:
        """Whether :meth:`text` of ``ids`` tokenizes back to exactly ``ids``."""
        return self.content_ids(self.text(ids)) == list(ids)

    # ------------------------------------------------------------------ embeddings
    def encoder_ids(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """First-tokenizer ``ids`` (n,) as each encoder's own token ids (n_e,): the same ids where the tokenizers
        agree, else the encoder's tokenization of their text (its length may differ: ``checkered`` is 2 CLIP tokens,
        1 T5 token)."""
        out = []
        for tok, m in zip(self.tokenizers, self._own, strict=True):
            if m is None:
                out.append(ids)
            else:
                own = tok(self.text(ids.tolist()), add_special_tokens=False).input_ids
                out.append(torch.tensor(list(own), dtype=torch.int64))
        return out

    def lookup(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Input embeddings of full-vocabulary ``ids`` (n,) -> (n_e, d_e) per encoder (:meth:`encoder_ids`)."""
        return [t[i.to(t.device)] for t, i in zip(self.full, self.encoder_ids(ids), strict=True)]

    def soft(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Weights (..., V') over the searched vocabulary -> input embeddings weights @ E (..., d_e) per encoder."""
        return [weights.to(t.dtype) @ t for t in self.tables]

    def encode(self, rows: Sequence[Sequence[torch.Tensor]]):
        """The family's conditioning of input-embedding sequences: ``rows[b][e]`` is prompt b's (n_be, d_e) sequence
        for text encoder e (BOS / EOS / padding added by the family); differentiable in the rows."""
        lengths = [[int(x.shape[0]) for x in r] for r in rows]  # (B, encoders)
        for e, limit in enumerate(self._limit):
            bad = [n[e] for n in lengths if n[e] < 1 or n[e] > limit]
            if bad:
                raise AttackError(f"a token sequence must hold 1 to {limit} tokens for text encoder {e}, got {bad}")
        templates = [[" ".join([self.filler_word] * n[e]) for n in lengths] for e in range(len(self.tokenizers))]

        def substitute(enc: int, ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            out, lead = [], self._lead[enc]
            for b, n in enumerate(lengths):
                span = ids[b, lead : lead + n[enc]]
                if not bool((span == self._fill_ids[enc]).all()):
                    raise AttackError(f"text encoder {enc}: the template's filler tokens are not where expected")
                seq = rows[b][enc].to(embeds.dtype)  # (n_be, d_e)
                out.append(torch.cat([embeds[b, :lead], seq, embeds[b, lead + n[enc] :]]))  # BOS | seq | EOS, pad
            return torch.stack(out)

        return self.ctx.encode_substituted(templates[0], substitute, per_encoder=templates)


def _single_tokens(tokenizer, words: list[str]) -> dict[str, int]:
    """word -> its id, for the ``words`` ``tokenizer`` reads as exactly one known (not unknown) token."""
    unk = tokenizer.unk_token_id
    enc = tokenizer(words, add_special_tokens=False).input_ids
    return {w: int(ids[0]) for w, ids in zip(words, enc, strict=True) if len(ids) == 1 and ids[0] != unk}


def _leading_specials(tokenizer) -> int:
    """How many special tokens the tokenizer puts before the text (CLIP: BOS, 1; T5: none, 0)."""
    with_specials = list(tokenizer("a").input_ids)
    bare = list(tokenizer("a", add_special_tokens=False).input_ids)
    return next(i for i in range(len(with_specials)) if with_specials[i : i + len(bare)] == bare)


def _content_limit(tokenizer, positions: int) -> int:
    """Text tokens that fit in ``positions`` beside the tokenizer's special tokens (CLIP: 77 − 2; PixArt's T5:
    max_sequence_length − 1)."""
    specials = len(tokenizer("a").input_ids) - len(tokenizer("a", add_special_tokens=False).input_ids)
    return int(positions) - specials


def nearest_tokens(embeds: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index into ``table`` (V', d) of the nearest row by cosine similarity for each of ``embeds`` (..., d) (PEZ's
    projection, as P4D's ``nn_project``)."""
    q = torch.nn.functional.normalize(embeds.float(), dim=-1)  # (..., d)
    k = torch.nn.functional.normalize(table.float(), dim=-1)  # (V', d)
    return (q @ k.T).argmax(-1)  # (...,) argmax_j cos(e, E_j)
