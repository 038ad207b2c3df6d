"""MACE's closed forms and fusion, ESD's objective and variants, against independent oracles."""

import math

import pytest
import torch

import erasekit
from erasekit import ConceptSet
from erasekit.linalg.mace import cfr_operator, closed_form, fusion_operator
from erasekit.methods import _finetune as ft
from erasekit.methods.esd import esd_target, resolve, trainable_modules
from erasekit.methods.mace import MACE, MACEConfig, concept_positions, fuse, matching_indices, stream_positions
from erasekit.models.adapter import PipelineAdapter
from erasekit.models.families import identify
from erasekit.models.families.dynamics import euler_step, flow_velocity
from erasekit.models.families.sd3 import joint_attention_blocks, joint_attention_probs

F64 = torch.float64


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=F64)


def _lstsq_oracle(W_ref, V, X, G, W_p, s, lamb):
    """argmin λ‖W − W_ref‖² + ‖W X − V‖² + s‖(W − W_p) G‖² as one stacked least-squares problem, solved by lstsq."""
    d = X.shape[0]
    A = torch.cat([lamb**0.5 * torch.eye(d, dtype=F64), X, s**0.5 * G], dim=1)  # (d_in, ·)
    B = torch.cat([lamb**0.5 * W_ref, V, s**0.5 * W_p @ G], dim=1)  # (d_out, ·)
    return torch.linalg.lstsq(A.T, B.T).solution.T


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("lamb", [0.5, 0.0])
def test_closed_form_equals_lstsq(seed, lamb):
    g = torch.Generator().manual_seed(seed)
    d_out, d_in, n, m = 7, 12, 20, 5  # n > d_in: full-rank normal matrix also at λ = 0
    W_ref, W_p, V, X, G = (
        _rand(g, d_out, d_in),
        _rand(g, d_out, d_in),
        _rand(g, d_out, n),
        _rand(g, d_in, n),
        _rand(g, d_in, m),
    )
    W = closed_form(W_ref, V, X, G, W_p, s=0.3, lamb=lamb)
    torch.testing.assert_close(W, _lstsq_oracle(W_ref, V, X, G, W_p, 0.3, lamb), rtol=1e-9, atol=1e-9)


