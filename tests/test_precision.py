"""Half-precision pipelines on a CPU (issue 16): fits and generation run in a fast dtype, the
pipeline keeps its dtype and bytes, and the result equals a float32 run on the same weights."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import erasekit
from erasekit.models import precision
from erasekit.models.precision import compute_dtype, computing_in, computing_in_layers


def _snapshot(pipe) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        m = getattr(pipe, name, None)
        if m is not None:
            out.update({f"{name}.{k}": v.clone() for k, v in m.state_dict().items()})
    return out


def _same_bytes(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def half_and_full():
    """A float16 tiny SD1 and SDXL pipeline, and float32 copies holding exactly the same (fp16-representable) values."""
    from erasekit.models.tiny import build_tiny_pipeline

    out = {}
    for fam in ("sd", "sdxl"):
        half = build_tiny_pipeline(fam, seed=0).to(torch.float16)
        full = copy.deepcopy(half).to(torch.float32)
        out[fam] = (half, full)
    for fam in ("sd", "sdxl"):  # the same for bfloat16 loads
        half = build_tiny_pipeline(fam, seed=0).to(torch.bfloat16)
        out[fam, "bfloat16"] = (half, copy.deepcopy(half).to(torch.float32))
    return out


def test_compute_dtype_rule():
    assert compute_dtype("cpu", torch.float16) == torch.float32
    assert compute_dtype("cpu", torch.float32) == torch.float32
    assert compute_dtype("cuda", torch.float16) == torch.float16  # accelerators keep the load dtype
    assert compute_dtype("cpu", torch.bfloat16) == torch.float32  # on every CPU, whatever kernels it advertises
    assert compute_dtype("cuda", torch.bfloat16) == torch.bfloat16
    assert precision.slow_dtype_notice("cpu", torch.float32) is None
    assert "float32" in precision.slow_dtype_notice("cpu", torch.float16)


def test_computing_in_restores_identity_and_bytes():
    m = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)).half()
    params = list(m.parameters())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with computing_in([m], torch.float32):
        assert all(p.dtype == torch.float32 for p in m.parameters())
        y = m(torch.randn(2, 4))
        assert y.dtype == torch.float32
        with computing_in([m], torch.float32):  # re-entrant: nothing to borrow twice
            pass
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]
    assert _same_bytes(before, m.state_dict())


def test_computing_in_refuses_to_lose_a_write():
    m = nn.Linear(4, 3).half()
    before = m.weight.detach().clone()
    with pytest.raises(RuntimeError, match="modified"):
        with computing_in([m], torch.float32), torch.no_grad():
            m.weight.add_(1.0)
    assert torch.equal(m.weight, before) and m.weight.dtype == torch.float16


def test_computing_in_layers_matches_a_float32_copy_and_restores():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.GELU(), nn.LayerNorm(8)).half()
    full = copy.deepcopy(m).float()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ids = torch.randint(0, 10, (3, 5))
    seen = []
    hook = m[1].register_forward_hook(lambda mod, a, o: seen.append(mod.weight.dtype))
    with computing_in_layers([m], torch.float32):
        y = m(ids)
        # between forwards every weight is back in float16: the extra memory is one layer at a time
        assert all(p.dtype == torch.float16 for p in m.parameters())
    hook.remove()
    assert seen == [torch.float32]
    assert torch.equal(y, full(ids))
    assert _same_bytes(before, m.state_dict())


@pytest.mark.parametrize("fam", ["sd", "sdxl"])
@pytest.mark.parametrize("method,options", [("uce", {}), ("space", {"target_sparsity": 0.8})])
@pytest.mark.parametrize("load", ["float16", "bfloat16"])
def test_half_fit_equals_float32_fit(half_and_full, fam, method, options, load):
    half, full = half_and_full[fam] if load == "float16" else half_and_full[fam, load]
    before = _snapshot(half)
    kw = dict(concepts=["a red circle"], preserve=["a blue square"], kind="object", progress=False, **options)
    e_half = erasekit.erase(half, method=method, **kw)
    e_full = erasekit.erase(full, method=method, **kw)
    assert _same_bytes(before, _snapshot(half)), "fitting changed the float16 pipeline"
    assert e_half.compute_dtype == "float32" and e_full.compute_dtype == "float32"
    for path, le in e_half.layers.items():
        w0 = full.unet.get_submodule(path).weight.detach()
        d_half = le.materialize(w0) - w0
        d_full = e_full.layers[path].materialize(w0) - w0
        rel = float((d_half - d_full).norm() / d_full.norm().clamp_min(1e-12))
        # the only difference: diffusers rounds the encoder's output to the load dtype, as the UNet receives it
        # (float16 keeps 11 significant bits, bfloat16 8: eight times coarser)
        tol = 2e-2 if load == "float16" else 5e-2
        assert rel < tol, f"{path}: {load}-loaded fit differs from the float32 fit by {rel:.2e}"
    # each edit fits the other pipeline (fingerprints tolerate the dtype)
    e_half.check_compatible(full)
    e_full.check_compatible(half)


def test_pure_runs_the_unet_in_float32_and_leaves_it_float16(half_and_full):
    half, _ = half_and_full["sd"]
    before = _snapshot(half)
    seen = []
    # a forward hook on conv_in runs while that layer holds its borrowed float32 weight (one layer at a time)
    hook = half.unet.conv_in.register_forward_hook(lambda mod, args, out: seen.append((mod.weight.dtype, out.dtype)))
    # ... and no whole float32 copy of the UNet exists: when the UNet's forward starts, its layers are still float16
    whole = []
    hook_whole = half.unet.register_forward_pre_hook(lambda mod, args: whole.append(mod.conv_out.weight.dtype))
    try:
        edit = erasekit.erase(
            half,
            method="pure",
            concepts=["a red circle"],
            preserve=["a blue square"],
            kind="object",
            progress=False,
            steps=2,
            n_latents=1,
        )
    finally:
        hook.remove()
        hook_whole.remove()
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    assert whole and set(whole) == {torch.float16}
    assert _same_bytes(before, _snapshot(half))
    assert edit.compute_dtype == "float32"
    # fingerprints were taken in the stored dtype
    fp = next(iter(edit.fingerprints.values()))
    assert fp["dtype"] == "float16"


def test_half_generation_equals_float32_copy(half_and_full):
    from erasekit.generate import generate

    half, full = half_and_full["sd"]
    before = _snapshot(half)
    a = generate(half, ["a red circle"], [0, 1], steps=2)
    b = generate(full, ["a red circle"], [0, 1], steps=2)
    assert _same_bytes(before, _snapshot(half))
    import numpy as np

    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_compute_dtype_survives_save_and_load(half_and_full, tmp_path):
    half, _ = half_and_full["sd"]
    edit = erasekit.erase(half, method="uce", concepts=["a red circle"], kind="object", progress=False)
    path = edit.save(tmp_path / "e.safetensors")
    assert erasekit.Edit.load(path).compute_dtype == "float32"


def test_computing_in_layers_trains_through_borrowed_layers_with_float32_gradients():
    """Gradients through layers borrowed one at a time equal a float32 copy's, bit for bit, and the weights stay
    float16."""
    torch.manual_seed(0)
    m = (
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.GroupNorm(2, 8),
            nn.SiLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Flatten(),
            nn.Linear(8 * 6 * 6, 5),
        )
        .half()
        .requires_grad_(False)
    )
    full = copy.deepcopy(m).float()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    x_full = x.detach().clone().requires_grad_(True)
    with computing_in_layers([m], torch.float32):
        y = m(x)
        assert all(p.dtype == torch.float16 for p in m.parameters())  # between forward and backward too
        y.square().sum().backward()
    full(x_full).square().sum().backward()
    assert torch.equal(x.grad, x_full.grad)
    assert _same_bytes(before, m.state_dict())


_MEMORY_PROBE = r"""
import ctypes, sys, torch
from torch import nn
from erasekit.models.precision import computing_in, computing_in_layers
ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: freed copies leave the RSS at once
torch.set_num_threads(1)

