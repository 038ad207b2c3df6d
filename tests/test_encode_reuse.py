"""Encodings a fit does not repeat: SD3 / FLUX's pooled site runs only the CLIP encoders, and RECE encodes each prompt
list once (:meth:`PipelineAdapter.cached_encodings`). Both give the very columns and edit the full encoding gave."""

from __future__ import annotations

import pytest
import torch

import erasekit
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.tiny import build_tiny_pipeline

PROMPTS = ["a painting of a lighthouse", "Van Gogh", ""]


@pytest.fixture(scope="module")
def dits():
    return {f: build_tiny_pipeline(f, seed=0) for f in ("sd3", "flux")}


class _Counter:
    """Counts the calls of each text encoder's forward (a T5 pass is what costs at full size)."""

    def __init__(self, pipe):
        self.calls: dict[str, int] = {}
        self.handles = []
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            enc = getattr(pipe, name, None)
            if enc is not None:
                self.calls[type(enc).__name__ + ":" + name] = 0
                self.handles.append(enc.register_forward_hook(self._hook(type(enc).__name__ + ":" + name)))

    def _hook(self, key):
        def hook(*_):
            self.calls[key] += 1

        return hook

    def t5(self) -> int:
        return sum(n for k, n in self.calls.items() if k.startswith("T5"))

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_pooled_site_is_encoded_without_t5_and_to_the_bit(family, dits):
    pipe = dits[family]
    pooled = PipelineAdapter(pipe).for_group("pooled")
    fam = pooled.family_spec
    full = fam.encode(pipe, PROMPTS)  # every encoder, as before
    expected = fam.site_inputs(pipe, full, pooled.site).to(torch.float64)
    counter = _Counter(pipe)
    try:
        got = pooled.encode(PROMPTS)
    finally:
        counter.close()
    assert counter.t5() == 0 and sum(counter.calls.values()) > 0  # CLIP ran, T5 did not
    assert torch.equal(got.embeds, expected)
    assert got.embeds.shape == (len(PROMPTS), 1, pooled.d_in)
    assert got.last_index.tolist() == [0] * len(PROMPTS) and got.n_tokens.tolist() == [1] * len(PROMPTS)
    text = PipelineAdapter(pipe).for_group("text")  # the text stream still runs T5
    counter = _Counter(pipe)
    try:
        text.encode(PROMPTS[:1])
    finally:
        counter.close()
    assert counter.t5() == 1


def test_cached_encodings_returns_copies_and_ends_with_the_block(dits):
    adapter = PipelineAdapter(dits["sd3"]).for_group("text")
    with adapter.cached_encodings():
        a = adapter.encode(PROMPTS[:2])
        a.embeds.zero_()  # a caller's change never reaches the cache
        counter = _Counter(adapter.pipe)
        try:
            b = adapter.encode(PROMPTS[:2])
            c = adapter.encode(PROMPTS[1:])  # another list: encoded
        finally:
            counter.close()
        assert counter.t5() == 1 and b.embeds.abs().sum() > 0 and not torch.equal(b.embeds, c.embeds[:1])
    assert adapter._encode_cache is None
    assert torch.equal(b.embeds, adapter.encode(PROMPTS[:2]).embeds)  # the cached copy is the encoding itself


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_rece_encodes_each_prompt_list_once_and_gives_the_same_edit(family, dits, monkeypatch):
    pipe = dits[family]
    kw = dict(preserve=["Claude Monet"], kind="style", progress=False)
    counter = _Counter(pipe)
    try:
        cached = erasekit.erase(pipe, "rece", ["Van Gogh"], **kw)
    finally:
        counter.close()
    n_cached = counter.t5()
    from contextlib import nullcontext

    monkeypatch.setattr(PipelineAdapter, "cached_encodings", lambda self: nullcontext())
    counter = _Counter(pipe)
    try:
        plain = erasekit.erase(pipe, "rece", ["Van Gogh"], **kw)
    finally:
        counter.close()
    assert n_cached < counter.t5()  # the UCE start's concept, guide and retain encodings are reused
    assert set(cached.layers) == set(plain.layers)
    for p, layer in cached.layers.items():
        w = PipelineAdapter(pipe).linear(p).weight
        assert torch.equal(layer.materialize(w), plain.layers[p].materialize(w))
