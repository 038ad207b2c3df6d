"""Bad command lines: exit code 2 (1 for a full disk, 130 for Ctrl-C), one `erasekit:` line, no traceback, nothing
written.

Options, output paths, edit files and generation arguments are checked before the model is
loaded; only the image-size check needs the loaded model (its VAE factor).
Set ERASEKIT_CLI_REPORT=path to write the table of cases (case, exit code, message).
"""

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch

import erasekit.models.loading as loading
from erasekit.cli import main
from erasekit.models.tiny import save_tiny_pipeline

ROWS: list[tuple[str, int, str]] = []


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_pipeline(tmp_path_factory.mktemp("m") / "tiny-sd", "sd"))


@pytest.fixture(scope="module")
def files(model_dir, tmp_path_factory):
    """A valid edit file, a tampered one (concepts null, checksum recomputed), a truncated one, a plain safetensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    import erasekit
    from erasekit.edit_format import content_sha256

    d = tmp_path_factory.mktemp("files")
    pipe = loading.load_pipeline(model_dir)
    good = erasekit.erase(pipe, method="uce", concepts=["cat"], progress=False).save(d / "good.safetensors")
    with safe_open(str(good), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["erasekit"]), {k: f.get_tensor(k) for k in f.keys()}
    meta["concepts"] = None
    meta["content_sha256"] = content_sha256(meta, tensors)
    save_file(tensors, str(d / "tampered.safetensors"), metadata={"erasekit": json.dumps(meta)})
    data = good.read_bytes()
    (d / "trunc.safetensors").write_bytes(data[: len(data) // 3])
    save_file({"a": torch.zeros(1)}, str(d / "plain.safetensors"))
    (d / "adir").mkdir()
    (d / "afile").write_text("x")
    return d


def _cases(m: str, f: Path, out: Path) -> list[tuple[str, list[str], int, str, bool]]:
    """(case, argv, exit code, message fragment, model load allowed)."""
    erase = ["erase", "--model", m, "--erase", "cat"]
    gen = ["generate", "--model", m, "--prompt", "a cat", "--out", str(out / "g.png")]
    ev = ["evaluate", "--model", m, "--edit", str(f / "good.safetensors"), "--judge", "tinyworld"]
    return [
        (
            "erase --lam nan",
            [*erase, "--method", "space", "--lam", "nan", "--out", str(out / "e.safetensors")],
            2,
            "lam must be a finite number",
            False,
        ),
        (
            "erase --lamb nan",
            [*erase, "--method", "uce", "--lamb", "nan", "--out", str(out / "e.safetensors")],
            2,
            "lamb must be a finite number",
            False,
        ),
        (
            "erase --erase-scale inf",
            [*erase, "--erase-scale", "inf", "--out", str(out / "e.safetensors")],
            2,
            "erase_scale must be a finite number",
            False,
        ),
        ("erase --lamb 0", [*erase, "--lamb", "0", "--out", str(out / "e.safetensors")], 2, "must be > 0", False),
        (
            "erase --target-sparsity 1.5",
            [*erase, "--method", "space", "--target-sparsity", "1.5", "--out", str(out / "e.safetensors")],
            2,
            "in (0, 1)",
            False,
        ),
        (
            "erase: option of another method",
            [*erase, "--method", "uce", "--target-sparsity", "0.5", "--out", str(out / "e.safetensors")],
            2,
            "do not apply to method 'uce'",
            False,
        ),
        (
            "erase: option of another method by --set",
            [*erase, "--method", "space", "--set", "train_steps=3", "--out", str(out / "e.safetensors")],
            2,
            "do not apply to method 'space'",
            False,
        ),
        (
            "erase --set rank=2.5",
            [*erase, "--method", "ace", "--set", "rank=2.5", "--out", str(out / "e.safetensors")],
            2,
            "option rank expects an integer, got '2.5'",
            False,
        ),
        (
            "erase --method nosuch",
            [*erase, "--method", "nosuch", "--out", str(out / "e.safetensors")],
            2,
            "unknown method 'nosuch'",
            False,
        ),
        (
            "erase --erase ''",
            ["erase", "--model", m, "--erase", "", "--out", str(out / "e.safetensors")],
            2,
            "empty erase concept",
            False,
        ),
        (
            "erase --dtype float8",
            [*erase, "--dtype", "float8", "--out", str(out / "e.safetensors")],
            2,
            "unknown dtype",
            False,
        ),
        ("erase --out an existing directory", [*erase, "--out", str(f / "adir")], 2, "is a directory", False),
        (
            "erase --out under a file",
            [*erase, "--out", str(f / "afile" / "e.safetensors")],
            2,
            "is not a folder",
            False,
        ),
        (
            "erase --out in an unwritable folder (/proc)",
            [*erase, "--out", "/proc/erasekit-test/e.safetensors"],
            2,
            "is not writable",
            False,
        ),
        (
            "erase --model nowhere",
            ["erase", "--model", "no/such-model-here", "--erase", "cat", "--out", str(out / "e.safetensors")],
            2,
            "could not load",
            True,
        ),
        ("generate --steps 0", [*gen, "--steps", "0"], 2, "--steps must be >= 1, got 0", False),
        ("generate --steps -1", [*gen, "--steps", "-1"], 2, "--steps must be >= 1, got -1", False),
        ("generate --width 0", [*gen, "--width", "0"], 2, "--width must be >= 1", False),
        ("generate --guidance nan", [*gen, "--guidance", "nan"], 2, "--guidance must be a finite number", False),
        ("generate --height 17", [*gen, "--height", "17"], 2, "height must be a positive multiple of", True),
        ("generate --edit missing", [*gen, "--edit", str(f / "missing.safetensors")], 2, "does not exist", False),
        (
            "generate --edit truncated",
            [*gen, "--edit", str(f / "trunc.safetensors")],
            2,
            "truncated or corrupted",
            False,
        ),
        (
            "generate --out a directory",
            ["generate", "--model", m, "--prompt", "x", "--out", str(f / "adir")],
            2,
            "is a directory",
            False,
        ),
        ("inspect DIR", ["inspect", str(f / "adir")], 2, "is a directory, not an edit file", False),
        ("inspect missing", ["inspect", str(f / "missing.safetensors")], 2, "does not exist", False),
        ("inspect truncated", ["inspect", str(f / "trunc.safetensors")], 2, "truncated or corrupted", False),
        ("inspect plain safetensors", ["inspect", str(f / "plain.safetensors")], 2, "not an erasekit edit", False),
        (
            "inspect concepts=null (checksum recomputed)",
            ["inspect", str(f / "tampered.safetensors")],
            2,
            "field concepts: must be a JSON object",
            False,
        ),
        ("evaluate --n 0", [*ev, "--n", "0", "--out", str(out / "ev")], 2, "--n must be >= 1", False),
        (
            "evaluate --eta inf",
            [*ev, "--eta", "inf", "--out", str(out / "ev")],
            2,
            "--eta must be a finite number",
            False,
        ),
        ("evaluate --out under a file", [*ev, "--out", str(f / "afile" / "ev")], 2, "is not a folder", False),
        (
            "evaluate --edit tampered",
            ["evaluate", "--model", m, "--edit", str(f / "tampered.safetensors"), "--out", str(out / "ev")],
            2,
            "concepts",
            False,
        ),
        (
            "export --out an existing directory",
            ["export", "--model", m, "--out", str(f / "adir")],
            2,
            "is a directory",
            False,
        ),
        (
            "demo --set target_sparsity=abc",
            ["demo", "--set", "target_sparsity=abc", "--out", str(out / "demo")],
            2,
            "expects a number, got 'abc'",
            False,
        ),
        (
            "demo --set rank=2.5",
            ["demo", "--method", "ace", "--set", "rank=2.5", "--out", str(out / "demo")],
            2,
            "expects an integer",
            False,
        ),
        ("demo --n 0", ["demo", "--n", "0", "--out", str(out / "demo")], 2, "--n must be >= 1", False),
        (
            "demo --set gradient_checkpointing=ture",
            ["demo", "--method", "ace", "--set", "gradient_checkpointing=ture", "--out", str(out / "demo")],
            2,
            "expects true or false, got 'ture'",
            False,
        ),
    ]


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("erasekit:")]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_command_lines(model_dir, files, tmp_path, capsys, monkeypatch):
    loads = []
    real = loading.load_pipeline
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: loads.append(a) or real(*a, **k))
    for case, argv, code, fragment, may_load in _cases(model_dir, files, tmp_path):
        loads.clear()
        before = sorted(p.name for p in files.iterdir())
        rc = main(argv)
        line = _one_line(capsys.readouterr().err)
        ROWS.append((case, rc, line))
        assert rc == code and fragment in line, (case, rc, line)
        assert may_load or not loads, f"{case}: the model was loaded before the refusal"
        assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in files.iterdir()) == before, case


def test_ctrl_c_during_erase_exits_130_and_writes_nothing(model_dir, tmp_path, capsys, monkeypatch):
    import erasekit.api

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(erasekit.api, "fit", interrupted)  # the fit the command runs (the one erasekit.erase runs)
    rc = main(["erase", "--model", model_dir, "--erase", "cat", "--out", str(tmp_path / "e.safetensors")])
    line = _one_line(capsys.readouterr().err)
    ROWS.append(("Ctrl-C during erase", rc, line))
    assert rc == 130 and line == "erasekit: interrupted; nothing was written"
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_leaves_no_partial_file(model_dir, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    rc = main(["erase", "--model", model_dir, "--erase", "cat", "--out", str(tmp_path / "e.safetensors")])
    line = _one_line(capsys.readouterr().err)
    ROWS.append(("disk full while writing", rc, line))
    assert rc == 1 and "No space left on device" in line and "no partial file" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_are_created_with_the_umask(model_dir, tmp_path, umask, mode, capsys):
    old = os.umask(umask)
    try:
        out = tmp_path / "e.safetensors"
        assert main(["erase", "--model", model_dir, "--erase", "cat", "--out", str(out)]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == mode
        out.chmod(0o640)  # an overwritten file keeps its mode
        assert main(["erase", "--model", model_dir, "--erase", "dog", "--out", str(out)]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
    finally:
        os.umask(old)
    capsys.readouterr()


def teardown_module(module):
    path = os.environ.get("ERASEKIT_CLI_REPORT")
    if path and ROWS:
        lines = ["| case | exit | message |", "|---|---|---|"]
        lines += [f"| {c} | {rc} | {msg.replace('|', '/')[:200]} |" for c, rc, msg in ROWS]
        Path(path).write_text("\n".join(lines) + "\n")
