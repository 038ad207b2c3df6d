"""RECE, SPEED, CURE and the UCE presets against independent oracles.

Oracles: an LBFGS minimiser (RECE's adversarial embedding), direct re-statements of the reference
scripts with explicit inverses (UCE v1 ``train_erase.py``, UCE v2 ``uce_sd_erase.py``, RECE
``close_form_emb_regzero`` + ``edit_model_adversarial``, SPEED's ΔW formula), an eigen-decomposition
construction of CURE's projector, and the algebraic identities the methods promise
(SPEED: ΔW K2 = 0 at λ = 0, ΔW (I − P) = 0; CURE: leak (1 − f(r)) on retain directions).
Random instances: seeded random matrices, and seeded random concept lists on the tiny pipelines.
"""

import random

import pytest
import torch

import erasekit
from erasekit import linalg
from erasekit.concepts import REFERENCE_TEMPLATES, ConceptSet
from erasekit.errors import MethodError
from erasekit.methods import get_method, make_config
from erasekit.methods.cure import spectral_projector_factors
from erasekit.methods.rece import adversarial_embedding, adversarial_objective
from erasekit.methods.speed import iec_right_factor, kmeans, speed_columns
from erasekit.models.adapter import PipelineAdapter

F64 = torch.float64
WORDS = [
    "Van Gogh",
    "Claude Monet",
    "Pablo Picasso",
    "cat",
    "dog",
    "church",
    "golf ball",
    "Kelly McKernan",
    "tench",
    "parachute",
]


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _weights(pipe, edit):
    return {p: le.materialize(pipe.unet.get_submodule(p).weight).double() for p, le in edit.layers.items()}


def _kv_layers(pipe):
    """(path, Linear) of every cross-attention to_k / to_v, found as the reference scripts do ('attn2' modules)."""
    return [(n, m) for n, m in pipe.unet.named_modules() if "attn2" in n and (n.endswith("to_k") or n.endswith("to_v"))]


_TEXT_CACHE = {}


def _text_embeddings(pipe, texts):
    """(B, 77, d) float64 as the v1 / RECE scripts compute them: text_encoder(input_ids)[0] (cached: the
    scripts re-encode inside their layer loop, with the same result)."""
    key = (id(pipe), tuple(texts))
    if key not in _TEXT_CACHE:
        _TEXT_CACHE[key] = _encode(pipe, texts)
    return _TEXT_CACHE[key]


def _encode(pipe, texts):
    tok = pipe.tokenizer
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        emb = pipe.text_encoder(ids.input_ids)[0]
    return emb.double(), ids.attention_mask


# ---------------------------------------------------------------- UCE v1 (train-scripts/train_erase.py)
def uce_v1_reference(
    pipe, old_texts, new_texts, retain_texts, lamb=0.5, erase_scale=1.0, preserve_scale=None, weights=None
):
    """Re-statement of train_erase.py's edit_model(technique='replace'), in float64. Returns {path: W}."""
    if preserve_scale is None:
        preserve_scale = max(0.1, 1 / len(retain_texts))
    new_texts = [" " if t == "" else t for t in new_texts]
    out = {}
    for path, layer in _kv_layers(pipe):
        W = (weights or {}).get(path, layer.weight.detach().double())
        mat1 = lamb * W
        mat2 = lamb * torch.eye(W.shape[1], dtype=F64)
        for old_text, new_text in zip(old_texts, new_texts):
            emb, mask = _text_embeddings(pipe, [old_text, new_text])
            i_old, i_new = int(mask[0].sum()) - 2, int(mask[1].sum()) - 2
            far = max(i_new, i_old)
            old_emb = emb[0][i_old : len(emb[0]) - max(0, far - i_old)]
            new_emb = emb[1][i_new : len(emb[1]) - max(0, far - i_new)]
            values = new_emb @ W.T  # layer(new_emb)
            mat1 += erase_scale * (values.unsqueeze(2) @ old_emb.unsqueeze(1)).sum(0)
            mat2 += erase_scale * (old_emb.unsqueeze(2) @ old_emb.unsqueeze(1)).sum(0)
        for text in retain_texts:
            emb, _ = _text_embeddings(pipe, [text, text])
            values = emb[1] @ W.T
            mat1 += preserve_scale * (values.unsqueeze(2) @ emb[0].unsqueeze(1)).sum(0)
            mat2 += preserve_scale * (emb[0].unsqueeze(2) @ emb[0].unsqueeze(1)).sum(0)
        out[path] = mat1 @ torch.inverse(mat2)
    return out


