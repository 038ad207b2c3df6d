"""Every bad input gets a clear error that names the problem, and nothing is changed."""

import json
import struct
from types import SimpleNamespace

import pytest
import torch

import erasekit
from erasekit import ConceptSet
from erasekit.errors import ConceptError, EditFileError, MethodError, ModelError
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.loading import load_pipeline


def _unet_state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def _same(pipe, state):
    return all(torch.equal(state[k], v) for k, v in pipe.unet.state_dict().items())


# ----------------------------------------------------------------- concepts
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(erase=()), "no concept to erase"),
        (dict(erase=("",)), "empty erase concept"),
        (dict(erase=("Van Gogh", " van  gogh")), "duplicate erase concept"),
        (dict(erase=("Van Gogh",), preserve=("Monet", "monet")), "duplicate preserve concept"),
        (dict(erase=("Van Gogh",), preserve=("VAN GOGH",)), "both erased and preserved"),
        (dict(erase=("a", "b"), guide=("x", "y", "z")), "3 guides for 2 erased"),
        (dict(erase=("art",), kind="style"), "its own guide"),
        (dict(erase=("x",), kind="painting"), "unknown concept kind"),
        (dict(erase=("x",), templates=("no placeholder",)), "exactly once"),
    ],
)
def test_bad_concept_sets_are_refused(kwargs, match):
    with pytest.raises(ConceptError, match=match):
        ConceptSet(**kwargs)


def test_concept_templates_and_default_guides():
    cs = ConceptSet(erase=("Van Gogh",), kind="style", templates=True, preserve=("Monet",))
    pairs = cs.erase_pairs()
    assert ("painting by Van Gogh", "painting by art") in pairs and len(pairs) == len(cs.template_list)
    assert ConceptSet(erase=("nudity",), kind="nsfw").guides == ("",)
    assert ConceptSet.from_dict(cs.to_dict()).to_dict() == cs.to_dict()


# ------------------------------------------------------------ methods/config
def test_unknown_method_and_option(tiny_pipes):
    pipe = tiny_pipes["sd"]
    with pytest.raises(MethodError, match="unknown method 'fmn'.*available: "):
        erasekit.erase(pipe, method="fmn", concepts=["cat"])
    with pytest.raises(MethodError, match=r"option\(s\) \['target_sparsity'\] do not apply to method 'uce'"):
        erasekit.erase(pipe, method="uce", concepts=["cat"], target_sparsity=0.8)


@pytest.mark.parametrize(
    "method, kwargs, match",
    [
        ("uce", dict(lamb=0.0), "must be > 0"),
        ("space", dict(lam=0.1, target_sparsity=0.8), "not both"),
        ("space", dict(target_sparsity=1.5), r"in \(0, 1\)"),
        ("space", dict(solver="adam"), "solver must be"),
        ("uce", dict(token="first"), "token must be"),
        ("uce", dict(projections=("q",)), "projections must be"),
    ],
)
def test_bad_configs_are_refused(method, kwargs, match):
    with pytest.raises(MethodError, match=match):
        erasekit.make_config(method, **kwargs)


def test_nan_embeddings_are_refused(tiny_pipes):
    pipe = tiny_pipes["sd"]
    emb = pipe.text_encoder.get_input_embeddings().weight
    saved = emb.detach().clone()
    with torch.no_grad():
        emb.fill_(float("nan"))
    try:
        with pytest.raises(ModelError, match="NaN"):
            erasekit.erase(pipe, method="uce", concepts=["cat"], progress=False)
    finally:
        with torch.no_grad():
            emb.copy_(saved)


# ------------------------------------------------------------------- models
def test_pipeline_without_cross_attention_is_refused(tiny_pipes):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        cross_attention_dim=32,
    )
    fake = SimpleNamespace(unet=unet, encode_prompt=tiny_pipes["sd"].encode_prompt, text_encoder_2=None)
    with pytest.raises(ModelError, match="no cross-attention layer"):
        PipelineAdapter(fake)
    with pytest.raises(ModelError, match="not a supported pipeline; erasekit supports sd .*sdxl .*pixart .*sana"):
        PipelineAdapter(SimpleNamespace(transformer=None))


