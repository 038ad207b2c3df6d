"""Atomic file writes: a crash, Ctrl-C or a full disk never leaves a half-written file behind.

Files are created with the user's umask (``0666 & ~umask``, as ``open`` would), and an
overwritten file keeps its mode. :func:`check_writable` probes an output path before the
slow work that produces its contents.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputPathError


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # no other portable way to read it
    os.umask(old)
    return old


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def check_parent_writable(target: Path, what: str = "output file", error: type[Exception] = OutputPathError) -> None:
    """Raise ``error`` unless the nearest existing folder above ``target`` takes a new file.

    A real probe file, because ``os.access`` says yes to root on a read-only mount; the folders
    below it are created later by :func:`atomic_path`."""
    folder = Path(target).parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise error(f"cannot write {what} {str(target)!r}: {str(folder)!r} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".erasekit-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise error(
            f"cannot write {what} {str(target)!r}: folder {str(folder)!r} is not writable ({e.strerror})"
        ) from None


def check_writable(target: str | os.PathLike, what: str = "output file", example: str = "out.safetensors") -> Path:
    """Raise OutputPathError unless ``target`` can be written as a file (before any slow work)."""
    target = Path(target)
    if target.is_dir():
        raise OutputPathError(
            f"{what} {str(target)!r} is a directory; give a file name, e.g. {str(target / example)!r}"
        )
    check_parent_writable(target, what)
    return target


@contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside ``target``; rename it over ``target`` only if the block succeeds."""
    target = Path(target)
    if target.is_dir():
        raise OutputPathError(f"{str(target)!r} is a directory; give a file name inside it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def apply_umask_to_tree(folder: str | os.PathLike) -> None:
    """Give every file under ``folder`` ``0666 & ~umask`` and every folder ``0777 & ~umask``.

    For folders written by libraries that do not respect the umask: safetensors 0.8's ``save_file`` (and so
    ``save_pretrained``) creates its files 0600, and ``tempfile.mkdtemp`` makes 0700 folders."""
    umask = _umask()
    root = Path(folder)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
