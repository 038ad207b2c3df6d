"""Erasure measured for real on the bundled tinyworld models, with their judge and fixed seeds.

One matrix: every method × {tinyworld (SD 1.x architecture), tinyworld-xl (SDXL architecture),
tinyworld-flux (FLUX.1 architecture, true CFG)}, the same settings, prompts, seeds and tolerances on all."""

import pytest
import torch

import erasekit
from conftest import activation_basis_runs
from erasekit.demo import demo_prompts, run_demo
from erasekit.generate import generate_pairs
from erasekit.models.families import identify
from erasekit.tinyworld import weights_dir, weights_flux_dir, weights_xl_dir

SHIPPED = {"tinyworld": weights_dir(), "tinyworld-xl": weights_xl_dir(), "tinyworld-flux": weights_flux_dir()}
MODELS = [
    pytest.param(
        m,
        marks=pytest.mark.skipif(
            not (d / "pipeline" / "model_index.json").is_file(), reason=f"{m} weights not shipped"
        ),
    )
    for m, d in SHIPPED.items()
]
TINYWORLD_ONLY = MODELS[:1]  # the demo is tinyworld's

N, STEPS = 12, 12
# Settings per method (calibrated on tinyworld; see the closing notes): every method must cut the
# judged rate of the erased shape on named prompts by at least ERASE_DROP (absolute) and keep the
# other shapes' rate within RETAIN_TOL of the unedited model's.
SETTINGS = {
    "space": dict(templates=True, target_sparsity=0.85),
    "uce": dict(templates=True, token="tail"),
    "pure": dict(templates=True, forget_energy=0.95, retain_energy=0.5),
    "ace": dict(templates=True, train_steps=40),
    "mace": dict(),  # the object preset (erase_ship.yaml)
    "esd-x": dict(iterations=40, lr=2e-3),  # the reference lr 5e-5 x 200 changes nothing on tinyworld (measured)
    "rece": dict(templates=True),  # UCE v1 start + 1 epoch (the object preset)
    # SPEED's reference last-token edit erases 25 % of circles here (too little); its nudity token
    # setting (every token after BOS) erases: the test uses that, the report says so.
    "speed": dict(templates=True, token="after_bos"),
    # CURE at its reference α = 2 (and 5, 10, 1000) erases nothing on tinyworld; α = 30 with tail tokens
    # is the strongest setting measured (42 % of named circles), so this checks the machinery, not the default.
    "cure": dict(templates=True, alpha=30.0, token="tail"),
}
ERASE_DROP, RETAIN_TOL = 0.3, 0.25
# Measured on tinyworld-xl (2026-12-03) with the settings above, same prompts and seeds: these
# methods do not meet the tolerances there. Strict xfail: the row turns red the day one starts to pass.
XL_FAILS = {  # method: (erased-shape rate after, retain after) from (1.0, 1.0) before
    "esd-x": "named 58 %, retain 17 %: the tinyworld lr (2e-3 x 40) wrecks every shape on the XL UNet",
    "rece": "named 25 %, retain 50 %: the adversarial epoch costs half of the other shapes",
    "space": "named 75 % (erases only 25 points), retain 50 %: SPACE's last-token default fails on XL; "
    "every token position "
    "(tinyworld's defaults, as bench runs it) erases circle 100 % with retain 81 %",
    "speed": "named 0 %, retain 58 %: erases fully, but the after_bos edit costs 42 points of the other shapes",
}
# Where a family does not fine-tune through its denoiser (models/families: fine_tunes_denoiser) the fine-tuning
# methods are refused and MACE runs its closed form alone. PURE's activation basis needs attention keys / values at
# the static sites (pure.check_activation_sites): on FLUX those are the embedders, so PURE runs its text basis here
# (its activation basis on FLUX's joint sites is benchmarks/pure_tau_sweep.py's subject).
DENOISER_ONLY = {"ace", "esd-x"}
# Measured on tinyworld-flux (the shipped weights, step 8440; 2026-12-07) with the settings above, same prompts and
# seeds, from (named 83 %, retain 92 %) before: these do not meet the tolerances there. Strict xfail, as for XL.
# uce, space, rece and speed pass on it.
FLUX_FAILS: dict[str, str] = {
    "ace": "named 58 % (erases 25 points, the bar is 30), retain 92 %: 40 steps are too few on this transformer",
    "cure": "named 75 %, retain 92 %: CURE's spectral projector at α = 30 barely moves the T5 and pooled sites",
    "esd-x": "named 33 %, retain 42 %: the tinyworld lr (2e-3 x 40) erases but wrecks the other shapes, as on XL",
    "mace": "named 83 %, retain 92 %: no change; MACE's closed form at context_embedder leaves erase columns where "
    "they were (families_matrix: residual 1.00 on FLUX) and its LoRA stage does not move the images",
    "pure": "named 75 %, retain 92 %: the text basis (PURE's activation basis needs sites='joint' here) barely erases",
}


