"""User-facing errors.

Every error a user can cause by their input is a :class:`GeocmidError`: it names *where* the
problem is (a file, a key, a setting), *what* is wrong and *how* to fix it. The command line
prints it in plain words and exits non-zero; Python callers can catch it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Sequence
from pathlib import PurePath


class GeocmidError(Exception):
    """An error caused by the user's input, with a suggested fix.

    Args:
        where: the file, key or setting at fault (``"catalog entry 'naip': key 'bands'"``).
        problem: what is wrong, in plain words.
        fix: what to do about it.
    """

    exit_code = 2

    def __init__(self, where: str, problem: str, fix: str | None = None) -> None:
        self.where = where
        self.problem = problem
        self.fix = fix
        super().__init__(self.format())

    def format(self) -> str:
        text = f"{self.where}: {self.problem}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class ConfigError(GeocmidError):
    """A configuration, catalog entry or recipe is invalid."""


class DataError(GeocmidError):
    """Input data (rasters, vectors, labels) cannot be used as given."""


class ModelError(GeocmidError):
    """A model, checkpoint or weight file does not fit what was asked of it."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` if none is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


#: Files named by :func:`several_files` before "… and N more".
FILES_SHOWN = 10


def several_files(
    errors: Sequence[GeocmidError], total: int, where: str, what: str = "files"
) -> GeocmidError:
    """One error for every unreadable file of one catalog entry (``catalog validate`` reports
    them all at once, not one per run).

    A single error is returned as it is. Several become one :class:`DataError` at ``where``
    naming how many of ``total`` files fail, the first :data:`FILES_SHOWN` of them (relative to
    the folder they share) and "… and N more", the first one's problem and its fix.

    Args:
        errors: one error per failing file, its ``where`` the file's path.
        total: how many files were checked.
        where: the entry (``"catalog entry 'tiles'"``).
        what: what the files are, in words (``"files"``, ``"images"``).
    """
    if len(errors) == 1:
        return errors[0]
    paths = [PurePath(e.where) for e in errors]
    try:
        folder = os.path.normpath(os.path.commonpath([str(p.parent) for p in paths]))
    except ValueError:  # relative and absolute paths, or other drives
        folder = ""
    if folder and folder != paths[0].anchor:
        names = [os.path.relpath(p, folder) for p in paths]
        place = f" (in {folder})"
    else:
        names, place = [str(p) for p in paths], ""
    shown = ", ".join(names[:FILES_SHOWN])
    more = f" … and {len(names) - FILES_SHOWN} more" if len(names) > FILES_SHOWN else ""
    first = errors[0]
    return DataError(
        where,
        f"{len(errors)} of {total} {what} cannot be read{place}: {shown}{more}; "
        f"{names[0]} {first.problem}",
        first.fix,
    )
