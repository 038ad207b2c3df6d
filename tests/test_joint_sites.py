"""Joint-attention sites (SD3 / FLUX ``add_k_proj`` / ``add_v_proj``) and PURE's activation capture on MMDiTs.

Properties on the tiny offline builds: sites found by structure (never an image-only attention), captured columns
shaped one per (prompt, latent, step, token) and paired on the same x_t, a closed form on captured columns agreeing
with an independent least-squares oracle, and PURE's E keeping the retain subspace exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import erasekit
from erasekit import ConceptSet
from erasekit.errors import MethodError, ModelError
from erasekit.methods import _closed_form as cf
from erasekit.methods import pure as P
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.joint import JointSampling
from pure_checks import check_projector_edit  # tests/pure_checks.py

DITS = ("sd3", "flux")
SAMPLING = JointSampling(n_latents=2, steps=2, guidance=2.0, size=32)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("fam", DITS)
def test_joint_sites_by_structure(all_tiny_pipes, fam):
    pipe = all_tiny_pipes[fam]
    den = pipe.transformer
    static = PipelineAdapter(pipe)
    joint = PipelineAdapter(pipe, sites="joint")
    both = PipelineAdapter(pipe, sites="all")
    assert all(s.input_kind != "joint_text" for s in static.sites)  # the default stays static
    assert [s.path for s in both.sites] == [s.path for s in static.sites] + [s.path for s in joint.sites]
    inner = den.config.num_attention_heads * den.config.attention_head_dim
    for s in joint.sites:
        block, proj = s.path.rsplit(".", 1)
        attn = den.get_submodule(block)
        assert proj in ("add_k_proj", "add_v_proj") and s.group == block and s.input_kind == "joint_text"
        assert getattr(attn, proj).in_features == inner  # reads the joint text stream
    # every attention with a text stream is found; none without one (SD3.5-M's attn2, FLUX's single blocks)
    with_text = {n for n, m in den.named_modules() if isinstance(getattr(m, "add_k_proj", None), nn.Linear)}
    assert set(joint.groups) == with_text
    image_only = [n for n, m in den.named_modules() if isinstance(getattr(m, "to_k", None), nn.Linear)]
    assert set(image_only) - with_text, "the build should carry image-only attentions to check against"
    assert not {s.group for s in joint.sites} & (set(image_only) - with_text)
    assert [s.path.rsplit(".", 1)[1] for s in PipelineAdapter(pipe, sites="joint", projections=("v",)).sites] == [
        "add_v_proj"
    ] * len(with_text)


def test_joint_sites_need_the_text_width(all_tiny_pipes):
    """An attention-like module whose add_k_proj reads another width (an IP-adapter's image tokens) is no site."""
    pipe = all_tiny_pipes["flux"]
    den = pipe.transformer
    inner = den.config.num_attention_heads * den.config.attention_head_dim
    fake = nn.Module()
    fake.add_k_proj, fake.add_v_proj = nn.Linear(7, inner), nn.Linear(7, inner)
    fake.to_out = nn.ModuleList([nn.Linear(inner, inner)])
    den.add_module("ip_probe", fake)
    try:
        assert not any(s.path.startswith("ip_probe") for s in PipelineAdapter(pipe, sites="joint").sites)
    finally:
        del den.ip_probe


def test_unet_families_refuse_joint_sites(all_tiny_pipes):
    with pytest.raises(ModelError, match="no joint-attention sites"):
        PipelineAdapter(all_tiny_pipes["sd"], sites="joint")
    with pytest.raises(MethodError, match="sites must be one of"):
        erasekit.erase(all_tiny_pipes["flux"], "uce", ["cat"], sites="every", defaults=None, progress=False)


@pytest.mark.parametrize("fam", [*DITS, "flux-schnell"])
def test_captured_columns_shape_and_pairing(all_tiny_pipes, fam):
    pipe = all_tiny_pipes[fam]
    ad = PipelineAdapter(pipe, sites="joint", joint=SAMPLING)
    group = next(iter(ad.groups))
    view = ad.for_group(group)
    erase, guide = ["a cat", "a red car"], ["a", "a blue car"]
    C_E, C_G = view.token_columns(erase, guide, "last")
    n = len(erase) * SAMPLING.n_latents * SAMPLING.steps  # one column per (prompt, latent, step): CFG rows dropped
    assert C_E.shape == C_G.shape == (view.d_in, n) and C_E.dtype == torch.float64
    C_P = view.preserve_columns(["a tree"], "all")
    L = ad.conditioning(["a tree"]).embeds.shape[1]
    assert C_P.shape == (view.d_in, SAMPLING.n_latents * SAMPLING.steps * L)
    # pairing: a twin carrying the erase prompt itself on the same x_t and step reads exactly what the prompt read
    same_E, same_G = (
        PipelineAdapter(pipe, sites="joint", joint=SAMPLING).for_group(group).token_columns(erase, erase, "last")
    )
    torch.testing.assert_close(same_E, same_G, rtol=0, atol=0)
    torch.testing.assert_close(same_E, C_E, rtol=0, atol=0)  # the twin call leaves the trajectory unchanged
    assert not torch.allclose(C_E, C_G)  # another guide reads something else
    # columns run (batch of trajectories, step, trajectory): the same trajectory one step later reads another stream
    # (the block's norm is modulated by the timestep), so the columns are not one encoding repeated
    per_step = len(erase) * SAMPLING.n_latents
    assert not torch.allclose(C_E[:, 0], C_E[:, per_step])
    # the conditional branch is what is recorded (under true CFG the negative "" would read the same for both)
    assert not torch.allclose(C_E[:, 0], C_E[:, SAMPLING.n_latents])
    with pytest.raises(ModelError, match="no encoding"):
        view.encode(["a cat"])


def uce_oracle(W0, C_E, C_G, C_P, alpha, beta, gamma):
    """argmin_W α‖W C_E − W0 C_G‖² + β‖W C_P − W0 C_P‖² + γ‖W − W0‖² by least squares on the stacked system."""
    d_in = W0.shape[1]
    A = torch.cat([alpha**0.5 * C_E, beta**0.5 * C_P, gamma**0.5 * torch.eye(d_in, dtype=W0.dtype)], dim=1)
    B = torch.cat([alpha**0.5 * W0 @ C_G, beta**0.5 * W0 @ C_P, gamma**0.5 * W0], dim=1)
    return torch.linalg.lstsq(A.T, B.T).solution.T  # W Aᵀ... solved row-wise: A.T Wᵀ = B.T


@pytest.mark.parametrize("fam", DITS)
def test_uce_on_captured_columns_matches_oracle(all_tiny_pipes, fam):
    pipe = all_tiny_pipes[fam]
    cs = ConceptSet(erase=("cat",), kind="object", preserve=("dog",))
    opts = dict(sites="joint", joint_latents=2, joint_steps=2, joint_guidance=2.0, joint_size=32, preset="v2")
    edit = erasekit.erase(pipe, "uce", cs, defaults=None, progress=False, storage="dense", **opts)
    ad = PipelineAdapter(pipe, sites="joint", joint=SAMPLING)
    assert set(edit.layers) == set(ad.paths)
    plan = cf.column_plan(cs, "v2", "last", None, None)
    W0 = {p: ad.linear(p).weight.detach().clone() for p in ad.paths}
    want = {}
    for group, paths in ad.groups.items():
        view = ad.for_group(group)
        C_E, C_G = view.token_columns([e for e, _ in plan.pairs], [g for _, g in plan.pairs], plan.token)
        C_P = view.preserve_columns(list(plan.preserve), plan.preserve_token)
        assert C_E.shape[1] == len(plan.pairs) * SAMPLING.n_latents * SAMPLING.steps
        for path in paths:
            want[path] = uce_oracle(W0[path].double(), C_E, C_G, C_P, 1.0, plan.preserve_scale, 0.5)
    edit.apply(pipe)
    try:
        for path, w in want.items():
            torch.testing.assert_close(ad.linear(path).weight.detach().double(), w, rtol=1e-4, atol=1e-5)
    finally:
        edit.revert(pipe)
    assert all(torch.equal(ad.linear(p).weight, w) for p, w in W0.items())


@pytest.mark.parametrize("fam", DITS)
def test_pure_activation_keeps_the_retain_subspace(all_tiny_pipes, fam):
    """E = I − P_F(I − P_R) left-multiplies add_k / add_v: E V_R = V_R (the oracle property), the fitted weight is
    E W0 (a change inside span V_F of rank ≤ rank V_F), and revert is bit-exact."""
    pipe = all_tiny_pipes[fam]
    opts = dict(
        sites="joint", steps=2, n_latents=2, guidance=2.0, height=32, width=32, forget_energy=0.9, retain_energy=0.9,
        per_concept=False, forget_prompts=("a cat", "a small cat"), retain_prompts=("a dog", "a tree"),
    )  # fmt: skip
    cs = ConceptSet(erase=("cat",), kind="object")
    edit = erasekit.erase(pipe, "pure", cs, defaults=None, progress=False, **opts)
    ad = PipelineAdapter(pipe, sites="joint")
    config = P.PUREConfig(**opts)
    H_F, _ = P.anchor_activations(ad, list(config.forget_prompts), config, "f", False)
    H_R, _ = P.anchor_activations(ad, list(config.retain_prompts), config, "r", False)
    check_projector_edit(pipe, ad, edit, H_F, H_R, config)


def test_pure_activation_refuses_static_mmdit_sites(all_tiny_pipes):
    with pytest.raises(MethodError, match="sites='joint'"):
        erasekit.erase(all_tiny_pipes["flux"], "pure", ["cat"], defaults=None, progress=False)
    edit = erasekit.erase(all_tiny_pipes["flux"], "pure", ["cat"], basis="text", defaults=None, progress=False)
    assert "context_embedder" in edit.layers


@pytest.mark.parametrize("method", ["speed", "rece"])
def test_methods_that_encode_refuse_joint_sites_in_one_line(all_tiny_pipes, method):
    pipe = all_tiny_pipes["flux"]
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    with pytest.raises(MethodError) as e:
        erasekit.erase(pipe, method, ["cat"], sites="joint", joint_size=32, defaults=None, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "no encoding" in msg and "cure, pure, space, uce" in msg and "sites='static'" in msg
    assert all(torch.equal(before[k], v) for k, v in pipe.transformer.state_dict().items())
    # refused when the options are read, before any model: a bench with this variant fails before its first fit
    from erasekit.methods.base import make_config

    with pytest.raises(MethodError, match="no encoding"):
        make_config(method, sites="joint")
    assert make_config("uce", sites="joint").sites == "joint"


def test_flux_encodes_and_samples_at_a_declared_t5_length(all_tiny_pipes):
    """A model trained at another T5 length declares it (tinyworld-flux: 32): encode() and the capture trajectories
    use it, so captured and encoded streams have the same positions."""
    from erasekit.models.families import identify

    pipe = all_tiny_pipes["flux"]
    fam = identify(pipe)
    assert fam.encode(pipe, ["a cat"]).embeds.shape[1] == 512
    pipe.tokenizer_2.model_max_length = 16  # how a folder declares it (tokenizer_2/tokenizer_config.json)
    try:
        assert fam.encode(pipe, ["a cat"]).embeds.shape[1] == 16
        assert fam.sampling(pipe, 3.5).kwargs["max_sequence_length"] == 16
        view = PipelineAdapter(pipe, sites="joint", joint=SAMPLING).for_group("transformer_blocks.0.attn")
        assert view.preserve_columns(["a cat"], "all").shape[1] == SAMPLING.n_latents * SAMPLING.steps * 16
    finally:
        pipe.tokenizer_2.model_max_length = 512