def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("RssAnon:"))

torch.manual_seed(0)
layers, d = 8, 1024
m = nn.Sequential(*[nn.Linear(d, d) for _ in range(layers)]).half().requires_grad_(False)
x = torch.randn(1, d, requires_grad=True)
borrow = computing_in_layers if sys.argv[1] == "layers" else computing_in
base = rss()
with borrow([m], torch.float32):
    y = m(x)  # the graph now holds what backward needs
    held = rss() - base
    y.sum().backward()
print(held / (layers * d * d * 4))  # share of one whole float32 copy of the weights
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc (Linux)")
def test_training_through_borrowed_layers_holds_no_float32_copy_of_the_model():
    """Autograd keeps what backward needs; with per-layer borrowing that is the float16 originals, not float32 copies.

    Side by side with the whole-model borrow (``computing_in``), which must hold one full copy,
    so the probe can tell."""
    import subprocess
    import sys

    def share(kind: str) -> float:
        out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, kind], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    whole, per_layer = share("whole"), share("layers")
    assert whole > 0.9, f"control: the whole-model borrow should hold a full float32 copy, held {whole:.2f} of it"
    assert per_layer < 0.3, f"per-layer borrowing held {per_layer:.2f} of a float32 copy of the model until backward"


@pytest.mark.parametrize("fam", ["sd", "sdxl"])
@pytest.mark.parametrize(
    "method,options",
    [
        ("esd-x", {"iterations": 3, "pool_steps": 2, "pool_latents": 1}),
        ("ace", {"train_steps": 2, "pool_steps": 2, "pool_latents": 1, "batch_size": 1, "adv_steps": 1}),
        ("mace", {"train_steps": 2, "n_images": 1, "image_steps": 2, "prior": "none", "augment": False}),
    ],
)
def test_half_fine_tuning_borrows_one_layer_at_a_time_and_matches_float32(half_and_full, fam, method, options):
    """Fine-tuning a float16 load on a CPU trains in float32 without a float32 copy of the UNet (issue 14)."""
    half, full = half_and_full[fam]
    before = _snapshot(half)
    whole = []  # dtype of a UNet layer whenever the UNet's forward starts: float16 means no whole copy exists
    hook = half.unet.register_forward_pre_hook(lambda mod, args: whole.append(mod.conv_out.weight.dtype))
    kw = dict(concepts=["a red circle"], preserve=["a blue square"], kind="object", progress=False, **options)
    try:
        e_half = erasekit.erase(half, method=method, **kw)
    finally:
        hook.remove()
    e_full = erasekit.erase(full, method=method, **kw)
    assert whole and set(whole) == {torch.float16}
    assert _same_bytes(before, _snapshot(half)), "fine-tuning changed the float16 pipeline"
    assert e_half.compute_dtype == "float32" and e_half.layers.keys() == e_full.layers.keys()
    for path, le in e_half.layers.items():
        w0 = (
            full.unet.get_parameter(path)
            if path.endswith((".weight", ".bias"))
            else full.unet.get_submodule(path).weight
        )
        w0 = w0.detach()
        d_half, d_full = le.materialize(w0) - w0, e_full.layers[path].materialize(w0) - w0
        rel = float((d_half - d_full).norm() / d_full.norm().clamp_min(1e-12))
        # the float16 pipeline rounds its prompt embeddings and its trajectory latents to float16, as it does when
        # it generates; the float32 copy does not (measured ≤ 1.1e-2 on these pipelines)
        assert rel < 3e-2, f"{method} {path}: float16-loaded fit differs from the float32 fit by {rel:.2e}"


