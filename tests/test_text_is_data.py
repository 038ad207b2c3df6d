"""Text from users and files is data: shown as the characters it holds, never as markup or terminal control."""

import io

import pytest
from rich.console import Console

from erasekit.errors import EraseKitError
from erasekit.text import UserTextError, check_user_text, plain, shown, text_problem

HOSTILE = [
    "[/]",
    "[/bold]",
    "[red]x[/red]",
    "\x1b[31mred\x1b[0m",
    "\x1b]0;title\x07",
    "a\u202eb",
    "\ud800",
    "x\udcff",
    "tab\there",
    "nul\x00",
    "del\x7f",
    "c1\x85",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_shown_prints_through_rich_as_the_characters_it_holds(value):
    buf = io.StringIO()
    Console(file=buf, force_terminal=False, width=200).print(
        shown(value)
    )  # no styling of rich's own: the bare characters
    out = buf.getvalue().rstrip("\n")
    assert out == plain(value)  # markup not interpreted, nothing dropped
    assert all(
        ord(c) >= 0x20 and ord(c) != 0x7F and not 0xD800 <= ord(c) <= 0xDFFF for c in out
    )  # nothing acts on a terminal
    out.encode("utf-8")  # encodable: no lone surrogate reaches a UTF-8 stream


def test_plain_is_the_identity_on_ordinary_text_and_escapes_the_rest():
    for ok in ("Van Gogh", "Claude Monet", "Pokémon", "東京", "a [bracketed] name", "😀"):
        assert plain(ok) == ok and text_problem(ok) is None
    assert plain("\x1b[31m") == "\\x1b[31m" and plain("\ud800") == "\\ud800" and plain("a\u202eb") == "a\\u202eb"
    assert shown("[/]") == "\\[/]"


@pytest.mark.parametrize(
    "value,why",
    [
        ("x\udcff", "not valid UTF-8"),
        ("\ud800", "lone surrogate"),
        ("a\x1bb", "control"),
        ("a\nb", "control"),
        ("a\u202eb", "bidirectional"),
    ],
)
def test_check_user_text_refuses_naming_the_argument_and_the_problem(value, why):
    with pytest.raises(UserTextError) as e:
        check_user_text("--erase", value)
    assert isinstance(e.value, EraseKitError) and "--erase" in str(e.value) and why in str(e.value)
    str(e.value).encode("utf-8")  # the message itself is printable


# ----------------------------------------------------------------------------- the command line, end to end
import json  # noqa: E402

from safetensors import safe_open  # noqa: E402
from safetensors.torch import save as st_save  # noqa: E402

from erasekit.cli import main  # noqa: E402
from erasekit.edit_format import content_sha256  # noqa: E402


@pytest.fixture(scope="module")
def bracket_edit(tmp_path_factory):
    """An edit of tiny-sd whose concept is spelled with rich's closing tag, written by the command itself."""
    out = tmp_path_factory.mktemp("bracket") / "bracket.safetensors"
    assert (
        main(
            [
                "erase",
                "--model",
                "tiny-sd",
                "--method",
                "uce",
                "--erase",
                "[/]",
                "--preserve",
                "[/bold]",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_a_concept_spelled_as_markup_fits_prints_and_inspects(bracket_edit, capsys):
    capsys.readouterr()
    assert main(["inspect", str(bracket_edit)]) == 0
    out = capsys.readouterr().out
    assert "[/]" in out and "[/bold]" in out


@pytest.mark.parametrize(
    "value,why", [("\udcff", "not valid UTF-8"), ("a\x1b[31mb", "control character"), ("x\u202ey", "bidirectional")]
)
def test_bad_command_line_text_is_refused_before_the_model_loads(value, why, tmp_path, capsys, monkeypatch):
    import erasekit.models.loading as loading

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the text was checked")

    monkeypatch.setattr(loading, "load_pipeline", no_load)
    out = tmp_path / "x.safetensors"
    for argv in (
        ["erase", "--model", "tiny-sd", "--erase", value, "--out", str(out)],
        ["erase", "--model", "tiny-sd", "--erase", "ok", "--preserve", value, "--out", str(out)],
        ["generate", "--model", "tiny-sd", "--prompt", value, "--out", str(tmp_path / "g.png")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert why in err and ("--erase" in err or "--preserve" in err or "--prompt" in err), err
        assert "Traceback" not in err and "\x1b" not in err
        err.encode("utf-8")
    assert not list(tmp_path.iterdir())


def _resign(src, dst, change) -> None:
    with safe_open(str(src), framework="pt") as f:
        doc, tensors = json.loads(f.metadata()["erasekit"]), {k: f.get_tensor(k) for k in f.keys()}
    change(doc)
    doc["content_sha256"] = content_sha256(doc, tensors)
    dst.write_bytes(st_save(tensors, metadata={"erasekit": json.dumps(doc)}))


def test_hostile_metadata_is_shown_escaped_and_hostile_concepts_are_refused(bracket_edit, tmp_path, capsys):
    hostile = "\x1b[2J\x1b]0;owned\x07[/bold]\ud800\u202e"

    def base_and_stats(doc):
        doc["base"]["name_or_path"] = hostile
        doc["stats"]["seconds"] = hostile

    shown_file = tmp_path / "shown.safetensors"
    _resign(bracket_edit, shown_file, base_and_stats)
    capsys.readouterr()
    assert main(["inspect", str(shown_file)]) == 0
    out = capsys.readouterr().out
    assert "\\x1b[2J" in out and "\\ud800" in out and "\\u202e" in out and "[/bold]" in out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    out.encode("utf-8")
    assert main(["inspect", "--json", str(shown_file)]) == 0  # JSON escapes it its own way (\\u001b)
    assert "\x1b" not in capsys.readouterr().out

    refused = tmp_path / "refused.safetensors"
    _resign(bracket_edit, refused, lambda doc: doc["concepts"].update(erase=["a\x1b[31mb"]))
    assert main(["inspect", str(refused)]) == 2
    err = capsys.readouterr().err
    assert "control character" in err and "\x1b" not in err


def test_erasekit_own_multi_line_messages_keep_their_line_breaks():
    from erasekit.text import plain_lines

    assert plain_lines("grid: a.png\npage: b.html") == "grid: a.png\npage: b.html"
    assert plain_lines("concept '\x1b[31m'\nnext") == "concept '\\x1b[31m'\nnext"
