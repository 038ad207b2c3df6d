"""Reading what erasekit writes: one entry point that picks the reader by the file's contents.

An edit file (``erasekit erase``, :meth:`Edit.save`) carries the ``erasekit`` metadata key and is read by
:meth:`Edit.load`; an export carries ``erasekit_export`` and is read back by its format's ``read_back``
(the LoRA formats), or refused naming what it is (a whole model, a ΔW). This module sits above both
:mod:`erasekit.edit` and :mod:`erasekit.export`, so neither imports the other to read a file.

The edit format checks structure only; here, where the methods are known, an edit's config is compared with
its method's options: a key the method does not know (an option renamed since the file was written) or a
method that is not registered (a plugin's edit read without the plugin) is kept as written, with an
:class:`~erasekit.errors.UncheckedConfigWarning`. The method validates its config when it refits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

from .edit import STORAGE_LOSS_LIMIT, Edit
from .errors import EditFileError, UncheckedConfigWarning

__all__ = ["check_config", "load_edit", "read_edit"]

_EXPORT_KEY = "erasekit_export"


def _export_record(path: Path) -> str | None:
    """The export record of ``path`` (a file's ``erasekit_export`` metadata, a folder's record file), or None when it
    is not an export or cannot be read (the edit reader then says why)."""
    from safetensors import safe_open

    if path.is_dir():
        from .export.diffusers_folder import RECORD_FILE

        record = path / RECORD_FILE
        return record.read_text(errors="replace") if record.is_file() else None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception:  # not a file, truncated, not safetensors: Edit.load reports it with the file's name
        return None
    return header.get(_EXPORT_KEY) if "erasekit" not in header else None


def _read_export(path: Path, text: str) -> Edit:
    from .export import get_format, list_formats

    where = repr(str(path))
    try:
        meta = json.loads(text)
        name = meta["export_format"]
    except (ValueError, TypeError, KeyError):
        raise EditFileError(f"{where}: its {_EXPORT_KEY!r} record is not a readable erasekit export record") from None
    if name not in list_formats():
        raise EditFileError(
            f"{where} is an export in a format this erasekit does not know ({name!r:.40}); "
            f"known: {', '.join(list_formats())}"
        )
    fmt = get_format(name)
    if fmt.read_back is None:
        readable = ", ".join(n for n, f in list_formats().items() if f.read_back is not None)
        raise EditFileError(
            f"{where} is an erasekit {name!r} export ({fmt.help.split(';')[0]}): it cannot be read back as "
            f"an edit; load the edit file it was made from, or export it as {readable}"
        )
    return fmt.read_back(path)


def read_edit(path: str | os.PathLike, *, check: bool = True) -> Edit:
    """Read an edit file or an erasekit LoRA export strictly; raises EditFileError naming what is wrong.

    With ``check``, :func:`check_config` warns about config keys the edit's method does not know.
    """
    path = Path(path)
    record = _export_record(path) if path.exists() else None
    edit = _read_export(path, record) if record is not None else Edit.load(path)
    if check:
        check_config(edit, where=str(path))
    return edit


def check_config(edit: Edit, where: str = "this edit") -> list[str]:
    """Warn (UncheckedConfigWarning) about an unregistered method or config keys its method does not know.

    The config is kept as it is either way; returns the keys warned about (all of them for an unknown method).
    """
    from .methods import get_method, list_methods

    config = edit.config if isinstance(edit.config, dict) else {}
    if edit.method not in list_methods():
        warnings.warn(
            f"{where}: method {edit.method!r} is not registered here (a plugin's method?); its edit loads and "
            "applies, and its config is kept unchecked",
            UncheckedConfigWarning,
            stacklevel=3,
        )
        return sorted(config)
    known = {f.name for f in dataclasses.fields(get_method(edit.method).config_class)}
    unknown = sorted(set(config) - known)
    if unknown:
        warnings.warn(
            f"{where}: {edit.method} config key(s) {unknown[:5]} are not options of this erasekit's "
            f"{edit.method!r} (renamed or removed since the file was written?); kept as written — the method "
            "validates its config when it refits",
            UncheckedConfigWarning,
            stacklevel=3,
        )
    return unknown


def load_edit(
    path: str | os.PathLike,
    pipe=None,
    *,
    apply: bool = True,
    stack: bool = False,
    max_storage_loss: float | None = STORAGE_LOSS_LIMIT,
) -> Edit:
    """Load an edit file (or an erasekit LoRA export) strictly; with ``pipe``, check it fits and (by default) apply it.

    Nothing is changed unless every check passes; ``stack=True`` allows applying it over
    parameters that already carry another edit; ``max_storage_loss``: see :meth:`Edit.apply`.
    """
    edit = read_edit(path)
    if pipe is not None:
        if apply:
            edit.apply(pipe, stack=stack, max_storage_loss=max_storage_loss)
        else:
            edit.check_compatible(pipe, stack=stack)
    return edit
