"""The shared property matrix: every method × every registered family (models/families), on tiny builds.

The families come from the registry (SD 1.x with an SD2-like second build, SDXL, PixArt-Σ, Sana, SD3.5-M-like
SD3, FLUX.1-dev-like FLUX); a family the registry gains is in the matrix once ``ALL_TINY`` (conftest) names its
tiny build. The fine-tuning methods (ESD, ACE, MACE's LoRA stage) run on the UNets, SD3 and FLUX and are refused
on PixArt and Sana for now, PURE's activation capture on every DiT: their cells assert the refusal
(test_families.py) and skip here; PURE runs there with its text basis and MACE with its closed form alone. On
SD3 / FLUX the two static sites read different inputs (two site groups), so
each group is fitted on its own columns.
"""

import dataclasses

import pytest
import torch

import erasekit
from conftest import ALL_TINY, _guarded, activation_basis_runs
from erasekit import linalg
from erasekit.methods.base import _REGISTRY
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.families import families, identify


def _den(pipe):
    return identify(pipe).get_denoiser(pipe)


@pytest.fixture(params=ALL_TINY)
def family(request):
    return request.param


@pytest.fixture
def pipe(all_tiny_pipes, family):
    yield from _guarded(all_tiny_pipes[family])


def _sd_tuned(pipe, why: str):
    """Skip a check whose bounds were set on the UNet builds (their CLIP columns have norm ~5.7, the tiny DiTs'
    projected captions ~1, and UCE's γ is absolute); test_families.py checks every family scale-free."""
    if identify(pipe).denoiser != "unet":
        pytest.skip(f"bounds tuned on the tiny UNets: {why}")


def test_every_registered_family_has_a_tiny_build_in_the_matrix(all_tiny_pipes):
    assert {identify(all_tiny_pipes[f]).name for f in ALL_TINY} == set(families())


CLOSED_FORM = ["uce", "space"]
CONCEPTS = dict(concepts=["Van Gogh"], preserve=["Claude Monet", "Pablo Picasso"], kind="style")
# How close the erased concept's K/V output must come to the guide's, relative to where it started
# (‖W C_E − W0 C_G‖ / ‖W0 C_E − W0 C_G‖), and how far preserved outputs may move (‖W C_P − W0 C_P‖ / ‖W0 C_P‖).
# SPACE trades some of both for 85 % sparsity, so its bounds are looser; both must still clearly erase.
TOL = {"uce": {"erase": 0.2, "preserve": 0.1}, "space": {"erase": 0.5, "preserve": 0.35}}


def _fit(pipe, method, **kw):
    return erasekit.erase(pipe, method=method, progress=False, **{**CONCEPTS, **kw})


def _columns(pipe, token="last"):
    adapter = PipelineAdapter(pipe)
    C_E, C_G = adapter.token_columns(["Van Gogh"], ["art"], token)
    C_P = adapter.preserve_columns(["Claude Monet", "Pablo Picasso"], token)
    return adapter, C_E, C_G, C_P


@pytest.mark.parametrize("method", CLOSED_FORM)
def test_erased_outputs_move_to_guide_and_preserved_stay(pipe, method):
    _sd_tuned(pipe, "γ = 0.5 against unit-norm columns; test_families checks γ → 0 exactly")
    edit = _fit(pipe, method)
    adapter, C_E, C_G, C_P = _columns(pipe)
    for path, le in edit.layers.items():
        W0 = adapter.linear(path).weight.detach().double()
        W = le.materialize(W0).double()
        start = (W0 @ C_E - W0 @ C_G).norm()
        assert (W @ C_E - W0 @ C_G).norm() / start < TOL[method]["erase"], path
        assert (W @ C_P - W0 @ C_P).norm() / (W0 @ C_P).norm() < TOL[method]["preserve"], path


