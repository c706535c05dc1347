"""User-facing errors.

Every error a user can cause by their input is a :class:`GeocmidError`: it names *where* the
problem is (a file, a key, a setting), *what* is wrong and *how* to fix it. The command line
prints it in plain words and exits non-zero; Python callers can catch it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