def test_layer_regex_override(tiny_pipes):
    a = PipelineAdapter(tiny_pipes["sd"], layer_regex=r"up_blocks\..*attn2\.to_v$")
    assert a.paths and all(p.startswith("up_blocks") and p.endswith("attn2.to_v") for p in a.paths)
    with pytest.raises(ModelError, match="matches no Linear"):
        PipelineAdapter(tiny_pipes["sd"], layer_regex="nothing_like_this")


@pytest.mark.parametrize(
    "model, match",
    [
        ("model.ckpt", "pickle"),
        ("no/such-model-here", "could not load HuggingFace Hub id"),
        ("not a model", "unknown model"),
        ("missing.safetensors", "does not exist"),
    ],
)
def test_bad_models_are_refused(model, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=match):
        load_pipeline(model)


def test_folder_without_model_index_and_non_sd_single_file(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ModelError, match="no model_index.json"):
        load_pipeline(str(tmp_path))
    f = tmp_path / "x.safetensors"
    save_file({"foo": torch.zeros(2)}, str(f))
    with pytest.raises(ModelError, match="does not look like a Stable Diffusion checkpoint"):
        load_pipeline(str(f))


# --------------------------------------------------------------- edit files
@pytest.fixture(scope="module")
def saved_edit(tiny_pipes, tmp_path_factory):
    edit = erasekit.erase(
        tiny_pipes["sd"], method="space", concepts=["Van Gogh"], preserve=["Monet"], target_sparsity=0.8, progress=False
    )
    path = tmp_path_factory.mktemp("edits") / "vangogh.safetensors"
    edit.save(path)
    return edit, path


def _expect_refusal(pipe, path, match):
    state = _unet_state(pipe)
    with pytest.raises(EditFileError, match=match):
        erasekit.load_edit(path, pipe)
    assert _same(pipe, state) and not erasekit.Edit.applied(pipe)


def test_edit_for_another_base_model_is_refused(saved_edit, tmp_path):
    from erasekit.models.tiny import build_tiny_pipeline

    _, path = saved_edit
    other = build_tiny_pipeline("sd", seed=1)  # same architecture, other weights
    _expect_refusal(other, path, "weights differ from the base model")
    _expect_refusal(build_tiny_pipeline("sdxl"), path, "does not fit the pipeline")


def test_same_model_in_another_dtype_is_accepted(saved_edit):
    from erasekit.models.tiny import build_tiny_pipeline

    _, path = saved_edit
    half = build_tiny_pipeline("sd", seed=0).to(torch.bfloat16)
    state = _unet_state(half)
    edit = erasekit.load_edit(path, half)
    assert erasekit.Edit.applied(half) and not _same(half, state)  # the edit went in, in the pipeline's dtype
    assert all(p.dtype == torch.bfloat16 for p in half.unet.parameters())
    edit.revert(half)
    assert _same(half, state) and not erasekit.Edit.applied(half)


def test_truncated_file_is_refused(saved_edit, tmp_path, tiny_pipes):
    _, path = saved_edit
    bad = tmp_path / "trunc.safetensors"
    data = path.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    _expect_refusal(tiny_pipes["sd"], bad, "truncated or corrupted")


def test_flipped_tensor_bytes_are_refused(saved_edit, tmp_path, tiny_pipes):
    _, path = saved_edit
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's data
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    _expect_refusal(tiny_pipes["sd"], bad, "checksum|NaN|CSR")


