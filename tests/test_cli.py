"""The `erasekit` command end to end on a saved tiny pipeline folder."""

import json
import re

import pytest
from PIL import Image

import erasekit
from erasekit.cli import main
from erasekit.models.tiny import save_tiny_pipeline
from method_settings import CHEAP  # every method's cheap settings (tests/method_settings.py)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_pipeline(tmp_path_factory.mktemp("m") / "tiny-sd", "sd"))


def test_erase_inspect_generate(model_dir, tmp_path, capsys):
    out = tmp_path / "vg.safetensors"
    rc = main(
        [
            "erase",
            "--model",
            model_dir,
            "--method",
            "space",
            "--erase",
            "Van Gogh",
            "--kind",
            "style",
            "--preserve",
            "Monet",
            "--preserve",
            "Picasso",
            "--target-sparsity",
            "0.85",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and out.is_file()
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "space" and info["concepts"]["erase"] == ["Van Gogh"]
    assert abs(info["sparsity"] - 0.85) <= 0.01 and info["bytes"] < 0.35 * info["dense_fp32_bytes"]
    assert main(["inspect", str(out), "--layers"]) == 0
    grid = tmp_path / "grid.png"
    rc = main(
        [
            "generate",
            "--model",
            model_dir,
            "--edit",
            str(out),
            "--prompt",
            "a painting by Van Gogh",
            "--seed",
            "0",
            "--seed",
            "1",
            "--steps",
            "2",
            "--out",
            str(grid),
        ]
    )
    assert rc == 0
    im = Image.open(grid)
    assert im.width > im.height  # two columns (unedited | edited), two rows


def test_methods_and_clear_errors(model_dir, tmp_path, capsys):
    assert main(["methods", "-v"]) == 0
    assert "space" in capsys.readouterr().out
    rc = main(
        [
            "erase",
            "--model",
            model_dir,
            "--method",
            "uce",
            "--erase",
            "x",
            "--target-sparsity",
            "0.5",
            "--out",
            str(tmp_path / "e.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "do not apply to method 'uce'" in err and "Traceback" not in err
    rc = main(["erase", "--model", "nowhere/nothing", "--erase", "x", "--out", str(tmp_path / "e.safetensors")])
    assert rc == 2 and "could not load" in capsys.readouterr().err
    assert not (tmp_path / "e.safetensors").exists()


def _flags(options: dict) -> list[str]:
    """Keyword options as the command line spells them (booleans as --x / --no-x)."""
    out: list[str] = []
    for k, v in options.items():
        flag = k.replace("_", "-")
        out += ([f"--{flag}"] if v else [f"--no-{flag}"]) if isinstance(v, bool) else [f"--{flag}", str(v)]
    return out


SDXL_CASES = [(m, _flags(o)) for m, o in sorted(CHEAP.items())] + [("pure", ["--basis", "text", "--no-templates"])]


@pytest.mark.parametrize("method, options", SDXL_CASES, ids=[" ".join([m, *o[:2]]) for m, o in SDXL_CASES])
def test_every_method_runs_from_the_cli_on_sdxl(method, options, tmp_path, capsys):
    """Every registered method (cheap settings) fits tiny SDXL from the command line and writes a file inspect reads."""
    out = tmp_path / f"{method}.safetensors"
    argv = ["erase", "--model", "tiny-sdxl", "--method", method, "--erase", "Van Gogh", "--preserve", "Monet"]
    assert main([*argv, *options, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == method and info["layers"] > 0 and sum(info["storage"].values()) == info["layers"]


def test_the_sdxl_matrix_covers_every_registered_method():
    assert {m for m, _ in SDXL_CASES} == set(erasekit.list_methods())


def test_set_options_are_typed_by_the_method_and_checked():
    from erasekit.cli import _parse_sets
    from erasekit.errors import MethodError

    assert _parse_sets(["target_sparsity=0.9", "max-iter=3"], "space") == {"target_sparsity": 0.9, "max_iter": 3}
    assert _parse_sets(["train-steps=3", "gradient_checkpointing=no"], "ace") == {
        "train_steps": 3,
        "gradient_checkpointing": False,
    }
    with pytest.raises(MethodError, match="OPTION=VALUE"):
        _parse_sets(["target_sparsity"], "space")
    with pytest.raises(MethodError, match="do not apply to method 'space'; its options are: .*target_sparsity"):
        _parse_sets(["train_steps=3"], "space")  # ace's option, not space's


# ------------------------------------------------------------------ per-method options
def _help(method, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "4000")  # one line per option: help texts are compared whole
    with pytest.raises(SystemExit) as exc:
        main(["erase", "--method", method, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", text))


COMMON = {
    "--model",
    "--config",
    "--dtype",
    "--device",
    "--denoiser",
    "--method",
    "--erase",
    "--kind",
    "--guide",
    "--preserve",
    "--templates",
    "--no-templates",
    "--published-defaults",
    "--out",
    "--set",
    "--help",
}


def test_erase_help_lists_the_methods_own_options_with_its_own_help(capsys, monkeypatch):
    import dataclasses

    import erasekit

    seen = {}
    for method in erasekit.list_methods():
        fields = dataclasses.fields(erasekit.get_method(method).config_class)
        own = {"--" + f.name.replace("_", "-") for f in fields}
        own |= {"--no-" + f.name.replace("_", "-") for f in fields if str(f.type).startswith("bool")}
        text = _help(method, capsys, monkeypatch)
        options_part = text[text.index("options:") :]  # the usage line lists them too, the same set
        heads = [
            re.match(r"  (\S.*?)(\s{2,}|$)", ln).group(1) for ln in options_part.splitlines() if ln.startswith("  -")
        ]
        assert _flags(" ".join(heads)) == own | COMMON, method  # M's options and the common ones, nothing else
        lines: dict[str, str] = {}  # flag -> its entry (argparse puts a long flag's help on the next line)
        for ln in options_part.splitlines():
            if ln.startswith("  -"):
                key = ln.split()[0].rstrip(",")
                lines[key] = ln
            elif ln.startswith("   ") and lines:
                lines[key] += " " + ln
        for f in fields:
            help_text = " ".join(f.metadata.get("help", "").split())
            assert help_text in " ".join(lines["--" + f.name.replace("_", "-")].split()), (method, f.name)
        seen[method] = lines
    # the option that meant three things in one flat namespace: each method's --lamb shows its own help
    lambs = {m: lines["--lamb"] for m, lines in seen.items() if "--lamb" in lines}
    assert len(lambs) >= 3 and len(set(lambs.values())) >= 2


def test_another_methods_option_is_refused_naming_this_methods_options(model_dir, tmp_path, capsys):
    import dataclasses

    import erasekit

    rc = main(
        [
            "erase",
            "--model",
            model_dir,
            "--method",
            "uce",
            "--erase",
            "x",
            "--basis",
            "text",
            "--train-steps",
            "2",
            "--out",
            str(tmp_path / "e.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "['basis', 'train_steps'] do not apply to method 'uce'" in err
    listed = err.split("its options are:")[1]
    assert all(f.name in listed for f in dataclasses.fields(erasekit.get_method("uce").config_class))
    assert "basis" not in listed and not (tmp_path / "e.safetensors").exists()
    with pytest.raises(SystemExit):  # an option of no method at all: argparse's own refusal
        main(
            [
                "erase",
                "--model",
                model_dir,
                "--erase",
                "x",
                "--no-such-option",
                "--out",
                str(tmp_path / "e.safetensors"),
            ]
        )


def test_option_values_go_through_the_one_typed_parse(monkeypatch):
    """Flags, --set items and the Python checks all read a field's type through methods.base.OptionType."""
    from erasekit.cli import _method_options, build_parser
    from erasekit.errors import MethodError
    from erasekit.methods import base

    calls = []
    real = base.OptionType.parse
    monkeypatch.setattr(base.OptionType, "parse", lambda self, name, text: calls.append(name) or real(self, name, text))
    args = build_parser("space").parse_args(
        [
            "erase",
            "--model",
            "m",
            "--method",
            "space",
            "--erase",
            "x",
            "--out",
            "o",
            "--max-iter",
            "5",
            "--set",
            "tol=1e-3",
            "--set",
            "lam=none",
        ]
    )
    assert _method_options(args) == {"max_iter": 5, "tol": 1e-3, "lam": None}
    assert sorted(calls) == ["lam", "max_iter", "tol"]
    assert isinstance(_method_options(args)["max_iter"], int)

    ot = base.OptionType.of("float | None")
    assert ot.parse("x", "0.5") == 0.5 and ot.parse("x", "None") is None and ot.accepts(None) and not ot.accepts(True)
    assert base.OptionType.of("str | None").parse("x", "none") == "none"  # text stays text
    assert base.OptionType.of("tuple[str, ...]").parse("x", "k,v") == "k,v"  # the config splits it
    for ann, text, msg in (
        ("int", "2.5", "expects an integer"),
        ("float", "abc", "expects a number"),
        ("bool", "ture", "expects true or false"),
    ):
        with pytest.raises(MethodError, match=msg):
            base.OptionType.of(ann).parse("x", text)
    with pytest.raises(
        MethodError, match="option rank expects int"
    ):  # the Python side: the same reading of the annotation
        import erasekit

        erasekit.make_config("ace", rank="4")