def test_a_write_into_a_borrowed_layer_is_refused_and_the_original_kept():
    """A forward that writes into the weight erasekit lent it (in the compute dtype) loses that write with the copy:
    computing_in_layers says so, and the half-precision original is back, unchanged."""
    from erasekit.models.precision import computing_in_layers

    class Writes(torch.nn.Linear):
        def forward(self, x):
            with torch.no_grad():
                self.weight.add_(1.0)
            return super().forward(x)

    lin = Writes(4, 3).to(torch.float16)
    original, before = lin.weight, lin.weight.detach().clone()
    with pytest.raises(RuntimeError, match="modified while erasekit held it"):
        with computing_in_layers([lin], torch.float32):
            lin(torch.randn(2, 4, dtype=torch.float16))
    assert lin.weight is original and lin.weight.dtype == torch.float16 and torch.equal(lin.weight, before)


def test_every_text_encoder_of_sd3_computes_in_float32_on_a_cpu():
    """SD3 holds T5 as ``text_encoder_3``: a float16 SD3 on a CPU generates (and encodes) with all three encoders in
    float32, and every one is float16 again afterwards."""
    from erasekit.models.precision import generating_in_compute_dtype, text_encoders
    from erasekit.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd3", seed=0).to(torch.float16)
    encoders = text_encoders(pipe)
    assert pipe.text_encoder_3 is not None and any(e is pipe.text_encoder_3 for e in encoders)
    with generating_in_compute_dtype(pipe) as dtype:
        assert dtype == torch.float32
        assert {next(e.parameters()).dtype for e in encoders} == {torch.float32}
    assert {next(e.parameters()).dtype for e in encoders} == {torch.float16}


