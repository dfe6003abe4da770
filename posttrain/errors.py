"""User-facing errors: one clear line, exit code 2, no traceback unless --debug."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (file, field, config key, path). The CLI prints `error: <message>` and exits 2."""

    exit_code = 2


class TrainingDiverged(Exception):
    """A non-finite loss or gradient: the run stops without writing a checkpoint. Exit code 3."""

    exit_code = 3


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`" (did you mean 'x'?)"` for the closest choice, or `""` when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
