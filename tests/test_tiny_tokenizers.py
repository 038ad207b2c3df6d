"""The offline tokenizer stand-ins of the tiny pipelines: a saved tiny pipeline is the in-memory one.

Real T5 tokenizers are case-sensitive sentencepiece models, and transformers 5 rebuilds a T5 tokenizer's normaliser
and pre-tokenizer from its class when a folder loads; the stand-in must survive that, or a tiny DiT saved with
``save_pretrained`` tokenizes (and so encodes and erases) differently from the one that was built.
"""

from __future__ import annotations

import pytest
import torch

from erasekit.models.tokenizer import t5_tokenizer

PROMPTS = ("a painting in the style of Van Gogh", "a red circle", "  Two   spaces ", "image of ", "Snoopy, a dog")


@pytest.mark.parametrize("vocab_size", [None, 32128])
def test_t5_stand_in_round_trips_and_keeps_t5s_special_ids(tmp_path, vocab_size):
    from transformers import T5TokenizerFast

    tok = t5_tokenizer(vocab_size=vocab_size)
    tok.save_pretrained(str(tmp_path))
    back = T5TokenizerFast.from_pretrained(str(tmp_path))
    assert [back(p).input_ids for p in PROMPTS] == [tok(p).input_ids for p in PROMPTS]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert vocab_size is None or len(tok) <= vocab_size
    for p in PROMPTS:
        ids = tok(p).input_ids
        assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids, p
    assert tok("Van Gogh").input_ids != tok("van gogh").input_ids  # case-sensitive, as T5 is


@pytest.mark.parametrize("family", ["sd3", "flux", "pixart"])
def test_a_saved_tiny_t5_pipeline_encodes_as_the_built_one(tmp_path, family):
    from diffusers import DiffusionPipeline

    from erasekit.models.families import identify
    from erasekit.models.tiny import build_tiny_pipeline

    built = build_tiny_pipeline(family, seed=0)
    built.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    fam = identify(built)
    prompts = list(PROMPTS)
    a, b = fam.encode(built, prompts), fam.encode(loaded, prompts)
    torch.testing.assert_close(b.embeds, a.embeds, rtol=0, atol=0)


def test_a_saved_tiny_sana_encodes_as_the_built_one(tmp_path):
    """Sana's Gemma stand-in survives a save only as a plain fast tokenizer (save_tiny_pipeline marks it so):
    GemmaTokenizerFast.from_pretrained rebuilds it character by character."""
    from diffusers import DiffusionPipeline

    from erasekit.models.families import identify
    from erasekit.models.tiny import build_tiny_pipeline, save_tiny_pipeline

    built = build_tiny_pipeline("sana", seed=0)
    loaded = DiffusionPipeline.from_pretrained(save_tiny_pipeline(tmp_path, "sana", seed=0))
    fam = identify(built)
    prompts = list(PROMPTS)
    assert [loaded.tokenizer(p).input_ids for p in prompts] == [built.tokenizer(p).input_ids for p in prompts]
    a, b = fam.encode(built, prompts), fam.encode(loaded, prompts)
    torch.testing.assert_close(b.embeds, a.embeds, rtol=0, atol=0)
