"""What every export format shares: its error type, result record, output-path checks and metadata."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._atomic import check_parent_writable
from .._version import __version__
from ..dtypes import DTYPES
from ..edit_format import content_sha256 as _content_sha256
from ..errors import EraseKitError

META_KEY = "erasekit_export"  # safetensors metadata key of every erasekit export (a JSON document)
META_FORMAT = "erasekit.export"
META_VERSION = 2  # 2: checksummed with edit_format.content_sha256 (1: an export-only checksum, still read back)
SAVE_DTYPES = DTYPES  # the names every --dtype takes
# Plain (unscaled) float8 storage, as ComfyUI's fp8 checkpoints hold it: offered only by formats that say so
# (ExportFormat.float8, the MMDiT single files), whose readers cast every weight up to their compute dtype.
FLOAT8_SAVE_DTYPES: dict[str, torch.dtype] = {
    "float8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "fp8_e5m2": torch.float8_e5m2,
}


class ExportError(EraseKitError):
    """The edit or pipeline cannot be written in the requested format, or the output cannot be written."""


@dataclass
class ExportResult:
    """What an export wrote: path, format, size on disk, and how faithfully it carries the edit."""

    path: Path
    format: str
    nbytes: int
    layers: int = 0  # edited layers the file carries (0: a whole model with nothing to report per layer)
    rank: int | None = None  # largest LoRA rank written
    rel_error: float | None = None  # ‖ΔW − B A‖_F / ‖ΔW‖_F over all layers (0 when exact)
    exact: bool = True
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"wrote {self.path} ({self.nbytes:,} bytes, {self.format})"]
        if self.layers:
            parts.append(f"{self.layers} layers")
        if self.rank is not None:
            parts.append(f"rank ≤ {self.rank}")
        if self.rel_error is not None:
            parts.append("exact" if self.exact else f"relative error {self.rel_error:.4g} (truncated SVD)")
        return ", ".join(parts) + "".join(f"\n  {n}" for n in self.notes)


def resolve_save_dtype(
    dtype, *, float8: bool = False, float8_formats: Sequence[str] = (), fmt: str | None = None
) -> torch.dtype | None:
    """The torch dtype a ``save_dtype`` names (None: not given). float8 only where the format (``fmt``, for the
    message) stores it (``float8``); elsewhere it is refused naming ``float8_formats``, the formats that do."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in SAVE_DTYPES:
        return SAVE_DTYPES[dtype]
    elif dtype in FLOAT8_SAVE_DTYPES:
        resolved = FLOAT8_SAVE_DTYPES[dtype]
    else:
        more = ", float8_e4m3fn or float8_e5m2" if float8 else ""
        raise ExportError(f"unknown save dtype {dtype!r}; choose float32, float16 or bfloat16{more}")
    if resolved in FLOAT8_SAVE_DTYPES.values() and not float8:
        name = str(resolved).removeprefix("torch.")
        where = f"; only {' / '.join(repr(f) for f in float8_formats)} store float8" if float8_formats else ""
        this = f"the {fmt!r} format" if fmt else "this format"
        raise ExportError(f"{this} does not store {name}{where}; choose float32, float16 or bfloat16")
    return resolved


def path_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def check_output(path: str | os.PathLike, folder: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written: a directory for a file, an existing
    non-empty folder for a folder, or a location whose nearest existing folder is not writable."""
    path = Path(path)
    if folder:
        if path.is_file():
            raise ExportError(
                f"{str(path)!r} is an existing file; the diffusers format writes a folder: give a new folder path"
            )
        if path.is_dir() and any(path.iterdir()):
            raise ExportError(
                f"folder {str(path)!r} already exists and is not empty; remove it or give a new folder path"
            )
    elif path.is_dir():
        raise ExportError(f"{str(path)!r} is a directory; give a file name, e.g. {str(path / 'model.safetensors')!r}")
    check_parent_writable(path, "export", error=ExportError)
    return path


def write_error(path, e: OSError) -> ExportError:
    return ExportError(f"could not write {str(path)!r}: {e.strerror or e}; nothing was written")


def edit_record(edit) -> dict:
    """The edit's identity as every export records it: method, config, concepts, base model and the
    fingerprint of every edited layer's base weight (what ``load_edit`` checks a pipeline against)."""
    meta = edit.metadata()
    rec = {k: meta[k] for k in ("erasekit_version", "method", "config", "concepts", "base", "stats") if k in meta}
    # keyed as the export's own layers are: the path in the denoiser (an edit file's keys also name the component)
    rec["layers"] = {
        k: {"kind": le.kind, "shape": list(le.shape), "fingerprint": edit.fingerprints[k]}
        for k, le in edit.layers.items()
    }
    return rec


def export_metadata(export_format: str, **fields) -> dict:
    return {
        "format": META_FORMAT,
        "format_version": META_VERSION,
        "export_format": export_format,
        "erasekit_version": __version__,
        **fields,
    }


def content_sha256(meta: dict, tensors: dict[str, torch.Tensor]) -> str:
    """The checksum of an export (format 2): :func:`erasekit.edit_format.content_sha256` in the export domain."""
    return _content_sha256(meta, tensors, domain=f"{META_FORMAT}/{META_VERSION}")


@contextlib.contextmanager
def baked(edit, pipe):
    """``edit`` (None: nothing) applied to ``pipe`` for the duration of a whole-model write, reverted after."""
    if edit is not None:
        edit.apply(pipe)  # strict: checks the base weights first
    try:
        yield pipe
    finally:
        if edit is not None:
            edit.revert(pipe)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write atomically (temp file + rename); an OSError becomes one clear ExportError and leaves nothing."""
    from safetensors.torch import save_file

    from .._atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    except OSError as e:
        raise write_error(path, e) from None
    return path
