"""Exceptions (and warnings) that name the problem and the fix.

Every refusal in erasekit raises a subclass of :class:`EraseKitError` (itself a
``ValueError``), so callers can catch one type and the CLI can print the message without a
traceback. Nothing is modified before one of these is raised.
"""


class EraseKitError(ValueError):
    """Base class: a clear, user-facing refusal."""


class ConceptError(EraseKitError):
    """The concept set is empty, duplicated, contradictory or malformed."""


class ModelError(EraseKitError):
    """The model cannot be loaded or has no cross-attention to edit."""


class MethodError(EraseKitError):
    """Unknown method, bad configuration, or a numerical failure inside a method."""


class EditFileError(EraseKitError):
    """An edit file is corrupt, truncated, tampered with, or does not match the pipeline."""


class UnprotectedMetadataWarning(UserWarning):
    """An edit file of format 1: its metadata is not covered by the checksum (re-save it to protect it)."""


class OutputPathError(EraseKitError):
    """An output path cannot be written: a directory, a read-only folder, a missing permission."""


class EditError(EraseKitError):
    """An edit cannot be built in memory: layer entries that do not fit together."""


class UncheckedConfigWarning(UserWarning):
    """An edit file's method config has a key this erasekit does not know, or names a method that is not registered:
    it is kept as written (the method validates its config when it refits)."""


class ProtocolError(EraseKitError):
    """An evaluation protocol cannot be declared or run as given: a prompt file missing, its checksum wrong, a gated
    prompt set without the user's path, a setting out of range."""


class JudgeError(EraseKitError):
    """A judge cannot be built or run as given: an unknown judge or option, a missing model folder, a pickle-only
    weight file, reference images that are not there."""


class AttackError(EraseKitError):
    """An attack cannot run as asked: an unknown attack, a budget that is zero, negative or not a number, a family
    the attack cannot reach."""
