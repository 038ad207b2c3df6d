"""``diffusers``: a merged diffusers folder (``save_pretrained``) with the edit baked into the UNet.

Every other component is saved unchanged. The folder loads with
``DiffusionPipeline.from_pretrained`` (and ``erasekit --model FOLDER``); ``erasekit_export.json``
beside ``model_index.json`` records which edit was baked in. The folder is written under a
temporary name and renamed into place, so an interrupted export leaves no half-written folder.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

from .._atomic import apply_umask_to_tree
from ._common import (
    ExportResult,
    baked,
    check_output,
    edit_record,
    export_metadata,
    path_size,
    resolve_save_dtype,
    write_error,
)
from .base import ExportFormat, register_format

RECORD_FILE = "erasekit_export.json"


def write(edit, pipe, path, *, save_dtype=None, progress: bool = False) -> ExportResult:
    """``pipe`` with ``edit`` (None: as it is) baked in, as a merged diffusers folder."""
    record = edit_record(edit) if edit is not None else None
    with baked(edit, pipe):
        return write_folder(pipe, path, save_dtype=save_dtype, record=record, progress=progress)


def write_folder(pipe, path, *, save_dtype=None, record: dict | None = None, progress: bool = False) -> ExportResult:
    """``pipe.save_pretrained`` into a temporary sibling folder, then rename it to ``path``."""
    from ..edit import Edit

    path = check_output(path, folder=True)
    cast = resolve_save_dtype(save_dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        target = pipe
        if cast is not None and getattr(pipe, "dtype", None) != cast:
            # A copy in the save dtype: the live pipeline keeps its own (casting back and forth would lose bits).
            target = copy.deepcopy(pipe).to(dtype=cast)
        target.save_pretrained(str(tmp), safe_serialization=True)
        meta = export_metadata(
            "diffusers",
            edits=[record] if record else [],
            applied=Edit.applied(pipe),
            save_dtype=str(cast or (getattr(pipe, "dtype", None) or "")).replace("torch.", ""),
        )
        (tmp / RECORD_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        apply_umask_to_tree(tmp)  # mkdtemp makes 0700, safetensors writes 0600: the user's usual modes instead
        if path.is_dir():
            path.rmdir()  # an empty folder (checked above) is replaced
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(path, "diffusers", path_size(path))


register_format(
    ExportFormat(
        name="diffusers",
        kind="model",
        write=write,
        folder=True,
        help="a merged save_pretrained folder, edit baked in (DiffusionPipeline.from_pretrained)",
    )
)