def _rewrite(path, out, mutate_meta=None, mutate_tensors=None, rehash=False):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from erasekit.edit_format import content_sha256

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["erasekit"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if mutate_meta:
        mutate_meta(meta)
    if mutate_tensors:
        mutate_tensors(tensors)
    if rehash:  # a consistent rewrite: the checksum cannot catch it, the structural checks must
        meta["content_sha256"] = content_sha256(meta, tensors)
    save_file(tensors, str(out), metadata={"erasekit": json.dumps(meta)})
    return out


def _first(meta):
    return next(iter(meta["layers"]))


@pytest.mark.parametrize(
    "mutate_meta, mutate_tensors, match",
    [
        (None, lambda t: t.pop(next(iter(sorted(t)))), "checksum"),
        (lambda m: m.update(format_version=99), None, "upgrade erasekit"),
        (lambda m: m.pop("format"), None, "unknown format"),
    ],
)
def test_tampered_files_are_refused(saved_edit, tmp_path, tiny_pipes, mutate_meta, mutate_tensors, match):
    _, path = saved_edit
    bad = _rewrite(path, tmp_path / "bad.safetensors", mutate_meta, mutate_tensors)
    _expect_refusal(tiny_pipes["sd"], bad, match)


def test_consistent_but_wrong_structure_is_refused(saved_edit, tmp_path, tiny_pipes):
    """Even with a recomputed checksum, a missing/extra tensor or a wrong shape is caught."""
    _, path = saved_edit
    first = [None]

    def grab(m):
        first[0] = _first(m)

    def drop(t):
        t.pop(f"{first[0]}.weight.values")

    bad = _rewrite(path, tmp_path / "a.safetensors", grab, drop, rehash=True)
    _expect_refusal(tiny_pipes["sd"], bad, "missing tensor")

    def extra(t):
        t["stowaway"] = torch.zeros(3)

    bad = _rewrite(path, tmp_path / "b.safetensors", None, extra, rehash=True)
    _expect_refusal(tiny_pipes["sd"], bad, "unexpected tensor")

    def wrong_shape(m):
        m["layers"][_first(m)]["shape"][0] += 1
        m["layers"][_first(m)]["fingerprint"]["shape"][0] += 1

    bad = _rewrite(path, tmp_path / "c.safetensors", wrong_shape, rehash=True)
    _expect_refusal(tiny_pipes["sd"], bad, "CSR crow_indices")
    bad = _rewrite(path, tmp_path / "d.safetensors", wrong_shape)
    _expect_refusal(tiny_pipes["sd"], bad, "checksum")


def test_not_an_edit_file(tmp_path, tiny_pipes):
    from safetensors.torch import save_file

    f = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(1)}, str(f))
    _expect_refusal(tiny_pipes["sd"], f, "not an erasekit edit")
    g = tmp_path / "garbage.safetensors"
    g.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    _expect_refusal(tiny_pipes["sd"], g, "truncated or corrupted")
    _expect_refusal(tiny_pipes["sd"], tmp_path / "absent.safetensors", "does not exist")


def test_revert_order_and_double_revert(tiny_pipes):
    pipe = tiny_pipes["sd"]
    a = erasekit.erase(pipe, method="uce", concepts=["cat"], progress=False, projections=("k",))
    b = erasekit.erase(pipe, method="uce", concepts=["dog"], progress=False, projections=("v",))
    a.apply(pipe)
    b.apply(pipe)
    with pytest.raises(EditFileError, match="revert that one first"):
        a.revert(pipe)
    b.revert(pipe)
    a.revert(pipe)
    with pytest.raises(EditFileError, match="not applied"):
        a.revert(pipe)


def test_edit_on_modified_layers_names_the_applied_edit(tiny_pipes):
    pipe = tiny_pipes["sd"]
    a = erasekit.erase(pipe, method="uce", concepts=["cat"], progress=False)
    b = erasekit.erase(pipe, method="uce", concepts=["dog"], progress=False)
    a.apply(pipe)
    try:
        with pytest.raises(EditFileError, match="already carry an applied edit.*stack=True"):
            b.apply(pipe)
    finally:
        a.revert(pipe)


def test_atomic_save_leaves_no_partial_file(saved_edit, tmp_path, monkeypatch):
    import safetensors.torch

    edit, _ = saved_edit
    target = tmp_path / "out.safetensors"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        edit.save(target)
    assert list(tmp_path.iterdir()) == []