@pytest.fixture(scope="module", params=MODELS)
def world(request):
    from erasekit.tinyworld.judge import TinyworldJudge

    torch.manual_seed(0)
    pipe = erasekit.load_pipeline(request.param)
    judge = TinyworldJudge.load()
    suites = demo_prompts("circle", N)
    base = {k: _rates(pipe, judge, p, s) for k, (p, s) in suites.items()}
    return pipe, judge, suites, base


def _rates(pipe, judge, prompts, shapes):
    from erasekit.tinyworld import world as tw

    images = generate_pairs(pipe, list(zip(prompts, range(len(prompts)))), steps=STEPS, guidance=5.0, batch_size=16)
    pred = judge.predict(images)["shape"].argmax(-1)
    return float((pred == torch.tensor([tw.SHAPE_NAMES.index(s) for s in shapes])).double().mean())


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_erasing_a_shape_lowers_its_rate_and_keeps_the_others(world, method, request):
    pipe, judge, suites, base = world
    if type(pipe).__name__ == "StableDiffusionXLPipeline" and method in XL_FAILS:
        request.applymarker(pytest.mark.xfail(reason=f"tinyworld-xl: {XL_FAILS[method]}", strict=True))
    if type(pipe).__name__ == "FluxPipeline" and method in FLUX_FAILS:
        request.applymarker(pytest.mark.xfail(reason=f"tinyworld-flux: {FLUX_FAILS[method]}", strict=True))
    assert base["target"] >= 0.8 and base["retain"] >= 0.8  # the instrument sees the concept before erasure
    others = [s for s in ("square", "triangle", "star", "heart", "cross")]
    opts = dict(SETTINGS[method])
    family = identify(pipe)
    if not family.fine_tunes_denoiser:
        if method in DENOISER_ONLY:
            pytest.skip(f"{method} fine-tunes the denoiser, which erasekit does not do on {family.name} yet")
        if method == "mace":
            opts.update(train_steps=0)
    if method == "pure" and not activation_basis_runs(pipe):
        opts.update(basis="text")
    edit = erasekit.erase(
        pipe, method=method, concepts=["circle"], kind="object", preserve=others, progress=False, defaults=None, **opts
    )  # SETTINGS are complete: no per-model defaults on top
    edit.apply(pipe)
    try:
        after = {k: _rates(pipe, judge, p, s) for k, (p, s) in suites.items()}
    finally:
        edit.revert(pipe)
    assert after["target"] <= base["target"] - ERASE_DROP, (base, after)
    assert after["retain"] >= base["retain"] - RETAIN_TOL, (base, after)


@pytest.mark.parametrize("model", TINYWORLD_ONLY)
def test_demo_runs_end_to_end_on_a_reduced_setting(model, tmp_path):
    from erasekit.tinyworld.judge import TinyworldJudge

    pipe, judge = erasekit.load_pipeline(model), TinyworldJudge.load()
    res = run_demo(pipe=pipe, judge=judge, n=4, steps=6, out_dir=tmp_path, progress=False)
    assert res.grid_path.is_file() and res.html_path.is_file() and (tmp_path / "demo.json").is_file()
    assert set(res.rows) == {"target", "paraphrase", "retain", "colour"}
    assert all(res.rows[k]["n"] == 4 for k in ("target", "paraphrase", "retain")) and res.rows["colour"]["n"] == 12
    assert 0.0 <= res.rows["colour"]["value"] <= 1.0 and "colour kept" in res.html_path.read_text()
    assert res.sparsity is not None and abs(res.sparsity - 0.85) <= 0.01
    assert "<table" in res.html_path.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("model", TINYWORLD_ONLY)
def test_demo_at_its_defaults_erases_named_and_paraphrased_circles(model, tmp_path):
    """What `erasekit demo` shows a newcomer (SPACE, every token position, n=16, 15 steps) is a
    clear erasure that generalises to synonyms and keeps most other shapes."""
    from erasekit.tinyworld.judge import TinyworldJudge

    pipe, judge = erasekit.load_pipeline(model), TinyworldJudge.load()
    res = run_demo(pipe=pipe, judge=judge, out_dir=tmp_path, progress=False)
    assert res.rows["target"]["base_rate"] >= 0.9 and res.rows["paraphrase"]["base_rate"] >= 0.8
    assert res.rows["target"]["value"] >= 0.9 and res.rows["paraphrase"]["value"] >= 0.8
    assert res.rows["retain"]["value"] >= 0.75
    assert res.rows["colour"]["base_rate"] >= 0.9 and res.rows["colour"]["value"] >= 0.75  # colours mostly survive