class _Recording(nn.Embedding):
    """An embedding that records the table each forward computes with (and scales after the lookup, as Gemma's)."""

    seen: list[tuple[int, torch.dtype]]

    def forward(self, input_ids):  # type: ignore[override]
        self.seen.append((int(self.weight.shape[0]), self.weight.dtype))
        return super().forward(input_ids) * torch.tensor(3.0, dtype=self.weight.dtype)


def test_a_token_table_is_borrowed_row_by_row_where_it_takes_no_gradient():
    """An input-token table (a text encoder's) that takes no gradient is not copied whole into the compute dtype:
    each call casts the rows it reads (Gemma-2's 2.2 GiB float32 table at full size), with the values of the
    whole-table copy, and hooks on the table still see the call's own ids; with a gradient to take, the whole table."""
    torch.manual_seed(0)
    emb = _Recording(1000, 8, padding_idx=7).to(torch.bfloat16)  # requires grad, as a loaded encoder's table does
    emb.seen = []
    m = nn.Sequential(emb, nn.Linear(8, 8).requires_grad_(False)).to(torch.bfloat16)
    ids = torch.tensor([[5, 900, 7, 7], [900, 12, 5, 999]])
    with computing_in([m], torch.float32):  # the oracle: the whole model copied to float32
        want = m(ids)
    emb.seen.clear()
    got_ids = []
    hook = emb.register_forward_hook(lambda mod, a, o: got_ids.append(a[0]))
    weight = emb.weight
    with computing_in_layers([m], torch.float32), torch.no_grad():
        got = m(ids)
    hook.remove()
    assert torch.equal(got, want) and got.dtype == torch.float32
    assert emb.seen == [(5, torch.float32)]  # the 5 distinct ids' rows, not 1000
    emb.seen.clear()
    with computing_in_layers([m], torch.float32):  # grad mode on and a table that requires it: the whole table
        y = m(ids)
        y.sum().backward()
    assert emb.seen == [(1000, torch.float32)] and torch.equal(y.detach(), want)
    assert emb.weight.grad is not None and emb.weight.grad.dtype == torch.bfloat16
    assert torch.equal(got_ids[0], ids)  # hooks see the ids the caller gave
    assert emb.weight is weight and emb.padding_idx == 7 and "forward" not in vars(emb)  # all put back


def test_half_text_encoders_encode_as_with_their_whole_tables_borrowed(all_tiny_pipes):
    """Sana's Gemma-2 (a scaled lookup) and PixArt's T5 in bfloat16, borrowed layer by layer: with the token table
    borrowed row by row the states are those of the whole table borrowed (the earlier path, which a table that
    requires grad still takes), bit for bit. (T5 is not its whole-model float32 copy in either: its feed-forward casts
    to wo's stored dtype before wo is borrowed.)"""
    for build in ("sana", "pixart"):
        te = copy.deepcopy(all_tiny_pipes[build].text_encoder).to(torch.bfloat16).requires_grad_(False)
        table = te.get_input_embeddings()
        ids = torch.tensor([[2, 40, 41, 42, 0, 0], [2, 43, 40, 44, 45, 46]])
        mask = (ids != 0).long()
        table.weight.requires_grad_(True)
        with computing_in_layers([te], torch.float32):  # grad mode on, a table that requires it: the whole table
            want = te(ids, attention_mask=mask).last_hidden_state.detach()
        with computing_in_layers([te], torch.float32), torch.no_grad():
            got = te(ids, attention_mask=mask).last_hidden_state
        assert torch.equal(got, want), build
