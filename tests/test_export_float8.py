"""float8 single files of the MMDiTs (``single-file-flux``, ``single-file-sd3`` with ``save_dtype="float8_e4m3fn"``
or ``"float8_e5m2"``): plain float8 in every tensor, as ComfyUI's fp8 checkpoints store them.

Oracles: the consumer's own loader, diffusers' ``from_single_file`` with no dtype argument, must give the
weights ``edit.apply`` gives, rounded to float8 the same way (max difference 0); the file's own header must say
F8_E4M3 / F8_E5M2 for every tensor; and the edit a float8 file carries, read back from the file, loses what
``Edit.storage_loss`` predicted. FLUX's converter splits ``single_blocks.N.linear1`` at FLUX.1's published rows only,
so the tiny FLUX is read through ``from_single_file`` with that one split widened (q / k / v / mlp placed at the
published offsets, as tests/test_export_flux.py does with the converter alone); every other step is diffusers' own.
"""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
import torch
from safetensors.torch import load_file

import erasekit
from erasekit.edit import STORAGE_LOSS_LIMIT
from erasekit.export import ExportError, export
from mmdit_exports import export_record  # tests/mmdit_exports.py

E4M3, F64 = torch.float8_e4m3fn, torch.float64
FORMAT = {"flux": "single-file-flux", "sd3": "single-file-sd3"}


@pytest.fixture(scope="module")
def pipes(all_tiny_pipes, tmp_path_factory):
    """Each family's tiny pipeline and its saved folder (from_single_file's config)."""
    out = {}
    for fam in FORMAT:
        p = all_tiny_pipes[fam]
        p.set_progress_bar_config(disable=True)
        folder = tmp_path_factory.mktemp(fam) / "pipe"
        p.save_pretrained(str(folder))
        out[fam] = (p, folder)
    return out


@pytest.fixture(scope="module")
def edits(pipes):
    """Per family an edit float8 keeps most of ('large') and one it rounds away ('small', erase_scale 1e-3)."""
    kw = dict(preserve=["Claude Monet"], progress=False)
    large = {"flux": {}, "sd3": {"sites": "all"}}  # SD3's default-site edit is too small for e4m3fn on the tiny build
    return {
        fam: {
            "large": erasekit.erase(p, "uce", ["Van Gogh"], **kw, **large[fam]),
            "small": erasekit.erase(p, "uce", ["Van Gogh"], erase_scale=1e-3, **kw),
        }
        for fam, (p, _) in pipes.items()
    }


def _state(m) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _applied(edit, p) -> dict[str, torch.Tensor]:
    edit.apply(p)
    try:
        return _state(p.transformer)
    finally:
        edit.revert(p)


def _header(path) -> dict:
    """The safetensors header as the file spells it: 8 bytes of length, then JSON."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header: dict = json.loads(f.read(n))
    return header


@contextlib.contextmanager
def _published_linear1_split(like: dict[str, torch.Tensor]):
    """diffusers' FLUX converter with ``linear1`` placed at the published rows (3072 · 3, 12288) first and every
    output trimmed back to ``like``'s shapes: the one step a FLUX narrower than 3072 cannot pass as it is."""
    from diffusers.loaders import single_file_model as sfm

    entry = sfm.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]
    real = entry["checkpoint_mapping_fn"]
    hidden = like["context_embedder.weight"].shape[0]

    def convert(checkpoint, **kwargs):
        for k in [k for k in checkpoint if ".linear1." in k]:
            t = checkpoint[k]
            padded = torch.zeros(3 * 3072 + 12288, *t.shape[1:], dtype=t.dtype)  # in the file's dtype (float8)
            for j, first in enumerate((0, 3072, 6144, 9216)):
                rows = 4 * hidden if j == 3 else hidden
                padded[first : first + rows] = t[j * hidden : j * hidden + rows]
            checkpoint[k] = padded
        out = real(checkpoint, **kwargs)
        return {k: v[: like[k].shape[0]] if v.shape != like[k].shape else v for k, v in out.items()}

    entry["checkpoint_mapping_fn"] = convert
    try:
        yield
    finally:
        entry["checkpoint_mapping_fn"] = real


def _from_single_file(fam, path, folder, like) -> dict[str, torch.Tensor]:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = FluxTransformer2DModel if fam == "flux" else SD3Transformer2DModel
    ctx = _published_linear1_split(like) if fam == "flux" else contextlib.nullcontext()
    with ctx:
        # no dtype argument, as a user loads it: diffusers builds the model in float32 and casts every float8 up
        tr = cls.from_single_file(str(path), config=str(folder), subfolder="transformer")
    assert {v.dtype for v in tr.state_dict().values()} == {torch.float32}
    return _state(tr)


@pytest.mark.parametrize("fam", ["flux", "sd3"])
def test_from_single_file_reads_the_applied_weights_rounded_to_float8(pipes, edits, fam, tmp_path):
    p, folder = pipes[fam]
    edit = edits[fam]["large"]
    sl = edit.storage_loss(p, E4M3)
    assert 0 < sl.lost <= STORAGE_LOSS_LIMIT
    want = {k: v.to(E4M3).float() for k, v in _applied(edit, p).items()}
    res = export(edit, FORMAT[fam], tmp_path / "fp8.safetensors", pipe=p, save_dtype="float8_e4m3fn")
    header = _header(res.path)
    meta = header.pop("__metadata__")
    assert {v["dtype"] for v in header.values()} == {"F8_E4M3"}  # every tensor, biases and norm scales included
    assert len(header) == len(load_file(str(res.path)))
    assert json.loads(meta["erasekit_export"])["save_dtype"] == "float8_e4m3fn"
    got = _from_single_file(fam, res.path, folder, want)
    assert sorted(got) == sorted(want)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) == 0.0
    assert any(not torch.equal(want[k], _state(p.transformer)[k].to(E4M3).float()) for k in want)  # the edit is in
    assert any(f"{sl.lost:.1%}" in n for n in res.notes)  # the share lost is reported
    assert export_record(res.path)["edits"][0]["method"] == "uce"


