"""The `erasekit` command end to end on a saved tiny pipeline folder."""

import json

import pytest
from PIL import Image

from erasekit.cli import main
from erasekit.models.tiny import save_tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_pipeline(tmp_path_factory.mktemp("m") / "tiny-sd", "sd"))


def test_erase_inspect_generate(model_dir, tmp_path, capsys):
    out = tmp_path / "vg.safetensors"
    rc = main(["erase", "--model", model_dir, "--method", "space", "--erase", "Van Gogh", "--kind", "style",
               "--preserve", "Monet", "--preserve", "Picasso", "--target-sparsity", "0.85", "--out", str(out)])
    assert rc == 0 and out.is_file()
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "space" and info["concepts"]["erase"] == ["Van Gogh"]
    assert abs(info["sparsity"] - 0.85) <= 0.01 and info["bytes"] < 0.35 * info["dense_fp32_bytes"]
    assert main(["inspect", str(out), "--layers"]) == 0
    grid = tmp_path / "grid.png"
    rc = main(["generate", "--model", model_dir, "--edit", str(out), "--prompt", "a painting by Van Gogh", "--seed", "0",
               "--seed", "1", "--steps", "2", "--out", str(grid)])
    assert rc == 0
    im = Image.open(grid)
    assert im.width > im.height  # two columns (unedited | edited), two rows


def test_methods_and_clear_errors(model_dir, tmp_path, capsys):
    assert main(["methods", "-v"]) == 0
    assert "space" in capsys.readouterr().out
    rc = main(["erase", "--model", model_dir, "--method", "uce", "--erase", "x", "--target-sparsity", "0.5", "--out", str(tmp_path / "e.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "do not apply to method 'uce'" in err and "Traceback" not in err
    rc = main(["erase", "--model", "nowhere/nothing", "--erase", "x", "--out", str(tmp_path / "e.safetensors")])
    assert rc == 2 and "could not load" in capsys.readouterr().err
    assert not (tmp_path / "e.safetensors").exists()


@pytest.mark.parametrize(
    "method, options",
    [
        ("pure", ["--n-latents", "1", "--steps", "2", "--basis", "activation"]),
        ("pure", ["--basis", "text"]),
        ("ace", ["--train-steps", "1", "--adv-steps", "1", "--pool-latents", "1", "--pool-steps", "2", "--batch-size", "1"]),
    ],
)
def test_every_method_runs_from_the_cli_on_sdxl(method, options, tmp_path, capsys):
    out = tmp_path / f"{method}.safetensors"
    rc = main(["erase", "--model", "tiny-sdxl", "--method", method, "--erase", "Van Gogh", "--preserve", "Monet", *options, "--out", str(out)])
    assert rc == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == method and info["storage"] == {"lowrank": info["layers"]}


def test_demo_set_option_is_typed_and_checked():
    from erasekit.cli import _parse_sets
    from erasekit.errors import MethodError

    assert _parse_sets(["target_sparsity=0.9", "train-steps=3"]) == {"target_sparsity": 0.9, "train_steps": 3}
    with pytest.raises(MethodError, match="OPTION=VALUE"):
        _parse_sets(["no_such_option=1"])
