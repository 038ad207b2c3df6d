"""Fusing an edit into low-precision storage rounds part of it away: measured, and refused above the limit.

The oracle is the pipeline itself: the edit applied without the check, its live weights read back, and the
share of ‖ΔW‖ they miss computed here (float64) — against Edit.storage_loss, which predicts it before writing.
"""

from __future__ import annotations

import pytest
import torch

import erasekit
from erasekit.edit import STORAGE_LOSS_LIMIT
from erasekit.errors import EditError
from erasekit.export import ExportError, export
from erasekit.models.tiny import build_tiny_pipeline

F64 = torch.float64


@pytest.fixture(scope="module")
def fp32():
    return build_tiny_pipeline("sdxl", seed=0)


@pytest.fixture(scope="module")
def edits(fp32):
    kw = dict(concepts=["Van Gogh"], preserve=["Claude Monet"], storage="lowrank", progress=False)
    return {"default": erasekit.erase(fp32, "uce", **kw), "small": erasekit.erase(fp32, "uce", erase_scale=1e-3, **kw)}


def _low(dtype):
    """A tiny SDXL whose UNet is stored in ``dtype`` (float8: the edited layers only, as layerwise casting stores)."""
    pipe = build_tiny_pipeline("sdxl", seed=0)
    if dtype == torch.float8_e4m3fn:
        for m in pipe.unet.modules():
            if isinstance(m, torch.nn.Linear) and m.in_features == 64:  # the cross-attention K / V
                m.weight.data = m.weight.data.to(dtype)
    else:
        pipe.unet.to(dtype)
    return pipe


def _measured_loss(pipe, edit) -> float:
    """‖(W_live − W0) − ΔW‖ / ‖ΔW‖ over the edit, from the weights apply actually wrote."""
    base = {k: pipe.unet.get_submodule(le.path).weight.detach().clone() for k, le in edit.layers.items()}
    edit.apply(pipe, max_storage_loss=None)  # float8 too: the fingerprint's tolerance follows the storage dtype
    written = {k: pipe.unet.get_submodule(le.path).weight.detach().clone() for k, le in edit.layers.items()}
    edit.revert(pipe)
    assert all(torch.equal(base[k], pipe.unet.get_submodule(le.path).weight) for k, le in edit.layers.items())
    err2 = tot2 = 0.0
    for k, le in edit.layers.items():
        B, A = le.tensors["weight.lora_B"].to(F64), le.tensors["weight.lora_A"].to(F64)  # ΔW = B A
        got = written[k].to(F64) - base[k].to(F64)
        err2 += float((got - B @ A).norm()) ** 2
        tot2 += float((B @ A).norm()) ** 2
    return (err2 / tot2) ** 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_the_predicted_loss_is_what_apply_writes(edits, dtype):
    pipe = _low(dtype)
    for edit in edits.values():
        predicted = edit.storage_loss(pipe).lost
        assert predicted == pytest.approx(_measured_loss(pipe, edit), rel=1e-6, abs=1e-9)
    assert edits["small"].storage_loss(pipe).lost > edits["default"].storage_loss(pipe).lost


def test_float32_storage_loses_nothing_and_is_not_refused(fp32, edits):
    assert edits["small"].storage_loss(fp32).lost == 0.0
    edits["small"].apply(fp32)
    edits["small"].revert(fp32)


def test_an_edit_mostly_rounded_away_is_refused_naming_the_lora_and_nothing_changes(edits, tmp_path):
    pipe = _low(torch.bfloat16)
    small, default = edits["small"], edits["default"]
    assert small.storage_loss(pipe).lost > STORAGE_LOSS_LIMIT > default.storage_loss(pipe).lost
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(EditError, match=r"bfloat16 .*'lora'.*unfused") as e:
        small.apply(pipe)
    assert "\n" not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items()) and not erasekit.Edit.applied(pipe)
    default.apply(pipe)  # a usual edit fuses (about 1 % lost in bfloat16)
    default.revert(pipe)
    small.apply(pipe, max_storage_loss=None)  # on purpose
    small.revert(pipe)
    path = small.save(tmp_path / "small.safetensors")
    with pytest.raises(EditError, match="max_storage_loss"):
        erasekit.load_edit(path, pipe)
    erasekit.load_edit(path, pipe, max_storage_loss=None).revert(pipe)


def test_the_lora_alternative_keeps_the_whole_edit_and_a_bf16_merged_export_is_refused(fp32, edits, tmp_path):
    small = edits["small"]
    res = export(small, "lora", tmp_path / "small-lora.safetensors", pipe=fp32)
    back = erasekit.load_edit(res.path, fp32, apply=False)
    for k, le in small.layers.items():  # the LoRA carries ΔW itself, in float32: nothing rounds it into W0
        want = le.tensors["weight.lora_B"].to(F64) @ le.tensors["weight.lora_A"].to(F64)
        b = back.layers[k]
        got = b.tensors["weight.lora_B"].to(F64) @ b.tensors["weight.lora_A"].to(F64)
        assert float((got - want).norm() / want.norm()) < 1e-6
    with pytest.raises(ExportError, match="'lora'"):
        export(small, "diffusers", tmp_path / "merged", pipe=fp32, save_dtype="bfloat16")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_the_same_base_in_low_precision_is_recognised_and_an_unrelated_weight_is_not(dtype):
    """The base-weight fingerprint (made in float32) matches the same weights stored in ``dtype``, over many
    weights, and never matches an unrelated weight of the same shape and norm, even in ``dtype``."""
    from erasekit.models.adapter import fingerprints_match, weight_fingerprint

    gen = torch.Generator().manual_seed(0)
    for i in range(50):
        shape = (64 + i, 48) if i % 2 else (320, 768)
        w = torch.randn(shape, generator=gen) * 0.02
        other = torch.randn(shape, generator=gen) * 0.02
        other *= w.norm() / other.norm()  # the same Frobenius norm: only the sketch can tell them apart
        stored = weight_fingerprint(w)
        assert fingerprints_match(stored, weight_fingerprint(w.to(dtype))) == (True, False)
        assert fingerprints_match(stored, weight_fingerprint(w)) == (True, True)
        assert fingerprints_match(stored, weight_fingerprint(other.to(dtype)))[0] is False