def test_space_preserves_far_better_than_pruning_uce_to_the_same_sparsity(pipe):
    """The L1 solve keeps preserved outputs while zeroing weights; magnitude pruning of W_uce does not."""
    _sd_tuned(pipe, "3 columns against 16-d inputs leave little for the L1 solve to choose")
    edit = _fit(pipe, "space", target_sparsity=0.85)
    adapter, C_E, C_G, C_P = _columns(pipe)
    gf = linalg.gram_factor(C_E, C_G, C_P)
    for path, le in edit.layers.items():
        W0 = adapter.linear(path).weight.detach().double()
        W = le.materialize(W0).double()
        W_uce = linalg.uce_weight(W0, gf)
        k = int((W == 0).sum())
        pruned = torch.where(W_uce.abs() <= W_uce.abs().flatten().kthvalue(k).values, 0.0, W_uce)
        drift = lambda X: float((X @ C_P - W0 @ C_P).norm() / (W0 @ C_P).norm())  # noqa: E731
        assert drift(W) < 0.5 * drift(pruned), path


# Small but complete settings so that every method runs in seconds on the tiny pipelines.
FAST = {
    "uce": {},
    "space": {"target_sparsity": 0.85},
    "pure": {"n_latents": 1, "steps": 2},
    "ace": {"train_steps": 2, "adv_steps": 1, "pool_latents": 1, "pool_steps": 3, "batch_size": 2},
    "mace": {"train_steps": 2, "n_images": 1, "image_steps": 2},
    "esd": {"iterations": 2, "pool_latents": 1, "pool_steps": 2, "lr": 1e-3},
    "esd-x": {"iterations": 2, "pool_latents": 1, "pool_steps": 2, "lr": 1e-3},
    "esd-x-strict": {"iterations": 2, "pool_latents": 1, "pool_steps": 2, "lr": 1e-3},
    "esd-u": {"iterations": 2, "pool_latents": 1, "pool_steps": 2, "lr": 1e-3},
    "rece": {},
    "speed": {},
    "cure": {},
}
# RECE's adversarial columns span all 77 positions, more than the tiny pipelines' d_in, so its edit is
# full-rank there and stored dense (never larger than dense); on SD-sized layers it can be low-rank.
FULL_RANK_ON_TINY = {"rece"}
ALL_METHODS = sorted(FAST)
# On families where the fine-tuning methods are refused (models/families: fine_tunes_denoiser), MACE runs its closed
# form alone (train_steps=0). PURE's activation basis runs where the static sites are attention keys / values on a
# family that captures along its sampler (pure.check_activation_sites: the UNets); elsewhere PURE runs its text basis
# here (the joint sites of SD3 / FLUX have their own tests in test_joint_sites.py).
# The refusals themselves are asserted in test_families.py.
FINE_TUNING = {"ace", "esd", "esd-x", "esd-x-strict", "esd-u"}


def _settings(pipe, method):
    fam = identify(pipe)
    if method == "pure":
        return FAST[method] if activation_basis_runs(pipe) else {"basis": "text"}
    if method == "mace" and fam.token_segments(pipe) is None:
        pytest.skip(f"{method} is refused on {fam.name} (asserted in test_families.py)")
    if fam.fine_tunes_denoiser:
        return FAST[method]
    if method in FINE_TUNING:
        pytest.skip(f"{method} is refused on {fam.name} (asserted in test_families.py)")
    return {**FAST[method], "train_steps": 0} if method == "mace" else FAST[method]


def _group_stats(edit) -> list[dict]:
    """The stats of each site group's fit (one group: the edit's own)."""
    return list(edit.stats["groups"].values()) if "groups" in edit.stats else [edit.stats]


DENSE_BY_NATURE = {"mace", "esd", "esd-x", "esd-x-strict", "esd-u"}
_FITTED = {}


@pytest.fixture
def fitted(pipe, family, request):
    """(edit, pipeline untouched by fit) for request.param on this family, fitted once per session."""
    method = request.param
    settings = _settings(pipe, method)
    if (method, family) not in _FITTED:
        before = {k: v.clone() for k, v in _den(pipe).state_dict().items()}
        edit = _fit(pipe, method, **settings)
        untouched = all(torch.equal(before[k], v) for k, v in _den(pipe).state_dict().items())
        _FITTED[method, family] = (edit, untouched)
    return _FITTED[method, family]