# ---------------------------------------------------------------- UCE v2 (trainscripts/uce_sd_erase.py)
def uce_v2_reference(
    pipe, edit_concepts, guide_concepts, preserve_concepts, erase_scale=1.0, preserve_scale=1.0, lamb=0.5, expand=None
):
    """Re-statement of uce_sd_erase.py's UCE() (and its --expand_prompts block), in float64."""
    edit_concepts, guide_concepts = list(edit_concepts), list(guide_concepts)
    if expand is not None:
        for concept, guide in zip(list(edit_concepts), list(guide_concepts)):
            tpl = REFERENCE_TEMPLATES["style" if expand == "art" else "object"][1:]
            edit_concepts.extend([t.replace("{}", concept) for t in tpl])
            guide_concepts.extend([t.replace("{}", guide) for t in tpl])
    embeds = {}
    for e in edit_concepts + guide_concepts + preserve_concepts:
        if e in embeds:
            continue
        t_emb = pipe.encode_prompt(prompt=e, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        last = (
            pipe.tokenizer(
                e,
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )["attention_mask"].sum()
            - 2
        )
        embeds[e] = t_emb[0][:, last, :].double()  # (1, d)
    out = {}
    for path, module in _kv_layers(pipe):
        w_old = module.weight.detach().double()
        mat1 = lamb * w_old
        mat2 = lamb * torch.eye(w_old.shape[1], dtype=F64)
        for e, g in zip(edit_concepts, guide_concepts):
            c_i, v_i = embeds[e].T, (embeds[g] @ w_old.T).T
            mat1 += erase_scale * (v_i @ c_i.T)
            mat2 += erase_scale * (c_i @ c_i.T)
        for p in preserve_concepts:
            c_i, v_i = embeds[p].T, (embeds[p] @ w_old.T).T
            mat1 += preserve_scale * (v_i @ c_i.T)
            mat2 += preserve_scale * (c_i @ c_i.T)
        out[path] = mat1 @ torch.inverse(mat2)
    return out


def _random_concepts(seed):
    rng = random.Random(seed)
    words = rng.sample(WORDS, 4)
    return words[:1] if seed % 2 else words[:2], words[2:]


@pytest.mark.parametrize("family", ["sd", "sd2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uce_v1_preset_equals_train_erase_restated(tiny_pipes, family, seed):
    pipe = tiny_pipes[family]
    erase, preserve = _random_concepts(seed)
    kind, templates = [("style", False), ("object", True), ("style", True)][seed]
    guide = "art" if kind == "style" else ""
    edit = erasekit.erase(
        pipe,
        method="uce",
        preset="v1",
        concepts=erase,
        kind=kind,
        guide=guide,
        preserve=preserve,
        templates=templates,
        progress=False,
    )
    old, new = [], []
    for c in erase:  # train_erase.py: the concept, then additional_prompts, all mapped to the bare guide
        for t in REFERENCE_TEMPLATES[kind] if templates else ("{}",):
            old.append(t.replace("{}", c))
            new.append(guide)
    ref = uce_v1_reference(pipe, old, new, [""] + preserve)
    got = _weights(pipe, edit)
    assert set(got) == set(ref)
    for p in ref:
        torch.testing.assert_close(got[p], ref[p], rtol=1e-5, atol=1e-6)
    assert edit.config["preserve_scale"] == max(0.1, 1 / (1 + len(preserve)))


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uce_v2_preset_equals_uce_sd_erase_restated(tiny_pipes, family, seed):
    pipe = tiny_pipes[family]
    erase, preserve = _random_concepts(seed)
    kind, templates = [("style", False), ("object", True), ("style", True)][seed]
    guide = "art" if kind == "style" else ""
    edit = erasekit.erase(
        pipe,
        method="uce",
        concepts=erase,
        kind=kind,
        guide=guide,
        preserve=preserve,
        templates=templates,
        progress=False,
    )
    assert edit.config["preset"] == "v2"  # the default
    ref = uce_v2_reference(
        pipe,
        erase,
        [guide] * len(erase),
        preserve,
        expand=("art" if kind == "style" else "object") if templates else None,
    )
    got = _weights(pipe, edit)
    for p in ref:
        torch.testing.assert_close(got[p], ref[p], rtol=1e-5, atol=1e-6)


def test_presets_differ_as_documented(tiny_pipes):
    pipe = tiny_pipes["sd"]
    kw = dict(concepts=["cat"], kind="object", preserve=["dog"], templates=True, progress=False)
    v1, v2, ek = (erasekit.erase(pipe, method="uce", preset=p, **kw) for p in ("v1", "v2", "erasekit"))
    assert (
        v2.stats["templates"] == list(REFERENCE_TEMPLATES["object"]) and v1.stats["templates"] == v2.stats["templates"]
    )
    assert ek.stats["templates"] != v2.stats["templates"]
    assert v2.stats["preserve_prompts"] == 1 and ek.stats["preserve_prompts"] == len(
        ek.stats["templates"]
    )  # templates on preserve: erasekit only
    assert v1.stats["preserve_prompts"] == 2 and v1.stats["preserve_token"] == "all" and v1.stats["token"] == "tail"
    nsfw = erasekit.erase(pipe, method="uce", concepts=["nudity"], kind="nsfw", progress=False)
    assert nsfw.config["preset"] == "v1" and nsfw.config["token"] == "tail" and nsfw.config["preserve_scale"] == 1.0
    override = erasekit.erase(pipe, method="uce", preset="v1", token="last", preserve_scale=0.3, **kw)
    assert override.config["token"] == "last" and override.config["preserve_scale"] == 0.3


# ---------------------------------------------------------------- UCE-FLUX (trainscripts/uce_flux_edit.py)
def uce_flux_reference(
    pipe, edit_concepts, guide_concepts, preserve_concepts, erase_scale=1.0, preserve_scale=1.0, lamb=0.5, expand=None,
    with_bias=True,
):  # fmt: skip
    """Re-statement of uce_flux_edit.py's UCE() (and its --expand_prompts block), in float64, on the modules it picks
    by name ('context_embedder', 'text_embedder.linear_1'). Its guide / preserve targets are ``module(c)``, bias
    included (``with_bias``); ``with_bias=False`` takes ``W0 c`` instead, the target erasekit maps onto.

    Returns ({module name: new weight}, {module name: (M, s)}) with M = λI + α Σ c_e c_eᵀ + β Σ c_p c_pᵀ and
    s = α Σ c_e + β Σ c_p, the pieces of the bias term."""
    edit_concepts, guide_concepts = list(edit_concepts), list(guide_concepts)
    if expand is not None:
        for concept, guide in zip(list(edit_concepts), list(guide_concepts)):
            tpl = REFERENCE_TEMPLATES["style" if expand == "art" else "object"][1:]
            edit_concepts.extend([t.replace("{}", concept) for t in tpl])
            guide_concepts.extend([t.replace("{}", guide) for t in tpl])
    length = 512 if pipe.transformer.config.guidance_embeds else 256  # the script: 256 when 'schnell' is the model
    modules = [
        (n, m) for n, m in pipe.transformer.named_modules() if "context_embedder" in n or "text_embedder.linear_1" in n
    ]
    embeds = {}
    for e in edit_concepts + guide_concepts + preserve_concepts:
        if e in embeds:
            continue
        with torch.no_grad():
            t_emb = pipe.encode_prompt(
                prompt=e, prompt_2=None, device="cpu", num_images_per_prompt=1, max_sequence_length=length
            )
        mask = pipe.tokenizer_2(e, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        last = mask["attention_mask"].sum() - 2
        embeds[e] = [t_emb[0][:, last, :].double(), t_emb[1].double()]  # (1, d_t5), (1, d_clip)
    out, pieces = {}, {}
    for name, module in modules:
        w_old = module.weight.detach().double()
        bias = module.bias.detach().double() if with_bias else torch.zeros(w_old.shape[0], dtype=F64)
        emb_idx = 1 if w_old.shape[1] == embeds[edit_concepts[0]][1].shape[1] else 0  # the script: shape == 768

        def target(c, w_old=w_old, bias=bias):
            return c @ w_old.T + bias  # module(c): (1, d_out)

        mat1 = lamb * w_old
        mat2 = lamb * torch.eye(w_old.shape[1], dtype=F64)
        s = torch.zeros(w_old.shape[1], 1, dtype=F64)
        for e, g in zip(edit_concepts, guide_concepts):
            c_i, v_i = embeds[e][emb_idx].T, target(embeds[g][emb_idx]).T
            mat1 += erase_scale * (v_i @ c_i.T)
            mat2 += erase_scale * (c_i @ c_i.T)
            s += erase_scale * c_i
        for p in preserve_concepts:
            c_i, v_i = embeds[p][emb_idx].T, target(embeds[p][emb_idx]).T
            mat1 += preserve_scale * (v_i @ c_i.T)
            mat2 += preserve_scale * (c_i @ c_i.T)
            s += preserve_scale * c_i
        out[name] = mat1 @ torch.inverse(mat2)
        pieces[name] = (mat2, s)
    return out, pieces


@pytest.mark.parametrize("build", ["flux", "flux-schnell"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uce_v2_on_flux_equals_uce_flux_edit_restated(all_tiny_pipes, build, seed):
    """erasekit's ``uce`` (preset v2) on FLUX edits the script's two modules with its columns (last T5 token before
    EOS, the pooled CLIP vector) and equals its solve, up to one documented deviation: the script's targets are
    ``module(c) = W0 c + b``, so its edit maps W c_e onto W0 c_g + b (the layer then adds b again) and pulls preserved
    outputs by b; erasekit maps onto W0 c_g. Bias-free, the two agree to rounding; with the bias, the script's weight
    is erasekit's plus exactly b sᵀ M⁻¹."""
    pipe = all_tiny_pipes[build]
    erase, preserve = _random_concepts(seed)
    kind, templates = [("style", False), ("object", True), ("style", True)][seed]
    guide = "art" if kind == "style" else ""
    edit = erasekit.erase(
        pipe, method="uce", preset="v2", concepts=erase, kind=kind, guide=guide, preserve=preserve,
        templates=templates, storage="dense", progress=False,
    )  # fmt: skip
    args = (pipe, erase, [guide] * len(erase), preserve)
    expand = ("art" if kind == "style" else "object") if templates else None
    ref, pieces = uce_flux_reference(*args, expand=expand)
    bias_free, _ = uce_flux_reference(*args, expand=expand, with_bias=False)
    assert sorted(edit.layers) == sorted(ref)  # the same two modules
    for name, W_ref in ref.items():
        W = edit.layers[name].tensors["weight"].double()
        assert _rel(W, bias_free[name]) < 1e-6, name  # float32 storage of a float64 solve (measured: ≤ 3e-8)
        M, s = pieces[name]
        b = pipe.transformer.get_submodule(name).bias.detach().double()
        torch.testing.assert_close(W_ref, bias_free[name] + b[:, None] @ (s.T @ torch.inverse(M)), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- RECE
def test_rece_adversarial_embedding_equals_lbfgs_minimiser():
    g = torch.Generator().manual_seed(0)
    d = 12
    W_orig = [torch.randn(o, d, generator=g, dtype=F64) for o in (8, 16, 5)]
    W_cur = [W + 0.3 * torch.randn(W.shape, generator=g, dtype=F64) for W in W_orig]
    c = torch.randn(d, 3, generator=g, dtype=F64)
    reg = 0.1
    x = torch.zeros(d, 3, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [x], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = sum(((Wc @ x - Wo @ c) ** 2).sum() for Wc, Wo in zip(W_cur, W_orig)) + reg * (x**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    c_adv = adversarial_embedding(W_cur, W_orig, c, reg)
    assert _rel(c_adv, x.detach()) < 1e-6
    assert (
        adversarial_objective(W_cur, W_orig, c_adv, c, reg)
        <= adversarial_objective(W_cur, W_orig, x.detach(), c, reg) + 1e-9
    )


def rece_reference(
    pipe, concept, guide, retain_texts, epochs, reg_scale, uce_retain, lamb=0.1, erase_scale=1.0, preserve_scale=0.1
):
    """UCE v1 start, then close_form_emb_regzero + edit_model_adversarial(technique='replace'), re-stated."""
    orig = {p: m.weight.detach().double() for p, m in _kv_layers(pipe)}
    W = uce_v1_reference(pipe, [concept], [guide], uce_retain)
    residuals = []
    for _ in range(epochs):
        emb, _ = _text_embeddings(pipe, [concept])
        mat1 = torch.eye(emb.shape[-1], dtype=F64) * reg_scale
        mat2 = torch.zeros_like(mat1)
        for p in W:
            mat1 = mat1 + W[p].T @ W[p]
            mat2 = mat2 + W[p].T @ orig[p]
        adv = emb[0] @ (torch.inverse(mat1) @ mat2).T  # (77, d)
        new_emb = _text_embeddings(pipe, [" " if guide == "" else guide])[0][0]
        W_next, before, after = {}, 0.0, 0.0
        for p, Wp in W.items():
            mat1 = lamb * Wp
            mat2 = lamb * torch.eye(Wp.shape[1], dtype=F64)
            values = new_emb @ Wp.T
            mat1 += erase_scale * (values.unsqueeze(2) @ adv.unsqueeze(1)).sum(0)
            mat2 += erase_scale * (adv.unsqueeze(2) @ adv.unsqueeze(1)).sum(0)
            for text in retain_texts:
                e, _ = _text_embeddings(pipe, [text, text])
                mat1 += preserve_scale * ((e[1] @ Wp.T).unsqueeze(2) @ e[0].unsqueeze(1)).sum(0)
                mat2 += preserve_scale * (e[0].unsqueeze(2) @ e[0].unsqueeze(1)).sum(0)
            W_next[p] = mat1 @ torch.inverse(mat2)
            before += float(((adv @ Wp.T - values) ** 2).sum())
            after += float(((adv @ W_next[p].T - values) ** 2).sum())
        residuals.append((before, after))
        W = W_next
    return W, residuals


@pytest.mark.parametrize("kind", ["nsfw", "style"])
def test_rece_equals_reference_restated_and_epochs_do_not_increase_the_residual(tiny_pipes, kind):
    pipe = tiny_pipes["sd"]
    if kind == "nsfw":  # train.py: 3 epochs, λ_r 0.1, retain [' '] per concept, UCE start preserve_false
        edit = erasekit.erase(pipe, method="rece", concepts=["nudity"], kind="nsfw", progress=False)
        ref, res = rece_reference(pipe, "nudity", "", [" "], 3, 0.1, [""])
    else:  # train_artists.py: 1 epoch, λ_r 1e-3, retain [''] + preserve, guide 'art'
        edit = erasekit.erase(
            pipe, method="rece", concepts=["Kelly McKernan"], kind="style", preserve=["Claude Monet"], progress=False
        )
        ref, res = rece_reference(pipe, "Kelly McKernan", "art", ["", "Claude Monet"], 1, 1e-3, ["", "Claude Monet"])
    assert len(edit.stats["epochs"]) == len(res) == (3 if kind == "nsfw" else 1)
    got = _weights(pipe, edit)
    for p in ref:
        torch.testing.assert_close(got[p], ref[p], rtol=1e-5, atol=1e-6)
    for ep, (before, after) in zip(edit.stats["epochs"], res):
        assert after <= before * (1 + 1e-9)  # independent computation: one epoch never increases Σ‖W″c′ − W′c_g‖²
        assert ep["erase_residual_after"] <= ep["erase_residual_before"] * (1 + 1e-9)
        assert ep["erase_residual_after"] == pytest.approx(after, rel=1e-6)


def test_rece_judge_keeps_the_lowest_rate_epoch(tiny_pipes):
    pipe = tiny_pipes["sd"]
    adapter = PipelineAdapter(pipe)
    concepts = ConceptSet(erase=("nudity",), kind="nsfw")
    rates = iter([0.5, 0.2, 0.3, 0.2])  # uce, epoch-0, epoch-1, epoch-2: epoch-0 is the earliest lowest
    seen = []
    edit = get_method("rece").fit(
        adapter, concepts, make_config("rece"), progress=False, judge=lambda e: seen.append(e) or next(rates)
    )
    assert len(seen) == 4 and edit.stats["selected"] == "epoch-0"
    assert edit.stats["rates"] == {"uce": 0.5, "epoch-0": 0.2, "epoch-1": 0.3, "epoch-2": 0.2}
    one = erasekit.erase(pipe, method="rece", concepts=["nudity"], kind="nsfw", epochs=1, progress=False)
    for p, w in _weights(pipe, one).items():
        torch.testing.assert_close(_weights(pipe, edit)[p], w, rtol=1e-6, atol=1e-7)
    assert len(edit.stats["epochs"]) == 3 and edit.stats["epochs"][0]["rate"] == 0.2


# ---------------------------------------------------------------- SPEED
def _speed_instance(seed, d=20, m=2, n_retain=6):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(14, d, generator=g, dtype=F64)
    T, A = torch.randn(d, m, generator=g, dtype=F64), torch.randn(d, m, generator=g, dtype=F64)
    R = torch.randn(n_retain, d, generator=g, dtype=F64)
    C_R = R.T @ R / n_retain
    V0, _ = linalg.null_space_basis(C_R, 0.1)
    K2 = torch.randn(d, 4, generator=g, dtype=F64)
    return W, T, A, V0, K2


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_speed_delta_equals_formula_is_zero_on_K2_and_outside_the_null_space(seed, lam):
    W, T, A, V0, K2 = _speed_instance(seed)
    d, m = T.shape
    s = [1.0, 0.05, 0.7, 1.0][seed]
    Rf, exact = iec_right_factor(T, V0, K2, s, lam, n_c=m)
    dW = (W @ (A - T) / m) @ Rf
    # the reference's line, with explicit inverses
    I, P = torch.eye(d, dtype=F64), V0 @ V0.T
    C_tt, C_at = T @ T.T / m, A @ T.T / m
    M = torch.inverse(C_tt @ P + s * I)
    ref = (
        W
        @ (C_at - C_tt)
        @ P
        @ (I - M @ K2 @ torch.inverse(K2.T @ P @ M @ K2 + lam * torch.eye(4, dtype=F64)) @ K2.T @ P)
        @ M
    )
    assert exact and _rel(dW, ref) < 1e-9
    assert (dW @ (I - P)).norm() <= 1e-10 * dW.norm()  # ΔW (I − P) = 0 for every λ
    if lam == 0:
        assert (dW @ K2).norm() <= 1e-6 * dW.norm() * K2.norm()  # invariant equality constraints hold exactly
    else:
        assert (dW @ K2).norm() > 1e-6 * dW.norm() * K2.norm()  # λ > 0 relaxes them (the nudity preset)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_speed_on_a_pipeline_keeps_K2_outputs_and_edits_only_to_v(tiny_pipes, family):
    pipe = tiny_pipes[family]
    concepts = ConceptSet(erase=("Van Gogh",), kind="style", preserve=("Claude Monet", "Pablo Picasso", "cat", "dog"))
    edit = erasekit.erase(pipe, method="speed", concepts=concepts, progress=False)
    assert {p.rsplit(".", 1)[1] for p in edit.layers} == {"to_v"}
    cfg = make_config("speed", token="last", retain_scale=1.0, lamb=0.0, threshold=0.1, prior_filter=True)
    K2 = speed_columns(PipelineAdapter(pipe), concepts, cfg)[4]  # (d, 4): BOS of "" and 3 k-means centres
    assert K2.shape[1] == 4
    for p, le in edit.layers.items():
        W0 = pipe.unet.get_submodule(p).weight.detach().double()
        dW = le.materialize(W0).double() - W0
        assert dW.norm() > 0
        assert (dW @ K2).norm() <= 1e-6 * (W0 @ K2).norm()  # fp32 storage: relative to the outputs themselves


def test_speed_presets_and_single_retain_prompt(tiny_pipes):
    pipe = tiny_pipes["sd"]
    nsfw = erasekit.erase(pipe, method="speed", concepts=["nudity"], kind="nsfw", progress=False)
    assert (nsfw.config["retain_scale"], nsfw.config["lamb"], nsfw.config["token"]) == (0.7, 0.5, "after_bos")
    assert (
        nsfw.stats["target_columns"] == 76 and nsfw.stats["retain_prompts"] == 1
    )  # retain = every token after BOS of ""
    person = erasekit.erase(
        pipe, method="speed", concepts=["Adam Driver"], kind="person", guide="person", progress=False
    )
    assert (person.config["retain_scale"], person.config["prior_filter"], person.config["threshold"]) == (
        0.05,
        False,
        1e-4,
    )
    explicit = erasekit.erase(pipe, method="speed", concepts=["nudity"], kind="nsfw", lamb=0.0, progress=False)
    assert explicit.config["lamb"] == 0.0 and explicit.config["retain_scale"] == 0.7
    # One retain prompt: IPF keeps nothing strictly above its own mean, so no retain row is left: P = I, no NaN.
    one = erasekit.erase(pipe, method="speed", concepts=["cat"], kind="object", preserve=["dog"], progress=False)
    assert one.stats["layers_without_retain_rows"] == len(one.layers)
    assert all(torch.isfinite(le.materialize(pipe.unet.get_submodule(p).weight)).all() for p, le in one.layers.items())
    # More retain embeddings than dimensions (no IPF) and a tiny threshold: no null space left, which is refused.
    many = [f"thing number {i}" for i in range(3 * pipe.text_encoder.config.hidden_size)]
    with pytest.raises(MethodError, match="null space is empty"):
        erasekit.erase(
            pipe,
            method="speed",
            concepts=["cat"],
            kind="object",
            preserve=many,
            prior_filter=False,
            threshold=1e-12,
            progress=False,
        )


def test_speed_kmeans_is_seeded_and_a_fixed_point():
    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.randn(20, 5, generator=g, dtype=F64) + 6 * k for k in range(3)])
    C1 = kmeans(X, 3, torch.Generator().manual_seed(1))
    C2 = kmeans(X, 3, torch.Generator().manual_seed(1))
    assert torch.equal(C1, C2)
    assign = torch.cdist(X, C1).argmin(1)
    torch.testing.assert_close(torch.stack([X[assign == j].mean(0) for j in range(3)]), C1, rtol=0, atol=1e-2)
    assert sorted(int((assign == j).sum()) for j in range(3)) == [20, 20, 20]


# ---------------------------------------------------------------- CURE
@pytest.mark.parametrize("alpha", [1.0, 2.0, 5.0, 300.0])
def test_cure_projector_equals_eigh_construction(alpha):
    g = torch.Generator().manual_seed(int(alpha))
    C = torch.randn(16, 6, generator=g, dtype=F64) @ torch.diag(torch.tensor([5.0, 3, 2, 1, 0.5, 0.1], dtype=F64))
    V, w, r = spectral_projector_factors(C, alpha)
    lam, U = torch.linalg.eigh(C @ C.T)  # eigenvalues σ² of C Cᵀ
    keep = lam > 1e-9 * lam.max()
    share = lam[keep] / lam[keep].sum()
    f = alpha * share / ((alpha - 1) * share + 1)
    P_ref = (U[:, keep] * f) @ U[:, keep].T
    torch.testing.assert_close(linalg.weighted_projector(V, w), P_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r.sum(), torch.tensor(1.0, dtype=F64))
    if alpha == 1.0:
        torch.testing.assert_close(w, r)  # α = 1 keeps the energy shares


def test_cure_edit_is_the_formula_and_leaks_exactly_one_minus_f_on_retain_directions(tiny_pipes):
    pipe = tiny_pipes["sd"]
    concepts = ConceptSet(erase=("cat",), kind="object", preserve=("dog", "church", "tench"), templates=True)
    edit = erasekit.erase(pipe, method="cure", concepts=concepts, token="all", progress=False)
    assert edit.config["alpha"] == 2.0
    adapter = PipelineAdapter(pipe)
    C_F = adapter.preserve_columns([e for e, _ in concepts.erase_pairs()], "all")
    C_R = adapter.preserve_columns(concepts.preserve_prompts(), "all")
    V_F, w_F, _ = spectral_projector_factors(C_F, 2.0)
    V_R, w_R, _ = spectral_projector_factors(C_R, 2.0)
    P_F, P_R = linalg.weighted_projector(V_F, w_F), linalg.weighted_projector(V_R, w_R)
    I = torch.eye(adapter.d_in, dtype=F64)
    for p, le in edit.layers.items():
        W0 = pipe.unet.get_submodule(p).weight.detach().double()
        W = le.materialize(W0).double()
        torch.testing.assert_close(W, W0 @ (I - P_F + P_F @ P_R), rtol=1e-5, atol=1e-6)
        for j in range(min(3, V_R.shape[1])):  # retain directions: W u − W0 u = −(1 − f(r_u)) W0 P_F u
            u = V_R[:, j]
            leak = -(1 - w_R[j]) * (W0 @ (P_F @ u))
            torch.testing.assert_close(W @ u - W0 @ u, leak, rtol=1e-4, atol=1e-6)
    # the hard-projector limit (f ≡ 1, PURE's text basis) is exact on retain directions
    W0 = next(iter(_kv_layers(pipe)))[1].weight.detach().double()
    B, A = linalg.projector_delta_right(W0, V_F, V_R)
    assert ((B @ A) @ V_R).norm() <= 1e-10 * W0.norm()


def test_cure_nsfw_alpha_and_bad_alpha(tiny_pipes):
    edit = erasekit.erase(tiny_pipes["sd"], method="cure", concepts=["nudity"], kind="nsfw", progress=False)
    assert edit.config["alpha"] == 5.0
    with pytest.raises(MethodError, match="alpha must be"):
        make_config("cure", alpha=0.5)


@pytest.mark.parametrize(
    "method, kwargs, match",
    [
        ("uce", dict(preset="v3"), "preset must be one of"),
        ("uce", dict(preset="v1", preserve_token="first"), "preserve_token must be"),
        ("speed", dict(token="tail"), "token must be one of"),
        ("speed", dict(retain_scale=0.0), "retain_scale"),
        ("rece", dict(epochs=-1), "epochs must be"),
        ("rece", dict(reg_scale=0.0), "reg_scale"),
    ],
)
def test_bad_baseline_configs_are_refused(method, kwargs, match):
    with pytest.raises(MethodError, match=match):
        make_config(method, **kwargs)
