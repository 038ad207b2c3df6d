"""The general-prompt prior (erasekit.prior): statistic, cache, solver wiring, and its effect."""

from pathlib import Path

import pytest
import torch

import erasekit
from erasekit import linalg
from erasekit import prior as pr
from erasekit.errors import MethodError
from erasekit.models.adapter import PipelineAdapter

COCO = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "prompts" / "diffusion-mu-attack" / "coco_10k.csv"
)
needs_coco = pytest.mark.skipif(not COCO.is_file(), reason="shared COCO prompt file not present")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path / "cache"))


def _tokens(adapter, prompts):
    return adapter.encode(prompts).embeds.reshape(-1, adapter.d_in)  # (N·L, d_in) every position


def test_factor_reproduces_the_second_moment_and_is_cached(tiny_pipes, monkeypatch):
    ad = PipelineAdapter(tiny_pipes["sd"])
    prompts = [f"a photo of thing number {i}" for i in range(20)] + ["a red circle", "the circle is big"]
    gp = pr.general_prior(ad, prompts, exclude=["circle"], source="test")
    kept = prompts[:20]
    X = _tokens(ad, kept)
    S = X.T @ X / len(kept)  # direct restatement: (1/N) Σ_prompts Σ_positions c cᵀ
    assert gp.n_prompts == 20
    torch.testing.assert_close(gp.second_moment(), S, rtol=1e-9, atol=1e-9 * float(S.abs().max()))
    assert Path(gp.cache_file).is_file()

    calls = []
    real = pr.second_moment_factor
    monkeypatch.setattr(pr, "second_moment_factor", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = pr.general_prior(ad, prompts, exclude=["circle"], source="test")
    assert not calls and torch.equal(again.factor, gp.factor)  # served from the cache

    # a stale cache (its recorded key no longer matches) is recomputed, not trusted
    from safetensors.torch import load_file, save_file

    save_file({"factor": torch.zeros_like(gp.factor)}, gp.cache_file, metadata={"version": "0"})
    fresh = pr.general_prior(ad, prompts, exclude=["circle"], source="test")
    assert calls and torch.allclose(fresh.factor, gp.factor)
    assert load_file(gp.cache_file)["factor"].abs().sum() > 0  # and rewritten

    other = pr.general_prior(ad, prompts[:10], source="test")  # another prompt list: another entry
    assert other.prompts_sha256 != gp.prompts_sha256


def test_gram_factor_with_prior_matches_the_normal_equations():
    g = torch.Generator().manual_seed(3)
    d_in, d_out = 12, 7
    C_E, C_G, C_P = (torch.randn(d_in, k, generator=g, dtype=torch.float64) for k in (3, 3, 2))
    P = torch.randn(d_in, 30, generator=g, dtype=torch.float64)  # n ≥ d_in with the prior
    W0 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    a, b, gam = 1.5, 0.7, 0.3
    gf = linalg.gram_factor(C_E, C_G, C_P, alpha=a, beta=b, gamma=gam, prior=P)
    # oracle: ∇ of α‖WC_E − W0C_G‖² + β‖WC_P − W0C_P‖² + ‖(W − W0)P‖² + γ‖W − W0‖² = 0, solved directly
    M = gam * torch.eye(d_in, dtype=torch.float64) + a * C_E @ C_E.T + b * C_P @ C_P.T + P @ P.T
    R = gam * W0 + a * W0 @ C_G @ C_E.T + b * W0 @ C_P @ C_P.T + W0 @ P @ P.T
    W_ref = torch.linalg.solve(M, R.T).T
    torch.testing.assert_close(linalg.uce_weight(W0, gf), W_ref, rtol=1e-9, atol=1e-9)
    # and SPACE at λ = 0 is that same minimiser
    res = linalg.space_solve(W0, gf, 0.0, tol=1e-10)
    torch.testing.assert_close(res.W, W_ref, rtol=1e-6, atol=1e-6)


def _drift(adapter, edit, X):
    """Mean over layers of ‖X (W − W0)ᵀ‖² / ‖X W0ᵀ‖²: how much held-back prompts' K/V outputs move."""
    out = []
    for p, le in edit.layers.items():
        W0 = adapter.linear(p).weight.detach().double()
        W1 = le.materialize(adapter.linear(p).weight.detach()).double()
        out.append(float(((X @ (W1 - W0).T) ** 2).sum() / ((X @ W0.T) ** 2).sum()))
    return sum(out) / len(out)


@needs_coco
@pytest.mark.parametrize("method,opts", [("uce", {}), ("space", {"target_sparsity": 0.8})])
def test_prior_makes_held_back_general_prompts_move_less(tiny_pipes, tmp_path, method, opts):
    import csv

    with open(COCO, newline="") as f:
        coco = [r["prompt"] for r in csv.DictReader(f)][:260]
    txt = tmp_path / "general.txt"
    txt.write_text("\n".join(coco[:200]))  # the prior's prompts; coco[200:] are held back
    pipe = tiny_pipes["sd"]
    ad = PipelineAdapter(pipe)
    X = _tokens(ad, coco[200:])
    common = dict(method=method, concepts=["Van Gogh"], kind="style", token="tail", progress=False, **opts)
    without = erasekit.erase(pipe, **common)
    with_prior = erasekit.erase(pipe, prior="general", prior_prompts=str(txt), prior_weight=1.0, **common)
    assert with_prior.stats["prior"]["n_prompts"] == 200 and with_prior.config["prior"] == "general"
    assert _drift(ad, with_prior, X) < 0.5 * _drift(ad, without, X)


def test_prior_on_tinyworld_uses_training_captions_without_the_concept():
    caps = pr.general_prompts("tinyworld", limit=300)
    assert len(caps) == 300 and caps == pr.general_prompts("tinyworld", limit=300)  # seeded
    from erasekit.tinyworld import world

    assert not any(t.split("{")[0] and c.startswith(t.split("{")[0]) for c in caps for t in world.EVAL_TEMPLATES)
    assert set(pr.concept_aliases("disc")) == {"circle", "disc", "round shape"}
    assert pr.concept_aliases("stripes") == ("stripes",) and "stripes" in pr.concept_aliases("striped")
    kept = pr._drop_named(caps, pr.concept_aliases("circle"))
    assert kept and not any(w in c.lower().split() for c in kept for w in ("circle", "disc"))


def test_prior_refusals(tiny_pipes):
    with pytest.raises(MethodError, match="sha256"):
        pr.general_prompts("https://example.org/prompts.txt")
    with pytest.raises(MethodError, match="prior must be"):
        erasekit.erase(tiny_pipes["sd"], method="uce", concepts=["x"], prior="coco", progress=False)
    with pytest.raises(MethodError, match="prior_weight"):
        erasekit.erase(tiny_pipes["sd"], method="uce", concepts=["x"], prior="general", prior_weight=-1, progress=False)
    with pytest.raises(MethodError, match="prior_prompts"):  # not tinyworld: a prompt list is required
        erasekit.erase(tiny_pipes["sd"], method="uce", concepts=["x"], prior="general", progress=False)
    with pytest.raises(MethodError, match="no general prompt"):
        pr.general_prior(PipelineAdapter(tiny_pipes["sd"]), ["a circle"], exclude=["circle"])


@pytest.mark.parametrize("model", ["tinyworld", "tinyworld-xl"])
def test_auto_prior_on_either_bundled_model_uses_its_captions(model):
    """prior_prompts='auto' reads the pipeline's record: tinyworld-xl too (the old path check only knew tinyworld's
    folder)."""
    from erasekit.tinyworld import weights_dir, weights_xl_dir

    if not ((weights_dir() if model == "tinyworld" else weights_xl_dir()) / "pipeline" / "model_index.json").is_file():
        pytest.skip(f"{model} not shipped")
    pipe = erasekit.load_pipeline(model)
    edit = erasekit.erase(
        pipe,
        method="uce",
        concepts=["circle"],
        kind="object",
        prior="general",
        prior_limit=50,
        defaults=None,
        progress=False,
    )
    rec = edit.stats["prior"]
    assert rec["source"] == "tinyworld" and 0 < rec["n_prompts"] <= 50
    assert rec["prompts_sha256"] != pr.general_prior(PipelineAdapter(pipe), ["a red square"], source="x").prompts_sha256


def test_the_methods_and_the_prior_do_not_import_the_bundled_model():
    """What they need of tinyworld comes through erasekit.models.record (the pipeline's record, the vocabulary)."""
    import ast

    src = Path(erasekit.__file__).resolve().parent
    for rel in ("prior.py", "methods/_closed_form.py"):
        tree = ast.parse((src / rel).read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
        assert not [n for n in names if "tinyworld" in n.split(".")], (rel, names)
