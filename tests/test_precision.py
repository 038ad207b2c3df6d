"""Half-precision pipelines on a CPU (issue 16): fits and generation run in a fast dtype, the
pipeline keeps its dtype and bytes, and the result equals a float32 run on the same weights."""

from __future__ import annotations

import copy

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
        edit = erasekit.erase(half, method="pure", concepts=["a red circle"], preserve=["a blue square"], kind="object",
                              progress=False, steps=2, n_latents=1)
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