@pytest.mark.parametrize("fam", ["flux", "sd3"])
def test_the_file_loses_what_storage_loss_predicts(pipes, edits, fam, tmp_path):
    """Read the edit back out of the float8 file: ‖(W_file − float8(W0)) − ΔW‖ / ‖ΔW‖ is Edit.storage_loss's number
    (the float32 base's own rounding to float8 cancels; it is not a loss of the edit)."""
    p, folder = pipes[fam]
    edit = edits[fam]["large"]
    res = export(edit, FORMAT[fam], tmp_path / "fp8.safetensors", pipe=p, save_dtype="float8_e4m3fn")
    base = _state(p.transformer)
    f = _from_single_file(fam, res.path, folder, base)  # the file's float8 values, by diffusers key
    err2 = tot2 = 0.0
    for le in edit.layers.values():
        w0 = base[f"{le.path}.{le.param}"]
        delta = le.materialize(w0).to(F64) - w0.to(F64)
        kept = f[f"{le.path}.{le.param}"].to(F64) - w0.to(E4M3).to(F64)
        err2 += float((kept - delta).norm()) ** 2
        tot2 += float(delta.norm()) ** 2
    assert edit.storage_loss(p, E4M3).lost == pytest.approx((err2 / tot2) ** 0.5, rel=1e-6)


@pytest.mark.parametrize("fam", ["flux", "sd3"])
def test_a_small_edit_is_refused_in_one_line_naming_the_lora_which_keeps_it(pipes, edits, fam, tmp_path):
    p, _ = pipes[fam]
    small = edits[fam]["small"]
    for dt in ("float8_e4m3fn", "float8_e5m2"):
        with pytest.raises(ExportError, match=rf"{dt} .*'lora'") as e:
            export(small, FORMAT[fam], tmp_path / "s.safetensors", pipe=p, save_dtype=dt)
        assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == [] and not erasekit.Edit.applied(p)
    res = export(small, "lora", tmp_path / "small-lora.safetensors", pipe=p)  # the lossless alternative
    back = erasekit.load_edit(res.path, p, apply=False)
    for k, le in small.layers.items():
        b = back.layers[k]
        want = le.tensors["weight.lora_B"].to(F64) @ le.tensors["weight.lora_A"].to(F64)
        got = b.tensors["weight.lora_B"].to(F64) @ b.tensors["weight.lora_A"].to(F64)
        assert float((got - want).norm() / want.norm()) < 1e-6


def test_e5m2_and_a_pipeline_alone(pipes, edits, tmp_path):
    p, folder = pipes["flux"]
    res = export(p, "single-file-flux", tmp_path / "e5m2.safetensors", save_dtype="float8_e5m2")
    header = _header(res.path)
    header.pop("__metadata__")
    assert {v["dtype"] for v in header.values()} == {"F8_E5M2"}
    want = {k: v.to(torch.float8_e5m2).float() for k, v in _state(p.transformer).items()}
    got = _from_single_file("flux", res.path, folder, want)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) == 0.0


def test_a_weight_beyond_float8s_range_is_refused_and_nothing_is_written(pipes, tmp_path):
    p, _ = pipes["sd3"]
    b = p.transformer.context_embedder.bias
    old = b.detach().clone()
    with torch.no_grad():
        b[0] = 500.0  # e4m3fn holds up to 448 (torch would saturate it to 448 silently); e5m2 up to 57344
    try:
        with pytest.raises(ExportError, match=r"context_embedder.bias.*448.*bfloat16"):
            export(p, "single-file-sd3", tmp_path / "big.safetensors", save_dtype="float8_e4m3fn")
        assert not (tmp_path / "big.safetensors").exists()
        export(p, "single-file-sd3", tmp_path / "e5m2.safetensors", save_dtype="float8_e5m2")
    finally:
        with torch.no_grad():
            b.copy_(old)


def test_other_formats_refuse_float8_before_any_work_and_the_cli_takes_it(pipes, edits, tmp_path, capsys):
    from erasekit.cli import main

    p, folder = pipes["sd3"]
    for fmt, kw in (("diffusers", {}), ("lora", {}), ("single-file", {})):
        refusal = rf"the '{fmt}' format does not store float8_e4m3fn.*'single-file-flux' / 'single-file-sd3'"
        with pytest.raises(ExportError, match=refusal):
            export(edits["sd3"]["large"], fmt, tmp_path / f"{fmt}.out", pipe=p, save_dtype="float8_e4m3fn", **kw)
    with pytest.raises(ExportError, match="float8_e4m3fn or float8_e5m2"):
        export(p, "single-file-sd3", tmp_path / "x.safetensors", save_dtype="float4")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "sd3-fp8.safetensors"
    argv = ["export", "--model", str(folder), "--format", "single-file-sd3", "--save-dtype", "float8_e4m3fn"]
    assert main([*argv, "--out", str(out)]) == 0
    header = _header(out)
    header.pop("__metadata__")
    assert {v["dtype"] for v in header.values()} == {"F8_E4M3"}
    bad = ["export", "--model", str(tmp_path / "no-such-model"), "--format", "diffusers", "--save-dtype", "fp8_e4m3fn"]
    assert main([*bad, "--out", str(tmp_path / "d")]) != 0  # refused before the model load: the path is never read
    assert "'single-file-sd3'" in capsys.readouterr().err
