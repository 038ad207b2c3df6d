"""The real CLIP BPE tokenizer, built offline from OpenAI's CLIP vocabulary.

Stable Diffusion 1.x / 2.x / XL all tokenize with CLIP's byte-level BPE (49,408 tokens).
The merges ship with erasekit (``assets/clip_bpe_simple_vocab_16e6.txt.gz``, MIT licence,
from OpenAI's CLIP) so that tiny test pipelines and tinyworld tokenize exactly as SD does
without any download.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, PreTrainedTokenizerBase

CLIP_VOCAB_SIZE = 49408
# Number of merges CLIP uses: vocab = 256 bytes * 2 (with/without </w>) + merges + 2 specials.
_N_MERGES = CLIP_VOCAB_SIZE - 256 * 2 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(vocab token -> id, merges as 'a b' strings) exactly as OpenAI's SimpleTokenizer builds them."""
    raw = resources.files("erasekit.assets").joinpath("clip_bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]  # line 0 is a version header
    base = list(_bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"bundled CLIP vocabulary is damaged: {len(tokens)} tokens, expected {CLIP_VOCAB_SIZE}")
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer_files(
    folder: str | os.PathLike[str], model_max_length: int = 77, pad_token: str = "<|endoftext|>"
) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs that ``CLIPTokenizer.from_pretrained`` reads.

    SD 1.x pads with ``<|endoftext|>``; SD 2.x and SDXL's second encoder pad with ``!`` -- pass
    ``pad_token`` to mirror the family you are imitating.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad_token,
            }
        ),
        encoding="utf-8",
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": model_max_length,
                "do_lower_case": True,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad_token,
            }
        ),
        encoding="utf-8",
    )
    return folder


def build_clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A ``transformers.CLIPTokenizer`` identical to SD's, built without network access."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(tmp, model_max_length=model_max_length, pad_token=pad_token)
        tok: CLIPTokenizer = CLIPTokenizer.from_pretrained(tmp)
        return tok


# ------------------------------------------------------------ T5 / Gemma stand-ins
@lru_cache(maxsize=4)
def _sentencepiece_pieces(n: int | None = None) -> tuple[str, ...]:
    """CLIP's words and word pieces as sentencepiece pieces (``word</w>`` -> ``▁word``), in CLIP's order (single
    characters, then merges by frequency); the first ``n`` when given (every text still tokenizes)."""
    vocab, _ = clip_vocab_and_merges()
    pieces: list[str] = []
    seen: set[str] = set()
    for tok in vocab:
        if tok.startswith("<|"):
            continue
        piece = "▁" + tok[: -len("</w>")] if tok.endswith("</w>") else tok
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
    return tuple(pieces[:n] if n is not None else pieces)


@lru_cache(maxsize=4)
def _unigram_json(specials: tuple[str, ...], template: str, special_ids: tuple[tuple[str, int], ...]) -> str:
    """A sentencepiece-style Unigram tokenizer (``tokenizers``) over CLIP's words, serialised (the Gemma stand-in).

    Real T5 / Gemma vocabularies are sentencepiece files erasekit does not ship; for tiny offline
    pipelines a Unigram model whose pieces are CLIP's words (``▁word``) and word pieces tokenizes
    every prompt sensibly (a concept is a few pieces, padding is real padding) with no download.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces = _sentencepiece_pieces()
    scored = [(s, 0.0) for s in specials] + [(p, -1.0 - i / len(pieces)) for i, p in enumerate(pieces)]
    tk = Tokenizer(models.Unigram(scored, unk_id=specials.index("<unk>"), byte_fallback=False))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single=template, special_tokens=list(special_ids))
    return tk.to_str()


def t5_tokenizer(model_max_length: int = 512, vocab_size: int | None = None) -> PreTrainedTokenizerBase:
    """A T5-style tokenizer (``<pad>`` 0, ``</s>`` 1 appended, ``<unk>`` 2), offline; vocabulary size ``len()``, at
    most ``vocab_size`` when given (a full-size T5-XXL's 32128 embedding rows).

    Built by ``T5TokenizerFast`` from a Unigram vocabulary (CLIP's words as ``▁word`` pieces), so its normaliser and
    pre-tokenizer are the class's own: case-sensitive, as T5 is, and a ``save_pretrained`` folder loads back into the
    same tokenizer (transformers 5 rebuilds a T5 tokenizer's pipeline from its class, not from ``tokenizer.json``).
    """
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]  # exported lazily at run time

    specials = ("<pad>", "</s>", "<unk>")
    pieces = _sentencepiece_pieces(vocab_size - len(specials) if vocab_size is not None else None)
    scored = [(s, 0.0) for s in specials] + [(p, -1.0 - i / len(pieces)) for i, p in enumerate(pieces)]
    tok: PreTrainedTokenizerBase = T5TokenizerFast(
        vocab=scored, extra_ids=0, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=model_max_length,
    )  # fmt: skip
    return tok


def gemma_tokenizer(model_max_length: int = 8192) -> PreTrainedTokenizerBase:
    """A Gemma-style tokenizer (``<bos>`` prepended, no EOS, ``<pad>`` 0), offline."""
    from tokenizers import Tokenizer
    from transformers import GemmaTokenizerFast  # type: ignore[attr-defined]  # exported lazily at run time

    tk = Tokenizer.from_str(_unigram_json(("<pad>", "<eos>", "<bos>", "<unk>"), "<bos> $A", (("<bos>", 2),)))
    tok: PreTrainedTokenizerBase = GemmaTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    return tok
