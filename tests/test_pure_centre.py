"""PURE's reconstruction options: centring, paired neutral twins, per-concept bases, recorded steps."""

import pytest
import torch

import erasekit
from erasekit.methods.pure import (
    PUREConfig,
    activation_bases,
    anchor_activations,
    orthonormal_union,
    projector_E,
    recorded_steps,
)
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.capture import CrossAttentionCapture


def _rows(g, n, d, common, scale):
    """n rows of a dominant shared component plus concept-specific noise."""
    return common + scale * torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("centre", ["retain", "paired"])
@pytest.mark.parametrize("rule", ["joint", "residual"])
def test_centred_bases_are_orthogonal_to_the_retain_mean(centre, rule):
    g = torch.Generator().manual_seed(7)
    d = 16
    common = 10 * torch.randn(d, generator=g, dtype=torch.float64)  # what every prompt shares
    H_F = [_rows(g, 12, d, common, 1.0), _rows(g, 9, d, common, 1.0)]  # two concepts
    H_N = [_rows(g, 12, d, common, 0.5), _rows(g, 9, d, common, 0.5)]
    H_R = _rows(g, 20, d, common, 0.7)
    cfg = PUREConfig(centre=centre, forget_rule=rule, forget_energy=0.9, retain_energy=0.9)
    V_F, V_R = activation_bases(H_F, H_N, H_R, cfg)
    mu = H_R.mean(0)
    u = mu / mu.norm()
    assert V_F.shape[1] >= 1
    assert float((V_F.T @ u).abs().max()) < 1e-10  # V_F ⟂ μ̂_R
    assert float((V_R.T @ u).abs().max()) < 1e-10
    torch.testing.assert_close(projector_E(V_F, V_R) @ u, u)  # E keeps the shared direction
    torch.testing.assert_close(V_F.T @ V_F, torch.eye(V_F.shape[1], dtype=torch.float64))  # orthonormal union


def test_uncentred_basis_spends_its_energy_on_the_shared_direction():
    # the failure the centring fixes: without it, V_F's first direction is (almost) μ̂
    g = torch.Generator().manual_seed(1)
    d = 16
    common = 10 * torch.randn(d, generator=g, dtype=torch.float64)
    H_F = [_rows(g, 12, d, common, 1.0)]
    V_F, _ = activation_bases(H_F, [None], _rows(g, 20, d, common, 0.7), PUREConfig(centre="none", forget_energy=0.5))
    assert float((V_F[:, 0] @ (common / common.norm())).abs()) > 0.95


def test_orthonormal_union_spans_every_input():
    g = torch.Generator().manual_seed(2)
    A = torch.linalg.qr(torch.randn(10, 2, generator=g, dtype=torch.float64))[0]
    B = torch.linalg.qr(torch.randn(10, 3, generator=g, dtype=torch.float64))[0]
    U = orthonormal_union([A, B, A])  # repeated directions are not double-counted
    assert U.shape[1] == 5
    for V in (A, B):
        torch.testing.assert_close(U @ (U.T @ V), V)


def test_recorded_steps():
    assert recorded_steps("all", 5) is None
    assert recorded_steps("early", 5) == [0, 1, 2] and recorded_steps("late", 5) == [2, 3, 4]
    assert recorded_steps("late", 1) == [0]


def test_paired_twin_hooks_leave_the_trajectory_unchanged(tiny_pipes):
    pipe = tiny_pipes["sd"]
    ad = PipelineAdapter(pipe)
    kw = dict(
        prompt=["a painting by Van Gogh", "a cat"], num_inference_steps=3, guidance_scale=5.0, output_type="latent"
    )
    plain = pipe(generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw).images
    with CrossAttentionCapture(ad.unet, ad.attention_layers(), cfg=True, paired=True) as cap:
        cap.neutral = ad.encode(["", ""]).embeds
        twin = pipe(generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw).images
    assert torch.equal(plain, twin)
    H, H_N = cap.stacked(), cap.twin_stacked()
    block = next(iter(H))
    assert H[block].shape == H_N[block].shape == (2 * 3, H[block].shape[1])  # one twin row per recorded row
    assert not torch.allclose(H[block], H_N[block])  # the twin really saw another prompt
    # the twin of a prompt with itself as neutral reproduces its own activations
    with CrossAttentionCapture(ad.unet, ad.attention_layers(), cfg=True, paired=True) as cap2:
        cap2.neutral = ad.encode(kw["prompt"]).embeds
        pipe(generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw)
    torch.testing.assert_close(cap2.stacked()[block], cap2.twin_stacked()[block], rtol=1e-4, atol=1e-5)


def test_pure_paired_fit_on_a_pipeline(tiny_pipes):
    pipe = tiny_pipes["sd"]
    edit = erasekit.erase(
        pipe,
        method="pure",
        concepts=["Van Gogh", "Claude Monet"],
        preserve=["Picasso"],
        centre="paired",
        record_steps="late",
        k_basis="none",
        n_latents=1,
        steps=2,
        progress=False,
    )
    assert all(p.endswith(".to_v") for p in edit.layers)
    assert edit.config["centre"] == "paired"
    cfg = PUREConfig(n_latents=1, steps=2, record_steps="early")
    H, H_N = anchor_activations(PipelineAdapter(pipe), ["a cat"], cfg, "t", False)
    assert not H_N and next(iter(H.values())).shape[0] == 1  # early half of 2 steps: 1 row
