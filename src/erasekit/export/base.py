"""The export-format registry: one :class:`ExportFormat` per format, registered by the format's own module.

A format says what it writes (``kind``), what it needs, which options it takes, how it writes and, when
the file carries an edit that can be read back, how to read it. :func:`erasekit.export` and
``erasekit export --format`` dispatch through :func:`get_format`; adding a format is one module that calls
:func:`register_format` (and its import in ``erasekit/export/__init__.py``)::

    register_format(ExportFormat(
        name="my-format", kind="edit", help="what is written and who reads it",
        write=write, options=("save_dtype", "rank"), needs_pipe=needs_base_weights, read_back=None,
    ))

``write(edit, pipe, path, *, progress, **options)`` gets only the options the caller gave (``None`` means
not given); an option the format does not list is refused before any work, naming the ones it takes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import ExportError, ExportResult, resolve_save_dtype

KINDS = {
    "edit": "the edit alone, against the base weights (Linear weight changes only)",
    "model": "a whole model with the edit baked in",
}
# Formats whose key names are Stable Diffusion's original (LDM / kohya) layout: only families that have one.
SD_ONLY = ("single-file", "lora-kohya", "diff")
# A family's own original-layout formats, named when an SD-only one is refused (the format checks the family).
ORIGINAL_LAYOUT = {
    "flux": {"single-file": "single-file-flux", "lora-kohya": "lora-kohya-flux"},
    "sd3": {"single-file": "single-file-sd3"},
}
_NAME_RX = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_OPTION_RX = re.compile(r"[a-z][a-z0-9_]*")
_RESERVED = {"edit", "pipe", "path", "progress", "format"}


def never(edit, options: Mapping[str, Any]) -> str | None:
    """``needs_pipe`` of a format that can write every edit from the edit alone."""
    return None


def always(reason: str) -> Callable[[Any, Mapping[str, Any]], str | None]:
    """``needs_pipe`` of a format that always needs the base pipeline, for ``reason``."""
    return lambda edit, options: reason


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: what ``format=`` / ``--format`` says (lowercase, dash-separated).
        kind: ``"edit"`` (the edit alone: a LoRA, a .diff; ``pipe=`` is the base it was made for) or ``"model"``
            (a whole model, with the edit, if any, baked in; ``pipe=`` is required).
        help: one line for ``erasekit export --help``: what is written and who reads it.
        write: ``write(edit, pipe, path, *, progress, **options) -> ExportResult``; ``edit`` is None for a
            ``model`` export of a pipeline as it is, ``pipe`` None for an ``edit`` export without the base.
        options: the keyword options ``write`` accepts (beyond ``progress``).
        needs_pipe: ``needs_pipe(edit, options)``: why an ``edit`` export of this edit needs the base pipeline,
            or None when the edit alone suffices (``model`` exports always need it).
        read_back: ``read_back(path) -> Edit`` for a file this format wrote, or None when the file cannot be
            read back as an edit (a whole model, a ΔW without the base).
        folder: the output is a folder, not a file.
        families: the model families (``models.families`` names) whose layout the format writes; empty: every one.
            :func:`erasekit.export` refuses another family's edit or pipeline before any work, naming the formats
            that do take it.
        float8: ``save_dtype`` may also be ``float8_e4m3fn`` / ``float8_e5m2`` (plain float8 storage); other formats
            refuse those names before any work, naming the formats that take them.
    """

    name: str
    kind: str
    help: str
    write: Callable[..., ExportResult]
    options: tuple[str, ...] = ("save_dtype",)
    needs_pipe: Callable[[Any, Mapping[str, Any]], str | None] = never
    read_back: Callable[[Path], Any] | None = None
    folder: bool = False
    families: tuple[str, ...] = ()
    float8: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RX.fullmatch(self.name):
            raise ExportError(
                f"export format name {self.name!r} must be lowercase words joined by '-', e.g. 'lora-kohya'"
            )
        if self.kind not in KINDS:
            raise ExportError(f"export format {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.help, str) or not self.help.strip():
            raise ExportError(f"export format {self.name!r}: give a one-line help (what is written, who reads it)")
        for fn, what in ((self.write, "write"), (self.needs_pipe, "needs_pipe")):
            if not callable(fn):
                raise ExportError(f"export format {self.name!r}: {what} must be callable")
        if self.read_back is not None and not callable(self.read_back):
            raise ExportError(f"export format {self.name!r}: read_back must be callable or None")
        opts = tuple(self.options)
        bad = [o for o in opts if not isinstance(o, str) or not _OPTION_RX.fullmatch(o) or o in _RESERVED]
        if bad or len(set(opts)) != len(opts):
            raise ExportError(
                f"export format {self.name!r}: options must be distinct keyword names other than "
                f"{sorted(_RESERVED)}, got {list(opts)}"
            )
        object.__setattr__(self, "options", opts)
        fams = tuple(self.families)
        if any(not isinstance(f, str) or not f for f in fams):
            raise ExportError(f"export format {self.name!r}: families must be family names, got {list(fams)}")
        object.__setattr__(self, "families", fams)

    def takes(self, family: str) -> bool:
        """Whether the format writes models of ``family``."""
        return not self.families or family in self.families

    def accept(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options given (not None); an ExportError names those this format does not take and the ones it does."""
        given = {k: v for k, v in options.items() if v is not None}
        refused = sorted(set(given) - set(self.options))
        if refused:
            takers = {o: [f.name for f in _REGISTRY.values() if o in f.options] for o in refused}
            where = "; ".join(
                f"{o} is taken by {', '.join(t)}" if t else f"no format takes {o}" for o, t in takers.items()
            )
            raise ExportError(
                f"the {self.name!r} format does not take {', '.join(refused)} ({where}); "
                f"it accepts {', '.join(self.options) or 'no options'}"
            )
        if "save_dtype" in given:  # a dtype this format cannot store is refused here, before the model is loaded
            resolve_save_dtype(
                given["save_dtype"],
                float8=self.float8,
                float8_formats=[f.name for f in _REGISTRY.values() if f.float8],
                fmt=self.name,
            )
        return given


_REGISTRY: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Register ``fmt`` under its name (once; a second format of the same name is refused)."""
    if not isinstance(fmt, ExportFormat):
        raise ExportError(f"register_format takes an ExportFormat, got {type(fmt).__name__}")
    old = _REGISTRY.get(fmt.name)
    if old is not None and old != fmt:
        raise ExportError(f"export format {fmt.name!r} is already registered by {old.write.__module__}")
    _REGISTRY[fmt.name] = fmt
    return fmt


def get_format(name: str) -> ExportFormat:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ExportError(f"unknown export format {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def list_formats() -> dict[str, ExportFormat]:
    """Registered formats by name, in registration order (the CLI's ``--format`` choices)."""
    return dict(_REGISTRY)