def test_every_registered_method_is_in_the_matrix():
    assert set(ALL_METHODS) == set(erasekit.list_methods())


@pytest.mark.parametrize("fitted", ALL_METHODS, indirect=True)
def test_fit_does_not_touch_pipeline_and_revert_is_bit_exact(pipe, fitted):
    edit, untouched = fitted
    assert untouched
    before = {k: v.clone() for k, v in _den(pipe).state_dict().items()}
    edit.apply(pipe)
    changed = [k for k, v in _den(pipe).state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all(k.removesuffix(".weight") in edit.layers or k in edit.layers for k in changed)
    edit.revert(pipe)
    assert all(torch.equal(before[k], v) for k, v in _den(pipe).state_dict().items())


def _live(pipe, le):
    """The UNet parameter an edit entry changes (a Linear weight for K/V edits; any parameter for ESD-u)."""
    return getattr(_den(pipe).get_submodule(le.path), le.param)


@pytest.mark.parametrize("fitted", ALL_METHODS, indirect=True)
def test_save_load_apply_gives_identical_weights(pipe, fitted, tmp_path):
    edit, _ = fitted
    edit.apply(pipe)
    direct = {k: _live(pipe, le).clone() for k, le in edit.layers.items()}
    edit.revert(pipe)
    f = edit.save(tmp_path / "e.safetensors")
    loaded = erasekit.load_edit(f, pipe)
    try:
        assert loaded.method == edit.method and loaded.concepts == edit.concepts and loaded.config == edit.config
        for k, w in direct.items():
            assert torch.equal(_live(pipe, loaded.layers[k]), w), k
    finally:
        loaded.revert(pipe)


@pytest.mark.parametrize("fitted", ALL_METHODS, indirect=True)
def test_edit_is_finite_nonzero_and_compact(pipe, fitted):
    edit, _ = fitted
    # ESD trains full weights (dense by nature); MACE's CFR delta has the rank of the shared-token differences (up to
    # d_in)
    if edit.method in DENSE_BY_NATURE or edit.method in FULL_RANK_ON_TINY:
        assert edit.nbytes <= edit.dense_nbytes
    else:
        assert edit.nbytes < edit.dense_nbytes
    moved = 0.0
    for le in edit.layers.values():
        W0 = _live(pipe, le)
        W = le.materialize(W0)
        assert torch.isfinite(W).all()
        moved += float((W - W0).norm())
    assert moved > 0


def test_every_site_is_edited(pipe):
    """Every cross-attention K / V (``projections`` selects among them); SD3 / FLUX: both static sites, always."""
    from diffusers.models.attention_processor import Attention

    n_cross = sum(1 for m in _den(pipe).modules() if isinstance(m, Attention) and m.is_cross_attention)
    edit = _fit(pipe, "uce")
    only_v = _fit(pipe, "uce", projections=("v",))
    if n_cross == 0:  # an MMDiT: no cross-attention; its sites are the text and pooled embedders
        assert list(edit.layers) == list(only_v.layers) == PipelineAdapter(pipe).paths and len(edit.layers) == 2
        return
    assert len(edit.layers) == 2 * n_cross
    assert {p.rsplit(".", 1)[1] for p in edit.layers} == {"to_k", "to_v"}
    assert len(only_v.layers) == n_cross


@pytest.mark.parametrize("token", ["last", "tail", "all"])
def test_space_with_zero_lambda_equals_uce(pipe, token):
    uce = _fit(pipe, "uce", token=token, storage="dense")
    space = _fit(pipe, "space", token=token, lam=0.0, storage="dense")
    for p, le in uce.layers.items():
        torch.testing.assert_close(space.layers[p].tensors["weight"], le.tensors["weight"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scope", ["layer", "shared"])
def test_target_sparsity_is_met_within_one_point(pipe, scope):
    edit = _fit(pipe, "space", target_sparsity=0.7, sparsity_scope=scope)
    assert abs(edit.sparsity() - 0.7) <= 0.01
    if scope == "layer":
        assert all(abs(le.stats["sparsity"] - 0.7) <= 0.01 for le in edit.layers.values())
    else:  # one λ per site group (the groups' inputs, and so their solves, differ)
        for paths in PipelineAdapter(pipe).groups.values():
            assert len({edit.layers[p].stats["lam"] for p in paths}) == 1


def test_space_is_stored_as_csr_and_uce_as_lowrank_when_smaller(pipe):
    _sd_tuned(pipe, "16 × 16 layers: the CSR row pointers outweigh the saving")
    space = _fit(pipe, "space", target_sparsity=0.85)
    assert {le.kind for le in space.layers.values()} == {"csr"}
    nnz = sum(le.tensors["weight.values"].numel() for le in space.layers.values())
    rows = sum(le.shape[0] + 1 for le in space.layers.values())
    assert space.nbytes == 8 * nnz + 4 * rows  # fp32 values + int32 columns, int32 row pointers
    assert (
        space.nbytes < 0.35 * space.dense_nbytes
    )  # ≤ 32 % at SD sizes (benchmarks/solver.py); row pointers weigh more here
    uce = _fit(pipe, "uce", storage="lowrank")
    assert {le.kind for le in uce.layers.values()} == {"lowrank"}
    dense = _fit(pipe, "uce", storage="dense")
    for p, le in uce.layers.items():
        W0 = _den(pipe).get_submodule(p).weight
        torch.testing.assert_close(le.materialize(W0), dense.layers[p].tensors["weight"], rtol=1e-5, atol=1e-5)


def test_templates_add_columns_and_change_the_edit(pipe):
    plain = _fit(pipe, "uce")
    templated = _fit(pipe, "uce", templates=True)
    for t, p in zip(_group_stats(templated), _group_stats(plain)):
        assert t["token_columns"] > p["token_columns"]


def test_registry_lists_builtin_methods():
    methods = erasekit.list_methods()
    assert {"uce", "space", "pure", "ace", "rece", "speed", "cure"} <= set(methods) and all(methods.values())
    for name in methods:  # every listed method is the registered class of that name, with its own config class
        m = erasekit.get_method(name)
        assert m.name == name and type(m) is _REGISTRY[name] and dataclasses.is_dataclass(m.config_class)
    with pytest.raises(erasekit.MethodError, match="unknown method"):
        erasekit.get_method("no-such-method")


# ------------------------------------------------------------------ edit files: structure, not the registry
def _unet_bytes(pipe) -> dict:
    return {k: v.clone() for k, v in _den(pipe).state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_unknown_config_key_loads_with_a_warning_and_is_kept(pipe, tmp_path):
    """An option renamed since the file was written: the file still loads (warning naming the key), keeps the key
    as written, and applies exactly as the original."""
    from erasekit.edit import Edit
    from erasekit.errors import UncheckedConfigWarning

    edit = _fit(pipe, "uce")
    base = _unet_bytes(pipe)
    edit.apply(pipe)
    want = _unet_bytes(pipe)
    edit.revert(pipe)
    renamed = Edit(
        edit.method,
        {**edit.config, "erase_strength_v0": 0.5},
        edit.concepts,
        edit.base,
        edit.layers.values(),
        edit.fingerprints,
        edit.stats,
    )
    path = renamed.save(tmp_path / "old.safetensors")
    with pytest.warns(UncheckedConfigWarning, match="erase_strength_v0"):
        loaded = erasekit.load_edit(path, pipe)
    assert loaded.config["erase_strength_v0"] == 0.5 and loaded.config == renamed.config
    assert _same(_unet_bytes(pipe), want)
    loaded.revert(pipe)
    assert _same(_unet_bytes(pipe), base)


def test_an_unregistered_methods_edit_loads_and_applies(pipe, tmp_path):
    """A plugin method's edit, read where the plugin is not installed: loads (warning), applies, reverts."""
    from erasekit.edit import Edit
    from erasekit.errors import UncheckedConfigWarning

    edit = _fit(pipe, "uce", storage="lowrank")
    base = _unet_bytes(pipe)
    edit.apply(pipe)
    want = _unet_bytes(pipe)
    edit.revert(pipe)
    plugin = Edit(
        "my-plugin-method",
        {"strength": 2, "nested": {"a": [1, 2]}},
        edit.concepts,
        edit.base,
        edit.layers.values(),
        edit.fingerprints,
        {"note": "written by a plugin"},
    )
    assert "my-plugin-method" not in erasekit.list_methods()
    path = plugin.save(tmp_path / "plugin.safetensors")
    with pytest.warns(UncheckedConfigWarning, match="'my-plugin-method' is not registered"):
        loaded = erasekit.load_edit(path, pipe)
    assert loaded.method == "my-plugin-method" and loaded.config == plugin.config
    assert _same(_unet_bytes(pipe), want)
    loaded.revert(pipe)
    assert _same(_unet_bytes(pipe), base)


def test_applied_records_are_keyed_by_the_edits_contents(pipe, tmp_path):
    """The same edit loaded twice is one edit: the copy is refused as already applied (even with stack=True) and can
    revert the original; a different edit is a different record."""
    from erasekit.edit import Edit

    edit = _fit(pipe, "uce", storage="lowrank")
    path = edit.save(tmp_path / "e.safetensors")
    copy = Edit.load(path)
    assert copy is not edit and copy.digest == edit.digest
    other = _fit(pipe, "uce", storage="lowrank", erase_scale=0.5)
    assert other.digest != edit.digest
    base = _unet_bytes(pipe)
    edit.apply(pipe)
    with pytest.raises(erasekit.EditFileError, match="already applied"):
        copy.apply(pipe, stack=True)
    with pytest.raises(erasekit.EditFileError, match="not applied"):
        other.revert(pipe)
    copy.revert(pipe)  # the same contents: it reverts the original's record
    assert _same(_unet_bytes(pipe), base) and Edit.applied(pipe) == []


def test_gram_statistics_are_built_once_per_site_group(pipe, monkeypatch):
    """One Gram factor per group of sites sharing an input, shared by its layers (SD3 / FLUX: two groups, whose
    columns have the widths of their two inputs)."""
    widths = []
    real = linalg.gram_factor
    monkeypatch.setattr(linalg, "gram_factor", lambda C_E, *a, **k: widths.append(C_E.shape[0]) or real(C_E, *a, **k))
    edit = _fit(pipe, "space", target_sparsity=0.8)
    groups = PipelineAdapter(pipe).groups
    assert len(widths) == len(groups) and len(edit.layers) > 1
    assert widths == [_den(pipe).get_submodule(paths[0]).in_features for paths in groups.values()]


def test_apply_refused_at_the_last_layer_rolls_back_every_earlier_one(pipe):
    """apply writes layer by layer; a value refused at the last layer (it overflows the live dtype)
    must leave every layer written before it restored bit-exactly and no record behind."""
    from erasekit.edit import Edit, LayerEdit
    from erasekit.errors import EraseKitError

    edit = _fit(pipe, "uce")
    last = list(edit.layers)[-1]
    le = edit.layers[last]
    bad = LayerEdit.dense(le.path, torch.full(le.shape, float("inf")), param=le.param)  # refused by materialize_as
    layers = dict(edit.layers)
    layers[last] = bad
    tampered = Edit(edit.method, edit.config, edit.concepts, edit.base, layers.values(), edit.fingerprints, edit.stats)
    before = {k: v.clone() for k, v in _den(pipe).state_dict().items()}
    with pytest.raises(EraseKitError, match="not finite"):
        tampered.apply(pipe)
    assert all(torch.equal(before[k], v) for k, v in _den(pipe).state_dict().items())
    assert Edit.applied(pipe) == []