def test_closed_form_at_lambda_zero_with_few_columns_is_the_limit():
    """Rank-deficient M at λ = 0: the λ → 0⁺ limit fits V exactly and keeps W_ref off span(X)."""
    g = torch.Generator().manual_seed(5)
    W_ref, V, X = _rand(g, 6, 10), _rand(g, 6, 3), _rand(g, 10, 3)
    G = torch.zeros(10, 0, dtype=F64)
    W = closed_form(W_ref, V, X, G, W_ref, s=0.0, lamb=0.0)
    torch.testing.assert_close(W @ X, V, rtol=1e-9, atol=1e-9)
    perp = torch.linalg.svd(X, full_matrices=True)[0][:, 3:]  # (10, 7) orthogonal to span(X)
    torch.testing.assert_close(W @ perp, W_ref @ perp, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(W, closed_form(W_ref, V, X, G, W_ref, s=0.0, lamb=1e-9), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lamb", [2.0, 0.0])
def test_shared_operators_equal_the_per_layer_closed_forms(lamb):
    """W0 (I + E_c) is CFR's closed form, and the fusion operator plus Σ Δ_i X_i X_iᵀ M_f⁺ is the fusion's, for any
    W0."""
    g = torch.Generator().manual_seed(1)
    d_out, d_in = 9, 14
    C_old, C_map, G = _rand(g, d_in, 30), _rand(g, d_in, 30), _rand(g, d_in, 4)
    Xs = [_rand(g, d_in, 16), _rand(g, d_in, 16)]
    E_c, _ = cfr_operator(C_old, C_map, G, 0.04, lamb)
    E_f, solver = fusion_operator(E_c, torch.cat(Xs, 1), G, 0.2, lamb)
    for _ in range(2):
        W0 = _rand(g, d_out, d_in)
        W_cfr = closed_form(W0, W0 @ C_map, C_old, G, W0, s=0.04, lamb=lamb)
        torch.testing.assert_close(W0 @ (torch.eye(d_in, dtype=F64) + E_c), W_cfr, rtol=1e-8, atol=1e-8)
        deltas = [_rand(g, d_out, 1) @ _rand(g, 1, d_in) for _ in Xs]  # rank-1 LoRAs
        V = torch.cat([(W_cfr + D) @ X for D, X in zip(deltas, Xs)], 1)
        W_f = closed_form(W_cfr, V, torch.cat(Xs, 1), G, W0, s=0.2, lamb=lamb)
        mine = W0 + W0 @ E_f + sum(D @ solver.right(X @ X.T) for D, X in zip(deltas, Xs))
        torch.testing.assert_close(mine, W_f, rtol=1e-8, atol=1e-8)


def test_matching_indices_align_shared_tokens_and_padding():
    # BOS a photo of [circle] EOS  vs  BOS a photo of EOS   (77 → 10 positions here)
    old, new = [0, 5, 6, 7, 9, 1], [0, 5, 6, 7, 1]
    oi, ni = matching_indices(old, new, 10)
    assert oi == [0, 1, 2, 3, 5, 6, 7, 8, 9] and ni == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    oi, ni = matching_indices(new, old, 10)  # the mapping prompt may be the longer one
    assert len(oi) == len(ni) and oi[:5] == [0, 1, 2, 3, 4] and ni[:5] == [0, 1, 2, 3, 5] and ni[-1] == 9


def test_concept_positions_cover_every_segment_of_the_sd3_stream(all_tiny_pipes):
    """MACE's LoRA loss reads the concept's tokens wherever SD3's text stream holds them: in CLIP-L's 77 positions and
    in T5's after them, each position holding the concept's own token ids; a one-segment stream is unchanged."""
    pipe = all_tiny_pipes["sd3"]
    fam = identify(pipe)
    segments = fam.token_segments(pipe)
    L = fam.encode(pipe, ["x"]).embeds.shape[1]
    prompt, concept = "a photo in the style of Van Gogh", "Van Gogh"
    words, with_eos = stream_positions(segments, L, prompt, concept, True)
    clip_at, t5_at = [w for w in words if w < 77], [w - 77 for w in words if w >= 77]
    assert clip_at and t5_at and max(words) < L and set(words) < set(with_eos)
    for tok, at in ((pipe.tokenizer, clip_at), (pipe.tokenizer_3, t5_at)):
        ids = tok(prompt).input_ids
        assert [ids[i] for i in at] == tok(concept, add_special_tokens=False).input_ids
    # without T5 (the pipeline feeds zeros in its place), only CLIP's own 77 positions, EOS / padding included
    only_clip = stream_positions(segments[:1], L, prompt, concept, True)
    assert only_clip == concept_positions(pipe.tokenizer, prompt, concept, True) and only_clip[0] == clip_at


def test_single_concept_fusion_equals_the_lora_on_its_tokens(tiny_pipes):
    """With λ = 0 and no prior the fused weight reproduces W_cfr + Δ on every position of the concept's
    prompts; tolerance 1e-6 relative (float64 solves, float32 storage)."""
    pipe = tiny_pipes["sd"]
    adapter = PipelineAdapter(pipe)
    cs = ConceptSet(erase=("Van Gogh",), kind="style")
    cfg = MACEConfig(lamb=0.0, prior="none", preserve_weight=0.0, train_steps=3, lr=1e-2, n_images=1, image_steps=2)
    m = MACE()
    plan = m.plan(adapter, cs, cfg)
    lora, stats = m.train_lora(adapter, plan, 0, cfg)
    assert stats["train_steps"] == 3
    layers = fuse(adapter, plan, [lora], storage="dense")
    X = plan.Xs[0]
    # trained away from B = 0 (except the last to_v: no later attention map depends on it, as in the reference)
    assert sum(bool(B.abs().max() > 0) for B, _ in lora.values()) >= len(lora) - 1
    for le in layers:
        W0 = adapter.linear(le.path).weight.detach().to(F64)
        B, A = lora[le.path]
        want = (W0 + W0 @ plan.E_c + B @ A) @ X
        got = le.materialize(W0).to(F64) @ X
        assert float((got - want).norm() / want.norm()) < 1e-6, le.path


def test_mace_without_loras_is_the_per_layer_cfr_closed_form(tiny_pipes):
    """Stage 1 alone (train_steps=0; object preset: no prior) equals closed_form(W0, W0 C_map, C_old, ·, λ) per layer;
    with no LoRA the fusion returns W_cfr. Shared-token outputs move towards the mapping prompt's."""
    pipe = tiny_pipes["sd"]
    edit = erasekit.erase(
        pipe, method="mace", concepts=["cat"], kind="object", train_steps=0, lamb=1e-3, progress=False
    )
    adapter = PipelineAdapter(pipe)
    plan = MACE().plan(adapter, ConceptSet(erase=("cat",), kind="object"), MACEConfig(train_steps=0, lamb=1e-3))
    C_old, C_map = MACE()._cfr_columns(adapter, plan.prompts)
    G = torch.zeros(C_old.shape[0], 0, dtype=F64)
    for path, le in edit.layers.items():
        W0 = adapter.linear(path).weight.detach().to(F64)
        W = le.materialize(W0).to(F64)
        torch.testing.assert_close(
            W, closed_form(W0, W0 @ C_map, C_old, G, W0, s=0.0, lamb=1e-3).float().to(F64), rtol=1e-4, atol=1e-5
        )
        assert (W @ C_old - W0 @ C_map).norm() < (W0 @ C_old - W0 @ C_map).norm(), path


def test_mace_presets_follow_the_reference_configs():
    assert MACEConfig().resolved("object")["lamb"] == 1e3 and MACEConfig().resolved("object")["prior"] is False
    nsfw = MACEConfig().resolved("nsfw")
    assert nsfw["train_steps"] == 120 and nsfw["s_train"] == 7e-7 and not nsfw["importance_sampling"]
    assert nsfw["mapping"] == "a person wearing clothes" and set(nsfw["extra_concepts"]) == {
        "naked",
        "erotic",
        "sexual",
    }
    assert (
        MACEConfig(lamb=3.0, preset="style").resolved("object")["lamb"] == 3.0
    )  # user options win, preset overrides the kind


# --------------------------------------------------------------------- ESD
def _esd_eval_loss(pipe, edit, concept, eta, n=6):
    """The ESD objective on fixed x_t from the frozen model, for the pipeline with `edit` applied (or not)."""
    adapter = PipelineAdapter(pipe)
    pool = ft.trajectory_pool(adapter, [concept], n_latents=2, steps=4, guidance=3.0, seed=123, include_start=True)
    x, t = pool.x[:n], pool.t[:n]
    cc = ft.index_cond(ft.unet_inputs(adapter, [concept]), [0] * len(x))
    cn = ft.index_cond(adapter.family_spec.encode_unconditional(pipe), [0] * len(x))  # "" as the pipeline's CFG
    with torch.no_grad():
        e_c, e_n = ft.eps(adapter, x, t, cc), ft.eps(adapter, x, t, cn)
        target = esd_target(e_c, e_c, e_n, eta)
        if edit is None:
            return float(torch.nn.functional.mse_loss(e_c, target))
        edit.apply(pipe)
        try:
            return float(torch.nn.functional.mse_loss(ft.eps(adapter, x, t, cc), target))
        finally:
            edit.revert(pipe)


@pytest.mark.parametrize("method", ["esd-x", "esd-x-strict"])
def test_esd_lowers_its_objective_on_held_out_samples(tiny_pipes, method):
    pipe = tiny_pipes["sd"]
    edit = erasekit.erase(
        pipe, method=method, concepts=["Van Gogh"], iterations=30, lr=2e-3, pool_latents=2, pool_steps=4, progress=False
    )
    before, after = _esd_eval_loss(pipe, None, "Van Gogh", 2.0), _esd_eval_loss(pipe, edit, "Van Gogh", 2.0)
    assert after <= 0.9 * before, (before, after)
    assert edit.stats["train_steps"] == 30 and edit.stats["negative_guidance"] == 2.0


def test_esd_variants_select_the_reference_layers(tiny_pipes):
    pipe = tiny_pipes["sdxl"]
    adapter = PipelineAdapter(pipe)
    cfg = erasekit.make_config("esd-x")
    x = trainable_modules(adapter, "esd-x", cfg)
    strict = trainable_modules(adapter, "esd-x-strict", cfg)
    u = trainable_modules(adapter, "esd-u", cfg)
    assert set(strict) == set(adapter.paths) < set(x) and all(".attn2." in p for p in x)
    assert not set(u) & set(x) and all("emb" not in p and "block" in p for p in u)  # esd_sdxl.py's filter
    assert any(isinstance(pipe.unet.get_submodule(p), torch.nn.Conv2d) for p in u)
    assert resolve(cfg, "esd-x", "sdxl") == (2e-4, 1.0, 2.0) and resolve(cfg, "esd-u", "sdxl")[0] == 1e-5
    assert resolve(cfg, "esd-x", "sd") == (5e-5, 2.0, 3.0)


def test_esd_picks_its_variant_by_kind(tiny_pipes):
    pipe = tiny_pipes["sd"]
    style = erasekit.erase(
        pipe,
        method="esd",
        concepts=["Van Gogh"],
        kind="style",
        iterations=1,
        pool_latents=1,
        pool_steps=2,
        progress=False,
    )
    assert style.stats["variant"] == "esd-x"
    assert erasekit.make_config("esd", variant="esd-x-strict").variant == "esd-x-strict"
    with pytest.raises(erasekit.MethodError):
        erasekit.make_config("esd", variant="esd-z")


def test_esd_time_budget_stops_early_and_runs_are_seeded(tiny_pipes):
    pipe = tiny_pipes["sd"]
    kw = dict(concepts=["Van Gogh"], pool_latents=1, pool_steps=3, lr=1e-3, progress=False)
    short = erasekit.erase(pipe, method="esd-x-strict", iterations=10_000, time_budget=0.5, **kw)
    assert 1 <= short.stats["train_steps"] < 10_000
    a = erasekit.erase(pipe, method="esd-x-strict", iterations=3, **kw)
    b = erasekit.erase(pipe, method="esd-x-strict", iterations=3, **kw)
    assert all(torch.equal(a.layers[p].tensors["weight"], b.layers[p].tensors["weight"]) for p in a.layers)


def test_esd_u_conv_weights_and_biases_round_trip_bit_exactly(tiny_pipes, tmp_path):
    pipe = tiny_pipes["sd"]
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    edit = erasekit.erase(
        pipe, method="esd-u", concepts=["Van Gogh"], iterations=2, pool_latents=1, pool_steps=2, lr=1e-3, progress=False
    )
    assert {le.param for le in edit.layers.values()} == {"weight", "bias"} and any(
        len(le.shape) == 4 for le in edit.layers.values()
    )
    edit.apply(pipe)
    direct = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    edit.revert(pipe)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    loaded = erasekit.load_edit(edit.save(tmp_path / "u.safetensors"), pipe)
    try:
        assert any(not torch.equal(before[k], v) for k, v in direct.items())
        assert all(torch.equal(direct[k], v) for k, v in pipe.unet.state_dict().items())
    finally:
        loaded.revert(pipe)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


@pytest.mark.parametrize("fam", ["sd", "sdxl"])
@pytest.mark.parametrize(
    "method,options",
    [
        ("esd-x", {"iterations": 3, "pool_steps": 2, "pool_latents": 1}),
        ("esd-u", {"iterations": 2, "pool_steps": 2, "pool_latents": 1}),
        ("ace", {"train_steps": 2, "pool_steps": 2, "pool_latents": 1, "batch_size": 2, "adv_steps": 1}),
    ],
)
def test_gradient_checkpointing_recomputes_blocks_and_changes_no_bit(tiny_pipes, fam, method, options):
    """With checkpointing, backward re-runs the UNet blocks (their forward count grows) and the edit is
    bit-identical."""
    pipe = tiny_pipes[fam]
    block = pipe.unet.down_blocks[-1].resnets[0]
    calls = {True: 0, False: 0}
    edits = {}
    for ckpt in (True, False):

        def count(mod, args, ckpt=ckpt):  # a pre-hook: a recompute may stop early, before forward hooks run
            calls[ckpt] += torch.is_grad_enabled()

        h = block.register_forward_pre_hook(count)
        try:
            edits[ckpt] = erasekit.erase(
                pipe,
                method=method,
                concepts=["a red circle"],
                preserve=["a blue square"],
                kind="object",
                progress=False,
                gradient_checkpointing=ckpt,
                **options,
            )
        finally:
            h.remove()
        assert not pipe.unet.is_gradient_checkpointing  # restored
    assert calls[True] > calls[False] > 0
    a, b = edits[True], edits[False]
    assert a.layers.keys() == b.layers.keys()
    assert all(
        torch.equal(a.layers[p].tensors[k], b.layers[p].tensors[k]) for p in a.layers for k in a.layers[p].tensors
    )


def test_a_carrier_switched_off_while_recording_gradients_is_refused():
    lin = torch.nn.Linear(3, 2)
    c = ft.FullDelta(lin)
    ft.set_enabled([c], False)
    with pytest.raises(erasekit.MethodError, match="no_grad"):
        c.hook(lin, (torch.randn(1, 3),), torch.zeros(1, 2))
    with torch.no_grad():
        assert torch.equal(c.hook(lin, (torch.randn(1, 3),), torch.zeros(1, 2)), torch.zeros(1, 2))


# ------------------------------------------------------- rectified flow (FLUX, SD3)
FLUX_BUILDS = ("flux", "flux-schnell")  # FLUX.1-dev-like (embedded guidance) and schnell-like (true CFG)
SD3_BUILDS = ("sd3", "sd3.0")  # SD3.5-Medium-like (an image-only attn2, q/k norms) and SD3-Medium-like (neither)
FLOW_BUILDS = FLUX_BUILDS + SD3_BUILDS


def _flux(all_tiny_pipes, build):
    pipe = all_tiny_pipes[build]
    return pipe, identify(pipe), identify(pipe).dynamics(pipe)


def _trajectory_and_pipeline(dyn, fam, pipe, **call_kwargs):
    """The family's sampled trajectory of "a red circle" (2 images, 3 steps, guidance 4, seed 11) and the latents the
    pipeline's own call makes from the same seeds (``call_kwargs``: the family's sampling arguments)."""
    tr = dyn.trajectory(fam, pipe, "a red circle", n=2, steps=3, guidance=4.0, seed=11)
    out = pipe(
        "a red circle",
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(11 + j) for j in range(2)],
        num_inference_steps=3,
        output_type="latent",
        **call_kwargs,
    ).images
    return tr, out


@pytest.mark.parametrize("build", FLOW_BUILDS)
def test_flow_sampler_is_the_pipelines_own(all_tiny_pipes, build):
    """The family's trajectory (Euler on the rectified-flow σ schedule, CFG as the variant does it) ends where the
    pipeline's own call ends from the same seeds, guided as :meth:`sampling` says the pipeline is guided: true CFG
    against "" on schnell and SD3 (StableDiffusion3Pipeline: its scheduler's own σ spacing and shift), the embedded
    scale on dev."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe, fam, _ = _flux(all_tiny_pipes, build)
    side = fam.sample_size(pipe)
    px = side * pipe.vae_scale_factor
    saved = pipe.scheduler
    # SD3 also with the resolution-dependent shift a scheduler may declare (the pipeline's calculate_shift on its
    # (h / patch)·(w / patch) image tokens), on a range that puts the tiny build's 16 tokens inside it
    dynamic = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64)
    for scheduler in (saved, dynamic) if build in SD3_BUILDS else (saved,):
        pipe.scheduler = scheduler
        try:
            dyn = fam.dynamics(pipe)
            tr, out = _trajectory_and_pipeline(
                dyn, fam, pipe, height=px, width=px, **fam.sampling(pipe, 4.0).kwargs
            )  # out: FLUX (2, tokens, 4C) packed; SD3 (2, C, h, w)
        finally:
            pipe.scheduler = saved
        torch.testing.assert_close(tr.final, fam.output_latents(pipe, out, px, px), rtol=1e-4, atol=1e-5)
        assert len(tr.xs) == len(tr.ts) == 3 and tr.ts[0] > tr.ts[-1]


@pytest.mark.parametrize("build", FLOW_BUILDS)
def test_flow_euler_step_with_the_familys_velocity_is_the_schedulers_step(all_tiny_pipes, build):
    """One Euler step with the family's prediction equals FlowMatchEulerDiscreteScheduler.step on the same σ
    schedule; the forward process equals the scheduler's scale_noise; and the exact velocity ε − x_0 carries x_t
    back to x_0 in one step (the parameterisation ``denoise`` is trained to)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe, fam, dyn = _flux(all_tiny_pipes, build)
    assert dyn.prediction == "flow"
    side, c = fam.sample_size(pipe), fam.latent_channels(pipe)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, c, side, side, generator=g), torch.randn(2, c, side, side, generator=g)
    sigmas, timesteps = dyn.schedule(4, (side // 2) ** 2)
    sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.sigmas, sched.timesteps = sigmas.clone(), timesteps.clone()  # the pipeline's shifted schedule (see above)
    cond = fam.encode(pipe, ["a red circle"] * 2)
    for i, t in enumerate(timesteps[:2]):
        x_t = dyn.noised(x0, noise, t.expand(2))
        sched._step_index = None
        torch.testing.assert_close(x_t, sched.scale_noise(x0, t.expand(2), noise), rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            v = fam.denoise(pipe, x_t, t.expand(2), cond)
        ours = euler_step(x_t, v, float(sigmas[i]), float(sigmas[i + 1]))
        sched._step_index = i
        torch.testing.assert_close(ours, sched.step(v, t, x_t).prev_sample, rtol=1e-6, atol=1e-6)
        sigma = float(t) / 1000
        torch.testing.assert_close(euler_step(x_t, flow_velocity(x0, noise), sigma, 0.0), x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", ("flux-schnell", *SD3_BUILDS))
def test_joint_attention_probe_is_the_processors_attention(all_tiny_pipes, build):
    """In every joint block (SD3: the last, context_pre_only, block included), the probe's joint softmax applied to
    the block's values gives exactly the attention output the processor hands to ``to_out`` (image tokens): the
    probabilities are the ones the model uses (FLUX: RoPE, text keys first; SD3: no RoPE, text keys last)."""
    pipe, fam, _ = _flux(all_tiny_pipes, build)
    den = fam.get_denoiser(pipe)
    blocks = joint_attention_blocks(den)
    assert len(blocks) == (1 if build in FLUX_BUILDS else den.config.num_layers)
    seen: dict = {}

    def pre(name):
        def hook(module, args, kwargs):
            hs, ehs = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
            P = joint_attention_probs(module, hs, ehs, kwargs.get("image_rotary_emb"))  # (B, h, N, L + N)
            d = module.to_v.out_features // module.heads
            v = torch.cat([module.add_v_proj(ehs), module.to_v(hs)], dim=1).unflatten(-1, (-1, d))  # (B, L + N, h, d)
            seen["mine", name] = torch.einsum("bhnm,bmhd->bnhd", P, v).flatten(2)  # (B, N, h·d)
            seen["P", name] = P

        return hook

    def theirs(name):
        return lambda m, a: seen.__setitem__(("theirs", name), a[0])

    handles = []
    for name in blocks:
        attn = den.get_submodule(name)
        handles += [attn.register_forward_pre_hook(pre(name), with_kwargs=True)]
        handles += [attn.to_out[0].register_forward_pre_hook(theirs(name))]
    try:
        side = fam.sample_size(pipe)
        x = torch.randn(1, fam.latent_channels(pipe), side, side, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            fam.denoise(pipe, x, torch.tensor([700.0]), fam.encode(pipe, ["a red circle"]))
    finally:
        for h in handles:
            h.remove()
    for name in blocks:
        torch.testing.assert_close(seen["mine", name], seen["theirs", name], rtol=1e-4, atol=1e-5)
        P = seen["P", name]
        torch.testing.assert_close(P.sum(-1), torch.ones_like(P[..., 0]))


FLUX_FINE_TUNING = {
    "esd-x": {"iterations": 20, "lr": 2e-3, "pool_latents": 2, "pool_steps": 3},
    "esd-u": {"iterations": 20, "lr": 1e-3, "pool_latents": 2, "pool_steps": 3},
    "esd-x-strict": {"iterations": 20, "lr": 2e-3, "pool_latents": 2, "pool_steps": 3},
}


@pytest.mark.parametrize("build", FLOW_BUILDS)
@pytest.mark.parametrize("method", sorted(FLUX_FINE_TUNING))
def test_esd_on_flow_models_lowers_its_objective_trains_only_the_declared_layers_and_reverts(
    all_tiny_pipes, build, method
):
    pipe, fam, _ = _flux(all_tiny_pipes, build)
    adapter = PipelineAdapter(pipe)
    before = {k: v.clone() for k, v in fam.get_denoiser(pipe).state_dict().items()}
    edit = erasekit.erase(pipe, method=method, concepts=["Van Gogh"], progress=False, **FLUX_FINE_TUNING[method])
    declared = set(trainable_modules(adapter, method, erasekit.make_config(method)))
    assert {le.path for le in edit.layers.values()} == declared
    eta = edit.stats["negative_guidance"]
    assert _esd_eval_loss(pipe, edit, "Van Gogh", eta) <= 0.9 * _esd_eval_loss(pipe, None, "Van Gogh", eta)
    edit.apply(pipe)
    changed = {k for k, v in fam.get_denoiser(pipe).state_dict().items() if not torch.equal(before[k], v)}
    assert changed and {k.rsplit(".", 1)[0] for k in changed} <= declared
    edit.revert(pipe)
    assert all(torch.equal(before[k], v) for k, v in fam.get_denoiser(pipe).state_dict().items())


def _esd_layer_split(all_tiny_pipes, build):
    """(adapter, ESD config, ESD-x's modules, ESD-u's modules, every Linear / Conv2d of the denoiser) on ``build``."""
    pipe, fam, _ = _flux(all_tiny_pipes, build)
    adapter = PipelineAdapter(pipe)
    cfg = erasekit.make_config("esd-x")
    x, u = (set(trainable_modules(adapter, v, cfg)) for v in ("esd-x", "esd-u"))
    den = fam.get_denoiser(pipe)
    layers = {n for n, m in den.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    return adapter, cfg, x, u, layers


def test_esd_layers_on_flux_are_the_attention_and_the_rest(all_tiny_pipes):
    """ESD-x: every Linear of every attention module (double and single stream, as esd_flux.py); ESD-u: every other
    Linear / Conv2d; strict: the family's two static sites. Disjoint, and together every trainable layer."""
    adapter, cfg, x, u, layers = _esd_layer_split(all_tiny_pipes, "flux")
    assert x and u and not x & u and x | u == layers
    assert {n.split(".")[0] for n in x} == {"transformer_blocks", "single_transformer_blocks"}
    assert any(n.endswith("add_k_proj") for n in x) and all(".attn." in n for n in x)
    assert set(trainable_modules(adapter, "esd-x-strict", cfg)) == set(adapter.paths)
    assert resolve(cfg, "esd-x", "flux") == (1e-4, 2.0, 3.5) and resolve(cfg, "esd-u", "flux")[0] == 1e-5


@pytest.mark.parametrize("build", SD3_BUILDS)
def test_esd_layers_on_sd3_are_the_joint_attention_and_the_rest(all_tiny_pipes, build):
    """ESD-x: every Linear of every block's joint attention ``attn``, exactly what esd_sd35.py's ``'.attn.' in name``
    selects, and never SD3.5-M's image self-attention ``attn2`` (which ESD-u trains, as esd_sd35.py does); ESD-u:
    every other Linear / Conv2d; strict: the family's two static sites. Disjoint, and together every layer."""
    adapter, cfg, x, u, layers = _esd_layer_split(all_tiny_pipes, build)
    assert x and u and not x & u and x | u == layers
    assert x == {n for n in layers if ".attn." in n}  # esd_sd35.py's get_esd_trainable_parameters
    assert {n.rsplit(".", 1)[-1] for n in x} >= {"to_q", "to_k", "to_v", "add_k_proj", "add_v_proj", "add_q_proj"}
    attn2 = {n for n in layers if ".attn2." in n}
    assert bool(attn2) == (build == "sd3") and attn2 <= u
    assert set(trainable_modules(adapter, "esd-x-strict", cfg)) == set(adapter.paths)
    assert resolve(cfg, "esd-x", "sd3") == resolve(cfg, "esd-u", "sd3") == (3e-5, 2.0, 7.5)


def _check_ace_and_mace_fine_tune(pipe, fam) -> None:
    """ACE's loss falls, MACE's LoRA stage trains (per site group) and changes its fused edit, only the sites move,
    revert is bit-exact."""
    before = {k: v.clone() for k, v in fam.get_denoiser(pipe).state_dict().items()}
    kw = dict(concepts=["a red circle"], preserve=["a blue square"], kind="object", progress=False)
    ace = erasekit.erase(
        pipe, "ace", train_steps=8, lr=2e-2, adv_steps=0, pool_latents=1, pool_steps=3, batch_size=2, **kw
    )
    assert ace.stats["loss_last"] < ace.stats["loss_first"]
    mace = erasekit.erase(pipe, "mace", train_steps=4, lr=1e-2, n_images=1, image_steps=2, **kw)
    closed = erasekit.erase(pipe, "mace", train_steps=0, **kw)
    groups = mace.stats["groups"].values() if "groups" in mace.stats else [mace.stats]
    for group in groups:
        (lora,) = group["lora"]
        # MACE draws a new (image, timestep, noise) every step, so its first and last losses are on different samples
        # and not comparable at 4 steps; what must hold is that the LoRA stage trained and changed the fused edit.
        assert lora["train_steps"] == 4 and math.isfinite(lora["loss_last"]) and 0 < lora["mask_share"] <= 1
    den = fam.get_denoiser(pipe)
    w0 = {k: den.get_submodule(le.path).weight.detach() for k, le in mace.layers.items()}
    assert any(
        not torch.allclose(mace.layers[k].materialize(w), closed.layers[k].materialize(w)) for k, w in w0.items()
    )
    sites = set(PipelineAdapter(pipe).paths)
    for edit in (ace, mace):
        assert set(edit.layers) == sites
        edit.apply(pipe)
        state = fam.get_denoiser(pipe).state_dict()
        changed = {k.rsplit(".", 1)[0] for k, v in state.items() if not torch.equal(before[k], v)}
        assert changed and changed <= sites
        edit.revert(pipe)
        assert all(torch.equal(before[k], v) for k, v in fam.get_denoiser(pipe).state_dict().items())


@pytest.mark.parametrize("build", FLOW_BUILDS)
def test_ace_lowers_its_loss_and_mace_trains_its_lora_on_flow_models_and_both_revert(all_tiny_pipes, build):
    """ACE (both site groups in one stage-2 loss) and MACE's LoRA stage (per group, on the joint attention maps)
    train on FLUX and SD3: ACE's loss falls, MACE's LoRA stage changes its fused edit, only the sites move, revert
    is bit-exact."""
    pipe, fam, _ = _flux(all_tiny_pipes, build)
    _check_ace_and_mace_fine_tune(pipe, fam)


# ------------------------------------------------------- cross-attention DiTs (PixArt: DDPM ε; Sana: flow matching)
DIT_BUILDS = ("pixart", "sana")
DIT_FINE_TUNING = {
    "esd-x": {"iterations": 20, "lr": 2e-3, "pool_latents": 2, "pool_steps": 3},
    "esd-u": {"iterations": 20, "lr": 1e-3, "pool_latents": 2, "pool_steps": 3},
}


def test_pixart_ddim_step_with_the_familys_guided_epsilon_is_the_pipelines_step(all_tiny_pipes):
    """PixArt's sampler is its pipeline's own call (DDIM): one DDIM step from the trajectory's start with the family's
    guided prediction (the first C of the 2C learned-sigma channels, CFG against the pipeline's "") lands exactly on
    the trajectory's next input."""
    from diffusers import DDIMScheduler

    pipe = all_tiny_pipes["pixart"]
    fam = identify(pipe)
    dyn = fam.dynamics(pipe)
    assert dyn.prediction == "epsilon" and fam.get_denoiser(pipe).config.out_channels == 2 * fam.latent_channels(pipe)
    tr = dyn.trajectory(fam, pipe, "a red circle", n=2, steps=3, guidance=4.0, seed=5)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(3)
    cond = fam.encode(pipe, ["a red circle"]).index([0, 0])
    with torch.no_grad():
        eps = dyn.guided(fam, pipe, tr.xs[0], tr.ts[0].expand(2), cond, fam.encode_unconditional(pipe, 2), 4.0)
    torch.testing.assert_close(sched.step(eps, tr.ts[0], tr.xs[0]).prev_sample, tr.xs[1], rtol=1e-4, atol=1e-5)


def test_sana_sampler_is_the_pipelines_own(all_tiny_pipes):
    """Sana's trajectory (Euler on the scheduler's shifted σ, CFG in one call against the pipeline's own negative:
    "" without the instruction prefix) ends where SanaPipeline ends from the same seeds."""
    pipe = all_tiny_pipes["sana"]
    fam = identify(pipe)
    dyn = fam.dynamics(pipe)
    assert dyn.prediction == "flow"
    tr, out = _trajectory_and_pipeline(dyn, fam, pipe, **fam.generation_kwargs(pipe, 4.0, 1))
    torch.testing.assert_close(tr.final, out, rtol=1e-4, atol=1e-5)
    assert len(tr.xs) == len(tr.ts) == 3 and tr.ts[0] > tr.ts[-1]


@pytest.mark.parametrize("build", DIT_BUILDS)
def test_cross_attention_probe_is_the_processors_attention(all_tiny_pipes, build):
    """The probe's softmax over the text tokens (the block's mask added), applied to the block's values, gives the
    attention output the processor hands to ``to_out``: MACE reads the probabilities the model uses, padding masked."""
    pipe = all_tiny_pipes[build]
    fam = identify(pipe)
    den = fam.get_denoiser(pipe)
    block = fam.text_attention_modules(pipe)[0]
    attn = den.get_submodule(block)
    seen: dict = {}

    def pre(module, args, kwargs):
        seen["v"] = module.to_v(kwargs["encoder_hidden_states"])  # (B, L, h·d)

    h1 = attn.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = attn.to_out[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("theirs", a[0]))
    cond = fam.encode(pipe, ["a red circle", "a photo of a blue square on a table"])
    try:
        side = fam.sample_size(pipe)
        x = torch.randn(2, fam.latent_channels(pipe), side, side, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), fam.text_attention_probe(pipe, [f"{block}.to_k"], lambda b, P: seen.__setitem__("P", P)):
            fam.denoise(pipe, x, torch.tensor([700.0, 700.0]), cond)
    finally:
        h1.remove()
        h2.remove()
    P, v = seen["P"], seen["v"]  # (B, h, N, L), (B, L, h·d)
    mine = torch.einsum("bhnl,blhd->bnhd", P, v.unflatten(-1, (attn.heads, -1))).flatten(2)
    torch.testing.assert_close(mine, seen["theirs"], rtol=1e-4, atol=1e-5)
    pad = cond.mask == 0  # (B, L)
    assert (
        bool(pad.any())
        and float(P.permute(0, 2, 1, 3)[pad[:, None, None, :].expand_as(P.permute(0, 2, 1, 3))].max()) < 1e-3
    )


def test_esd_trains_attn2_on_the_dits_and_every_other_layer_as_esd_u(all_tiny_pipes):
    """ESD-x: every Linear of the cross-attention ``attn2`` (found by structure: Sana's linear ``attn1`` is image
    self-attention); ESD-u: every other Linear / Conv2d; strict: the K / V sites. Disjoint and together every layer."""
    for build in DIT_BUILDS:
        pipe = all_tiny_pipes[build]
        den = identify(pipe).get_denoiser(pipe)
        adapter = PipelineAdapter(pipe)
        cfg = erasekit.make_config("esd-x")
        x, u = (set(trainable_modules(adapter, v, cfg)) for v in ("esd-x", "esd-u"))
        layers = {n for n, m in den.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
        assert x and u and not x & u and x | u == layers
        assert {n.rsplit(".attn2.", 1)[0] for n in x} == {
            f"transformer_blocks.{i}" for i in range(len(den.transformer_blocks))
        }
        assert set(trainable_modules(adapter, "esd-x-strict", cfg)) == set(adapter.paths)


@pytest.mark.slow  # ~30-100 s each on 2 CPU cores; the registry matrix (test_engine) fits every method here fast
@pytest.mark.parametrize("build", DIT_BUILDS)
@pytest.mark.parametrize("method", sorted(DIT_FINE_TUNING))
def test_esd_on_the_dits_lowers_its_objective_saves_and_reverts(all_tiny_pipes, build, method, tmp_path):
    """ESD-x trains attn2 (the cross-attention: every Linear of it), ESD-u the rest; the objective falls on held-out
    samples, only the declared layers move, the saved file strict-loads to the same weights, revert is bit-exact."""
    pipe = all_tiny_pipes[build]
    fam = identify(pipe)
    adapter = PipelineAdapter(pipe)
    before = {k: v.clone() for k, v in fam.get_denoiser(pipe).state_dict().items()}
    edit = erasekit.erase(pipe, method=method, concepts=["Van Gogh"], progress=False, **DIT_FINE_TUNING[method])
    declared = set(trainable_modules(adapter, method, erasekit.make_config(method)))
    assert {le.path for le in edit.layers.values()} == declared
    if method == "esd-x":
        assert declared and all(".attn2." in n for n in declared)
    else:
        assert declared and not any(".attn2." in n for n in declared)
    eta = edit.stats["negative_guidance"]
    assert _esd_eval_loss(pipe, edit, "Van Gogh", eta) <= 0.9 * _esd_eval_loss(pipe, None, "Van Gogh", eta)
    edit.apply(pipe)
    want = {k: v.clone() for k, v in fam.get_denoiser(pipe).state_dict().items()}
    changed = {k for k, v in want.items() if not torch.equal(before[k], v)}
    assert changed and {k.rsplit(".", 1)[0] for k in changed} <= declared
    edit.revert(pipe)
    assert all(torch.equal(before[k], v) for k, v in fam.get_denoiser(pipe).state_dict().items())
    loaded = erasekit.load_edit(edit.save(tmp_path / "e.safetensors"), pipe)
    try:
        assert all(torch.equal(want[k], v) for k, v in fam.get_denoiser(pipe).state_dict().items())
    finally:
        loaded.revert(pipe)
    assert all(torch.equal(before[k], v) for k, v in fam.get_denoiser(pipe).state_dict().items())


@pytest.mark.slow  # ~80-170 s each on 2 CPU cores
@pytest.mark.parametrize("build", DIT_BUILDS)
def test_ace_lowers_its_loss_and_mace_trains_its_lora_on_the_dits_and_both_revert(all_tiny_pipes, build):
    """ACE and MACE's LoRA stage (on attn2's masked attention maps) train on PixArt and Sana: ACE's loss falls, the
    LoRA stage changes MACE's fused edit, only the sites move, revert is bit-exact."""
    pipe = all_tiny_pipes[build]
    _check_ace_and_mace_fine_tune(pipe, identify(pipe))


def test_sana_euler_schedule_follows_the_released_dpm_solver_flow_schedule():
    """Released Sana ships DPM-Solver++ in flow mode (``flow_shift``); the family's Euler sampler reads that shift, so
    its σ schedule is the scheduler's (the scheduler's first σ is shift(1 − 1/1000), ours 1)."""
    from types import SimpleNamespace

    from diffusers import DPMSolverMultistepScheduler

    from erasekit.models.families.sana import SANA

    sched = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    ours, _ = SANA.dynamics(SimpleNamespace(scheduler=sched)).schedule(20, 1024)
    sched.set_timesteps(20)
    theirs = torch.as_tensor(sched.sigmas, dtype=torch.float32)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)
    unshifted, _ = SANA.dynamics(SimpleNamespace(scheduler=DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0))).schedule(20, 1024)  # fmt: skip
    assert float((ours[1:-1] - unshifted[1:-1]).min()) > 0  # the shift moves every inner σ up
