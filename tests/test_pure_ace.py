"""PURE's projector algebra, activation capture, and ACE's stage-1 nullification."""

import pytest
import torch

import erasekit
from erasekit.methods.ace import concept_directions
from erasekit.methods.pure import energy_basis, left_delta, projector_E, right_delta
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.capture import CrossAttentionCapture
from pure_checks import check_projector_edit  # tests/pure_checks.py


def _orth(d, r, gen):
    return torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=torch.float64))[0]


@pytest.mark.parametrize("seed", range(4))
def test_projector_algebra_on_random_bases(seed):
    g = torch.Generator().manual_seed(seed)
    d, d_in = 24, 16
    V_F, V_R = _orth(d, 3, g), _orth(d, 5, g)
    W0 = torch.randn(d, d_in, generator=g, dtype=torch.float64)
    E = projector_E(V_F, V_R)
    torch.testing.assert_close(
        E, torch.eye(d, dtype=torch.float64) - V_F @ V_F.T @ (torch.eye(d, dtype=torch.float64) - V_R @ V_R.T)
    )
    torch.testing.assert_close(E @ V_R, V_R)  # retained directions pass unchanged
    torch.testing.assert_close(V_F.T @ E, V_F.T @ V_R @ V_R.T)  # forget directions keep only their retained part
    x_perp = torch.randn(d, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(torch.cat([V_F, V_R], 1))[0]
    x_perp -= Q @ (Q.T @ x_perp)
    torch.testing.assert_close(E @ x_perp, x_perp)  # directions outside both bases are untouched
    B, A = left_delta(W0, V_F, V_R)
    torch.testing.assert_close(B @ A, E @ W0 - W0)  # stored low-rank delta == E W0 − W0
    assert torch.linalg.matrix_rank(B @ A) <= V_F.shape[1]
    V_Ft, V_Rt = _orth(d_in, 2, g), _orth(d_in, 4, g)
    B, A = right_delta(W0, V_Ft, V_Rt)
    torch.testing.assert_close(B @ A, W0 @ projector_E(V_Ft, V_Rt) - W0)
    V_Fo = torch.linalg.qr(torch.cat([V_R, torch.randn(d, 2, generator=g, dtype=torch.float64)], 1))[0][:, 5:]
    torch.testing.assert_close(
        projector_E(V_Fo, V_R) @ V_Fo, torch.zeros_like(V_Fo), atol=1e-12, rtol=0
    )  # disjoint: removed


def test_energy_basis_keeps_the_smallest_rank_reaching_the_threshold():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(50, 6, generator=g, dtype=torch.float64) @ torch.diag(
        torch.tensor([10.0, 5, 2, 1, 0.5, 0.1], dtype=torch.float64)
    )
    S = torch.linalg.svdvals(H)
    share = (S**2).cumsum(0) / (S**2).sum()
    for energy in (0.5, 0.9, 0.99, 1.0):
        V = energy_basis(H, energy)
        r = V.shape[1]
        torch.testing.assert_close(V.T @ V, torch.eye(r, dtype=torch.float64))
        assert share[r - 1] >= energy - 1e-9 and (r == 1 or share[r - 2] < energy)
    assert energy_basis(H, 0.99, max_rank=2).shape[1] == 2


def test_capture_records_conditional_rows_and_always_removes_hooks(tiny_pipes):
    pipe = tiny_pipes["sd"]
    adapter = PipelineAdapter(pipe)
    blocks = list(adapter.attention_layers())
    with CrossAttentionCapture(pipe.unet, blocks, steps={0, 2}, cfg=True) as cap:
        pipe(
            prompt=["a cat", "a dog"],
            num_inference_steps=3,
            guidance_scale=5.0,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
    H = cap.stacked()
    assert set(H) == set(blocks)
    for b in blocks:
        d = pipe.unet.get_submodule(b).to_out[0].in_features
        assert H[b].shape == (2 * 2, d)  # 2 prompts (conditional half only) × 2 recorded steps
    hooks = lambda: (
        sum(len(pipe.unet.get_submodule(b).to_out[0]._forward_pre_hooks) for b in blocks)
        + len(pipe.unet._forward_pre_hooks)
    )  # noqa: E731
    assert hooks() == 0
    with pytest.raises(RuntimeError, match="boom"):
        with CrossAttentionCapture(pipe.unet, blocks):
            raise RuntimeError("boom")
    assert hooks() == 0


def test_pure_text_basis_removes_forget_directions(tiny_pipes):
    pipe = tiny_pipes["sd"]
    edit = erasekit.erase(
        pipe,
        method="pure",
        concepts=["Van Gogh"],
        preserve=["Claude Monet"],
        basis="text",
        templates=True,
        progress=False,
    )
    adapter = PipelineAdapter(pipe)
    pairs = edit.concepts
    C_F = adapter.preserve_columns([t.format("Van Gogh") for t in pairs["templates"]], "last")
    C_R = adapter.preserve_columns([t.format("Claude Monet") for t in pairs["templates"]], "last")
    V_F, V_R = energy_basis(C_F.T, 0.9), energy_basis(C_R.T, 0.99)
    for path, le in edit.layers.items():
        W0 = adapter.linear(path).weight.detach().double()
        W = le.materialize(W0).double()
        # W V_F = W0 P_F P_R V_F: a forget direction keeps only the part the retain basis explains
        torch.testing.assert_close(W @ V_F, W0 @ V_F @ (V_F.T @ V_R @ V_R.T @ V_F), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(W @ V_R, W0 @ V_R, rtol=1e-4, atol=1e-5)


def test_pure_activation_rank_is_bounded_by_forget_basis(tiny_pipes):
    edit = erasekit.erase(
        tiny_pipes["sdxl"],
        method="pure",
        concepts=["Van Gogh"],
        preserve=["Claude Monet"],
        n_latents=1,
        steps=2,
        progress=False,
    )
    for le in edit.layers.values():
        assert le.kind == "lowrank" and le.rank == le.stats["rank_forget"] >= 1


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_ace_stage_one_nullifies_concept_directions_and_spares_preserved(tiny_pipes, family):
    pipe = tiny_pipes[family]
    edit = erasekit.erase(
        pipe,
        method="ace",
        concepts=["Van Gogh"],
        preserve=["Claude Monet", "Pablo Picasso"],
        train_steps=0,
        progress=False,
    )
    adapter = PipelineAdapter(pipe)
    C_E, C_G = adapter.token_columns(["Van Gogh"], ["art"], "last")
    C_P = adapter.preserve_columns(["Claude Monet", "Pablo Picasso"], "last")
    for path, le in edit.layers.items():
        W0 = adapter.linear(path).weight.detach().double()
        W = le.materialize(W0).double()
        U = concept_directions(W0, C_E, C_G, C_P, rank=4)
        assert (U.T @ W @ (C_E - C_G)).norm() <= 0.05 * (U.T @ W0 @ (C_E - C_G)).norm()
        assert (W @ C_P - W0 @ C_P).norm() <= 0.05 * (W0 @ C_P).norm()
        assert (W @ (C_E - C_G)).norm() < (W0 @ (C_E - C_G)).norm()


def test_ace_fine_tuning_restores_pipeline_state(tiny_pipes):
    pipe = tiny_pipes["sd"]
    flags = [p.requires_grad for p in pipe.unet.parameters()]
    edit = erasekit.erase(
        pipe,
        method="ace",
        concepts=["Van Gogh"],
        preserve=["Claude Monet"],
        train_steps=2,
        adv_steps=1,
        pool_latents=1,
        pool_steps=3,
        batch_size=2,
        progress=False,
    )
    assert edit.stats["train_steps"] == 2 and edit.stats["loss_last"] is not None
    assert [p.requires_grad for p in pipe.unet.parameters()] == flags
    assert all(not m._forward_hooks for m in pipe.unet.modules())
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the pool's scheduler swap was undone


@pytest.mark.parametrize("build", ["pixart", "sana"])
def test_pure_activation_basis_on_the_cross_attention_dits(all_tiny_pipes, build):
    """PURE's activation basis on PixArt / Sana: attn2's output before ``to_out`` is recorded along the pipeline's own
    sampler (CFG halves: the conditional rows), it changes with the prompt, a paired twin given the recorded prompts
    themselves reproduces it exactly (the twin carries the stream and its mask), and the fitted K / V weights are
    E W0 with E V_R = V_R and a change of rank ≤ rank V_F inside span V_F, as on the UNets; revert is bit-exact."""
    from erasekit.methods import pure as P

    pipe = all_tiny_pipes[build]
    opts = dict(
        steps=2, n_latents=2, guidance=2.0, forget_energy=0.9, retain_energy=0.9, per_concept=False,
        forget_prompts=("a cat", "a small cat"), retain_prompts=("a dog", "a tree on a hill"),
    )  # fmt: skip
    config = P.PUREConfig(**opts)
    ad = PipelineAdapter(pipe)
    H_F, _ = P.anchor_activations(ad, list(config.forget_prompts), config, "f", False)
    H_R, _ = P.anchor_activations(ad, list(config.retain_prompts), config, "r", False)
    H, H_twin = P.anchor_activations(
        ad, ["a cat", "a tree on a hill"], config, "t", False, neutral=["a cat", "a tree on a hill"]
    )
    assert set(H_F) == set(ad.attention_layers()) and all(".attn2" in b for b in H_F)
    for block in H_F:
        recorded = P.recorded_steps(config.record_steps, config.steps)  # None: every step
        rows = config.n_latents * (config.steps if recorded is None else len(recorded))
        assert H_F[block].shape[0] == 2 * rows  # conditional rows only
        assert float((H_F[block] - H_R[block]).abs().max()) > 1e-4  # the prompt reaches attn2's output
        torch.testing.assert_close(H_twin[block], H[block], rtol=1e-5, atol=1e-6)
    edit = erasekit.erase(pipe, "pure", erasekit.ConceptSet(erase=("cat",), kind="object"), defaults=None,
                          progress=False, **opts)  # fmt: skip
    check_projector_edit(pipe, ad, edit, H_F, H_R, config, changes=True)
