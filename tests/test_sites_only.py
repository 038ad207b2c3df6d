"""load_pipeline(denoiser='sites'): the denoiser holds only its static edit sites, and the edit is the same.

Over every family with a tiny build: the closed-form methods fit exactly the edit they fit on the fully loaded
pipeline (to the bit), it checks as compatible both ways and applies / reverts on the sites-only pipeline; the
denoiser's other weights are never read (they stay on ``meta``) whatever the load dtype; everything that would run
the denoiser or needs the whole of it is refused before anything runs.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

import erasekit
from erasekit.errors import ModelError
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.precision import denoiser_of
from erasekit.models.sites_only import is_sites_only
from erasekit.models.tiny import save_tiny_pipeline

FAMILIES = ("sd", "sdxl", "pixart", "sana", "sd3", "flux")
CONCEPTS = erasekit.ConceptSet(erase=("Van Gogh",), kind="style", preserve=("Claude Monet", "Rembrandt"))
CLOSED_FORMS = [("uce", {}), ("space", {}), ("pure", {"basis": "text"})]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(family, the fully loaded pipeline, the sites-only one) from one saved tiny folder, in float32."""
    folder = save_tiny_pipeline(tmp_path_factory.mktemp(request.param) / "pipe", request.param)
    full = erasekit.load_pipeline(str(folder), dtype="float32")
    sites = erasekit.load_pipeline(str(folder), dtype="float32", denoiser="sites")
    return request.param, full, sites


def _digest(adapter: PipelineAdapter) -> dict[str, str]:
    return {
        p: hashlib.sha256(adapter.linear(p).weight.detach().contiguous().numpy().tobytes()).hexdigest()
        for p in adapter.paths
    }


def test_only_the_sites_are_read(pair):
    _, full, sites = pair
    den, ref = denoiser_of(sites), denoiser_of(full)
    assert is_sites_only(den) and not is_sites_only(ref) and isinstance(den, type(ref))
    adapter, ref_adapter = PipelineAdapter(sites), PipelineAdapter(full)
    assert adapter.paths == ref_adapter.paths and adapter.groups == ref_adapter.groups
    loaded = {n for n, p in den.named_parameters() if p.device.type != "meta"}
    site_params = {f"{p}.{n}" for p in adapter.paths for n, _ in adapter.linear(p).named_parameters()}
    own_inputs = {  # PixArt / Sana: the caption modules the sites' input passes through
        f"{k.split('.', 1)[1]}.{n}"
        for k, m in type(adapter.family_spec).site_input_modules(adapter.family_spec, sites).items()
        if k.startswith("transformer.")
        for n, _ in m.named_parameters()
    }
    assert site_params <= loaded and loaded == site_params | own_inputs
    assert len(loaded) < len(list(den.parameters()))  # the rest stays on meta
    assert den.device == ref.device and den.dtype == ref.dtype
    for n in loaded:  # what was read is the stored weight
        assert torch.equal(den.get_parameter(n), ref.get_parameter(n))


@pytest.mark.parametrize("method,options", CLOSED_FORMS, ids=[m for m, _ in CLOSED_FORMS])
def test_same_edit_as_the_full_pipeline(pair, method, options, tmp_path):
    _, full, sites = pair
    a = erasekit.erase(full, method, CONCEPTS, progress=False, **options)
    b = erasekit.erase(sites, method, CONCEPTS, progress=False, **options)
    ref, adapter = PipelineAdapter(full), PipelineAdapter(sites)
    assert set(a.layers) == set(b.layers) == set(adapter.paths)
    for p in a.layers:
        assert torch.equal(a.layers[p].materialize(ref.linear(p).weight), b.layers[p].materialize(ref.linear(p).weight))
    a.check_compatible(sites)  # fingerprints of the sites agree both ways
    b.check_compatible(full)
    loaded = erasekit.Edit.load(b.save(tmp_path / "e.safetensors"))
    before = _digest(adapter)
    loaded.apply(sites)
    a.apply(full)
    assert _digest(adapter) == _digest(ref) != before  # the same weights written
    loaded.revert(sites)
    a.revert(full)
    assert _digest(adapter) == before


def test_the_rest_is_refused(pair):
    family, _, sites = pair
    with pytest.raises(ModelError, match="only its edit sites"):
        erasekit.erase(sites, "esd-x", ["Van Gogh"], progress=False)
    if family in ("sd3", "flux"):
        with pytest.raises(ModelError, match="only its edit sites"):
            erasekit.erase(sites, "uce", ["Van Gogh"], progress=False, sites="joint")
    with pytest.raises(ModelError, match="only its edit sites"):
        denoiser_of(sites)(torch.zeros(1))  # generation calls the denoiser: refused before it runs


def test_sites_only_needs_a_local_folder():
    with pytest.raises(ModelError, match="local diffusers folder"):
        erasekit.load_pipeline("tinyworld", denoiser="sites")
    with pytest.raises(ModelError, match="unknown denoiser load"):
        erasekit.load_pipeline("tiny-sd", denoiser="half")


def test_single_file_export_is_refused(tmp_path):
    from erasekit.export.single_file import export_single_file

    folder = save_tiny_pipeline(tmp_path / "sd", "sd")
    sites = erasekit.load_pipeline(str(folder), denoiser="sites")
    with pytest.raises(ModelError, match="single-file export"):
        export_single_file(sites, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_erase_with_sites_only_writes_the_same_edit(tmp_path):
    """`erasekit erase --denoiser sites` writes the edit `erasekit erase` writes from the full load."""
    from erasekit.cli import main

    folder = save_tiny_pipeline(tmp_path / "flux", "flux")
    common = ["erase", "--model", str(folder), "--erase", "Van Gogh", "--preserve", "Rembrandt", "--method", "uce"]
    assert main([*common, "--out", str(tmp_path / "full.safetensors")]) == 0
    assert main([*common, "--denoiser", "sites", "--out", str(tmp_path / "sites.safetensors")]) == 0
    full, sites = (erasekit.Edit.load(tmp_path / f"{n}.safetensors") for n in ("full", "sites"))
    pipe = erasekit.load_pipeline(str(folder))
    ref = PipelineAdapter(pipe)
    assert set(full.layers) == set(sites.layers) == set(ref.paths)
    for p in full.layers:
        assert torch.equal(
            full.layers[p].materialize(ref.linear(p).weight), sites.layers[p].materialize(ref.linear(p).weight)
        )
