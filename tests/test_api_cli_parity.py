"""One way in: ``erasekit.erase(pipe, ...)`` and ``erasekit erase ...`` fit the same edit.

Every registered method on both bundled models (tinyworld: SD 1.x architecture, tinyworld-xl:
SDXL), the same options given once as keyword arguments and once as ``--set`` items, the
per-model defaults applied on both sides: the saved tensors must be byte-identical, and the
recorded config, concepts and defaults equal. Fine-tuning methods run a few steps only.
"""

import json

import pytest
import torch
from safetensors import safe_open

import erasekit
import erasekit.models.loading as loading
from erasekit.cli import main
from erasekit.tinyworld import weights_dir, weights_xl_dir
from method_settings import CHEAP  # shared with the CLI matrix (tests/method_settings.py)

SHIPPED = {"tinyworld": weights_dir(), "tinyworld-xl": weights_xl_dir()}
MODELS = [
    pytest.param(
        m, marks=pytest.mark.skipif(not (d / "pipeline" / "model_index.json").is_file(), reason=f"{m} not shipped")
    )
    for m, d in SHIPPED.items()
]

FAST = ("uce", "space", "pure", "cure", "speed")  # the subset that runs in the default test run
METHODS = [m if m in FAST else pytest.param(m, marks=pytest.mark.slow) for m in sorted(CHEAP)]
CONCEPT, PRESERVE = "circle", ("square", "star")


@pytest.fixture(scope="module")
def loaded():
    """One load per model for both sides: the CLI's load_pipeline is the real one, remembered (its record included)."""
    cache = {}
    real = loading.load_pipeline

    def load(model, *a, **k):
        if model not in cache:
            cache[model] = real(model, *a, **k)
        return cache[model]

    return load


def _tensors(path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["erasekit"]), {k: f.get_tensor(k) for k in f.keys()}


def test_cheap_settings_cover_every_registered_method():
    assert set(CHEAP) == set(erasekit.list_methods())
    for method, options in CHEAP.items():
        erasekit.make_config(method, **{k: v for k, v in options.items() if k != "templates"})  # each is M's option


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_python_api_and_cli_fit_byte_identical_edits(model, method, loaded, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loading, "load_pipeline", loaded)
    pipe = loaded(model)
    assert erasekit.is_tinyworld(pipe)  # the record load_pipeline attached (tinyworld-xl included)
    options = CHEAP[method]
    torch.manual_seed(0)
    api = erasekit.erase(
        pipe, method=method, concepts=[CONCEPT], kind="object", preserve=PRESERVE, progress=False, **options
    )
    api_path = api.save(tmp_path / "api.safetensors")
    cli_path = tmp_path / "cli.safetensors"
    sets = [x for k, v in options.items() if k != "templates" for x in ("--set", f"{k}={v}")]
    sets += [] if "templates" not in options else ["--templates" if options["templates"] else "--no-templates"]
    torch.manual_seed(0)
    argv = [
        "erase",
        "--model",
        model,
        "--method",
        method,
        "--erase",
        CONCEPT,
        "--kind",
        "object",
        *[x for p in PRESERVE for x in ("--preserve", p)],
        *sets,
        "--out",
        str(cli_path),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    (meta_a, ten_a), (meta_c, ten_c) = _tensors(api_path), _tensors(cli_path)
    assert ten_a.keys() == ten_c.keys() and ten_a
    for k in ten_a:
        a, c = ten_a[k], ten_c[k]
        assert a.dtype == c.dtype and a.shape == c.shape, k
        assert a.contiguous().view(torch.uint8).equal(c.contiguous().view(torch.uint8)), k  # byte for byte
    assert meta_a["config"] == meta_c["config"] and meta_a["concepts"] == meta_c["concepts"]
    rec = meta_a["stats"]["defaults"]
    assert rec == meta_c["stats"]["defaults"] and rec["source"] == "erasekit" and rec["model"] == "tinyworld"
    assert set(rec["user"]) == set(options)
    # tinyworld's default templates (where the table has them) reached both sides
    assert (meta_a["concepts"]["templates"] != ["{}"]) == ("templates" in rec["applied"])
