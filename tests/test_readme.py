"""README is user documentation: every command it shows parses with the real parser, and its Python example runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _commands(prefix: str) -> list[list[str]]:
    """Every line of a ```bash block that runs ``prefix`` (after ``&&`` too), split as the shell would."""
    out = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part)
                if words and words[0] == prefix:
                    out.append(words[1:])
    return out


def test_readme_is_user_documentation():
    assert README.count("\n") < 320, "README is for users; measured tables belong in docs/results.md"
    assert not re.search(r"\b[0-9a-f]{7,40}\b", README), "commit hashes belong in git log, not the README"
    assert not re.search(r"\bissue \d+", README, flags=re.I), "issue numbers belong in the tracker"
    assert "../shared" not in README, "users do not have the project's shared folder"
    for doc in ("docs/results.md", "docs/reproduce.md"):
        assert doc in README and (REPO / doc).is_file()


def test_readme_starts_with_install_and_test_commands():
    first = _blocks("bash")[0]
    assert "pip install torch==2.13.0" in first and "erasekit demo" in first and "python -m pytest -q" in first


CLI = _commands("erasekit")


@pytest.mark.parametrize("argv", CLI, ids=[" ".join(a[:3]) for a in CLI])
def test_every_readme_command_parses(argv):
    """The exact words of each README command are accepted by erasekit's parser (method options included)."""
    from erasekit.cli import _erase_method, build_parser

    parser = build_parser(_erase_method(argv))
    args, rest = parser.parse_known_args(argv)
    assert not rest, f"README shows arguments the parser does not take: {rest}"
    assert callable(args.func)


def test_readme_shows_every_subcommand():
    from erasekit.cli import build_parser

    sub = next(a for a in build_parser("uce")._actions if a.__class__.__name__ == "_SubParsersAction")
    shown = {argv[0] for argv in CLI if argv}
    missing = set(sub.choices) - shown - {"methods"}  # `erasekit methods -v` is shown inline
    assert not missing, f"subcommands the README never shows in a command block: {sorted(missing)}"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    (code,) = _blocks("python")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example, as a user would paste it
    assert (tmp_path / "vangogh.safetensors").is_file()
