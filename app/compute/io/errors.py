"""Errors and warnings shared by every reader and writer.

Every message names the file and the field (or line) that is wrong, in one line, so that the command line
can print it as it is and the wizard can show it to a trainee: ``FILE: FIELD: what is wrong``.

Readers are strict by default (a problem raises :class:`FormatError`); with ``strict=False`` they are
permissive: the same problem is reported as a :class:`FormatWarning` (``warnings.warn``) and a sensible
value is used instead.
"""

from __future__ import annotations

import warnings
from os import PathLike


class FormatError(ValueError):
    """A file that cannot be read as what it claims to be. ``str(err)`` is ``"FILE: FIELD: message"``."""

    def __init__(self, path: str | PathLike[str], field: str | None, message: str) -> None:
        self.path = str(path)
        self.field = field
        self.message = message
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + message)


class FormatWarning(UserWarning):
    """A problem that a permissive reader worked around (same ``FILE: FIELD: message`` text)."""


def problem(strict: bool, path: str | PathLike[str], field: str | None, message: str) -> None:
    """Raise :class:`FormatError` when ``strict``, else warn with :class:`FormatWarning`."""
    err = FormatError(path, field, message)
    if strict:
        raise err
    warnings.warn(str(err), FormatWarning, stacklevel=3)
