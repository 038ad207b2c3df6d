"""Text from users and files is data: shown as the characters it holds, never as markup or terminal control."""

import io

import pytest
from rich.console import Console

from erasekit.errors import EraseKitError
from erasekit.text import UserTextError, check_user_text, plain, shown, text_problem

HOSTILE = ["[/]", "[/bold]", "[red]x[/red]", "\x1b[31mred\x1b[0m", "\x1b]0;title\x07", "a\u202eb", "\ud800", "x\udcff", "tab\there",
           "nul\x00", "del\x7f", "c1\x85"]


@pytest.mark.parametrize("value", HOSTILE)
def test_shown_prints_through_rich_as_the_characters_it_holds(value):
    buf = io.StringIO()
    Console(file=buf, force_terminal=False, width=200).print(shown(value))  # no styling of rich's own: the bare characters
    out = buf.getvalue().rstrip("\n")
    assert out == plain(value)  # markup not interpreted, nothing dropped
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F and not 0xD800 <= ord(c) <= 0xDFFF for c in out)  # nothing acts on a terminal
    out.encode("utf-8")  # encodable: no lone surrogate reaches a UTF-8 stream


def test_plain_is_the_identity_on_ordinary_text_and_escapes_the_rest():
    for ok in ("Van Gogh", "Claude Monet", "Pokémon", "東京", "a [bracketed] name", "😀"):
        assert plain(ok) == ok and text_problem(ok) is None
    assert plain("\x1b[31m") == "\\x1b[31m" and plain("\ud800") == "\\ud800" and plain("a\u202eb") == "a\\u202eb"
    assert shown("[/]") == "\\[/]"


@pytest.mark.parametrize("value,why", [("x\udcff", "not valid UTF-8"), ("\ud800", "lone surrogate"), ("a\x1bb", "control"),
                                       ("a\nb", "control"), ("a\u202eb", "bidirectional")])
def test_check_user_text_refuses_naming_the_argument_and_the_problem(value, why):
    with pytest.raises(UserTextError) as e:
        check_user_text("--erase", value)
    assert isinstance(e.value, EraseKitError) and "--erase" in str(e.value) and why in str(e.value)
    str(e.value).encode("utf-8")  # the message itself is printable
