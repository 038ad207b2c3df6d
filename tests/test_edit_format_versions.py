"""Edit format 3 (``<component>/<path>`` keys) and the files earlier erasekits wrote.

``tests/data/edits/v2-*.safetensors`` were written by erasekit's format-2 writer (the commit before format 3,
``git archive ae3fd72 src``) from ``build_tiny_pipeline(family, seed=0)``: a UCE low-rank edit of tiny SD and a
SPACE CSR edit of tiny PixArt-Σ (a transformer denoiser). They must load and apply to the weights their tensors
say, computed here from the raw safetensors without erasekit's parser, and re-save as format 3 unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import erasekit
from erasekit.edit import Edit
from erasekit.edit_format import FORMAT_VERSION, content_sha256
from erasekit.errors import EditFileError
from erasekit.models.families import identify
from erasekit.models.tiny import build_tiny_pipeline

DATA = Path(__file__).parent / "data" / "edits"
V2_FILES = {"sd": DATA / "v2-sd-uce-lowrank.safetensors", "pixart": DATA / "v2-pixart-space-csr.safetensors"}


def _raw(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["erasekit"]), {k: f.get_tensor(k) for k in f.keys()}


def _oracle(kind: str, t: dict[str, torch.Tensor], w0: torch.Tensor) -> torch.Tensor:
    """The new weight a stored layer means, from its raw tensors (format 2's definition), in w0's dtype."""
    if kind == "dense":
        return t["weight"].to(w0.dtype)
    if kind == "csr":
        crow, col, val = (t[f"weight.{n}"].tolist() for n in ("crow_indices", "col_indices", "values"))
        w = torch.zeros(w0.shape, dtype=torch.float32)
        for row in range(w0.shape[0]):  # row r holds values crow[r]:crow[r+1] at columns col[...]
            for j in range(crow[row], crow[row + 1]):
                w[row, col[j]] = val[j]
        return w.to(w0.dtype)
    return (w0.double() + t["weight.lora_B"].double() @ t["weight.lora_A"].double()).to(w0.dtype)  # W0 + B A


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("family", sorted(V2_FILES))
def test_a_format_2_file_loads_applies_identically_and_resaves_as_format_3(family, tmp_path):
    path = V2_FILES[family]
    doc, tensors = _raw(path)
    assert doc["format_version"] == 2 and all("/" not in k for k in doc["layers"])
    pipe = build_tiny_pipeline(family, seed=0)
    fam = identify(pipe)
    den = fam.get_denoiser(pipe)
    before = _state(den)
    expected = dict(before)
    for key, layer in doc["layers"].items():
        t = {k[len(key) + 1 :]: v for k, v in tensors.items() if k.startswith(key + ".")}
        expected[f"{key}.weight"] = _oracle(layer["kind"], t, before[f"{key}.weight"])

    edit = erasekit.load_edit(path, pipe)
    assert edit.format_version == 2 and edit.component == fam.denoiser
    after = _state(den)
    assert after.keys() == expected.keys()
    assert all(torch.equal(after[k], expected[k]) for k in after), "a format-2 file applied other weights"
    assert any(not torch.equal(after[k], before[k]) for k in after)

    # re-saved by this erasekit: format 3, every layer and tensor named '<denoiser>/<path>', the same weights
    out = edit.save(tmp_path / "v3.safetensors")
    edit.revert(pipe)
    assert all(torch.equal(v, before[k]) for k, v in _state(den).items())
    doc3, tensors3 = _raw(out)
    assert doc3["format_version"] == FORMAT_VERSION == 3 and doc3["base"]["family"] == fam.name
    assert sorted(doc3["layers"]) == sorted(f"{fam.denoiser}/{k}" for k in doc["layers"])
    assert sorted(tensors3) == sorted(f"{fam.denoiser}/{k}" for k in tensors)
    assert all(torch.equal(tensors3[f"{fam.denoiser}/{k}"], v) for k, v in tensors.items())
    again = erasekit.load_edit(out, pipe)
    assert again.digest == edit.digest and sorted(again.layers) == sorted(doc["layers"])
    assert all(torch.equal(v, after[k]) for k, v in _state(den).items())
    again.revert(pipe)


def test_a_format_2_checksum_does_not_pass_as_format_3():
    """Each version has its own checksum domain: relabelling a v2 document as v3 is caught before its keys are."""
    doc, tensors = _raw(V2_FILES["sd"])
    doc["format_version"] = 3
    from erasekit.edit_format import parse_metadata

    with pytest.raises(EditFileError, match="checksum"):
        parse_metadata(json.dumps(doc), tensors)
    doc["content_sha256"] = content_sha256(doc, tensors)  # a consistent rewrite: the keys must still be refused
    with pytest.raises(EditFileError, match="<component>/<module path>"):
        parse_metadata(json.dumps(doc), tensors)


def _rekey(src: Path, dst: Path, old: str, new: str) -> Path:
    doc, tensors = _raw(src)
    doc["layers"] = {new + k[len(old) :] if k.startswith(old) else k: v for k, v in doc["layers"].items()}
    tensors = {new + k[len(old) :] if k.startswith(old) else k: v for k, v in tensors.items()}
    doc["content_sha256"] = content_sha256(doc, tensors)
    save_file(tensors, str(dst), metadata={"erasekit": json.dumps(doc)})
    return dst


def test_a_component_the_family_does_not_edit_is_refused_and_nothing_changes(tmp_path):
    pipe = build_tiny_pipeline("sd", seed=0)
    edit = erasekit.erase(pipe, method="uce", concepts=["Van Gogh"], progress=False)
    good = edit.save(tmp_path / "good.safetensors")
    bad = _rekey(good, tmp_path / "bad.safetensors", "unet/", "text_encoder/")
    before = _state(pipe.unet)
    with pytest.raises(EditFileError, match="edits the 'unet' of a sd pipeline, not its 'text_encoder'"):
        erasekit.load_edit(bad, pipe)
    assert all(torch.equal(v, before[k]) for k, v in _state(pipe.unet).items()) and not Edit.applied(pipe)
    loaded = Edit.load(bad)  # parsed: the component is kept, and the key says it
    assert all(k.startswith("text_encoder/") for k in loaded.layers)
